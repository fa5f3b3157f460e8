"""The ``easel`` command: serve, run, preprocess, models, demo, demo-model, package, schema."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from backend import logs
from backend.run_files import (
    Picture,
    UsageError,
    check_alpha_kept,
    check_lossless,
    check_mask_grey,
    check_mask_size,
    check_outputs,
    check_profile_kept,
    inverted_mask,
    keeps_untouched,
    note_generate_size,
    note_mask_coverage,
    note_tiles,
    note_upscale_shape,
    output_paths,
    read_picture,
    result_picture,
    write_picture,
)
from shared.errors import ProtocolError
from shared.fields import Field, check_fields, item_field
from shared.images import ImageData
from shared.job import PREPROCESS_FIELDS, SUBMIT_FIELDS, Job, PreprocessJob
from shared.messages import DEFAULT_URL, MODES, json_schema
from shared.rules import expanded_size
from shared.vocabulary import DEFAULT_PREPROCESSOR, PREPROCESSORS

log = logging.getLogger("easel")
DEFAULT_HUB_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"

# `easel run` options -> the submit fields they set (the wire tables give their ranges and defaults).
RUN_OPTIONS = {"prompt": "prompt", "negative": "negative_prompt", "strength": "strength", "seed": "seed",
               "steps": "steps", "guidance": "guidance", "batch": "batch", "width": "width", "height": "height",
               "grow": "mask_grow", "feather": "mask_feather", "sampler": "sampler", "model": "model"}
RUN_OPTIONS |= {"fill": "fill", "padding": "mask_padding", "left": "expand_left", "top": "expand_top",
                "right": "expand_right", "bottom": "expand_bottom", "clip_skip": "clip_skip"}
RUN_FLAGS = {field: f"--{option}" for option, field in RUN_OPTIONS.items()} | {
    "image": "--image", "mask": "--mask", "control": "--control", "references": "--reference"}
RUN_FLAGS["soft_inpaint"] = "--hard-mask"
RUN_FLAGS["clip_skip"] = "--clip-skip"
RUN_OPTIONS |= {"scale": "scale", "upscaler": "upscaler", "preset": "preset"}
RUN_OPTIONS |= {"image_guidance": "image_guidance"}  # instruct
RUN_FLAGS |= {"preset": "--preset", "loras": "--lora", "image_guidance": "--image-guidance"}
RUN_FLAGS |= {"scale": "--scale", "upscaler": "--upscaler", "refine": "--strength"}  # upscale: --strength refines
# the client's advice on connecting, said as the options that act on it
CONNECT_PHRASES = {"the one sent is missing or wrong": "the one sent is missing or wrong: give it with --token, or in "
                   "$EASEL_TOKEN", "pin it, the easel-cert.pem": "pass --cert with the easel-cert.pem"}
RUN_PHRASES = {"send it with preprocess off": "leave out :pre",  # protocol advice, said in the options' terms
               **CONNECT_PHRASES}
PREPROCESS_FLAGS = {"preprocessor": "PREPROCESSOR", "image": "INPUT", "resolution": "--resolution"}
CONTROL_PARTS = {"type": "TYPE", "image": "IMAGE", "scale": "SCALE", "start": "START", "end": "END",
                 "preprocess": ":pre"}
REFERENCE_PARTS = {"image": "IMAGE", "weight": "WEIGHT", "mode": "MODE"}
LORA_PARTS = {"name": "NAME", "weight": "WEIGHT"}
CONTROL_FIELDS = SUBMIT_FIELDS["control"].items.fields
REFERENCE_FIELDS = SUBMIT_FIELDS["references"].items.fields
LORA_FIELDS = SUBMIT_FIELDS["loras"].items.fields


TOKEN_HELP = "the server's token, if it has one (default $EASEL_TOKEN)"
CERT_HELP = "for a wss:// server with a self-signed certificate (`easel cert`): that certificate's PEM file, pinned"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure()
    if argv is None and args.func is cmd_serve:  # a real command line, not a call from Python
        _restart_with_jemalloc()
    return args.func(args)


def _restart_with_jemalloc() -> None:
    """Become ``easel serve`` on jemalloc where it is installed (the same process id; backend/memory.py says why)."""
    from backend import memory
    environ = memory.preload_environment(os.environ)
    if environ is None or not sys.executable:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, environ)
    except OSError as exc:
        log.warning("could not start again with jemalloc (%s): serving on the system's malloc", exc)


class Parser(argparse.ArgumentParser):
    """argparse, except that an option's value may start with '-': argparse reads ``--aspect -16:9`` or
    ``--negative -blurry`` as an option with no value ("expected one argument"), and only a negative number
    as a value. Our options are all long ones, so a word after one with a single '-' can be no option."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.value_options: set[str] = set()  # (subparsers are made of this class too: each has its own)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        if action.option_strings and action.nargs is None:  # an option taking one value
            self.value_options.update(action.option_strings)
        return action

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        for index in range(len(args) - 1, 0, -1):  # (from the end: a joined pair is never looked at again)
            value = args[index]
            if args[index - 1] in self.value_options and value[:1] == "-" and value[1:2] not in ("", "-") \
                    and value != "-h":
                args[index - 1:index + 1] = [f"{args[index - 1]}={value}"]
        return super().parse_known_args(args, namespace)


