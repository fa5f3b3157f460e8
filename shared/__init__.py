"""The Easel protocol: messages, image frames, context-crop geometry and a Python client.

Standard library only (the client adds ``websockets``) and relative imports only, so host
adapters can bundle a copy of this package.
"""

from .geometry import Box, CropPlan, context_crop, mask_bounds, mask_margin, whole_canvas
from .images import ImageData, decode_frame, encode_frame
from .messages import DEFAULT_URL, PROTOCOL_VERSION, ProtocolError

__version__ = "0.1.0"

__all__ = [
    "Box", "CropPlan", "DEFAULT_URL", "ImageData", "PROTOCOL_VERSION", "ProtocolError",
    "__version__", "context_crop", "decode_frame", "encode_frame", "mask_bounds", "mask_margin", "whole_canvas",
]
