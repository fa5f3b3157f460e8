"""Full resolution: tiled refine of large pictures, and the super-resolution upscaler.

On the demo model (CPU unless a GPU is there), through the engine:

  tiles    seconds per tile of an img2img refine of pictures tiled in 2x2, 4x4 and 8x6 grids (the cost
           should grow linearly with the tiles: the same s/tile for every grid);
  seams    gradient across tile borders over gradient elsewhere (same place in the 8-pixel latent grid)
           on a refined flat-colour and a photo-like picture; below 1.2 = no visible seam;
  detail   a 4096x3072 photo-like picture refined at strength 0.3 in tiles against the one-pass path it
           replaces (diffused at 728x544 and stretched back): of the input's fine detail (what a down-up
           round trip to 728x544 removes), the share each result still has (projection of the result's
           fine detail on the input's), against what the model's VAE alone keeps;
  upscaler megapixels/s of the tiled super-resolution call against spandrel's plain whole-picture call,
           for the demo Compact x4 and random full-size ESRGAN x4 (RRDB 64x23) and Compact x4 networks.

    python bench/fullres.py                # everything
    python bench/fullres.py --only tiles --steps 10
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
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import ndimage  # noqa: E402

from backend.config import Config  # noqa: E402
from backend.engine import passes as planner  # noqa: E402
from backend.engine.engine import Engine  # noqa: E402
from backend.engine.job import EditJob  # noqa: E402
from backend.engine.models import ModelRegistry, pick_device  # noqa: E402
from backend.engine.upscalers import Upscalers, upscale_tiled  # noqa: E402
from backend.fixtures.demo_model import demo_upscalers, ensure_demo_model, use_demo  # noqa: E402
from shared.geometry import Box, whole_canvas  # noqa: E402


class Quiet:
    def __init__(self):
        self.passes = []

    def started(self, steps, passes):
        self.passes = passes

    def progress(self, step, total, preview):
        pass

    def is_cancelled(self):
        return False


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Photo-like texture: fine grain over soft shapes, no line of it special."""
    noise = np.random.default_rng(seed).normal(size=(height, width, 3)).astype(np.float32)
    texture = ndimage.gaussian_filter(noise, (1.5, 1.5, 0)) + ndimage.gaussian_filter(noise, (12, 12, 0)) * 6
    texture = (texture - texture.min()) / (texture.max() - texture.min())
    return (texture * 255).astype(np.uint8)


def rgba(rgb: np.ndarray) -> np.ndarray:
    return np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])


def refine(engine: Engine, image: np.ndarray, steps: int, strength: float = 0.3) -> tuple[np.ndarray, list, float]:
    job = EditJob(mode="img2img", model="demo", prompt="a stone wall", negative_prompt="", seed=1, steps=steps,
                  guidance=7.0, strength=strength, batch=1, sampler="dpmpp_2m_karras", image=rgba(image))
    reporter = Quiet()
    start = time.perf_counter()
    result = engine.run(job, reporter)
    return result.layers[0].pixels[..., :3], reporter.passes, time.perf_counter() - start


def seams(picture: np.ndarray, boxes: list[Box]) -> float:
    return seams_at(picture, [c for b in boxes for c in (b.x, b.x1)], [r for b in boxes for r in (b.y, b.y1)])


def last_borders(boxes: list[Box]) -> tuple[list[int], list[int]]:
    """Where the last column and row of tiles begin and the ones before them end (off the 8-px grid of the
    others on a picture whose sides are not multiples of 8, before the tiles were planned on it extended)."""
    xs, ys = sorted({b.x for b in boxes}), sorted({b.y for b in boxes})
    tile = boxes[0].width
    return [xs[-1], xs[-2] + tile], [ys[-1], ys[-2] + tile]


def seams_at(picture: np.ndarray, columns: list[int], rows: list[int]) -> float:
    gray = picture.astype(np.float32).mean(axis=2)
    border, interior = [], []
    for axis, coordinates in ((1, columns), (0, rows)):
        steps = np.abs(np.diff(gray, axis=axis)).mean(axis=1 - axis)
        lines = {c - 1 for c in coordinates if 0 < c < gray.shape[axis]}
        phases = {line % 8 for line in lines}
        border += [steps[line] for line in lines]
        interior += [steps[line] for line in range(len(steps)) if line % 8 in phases and line not in lines]
    return float(np.mean(border) / max(np.mean(interior), 1e-6))