def build_parser() -> argparse.ArgumentParser:
    """The ``easel`` command line: one subcommand per task."""
    parser = Parser(prog="easel", description="Easel: a local diffusion editing server.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the websocket server")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8760)")
    serve.add_argument("--config", help="TOML config file")
    serve.add_argument("--model", help="hub id, diffusers folder or .safetensors file to serve, as the model `default`")
    serve.add_argument("--demo", action="store_true", help="serve the tiny random demo model")
    serve.add_argument("--token", default=os.environ.get("EASEL_TOKEN") or None,
                       help="clients must present this token (required off loopback); default $EASEL_TOKEN, "
                            "which, unlike the command line, other users cannot read in the process list")
    serve.add_argument("--device", help="cuda, mps, cpu or auto")
    serve.add_argument("--tls-cert", help="PEM certificate: serve wss:// (with --tls-key; `easel cert` makes a pair)")
    serve.add_argument("--tls-key", help="the certificate's PEM private key")
    serve.add_argument("--allow-origin", action="append", metavar="ORIGIN", dest="allow_origin",
                       help="let web pages of this origin connect, as their location.origin says it, e.g. "
                            "http://localhost:5173 (repeatable; added to [server] allowed_origins)")
    serve.set_defaults(func=cmd_serve)

    cert = commands.add_parser("cert", help="make a self-signed TLS certificate for `easel serve --tls-cert`",
                               description="Write DIR/easel-cert.pem and DIR/easel-key.pem (self-signed, for a "
                                           "server on a LAN) and print the certificate's SHA-256 fingerprint. "
                                           "Give clients the certificate file to pin.")
    cert.add_argument("dir")
    cert.add_argument("--host", action="append", help="a name or address clients use to reach the server "
                                                       "(repeatable; default this machine's name and loopback)")
    cert.add_argument("--force", action="store_true", help="replace a pair already in DIR (clients that pinned "
                                                           "it must then pin the new certificate)")
    cert.set_defaults(func=cmd_cert)

    _add_run_parser(commands)

    pre = commands.add_parser("preprocess", help="make a control map of a picture on a server",
                              description="Make the control map a preprocessor draws of a picture, on a running "
                                          "server; pass the map to `easel run --control TYPE:MAP`.")
    pre.add_argument("preprocessor", metavar="PREPROCESSOR",
                     help="a preprocessor or a control type (its default preprocessor): "
                          # (tile and inpaint are types without one: always refused, so not offered)
                          + ", ".join(name for name in PREPROCESS_FIELDS["preprocessor"].choices
                                      if name in PREPROCESSORS or name in DEFAULT_PREPROCESSOR))
    pre.add_argument("input", metavar="INPUT", help="the picture")
    pre.add_argument("output", metavar="OUTPUT", help="where to write the map (PNG)")
    pre.add_argument("--resolution", type=int, metavar="N", help=_help(PREPROCESS_FIELDS["resolution"]))
    pre.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    pre.add_argument("--server", default=DEFAULT_URL, help="the server's address (default %(default)s)")
    pre.add_argument("--token", default=os.environ.get("EASEL_TOKEN") or None, help=TOKEN_HELP)
    pre.add_argument("--cert", metavar="PEM", help=CERT_HELP)
    pre.set_defaults(func=cmd_preprocess)

    models = commands.add_parser("models", help="list a server's models, LoRAs, embeddings, upscalers and presets",
                                 description="What a running server offers, by the names `easel run` takes "
                                             "(--model, --lora, --upscaler, --preset, embeddings in --prompt).")
    models.add_argument("--server", default=DEFAULT_URL, help="the server's address (default %(default)s)")
    models.add_argument("--token", default=os.environ.get("EASEL_TOKEN") or None, help=TOKEN_HELP)
    models.add_argument("--cert", metavar="PEM", help=CERT_HELP)
    models.set_defaults(func=cmd_models)

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
    return parser


