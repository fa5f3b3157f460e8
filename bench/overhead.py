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

``--steer`` adds, for each canvas, the same inpaint steered by two ControlNets and one IP-Adapter
reference. Easel gets ready-made canny and depth maps (L, the size of the sent picture, preprocess
off) and a 512-pixel reference picture. The direct call is the demo model's ControlNet inpaint
pipeline (``LoadedModel.control_pipeline`` with the engine's two ControlNets, built once, where
Easel builds one per job) on the maps cropped to Easel's box exactly like the picture, with the
engine's IP-Adapter switched on by ``IPAdapters.switch_on`` inside every timed call (diffusers
encodes ``ip_adapter_image`` in every call too). Sharing the engine's adapter rather than loading
diffusers' own a second time keeps one adapter state for both sides: the direct call diffuses
exactly what Easel does, and switching the adapter off after the case leaves the model as an Easel
job without references does.

Each case runs once to warm up, then ``--runs`` times with direct and Easel calls interleaved;
figures are medians (other processes may share the CPU).

    python bench/overhead.py                      # PNG uploads, 5 runs, 8 steps, 512 and 4096
    python bench/overhead.py --raw --runs 3       # raw rgba8 / l8 frames instead of PNG
    python bench/overhead.py --host-crop          # send only the context crop, as host adapters do
    python bench/overhead.py --steer              # plus 2 ControlNets + 1 reference per canvas (~4 min CPU)
    python bench/overhead.py --canvas 1024 2048 --steps 4 --demo-dir /tmp/easel-demo
"""

from __future__ import annotations

import argparse
import contextlib
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
from typing import Callable

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
from backend.engine.engine import Engine, make_scheduler  # noqa: E402
from backend.engine.job import Reference  # noqa: E402
from backend.engine.models import LoadedModel, ModelRegistry, pick_device  # noqa: E402
from backend.fixtures.demo_model import ensure_demo_model, use_demo, write_demo_model  # noqa: E402
from backend.server import ServerThread  # noqa: E402
from shared.client import Client, Started  # noqa: E402
from shared.geometry import context_crop, mask_bounds  # noqa: E402
from shared.images import ImageData, encode_frame  # noqa: E402
from shared.messages import CLIENT_MESSAGES  # noqa: E402
from shared.rules import reach as mask_margin  # noqa: E402

MODEL = "demo"
MASK_SIDE = 192
NATIVE_SIZE = 512  # the demo model's
PROMPT = "a red door"
SEED = 7
SAMPLER = "dpmpp_2m_karras"
GUIDANCE = 7.0
MASK_GROW, MASK_FEATHER = 8, 16  # the protocol's defaults, sent explicitly
CONTROL_TYPES = ("canny", "depth")  # the steered job's ControlNets, one ready-made map each
CONTROL_SCALE = 1.0  # the protocol's default, sent explicitly (diffusers' inpaint ControlNet default is 0.5)
REFERENCE_SIDE = 512  # the steered job's IP-Adapter reference picture
REFERENCE_WEIGHT = 1.0


@dataclass
class Steering:
    """The steered job's extra inputs: control maps (L, the size of the sent picture) and a reference."""

    maps: list[np.ndarray]  # one per CONTROL_TYPES
    reference: np.ndarray  # RGBA
    sent_maps: list[ImageData]
    sent_reference: ImageData


@dataclass
class Case:
    """One canvas: the picture and mask as the host holds them, and as they travel."""

    size: int
    image: np.ndarray  # H x W x 4 RGBA
    mask: np.ndarray  # H x W, 255 = repaint
    sent_image: ImageData
    sent_mask: ImageData
    encode_seconds: float
    steering: Steering | None = None  # None: the plain inpaint

    @property
    def job(self) -> str:
        return "plain" if self.steering is None else "steered"

    def uploads(self) -> list[tuple[str, ImageData]]:
        """(role, image) of every binary frame the job sends."""
        frames = [("image", self.sent_image), ("mask", self.sent_mask)]
        if self.steering is not None:
            frames += [("control", sent) for sent in self.steering.sent_maps]
            frames.append(("reference", self.steering.sent_reference))
        return frames


