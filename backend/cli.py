"""The ``easel`` command: serve, run, preprocess, demo, demo-model, package, schema."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from shared.images import ImageData
from shared.messages import DEFAULT_URL, MODES, SAMPLERS, json_schema

log = logging.getLogger("easel")
DEFAULT_HUB_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
ORIENTATION = 0x0112  # the EXIF tag phones use to say "this photo is turned"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="easel", description="Easel: a local diffusion editing server.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the websocket server")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8760)")
    serve.add_argument("--config", help="TOML config file")
    serve.add_argument("--model", help="hub id, diffusers folder or .safetensors file to serve")
    serve.add_argument("--demo", action="store_true", help="serve the tiny random demo model")
    serve.add_argument("--token", help="clients must present this token (required off loopback)")
    serve.add_argument("--device", help="cuda, mps, cpu or auto")
    serve.set_defaults(func=cmd_serve)

    run = commands.add_parser("run", help="run one job on a server")
    run.add_argument("mode", choices=MODES)
    run.add_argument("--prompt", required=True)
    run.add_argument("--negative", default="")
    run.add_argument("--image", help="picture to edit (img2img, inpaint)")
    run.add_argument("--mask", help="white = repaint, black = keep (inpaint)")
    run.add_argument("--strength", type=float)
    run.add_argument("--seed", type=int)
    run.add_argument("--steps", type=int)
    run.add_argument("--guidance", type=float)
    run.add_argument("--batch", type=int)
    run.add_argument("--width", type=int)
    run.add_argument("--height", type=int)
    run.add_argument("--grow", type=int, help="pixels to grow the mask by")
    run.add_argument("--feather", type=int, help="pixels to feather the mask's edge over")
    run.add_argument("--sampler", choices=SAMPLERS)
    run.add_argument("--model", help="configured model name")
    run.add_argument("--control", action="append", default=[], metavar="TYPE:IMAGE[:SCALE[:START[:END]]][:pre]",
                     help="a ControlNet unit (repeatable); IMAGE may be 'input' for the picture itself; "
                          "':pre' runs the type's preprocessor on it")
    run.add_argument("--reference", action="append", default=[], metavar="IMAGE[:WEIGHT[:MODE]]",
                     help="an IP-Adapter reference picture (repeatable); MODE is reference, style or composition")
    run.add_argument("--layer", action="store_true",
                     help="inpaint: write the edit as a transparent layer instead of the composited picture")
    run.add_argument("--out", required=True, help="output PNG; with --batch N: OUT-1.png ... OUT-N.png")
    run.add_argument("--server", default=DEFAULT_URL)
    run.add_argument("--token")
    run.set_defaults(func=cmd_run)

    pre = commands.add_parser("preprocess", help="make a control map of a picture on a server")
    pre.add_argument("preprocessor", help="a preprocessor (canny, lineart_standard, shuffle) or a control type")
    pre.add_argument("input")
    pre.add_argument("output")
    pre.add_argument("--resolution", type=int, help="working resolution of the shorter side")
    pre.add_argument("--server", default=DEFAULT_URL)
    pre.add_argument("--token")
    pre.set_defaults(func=cmd_preprocess)

    demo = commands.add_parser("demo", help="round-trip an inpaint and an img2img on the demo model")
    demo.add_argument("--out", default="easel-demo", help="folder for the results (default ./easel-demo)")
    demo.set_defaults(func=cmd_demo)

    demo_model = commands.add_parser("demo-model", help="write the tiny random-weight demo model family")
    demo_model.add_argument("dir")
    demo_model.add_argument("--full-size", action="store_true",
                            help="write SD1.5 / SDXL at their real sizes instead (random weights, fp16; for "
                                 "benchmarks: about 6 GB for sd15 and 18 GB for sdxl)")
    demo_model.add_argument("--family", action="append", choices=("sd15", "sdxl"),
                            help="with --full-size: only this family (repeatable; default both)")
    demo_model.set_defaults(func=cmd_demo_model)

    package = commands.add_parser("package", help="build the Krita plugin zip or the A1111 extension folder")
    package.add_argument("host", choices=("krita", "a1111"))
    package.add_argument("--out", default="dist", help="folder to write into (default ./dist)")
    package.set_defaults(func=cmd_package)

    schema = commands.add_parser("schema", help="print the protocol's JSON Schema")
    schema.set_defaults(func=lambda args: print(json.dumps(json_schema(), indent=2)) or 0)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


# -- serve ------------------------------------------------------------------------------------

def cmd_serve(args) -> int:
    from backend.config import ConfigError, ModelSpec, load_config
    from backend.fixtures.demo_model import ensure_demo_model, use_demo
    from backend.engine.engine import Engine
    from backend.engine.models import ModelError, ModelRegistry, pick_device
    from backend.server import EaselServer

    try:
        config = load_config(args.config)
        for key in ("host", "port", "token", "device"):
            if getattr(args, key) is not None:
                setattr(config, key, getattr(args, key))
        if args.model:
            config.models = {"default": ModelSpec("default", args.model)}
            config.default_model = "default"
        elif args.demo:
            from backend.fixtures.demo_annotators import ensure_demo_annotators

            log.info("preparing the demo model and demo annotators (written once to the cache)")
            use_demo(config, ensure_demo_model(), annotators=ensure_demo_annotators())
        elif not config.models:
            if _hub_model_available(DEFAULT_HUB_MODEL):
                config.models = {"sd15": ModelSpec("sd15", DEFAULT_HUB_MODEL)}
            else:
                log.warning("no model configured and no hub access: serving the tiny demo model (noise pictures)")
                use_demo(config, ensure_demo_model())
        config.check()
    except ConfigError as exc:
        print(f"easel: {exc}", file=sys.stderr)
        return 2

    device, dtype = pick_device(config.device, config.performance.dtype)
    registry = ModelRegistry(config, device, dtype)
    if args.model:  # an explicit model must load, or we say so now rather than at the first job
        try:
            registry.get("default")
        except ModelError as exc:
            print(f"easel: {exc.message}", file=sys.stderr)
            return 1
    server = EaselServer(config, Engine(registry))
    try:
        asyncio.run(server.serve_forever())
    except OSError as exc:
        print(f"easel: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _hub_model_available(repo: str) -> bool:
    """True when the model is in the local hub cache, or the hub answers within a few seconds."""
    import huggingface_hub
    import requests

    if isinstance(huggingface_hub.try_to_load_from_cache(repo, "model_index.json"), str):
        return True
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", ""):
        return False
    try:
        requests.head(f"{huggingface_hub.constants.ENDPOINT}/{repo}", timeout=3)
        return True
    except requests.RequestException:
        return False


# -- run --------------------------------------------------------------------------------------

def cmd_run(args) -> int:
    from shared.client import Client, EaselError, Progress

    params = {"prompt": args.prompt, "negative_prompt": args.negative}
    for flag, key in (("strength", "strength"), ("seed", "seed"), ("steps", "steps"), ("guidance", "guidance"),
                      ("batch", "batch"), ("width", "width"), ("height", "height"), ("grow", "mask_grow"),
                      ("feather", "mask_feather"), ("sampler", "sampler"), ("model", "model")):
        if getattr(args, flag) is not None:
            params[key] = getattr(args, flag)
    try:
        source = None
        if args.image:
            source, params["image"] = _read_picture(args.image, "image")
        if args.mask:
            _, params["mask"] = _read_picture(args.mask, "mask")
    except OSError as exc:
        print(f"easel: cannot read an input picture: {exc}", file=sys.stderr)
        return 2
    try:
        steering = {"control": [_control_unit(spec) for spec in args.control],
                    "references": [_reference(spec) for spec in args.reference]}
    except (ValueError, OSError) as exc:
        print(f"easel: {exc}", file=sys.stderr)
        return 2
    params.update({key: items for key, items in steering.items() if items})
    outputs = _output_paths(args.out, args.batch or 1)
    problem = _unwritable(outputs[0])
    if problem:  # say so before the GPU spends time on it
        print(f"easel: cannot write {args.out}: {problem}", file=sys.stderr)
        return 2

    def show(event):
        if isinstance(event, Progress):
            print(f"\rstep {event.step}/{event.total}", end="", file=sys.stderr, flush=True)

    try:
        with Client(args.server, token=args.token, name="easel-cli") as client:
            result = client.run(args.mode, on_event=show, **params)
    except EaselError as exc:
        print(f"\neasel: {exc}", file=sys.stderr)
        return 1
    print(file=sys.stderr)

    for item, path in zip(result.images, outputs):
        layer = np.asarray(Image.open(io.BytesIO(item.image.data)).convert("RGBA")) \
            if item.image.format != "rgba8" else np.frombuffer(item.image.data, np.uint8).reshape(
                item.image.height, item.image.width, 4)
        picture = _place(layer, item.offset, source, transparent=args.layer)
        if Image.registered_extensions()[path.suffix.lower()] == "JPEG":
            picture = picture.convert("RGB")  # JPEG has no alpha
        try:
            picture.save(path)
        except (OSError, ValueError) as exc:
            print(f"easel: cannot write {path}: {exc}", file=sys.stderr)
            return 1
        print(f"{path} (seed {item.seed})")
    return 0


def cmd_preprocess(args) -> int:
    from shared.client import Client, EaselError

    try:
        _, picture = _read_picture(args.input, "image")
    except OSError as exc:
        print(f"easel: cannot read {args.input}: {exc}", file=sys.stderr)
        return 2
    output = _output_paths(args.output, 1)[0]
    problem = _unwritable(output)
    if problem:
        print(f"easel: cannot write {args.output}: {problem}", file=sys.stderr)
        return 2
    try:
        with Client(args.server, token=args.token, name="easel-cli") as client:
            control_map = client.preprocess(args.preprocessor, picture, resolution=args.resolution)
    except EaselError as exc:
        print(f"easel: {exc}", file=sys.stderr)
        return 1
    Image.open(io.BytesIO(control_map.data)).convert("RGB").save(output)
    print(output)
    return 0


def _read_picture(path: str, role: str) -> tuple[Image.Image, ImageData]:
    """The picture upright (EXIF orientation applied) and what to send: the file's own bytes when
    it is a PNG or WebP that needs no turning, else an 8-bit PNG of it."""
    from backend.imaging import to_array, to_png

    picture = Image.open(path)
    fmt = {"PNG": "png", "WEBP": "webp"}.get(picture.format)
    if fmt and picture.getexif().get(ORIENTATION, 1) == 1:
        return picture, ImageData(fmt, picture.width, picture.height, Path(path).read_bytes())
    upright = ImageOps.exif_transpose(picture)
    has_alpha = "A" in upright.getbands() or "transparency" in upright.info
    pixels = to_array(upright, "L" if role == "mask" else "RGBA" if has_alpha else "RGB")
    return upright, to_png(Image.fromarray(pixels))


def _control_unit(spec: str) -> dict:
    """``TYPE:IMAGE[:SCALE[:START[:END]]][:pre]`` as a protocol control unit.

    Numbers are taken from the end, so an IMAGE path may itself contain colons (C:\\maps\\lines.png).
    """
    kind, _, rest = spec.partition(":")
    preprocess = rest.endswith(":pre")
    image, numbers = _numbers_at_end(rest.removesuffix(":pre") if preprocess else rest, 3)
    if not kind or not image:
        raise ValueError(f"--control {spec!r}: expected TYPE:IMAGE[:SCALE[:START[:END]]][:pre]")
    unit: dict = {"type": kind, "preprocess": "on" if preprocess else "off",
                  **dict(zip(("scale", "start", "end"), numbers))}
    if image != "input":
        unit["image"] = _read_picture(image, "control")[1]
    return unit


def _reference(spec: str) -> dict:
    """``IMAGE[:WEIGHT[:MODE]]`` as a protocol reference (IMAGE may contain colons)."""
    from shared.messages import REFERENCE_MODES

    head, _, last = spec.rpartition(":")
    mode = last if head and last in REFERENCE_MODES else None
    image, numbers = _numbers_at_end(head if mode else spec, 1)
    reference: dict = {"image": _read_picture(image, "reference")[1], **dict(zip(("weight",), numbers))}
    if mode:
        reference["mode"] = mode
    return reference


def _numbers_at_end(text: str, most: int) -> tuple[str, list[float]]:
    """Split up to ``most`` trailing ``:number`` fields off ``text``: (the rest, the numbers in order)."""
    numbers: list[float] = []
    while len(numbers) < most and ":" in text:
        head, _, last = text.rpartition(":")
        try:
            numbers.insert(0, float(last))
        except ValueError:
            break
        text = head
    return text, numbers


def _unwritable(path: Path) -> str | None:
    if path.suffix.lower() not in Image.registered_extensions():
        return f"{path.suffix!r} is not a picture format (use .png)"
    if not path.parent.is_dir():
        return f"folder {path.parent} does not exist"
    return None


def _place(layer: np.ndarray, offset: tuple[int, int], source: Image.Image | None, *, transparent: bool) -> Image.Image:
    """The result as a picture: the layer composited over the input (or alone, on transparency)."""
    from backend.engine.masks import composite
    from backend.imaging import to_array

    if source is None:
        return Image.fromarray(layer[..., :3] if layer[..., 3].min() == 255 else layer)
    has_alpha = "A" in source.getbands() or "transparency" in source.info
    if transparent:
        base = np.zeros((source.height, source.width, 4), np.uint8)
        base[offset[1]:offset[1] + layer.shape[0], offset[0]:offset[0] + layer.shape[1]] = layer
        return Image.fromarray(base, "RGBA")
    base = to_array(source, "RGBA" if has_alpha else "RGB")
    return Image.fromarray(composite(base, layer, offset))


def _output_paths(out: str, count: int) -> list[Path]:
    path = Path(out)
    if not path.suffix:
        path = path.with_name(path.name + ".png")
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(1, count + 1)]


# -- demo -------------------------------------------------------------------------------------

def cmd_demo_model(args) -> int:
    if args.full_size:
        from backend.fixtures.full_size import FAMILIES, write_full_size_model

        root = write_full_size_model(args.dir, tuple(args.family or FAMILIES),
                                     log=lambda line: log.info("writing %s", line))
        print(f"full-size random model written to {root}; serve it with: easel serve --config {root / 'easel.toml'}")
        return 0
    if args.family:
        print("easel: --family needs --full-size", file=sys.stderr)
        return 2
    from backend.fixtures.demo_model import write_demo_model_with_config

    root = write_demo_model_with_config(args.dir)
    print(f"demo model written to {root}; serve it with: easel serve --config {root / 'easel.toml'}")
    return 0


def cmd_demo(args) -> int:
    from backend.demo import run_demo

    folder = run_demo(Path(args.out))
    print(f"demo results in {folder}/ (see sheet.png)")
    return 0


# -- package ----------------------------------------------------------------------------------

def cmd_package(args) -> int:
    from backend.packaging import build

    print(build(args.host, Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
