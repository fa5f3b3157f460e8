"""The edit toolbox's figures: the seam across a hard mask's border and an expand's old edge, and what
an expand costs.

Seam, inpaint: inpaints a hard-edged rectangle of a smooth synthetic picture (soft photo-like
texture), with soft inpainting and with the old behaviour (``soft_inpaint: false``). Across the border
(each distance from the hard mask's edge out to ``shared.rules.reach``) it divides the composite's
mean gradient magnitude by the input's own at the same pixels and prints the worst distance (1.0 = no
seam; the target is at most 1.3), plus the largest one-pixel step of the result's alpha as a share
of its ramp. "Shaping alone" replaces the model by a repaint that is the picture 24 levels lighter
(a fill that got the light slightly wrong): the seam the grow / feather ramp itself makes.

Seam, expand: a picture is cut (its right 192 px; its left 96 and bottom 160) and grown back by
expand, so the uncut picture says what each new pixel's gradient would be without a seam. At each
distance from the old edge (0: the picture's own edge pixels, whose gradient sees the band; 1, 2 …
into the band) the composite's mean gradient magnitude is divided by the uncut picture's at the same
pixels; printed: the worst over the old edge and the first ``reach`` pixels (the seam), the worst over
the whole band, and the same ratio over the pixels beside the borders between the band's cells (where
two passes meet). "Shaping alone": every pass returns the uncut picture 24 levels lighter, or each pass
off by its own 12–36 levels sloping across its box (passes that disagree with each other); it measures
what laying the band in (and matching its light) does. With the model: the same ratios, plus the
light error near the edge (the band's low-passed light minus the uncut picture's, in levels).

Photos: the shaping-alone seams (inpaint of a hard centre rectangle, expand by a quarter of the width
on the right) on scikit-image's bundled photos (``skimage.data``: read offline from its package
folder). scikit-image is not an Easel dependency; it comes with controlnet-aux, so it is imported
lazily here, and ``--no-photos`` skips it. The demo model's repaint of a photo is noise, so only the
shaping is measured on photos.

Expand cost: grows a picture (default 3000 x 2000) by 512 pixels on one side and prints the passes, the
pixels they diffused, the seconds, and whether the original pixels came back byte-identical.

Runs on the demo model through the engine (no server): its pictures are noise, so the seam figure
for the model is a worst case for the generated side (noise has far more gradient than a photo); run it
with ``--model`` on real weights (``--config``) for the figure on a real model.

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
from PIL import Image  # noqa: E402
from scipy import ndimage  # noqa: E402

from backend.config import Config, load_config  # noqa: E402
from backend.engine import compose, masks  # noqa: E402
from backend.engine.engine import MATCH_LIGHT_MIN, Engine, expand_match  # noqa: E402
from backend.engine.job import EditJob  # noqa: E402
from backend.engine.models import ModelRegistry, pick_device  # noqa: E402
from backend.engine.passes import plan_passes  # noqa: E402
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


SHIFT = 24
"""Levels the "shaping alone" repaint is off by: a fill that got the light slightly wrong."""

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
"""scikit-image's bundled photos (read from its package folder, no download)."""


def lighter(rgb: np.ndarray, shift: float | np.ndarray = SHIFT) -> np.ndarray:
    out = rgb.copy()
    shift = np.asarray(shift, np.float64)
    out[..., :3] = np.clip(np.rint(rgb[..., :3].astype(np.float64) + (shift[..., None] if shift.ndim else shift)),
                           0, 255).astype(np.uint8)
    return out


def uneven(index: int, shape: tuple[int, int], shift: int = SHIFT) -> np.ndarray:
    """The light error of pass ``index`` of an uneven repaint: each pass off by its own amount (½ to 1½ x
    ``shift``), sloping by ½ x ``shift`` across its box: passes disagree with each other and along the edge."""
    base = shift * (1.0 + 0.5 * np.sin(2.1 * index + 0.7))
    return base + 0.5 * shift * (np.linspace(-0.5, 0.5, shape[1])[None, :] + np.linspace(-0.5, 0.5, shape[0])[:, None])


