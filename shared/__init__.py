"""The Easel protocol: the job model, its rules, messages, image frames, geometry and a Python client.

Standard library only (the client adds ``websockets``) and relative imports only, so host
adapters can bundle a copy of this package.
"""

from .errors import ProtocolError
from .geometry import Box, CropPlan, context_crop, mask_bounds, whole_canvas
from .images import ImageData, decode_frame, encode_frame
from .job import ControlUnit, Job, PreprocessJob, Reference, Sampling
from .vocabulary import DEFAULT_URL, PROTOCOL_VERSION

__version__ = "0.1.0"

__all__ = [
    "Box", "ControlUnit", "CropPlan", "DEFAULT_URL", "ImageData", "Job", "PROTOCOL_VERSION", "PreprocessJob",
    "ProtocolError", "Reference", "Sampling", "__version__", "context_crop", "decode_frame", "encode_frame",
    "mask_bounds", "whole_canvas",
]
