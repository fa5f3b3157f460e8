"""Easel's overhead over a bare diffusers call, for a small inpaint on a small and a huge canvas.

For each canvas size (default 512 and 4096 pixels square) the benchmark paints a 192-pixel
square mask in the middle of a synthetic RGBA picture (gradients, blocks and a little pixel noise,
so that PNG compresses it about as badly as a real canvas; ``--smooth`` drops the noise) and times:

  (a) direct  the demo model's inpaint pipeline called straight, on the 512x512 crop that Easel's
              context crop picks (same LoadedModel, scheduler, diffusion size, steps, seed, prompt,
              grown and feathered mask, output_type="np");
  (b) easel   ``Client.run("inpaint", ...)`` against a real ``ServerThread`` on loopback, from
              submitting the already encoded picture and mask (upload included) until the Result
              event is in hand (its image bytes are not decoded);

and reports overhead = b - a in seconds and as a share of b. Encoding the canvas on the client
(PNG, or ``--raw`` rgba8 / l8 frames) is timed separately and is not part of (b). The context
crop should make both canvases cost about the same diffusion; what differs is moving and
preparing the big picture.

Each case runs once to warm up, then ``--runs`` times with direct and Easel calls interleaved;
figures are medians (other processes may share the CPU).

    python bench/overhead.py                      # PNG uploads, 5 runs, 8 steps, 512 and 4096
    python bench/overhead.py --raw --runs 3       # raw rgba8 / l8 frames instead of PNG
    python bench/overhead.py --host-crop          # send only the context crop, as host adapters do
    python bench/overhead.py --canvas 1024 2048 --steps 4 --demo-dir /tmp/easel-demo
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import diffusers  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from backend.config import Config  # noqa: E402
from backend.engine import masks  # noqa: E402
from backend.engine.demo_model import demo_models, ensure_demo_model, write_demo_model  # noqa: E402
from backend.engine.engine import Engine, make_scheduler  # noqa: E402
from backend.engine.models import LoadedModel, ModelRegistry, pick_device  # noqa: E402
from backend.server import ServerThread  # noqa: E402
from shared.client import Client, Started  # noqa: E402
from shared.geometry import context_crop, mask_bounds, mask_margin  # noqa: E402
from shared.images import ImageData, encode_frame  # noqa: E402
from shared.messages import CLIENT_MESSAGES  # noqa: E402

MODEL = "demo"
MASK_SIDE = 192
NATIVE_SIZE = 512  # the demo model's
PROMPT = "a red door"
SEED = 7
SAMPLER = "dpmpp_2m_karras"
GUIDANCE = 7.0
MASK_GROW, MASK_FEATHER = 8, 16  # the protocol's defaults, sent explicitly


@dataclass
class Case:
    """One canvas: the picture and mask as the host holds them, and as they travel."""

    size: int
    image: np.ndarray  # H x W x 4 RGBA
    mask: np.ndarray  # H x W, 255 = repaint
    sent_image: ImageData
    sent_mask: ImageData
    encode_seconds: float


@dataclass
class Timings:
    direct: list[float] = field(default_factory=list)
    easel: list[float] = field(default_factory=list)
    server_run: list[float] = field(default_factory=list)  # Engine.run as the server timed it
    server_total: list[float] = field(default_factory=list)  # job queued -> result messages ready
    box: list[int] | None = None
    diffusion_size: tuple[int, int] | None = None
    max_pixel_diff: int | None = None

    @staticmethod
    def median(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")


# -- inputs -------------------------------------------------------------------------------------


def canvas(size: int, textured: bool = True, seed: int = 0) -> np.ndarray:
    """An opaque RGBA test picture: gradients plus a few flat blocks (as tests/conftest.py draws).

    ``textured`` adds +-8 levels of pixel noise, so the picture compresses about as badly as a
    painted or photographed canvas; without it PNG squeezes 4096x4096 into ~100 kB.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    rgb = np.dstack([x * 255 // (size - 1), y * 255 // (size - 1), (x + y) % 256]).astype(np.int16)
    block = max(40, size // 12)
    for _ in range(6):
        x0, y0 = rng.integers(0, size - block, 2)
        rgb[y0:y0 + block, x0:x0 + block] = rng.integers(0, 256, 3)
    if textured:
        rgb += rng.integers(-8, 9, rgb.shape, dtype=np.int16)
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    return np.dstack([rgb, np.full((size, size), 255, np.uint8)])


def square_mask(size: int, side: int = MASK_SIDE) -> np.ndarray:
    """A ``side``-pixel white square in the middle of a black ``size`` x ``size`` mask."""
    mask = np.zeros((size, size), np.uint8)
    start = (size - side) // 2
    mask[start:start + side, start:start + side] = 255
    return mask


def encode(pixels: np.ndarray, raw: bool) -> ImageData:
    """What a host sends: rgba8 / l8 rows as they are, or a PNG (Pillow's default compression)."""
    height, width = pixels.shape[:2]
    if raw:
        return ImageData("rgba8" if pixels.ndim == 3 else "l8", width, height, pixels.tobytes())
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return ImageData("png", width, height, buffer.getvalue())


def make_case(size: int, raw: bool, textured: bool, host_crop: bool = False) -> Case:
    image, mask = canvas(size, textured), square_mask(size)
    start = time.perf_counter()
    if host_crop:  # what a host adapter does: send only the box the shared geometry plans
        defaults = CLIENT_MESSAGES["submit"]
        plan = context_crop(mask_bounds(mask.tobytes(), size, size), size, size, NATIVE_SIZE,
                            margin=mask_margin(defaults["mask_grow"].default, defaults["mask_feather"].default))
        box = plan.box
        image, mask = image[box.y:box.y1, box.x:box.x1], mask[box.y:box.y1, box.x:box.x1]
    sent_image, sent_mask = encode(image, raw), encode(mask, raw)
    return Case(size, image, mask, sent_image, sent_mask, time.perf_counter() - start)


def bytes_sent(case: Case) -> int:
    """Binary frames as the client sends them (header + payload), before websocket compression."""
    return sum(len(encode_frame({"image": "up-1", "role": role, "format": image.format,
                                 "width": image.width, "height": image.height}, image.data))
               for role, image in (("image", case.sent_image), ("mask", case.sent_mask)))


# -- the two ways to run it ---------------------------------------------------------------------


def cropped_inputs(case: Case, box: list[int]) -> tuple[Image.Image, Image.Image]:
    """The already-cropped picture (RGB) and grown + feathered mask (L) that the direct call diffuses."""
    x, y, width, height = box
    crop = case.image[y:y + height, x:x + width, :3]
    alpha = masks.shape_mask(case.mask[y:y + height, x:x + width], MASK_GROW, MASK_FEATHER)
    return Image.fromarray(np.ascontiguousarray(crop)), Image.fromarray(alpha)


def run_direct(model: LoadedModel, image: Image.Image, mask: Image.Image, steps: int) -> tuple[float, np.ndarray]:
    """One bare diffusers call; returns its seconds and its picture as uint8 RGB."""
    pipe = model.pipeline("inpaint")
    pipe.scheduler = make_scheduler(SAMPLER, model.scheduler_config)
    start = time.perf_counter()
    images = pipe(prompt=PROMPT, image=image, mask_image=mask, width=image.width, height=image.height,
                  strength=1.0, num_inference_steps=steps, guidance_scale=GUIDANCE,
                  generator=torch.Generator("cpu").manual_seed(SEED), output_type="np").images
    seconds = time.perf_counter() - start
    return seconds, (np.clip(images[0], 0, 1) * 255).round().astype(np.uint8)


def run_easel(client: Client, case: Case, steps: int, on_event=None):
    """One job through the server; returns its seconds and the Result."""
    start = time.perf_counter()
    result = client.run("inpaint", prompt=PROMPT, image=case.sent_image, mask=case.sent_mask, seed=SEED,
                        steps=steps, guidance=GUIDANCE, sampler=SAMPLER, mask_grow=MASK_GROW,
                        mask_feather=MASK_FEATHER, model=MODEL, on_event=on_event)
    return time.perf_counter() - start, result


def layer_rgb(result) -> tuple[np.ndarray, np.ndarray]:
    """The result layer's RGB and alpha (PNG or rgba8)."""
    image = result.images[0].image
    if image.format == "rgba8":
        pixels = np.frombuffer(image.data, np.uint8).reshape(image.height, image.width, 4)
    else:
        pixels = np.asarray(Image.open(io.BytesIO(image.data)).convert("RGBA"))
    return pixels[..., :3], pixels[..., 3]


def measure(case: Case, model: LoadedModel, client: Client, steps: int, runs: int) -> Timings:
    """Warm up once, then ``runs`` interleaved direct / Easel calls.

    The warm-up job's ``started`` event says which crop Easel diffuses; the direct call gets that
    crop, and its picture must match the Easel layer inside the mask.
    """
    timings = Timings()
    started: list[Started] = []

    def keep_started(event) -> None:
        if isinstance(event, Started):
            started.append(event)

    _, result = run_easel(client, case, steps, keep_started)
    timings.box, timings.diffusion_size = list(started[0].box), started[0].diffusion_size
    if tuple(timings.box[2:]) != timings.diffusion_size:
        raise SystemExit(f"the {case.size} canvas crop {timings.box} is resampled to {timings.diffusion_size}; "
                         "the direct call expects a 1:1 crop")
    image, mask = cropped_inputs(case, timings.box)
    _, direct_pixels = run_direct(model, image, mask, steps)
    rgb, alpha = layer_rgb(result)
    inside = alpha > 0  # where the layer carries generated colour rather than the input's bytes
    timings.max_pixel_diff = int(np.abs(rgb[inside].astype(int) - direct_pixels[inside].astype(int)).max())

    for _ in range(runs):
        timings.direct.append(run_direct(model, image, mask, steps)[0])
        seconds, result = run_easel(client, case, steps)
        timings.easel.append(seconds)
        timings.server_run.append(result.timings["run"])
        timings.server_total.append(result.timings["total"])
    return timings


# -- reporting ----------------------------------------------------------------------------------


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "mps":
        name = "Apple MPS"
    else:
        name = f"{cpu_name()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}"
    return f"{device} ({name})"


def print_header(device: torch.device, dtype: torch.dtype, args) -> None:
    print(f"device     {describe_device(device)}, {str(dtype).removeprefix('torch.')}")
    print(f"versions   python {platform.python_version()}, torch {torch.__version__}, "
          f"diffusers {diffusers.__version__}")
    print(f"job        inpaint, model {MODEL}, {MASK_SIDE}px square mask in the middle, {args.steps} steps, "
          f"{SAMPLER}, seed {SEED}")
    print(f"upload     {'rgba8/l8 raw frames' if args.raw else 'png (Pillow default level)'}, "
          f"{'smooth' if args.smooth else 'textured (+-8 noise)'} RGBA picture")
    print(f"runs       1 warm-up + {args.runs} per case, medians\n")


def print_case(case: Case, timings: Timings) -> None:
    direct, easel = Timings.median(timings.direct), Timings.median(timings.easel)
    run, total = Timings.median(timings.server_run), Timings.median(timings.server_total)
    print(f"canvas {case.size}x{case.size}: crop box {timings.box}, diffusion "
          f"{timings.diffusion_size[0]}x{timings.diffusion_size[1]}, "
          f"max |easel - direct| inside the mask {timings.max_pixel_diff}/255")
    print(f"  direct pipeline   {direct:7.3f} s   runs {_seconds(timings.direct)}")
    print(f"  easel end-to-end  {easel:7.3f} s   runs {_seconds(timings.easel)}")
    print(f"    server Engine.run {run:.3f} s, job total {total:.3f} s, "
          f"outside the job (upload, decode, result transfer) {easel - total:.3f} s")
    print(f"  client encode     {case.encode_seconds:7.3f} s   (once, not in end-to-end), "
          f"sent {bytes_sent(case):,} bytes\n")


def print_table(cases: list[tuple[Case, Timings]], send: str) -> None:
    print(f"{'canvas':>9} {'send':>9} {'direct s':>9} {'easel s':>8} {'overhead s':>11} {'overhead %':>11} "
          f"{'encode s':>9} {'bytes sent':>12}")
    for case, timings in cases:
        direct, easel = Timings.median(timings.direct), Timings.median(timings.easel)
        overhead = easel - direct
        print(f"{case.size:>9} {send:>9} {direct:9.3f} {easel:8.3f} {overhead:11.3f} "
              f"{100 * overhead / easel:10.1f}% {case.encode_seconds:9.3f} {bytes_sent(case):>12,}")


def _seconds(values: list[float]) -> str:
    return " ".join(f"{value:.2f}" for value in values)


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per case after one warm-up (default 5)")
    parser.add_argument("--steps", type=int, default=8, help="denoising steps (default 8)")
    parser.add_argument("--canvas", type=int, nargs="+", default=[512, 4096], metavar="SIZE",
                        help="square canvas sizes in pixels (default 512 4096)")
    parser.add_argument("--raw", action="store_true", help="send rgba8 / l8 raw frames instead of PNG")
    parser.add_argument("--host-crop", action="store_true",
                        help="send only the context crop, as host adapters do, instead of the whole canvas")
    parser.add_argument("--smooth", action="store_true", help="noise-free test picture (PNG compresses it "
                        "to almost nothing; the default picture has pixel noise, like real canvases)")
    parser.add_argument("--demo-dir", type=Path, help="reuse (or write once) the demo model here "
                        "instead of a temporary directory")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.steps < 1 or min(args.canvas) < MASK_SIDE:
        parser.error(f"--runs and --steps must be at least 1 and each --canvas at least {MASK_SIDE}")
    return args


def quiet_libraries() -> None:
    """No loading progress bars or deprecation chatter between the figures."""
    import transformers

    for library in (diffusers, transformers):
        library.utils.logging.disable_progress_bar()
        library.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)


def benchmark(args: argparse.Namespace, demo_root: Path) -> None:
    config = Config(port=0, models=demo_models(demo_root), default_model=MODEL)
    device, dtype = pick_device(args.device)
    engine = Engine(ModelRegistry(config, device, dtype))
    print_header(device, dtype, args)
    model = engine.registry.get(MODEL)  # load before timing anything

    results = []
    with ServerThread(config, engine) as server, Client(server.url, name="bench-overhead") as client:
        for size in args.canvas:
            case = make_case(size, args.raw, not args.smooth, args.host_crop)
            timings = measure(case, model, client, args.steps, args.runs)
            print_case(case, timings)
            results.append((case, timings))
    print_table(results, ("raw" if args.raw else "png") + ("+crop" if args.host_crop else ""))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    quiet_libraries()
    if args.demo_dir is not None:
        benchmark(args, ensure_demo_model(args.demo_dir))
        return
    with tempfile.TemporaryDirectory(prefix="easel-bench-") as folder:
        benchmark(args, write_demo_model(folder))


if __name__ == "__main__":
    main()