def profile(truth: np.ndarray, out: np.ndarray, distance: np.ndarray, depths: range) -> list[float]:
    """At each distance in ``depths``: the composite's mean gradient magnitude over the truth's at the
    same pixels (1.0 = no seam)."""
    grad, base = gradient(out), gradient(truth)
    return [float(grad[distance == d].mean() / max(base[distance == d].mean(), 1e-6)) for d in depths]


# -- inpaint -----------------------------------------------------------------------------------------


def inpaint_distance(mask: np.ndarray) -> np.ndarray:
    """Each pixel's distance outside the hard mask (rounded; 0 inside)."""
    return np.rint(ndimage.distance_transform_edt(mask == 0)).astype(int)


def inpaint_shaping(image: np.ndarray, mask: np.ndarray, soft: bool, shift: int = SHIFT) -> np.ndarray:
    """The composite of an inpaint whose repaint is the picture ``shift`` levels lighter, shaped and laid
    in as the engine does (soft: light matched along the edge first)."""
    alpha = masks.shape_mask(mask, MASK_GROW, MASK_FEATHER, soft=soft)
    repaint = lighter(image, shift)
    if soft:
        repaint = masks.match_light(repaint, image, alpha, max(MASK_FEATHER, MATCH_LIGHT_MIN), MASK_GROW)
    return composite(image, np.dstack([repaint[..., :3], alpha]), (0, 0))


def inpaint_seam(image: np.ndarray, mask: np.ndarray, out: np.ndarray) -> float:
    """The worst distance across the border (1 … the mask's reach) of ``profile``."""
    return max(profile(image, out, inpaint_distance(mask), range(1, reach(MASK_GROW, MASK_FEATHER) + 1)))


# -- expand ------------------------------------------------------------------------------------------