@dataclass
class Timings:
    direct: list[float] = field(default_factory=list)
    easel: list[float] = field(default_factory=list)
    server_run: list[float] = field(default_factory=list)  # Engine.run as the server timed it
    server_total: list[float] = field(default_factory=list)  # job queued -> result messages ready
    box: list[int] | None = None
    diffusion_size: tuple[int, int] | None = None
    max_pixel_diff: int | None = None
    adapter_in_unet: bool | None = None  # steered only: does the diffused UNet carry the IP-Adapter?

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


def edge_map(size: int) -> np.ndarray:
    """A ready-made canny-style map of the canvas: white where its noise-free picture jumps."""
    rgb = canvas(size, textured=False)[..., :3].astype(np.int16)
    edges = np.zeros((size, size), bool)
    edges[:, 1:] |= np.abs(np.diff(rgb, axis=1)).max(-1) > 32
    edges[1:, :] |= np.abs(np.diff(rgb, axis=0)).max(-1) > 32
    return np.where(edges, 255, 0).astype(np.uint8)


def depth_map(size: int) -> np.ndarray:
    """A ready-made depth-style map: near (white) in the middle, fading towards the corners."""
    y, x = np.ogrid[0:size, 0:size]
    distance = np.hypot(x / (size - 1) - 0.5, y / (size - 1) - 0.5) / np.hypot(0.5, 0.5)
    return (255 * (1 - distance)).round().astype(np.uint8)


def crop(pixels: np.ndarray, box: list[int]) -> np.ndarray:
    """``pixels`` inside ``box`` = [x, y, width, height]."""
    x, y, width, height = box
    return np.ascontiguousarray(pixels[y:y + height, x:x + width])


def host_box(mask: np.ndarray) -> list[int]:
    """The context crop a host adapter plans with the shared geometry (protocol default margins)."""
    height, width = mask.shape
    defaults = CLIENT_MESSAGES["submit"]
    plan = context_crop(mask_bounds(mask.tobytes(), width, height), width, height, NATIVE_SIZE,
                        margin=mask_margin(defaults["mask_grow"].default, defaults["mask_feather"].default))
    return [plan.box.x, plan.box.y, plan.box.width, plan.box.height]


def encode(pixels: np.ndarray, raw: bool) -> ImageData:
    """What a host sends: rgba8 / l8 rows as they are, or a PNG (Pillow's default compression)."""
    height, width = pixels.shape[:2]
    if raw:
        return ImageData("rgba8" if pixels.ndim == 3 else "l8", width, height, pixels.tobytes())
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return ImageData("png", width, height, buffer.getvalue())


def make_case(size: int, raw: bool, textured: bool, host_crop: bool = False, steer: bool = False) -> Case:
    """A canvas and its mask (plus, when ``steer``, control maps and a reference), encoded as sent.

    The encode time covers what the host does per job: cropping (``host_crop``) and encoding.
    """
    image, mask = canvas(size, textured), square_mask(size)
    maps = [edge_map(size), depth_map(size)] if steer else []
    reference = canvas(REFERENCE_SIDE, textured, seed=1) if steer else None
    start = time.perf_counter()
    if host_crop:  # what a host adapter does: send only the box the shared geometry plans
        box = host_box(mask)
        image, mask, *maps = (crop(pixels, box) for pixels in (image, mask, *maps))
    sent_image, sent_mask = encode(image, raw), encode(mask, raw)
    steering = (Steering(maps, reference, [encode(pixels, raw) for pixels in maps], encode(reference, raw))
                if steer else None)
    return Case(size, image, mask, sent_image, sent_mask, time.perf_counter() - start, steering)


def bytes_sent(case: Case) -> int:
    """Binary frames as the client sends them (header + payload), before websocket compression."""
    return sum(len(encode_frame({"image": "up-1", "role": role, "format": image.format,
                                 "width": image.width, "height": image.height}, image.data))
               for role, image in case.uploads())


# -- the two ways to run it ---------------------------------------------------------------------


