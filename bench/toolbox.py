"""The edit toolbox's figures: the seam across a hard mask's border, and what an expand costs.

Seam: inpaints a hard-edged rectangle of a smooth synthetic picture (soft photo-like texture), with
soft inpainting and with the old behaviour (``soft_inpaint: false``). Across the border (each
distance from the hard mask's edge out to ``shared.rules.reach``) it divides the composite's mean
gradient magnitude by the input's own at the same pixels and prints the worst distance (1.0 = no
seam; the target is at most 1.3), plus the largest one-pixel step of the result's alpha as a share
of its ramp. "Shaping alone" replaces the model by a repaint that is the picture 24 levels lighter
(a fill that got the light slightly wrong): the seam the grow / feather ramp itself makes.
Expand: grows a picture (default 3000 x 2000) by 512 pixels on one side and prints the passes, the
pixels they diffused, the seconds, and whether the original pixels came back byte-identical.

Runs on the demo model through the engine (no server): its pictures are noise, so the seam figure
here is a worst case for the generated side (noise has far more gradient than a photo); run it with
``--model`` on real weights (``--config``) for the figure on a real model.

    python bench/toolbox.py                       # demo model, CPU
    python bench/toolbox.py --config easel.toml --model sd15 --device cuda
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from backend.config import Config, load_config  # noqa: E402
from backend.engine import masks  # noqa: E402
from backend.engine.engine import MATCH_LIGHT_MIN, Engine  # noqa: E402
from backend.engine.job import EditJob  # noqa: E402
from backend.engine.models import ModelRegistry, pick_device  # noqa: E402
from backend.fixtures.demo_model import ensure_demo_model, use_demo  # noqa: E402
from shared.compose import composite  # noqa: E402
from shared.rules import MASK_FEATHER, MASK_GROW, reach  # noqa: E402


class Quiet:
    passes: list = []

    def started(self, steps, passes):
        self.passes = passes

    def progress(self, *args):
        pass

    def is_cancelled(self):
        return False


def smooth_picture(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Photo-like RGBA: blurred noise at a few scales over a gradient (soft texture, no hard edges)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.dstack([80 + 100 * x / width, 90 + 80 * y / height, 140 - 60 * x / width])
    for sigma, amount in ((24, 40), (6, 18), (1.5, 6)):
        rgb += amount * ndimage.gaussian_filter(rng.standard_normal((height, width, 3)), (sigma, sigma, 0)) * sigma
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    return np.dstack([rgb, np.full((height, width), 255, np.uint8)])


def gradient(rgb: np.ndarray) -> np.ndarray:
    grey = rgb[..., :3].astype(np.float32).mean(axis=2)
    return np.hypot(ndimage.sobel(grey, axis=0), ndimage.sobel(grey, axis=1))


def edit(mode: str, model: str, image: np.ndarray, steps: int, **fields) -> EditJob:
    return EditJob(mode=mode, model=model, prompt="a stone wall", negative_prompt="", seed=7, steps=steps,
                   guidance=7.0, strength=1.0, batch=1, sampler="dpmpp_2m_karras", image=image, **fields)


def seam(engine: Engine, model: str, steps: int) -> None:
    image = smooth_picture(768, 576)
    mask = np.zeros(image.shape[:2], np.uint8)
    mask[200:380, 260:500] = 255
    outside = np.rint(ndimage.distance_transform_edt(mask == 0)).astype(int)
    base = gradient(image)

    def ratio(out: np.ndarray) -> float:
        """The seam: across the border, at each distance from the mask, the composite's mean gradient over
        the input's at the same pixels; the worst distance."""
        grad = gradient(out)
        return max(grad[outside == d].mean() / base[outside == d].mean()
                   for d in range(1, reach(MASK_GROW, MASK_FEATHER) + 1))
    print(f"seam: hard rectangle 240x180 on a 768x576 smooth picture, grow {MASK_GROW}, feather {MASK_FEATHER}, "
          f"{steps} steps")
    for soft in (True, False):  # the seam the mask shaping itself makes: a repaint that only shifts the light
        alpha = masks.shape_mask(mask, MASK_GROW, MASK_FEATHER, soft=soft)
        shifted = image.copy()
        shifted[..., :3] = np.clip(image[..., :3].astype(int) + 24, 0, 255).astype(np.uint8)
        if soft:  # as the engine lays a soft inpaint in: its light matched along the edge first
            shifted = masks.match_light(shifted, image, alpha, max(MASK_FEATHER, MATCH_LIGHT_MIN), MASK_GROW)
        out = composite(image, np.dstack([shifted[..., :3], alpha]), (0, 0))
        print(f"  soft_inpaint={str(soft).lower():5}  shaping alone (a repaint 24 levels lighter): composite "
              f"gradient / input gradient, worst distance: {ratio(out):.2f}")
    for soft in (True, False):
        layer = engine.run(edit("inpaint", model, image, steps, mask=mask, soft=soft), Quiet()).layers[0]
        out = composite(image, layer.pixels, layer.offset)
        x, y = layer.offset
        alpha = layer.pixels[..., 3].astype(int)
        step = max(np.abs(np.diff(alpha, axis=0)).max(), np.abs(np.diff(alpha, axis=1)).max()) / 255
        print(f"  soft_inpaint={str(soft).lower():5}  {model} model: composite gradient / input gradient, worst "
              f"distance: {ratio(out):.2f}   largest alpha step: {step:.3f} of the ramp")


def expand(engine: Engine, model: str, steps: int, size: tuple[int, int], side: int) -> None:
    width, height = size
    image = smooth_picture(width, height, seed=1)
    canvas = np.zeros((height, width + side, 4), np.uint8)
    canvas[:, :width] = image
    reporter = Quiet()
    start = time.perf_counter()
    layer = engine.run(edit("expand", model, canvas, steps, expand=(0, 0, side, 0), fill="border"), reporter)
    seconds = time.perf_counter() - start
    out = layer.layers[0].pixels
    identical = bool((out[:, :width] == image).all())
    pixels = sum(p.size[0] * p.size[1] for p in reporter.passes)
    print(f"expand: {width}x{height} + {side} px right, {steps} steps: {len(reporter.passes)} passes "
          f"({', '.join(f'{p.size[0]}x{p.size[1]}' for p in reporter.passes)}), {pixels / 1e6:.2f} Mpx diffused "
          f"(the band is {side * height / 1e6:.2f} Mpx), {seconds:.1f} s; original byte-identical: {identical}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="an easel.toml with real models (default: the demo model)")
    parser.add_argument("--model", default="demo", help="model name (default demo)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=(3000, 2000), metavar=("W", "H"))
    parser.add_argument("--side", type=int, default=512)
    args = parser.parse_args()
    config = load_config(args.config) if args.config else use_demo(Config(port=0), ensure_demo_model())
    engine = Engine(ModelRegistry(config, *pick_device(args.device)))
    engine.registry.get(args.model)  # load before timing
    seam(engine, args.model, args.steps)
    expand(engine, args.model, args.steps, tuple(args.size), args.side)


if __name__ == "__main__":
    main()
