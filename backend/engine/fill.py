"""Pre-fill: what masked pixels and new canvas hold before diffusion.

Below strength 1 the diffusion starts from the noised picture, so what lies under the mask decides
much of the result: the old object (``none``, for a change that keeps the shape), flat grey
(``neutral``), the colours around (``blur``), the nearest edge pixels stretched outward (``border``)
or a fast inpainting network's guess at the background (``inpaint``: OpenCV's Telea, or a LaMa model
through spandrel when the server has one). Transparent pixels are new canvas: they are always
filled (``shared.rules.NEW_CANVAS_FILL``), so the colour hidden under them never reaches the model.

Pure numpy / scipy / OpenCV on pixels: no model of the engine runs here.
"""

from __future__ import annotations

import threading
from typing import Callable

import numpy as np
from scipy import ndimage

from shared.rules import NEW_CANVAS_FILL

NEUTRAL = 127
TELEA_RADIUS = 5
WORK_SIDE = 1024  # Telea and blur work at most this size (they are a starting point, not the result)


Network = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""An inpainting network: (rgb, region) -> rgb with the region filled."""


def prefill(rgb: np.ndarray, alpha: np.ndarray | None, mask: np.ndarray | None, mode: str,
            network: Network | None = None) -> np.ndarray:
    """``rgb`` (H x W x 3 uint8) with its transparent pixels (``alpha`` 0) filled as new canvas, then the
    masked pixels (``mask`` > 0, uint8) filled by ``mode``, blended by the mask's value (a soft edge keeps
    part of the picture). ``network`` fills for ``inpaint`` (Telea when None). Returns a new array;
    pixels outside both stay as they are."""
    out = np.array(rgb[..., :3], dtype=np.uint8, copy=True)
    if alpha is not None:
        hole = alpha == 0
        if hole.any() and not hole.all():
            out = np.where(hole[..., None], fill(out, hole, NEW_CANVAS_FILL), out)
        elif hole.all():
            out[:] = NEUTRAL
    if mask is None or mode == "none" or not mask.any():
        return out
    region = mask > 0
    if region.all():
        filled = np.full_like(out, NEUTRAL) if mode != "blur" else np.broadcast_to(
            out.reshape(-1, 3).mean(0).round().astype(np.uint8), out.shape).copy()
    else:
        filled = fill(out, region, mode, network)
    weight = mask.astype(np.uint32)[..., None]
    return ((filled.astype(np.uint32) * weight + out.astype(np.uint32) * (255 - weight) + 127) // 255).astype(
        np.uint8)


def fill(rgb: np.ndarray, region: np.ndarray, mode: str, network: Network | None = None) -> np.ndarray:
    """``rgb`` with the pixels of ``region`` (bool, some but not all) replaced by ``mode``'s fill."""
    if mode == "neutral":
        return np.where(region[..., None], np.uint8(NEUTRAL), rgb).astype(np.uint8)
    if mode == "border":
        return border(rgb, region)
    if mode == "blur":
        return blur(rgb, region)
    if mode == "inpaint":
        return (network or telea)(rgb, region)
    raise ValueError(f"unknown fill mode {mode!r}")