@dataclass
class DirectCall:
    """A bare diffusers call: the pipeline and its inputs, already cropped to Easel's box."""

    model: LoadedModel
    pipe: object
    inputs: dict
    adapter: Callable[[], dict] = dict  # per call: switches the IP-Adapter on, returns its kwargs


def cropped_inputs(case: Case, box: list[int]) -> dict:
    """The already-cropped picture (RGB) and grown + feathered mask (L) that the direct call diffuses."""
    image = Image.fromarray(crop(case.image, box)[..., :3])
    mask = Image.fromarray(masks.shape_mask(crop(case.mask, box), MASK_GROW, MASK_FEATHER))
    return dict(image=image, mask_image=mask, width=image.width, height=image.height)


def direct_call(engine: Engine, case: Case, box: list[int]):
    """A context manager giving the direct call for ``case``."""
    model, inputs = engine.registry.get(MODEL), cropped_inputs(case, box)
    if case.steering is None:
        return contextlib.nullcontext(DirectCall(model, model.pipeline("inpaint"), inputs))
    return steered_call(engine, model, case.steering, inputs, box)


@contextlib.contextmanager
def steered_call(engine: Engine, model: LoadedModel, steering: Steering, inputs: dict, box: list[int]):
    """The ControlNet inpaint pipeline for CONTROL_TYPES (built once, where Easel builds one per job),
    the maps cropped like the picture, and the engine's IP-Adapter switched on in every call; the
    adapter is switched off afterwards, so later plain calls are plain."""
    controlnets = engine.controlnets.get(model.family, list(CONTROL_TYPES))
    pipe = model.control_pipeline("inpaint", controlnets)
    control = dict(control_image=[Image.fromarray(crop(pixels, box)).convert("RGB") for pixels in steering.maps],
                   controlnet_conditioning_scale=[CONTROL_SCALE] * len(CONTROL_TYPES))
    references = [Reference(steering.reference, REFERENCE_WEIGHT, "reference")]
    try:
        yield DirectCall(model, pipe, {**inputs, **control},
                         lambda: engine.adapters.switch_on(model, pipe, references, guided=GUIDANCE > 1))
    finally:
        engine.adapters.switch_off(pipe)


def run_direct(call: DirectCall, steps: int) -> tuple[float, np.ndarray]:
    """One bare diffusers call; returns its seconds and its picture as uint8 RGB."""
    call.pipe.scheduler = make_scheduler(SAMPLER, call.model.scheduler_config)
    start = time.perf_counter()
    images = call.pipe(prompt=PROMPT, strength=1.0, num_inference_steps=steps, guidance_scale=GUIDANCE,
                       generator=torch.Generator("cpu").manual_seed(SEED), output_type="np",
                       **call.inputs, **call.adapter()).images
    seconds = time.perf_counter() - start
    return seconds, (np.clip(images[0], 0, 1) * 255).round().astype(np.uint8)


def easel_params(case: Case, steps: int) -> dict:
    """The submit parameters of the case's job (images as ImageData, uploaded by the client)."""
    params = dict(prompt=PROMPT, image=case.sent_image, mask=case.sent_mask, seed=SEED, steps=steps,
                  guidance=GUIDANCE, sampler=SAMPLER, mask_grow=MASK_GROW, mask_feather=MASK_FEATHER, model=MODEL)
    if case.steering is not None:
        params["control"] = [{"type": kind, "image": sent, "preprocess": "off", "scale": CONTROL_SCALE}
                             for kind, sent in zip(CONTROL_TYPES, case.steering.sent_maps)]
        params["references"] = [{"image": case.steering.sent_reference, "weight": REFERENCE_WEIGHT}]
    return params


def run_easel(client: Client, case: Case, steps: int, on_event=None):
    """One job through the server; returns its seconds and the Result."""
    start = time.perf_counter()
    result = client.run("inpaint", on_event=on_event, **easel_params(case, steps))
    return time.perf_counter() - start, result


def layer_rgb(result) -> tuple[np.ndarray, np.ndarray]:
    """The result layer's RGB and alpha (PNG or rgba8)."""
    image = result.images[0].image
    if image.format == "rgba8":
        pixels = np.frombuffer(image.data, np.uint8).reshape(image.height, image.width, 4)
    else:
        pixels = np.asarray(Image.open(io.BytesIO(image.data)).convert("RGBA"))
    return pixels[..., :3], pixels[..., 3]


