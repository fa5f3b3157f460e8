"""A mask of far-apart islands: one job in passes against one job per island.

Paints three round blobs near three corners of a synthetic canvas (default 4096 x 3072) and
times, on the demo model through a real server on loopback:

  (a) passes    one inpaint job with the whole mask (the engine plans one pass per island);
  (b) separate  one inpaint job per island (mask cut to that island), run one after the other;

and prints each side's seconds (median of ``--runs``) and diffused pixels, plus what one box around
the whole mask would diffuse (the single-crop plan islands replace: smaller, but each blob is then
painted at a fraction of its size). The passes should cost no more than the separate jobs.

    python bench/islands.py                      # 4096 x 3072, 3 runs, 6 steps
    python bench/islands.py --canvas 2048 1536 --runs 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from backend.config import Config  # noqa: E402
from backend.engine.engine import Engine  # noqa: E402
from backend.engine.models import ModelRegistry, pick_device  # noqa: E402
from backend.fixtures.demo_model import ensure_demo_model, use_demo  # noqa: E402
from backend.imaging import to_png  # noqa: E402
from backend.server import ServerThread  # noqa: E402
from shared.client import Client, Started  # noqa: E402
from shared.geometry import context_crop, mask_bounds  # noqa: E402
from shared.rules import MASK_FEATHER, MASK_GROW, reach  # noqa: E402


def canvas(width: int, height: int) -> tuple[Image.Image, np.ndarray]:
    y, x = np.mgrid[0:height, 0:width]
    picture = Image.fromarray(np.dstack([(x * 7 + y) % 256, (y * 5) % 256, (x ^ y) % 256]).astype(np.uint8))
    mask = Image.new("L", (width, height), 0)
    radius = min(width, height) // 30
    for cx, cy in ((0.08, 0.1), (0.9, 0.12), (0.5, 0.88)):
        ImageDraw.Draw(mask).ellipse((cx * width - radius, cy * height - radius, cx * width + radius,
                                      cy * height + radius), fill=255)
    return picture, np.asarray(mask)


def timed(client: Client, picture, mask: np.ndarray, steps: int) -> tuple[float, int]:
    """Seconds for one inpaint job and the pixels it diffused (over its passes)."""
    passes = []

    def on_event(event) -> None:
        if isinstance(event, Started):
            passes.extend(event.passes)

    start = time.perf_counter()
    client.run("inpaint", prompt="a stone", image=picture, mask=to_png(Image.fromarray(mask)), seed=1, steps=steps,
               on_event=on_event)
    return time.perf_counter() - start, sum(w * h for _, (w, h) in passes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--canvas", type=int, nargs=2, default=[4096, 3072], metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    width, height = args.canvas
    picture, mask = canvas(width, height)
    sent = to_png(picture)
    config = use_demo(Config(port=0), ensure_demo_model())
    engine = Engine(ModelRegistry(config, *pick_device(args.device)))
    with ServerThread(config, engine) as server, Client(server.url, name="bench-islands") as client:
        islands = _split(mask)
        timed(client, sent, mask, args.steps)  # warm-up: loads the model, fits the previews
        passes, separate = [], []
        for _ in range(args.runs):
            passes.append(timed(client, sent, mask, args.steps))
            separate.append([timed(client, sent, island, args.steps) for island in islands])
    native = engine.registry.get("demo").native_size
    whole = context_crop(mask_bounds(mask.tobytes(), width, height), width, height, native,
                         margin=reach(MASK_GROW, MASK_FEATHER))
    print(f"canvas {width}x{height}, {len(islands)} islands, demo model on {engine.device}, {args.steps} steps, "
          f"median of {args.runs}")
    print(f"  passes    {statistics.median(s for s, _ in passes):7.2f} s  {passes[0][1]:>10,} px diffused")
    print(f"  separate  {statistics.median(sum(s for s, _ in run) for run in separate):7.2f} s  "
          f"{sum(p for _, p in separate[0]):>10,} px diffused")
    print(f"  one box   (not run)   {whole.diffusion_width * whole.diffusion_height:>10,} px diffused: box "
          f"{whole.box.width}x{whole.box.height} at {whole.diffusion_width}x{whole.diffusion_height} "
          f"({whole.box.width / whole.diffusion_width:.1f}x smaller)")


def _split(mask: np.ndarray) -> list[np.ndarray]:
    """The mask cut into one mask per island."""
    from scipy import ndimage

    labels, count = ndimage.label(mask > 0, structure=np.ones((3, 3), bool))
    return [np.where(labels == index, mask, 0).astype(np.uint8) for index in range(1, count + 1)]


if __name__ == "__main__":
    main()