def border(rgb: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Each region pixel takes the colour of the nearest pixel outside it (edge extension)."""
    _, (rows, cols) = ndimage.distance_transform_edt(region, return_indices=True)
    return rgb[rows, cols]


def blur(rgb: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The region filled with a wide blur of the colours around it (normalised: the region itself has no
    weight), edge-extended where the blur does not reach."""
    keep = (~region).astype(np.float32)
    height, width = region.shape
    sigma = max(4.0, 0.15 * max(height, width))
    small = max(1, int(np.ceil(max(height, width) / 256)))  # blur a reduced copy: wide blurs cost a lot
    weights = ndimage.gaussian_filter(keep[::small, ::small], sigma / small, mode="nearest")
    out = border(rgb, region).astype(np.float32)
    total = np.zeros(out.shape, np.float32)
    for channel in range(3):
        layer = ndimage.gaussian_filter(rgb[::small, ::small, channel] * keep[::small, ::small], sigma / small,
                                        mode="nearest")
        total[..., channel] = _upsample(layer / np.maximum(weights, 1e-6), small, (height, width))
    reached = _upsample(weights, small, (height, width)) > 1e-3
    out = np.where(reached[..., None], total, out)
    return np.where(region[..., None], np.clip(out.round(), 0, 255).astype(np.uint8), rgb)


def telea(rgb: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The region filled by OpenCV's Telea inpainting (fast marching from the edge inward); large pictures
    are filled at a reduced size first and the region edge-extended beneath, so the cost stays bounded."""
    import cv2

    height, width = region.shape
    scale = min(1.0, WORK_SIDE / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small_rgb = cv2.resize(np.ascontiguousarray(border(rgb, region)), size, interpolation=cv2.INTER_AREA)
        small_region = cv2.resize(region.astype(np.uint8) * 255, size, interpolation=cv2.INTER_NEAREST)
        small = cv2.inpaint(small_rgb, small_region, TELEA_RADIUS, cv2.INPAINT_TELEA)
        filled = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    else:
        filled = cv2.inpaint(np.ascontiguousarray(rgb), region.astype(np.uint8) * 255, TELEA_RADIUS,
                             cv2.INPAINT_TELEA)
    return np.where(region[..., None], filled, rgb).astype(np.uint8)


def _upsample(values: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    if factor == 1:
        return values[:shape[0], :shape[1]]
    zoomed = ndimage.zoom(values, factor, order=1, mode="nearest")
    pad = [(0, max(0, shape[0] - zoomed.shape[0])), (0, max(0, shape[1] - zoomed.shape[1]))]
    return np.pad(zoomed, pad, mode="edge")[:shape[0], :shape[1]]


class Lama:
    """The LaMa inpainting network (``[server] lama``: a checkpoint spandrel reads), loaded on first use.

    It fills around the region only: the region's bounds plus as much context again (at least 32
    pixels), at most ``LAMA_SIDE`` a side (reduced beyond that), so its cost follows the hole, not the
    picture. Pickle checkpoints (.pth, .ckpt) are refused unless ``allow_pickle``.
    """

    LAMA_SIDE = 512

    def __init__(self, source: str, device, allow_pickle: bool = False):
        self.source, self.device, self.allow_pickle = source, device, allow_pickle
        self._model = None
        self._lock = threading.Lock()

    def load(self):
        from backend.engine.models import ModelError, check_pickle

        with self._lock:
            if self._model is None:
                check_pickle(self.source, self.allow_pickle)
                try:
                    import spandrel

                    model = spandrel.ModelLoader().load_from_file(self.source)
                except Exception as exc:
                    raise ModelError("model_load_failed", f"the LaMa inpainting network {self.source} could not "
                                     f"be loaded: {exc}", "fill") from exc
                if model.architecture.id != "LaMa":
                    raise ModelError("model_load_failed", f"{self.source} is a {model.architecture.id} network, "
                                     "not LaMa", "fill")
                self._model = model.to(self.device).eval()
            return self._model

    def __call__(self, rgb: np.ndarray, region: np.ndarray) -> np.ndarray:
        import torch
        from PIL import Image

        model = self.load()
        rows, cols = np.nonzero(region)
        height, width = region.shape
        pad = max(32, int(max(np.ptp(rows), np.ptp(cols))) // 2 + 1)
        y0, y1 = max(0, rows.min() - pad), min(height, rows.max() + 1 + pad)
        x0, x1 = max(0, cols.min() - pad), min(width, cols.max() + 1 + pad)
        crop, hole = rgb[y0:y1, x0:x1], region[y0:y1, x0:x1]
        scale = min(1.0, self.LAMA_SIDE / max(crop.shape[:2]))
        size = (max(8, -(-round(crop.shape[1] * scale) // 8) * 8), max(8, -(-round(crop.shape[0] * scale) // 8) * 8))
        # reduced, the hole's own colour would smear past its edge and a thin hole (a wire across a panorama)
        # could vanish from a sampled mask, so LaMa kept what was to be removed: the hole is edge-extended
        # first, and every reduced pixel the hole touches is masked
        picture = np.asarray(Image.fromarray(border(crop, hole)).resize(size, Image.Resampling.BICUBIC))
        mask = np.asarray(Image.fromarray(hole.astype(np.uint8) * 255).resize(size, Image.Resampling.BOX)) > 0
        mask = ndimage.binary_dilation(mask, iterations=2)  # cover the resampled edge
        with torch.no_grad():
            image = torch.from_numpy(np.array(picture)).permute(2, 0, 1)[None].float().div(255).to(self.device)
            holes = torch.from_numpy(mask)[None, None].float().to(self.device)
            out = model(image, holes)[0].permute(1, 2, 0).clamp(0, 1).mul(255).round().byte().cpu().numpy()
        filled = np.asarray(Image.fromarray(out).resize((crop.shape[1], crop.shape[0]), Image.Resampling.BICUBIC))
        result = rgb.copy()
        result[y0:y1, x0:x1] = np.where(hole[..., None], filled, crop)
        return result