def fine_detail(picture: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """What a down-up round trip through ``size`` removes from ``picture``."""
    height, width = picture.shape[:2]
    image = Image.fromarray(picture)
    round_trip = image.resize(size, Image.Resampling.LANCZOS).resize((width, height), Image.Resampling.LANCZOS)
    return picture.astype(np.float32) - np.asarray(round_trip, np.float32)


def bench_tiles(engine: Engine, steps: int) -> None:
    print(f"tiled refine, strength 0.3, {steps} steps ({int(steps * 0.3)} per tile), demo model on "
          f"{engine.device}:")
    for nx, ny in ((2, 2), (4, 4), (8, 6)):
        width, height = 512 + (nx - 1) * 448, 512 + (ny - 1) * 448
        refine(engine, photo(512, 512), steps)  # warm
        _, passes, seconds = refine(engine, photo(width, height), steps)
        print(f"  {nx}x{ny} grid ({width}x{height}): {len(passes)} tiles, {seconds:.2f} s, "
              f"{seconds / len(passes):.3f} s/tile")


def bench_seams(engine: Engine, steps: int) -> None:
    flat = np.zeros((760, 1100, 3), np.uint8)
    flat[...] = (120, 140, 90)
    for name, picture in (("flat colour", flat), ("photo", photo(1100, 760))):
        for strength in (0.3, 0.6):
            out, passes, _ = refine(engine, picture, steps, strength)
            boxes = [p.box for p in passes]
            print(f"  seams, {name} 1100x760, strength {strength}: border/interior gradient "
                  f"{seams(out, boxes):.2f} ({len(passes)} tiles); input's own {seams(picture, boxes):.2f}")
    flat = np.zeros((3001, 4097, 3), np.uint8)
    flat[...] = (120, 140, 90)
    for name, picture in (("flat colour", flat), ("photo", photo(4097, 3001))):  # sides off the 8-px grid
        out, passes, _ = refine(engine, picture, steps, 0.3)
        columns, rows = last_borders([p.box for p in passes])
        print(f"  seams, {name} 4097x3001, strength 0.3: border/interior gradient at the last column's and "
              f"row's borders (x {columns}, y {rows}) {seams_at(out, columns, rows):.2f}, at all "
              f"{seams(out, [p.box for p in passes]):.2f} ({len(passes)} tiles); input's own "
              f"{seams_at(picture, columns, rows):.2f}")


def bench_detail(engine: Engine, steps: int) -> None:
    picture = photo(4096, 3072)
    old = whole_canvas(4096, 3072, 512)
    size = (old.diffusion_width, old.diffusion_height)
    detail = fine_detail(picture, size)
    energy = float((detail ** 2).mean())
    tiled, passes, seconds = refine(engine, picture, steps)
    needs_tiles = planner.needs_tiles
    planner.needs_tiles = lambda *args: False  # the one-pass plan the tiles replace
    try:
        one, one_passes, one_seconds = refine(engine, picture, steps)
    finally:
        planner.needs_tiles = needs_tiles
    vae = engine.registry.get("demo").base.vae  # the ceiling: what the model's VAE alone keeps, at native scale
    crop = picture[:512, :512]
    with torch.inference_mode():
        latents = vae.encode(torch.from_numpy(crop.copy()).permute(2, 0, 1)[None].float().to(vae.device) / 127.5 - 1)
        decoded = vae.decode(latents.latent_dist.mean).sample
    decoded = ((decoded[0].permute(1, 2, 0).float().cpu().numpy() + 1) * 127.5).clip(0, 255).round().astype(np.uint8)
    crop_size = (round(512 * size[0] / 4096), round(512 * size[1] / 3072))
    crop_detail, decoded_detail = fine_detail(crop, crop_size), fine_detail(decoded, crop_size)
    ceiling = float((decoded_detail * crop_detail).mean()) / float((crop_detail ** 2).mean())
    print(f"  detail: the model's VAE round trip alone keeps {ceiling:.0%} of it (the most a refine can keep)")
    for name, out, ran, secs in (("tiles", tiled, passes, seconds), ("one pass", one, one_passes, one_seconds)):
        out_detail = fine_detail(out, size)
        energy_ratio = float((out_detail ** 2).mean()) / energy
        kept = float((out_detail * detail).mean()) / energy  # the input's own detail that is still there
        scales = sorted({round(p.size[0] / p.box.width, 3) for p in ran})
        print(f"  detail, 4096x3072 at strength 0.3, {name}: {len(ran)} pass(es) at scale {scales}, the input's "
              f"fine detail kept {kept:.0%} (fine-detail energy {energy_ratio:.0%} of the input's), {secs:.1f} s")


def bench_upscaler(device: torch.device, root: Path) -> None:
    from spandrel import ImageModelDescriptor, ModelLoader
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN

    models = {"demo Compact x4": Upscalers(demo_upscalers(root), device, torch.float32).load("4x-demo-compact")}
    for name, net in (("ESRGAN x4 64x23 (random)", ESRGAN(scale=4)), ("Compact x4 64x16 (random)", Compact())):
        descriptor = ModelLoader(device).load_from_state_dict(net.state_dict())
        assert isinstance(descriptor, ImageModelDescriptor)
        models[name] = descriptor.eval()
    side, tile = (1024, 512) if device.type == "cuda" else (256, 160)  # 2 x 2 tiles
    rgb = photo(side, side)
    for name, model in models.items():
        upscale_tiled(model, rgb[:64, :64])  # warm
        start = time.perf_counter()
        upscale_tiled(model, rgb, tile=tile)
        tiled = time.perf_counter() - start
        tensor = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].to(device) / 255.0
        start = time.perf_counter()
        with torch.inference_mode():
            model(tensor).cpu()
        plain = time.perf_counter() - start
        megapixels = side * side * model.scale ** 2 / 1e6
        print(f"  upscaler {name} on {device}, {side}x{side} -> x{model.scale}: tiled (4 tiles of {tile}) "
              f"{megapixels / tiled:.2f} MP/s (out), spandrel's plain call {megapixels / plain:.2f} MP/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--only", choices=("tiles", "seams", "detail", "upscaler"))
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    root = ensure_demo_model()
    device, dtype = pick_device("auto")
    config = use_demo(Config(port=0), root)
    engine = Engine(ModelRegistry(config, device, dtype))
    if args.only in (None, "tiles"):
        bench_tiles(engine, args.steps)
    if args.only in (None, "seams"):
        bench_seams(engine, args.steps)
    if args.only in (None, "detail"):
        bench_detail(engine, args.steps)
    if args.only in (None, "upscaler"):
        bench_upscaler(device, root)


if __name__ == "__main__":
    main()
