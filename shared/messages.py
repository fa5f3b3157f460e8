"""Protocol messages: their fields, validation of what a peer sends, and the JSON Schema.

Each message type is a table of ``Field``s. The same tables validate incoming messages (filling
defaults) and generate ``docs/protocol.schema.json``, so the documented schema and the checks
the server runs cannot drift apart.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any

PROTOCOL_VERSION = 1
DEFAULT_PORT = 8760
DEFAULT_URL = f"ws://127.0.0.1:{DEFAULT_PORT}/"

MODES = ("generate", "img2img", "inpaint")
FAMILIES = ("sd15", "sdxl")
SAMPLERS = ("dpmpp_2m", "dpmpp_2m_karras", "euler", "euler_a", "ddim", "unipc")
IMAGE_FORMATS = ("png", "webp", "rgba8", "l8")
RESULT_FORMATS = ("png", "webp", "rgba8")
FRAME_ROLES = ("image", "mask", "control", "reference", "result", "preview")
CONTROL_TYPES = ("canny", "lineart", "lineart_anime", "softedge", "depth", "normal", "pose", "scribble",
                 "segmentation", "mlsd", "tile", "shuffle", "inpaint")
# The first three need no weights; the others need annotator checkpoints on the server.
PREPROCESSORS = ("canny", "lineart_standard", "shuffle", "softedge_hed", "softedge_pidinet", "scribble_hed",
                 "depth_midas", "normal_bae", "openpose", "lineart_realistic", "lineart_anime", "mlsd",
                 "segment_anything")
REFERENCE_MODES = ("reference", "style", "composition", "face")
JOB_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
IMAGE_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,80}$"  # server image ids are the job id plus a suffix
MAX_SEED = 2**32 - 1

ERROR_CODES = {
    "bad_json": "The text frame is not a JSON object.",
    "unknown_type": "The message's `type` is not one this server knows.",
    "invalid_field": "A field is missing, has the wrong type, or is out of its range.",
    "hello_required": "The first message on a connection must be `hello`.",
    "unauthorized": "The token is missing or wrong; the server closes the connection.",
    "unsupported_protocol": "The client speaks a protocol version this server does not.",
    "unknown_model": "`model` names no configured model.",
    "bad_image": "An image cannot be decoded, or its bytes do not match its declared size.",
    "unknown_image": "An image reference names no uploaded frame.",
    "size_mismatch": "The mask's size differs from the image's.",
    "empty_mask": "An inpaint mask has no pixel above zero.",
    "too_few_steps": "steps x strength leaves no denoising step.",
    "limit_exceeded": "Steps, batch, dimensions, pixels or upload space exceed the server's limits.",
    "frame_too_large": "A message is larger than the server accepts.",
    "duplicate_job": "A job with this id is still queued or running on this connection.",
    "unknown_job": "No queued or running job of this connection has this id.",
    "model_load_failed": "The model could not be loaded.",
    "unsupported_mode": "The model cannot run this mode (an inpaint-only checkpoint asked to generate).",
    "unknown_control_model": "No ControlNet is configured for this control type and the job's model family.",
    "unknown_preprocessor": "The named preprocessor does not exist, or no preprocessor fits the control type.",
    "missing_annotator": "The preprocessor's annotator weights are not in the configured annotators source.",
    "unknown_adapter": "No IP-Adapter is configured for the job's model family.",
    "internal": "The server failed unexpectedly on a job or a message; it keeps running.",
}


class ProtocolError(Exception):
    """A request the server refuses; becomes an ``error`` message."""

    def __init__(self, code: str, message: str, field: str | None = None, job: str | None = None):
        super().__init__(message)
        assert code in ERROR_CODES, code
        self.code, self.message, self.field, self.job = code, message, field, job

    def to_message(self) -> dict:
        return {"type": "error", "job": self.job, "code": self.code, "message": self.message, "field": self.field}


_JSON_TYPES = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "object": dict,
    "array": list,
}


@dataclass
class Field:
    """One field of a message: its JSON type, constraints, default, and a line of documentation."""

    type: str
    doc: str = ""
    required: bool = False
    default: Any = None
    nullable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple | None = None
    pattern: str | None = None
    max_length: int | None = None
    items: "Field | None" = None
    fields: "dict[str, Field] | None" = None
    min_items: int | None = None
    extra: bool = False  # for objects: allow unlisted keys

    def check(self, value: Any, name: str) -> Any:
        """Return ``value`` if it satisfies this field, else raise ProtocolError naming ``name``."""
        if value is None:
            if self.nullable:
                return None
            raise ProtocolError("invalid_field", f"`{name}` must not be null", name)
        expected = _JSON_TYPES[self.type]
        if isinstance(value, bool) and self.type in ("integer", "number"):
            raise ProtocolError("invalid_field", f"`{name}` must be a {self.type}, not a boolean", name)
        if self.type == "number" and isinstance(value, float) and value != value:
            raise ProtocolError("invalid_field", f"`{name}` must be a number, not NaN", name)
        if not isinstance(value, expected):
            raise ProtocolError("invalid_field", f"`{name}` must be a{'n' if self.type[0] in 'aeiou' else ''} "
                                f"{self.type}, got {type(value).__name__}", name)
        if self.minimum is not None and value < self.minimum:
            raise ProtocolError("invalid_field", f"`{name}` must be at least {self.minimum}, got {value}", name)
        if self.maximum is not None and value > self.maximum:
            raise ProtocolError("invalid_field", f"`{name}` must be at most {self.maximum}, got {value}", name)
        if self.choices is not None and value not in self.choices:
            raise ProtocolError("invalid_field", f"`{name}` must be one of {', '.join(map(str, self.choices))}; "
                                f"got {value!r}", name)
        if self.max_length is not None and len(value) > self.max_length:
            raise ProtocolError("invalid_field", f"`{name}` is longer than {self.max_length}", name)
        if self.pattern is not None and not re.match(self.pattern, value):
            raise ProtocolError("invalid_field", f"`{name}` must match {self.pattern}", name)
        if self.min_items is not None and len(value) < self.min_items:
            raise ProtocolError("invalid_field", f"`{name}` needs at least {self.min_items} item(s)", name)
        if self.items is not None:
            value = [self.items.check(item, f"{name}[{i}]") for i, item in enumerate(value)]
        if self.fields is not None:
            value = check_fields(value, self.fields, prefix=f"{name}.", extra=self.extra)
        return value

    def schema(self) -> dict:
        """This field as a JSON Schema fragment."""
        out: dict[str, Any] = {"type": [self.type, "null"] if self.nullable else self.type}
        if self.doc:
            out["description"] = self.doc
        for key, attr in (("minimum", self.minimum), ("maximum", self.maximum), ("pattern", self.pattern),
                          ("maxLength", self.max_length), ("minItems", self.min_items)):
            if attr is not None:
                out[key] = attr
        if self.choices is not None:
            out["enum"] = list(self.choices) + ([None] if self.nullable else [])
        if self.default is not None:
            out["default"] = self.default
        if self.items is not None:
            out["items"] = self.items.schema()
        if self.fields is not None:
            out.update(object_schema(self.fields, extra=self.extra))
        return out


def check_fields(message: dict, fields: dict[str, Field], *, prefix: str = "", extra: bool = False) -> dict:
    """Validate ``message`` against ``fields``; return a copy with defaults filled in."""
    out = {}
    for name, spec in fields.items():
        if name in message:
            out[name] = spec.check(message[name], prefix + name)
        elif spec.required:
            raise ProtocolError("invalid_field", f"`{prefix + name}` is required", prefix + name)
        elif spec.default is not None:
            out[name] = spec.default
    unknown = sorted(set(message) - set(fields))
    if unknown and not extra:
        raise ProtocolError("invalid_field", f"unknown field `{prefix + unknown[0]}`", prefix + unknown[0])
    for name in unknown:
        out[name] = message[name]
    return out


def object_schema(fields: dict[str, Field], *, extra: bool = False) -> dict:
    return {
        "type": "object",
        "properties": {name: spec.schema() for name, spec in fields.items()},
        "required": [name for name, spec in fields.items() if spec.required],
        "additionalProperties": extra,
    }


# --- shared pieces --------------------------------------------------------------------------

def _type(name: str) -> Field:
    return Field("string", required=True, choices=(name,))


JOB = Field("string", "Job id: chosen by the client in `submit`, or assigned by the server.", pattern=JOB_ID_PATTERN)
JOB_REQUIRED = Field("string", JOB.doc, required=True, pattern=JOB_ID_PATTERN)
JOB_OR_NULL = Field("string", "The job this message is about, or null.", required=True, nullable=True,
                    pattern=JOB_ID_PATTERN)

IMAGE_REF = Field("object", "An image: `{\"frame\": id}` names a binary frame sent earlier on this connection; "
                  "`{\"data\": base64, \"format\": \"png\"|\"webp\"}` carries it inline.", fields={
                      "frame": Field("string", "Id of an uploaded binary frame.", pattern=IMAGE_ID_PATTERN),
                      "data": Field("string", "Base64 of a PNG or WebP file."),
                      "format": Field("string", "Format of inline data.", default="png", choices=("png", "webp")),
                  })

CONTROL_UNIT = Field("object", "One ControlNet unit.", fields={
    "type": Field("string", "What the control image shows.", required=True, choices=CONTROL_TYPES),
    "image": Field("object", "The control image (a map, or a picture to preprocess); the job's `image` when "
                   "omitted. Resized to the picture's size, then cropped and resized exactly like it.",
                   fields=IMAGE_REF.fields),
    "preprocess": Field("string", "`off`: the image already is a control map; `on`: run the type's "
                        "preprocessor; or a preprocessor's name.", default="off",
                        choices=("off", "on") + PREPROCESSORS),
    "scale": Field("number", "Strength of the unit; 0 disables it.", default=1.0, minimum=0, maximum=2),
    "start": Field("number", "Fraction of the schedule where the unit starts.", default=0.0, minimum=0,
                   maximum=1),
    "end": Field("number", "Fraction of the schedule where the unit stops.", default=1.0, minimum=0, maximum=1),
    "resolution": Field("integer", "Preprocessor working resolution (shorter side); the diffusion size when "
                        "omitted.", minimum=64, maximum=4096),
})

REFERENCE = Field("object", "A reference picture for the IP-Adapter.", fields={
    "image": replace(IMAGE_REF, required=True),
    "weight": Field("number", "How much the reference steers; 0 switches it off.", default=1.0, minimum=0,
                    maximum=2),
    "mode": Field("string", "`reference`: everything; `style`: colours and brushwork (up blocks only); "
                  "`composition`: layout (down blocks only); `face`: the face adapter, where configured (a job's "
                  "references are either all `face` or none).", default="reference", choices=REFERENCE_MODES),
})

BOX = Field("array", "[x, y, width, height] in pixels of the submitted image.",
            items=Field("integer", minimum=0), min_items=4)

FRAME_HEADER_FIELDS = {
    "image": Field("string", "Image id, unique on this connection.", required=True, pattern=IMAGE_ID_PATTERN),
    "job": Field("string", "Job the image belongs to (server frames).", nullable=True, pattern=JOB_ID_PATTERN),
    "role": Field("string", "What the image is.", required=True, choices=FRAME_ROLES),
    "format": Field("string", "Encoding of the bytes that follow the header.", required=True,
                    choices=IMAGE_FORMATS),
    "width": Field("integer", "Pixels.", required=True, minimum=1),
    "height": Field("integer", "Pixels.", required=True, minimum=1),
    "index": Field("integer", "Result: position in the batch.", minimum=0),
    "step": Field("integer", "Preview: the denoising step it shows.", minimum=0),
}

# --- client -> server ------------------------------------------------------------------------

CLIENT_MESSAGES: dict[str, dict[str, Field]] = {
    "hello": {
        "type": _type("hello"),
        "protocol": Field("integer", "Protocol version the client speaks.", required=True, minimum=1),
        "client": Field("string", "Client name and version, for logs.", max_length=200, default=""),
        "token": Field("string", "Shared secret, required when the server was started with one.",
                       max_length=1000),
    },
    "submit": {
        "type": _type("submit"),
        "job": JOB,
        "mode": Field("string", "What to do.", required=True, choices=MODES),
        "model": Field("string", "Configured model name; the server's default when omitted.", max_length=200),
        "prompt": Field("string", "What to paint.", default="", max_length=10000),
        "negative_prompt": Field("string", "What to avoid.", default="", max_length=10000),
        "seed": Field("integer", "Seed of the first image; image i uses seed + i. Random when omitted or null.",
                      nullable=True, minimum=0, maximum=MAX_SEED),
        "steps": Field("integer", "Denoising steps at strength 1.", default=20, minimum=1),
        "guidance": Field("number", "Classifier-free guidance scale.", default=7.0, minimum=0, maximum=50),
        "strength": Field("number", "1 = paint from noise; below 1 start from the noised image.",
                          default=1.0, minimum=0, maximum=1),
        "batch": Field("integer", "Images to make, each with its own seed.", default=1, minimum=1),
        "width": Field("integer", "generate: picture width in pixels.", minimum=8),
        "height": Field("integer", "generate: picture height in pixels.", minimum=8),
        "image": IMAGE_REF,
        "mask": IMAGE_REF,
        "mask_grow": Field("integer", "inpaint: grow the mask by this many pixels.", default=8,
                           minimum=0, maximum=256),
        "mask_feather": Field("integer", "inpaint: soften the grown mask's edge over this many pixels.",
                              default=16, minimum=0, maximum=256),
        "sampler": Field("string", "Scheduler.", default="dpmpp_2m_karras", choices=SAMPLERS),
        "preview_every": Field("integer", "Send a preview every N steps; 0 = none.", default=0, minimum=0),
        "preview_size": Field("integer", "Longest side of previews.", default=256, minimum=16, maximum=1024),
        "output_format": Field("string", "Encoding of result images.", default="png", choices=RESULT_FORMATS),
        "inline": Field("boolean", "Put results in the `result` message as base64 PNG instead of binary frames.",
                        default=False),
        "control": Field("array", "ControlNet units, applied together.", items=CONTROL_UNIT),
        "references": Field("array", "IP-Adapter reference pictures, blended by weight.", items=REFERENCE),
    },
    "preprocess": {
        "type": _type("preprocess"),
        "job": JOB,
        "image": replace(IMAGE_REF, required=True),
        "preprocessor": Field("string", "A preprocessor, or a control type (meaning its default preprocessor).",
                              required=True, choices=PREPROCESSORS + tuple(t for t in CONTROL_TYPES
                                                                          if t not in PREPROCESSORS)),
        "resolution": Field("integer", "Working resolution (shorter side); the picture's own when omitted.",
                            minimum=64, maximum=4096),
        "output_format": Field("string", "Encoding of the map.", default="png", choices=RESULT_FORMATS),
        "inline": Field("boolean", "Put the map in the `result` message as base64 PNG.", default=False),
    },
    "cancel": {
        "type": _type("cancel"),
        "job": JOB_REQUIRED,
    },
    "status": {"type": _type("status")},
    "models": {"type": _type("models")},
}

# --- server -> client ------------------------------------------------------------------------

LIMITS = Field("object", "The server's limits.", required=True, fields={
    name: Field("integer", doc, required=True) for name, doc in (
        ("max_steps", "Most steps per job."),
        ("max_batch", "Most images per job."),
        ("max_side", "Longest side of a picture, pixels."),
        ("max_pixels", "Most pixels of a picture."),
        ("max_generate_side", "Longest side of a generated picture."),
        ("max_message_bytes", "Largest message accepted."),
    )})

RESULT_IMAGE = Field("object", fields={
    "image": Field("string", "Id of the binary result frame (absent when inline).", pattern=IMAGE_ID_PATTERN),
    "data": Field("string", "Base64 PNG (when the job asked for inline results)."),
    "index": Field("integer", "Position in the batch.", required=True, minimum=0),
    "seed": Field("integer", "Seed that made this image.", required=True, minimum=0),
    "width": Field("integer", required=True, minimum=1),
    "height": Field("integer", required=True, minimum=1),
    "offset": Field("array", "[x, y] where the image goes on the submitted picture.", required=True,
                    items=Field("integer", minimum=0), min_items=2),
    "format": Field("string", required=True, choices=RESULT_FORMATS),
})

SERVER_MESSAGES: dict[str, dict[str, Field]] = {
    "welcome": {
        "type": _type("welcome"),
        "server": Field("string", "Server name and version.", required=True),
        "protocol": Field("integer", "Protocol version.", required=True),
        "capabilities": Field("object", "What this server can do.", required=True, fields={
            "modes": Field("array", required=True, items=Field("string", choices=MODES)),
            "families": Field("array", required=True, items=Field("string", choices=FAMILIES)),
            "samplers": Field("array", required=True, items=Field("string", choices=SAMPLERS)),
            "image_formats": Field("array", required=True, items=Field("string", choices=IMAGE_FORMATS)),
            "control_types": Field("array", required=True, items=Field("string")),
            "preprocessors": Field("array", "Preprocessors this server can run now (weights present).",
                                   required=True, items=Field("string", choices=PREPROCESSORS)),
            "reference_families": Field("array", "Model families with an IP-Adapter for `references`.",
                                        required=True, items=Field("string", choices=FAMILIES)),
            "reference_modes": Field("array", required=True, items=Field("string", choices=REFERENCE_MODES)),
            "limits": LIMITS,
        }),
        "device": Field("string", "Where the model runs (cuda, mps, cpu).", required=True),
        "default_model": Field("string", "Model used when a submit names none.", required=True),
    },
    "accepted": {
        "type": _type("accepted"),
        "job": JOB_REQUIRED,
        "position": Field("integer", "Jobs ahead of this one in the queue (0 = next).", required=True, minimum=0),
    },
    "started": {
        "type": _type("started"),
        "job": JOB_REQUIRED,
        "model": Field("string", required=True),
        "steps": Field("integer", "Denoising steps that will actually run per image.", required=True, minimum=0),
        "diffusion_size": Field("array", "[width, height] the model works at.", required=True,
                                items=Field("integer", minimum=8), min_items=2),
        "box": BOX,
    },
    "progress": {
        "type": _type("progress"),
        "job": JOB_REQUIRED,
        "step": Field("integer", "Steps done, over the whole batch.", required=True, minimum=0),
        "total": Field("integer", "Steps in the whole batch.", required=True, minimum=1),
        "preview": Field("string", "Id of the preview frame sent just before, if any.", pattern=IMAGE_ID_PATTERN),
    },
    "result": {
        "type": _type("result"),
        "job": JOB_REQUIRED,
        "images": Field("array", required=True, items=RESULT_IMAGE),
        "parameters": Field("object", "The request as run: defaults filled, seeds resolved.", required=True,
                            extra=True, fields={}),
        "timings": Field("object", "Seconds spent.", required=True, fields={
            "queued": Field("number", required=True, minimum=0),
            "load": Field("number", "Loading models for this job.", required=True, minimum=0),
            "run": Field("number", "Diffusion, decode and composite.", required=True, minimum=0),
            "total": Field("number", required=True, minimum=0),
        }),
    },
    "error": {
        "type": _type("error"),
        "job": JOB_OR_NULL,
        "code": Field("string", required=True, choices=tuple(ERROR_CODES)),
        "message": Field("string", "A sentence for people.", required=True),
        "field": Field("string", "The offending field, if one.", required=True, nullable=True),
    },
    "cancelled": {
        "type": _type("cancelled"),
        "job": JOB_REQUIRED,
        "while": Field("string", "Where the job was when cancelled.", required=True, choices=("queued", "running")),
    },
    "status": {
        "type": _type("status"),
        "device": Field("string", required=True),
        "running": Field("string", "This connection's running job, if any.", required=True, nullable=True,
                         pattern=JOB_ID_PATTERN),
        "queued": Field("array", "This connection's queued jobs, in order.", required=True,
                        items=Field("string", pattern=JOB_ID_PATTERN)),
        "queue_length": Field("integer", "Jobs waiting (not counting the running one), all clients.", required=True, minimum=0),
        "clients": Field("integer", "Connected clients.", required=True, minimum=0),
        "loaded_models": Field("array", required=True, items=Field("string")),
    },
    "models": {
        "type": _type("models"),
        "default": Field("string", required=True),
        "models": Field("array", required=True, items=Field("object", fields={
            "name": Field("string", required=True),
            "family": Field("string", required=True, nullable=True, choices=FAMILIES),
            "native_size": Field("integer", "Side of the square the model was trained at.", required=True,
                                 nullable=True),
            "inpaint_model": Field("boolean", "Has a dedicated 9-channel inpaint UNet.", required=True),
            "loaded": Field("boolean", required=True),
        })),
    },
}


def decode_json(text: str | bytes) -> dict:
    """Parse a text frame into a JSON object, or raise ``bad_json``."""
    try:
        message = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("bad_json", f"message is not valid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("bad_json", "message must be a JSON object")
    return message


def validate(message: dict, tables: dict[str, dict[str, Field]]) -> dict:
    """Validate a decoded message against the table for its ``type``; return it with defaults."""
    kind = message.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("invalid_field", "`type` is required and must be a string", "type",
                            job=_job_of(message))
    if kind not in tables:
        raise ProtocolError("unknown_type", f"unknown message type {kind!r}; expected one of "
                            f"{', '.join(tables)}", "type", job=_job_of(message))
    try:
        return check_fields(message, tables[kind])
    except ProtocolError as exc:
        exc.job = _job_of(message)
        raise


def parse_client_message(text: str | bytes) -> dict:
    """Decode and validate one client text frame."""
    return validate(decode_json(text), CLIENT_MESSAGES)


def _job_of(message: dict) -> str | None:
    job = message.get("job")
    return job if isinstance(job, str) and re.match(JOB_ID_PATTERN, job) else None


def json_schema() -> dict:
    """The JSON Schema (draft 2020-12) of every message and of binary frame headers."""
    defs = {}
    for prefix, tables in (("client", CLIENT_MESSAGES), ("server", SERVER_MESSAGES)):
        for kind, fields in tables.items():
            defs[f"{prefix}.{kind}"] = object_schema(fields)
    defs["frame_header"] = object_schema(FRAME_HEADER_FIELDS)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"Easel protocol v{PROTOCOL_VERSION}",
        "$defs": {
            **defs,
            "client_message": {"oneOf": [{"$ref": f"#/$defs/client.{k}"} for k in CLIENT_MESSAGES]},
            "server_message": {"oneOf": [{"$ref": f"#/$defs/server.{k}"} for k in SERVER_MESSAGES]},
        },
    }