def _add_run_parser(commands: Any) -> None:
    """``easel run``: every option's help, range and default come from the submit message's fields."""
    unit, ref = CONTROL_FIELDS, REFERENCE_FIELDS
    run = commands.add_parser(
        "run", help="run one job on a server", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run one job on a running server (`easel serve`) and write the result.\n\n"
                    "  generate  paint a new picture from the prompt\n"
                    "  img2img   repaint --image, as much as --strength says\n"
                    "  inpaint   repaint --image where --mask is white; the rest keeps its own pixels\n"
                    "  expand    grow the canvas of --image by --left/--top/--right/--bottom pixels and paint "
                    "the new band\n"
                    "  remove    fill --mask with the surroundings (no prompt needed)\n"
                    "  upscale   enlarge --image by --scale (or to --width / --height) with a super-resolution\n"
                    "            model; --strength above 0 then refines it in tiles at the model's native scale\n"
                    "  instruct  edit --image as --prompt says (\"make it winter\"); with --mask only there",
        epilog="examples:\n"
               "  easel run inpaint --prompt 'a red door' --image house.png --mask door.png --out door.png\n"
               "  easel run img2img --prompt 'oil painting' --image house.png --strength 0.4 --out oil.png\n"
               "  easel run generate --prompt 'a lighthouse' --width 768 --height 512 --batch 4 --out light.png\n"
               "  easel run img2img --image house.png --control canny:input:0.7:pre --out traced.png\n"
               "  easel run expand --image house.png --right 256 --prompt 'a garden' --out wider.png\n"
               "  easel run remove --image house.png --mask bin.png --out clean.png\n"
               "  easel run upscale --image house.png --scale 2 --strength 0.3 --prompt 'a house' --out big.png\n"
               "  easel run instruct --prompt 'make it winter' --image house.png --image-guidance 1.5 --out winter.png")
    run.add_argument("mode", choices=MODES, help="what to do: " + ", ".join(MODES))
    run.add_argument("--prompt", default="", metavar="TEXT", help=_help(SUBMIT_FIELDS["prompt"], default="empty"))
    run.add_argument("--negative", default="", metavar="TEXT",
                     help=_help(SUBMIT_FIELDS["negative_prompt"], default="empty"))
    run.add_argument("--image", metavar="FILE", help="the picture to edit (img2img, inpaint, expand, remove, "
                     "upscale, instruct); any picture Pillow reads; phone photos are turned upright by their EXIF "
                     "orientation; an RGB colour profile (Adobe RGB, Display P3) is kept in the result")
    run.add_argument("--mask", metavar="FILE", help="inpaint, remove, instruct (optional there): white = repaint, "
                     "black = keep; the size of the (upright) --image")
    run.add_argument("--strength", type=float, metavar="X", help=_help(
        SUBMIT_FIELDS["strength"], note="img2img, inpaint and expand run steps x strength denoising steps, remove "
                                        "steps x strength x 0.4; upscale: the strength of the refine in tiles, "
                                        "none (0) when omitted; generate above the model's native size: the "
                                        "strength of its refine stage, 0.5 when omitted; instruct takes none"))
    run.add_argument("--seed", type=int, metavar="N", help=_help(
        SUBMIT_FIELDS["seed"], doc="seed of the first image; image i of a batch uses seed + i; -1: random, as in A1111",
        default="random"))
    run.add_argument("--steps", type=int, metavar="N", help=_help(SUBMIT_FIELDS["steps"],
                                                                  note="the server may cap it"))
    run.add_argument("--guidance", type=float, metavar="X", help=_help(
        SUBMIT_FIELDS["guidance"], doc="classifier-free guidance scale (flux: Flux's distilled guidance)",
        default="the model's: 7, instruct 7.5; flux 3.5, on its Fill model (inpaint, expand, remove) 30, "
                "instruct (Kontext) 2.5"))
    run.add_argument("--batch", type=int, metavar="N", help=_help(
        SUBMIT_FIELDS["batch"], note="written as OUT-1.png ... OUT-N.png"))
    for side in ("width", "height"):
        run.add_argument(f"--{side}", type=int, metavar="PX", help=_help(
            SUBMIT_FIELDS[side], default="generate: the model's native size; upscale: from --scale"))
    run.add_argument("--grow", type=int, metavar="PX", help=_help(SUBMIT_FIELDS["mask_grow"]))
    run.add_argument("--feather", type=int, metavar="PX", help=_help(SUBMIT_FIELDS["mask_feather"]))
    run.add_argument("--padding", type=int, metavar="PX", help=_help(SUBMIT_FIELDS["mask_padding"]))
    run.add_argument("--fill", choices=SUBMIT_FIELDS["fill"].choices, help=_help(SUBMIT_FIELDS["fill"]))
    run.add_argument("--invert-mask", action="store_true",
                     help="read --mask the other way round: white = keep, black = repaint (as a mask of what to "
                          "protect is drawn; A1111's \"Inpaint not masked\")")
    run.add_argument("--hard-mask", action="store_true",
                     help="inpaint, remove: cut the mask at 50%% for diffusion and feather it as max(grown, "
                          "blurred), as before soft inpainting; inpaint, remove, expand: no light matching")
    run.add_argument("--aspect", metavar="W:H", help="expand: grow the canvas to this aspect ratio (e.g. 16:9), "
                     "evenly on both sides that grow, instead of --left/--top/--right/--bottom")
    for side, where in (("left", "left of"), ("top", "above"), ("right", "right of"), ("bottom", "below")):
        run.add_argument(f"--{side}", type=int, metavar="PX", help=_help(
            SUBMIT_FIELDS[f"expand_{side}"], doc=f"expand: pixels added {where} the picture"))
    run.add_argument("--sampler", choices=SUBMIT_FIELDS["sampler"].choices, help=_help(SUBMIT_FIELDS["sampler"]))
    run.add_argument("--model", metavar="NAME", help=_help(SUBMIT_FIELDS["model"]))
    run.add_argument("--clip-skip", type=int, metavar="N", help=_help(SUBMIT_FIELDS["clip_skip"],
                                                                       default="the model's"))
    run.add_argument("--scale", type=float, metavar="X", help=_help(
        SUBMIT_FIELDS["scale"], doc="upscale: the result is this many times the picture's size; --width / --height "
                                    "set a target size instead", default="2"))
    run.add_argument("--upscaler", metavar="NAME", help=_help(SUBMIT_FIELDS["upscaler"]))
    run.add_argument("--image-guidance", type=float, metavar="X", dest="image_guidance", help=_help(
        SUBMIT_FIELDS["image_guidance"], doc="instruct: how closely the edit keeps to the picture (1 = not held to "
                                             "it, higher = closer); --prompt is the instruction and --guidance how "
                                             "strongly it is followed", default="1.5"))
    run.add_argument(
        "--control", action="append", default=[], metavar="TYPE:IMAGE[:SCALE[:START[:END]]][:pre]",
        help=(f"a ControlNet unit (repeatable). TYPE: {', '.join(unit['type'].choices)}. IMAGE: a control map file, "
              f"or 'input' for the picture itself. SCALE: {_facts(unit['scale'])}. START, END: fractions of the "
              f"schedule where the unit acts, {_facts(unit['start'], '')} (defaults {_number(unit['start'].default)} "
              f"and {_number(unit['end'].default)}). ':pre' runs the type's preprocessor on IMAGE").replace("%", "%%"))
    run.add_argument(
        "--reference", action="append", default=[], metavar="IMAGE[:WEIGHT[:MODE]]",
        help=(f"an IP-Adapter reference picture (repeatable). WEIGHT: {_facts(ref['weight'])}. MODE: "
              f"{', '.join(ref['mode'].choices)} (default {ref['mode'].default})").replace("%", "%%"))
    lora = LORA_FIELDS
    run.add_argument(
        "--lora", action="append", default=[], metavar="NAME[:WEIGHT]",
        help=(f"a LoRA the server lists (repeatable; `<lora:NAME:WEIGHT>` in --prompt works too). WEIGHT: "
              f"{_facts(lora['weight'])}; 0 switches it off").replace("%", "%%"))
    run.add_argument("--preset", metavar="NAME", help=_help(
        SUBMIT_FIELDS["preset"], doc="a preset listed in `welcome` / `models` (`presets`): its model, sampler, steps, "
        "guidance, LoRAs, prompt template and negative prompt apply wherever you leave the option out; the options "
        "you give win"))
    run.add_argument("--layer", action="store_true",
                     help="write the edit alone as a transparent layer instead of the picture with the edit "
                          "composited in (not for expand or upscale, which write the whole new picture)")
    run.add_argument("--out", required=True, metavar="FILE",
                     help="the result (PNG unless the name says another format; .png added when it has no "
                          "suffix); with --batch N: OUT-1.png ... OUT-N.png")
    run.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    run.add_argument("--lossy", action="store_true",
                     help="allow an --out format that changes pixels: a lossy one (JPEG, AVIF ...) for inpaint, "
                          "remove, expand and instruct with --mask, which would change the pixels the edit left "
                          "untouched too (the other modes make a whole new picture and write it without "
                          "--lossy), and in every mode GIF (256 colours) and the like")
    run.add_argument("--server", default=DEFAULT_URL, help="the server's address (default %(default)s)")
    run.add_argument("--token", default=os.environ.get("EASEL_TOKEN") or None, help=TOKEN_HELP)
    run.add_argument("--cert", metavar="PEM", help=CERT_HELP)
    run.set_defaults(func=cmd_run)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _facts(spec: Field, default: str | None = None) -> str:
    """A field's range and default in words: ``0 to 2, default 1`` (``default=""``: the range alone)."""
    facts = []
    if spec.minimum is not None and spec.maximum is not None:
        facts.append(f"{_number(spec.minimum)} to {_number(spec.maximum)}")
    elif spec.minimum is not None:
        facts.append(f"at least {_number(spec.minimum)}")
    elif spec.maximum is not None:
        facts.append(f"at most {_number(spec.maximum)}")
    if default is None and spec.default is not None:
        default = _number(spec.default) if isinstance(spec.default, (int, float)) else str(spec.default)
    if default:
        facts.append(f"default {default}")
    return ", ".join(facts)