def measure(case: Case, engine: Engine, client: Client, steps: int, runs: int) -> Timings:
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
    with direct_call(engine, case, timings.box) as call:
        _, direct_pixels = run_direct(call, steps)
        if case.steering is not None:
            timings.adapter_in_unet = call.pipe.unet.encoder_hid_proj is not None
        rgb, alpha = layer_rgb(result)
        inside = alpha > 0  # where the layer carries generated colour rather than the input's bytes
        timings.max_pixel_diff = int(np.abs(rgb[inside].astype(int) - direct_pixels[inside].astype(int)).max())

        for _ in range(runs):
            timings.direct.append(run_direct(call, steps)[0])
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
    if args.steer:
        print(f"steered    + ControlNets {' and '.join(CONTROL_TYPES)} (ready-made L maps of the sent picture's "
              f"size, preprocess off), 1 IP-Adapter reference ({REFERENCE_SIDE}px RGBA, weight {REFERENCE_WEIGHT:g})")
    print(f"upload     {'rgba8/l8 raw frames' if args.raw else 'png (Pillow default level)'}, "
          f"{'smooth' if args.smooth else 'textured (+-8 noise)'} RGBA picture")
    print(f"runs       1 warm-up + {args.runs} per case, medians\n")


def print_case(case: Case, timings: Timings) -> None:
    direct, easel = Timings.median(timings.direct), Timings.median(timings.easel)
    run, total = Timings.median(timings.server_run), Timings.median(timings.server_total)
    print(f"canvas {case.size}x{case.size}, {case.job}: crop box {timings.box}, diffusion "
          f"{timings.diffusion_size[0]}x{timings.diffusion_size[1]}, "
          f"max |easel - direct| inside the mask {timings.max_pixel_diff}/255")
    if timings.adapter_in_unet is not None:
        carried = "yes" if timings.adapter_in_unet else "NO: the reference steers nothing"
        print(f"  IP-Adapter in the diffused UNet: {carried}")
    print(f"  direct pipeline   {direct:7.3f} s   runs {_seconds(timings.direct)}")
    print(f"  easel end-to-end  {easel:7.3f} s   runs {_seconds(timings.easel)}")
    print(f"    server Engine.run {run:.3f} s, job total {total:.3f} s, "
          f"outside the job (upload, decode, result transfer) {easel - total:.3f} s")
    print(f"  client encode     {case.encode_seconds:7.3f} s   (once, not in end-to-end), "
          f"sent {bytes_sent(case):,} bytes\n")


def print_table(cases: list[tuple[Case, Timings]], send: str) -> None:
    print(f"{'canvas':>9} {'send':>9} {'job':>8} {'direct s':>9} {'easel s':>8} {'overhead s':>11} "
          f"{'overhead %':>11} {'encode s':>9} {'bytes sent':>12}")
    for case, timings in cases:
        direct, easel = Timings.median(timings.direct), Timings.median(timings.easel)
        overhead = easel - direct
        print(f"{case.size:>9} {send:>9} {case.job:>8} {direct:9.3f} {easel:8.3f} {overhead:11.3f} "
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
    parser.add_argument("--steer", action="store_true", help="also run each canvas steered: 2 ControlNets "
                        f"({', '.join(CONTROL_TYPES)}, ready-made maps) + 1 IP-Adapter reference (3-4x the "
                        "diffusion time on CPU)")
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
    config = use_demo(Config(port=0), demo_root)  # models, ControlNets and IP-Adapters
    device, dtype = pick_device(args.device)
    engine = Engine(ModelRegistry(config, device, dtype))
    print_header(device, dtype, args)
    engine.registry.get(MODEL)  # load before timing anything

    results = []
    with ServerThread(config, engine) as server, Client(server.url, name="bench-overhead") as client:
        for size in args.canvas:
            for steer in (False, True) if args.steer else (False,):
                case = make_case(size, args.raw, not args.smooth, args.host_crop, steer)
                timings = measure(case, engine, client, args.steps, args.runs)
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
