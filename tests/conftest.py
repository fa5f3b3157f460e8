"""Shared fixtures: the demo model (written once per run), a real server on loopback, pictures."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from backend.config import Config  # noqa: E402
from backend.engine.engine import Engine  # noqa: E402
from backend.engine.models import ModelRegistry, pick_device  # noqa: E402
from backend.fixtures.demo_annotators import ensure_demo_annotators  # noqa: E402
from backend.fixtures.demo_model import ensure_demo_model, use_demo  # noqa: E402
from backend.imaging import to_png  # noqa: E402
from backend.server import ServerThread  # noqa: E402
from shared.client import Accepted, Client  # noqa: E402
from shared.images import ImageData  # noqa: E402


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    return ensure_demo_model(tmp_path_factory.mktemp("easel-home") / "demo-model")


@pytest.fixture(scope="session")
def demo_config(demo_root) -> Config:
    return use_demo(Config(port=0), demo_root, annotators=ensure_demo_annotators())


@pytest.fixture(scope="session")
def engine(demo_config) -> Engine:
    return Engine(ModelRegistry(demo_config, *pick_device("cpu")))


@pytest.fixture(scope="session")
def server(demo_config, engine):
    with ServerThread(demo_config, engine) as running:
        yield running


@pytest.fixture
def client(server):
    with Client(server.url, name="pytest") as connected:
        yield connected


png = to_png  # tests say png(picture)


def decode(image: ImageData) -> np.ndarray:
    """A result image as an RGBA array."""
    if image.format == "rgba8":
        return np.frombuffer(image.data, np.uint8).reshape(image.height, image.width, 4)
    return np.asarray(Image.open(io.BytesIO(image.data)).convert("RGBA"))


def picture(width: int = 320, height: int = 256, seed: int = 0) -> Image.Image:
    """A structured RGB test picture: gradients plus blocks, no two rows alike."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.dstack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x + y) % 256]).astype(np.uint8)
    for _ in range(6):
        x0, y0 = rng.integers(0, width - 40), rng.integers(0, height - 40)
        rgb[y0:y0 + 40, x0:x0 + 40] = rng.integers(0, 256, 3)
    return Image.fromarray(rgb)


def rect_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


class JobsAhead:
    """Other clients' jobs ahead in the server's queue, one connection each: the first runs, the others wait
    behind it, and each would run far longer than a test. ``pass_one()`` cancels the oldest, so the queue
    moves by one; leaving closes the connections, which ends what is left."""

    HOLD = dict(prompt="hold", steps=150, width=256, height=256, seed=0)  # ~20 s a job on the demo model

    def __init__(self, url: str, count: int = 2):
        self.url, self.count, self.jobs = url, count, []

    def __enter__(self) -> "JobsAhead":
        for index in range(self.count):
            client = Client(self.url, name=f"ahead-{index}").connect()
            job = client.submit("generate", **self.HOLD)
            # accepted before the next submit: two connections' messages may reach the server in either order
            assert isinstance(next(client.events(job)), Accepted)
            self.jobs.append((client, job))
        return self

    def pass_one(self) -> None:
        client, _ = self.jobs.pop(0)
        client.close()  # (the server ends a closed session's jobs: the running one stops at its next step)

    def __exit__(self, *exc) -> None:
        for client, _ in self.jobs:
            client.close()