def _help(spec: Field, *, doc: str | None = None, default: str | None = None, note: str = "") -> str:
    """An option's help from its wire field: the field's words (or ``doc``), a note, then its range and default."""
    doc = doc or spec.doc[:1].lower() + spec.doc[1:]
    text = doc.rstrip(".") + (f"; {note}" if note else "")
    facts = _facts(spec, default)
    return (text + (f" ({facts})" if facts else "")).replace("%", "%%")


# -- serve ------------------------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> int:
    try:
        return _serve(args)
    except KeyboardInterrupt:  # Ctrl-C before the server listens (its own handler stops it gracefully after)
        print("\neasel: interrupted while starting: the server did not start", file=sys.stderr)
        return 130


def _use_demo(config: Any, annotators: bool) -> None:
    """Serve the demo model, written to the cache on first use; a cache that cannot be written is named."""
    from backend.config import ConfigError
    from backend.fixtures.cache import cache_folder
    from backend.fixtures.demo_annotators import ensure_demo_annotators
    from backend.fixtures.demo_model import ensure_demo_model, use_demo

    try:
        use_demo(config, ensure_demo_model(), annotators=ensure_demo_annotators() if annotators else None)
    except OSError as exc:
        where = exc.filename or cache_folder("")
        raise ConfigError(f"cannot write the demo model to the cache ({where}: {exc.strerror or exc}): set EASEL_HOME "
                          "to a folder you can write to") from None