def expand_case(truth: np.ndarray, sides: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(original, canvas): ``truth`` less its ``sides``, and the transparent canvas an expand of it paints on
    (as the server's intake builds it)."""
    left, top, right, bottom = sides
    height, width = truth.shape[:2]
    original = truth[top:height - bottom, left:width - right]
    canvas = np.zeros((height, width, 4), np.uint8)
    canvas[top:height - bottom, left:width - right] = original
    return original, canvas


def expand_distance(shape: tuple[int, int], sides: tuple[int, int, int, int]) -> np.ndarray:
    """Each pixel's distance into the new band from the old picture (rounded, 1, 2 …); the picture's
    own pixels on its edge are 0 and those further in negative."""
    left, top, right, bottom = sides
    inside = np.zeros(shape, bool)
    inside[top:shape[0] - bottom, left:shape[1] - right] = True
    into_band = np.rint(ndimage.distance_transform_edt(~inside)).astype(int)
    into_picture = np.rint(ndimage.distance_transform_edt(inside)).astype(int)
    return np.where(inside, 1 - into_picture, into_band)


def expand_shaping(truth: np.ndarray, sides: tuple[int, int, int, int], soft: bool, native: int = 512,
                   shift: int = SHIFT, drift: bool = False) -> np.ndarray:
    """The canvas of an expand whose every pass returns the truth ``shift`` levels lighter (a band that
    continues the picture perfectly but with its light slightly off; ``drift``: off by ``uneven``
    amounts), laid in pass by pass as the engine does (soft: each cell's light matched to the pixels
    beside it first)."""
    original, canvas = expand_case(truth, sides)
    job = edit("expand", "none", canvas, 1, expand=sides, fill="border", soft=soft)
    for index, p in enumerate(plan_passes(job, native)):
        crop = truth[p.box.y:p.box.y1, p.box.x:p.box.x1, :3]
        repaint = lighter(crop, uneven(index, crop.shape[:2], shift) if drift else shift)
        if p.resampled:
            repaint = np.asarray(Image.fromarray(repaint).resize(p.size, Image.Resampling.LANCZOS))
        compose.paint(canvas, p, repaint, *(expand_match(job, native) if soft else (0, 0)))
    check_kept(original, canvas, sides)
    return canvas


def check_kept(original: np.ndarray, canvas: np.ndarray, sides: tuple[int, int, int, int]) -> None:
    """Every figure of an expand is of one whose picture came back byte for byte."""
    left, top = sides[0], sides[1]
    kept = canvas[top:top + original.shape[0], left:left + original.shape[1]]
    if not (kept == original).all():
        raise AssertionError("the expand changed the picture's own pixels")


def expand_seam(truth: np.ndarray, sides: tuple[int, int, int, int], out: np.ndarray,
                native: int = 512) -> tuple[float, float, float]:
    """(worst ``profile`` over the seam: the picture's edge pixels and the band's first ``reach`` pixels;
    worst over the whole band; the same ratio over the pixels beside the borders between the band's
    cells, where two passes meet), the truth being the picture the original was cut from."""
    distance = expand_distance(out.shape[:2], sides)
    near = reach(MASK_GROW, MASK_FEATHER)
    ratios = profile(truth, out, distance, range(0, int(distance.max()) + 1))
    label = np.zeros(out.shape[:2], int)
    for number, p in enumerate(plan_passes(edit("expand", "none", out, 1, expand=sides), native), 1):
        label[p.box.y:p.box.y1, p.box.x:p.box.x1][p.alpha == 255] = number
    borders = np.zeros(label.shape, bool)
    for axis in (0, 1):
        a, b = (label[1:], label[:-1]) if axis == 0 else (label[:, 1:], label[:, :-1])
        meet = (a != b) & (a > 0) & (b > 0)
        (borders[1:] if axis == 0 else borders[:, 1:])[meet] = True
        (borders[:-1] if axis == 0 else borders[:, :-1])[meet] = True
    cells = (gradient(out)[borders].mean() / gradient(truth)[borders].mean()) if borders.any() else 1.0
    return max(ratios[:near + 1]), max(ratios), float(cells)


def light_error(truth: np.ndarray, out: np.ndarray, sides: tuple[int, int, int, int], depth: int = 16,
                sigma: float = 16.0) -> float:
    """How far the band's local light is from the truth's in its first ``depth`` pixels: mean |low-passed
    (Gaussian, ``sigma``: the light, not the texture) grey difference|, in levels. Unlike the gradient
    ratio it says something for the demo model's noise too (its light near the edge, not its texture)."""
    difference = out[..., :3].astype(np.float32).mean(axis=2) - truth[..., :3].astype(np.float32).mean(axis=2)
    distance = expand_distance(out.shape[:2], sides)
    return float(np.abs(ndimage.gaussian_filter(difference, sigma))[(distance >= 1) & (distance <= depth)].mean())


def seam(engine: Engine, model: str, steps: int) -> None:
    image = smooth_picture(768, 576)
    mask = np.zeros(image.shape[:2], np.uint8)
    mask[200:380, 260:500] = 255
    print(f"seam: hard rectangle 240x180 on a 768x576 smooth picture, grow {MASK_GROW}, feather {MASK_FEATHER}, "
          f"{steps} steps")
    for soft in (True, False):  # the seam the mask shaping itself makes: a repaint that only shifts the light
        out = inpaint_shaping(image, mask, soft)
        print(f"  soft_inpaint={str(soft).lower():5}  shaping alone (a repaint {SHIFT} levels lighter): composite "
              f"gradient / input gradient, worst distance: {inpaint_seam(image, mask, out):.2f}")
    for soft in (True, False):
        layer = engine.run(edit("inpaint", model, image, steps, mask=mask, soft=soft), Quiet()).layers[0]
        out = composite(image, layer.pixels, layer.offset)
        alpha = layer.pixels[..., 3].astype(int)
        step = max(np.abs(np.diff(alpha, axis=0)).max(), np.abs(np.diff(alpha, axis=1)).max()) / 255
        print(f"  soft_inpaint={str(soft).lower():5}  {model} model: composite gradient / input gradient, worst "
              f"distance: {inpaint_seam(image, mask, out):.2f}   largest alpha step: {step:.3f} of the ramp")


def expand_seams(engine: Engine, model: str, steps: int) -> None:
    truth = smooth_picture(768, 576, seed=2)
    cases = (("right 192", (0, 0, 192, 0)), ("left 96 + bottom 160", (96, 0, 0, 160)))
    print(f"expand seam: a 768x576 smooth picture cut and grown back; composite gradient / the uncut picture's "
          f"gradient at the same pixels, worst over the old edge and {reach(MASK_GROW, MASK_FEATHER)} px into the "
          f"band (worst over the whole band)")
    for name, sides in cases:
        for soft in (True, False):
            near, whole, cells = expand_seam(truth, sides, expand_shaping(truth, sides, soft))
            print(f"  {name:21} soft_inpaint={str(soft).lower():5}  shaping alone (a repaint {SHIFT} levels "
                  f"lighter): {near:.2f} ({whole:.2f}; between cells {cells:.2f})")
            near, whole, cells = expand_seam(truth, sides, expand_shaping(truth, sides, soft, drift=True))
            print(f"  {name:21} soft_inpaint={str(soft).lower():5}  shaping alone (each pass off by its own "
                  f"{SHIFT // 2}-{SHIFT * 3 // 2} levels, sloping): {near:.2f} ({whole:.2f}; between cells "
                  f"{cells:.2f})")
    sides = cases[0][1]
    for soft in (True, False):
        original, canvas = expand_case(truth, sides)
        out = engine.run(edit("expand", model, canvas, steps, expand=sides, fill="border", soft=soft),
                         Quiet()).layers[0].pixels
        check_kept(original, out, sides)
        near, whole, cells = expand_seam(truth, sides, out, engine.registry.get(model).native_size)
        print(f"  {cases[0][0]:21} soft_inpaint={str(soft).lower():5}  {model} model: {near:.2f} ({whole:.2f}; "
              f"between cells {cells:.2f}); light error in the band's first 16 px: "
              f"{light_error(truth, out, sides):.1f} levels")


def photo_seams(names: tuple[str, ...] = PHOTOS, shift: int = SHIFT) -> None:
    """The shaping-alone seams on real photos: what mask shaping and light matching do on real gradients
    (a model's own repaint is not measured here: the demo model's is noise)."""
    import skimage.data  # (installed with controlnet-aux; the bench's only use of it)

    print(f"photo seams, shaping alone (a repaint {shift} levels lighter), scikit-image's photos: composite "
          f"gradient / the photo's own, worst distance (soft_inpaint true / false)")
    for name in names:
        photo = getattr(skimage.data, name)()
        photo = np.dstack([photo[..., :3], np.full(photo.shape[:2], 255, np.uint8)])
        height, width = photo.shape[:2]
        mask = np.zeros((height, width), np.uint8)
        mask[height // 3:height * 2 // 3, width // 3:width * 2 // 3] = 255
        inpaint = [inpaint_seam(photo, mask, inpaint_shaping(photo, mask, soft, shift)) for soft in (True, False)]
        sides = (0, 0, width // 4, 0)
        grown = [expand_seam(photo, sides, expand_shaping(photo, sides, soft, shift=shift, drift=drift))[0]
                 for drift in (False, True) for soft in (True, False)]
        print(f"  {name:10} {width}x{height}  inpaint hard rectangle {width // 3}x{height // 3}: "
              f"{inpaint[0]:.2f} / {inpaint[1]:.2f}   expand right {width // 4}: {grown[0]:.2f} / {grown[1]:.2f}"
              f"   the same, each pass off by its own amount: {grown[2]:.2f} / {grown[3]:.2f}")


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
    parser.add_argument("--photos", action=argparse.BooleanOptionalAction, default=True,
                        help="measure the shaping-alone seams on scikit-image's photos too (default: yes)")
    parser.add_argument("--shift", type=int, default=SHIFT, help=f"levels the shaping-alone repaint is off by "
                        f"on the photos (default {SHIFT})")
    args = parser.parse_args()
    config = load_config(args.config) if args.config else use_demo(Config(port=0), ensure_demo_model())
    engine = Engine(ModelRegistry(config, *pick_device(args.device)))
    engine.registry.get(args.model)  # load before timing
    seam(engine, args.model, args.steps)
    expand_seams(engine, args.model, args.steps)
    if args.photos:
        photo_seams(shift=args.shift)
    expand(engine, args.model, args.steps, tuple(args.size), args.side)


if __name__ == "__main__":
    main()
