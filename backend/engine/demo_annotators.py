"""Random-weight annotator checkpoints for the weighted preprocessors, for offline demos and tests.

controlnet_aux builds each annotator's network with fixed sizes, so a checkpoint only loads if it
has the real architecture: these are full-size networks with random weights (stored in fp16 to halve
the disk), under the lllyasviel/Annotators file names and in each file's own layout. They exercise
the real loading and inference path; the maps they draw are noise-like, not meaningful.
"""

from __future__ import annotations

import functools
import math
import os
import pathlib
import types

from backend.engine.demo_model import cache_folder, ensure_written
from backend.engine.preprocessors import ANNOTATORS

DEMO_ANNOTATORS_VERSION = "1"


def _networks():
    """file name -> (builder of the network, how the file wraps its state dict)."""
    import torch
    from controlnet_aux.hed import ControlNetHED_Apache2
    from controlnet_aux.lineart import Generator
    from controlnet_aux.lineart_anime import UnetGenerator
    from controlnet_aux.midas.midas.dpt_depth import DPTDepthModel
    from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large
    from controlnet_aux.normalbae.nets.NNET import NNET
    from controlnet_aux.open_pose.model import bodypose_model
    from controlnet_aux.pidi.model import pidinet
    from controlnet_aux.segment_anything.build_sam import sam_model_registry

    plain = lambda state: state  # noqa: E731
    normal_args = types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet",
                                        sampling_ratio=0.4, importance_ratio=0.7)
    anime_norm = functools.partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)
    return {
        "ControlNetHED.pth": (ControlNetHED_Apache2, plain),
        "table5_pidinet.pth": (pidinet, lambda state: {"state_dict": {f"module.{k}": v for k, v in state.items()}}),
        "dpt_hybrid-midas-501f0c75.pt": (
            lambda: DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True), plain),
        "scannet.pt": (lambda: NNET(normal_args), lambda state: {"model": state}),
        # OpenPose's loader drops the first component of every key ("model0.conv1_1" -> "conv1_1").
        "body_pose_model.pth": (bodypose_model, lambda state: {k.split(".", 1)[1]: v for k, v in state.items()}),
        "sk_model.pth": (lambda: Generator(3, 1, 3), plain),
        "sk_model2.pth": (lambda: Generator(3, 1, 3), plain),
        "netG.pth": (lambda: UnetGenerator(3, 1, 8, 64, norm_layer=anime_norm, use_dropout=False), plain),
        "mlsd_large_512_fp32.pth": (MobileV2_MLSD_Large, plain),
        "mobile_sam.pt": (lambda: sam_model_registry["vit_t"](checkpoint=None), plain),
    }


def _random_state(module, generator) -> dict:
    """A state dict of ``module``'s shapes with sane random values (fan-in scaled weights, unit norms)."""
    import torch

    state = {}
    for key, tensor in module.state_dict().items():
        if not tensor.is_floating_point():
            value = torch.zeros(tensor.shape, dtype=tensor.dtype)
        elif key.endswith("running_var") or (tensor.dim() == 1 and key.endswith("weight")):
            value = torch.ones(tensor.shape)
        elif tensor.dim() >= 2:
            fan_in = math.prod(tensor.shape[1:])
            value = torch.randn(tensor.shape, generator=generator) / math.sqrt(fan_in)
        else:
            value = torch.zeros(tensor.shape)
        state[key] = value.half() if value.is_floating_point() else value
    return state


def write_demo_annotators(root: str | os.PathLike, *, seed: int = 0) -> pathlib.Path:
    """Write every weighted preprocessor's checkpoint files under ``root`` and return it."""
    import torch

    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    networks = _networks()
    files = sorted({file for annotator in ANNOTATORS.values() for file in annotator.files})
    for index, file in enumerate(files):
        build, wrap = networks[file]
        try:
            with torch.device("meta"):  # shapes only: real initialisation of these networks takes ~20 s
                module = build()
        except RuntimeError:  # MobileSAM reads values while building; it is small enough to build for real
            module = build()
        state = _random_state(module, torch.Generator().manual_seed(seed * 1000 + index))
        torch.save(wrap(state), root / file)
    return root


def ensure_demo_annotators(root: str | os.PathLike | None = None) -> pathlib.Path:
    """The demo annotators in the user's cache (``$EASEL_HOME`` or ~/.cache/easel), written on first use."""
    return ensure_written(root or cache_folder("demo-annotators"), DEMO_ANNOTATORS_VERSION, write_demo_annotators)