def _serve(args: argparse.Namespace) -> int:
    from backend import memory
    from backend.config import ConfigError, ModelSpec, load_config, looks_like_path, missing_files
    from backend.engine.engine import Engine
    from backend.engine.models import ModelError, ModelRegistry, pick_device
    from backend.server import EaselServer

    try:
        config = load_config(args.config)
        for key in ("host", "port", "token", "device", "tls_cert", "tls_key"):
            if getattr(args, key) is not None:
                setattr(config, key, getattr(args, key))
        if args.allow_origin:
            config.allowed_origins = [*config.allowed_origins, *args.allow_origin]
        if args.model and args.demo:  # (--demo was ignored without a word)
            raise ConfigError("--model and --demo each choose what to serve: give one of them")
        if args.model:
            where = Path(args.model).expanduser()
            if not where.exists() and (where.is_absolute() or looks_like_path(args.model)):
                # (diffusers took it for a hub id: "does not appear to have a file named model_index.json")
                raise ConfigError(f"--model {args.model} could not be loaded: there is no such file or folder "
                                  f"({where.absolute()}); give a diffusers folder, a .safetensors checkpoint or a hub "
                                  "id (owner/name)")
            config.models = {"default": ModelSpec("default", args.model)}
            config.default_model = "default"
        elif args.demo:
            log.info("preparing the demo model and demo annotators (written once to the cache)")
            _use_demo(config, annotators=True)
        elif not config.models and config.model_folders:  # not a 4 GB download the user never asked for
            raise ConfigError(f"no model found in model_folders ({', '.join(config.model_folders)}): they hold no "
                              ".safetensors checkpoint or diffusers folder that can be served"
                              + "".join(f"\n  {name}: {why}" for name, why in config.skipped_models.items())
                              + ("" if config.allow_pickle else "\n(.ckpt files are read only with allow_pickle = "
                                 "true: they can run code when loaded)"))
        elif not config.models:
            if _hub_model_available(DEFAULT_HUB_MODEL):
                config.models = {"sd15": ModelSpec("sd15", DEFAULT_HUB_MODEL)}
            else:
                log.warning("no model configured and no hub access: serving the tiny demo model (noise pictures)")
                _use_demo(config, annotators=False)
        config.check()
        gone = missing_files(config)
        if gone:
            raise ConfigError("these files or folders are not there: fix their paths in the config (a relative path "
                              "is read from the config file's folder):\n  " + "\n  ".join(gone))
    except ConfigError as exc:
        print(f"easel: {exc}", file=sys.stderr)
        return 2
    log.info("memory: %s", memory.allocator())

    try:
        device, dtype = pick_device(config.device, config.performance.dtype)
    except ValueError as exc:
        print(f"easel: {exc} (--device, or [server] device)", file=sys.stderr)
        return 2
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
        print(f"easel: {listen_error(config.host, config.port, exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def listen_error(host: str, port: int, exc: OSError) -> str:
    """Why the server cannot listen, in the terms of ``--host`` / ``--port`` (not a bind() call's tuple)."""
    import errno
    import socket

    from backend.server.transport import url_host

    where = f"{url_host(host)}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (f"cannot listen on {where}: the port is in use (another easel serve, or another program): stop it or "
                "choose another --port")
    if exc.errno == errno.EADDRNOTAVAIL:
        return (f"cannot listen on {where}: {host} is not an address of this machine: give one of its own, or "
                "0.0.0.0 for all of them")
    if isinstance(exc, socket.gaierror):
        return f"cannot listen on {where}: no address is known for the name {host} ({exc.strerror})"
    return f"cannot listen on {where}: {exc.strerror or exc}"


def cmd_cert(args: argparse.Namespace) -> int:
    from backend.tls import TLSError, fingerprint, make_cert

    try:
        cert, key = make_cert(args.dir, args.host, force=args.force)
    except TLSError as exc:
        print(f"easel: {exc}", file=sys.stderr)
        return 1
    print(f"certificate {cert}\nkey         {key}\nSHA-256     {fingerprint(cert)}")
    print(f"serve with: easel serve --tls-cert {cert} --tls-key {key} (clients connect to wss://HOST:PORT/ and pin "
          f"{cert.name})")
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


