"""Server configuration: a TOML file, overridden by command-line flags.

    [server]
    host = "127.0.0.1"
    port = 8760
    token = ""                 # clients must present it; required off loopback
    model_folders = []         # each checkpoint .safetensors / diffusers folder inside is a model (read per hello)
    controlnet_folders = []    # e.g. A1111's models/ControlNet: family and type read from file names
    embedding_folders = []     # textual inversions, e.g. A1111's embeddings/ (family read from the files)
    allowed_origins = []       # web pages that may connect, each as its location.origin: "http://localhost:5173"
    default_model = "sd15"
    allow_pickle = false       # .ckpt / .bin checkpoints run code when loaded
    annotators = "/path/to/Annotators"   # preprocessor weights (lllyasviel/Annotators names), or that hub id
    lama = "/path/to/big-lama.safetensors"  # optional: LaMa for the `inpaint` fill (else OpenCV's Telea)

    [limits]
    max_steps = 150

    [controlnets.sd15]         # ControlNets per family and control type
    canny = "lllyasviel/control_v11p_sd15_canny"
    depth = "/path/to/A1111/models/ControlNet/control_v11f1p_sd15_depth.safetensors"

    [ip_adapters.sd15]         # IP-Adapter for references, per family
    weights = "/path/to/ip-adapter_sd15.safetensors"
    image_encoder = "/path/to/image_encoder"
    face = "/path/to/ip-adapter-plus-face_sd15.safetensors"   # optional: the `face` reference mode

    [upscalers]                # super-resolution models (spandrel: ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT ...)
    ultrasharp = "/path/to/A1111/models/ESRGAN/4x-UltraSharp.pth"
    # [server] upscaler_folders = ["/path/to/A1111/models/ESRGAN", "/path/to/ComfyUI/models/upscale_models"]
    # [server] default_upscaler = "ultrasharp"   (else the first configured; `lanczos` when none)

    [loras]                    # LoRAs by name (kohya or diffusers .safetensors), any family
    detail = "/path/to/A1111/models/Lora/add_detail.safetensors"
    # [server] lora_folders = ["/path/to/A1111/models/Lora", "/path/to/ComfyUI/models/loras"]

    [presets.watercolour]      # named bundles of job settings; see backend/presets.py
    steps = 30

    [performance]              # speed switches; see backend/performance.py
    dtype = "auto"

    [models.sd15]
    source = "/path/to/A1111/models/Stable-diffusion/v1-5-pruned-emaonly.safetensors"
    family = "sd15"            # guessed from the weights when omitted
    inpaint = "/path/to/sd-v1-5-inpainting.safetensors"   # optional 9-channel UNet
    preview = "madebyollin/taesd"                        # optional TAESD for previews
    config = "/path/to/diffusers-config-folder"          # single files: offline configs
    clip_skip = 2                                        # A1111's count; jobs may set their own
    prediction_type = "v_prediction"                     # else read from the checkpoint (v_pred key ...)
    zero_terminal_snr = true                             # likewise (ztsnr key, rescale_betas_zero_snr)
    guidance_rescale = 0.7                               # default 0.7 with zero_terminal_snr, else 0
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from backend import model_files
from backend.performance import Performance, PerformanceError, parse_performance
from backend.presets import BUILTIN_PRESETS, Preset, PresetError, parse_presets
from shared.loras import missing
from shared.messages import CONTROL_TYPES, DEFAULT_PORT, FAMILIES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)
_warned: set[str] = set()


def _warn_once(message: str, *args) -> None:
    """Log what a folder holds amiss the first time it is seen: the folders are read again on every
    ``hello`` and ``models``."""
    text = message % args
    if text not in _warned:
        _warned.add(text)
        log.warning(text)


class ConfigError(ValueError):
    """The configuration is unusable; the message says which key and why."""


@dataclass
class Limits:
    max_steps: int = 150
    max_batch: int = 8
    max_side: int = 8192
    max_pixels: int = 8192 * 8192
    # A generate above the native range runs in two stages, the second in tiles at native scale, so its
    # cost grows with the area like any refine: a painter's canvas (3000-8000 px) may be generated whole.
    max_generate_side: int = 8192
    max_message_bytes: int = 4 * 8192 * 8192 + 2**20  # a raw RGBA frame of max_pixels fits
    max_upload_bytes: int | None = None  # unused uploads of one connection; None: 2 x max_message_bytes
    max_queued_per_client: int = 32
    max_queued: int = 256  # waiting jobs of all connections together: many connections must not hold more
    max_connections: int = 64  # open connections, greeted or not; more are refused at the handshake (HTTP 503)
    max_outbox_bytes: int = 16 * 2**20  # messages waiting for one slow client; then previews are dropped
    max_kept_bytes: int = 64 * 2**20  # endings (results) kept per session for a client that reconnects

    @property
    def upload_budget(self) -> int:
        """Bytes of unused uploads one connection may hold: ``max_upload_bytes``, or twice a message."""
        return self.max_upload_bytes if self.max_upload_bytes is not None else 2 * self.max_message_bytes


@dataclass
class ModelSpec:
    """One configured model: where its weights are and what they are."""

    name: str
    source: str
    family: str | None = None
    inpaint: str | None = None
    preview: str | None = None
    config: str | None = None
    instruct: str | None = None  # sd15: an InstructPix2Pix UNet (8 channels); flux: a Kontext transformer
    # flux (backend/engine/flux.py): components of a single-file transformer, ComfyUI layout
    text_encoder: str | None = None  # CLIP-L
    text_encoder_2: str | None = None  # T5-XXL
    vae: str | None = None
    true_cfg: float = 1.0  # flux: above 1, a negative prompt and true classifier-free guidance (twice the cost)
    cpu_offload: bool = False  # flux: keep the modules in RAM and move each to the GPU while it runs
    quantize: str | None = None  # flux: "int8" (torchao weight-only) for transformers from diffusers folders / hub ids
    clip_skip: int | None = None  # A1111's count: 1 = the last layer; jobs may set their own
    prediction_type: str | None = None  # epsilon | v_prediction; read from the checkpoint when None
    zero_terminal_snr: bool | None = None  # read from the checkpoint when None
    guidance_rescale: float | None = None  # 0.7 for zero-terminal-SNR models when None, else 0


@dataclass
class AdapterSpec:
    """An IP-Adapter: its weights file and the CLIP image encoder folder it was trained with."""

    weights: str
    image_encoder: str
    face: str | None = None  # a face adapter (e.g. ip-adapter-plus-face) for the `face` reference mode
    face_image_encoder: str | None = None  # when the face adapter needs another encoder than `weights`


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token: str | None = None
    default_model: str | None = None
    allow_pickle: bool = False
    device: str = "auto"
    allowed_origins: list[str] = field(default_factory=list)
    model_folders: list[str] = field(default_factory=list)
    controlnet_folders: list[str] = field(default_factory=list)
    embedding_folders: list[str] = field(default_factory=list)  # textual inversions (A1111 embeddings/)
    annotators: str | None = None  # folder or hub repository with the lllyasviel/Annotators files
    lama: str | None = None  # a LaMa checkpoint (spandrel) for the `inpaint` pre-fill; OpenCV's Telea when None
    models: dict[str, ModelSpec] = field(default_factory=dict)
    controlnets: dict[str, dict[str, str]] = field(default_factory=dict)  # family -> control type -> source
    controlnet_memory_mb: int = 4096  # loaded ControlNets beyond this are dropped, least recently used first
    ip_adapters: dict[str, AdapterSpec] = field(default_factory=dict)  # family -> adapter
    limits: Limits = field(default_factory=Limits)
    demo: bool = False
    performance: Performance = field(default_factory=Performance)  # [performance]: backend/performance.py
    upscalers: dict[str, str] = field(default_factory=dict)  # name -> .pth / .safetensors super-resolution model
    upscaler_folders: list[str] = field(default_factory=list)  # A1111 models/ESRGAN, ComfyUI models/upscale_models
    default_upscaler: str | None = None
    loras: dict[str, str] = field(default_factory=dict)  # name -> LoRA .safetensors file
    # files in model_folders / lora_folders left out (name -> the file and why), for a job that names one
    skipped_models: dict[str, str] = field(default_factory=dict)
    skipped_loras: dict[str, str] = field(default_factory=dict)
    folder_models: set[str] = field(default_factory=set)  # the names found in model_folders (read again)
    folder_loras: set[str] = field(default_factory=set)  # the names found in lora_folders
    lora_folders: list[str] = field(default_factory=list)  # A1111 models/Lora, ComfyUI models/loras
    presets: dict[str, Preset] = field(default_factory=lambda: dict(BUILTIN_PRESETS))
    tls_cert: str | None = None  # PEM certificate: serve wss:// (with tls_key)
    tls_key: str | None = None
    hello_timeout: float = 10.0  # seconds a new connection has to say hello
    slow_reader_seconds: float = 10.0  # over max_outbox_bytes and reading nothing this long: disconnected
    shutdown_grace: float = 10.0  # seconds the running job may take to finish when the server stops
    resume_seconds: float = 120.0  # a dropped connection's session (its jobs, their endings) is kept this long

    def check(self) -> "Config":
        """Raise ConfigError for settings that must not run."""
        check_ranges(self)
        if not is_loopback(self.host) and not self.token:
            raise ConfigError(f"binding {self.host} exposes the GPU to the network: set a token (--token)")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert and tls_key go together: set both (easel cert DIR makes a pair) or neither")
        for key in ("tls_cert", "tls_key"):
            if getattr(self, key) and not Path(getattr(self, key)).is_file():
                raise ConfigError(f"{key} {getattr(self, key)} is not a file")
        if self.tls_cert:  # a key of another pair, or a file that is no PEM, is said now rather than as a traceback
            from backend.tls import TLSError, server_context
            try:
                server_context(self.tls_cert, self.tls_key)
            except TLSError as exc:
                raise ConfigError(str(exc)) from None
        check_origins(self.allowed_origins)
        if self.default_model and self.models and self.default_model not in self.models:
            why = missing("model", self.default_model, self.models, self.skipped_models)
            raise ConfigError(f"default_model: {why}")
        for spec in self.models.values():
            if spec.family is not None and spec.family not in FAMILIES:
                raise ConfigError(f"models.{spec.name}.family must be one of {', '.join(FAMILIES)}")
            check_prompt_settings(spec)
            if spec.instruct and spec.family == "sdxl":
                raise ConfigError(f"models.{spec.name}.instruct: an InstructPix2Pix UNet fits sd15 models (flux "
                                  "models take a Kontext transformer)")
            if isinstance(spec.true_cfg, bool) or not isinstance(spec.true_cfg, (int, float)) or spec.true_cfg < 1:
                raise ConfigError(f"models.{spec.name}.true_cfg must be a number of at least 1 (1: off)")
            if not isinstance(spec.cpu_offload, bool):
                raise ConfigError(f"models.{spec.name}.cpu_offload must be true or false")
            check_quantize(spec)
        for preset in self.presets.values():
            if preset.model and self.models and preset.model not in self.models:
                why = missing("model", preset.model, self.models, self.skipped_models)
                raise ConfigError(f"presets.{preset.name}.model: {why}")
            for name, _ in preset.loras:
                if name not in self.loras:
                    why = missing("LoRA", name, self.loras, self.skipped_loras)
                    raise ConfigError(f"presets.{preset.name}.loras: {why}")
        if self.default_upscaler and self.default_upscaler not in self.upscalers:
            raise ConfigError(f"default_upscaler {self.default_upscaler!r} is not among the configured upscalers "
                              f"({', '.join(self.upscalers) or 'none'})")
        return self

    @property
    def default(self) -> str | None:
        return self.default_model or next(iter(self.models), None)


# The least each limit may be. Below it the server started and then refused every job (max_steps = 0: "steps 1
# is over this server's limit of 0") or every connection (max_connections = 0, a max_message_bytes too small for
# a hello), where a typo in the config file belongs at startup. 0 is the least for the byte budgets that only
# decide what waits.
LIMIT_FLOORS = {"max_message_bytes": 2**20, "max_outbox_bytes": 0, "max_kept_bytes": 0, "max_upload_bytes": 0}
# [server] numbers: (least, whether the least itself is allowed)
SERVER_FLOORS = {"hello_timeout": (0, False), "slow_reader_seconds": (0, False), "shutdown_grace": (0, True),
                 "resume_seconds": (0, True), "controlnet_memory_mb": (0, True)}


def check_ranges(config: Config) -> None:
    """Numbers the config file or the command line set that no server can run with, named with their range."""
    if isinstance(config.port, bool) or not isinstance(config.port, int) or not 0 <= config.port <= 65535:
        raise ConfigError(f"port must be from 1 to 65535 (0: any free port), got {config.port}")
    for key, least in {f.name: LIMIT_FLOORS.get(f.name, 1) for f in dataclasses.fields(Limits)}.items():
        value = getattr(config.limits, key)
        if value is not None and value < least:
            raise ConfigError(f"limits.{key} must be at least {least}, got {value}" + (
                "" if least else " (leave it out for the default)"))
    for key, (least, allowed) in SERVER_FLOORS.items():
        value = getattr(config, key)
        if value < least or (value == least and not allowed):
            raise ConfigError(f"server.{key} must be {'at least' if allowed else 'more than'} {least}, got {value}")


def missing_files(config: Config) -> list[str]:
    """The configured weight files and folders that are not there, each as ``setting: path``.

    Hub ids stay relative (``owner/repo``); every absolute path here was written as a local one. Loading is
    lazy, so without this a mistyped path in a pasted config started the server and failed its first job."""
    entries: list[tuple[str, str | None]] = [("server.lama", config.lama), ("server.annotators", config.annotators)]
    entries += [(f"models.{spec.name}.{key}", getattr(spec, key))
                for spec in config.models.values() if spec.name not in config.folder_models for key in MODEL_PATH_KEYS]
    entries += [(f"controlnets.{family}.{kind}", source)
                for family, kinds in config.controlnets.items() for kind, source in kinds.items()]
    entries += [(f"ip_adapters.{family}.{item.name}", getattr(spec, item.name))
                for family, spec in config.ip_adapters.items() for item in dataclasses.fields(spec)]
    entries += [(f"upscalers.{name}", source) for name, source in config.upscalers.items()]
    return [f"{where}: {value} does not exist" for where, value in entries
            if value and Path(value).is_absolute() and not Path(value).exists()]


def cleartext_warning(config: Config) -> str | None:
    """What to tell the user when the token would cross a network in clear, or None."""
    if is_loopback(config.host) or config.tls_cert:
        return None
    return (f"serving {config.host} without TLS: the token and the pictures travel in clear on the network; "
            "`easel cert DIR` makes a certificate, then serve with --tls-cert/--tls-key")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


SECTIONS = ("server", "limits", "models", "controlnets", "ip_adapters", "upscalers", "loras", "presets",
            "performance")
FOLDERS = list  # a list of folder paths
SERVER_KEYS = {"host": str, "port": int, "token": str, "default_model": str, "allow_pickle": bool, "device": str,
               "allowed_origins": list, "model_folders": FOLDERS, "controlnet_folders": FOLDERS,
               "embedding_folders": FOLDERS, "upscaler_folders": FOLDERS, "lora_folders": FOLDERS,
               "controlnet_memory_mb": int, "annotators": str, "default_upscaler": str, "hello_timeout": float,
               "slow_reader_seconds": float, "shutdown_grace": float, "resume_seconds": float, "tls_cert": str,
               "tls_key": str, "lama": str}
MODEL_KEYS = {f.name for f in dataclasses.fields(ModelSpec)} - {"name"}
MODEL_PATH_KEYS = ("source", "inpaint", "preview", "config", "instruct", "text_encoder", "text_encoder_2", "vae")


def check_sections(data: dict) -> None:
    """Every top-level table is one Easel reads: a misspelt one (``[lora]``, ``[model.x]``) was skipped
    without a word, and its settings with it."""
    for key, value in data.items():
        if key not in SECTIONS:
            raise ConfigError(f"unknown section [{key}]{_did_you_mean(key, SECTIONS)}; known: {', '.join(SECTIONS)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table ([{key}] followed by its settings), got {value!r}")


def check_type(where: str, value, kind) -> None:
    """``value`` is of ``kind`` (int, float: any number, bool, str, list: of strings), or ConfigError: a
    string where a list belongs was taken letter by letter ("/" scanned the whole disk), and "false"
    in quotes is true."""
    if kind is list:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{where} must be a list of strings in brackets, e.g. [\"/path/one\", \"/path/two\"], "
                              f"got {value!r}")
        return
    fits = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
            float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            bool: lambda v: isinstance(v, bool), str: lambda v: isinstance(v, str)}[kind](value)
    if not fits:
        what = {int: "a whole number", float: "a number", bool: "true or false (no quotes)", str: "a string in quotes"}
        raise ConfigError(f"{where} must be {what[kind]}, got {value!r}")


def _not_a_folder(kind: str, folder) -> str:
    if Path(folder).is_file():  # a checkpoint listed where its folder belongs
        entry = {"model": "[models.NAME] source", "LoRA": "[loras] NAME"}.get(kind)
        alone = f", or name the file alone with {entry} = \"...\"" if entry else ""
        return f"{kind} folder {folder} is a file, not a folder: give the folder it is in{alone}"
    return f"{kind} folder {folder} does not exist"


def _did_you_mean(word: str, known) -> str:
    close = difflib.get_close_matches(word.lower(), [k.lower() for k in known], n=1, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean {next(k for k in known if k.lower() == close[0])!r}?)"


def load_config(path: str | Path | None = None) -> Config:
    """Read a TOML config file (or return the defaults when ``path`` is None)."""
    config = Config()
    if path is None:
        return config
    path = Path(path)
    try:
        # TOML is UTF-8 whatever the locale (Windows would read cp1252 and garble accented paths); an editor's
        # byte order mark is no TOML, but Notepad writes one
        text = path.read_bytes().decode("utf-8-sig")
        data = tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (IsADirectoryError, PermissionError):  # Windows says PermissionError for a folder
        if path.is_dir():
            raise ConfigError(f"config file {path} is a folder: give the .toml file in it") from None
        raise ConfigError(f"config file {path} cannot be read: permission denied (check its owner and mode)") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start} is not UTF-8): save it as UTF-8, "
                          "or give the .toml file if this is another file") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        hint = ""
        if "\\" in text:  # Windows paths pasted in "...": TOML reads \U, \m ... as escapes
            hint = (" (inside double quotes a backslash starts an escape: write Windows paths in single quotes, "
                    "'C:\\models\\Lora', or with forward slashes, \"C:/models/Lora\")")
        raise ConfigError(f"config file {path} is not valid TOML: {exc}{hint}") from None

    check_sections(data)
    server = data.get("server", {})
    for key, value in server.items():
        if key not in SERVER_KEYS:
            raise ConfigError(f"[server] has no setting {key!r}{_did_you_mean(key, SERVER_KEYS)}; known: "
                              f"{', '.join(sorted(SERVER_KEYS))}")
        check_type(f"server.{key}", value, SERVER_KEYS[key])
        if key != "lama":
            setattr(config, key, value)
    if server.get("lama"):
        config.lama = str((path.parent / Path(server["lama"]).expanduser()).resolve())
    for key in ("tls_cert", "tls_key"):
        if getattr(config, key):
            setattr(config, key, str((path.parent / Path(getattr(config, key)).expanduser()).resolve()))
    if config.annotators:
        folder = (path.parent / Path(config.annotators).expanduser()).resolve()
        if folder.is_dir() or looks_like_path(config.annotators):  # otherwise a hub repository id
            config.annotators = str(folder)
    known = {f.name for f in dataclasses.fields(Limits)}
    for key, value in data.get("limits", {}).items():
        if key not in known:
            raise ConfigError(f"unknown limit {key!r}{_did_you_mean(key, known)}; known: {', '.join(sorted(known))}")
        check_type(f"limits.{key}", value, int)
        setattr(config.limits, key, value)
    for name, entry in data.get("models", {}).items():
        if not isinstance(entry, dict):
            raise ConfigError(f"models.{name} must be a table: [models.{name}] with source = \"...\" under it")
        if "source" not in entry:
            raise ConfigError(f"models.{name} needs a source (hub id, diffusers folder or .safetensors file)")
        for key, value in entry.items():
            if key not in MODEL_KEYS:
                raise ConfigError(f"models.{name} has no setting {key!r}{_did_you_mean(key, MODEL_KEYS)}; known: "
                                  f"{', '.join(sorted(MODEL_KEYS))}")
            if key in MODEL_PATH_KEYS:
                check_type(f"models.{name}.{key}", value, str)
        spec = ModelSpec(name=name, **entry)
        for key in MODEL_PATH_KEYS:
            value = getattr(spec, key)
            if value:
                setattr(spec, key, _local_path_or_hub(value, path.parent))
        check_family(spec)
        config.models[name] = spec
    for family, types in data.get("controlnets", {}).items():
        if family not in FAMILIES:
            raise ConfigError(f"controlnets.{family}: the family must be one of {', '.join(FAMILIES)}")
        for kind, source in types.items():
            if kind not in CONTROL_TYPES:
                raise ConfigError(f"controlnets.{family}.{kind}: the control type must be one of "
                                  f"{', '.join(CONTROL_TYPES)}")
            check_type(f"controlnets.{family}.{kind}", source, str)
            config.controlnets.setdefault(family, {})[kind] = _local_path_or_hub(source, path.parent)
    for family, entry in data.get("ip_adapters", {}).items():
        if family not in FAMILIES or not isinstance(entry, dict) or {"weights", "image_encoder"} - set(entry):
            raise ConfigError(f"ip_adapters.{family}: needs a family ({', '.join(FAMILIES)}) with `weights` (a "
                              ".safetensors file) and `image_encoder` (a folder)")
        unknown = set(entry) - {f.name for f in dataclasses.fields(AdapterSpec)}
        if unknown:
            raise ConfigError(f"ip_adapters.{family}: unknown setting {', '.join(sorted(unknown))}; known: weights, "
                              "image_encoder, face, face_image_encoder")
        config.ip_adapters[family] = AdapterSpec(**{key: _local_or_hub(value, path.parent)
                                                    for key, value in entry.items()})
    try:
        config.performance = parse_performance(data.get("performance", {}))
    except PerformanceError as exc:
        raise ConfigError(str(exc)) from None
    for folder in config.controlnet_folders:
        folder = (path.parent / Path(folder).expanduser()).resolve()
        for (family, kind), source in scan_controlnet_folder(folder).items():
            config.controlnets.setdefault(family, {}).setdefault(kind, source)  # explicit entries win
    config.embedding_folders = [str((path.parent / Path(folder).expanduser()).resolve())
                                for folder in config.embedding_folders]
    for folder in config.embedding_folders:
        if not Path(folder).is_dir():
            raise ConfigError(_not_a_folder("embedding", folder))
    for name, source in data.get("upscalers", {}).items():
        if not isinstance(source, str) or source.lower().endswith((".ckpt", ".pt", ".bin")):
            raise ConfigError(f"upscalers.{name}: a .pth or .safetensors super-resolution model file, or a diffusers "
                              f"StableDiffusionUpscalePipeline (folder or hub id), got {source!r}")
        local = (path.parent / Path(source).expanduser()).resolve()
        hub = source.count("/") == 1 and not local.exists() and not looks_like_path(source) \
            and not source.lower().endswith(UPSCALER_SUFFIXES)
        config.upscalers[name] = source if hub else str(local)  # a hub id of an upscale pipeline as it is
    for folder in config.upscaler_folders:
        folder = (path.parent / Path(folder).expanduser()).resolve()
        for name, source in scan_upscaler_folder(folder).items():
            config.upscalers.setdefault(name, source)  # an explicit [upscalers] entry wins
    for name, source in data.get("loras", {}).items():
        if not isinstance(source, str) or not source.lower().endswith(".safetensors"):
            raise ConfigError(f"loras.{name}: a LoRA .safetensors file (kohya or diffusers format), got {source!r}")
        config.loras[name] = str((path.parent / Path(source).expanduser()).resolve())
        problem = model_files.file_problem(config.loras[name], model_files.lora_problem)
        if problem:
            raise ConfigError(f"loras.{name}: {config.loras[name]} {problem}")
    config.model_folders, config.lora_folders = (
        [str((path.parent / Path(folder).expanduser()).resolve()) for folder in folders]
        for folders in (config.model_folders, config.lora_folders))
    scan_folders(config)
    if config.default_model is None and config.folder_models:
        # the first model now, pinned: a file added to a folder later, sorting first, must not become the
        # model every job without one runs on
        config.default_model = next(iter(config.models))
    try:
        config.presets = parse_presets(data.get("presets", {}))
    except PresetError as exc:
        raise ConfigError(str(exc)) from None
    return config


def scan_folders(config: Config, keep=()) -> bool:
    """Read ``model_folders`` and ``lora_folders`` (absolute paths) into ``config.models`` and ``config.loras``,
    again: what they find joins the configured entries ([models.*] and [loras] win on a name), a file
    added since shows, one removed goes, and each dict is replaced whole (the GPU worker reads them).
    True when the models or LoRAs changed. ConfigError for a folder that is not there. Models named in
    ``keep`` (loaded ones: they run without their file) stay listed when their file goes."""
    models = {name: spec for name, spec in config.models.items() if name not in config.folder_models}
    loras = {name: source for name, source in config.loras.items() if name not in config.folder_loras}
    skipped_models: dict[str, str] = {}
    skipped_loras: dict[str, str] = {}
    # One file reached twice (a folder listed with its subfolder, ComfyUI's checkpoints linked to A1111's)
    # is listed once, by the first name it was found under.
    seen = {os.path.realpath(spec.source) for spec in models.values()}
    for folder in config.model_folders:
        for name, spec in scan_model_folder(Path(folder), config.allow_pickle, skipped_models).items():
            real = os.path.realpath(spec.source)
            if real in seen:
                continue
            seen.add(real)
            if name in models:
                _warn_once("model %s: %s is not served: %s has that name (rename one of them)", name, spec.source,
                           models[name].source)
                continue
            old = config.models.get(name)
            models[name] = old if old is not None and old.source == spec.source else spec
    for name in config.folder_models & set(keep):
        models.setdefault(name, config.models[name])
    seen = {os.path.realpath(source) for source in loras.values()}
    for folder in config.lora_folders:
        for name, source in scan_lora_folder(Path(folder), skipped_loras).items():
            if os.path.realpath(source) in seen:
                continue
            seen.add(os.path.realpath(source))
            if name in loras:
                _warn_once("LoRA %s: %s is not used: %s has that name (rename one of them)", name, source, loras[name])
                continue
            loras[name] = source
    folder_models = {name for name in models if name not in config.models or name in config.folder_models}
    folder_loras = {name for name in loras if name not in config.loras or name in config.folder_loras}
    changed = list(models.items()) != list(config.models.items()) or loras != config.loras
    config.models, config.loras, config.folder_models, config.folder_loras = models, loras, folder_models, folder_loras
    config.skipped_models = {name: why for name, why in skipped_models.items() if name not in models}
    config.skipped_loras = {name: why for name, why in skipped_loras.items() if name not in loras}
    return changed


def scan_lora_folder(folder: Path, skipped: dict[str, str] | None = None) -> dict[str, str]:
    """LoRAs in a folder such as A1111's ``models/Lora`` or ComfyUI's ``models/loras`` (subfolders and
    linked folders too): every ``.safetensors`` file holding a LoRA, named by its file name without the
    suffix (the first one in path order wins; the others are logged). Files that are no LoRA (an
    embedding, a checkpoint, a LoHa, a download cut short) are logged and left out, and their names
    go into ``skipped`` (name -> why) for the error a job naming one gets."""
    if not folder.is_dir():
        raise ConfigError(_not_a_folder("LoRA", folder))
    found: dict[str, str] = {}
    pickles = []
    for file in model_files.walk(folder):
        if file.suffix.lower() in (".pt", ".ckpt"):
            pickles.append(file.name)
        if file.suffix.lower() != ".safetensors":
            continue
        if file.stem in found:
            _warn_once("LoRA %s: %s has the same name as %s and is not used (rename one of them)", file.stem,
                        file, found[file.stem])
            continue
        problem = model_files.cached_problem(file, model_files.lora_problem)
        if problem:
            _warn_once("LoRA folder: %s %s; left out", file, problem)
            if skipped is not None:
                skipped.setdefault(file.stem, f"{file} {problem}")
            continue
        found[file.stem] = str(file)
    if pickles:  # A1111 reads these too; a pickle can run code when loaded
        _warn_once("LoRA folder %s: %d .pt / .ckpt file(s) left out (%s): LoRAs are read from .safetensors files "
                   "only; convert them", folder, len(pickles), ", ".join(pickles[:5]) + (" ..." if len(pickles) > 5
                                                                                        else ""))
    return found


QUANTIZE = ("int8",)  # backend/engine/flux.py: torchao's int8 weight-only through diffusers' TorchAoConfig


def check_origins(origins) -> None:
    """``allowed_origins``: a list of origins as a browser sends them (its page's ``location.origin``), compared
    as exact strings: one written otherwise (a trailing slash, a path, capitals, a default port) never matched,
    and a bare string was taken letter by letter, leaving every page refused without a word."""
    if not isinstance(origins, list) or not all(isinstance(origin, str) for origin in origins):
        raise ConfigError('allowed_origins must be a list of strings, e.g. ["http://localhost:5173"]')
    for origin in origins:
        scheme, _, rest = origin.partition("://")
        if scheme == "file":  # Chromium's location.origin reads "file://" there, but its pages send `null`
            raise ConfigError(f"allowed_origins: {origin!r}: a page opened from a file sends the origin null, "
                              "whatever its location.origin reads; serve the page over http://localhost (e.g. "
                              "`python3 -m http.server 5173`) and allow that origin, http://localhost:5173 (allowing "
                              "\"null\" would let every page opened from a file in)")
        if "*" in origin:  # "http://localhost:*" started a server that refused every page
            raise ConfigError(f"allowed_origins: {origin!r}: origins are compared exactly, without wildcards: list "
                              "each page's origin, as its location.origin says it (e.g. http://localhost:5173)")
        default_port = {"http": ":80", "https": ":443"}.get(scheme)
        if origin != "null" and (not scheme or not rest or any(c in rest for c in "/?#") or origin != origin.lower()
                                 or (default_port is not None and rest.endswith(default_port))):
            raise ConfigError(f"allowed_origins: {origin!r} is not an origin as a browser sends it: write the "
                              "page's location.origin, scheme://host[:port] in lower case, without a path or a "
                              "trailing slash, and without the scheme's default port (e.g. http://localhost:5173)")


def check_quantize(spec: ModelSpec) -> None:
    """``quantize``: one of QUANTIZE, on a flux model with a transformer it applies to (a ``.gguf`` file is
    quantised already; a single ``.safetensors`` file has a GGUF of its own to use instead)."""
    if spec.quantize is None:
        return
    if spec.quantize not in QUANTIZE:
        raise ConfigError(f"models.{spec.name}.quantize must be {' or '.join(map(repr, QUANTIZE))} (or left out); "
                          "for other quants use a .gguf transformer file")
    if spec.family not in ("flux", None):
        raise ConfigError(f"models.{spec.name}.quantize applies to flux models (their 12 B transformer)")
    sources = [s for s in (spec.source, spec.inpaint, spec.instruct) if s]
    if all(s.lower().endswith((".gguf", ".safetensors")) for s in sources):
        raise ConfigError(f"models.{spec.name}.quantize applies to transformers from a diffusers folder or hub id; "
                          "this model's are single files (a .gguf is quantised already; for a .safetensors "
                          "transformer use a GGUF of it)")


def check_family(spec: ModelSpec) -> None:
    """A configured ``family`` that the single file's own weights contradict: the model "loaded" as the
    other family and every job on it ended with an internal error."""
    if spec.family not in FAMILIES or not spec.source.lower().endswith(".safetensors"):
        return
    try:
        header, _ = model_files.read_header(spec.source)
    except (OSError, ValueError):
        return  # not there yet, or unreadable: its load says so
    problem = model_files.family_problem(header, spec.family)
    if problem:
        raise ConfigError(f"models.{spec.name}.family is {spec.family!r}, but {spec.source} {problem}: leave family "
                          "out (it is read from the file) or correct it")


def check_prompt_settings(spec: ModelSpec) -> None:
    """A model's clip skip, prediction type and guidance rescale, in range."""
    from shared.rules import MAX_CLIP_SKIP

    where = f"models.{spec.name}"
    if spec.clip_skip is not None and (not isinstance(spec.clip_skip, int) or not 1 <= spec.clip_skip <= MAX_CLIP_SKIP):
        raise ConfigError(f"{where}.clip_skip must be a whole number from 1 to {MAX_CLIP_SKIP}, got {spec.clip_skip!r}")
    if spec.prediction_type is not None and spec.prediction_type not in ("epsilon", "v_prediction"):
        raise ConfigError(f"{where}.prediction_type must be epsilon or v_prediction, got {spec.prediction_type!r}")
    if spec.zero_terminal_snr is not None and not isinstance(spec.zero_terminal_snr, bool):
        raise ConfigError(f"{where}.zero_terminal_snr must be true or false")
    if spec.guidance_rescale is not None and not (isinstance(spec.guidance_rescale, (int, float))
                                                  and 0 <= spec.guidance_rescale <= 1):
        raise ConfigError(f"{where}.guidance_rescale must be a number from 0 to 1, got {spec.guidance_rescale!r}")
    if spec.family == "flux":  # (they were taken and ignored, and `models` then claimed a v-prediction flux)
        for key in ("clip_skip", "prediction_type", "zero_terminal_snr", "guidance_rescale"):
            if getattr(spec, key) is not None:
                raise ConfigError(f"{where}.{key} is for sd15 and sdxl models: a flux model is flow matching, with its "
                                  "own scheduler, and reads the whole prompt (leave it out)")


UPSCALER_SUFFIXES = (".pth", ".safetensors")
"""Super-resolution weights: ``.pth`` files are read with spandrel's restricted unpickler (tensors only)."""


def scan_upscaler_folder(folder: Path) -> dict[str, str]:
    """Super-resolution models in a folder such as A1111's ``models/ESRGAN`` or ComfyUI's
    ``models/upscale_models``, named by file name without its suffix (``4x-UltraSharp``)."""
    if not folder.is_dir():
        raise ConfigError(_not_a_folder("upscaler", folder))
    return {file.stem: str(file) for file in model_files.walk(folder)
            if file.suffix.lower() in UPSCALER_SUFFIXES and file.is_file()  # not a broken link
            and not (file.parent / "config.json").exists()}  # not a diffusers model's weights


# File-name words that name a control type, most specific first (A1111 / lllyasviel naming).
_CONTROL_WORDS = (("lineart_anime", "lineart_anime"), ("lineart", "lineart"), ("softedge", "softedge"),
                  ("hed", "softedge"), ("pidi", "softedge"), ("depth", "depth"), ("normal", "normal"),
                  ("openpose", "pose"), ("pose", "pose"), ("scribble", "scribble"), ("seg", "segmentation"),
                  ("mlsd", "mlsd"), ("tile", "tile"), ("shuffle", "shuffle"), ("inpaint", "inpaint"),
                  ("canny", "canny"))


def scan_controlnet_folder(folder: Path) -> dict[tuple[str, str], str]:
    """ControlNet checkpoints in a folder such as A1111's ``models/ControlNet``, by (family, type),
    told from their file names (``control_v11p_sd15_canny.safetensors``, ``diffusers_xl_depth_full``)."""
    if not folder.is_dir():
        raise ConfigError(_not_a_folder("ControlNet", folder))
    found = {}
    for file in model_files.walk(folder):
        if file.suffix.lower() != ".safetensors" or not file.is_file():
            continue
        name = file.stem.lower()
        family = "sdxl" if "xl" in name else "sd15"
        kind = next((kind for word, kind in _CONTROL_WORDS if word in name), None)
        if kind is not None:
            found.setdefault((family, kind), str(file))
    return found


def scan_model_folder(folder: Path, allow_pickle: bool = False,
                      skipped: dict[str, str] | None = None) -> dict[str, ModelSpec]:
    """One model per checkpoint file or diffusers folder under ``folder`` (e.g. A1111's
    ``models/Stable-diffusion``; subfolders and linked folders too), named after its path in the folder
    without the suffix. A ``.safetensors`` file that is no checkpoint (a VAE, LoRA, ControlNet or
    embedding dropped in, a download cut short) is logged and left out; its name goes into ``skipped``
    (name -> why) for the error a job naming it gets."""
    if not folder.is_dir():
        raise ConfigError(_not_a_folder("model", folder))
    suffixes = (".safetensors", ".ckpt") if allow_pickle else (".safetensors",)
    files = model_files.walk(folder)
    pipelines = sorted(p.parent for p in files if p.name == "model_index.json" and not _is_upscale_pipeline(p))

    def is_component(path: Path) -> bool:  # weights of a diffusers pipeline or model, or an IP-Adapter's
        if "embeddings" in path.relative_to(folder).parts[:-1]:  # textual inversions (A1111's embeddings/)
            return True
        return (path.parent / "image_encoder").is_dir() or any(
            (parent / "config.json").is_file() or parent in pipelines
            for parent in path.parents if parent != folder and folder in parent.parents)

    pickles = 0
    models: dict[str, ModelSpec] = {}

    def add(name: str, source: Path) -> None:
        # model.ckpt beside model.safetensors (the same weights, converted), or a diffusers folder of that
        # name: one name, served by the folder, else the .safetensors file (capitals sorted a .ckpt last)
        rank = (source.is_dir(), source.suffix.lower() == ".safetensors")
        if name in models:
            kept = Path(models[name].source)
            if (kept.is_dir(), kept.suffix.lower() == ".safetensors") >= rank:
                _warn_once("model %s: %s is served, %s (the same name) is not", name, kept, source)
                return
            _warn_once("model %s: %s is served, %s (the same name) is not", name, source, kept)
        models[name] = ModelSpec(name=name, source=str(source))

    for source in files:
        suffix = source.suffix.lower()
        if suffix not in (".safetensors", ".ckpt") or is_component(source):
            continue
        name = source.relative_to(folder).with_suffix("").as_posix()
        if not source.exists():
            _warn_once("model folder: %s is a link to %s, which does not exist; left out", source,
                        os.readlink(source))
            continue
        if suffix not in suffixes:
            pickles += 1
            continue
        problem = model_files.cached_problem(source, model_files.checkpoint_problem) if suffix == ".safetensors" \
            else None
        if problem:
            _warn_once("model folder: %s %s; left out", source, problem)
            if skipped is not None:
                skipped.setdefault(name, f"{source} {problem}")
            continue
        add(name, source)
    for source in pipelines:
        add(source.relative_to(folder).as_posix(), source)
    if pickles:
        _warn_once("model folder %s: %d .ckpt checkpoint(s) left out: pickle files can run code when loaded "
                    "(convert them to .safetensors, or set allow_pickle = true under [server])", folder, pickles)
    return models


def _is_upscale_pipeline(index: Path) -> bool:
    """A diffusers folder of the x4 upscaler: an upscaler (``[upscalers]``), not a model to paint with."""
    try:
        return "Upscale" in json.loads(index.read_text()).get("_class_name", "")
    except (OSError, ValueError):
        return False


def _local_or_hub(value: str, base: Path) -> str:
    """A file or folder next to the config as an absolute path; ``owner/repo/path`` on the hub as is."""
    local = (base / Path(value).expanduser()).resolve()
    if local.exists() or value.startswith((".", "/", "~")) or value.count("/") < 2:
        return str(local)
    return value


def _local_path_or_hub(value: str, base: Path) -> str:
    """A model's weights: an absolute path as written (``~`` expanded), a relative one against the config
    file's folder, and a hub id (``owner/repo``) as it is unless such a folder is there."""
    expanded = Path(value).expanduser()
    if expanded.is_absolute():
        return str(expanded)
    local = base / expanded
    if looks_like_path(value) or local.exists():
        return str(local.resolve())
    return value


def looks_like_path(value: str) -> bool:
    return value.startswith((".", "/", "~")) or value.endswith((".safetensors", ".ckpt", ".pt", ".bin"))
