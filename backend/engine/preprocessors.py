"""Control-map preprocessors from controlnet_aux (run on the worker thread, never the event loop).

Three need no weights (canny, lineart_standard, shuffle). The others load annotator checkpoints with
the lllyasviel/Annotators file names from the configured ``annotators`` source: a local folder, or a
hub repository id. Those checkpoints are torch pickles; controlnet_aux reads them with ``torch.load``,
whose default since torch 2.6 is ``weights_only=True``, so a file carrying code is refused, not run.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from backend.engine.models import ModelError

# These draw from numpy's random generator: their maps depend on the job's seed.
SEEDED = ("shuffle", "segment_anything")

# controlnet_aux works at its detect resolution rounded to a multiple of 64: a shorter side below 33
# rounds to 0 and OpenCV fails. The protocol's smallest `resolution`, so a thin picture is worked on larger.
MIN_RESOLUTION = 64

# controlnet_aux's OpenPose wants hand and face networks too; a body-only pose map needs just this one.
BODY_POSE = "body_pose_model.pth"


@dataclass(frozen=True)
class Annotator:
    """A weighted preprocessor: the checkpoint files it needs and how to build its detector."""

    files: tuple[str, ...]
    build: Callable[[list[str]], Callable]  # local file paths -> detector(picture, **kwargs) -> PIL image
    options: tuple[tuple[str, object], ...] = ()  # extra keyword arguments of the detector call


def _from_folder(cls_name: str, **kwargs):
    def build(paths: list[str]):
        import controlnet_aux

        return getattr(controlnet_aux, cls_name).from_pretrained(os.path.dirname(paths[0]),
                                                                  filename=os.path.basename(paths[0]), **kwargs)
    return build


def _openpose(paths: list[str]):
    from controlnet_aux import OpenposeDetector
    from controlnet_aux.open_pose.body import Body

    body = Body(paths[0])
    detector = OpenposeDetector(body)

    def to(device):  # OpenposeDetector.to also moves hand and face networks, which this one lacks
        body.model.to(device)
        return detector
    detector.to = to
    return detector


def _segment_anything(paths: list[str]):
    import torch
    from controlnet_aux import SamDetector
    from controlnet_aux.segment_anything import SamAutomaticMaskGenerator

    detector = SamDetector.from_pretrained(os.path.dirname(paths[0]), model_type="vit_t",
                                           filename=os.path.basename(paths[0]))
    # Every grid point is a full pass of SAM's mask decoder: SAM's own 32x32 grid takes milliseconds on
    # a GPU but minutes on a CPU, where a coarse grid still finds the large regions a control map needs.
    grid = 32 if torch.cuda.is_available() else 4
    generator = SamAutomaticMaskGenerator(detector.mask_generator.predictor.model, points_per_side=grid)

    def segment(picture: Image.Image, detect_resolution: int, image_resolution: int) -> Image.Image:
        from controlnet_aux.util import HWC3, resize_image

        pixels = resize_image(HWC3(np.asarray(picture)), detect_resolution)
        masks = generator.generate(pixels)
        # SAM may find no region at all (a flat picture); that is an empty map, not a failure.
        segments = detector.show_anns(masks) if masks else np.zeros_like(pixels)
        return Image.fromarray(resize_image(segments, image_resolution))
    return segment


_hed = _from_folder("HEDdetector")  # soft edges and scribbles: one network, loaded once

WEIGHTLESS = {
    "canny": "CannyDetector",
    "lineart_standard": "LineartStandardDetector",
    "shuffle": "ContentShuffleDetector",
}
ANNOTATORS = {
    "softedge_hed": Annotator(("ControlNetHED.pth",), _hed),
    "scribble_hed": Annotator(("ControlNetHED.pth",), _hed, (("scribble", True),)),
    "softedge_pidinet": Annotator(("table5_pidinet.pth",), _from_folder("PidiNetDetector")),
    "depth_midas": Annotator(("dpt_hybrid-midas-501f0c75.pt",), _from_folder("MidasDetector")),
    "normal_bae": Annotator(("scannet.pt",), _from_folder("NormalBaeDetector")),
    "openpose": Annotator((BODY_POSE,), _openpose),
    "lineart_realistic": Annotator(("sk_model.pth", "sk_model2.pth"),
                                   _from_folder("LineartDetector", coarse_filename="sk_model2.pth")),
    "lineart_anime": Annotator(("netG.pth",), _from_folder("LineartAnimeDetector")),
    "mlsd": Annotator(("mlsd_large_512_fp32.pth",), _from_folder("MLSDdetector")),
    "segment_anything": Annotator(("mobile_sam.pt",), _segment_anything),
}


@functools.lru_cache(maxsize=None)
def _weightless(name: str):
    import controlnet_aux  # heavy import: only when a job asks for a preprocessor

    return getattr(controlnet_aux, WEIGHTLESS[name])()


@contextlib.contextmanager
def _checked_between_layers(check: Callable[[], None] | None):
    """Calls ``check`` before every torch module's forward on this thread while inside.

    controlnet_aux's detectors are one opaque call, which at a large resolution on a CPU runs for minutes;
    a cancel must not wait for all of it. A global forward hook reaches every network a detector holds,
    whatever its attribute names; the thread test keeps it off anything another thread runs meanwhile.
    What ``check`` raised is raised again on the way out: MLSD's detector wraps its network in a bare
    ``except Exception: pass`` and returned a black map as if finished (a preprocess job's `result`, and
    inside a submit a map kept in the control-map cache for the next job on that picture).
    """
    if check is None:
        yield
        return
    import torch

    thread = threading.get_ident()
    raised: list[BaseException] = []

    def before_layer(module, args):
        if threading.get_ident() == thread:
            try:
                check()
            except BaseException as exc:
                raised.append(exc)
                raise

    handle = torch.nn.modules.module.register_module_forward_pre_hook(before_layer)
    try:
        yield
    finally:
        handle.remove()
    if raised:  # the detector returned all the same: what it made is not the map
        raise raised[0]


class Preprocessors:
    """Runs preprocessors by name, loading annotator weights on first use and keeping them."""

    def __init__(self, annotators: str | None, device=None):
        self.source = annotators
        # An absolute path is a folder, even a missing one (a typo must not turn into a hub lookup).
        self.folder = Path(annotators) if annotators and (os.path.isabs(annotators) or
                                                          os.path.isdir(annotators)) else None
        self.device = device
        self._detectors: dict[tuple, Callable] = {}  # by (files, build): presets share a network
        self._lock = threading.Lock()

    def available(self) -> list[str]:
        """The preprocessors this server can run now (weights found locally, or a hub source)."""
        names = list(WEIGHTLESS)
        if self.source and self.folder is None:
            return names + list(ANNOTATORS)
        return names + [name for name, annotator in ANNOTATORS.items()
                        if self.folder and all((self.folder / file).is_file() for file in annotator.files)]

    def run(self, name: str, picture: Image.Image, resolution: int | None = None, seed: int = 0,
            check: Callable[[], None] | None = None) -> Image.Image:
        """The control map ``name`` makes of ``picture``, the same size as the picture.

        ``resolution`` is the working size of the shorter side (the picture's own when None, at least
        MIN_RESOLUTION). ``check`` is called before each layer of a weighted annotator's network: what it
        raises (a cancel) stops the annotator there.
        """
        resolution = resolution or max(min(picture.size), MIN_RESOLUTION)
        kwargs = {"detect_resolution": resolution}
        if name != "lineart_standard":  # the one detector without an output-size argument
            kwargs["image_resolution"] = resolution
        detector = self.load(name)
        if name in ANNOTATORS:
            kwargs.update(ANNOTATORS[name].options)
        if name in SEEDED:
            np.random.seed(seed)  # both draw from numpy's global generator
        with _checked_between_layers(check):
            result = detector(picture.convert("RGB"), **kwargs)
        return result.convert("RGB").resize(picture.size, Image.Resampling.BILINEAR)

    def load(self, name: str) -> Callable:
        """The detector for ``name``, loading its annotator files on first use."""
        if name in WEIGHTLESS:
            return _weightless(name)
        annotator = ANNOTATORS[name]
        key = (annotator.files, annotator.build)
        with self._lock:
            if key not in self._detectors:
                paths = [self._fetch(name, file) for file in annotator.files]
                try:
                    detector = annotator.build(paths)
                    if self.device is not None and hasattr(detector, "to"):
                        detector.to(self.device)
                except Exception as exc:
                    raise ModelError("model_load_failed", f"the {name} annotator ({', '.join(annotator.files)}) "
                                     f"could not be loaded: {exc}", "preprocessor") from exc
                self._detectors[key] = detector
            return self._detectors[key]

    def _fetch(self, name: str, file: str) -> str:
        """A local path of one annotator file, downloaded when the source is a hub repository."""
        if not self.source:
            raise ModelError("missing_annotator", f"the {name} preprocessor needs {file}, and no annotators folder "
                             "is configured: set `annotators` under [server] to a folder with the "
                             "lllyasviel/Annotators files (or to \"lllyasviel/Annotators\" to download them)",
                             "preprocessor")
        if self.folder is not None:
            path = self.folder / file
            if not path.is_file():
                raise ModelError("missing_annotator", f"the {name} preprocessor needs {file}, which is not in "
                                 f"the annotators folder {self.source}", "preprocessor")
            return str(path)
        from huggingface_hub import hf_hub_download

        try:
            return hf_hub_download(self.source, file)
        except Exception as exc:
            raise ModelError("missing_annotator", f"the {name} preprocessor needs {file}, which could not be "
                             f"fetched from the hub repository {self.source}: {exc}", "preprocessor") from exc