class Wording:
    """Says a protocol field the way the user typed it: ``mask_grow`` is ``--grow``, ``control[1].scale``
    is the SCALE of the second ``--control``."""

    def __init__(self, flags: dict[str, str], controls: Sequence[str] = (), references: Sequence[str] = (),
                 phrases: dict[str, str] | None = None, loras: Sequence[str] = ()):
        self.flags, self.controls, self.references = flags, list(controls), list(references)
        self.loras = list(loras)
        self.phrases = phrases or {}

    def _item(self, field: str) -> tuple[str, str | None] | None:
        """For a list item's field (``control[1].scale``): the words for the option that made the item and
        the part of it (``SCALE``, None for the item itself); None for any other field."""
        item = item_field(field)
        if item is None or item[0] not in ("control", "references", "loras"):
            return None
        kind, index, part = item
        specs, option, parts = {"control": (self.controls, "--control", CONTROL_PARTS),
                                "references": (self.references, "--reference", REFERENCE_PARTS),
                                "loras": (self.loras, "--lora", LORA_PARTS)}[kind]
        if index >= len(specs):
            words = f"the {_ordinal(index + 1)} {option}"
        elif len(specs) > 1:
            words = f"the {_ordinal(index + 1)} {option} ({specs[index]})"
        else:
            words = f"{option} {specs[index]}"
        return words, None if part is None else parts.get(part, part)

    def name(self, field: str) -> str | None:
        """The user's words for ``field``, or None when no option sets it."""
        item = self._item(field)
        if item is None:
            return self.flags.get(field)
        words, part = item
        return words if part is None else f"{part} of {words}"

    def say(self, message: str, field: str | None) -> str:
        """``message`` (a protocol error's) with field names replaced by options, led by the field's option."""
        item = self._item(field) if field else None
        unit = item[0] if item else None

        def replace(match: re.Match) -> str:
            inner = self._item(match.group(1))
            if inner and inner[0] == unit and inner[1]:  # the unit leads the sentence: name just its part
                return inner[1]
            return self.name(match.group(1)) or match.group(0)

        said = re.sub(r"`([^`]+)`", replace, message)
        for words, ours in self.phrases.items():
            said = said.replace(words, ours)
        lead = unit or (self.name(field) if field else None)
        return f"{lead}: {said}" if lead and lead not in said else said


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def cmd_run(args: argparse.Namespace) -> int:
    from shared.client import QUEUE_EVERY, Accepted, Client, EaselError, Progress, Queued, Started
    from shared.infotext import infotext

    flags = RUN_FLAGS
    if args.aspect:  # the sides are --aspect's, not options typed
        flags = RUN_FLAGS | {f"expand_{side}": f"--aspect {args.aspect}" for side in ("left", "top", "right", "bottom")}
    if args.model is None:  # an error about the server's default model: not one `--model` typed here
        flags = {field: flag for field, flag in flags.items() if field != "model"}
    wording = Wording(flags, args.control, args.reference, RUN_PHRASES, args.lora)
    try:
        _check_cert(args)
        outputs = check_outputs(output_paths(args.out, args.batch or 1), "--out", args.force)
        untouched = keeps_untouched(args.mode, bool(args.mask))
        check_lossless(outputs, args.lossy, untouched)
        if args.layer and args.mode in ("expand", "upscale"):  # (it was ignored: an opaque picture came back)
            raise UsageError(f"--layer is for inpaint, remove, instruct, img2img and generate: {args.mode} writes the "
                             "whole new picture (the input's pixels are kept in it as they are); leave out --layer")
        params: dict[str, Any] = {field: getattr(args, option) for option, field in RUN_OPTIONS.items()
                                  if getattr(args, option) is not None}
        if args.seed == -1:  # A1111's way of asking for a random seed, which WebUI users type by habit
            del params["seed"]
        elif args.seed is not None and args.seed < 0:  # (the wire's hint, "leave it out", is not for a command line)
            raise UsageError(f"--seed must be at least 0, got {args.seed} (-1: a random seed)")
        if args.hard_mask:
            params["soft_inpaint"] = False
        image = read_picture(args.image, "image", "--image") if args.image else None
        keeps_alpha = args.mode in ("inpaint", "remove", "expand", "upscale") or (args.mode == "instruct" and args.mask)
        check_alpha_kept(outputs, args.layer or (keeps_alpha and image is not None and image.transparent))
        check_profile_kept(outputs, image, lossy_needed=untouched)
        if args.aspect:
            params.update(_aspect(args, image))
        mask = read_picture(args.mask, "mask", "--mask") if args.mask else None
        params.update(image=image and image.data, mask=mask and mask.data,
                      control=[_control_unit(spec) for spec in args.control],
                      references=[_reference(spec) for spec in args.reference],
                      loras=[_lora(spec) for spec in args.lora])
        if image is not None and args.mode not in ("upscale", "generate"):
            size, name = image.upright.size, f"--image {image.path}"
            if args.mode == "expand":  # (its maps are stretched to the new canvas, not to the picture)
                size = expanded_size(*size, *(params.get(f"expand_{side}", 0)
                                              for side in ("left", "top", "right", "bottom")))
                name = "the expanded canvas"
            _note_stretched_controls(args.control, params["control"], size, name)
        elif args.mode == "generate" and args.width and args.height:
            _note_stretched_controls(args.control, params["control"], (args.width, args.height), "--width/--height")
        if args.mode in ("upscale", "generate") and "strength" in params:
            # an upscale's strength is its refine's, and so is a large generate's second stage (a generate
            # has no other use for one; the server's advice "a higher --strength" must be something to type)
            params["refine"] = params.pop("strength")
        job = Job.create(args.mode, **params)
        check_job(job)
        if args.invert_mask and not mask:
            raise UsageError("--invert-mask needs --mask")
        if image and mask:
            check_mask_size(image, mask)
        if mask:
            check_mask_grey(mask)
            if args.invert_mask:
                mask = inverted_mask(mask)
                job = dataclasses.replace(job, mask=mask.data)
            note_mask_coverage(mask, args.invert_mask)
        if args.mode == "generate":
            note_generate_size(args.width, args.height)
        if args.mode == "upscale" and image is not None:
            note_upscale_shape(image.upright.size, args.width, args.height)
    except UsageError as exc:
        print(f"easel: {exc}", file=sys.stderr)
        return 2
    except ProtocolError as exc:
        print(f"easel: {wording.say(exc.message, exc.field)}", file=sys.stderr)
        return 2

    shown = []

    def show(event: object) -> None:
        if isinstance(event, (Accepted, Queued)) and event.position:  # (0: it starts next)
            ahead = f"{event.position} job{'s' * (event.position != 1)}"
            print(f"easel: waiting: {ahead} ahead in the server's queue", file=sys.stderr)
        if isinstance(event, Started) and args.mode in ("img2img", "upscale", "generate"):
            note_tiles(event.passes)
        if isinstance(event, Progress):
            print(f"\rstep {event.step}/{event.total}", end="", file=sys.stderr, flush=True)
            shown.append(event)

    diffuses = not (job.mode == "upscale" and not job.refine)  # (a plain upscale never runs the model)
    connected = False
    try:
        with Client(args.server, token=args.token, name="easel-cli", cert=args.cert,
                    queue_every=QUEUE_EVERY) as client:
            connected = True
            client.check(job)  # (over the server's limits: refused before the note on loading, and any upload)
            if diffuses:
                _note_loading(client, job.model)
            result = client.run(job, on_event=show)  # (interrupted, it cancels the job)
    except KeyboardInterrupt:  # Ctrl-C printed a traceback from inside the websocket library
        print("\n" * bool(shown) + "easel: interrupted" + ": the job was cancelled on the server" * connected,
              file=sys.stderr)
        return 130
    except EaselError as exc:
        print("\n" * bool(shown) + f"easel: {wording.say(exc.message, exc.field)} [{exc.code}]", file=sys.stderr)
        return 1
    if shown:
        print(file=sys.stderr)

    parameters = dict(result.parameters, masked=args.mode == "instruct" and mask is not None)
    for item, path in zip(result.images, outputs):
        picture = result_picture(item.image, item.offset, image, whole=args.mode in ("expand", "upscale"),
                                 layer=args.layer)
        try:
            write_picture(picture, path, image, resampled=args.mode == "upscale",
                          infotext=infotext(parameters, item.seed, picture.size))
        except (OSError, ValueError) as exc:
            print(f"easel: cannot write {path}: {exc}", file=sys.stderr)
            return 1
        print(f"{path} (seed {item.seed})" if diffuses else path)
    return 0


