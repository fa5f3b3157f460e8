"""``easel demo``: a server on the demo model, an inpaint and an img2img round-trip, a before/after sheet."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from backend.imaging import to_png
from shared.client import Client
from shared.compose import composite
from shared.images import ImageData
from shared.job import Job


def sample_picture(width: int = 512, height: int = 384) -> Image.Image:
    """A small landscape: sky gradient, sun, two hills, a house — enough structure to see an edit."""
    y = np.linspace(0, 1, height)[:, None, None]
    sky = (np.array([70, 130, 210]) * (1 - y) + np.array([230, 210, 170]) * y).astype(np.uint8)
    picture = Image.fromarray(np.broadcast_to(sky, (height, width, 3)).copy())
    draw = ImageDraw.Draw(picture)
    draw.ellipse((width * 0.7, height * 0.1, width * 0.85, height * 0.3), fill=(250, 220, 90))
    draw.ellipse((-width * 0.3, height * 0.55, width * 0.7, height * 1.5), fill=(80, 140, 70))
    draw.ellipse((width * 0.4, height * 0.65, width * 1.4, height * 1.6), fill=(60, 115, 60))
    draw.rectangle((width * 0.2, height * 0.5, width * 0.35, height * 0.68), fill=(180, 90, 60))
    draw.polygon([(width * 0.18, height * 0.5), (width * 0.275, height * 0.4), (width * 0.37, height * 0.5)],
                 fill=(120, 50, 40))
    return picture


def sample_mask(size: tuple[int, int]) -> Image.Image:
    """Select the sun's corner of the sky."""
    width, height = size
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).ellipse((width * 0.62, height * 0.04, width * 0.93, height * 0.38), fill=255)
    return mask


def _picture(result_image: ImageData) -> Image.Image:
    return Image.open(io.BytesIO(result_image.data)).convert("RGBA")


def before_after_sheet(rows: list[tuple[str, Image.Image, Image.Image]]) -> Image.Image:
    """A sheet with one row per edit: label, before, after."""
    width, height = rows[0][1].size
    sheet = Image.new("RGB", (2 * width + 30, len(rows) * (height + 30) + 10), (32, 32, 32))
    draw = ImageDraw.Draw(sheet)
    for row, (label, before, after) in enumerate(rows):
        top = 10 + row * (height + 30)
        draw.text((10, top), f"{label}: before / after", fill=(230, 230, 230))
        sheet.paste(before.convert("RGB"), (10, top + 18))
        sheet.paste(after.convert("RGB"), (20 + width, top + 18))
    return sheet


def run_demo(folder: Path) -> Path:
    """Run the round-trips against a fresh demo-model server and write everything into ``folder``."""
    from backend.config import Config
    from backend.engine.engine import Engine
    from backend.engine.models import ModelRegistry, pick_device
    from backend.fixtures.demo_model import ensure_demo_model, use_demo
    from backend.server import ServerThread

    folder.mkdir(parents=True, exist_ok=True)
    config = use_demo(Config(port=0), ensure_demo_model())
    picture = sample_picture()
    mask = sample_mask(picture.size)
    picture.save(folder / "sample.png")
    mask.save(folder / "mask.png")

    with ServerThread(config, Engine(ModelRegistry(config, *pick_device("auto")))) as server:
        with Client(server.url, name="easel-demo") as client:
            fill = client.run(Job.create("inpaint", prompt="a glowing moon", image=to_png(picture),
                                         mask=to_png(mask), seed=1, steps=12))
            refine = client.run(Job.create("img2img", prompt="an oil painting", image=to_png(picture),
                                           strength=0.5, seed=2, steps=12))

    layer = fill.images[0]
    inpainted = Image.fromarray(composite(np.asarray(picture), np.asarray(_picture(layer.image)), layer.offset))
    inpainted.save(folder / "inpaint.png")
    refined = _picture(refine.images[0].image).convert("RGB")
    refined.save(folder / "img2img.png")
    before_after_sheet([("inpaint", picture, inpainted), ("img2img 0.5", picture, refined)]).save(
        folder / "sheet.png")
    return folder