def _note_loading(client: Any, model: str | None) -> None:
    """Say that the model loads first when it is not loaded: a first job on a hub model downloads gigabytes,
    and nothing was shown until its first step."""
    name = model or (client.welcome or {}).get("default_model")
    if name and name not in client.status().get("loaded_models", ()):
        print(f"easel: model {name!r} loads first (once, on its first job; a hub model is downloaded first: see the "
              "server's log)", file=sys.stderr)


def _lora(spec: str) -> dict:
    """``--lora NAME[:WEIGHT]`` as a ``loras`` item (the weight's range is the wire table's, checked later)."""
    name, _, weight = spec.rpartition(":")
    if not name:
        return {"name": spec}
    try:
        return {"name": name, "weight": float(weight)}
    except ValueError:
        raise UsageError(f"--lora {spec}: WEIGHT must be a number, e.g. --lora {name}:0.8") from None


def _aspect(args: argparse.Namespace, image: Picture | None) -> dict:
    """``--aspect W:H`` as the expand sides that bring the (upright) picture to that ratio."""
    from shared.rules import MAX_EXPAND, aspect_sides

    if args.mode != "expand":
        raise UsageError("--aspect is for expand")
    if any(getattr(args, side) for side in ("left", "top", "right", "bottom")):
        raise UsageError("--aspect sets the sides itself: leave out --left, --top, --right and --bottom")
    try:
        ratio = [int(part) for part in args.aspect.split(":")]
        if len(ratio) != 2 or min(ratio) <= 0:
            raise ValueError
    except ValueError:
        raise UsageError(f"--aspect {args.aspect}: expected W:H with two positive whole numbers, e.g. 16:9") from None
    if image is None:
        return {}
    sides = aspect_sides(*image.upright.size, *ratio)
    if not any(sides):
        raise UsageError(f"--aspect {args.aspect}: --image {image.path} already has that aspect ratio")
    if max(sides) > MAX_EXPAND:  # (it said "--left must be at most 4096, got 5233", an option not typed)
        width, height = image.upright.size
        grown = "left and right" if sides[0] or sides[2] else "top and bottom"
        raise UsageError(f"--aspect {args.aspect}: the {width}x{height} picture would grow by {max(sides)} pixels "
                         f"on the {grown}, and an expand adds at most {MAX_EXPAND} a side; choose a ratio nearer "
                         "the picture's, or expand in two runs")
    return dict(zip(("expand_left", "expand_top", "expand_right", "expand_bottom"), sides))


def check_job(job: Job) -> None:
    """What the server would refuse without looking at pixels: the submit message's field ranges and
    types (the wire table), then the job rules (``Job.check``). Raises ``ProtocolError`` naming the field."""
    check_fields(job.to_message(_placeholder), SUBMIT_FIELDS)
    job.check()


def _placeholder(image: object, role: str) -> dict:
    """A wire reference standing in for a picture that is not uploaded yet (to check a message locally)."""
    return {"frame": "local"}


def cmd_preprocess(args: argparse.Namespace) -> int:
    from shared.client import Client, EaselError

    wording = Wording(PREPROCESS_FLAGS, phrases=CONNECT_PHRASES)
    try:
        _check_cert(args)
        output = check_outputs(output_paths(args.output, 1, "OUTPUT"), "OUTPUT", args.force)[0]
        picture = read_picture(args.input, "image", "INPUT")
        request = PreprocessJob(image=picture.data, preprocessor=args.preprocessor, resolution=args.resolution)
        check_fields(request.to_message(_placeholder), PREPROCESS_FIELDS)
        request.check()
    except UsageError as exc:
        print(f"easel: {exc}", file=sys.stderr)
        return 2
    except ProtocolError as exc:
        print(f"easel: {wording.say(exc.message, exc.field)}", file=sys.stderr)
        return 2
    try:
        with Client(args.server, token=args.token, name="easel-cli", cert=args.cert) as client:
            control_map = client.preprocess(request.preprocessor, request.image, resolution=request.resolution)
    except KeyboardInterrupt:  # (leaving the `with` closed the connection, which cancels the job)
        print("easel: interrupted", file=sys.stderr)
        return 130
    except EaselError as exc:
        print(f"easel: {wording.say(exc.message, exc.field)} [{exc.code}]", file=sys.stderr)
        return 1
    Image.open(io.BytesIO(control_map.data)).convert("RGB").save(output)
    print(output)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    # the names were only to be had from a refusal's "this server has: ..." or a host's picker
    from shared.client import Client, EaselError
    from shared.model_list import model_choices

    try:
        _check_cert(args)
        with Client(args.server, token=args.token, name="easel-cli", cert=args.cert) as client:
            reply = client.models()
    except UsageError as exc:
        print(f"easel: {exc}", file=sys.stderr)
        return 2
    except EaselError as exc:
        print(f"easel: {Wording({}, phrases=CONNECT_PHRASES).say(exc.message, None)} [{exc.code}]", file=sys.stderr)
        return 1
    print("models (--model):")
    for choice in model_choices(reply):
        print(f"  {choice.label}")
    for title, key, about in (("LoRAs (--lora)", "loras", lambda item: item.get("family")),
                              ("embeddings (in --prompt)", "embeddings", lambda item: item.get("family")),
                              ("upscalers (--upscaler)", "upscalers",
                               lambda item: item.get("scale") and f"{item['scale']}x"),
                              ("presets (--preset)", "presets", lambda item: item.get("description"))):
        items = reply.get(key) or []
        print(f"{title}:" + ("" if items else " none"))
        for item in items:
            print(f"  {item['name']}" + (f" ({about(item)})" if about(item) else ""))
    return 0


def _control_unit(spec: str) -> dict:
    """``TYPE:IMAGE[:SCALE[:START[:END]]][:pre]`` as a protocol control unit.

    Numbers are taken from the end, so an IMAGE path may itself contain colons (C:\\maps\\lines.png).
    """
    kind, _, rest = spec.partition(":")
    preprocess = rest.endswith(":pre")
    image, numbers = _numbers_at_end(rest.removesuffix(":pre") if preprocess else rest, 3)
    if not kind or not image:
        raise UsageError(f"--control {spec}: expected TYPE:IMAGE[:SCALE[:START[:END]]][:pre]")
    stray = _stray_part(image, allow_input=True)
    if stray:  # (was "cannot read input:pre: no such file" for depth:input:pre:0.5)
        raise UsageError(f"--control {spec}: {stray!r} is not a SCALE, START or END number; expected "
                         "TYPE:IMAGE[:SCALE[:START[:END]]][:pre], with :pre last")
    unit: dict = {"type": kind, "preprocess": "on" if preprocess else "off",
                  **dict(zip(("scale", "start", "end"), numbers))}
    if image != "input":
        unit["image"] = read_picture(image, "control", f"--control {spec}").data
    return unit


def _note_stretched_controls(specs: Sequence[str], units: list[dict], size: tuple[int, int], name: str) -> None:
    """Say when a control map's shape is not the picture's (``size``, called ``name``): the server stretches
    it to that size (protocol §5.6), which a 6000x200 map given for a 4:3 photo did without a word, and a map
    of the picture alone did over an expand's new band."""
    width, height = size
    for spec, unit in zip(specs, units):
        given = unit.get("image")
        if isinstance(given, ImageData) and abs(given.width * height / (given.height * width) - 1) > 0.01:
            print(f"easel: note: --control {spec} is {given.width}x{given.height} and {name} "
                  f"{width}x{height}: the map is stretched to that size, distorting it (crop or pad it to that "
                  "shape first if that is not meant)", file=sys.stderr)


def _reference(spec: str) -> dict:
    """``IMAGE[:WEIGHT[:MODE]]`` as a protocol reference (IMAGE may contain colons)."""
    head, _, last = spec.rpartition(":")
    mode = last if head and last in REFERENCE_FIELDS["mode"].choices else None
    image, numbers = _numbers_at_end(head if mode else spec, 1)
    stray = _stray_part(image)
    if stray:  # (was "cannot read style.png:0.5:Style: no such file")
        raise UsageError(f"--reference {spec}: {stray!r} is neither a WEIGHT nor a MODE (one of "
                         f"{', '.join(REFERENCE_FIELDS['mode'].choices)}); expected IMAGE[:WEIGHT[:MODE]]")
    reference: dict = {"image": read_picture(image, "reference", f"--reference {spec}").data,
                       **dict(zip(("weight",), numbers))}
    if mode:
        reference["mode"] = mode
    return reference


def _stray_part(image: str, allow_input: bool = False) -> str | None:
    """The part after IMAGE's last colon when IMAGE is no file but what comes before that colon is one (or
    ``input``): a misplaced or misspelt option part, not a path."""
    if Path(image).exists():
        return None
    parts = image.split(":")
    for end in range(len(parts) - 1, 0, -1):
        head = ":".join(parts[:end])
        if (allow_input and head == "input") or Path(head).is_file():
            return next((part for part in parts[end:] if not _is_number(part)), parts[end])
    return None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


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


def _check_cert(args: argparse.Namespace) -> None:
    """A pinned certificate only means something for a wss:// server: else it would be ignored unsaid."""
    if args.cert and not args.server.startswith("wss://"):
        raise UsageError(f"--cert is for a wss:// server, and --server is {args.server}: use wss://HOST:PORT/")


# -- demo -------------------------------------------------------------------------------------

def cmd_demo_model(args: argparse.Namespace) -> int:
    try:
        return _demo_model(args)
    except OSError as exc:  # was a traceback from mkdir
        print(f"easel: cannot write the model to {args.dir} ({exc.filename or args.dir}: {exc.strerror or exc}): give "
              "a folder you can write to", file=sys.stderr)
        return 1


def _demo_model(args: argparse.Namespace) -> int:
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


def cmd_demo(args: argparse.Namespace) -> int:
    from backend.demo import run_demo

    try:
        folder = run_demo(Path(args.out))
    except OSError as exc:  # was a traceback from mkdir
        print(f"easel: cannot write {exc.filename or args.out} ({exc.strerror or exc}): the results go to {args.out}, "
              "the demo model to the cache ($EASEL_HOME, else ~/.cache/easel); make both writable", file=sys.stderr)
        return 1
    print(f"demo results in {folder}/ (see sheet.png)")
    return 0


# -- package ----------------------------------------------------------------------------------

def cmd_package(args: argparse.Namespace) -> int:
    from backend.packaging import NotACheckout, build

    try:
        print(build(args.host, Path(args.out)))
    except NotACheckout as exc:
        print(f"easel: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # (a traceback: --out naming a file, a folder not ours to write)
        where = "it is a file, not a folder" if Path(args.out).is_file() else (exc.strerror or str(exc))
        print(f"easel: cannot write into --out {args.out}: {where}; give a folder you can write to", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
