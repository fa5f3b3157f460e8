"""Protocol messages: their fields, validation of what a peer sends, and the JSON Schema.

Each message type is a table of ``Field``s. The same tables validate incoming messages (filling
defaults) and generate ``docs/protocol.schema.json``, so the documented schema and the checks
the server runs cannot drift apart. The ``submit`` and ``preprocess`` tables are derived from the
job model (``shared.job``), the one definition of a job.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace

from .errors import CANCEL_REASONS, ERROR_CODES, ProtocolError, shown
from .fields import Field, check_fields, object_schema
from .job import PREPROCESS_FIELDS, SUBMIT_FIELDS
from .vocabulary import (
    CONTROL_TYPES,
    DEFAULT_PORT,
    DEFAULT_PREPROCESSOR,
    DEFAULT_URL,
    FAMILIES,
    FRAME_ROLES,
    IMAGE_FORMATS,
    IMAGE_ID_PATTERN,
    JOB_ID_PATTERN,
    MAX_SEED,
    MODES,
    PREPROCESSORS,
    PROTOCOL_VERSION,
    REFERENCE_MODES,
    RESULT_FORMATS,
    SAMPLERS,
    TIMESTEP_SPACINGS,
)

__all__ = [  # the vocabulary and checks are re-exported: hosts and tests read them from here
    "CLIENT_MESSAGES", "CONTROL_TYPES", "DEFAULT_PORT", "DEFAULT_PREPROCESSOR", "DEFAULT_URL", "ERROR_CODES",
    "FAMILIES", "FRAME_HEADER_FIELDS", "FRAME_ROLES", "Field", "IMAGE_FORMATS", "IMAGE_ID_PATTERN",
    "JOB_ID_PATTERN", "MAX_SEED", "MODES", "PREPROCESSORS", "PROTOCOL_VERSION", "ProtocolError", "REFERENCE_MODES",
    "RESULT_FORMATS", "SAMPLERS", "SERVER_MESSAGES", "check_fields", "decode_json", "json_schema", "object_schema",
    "parse_client_message", "validate",
]


# --- shared pieces --------------------------------------------------------------------------

def _type(name: str) -> Field:
    return Field("string", required=True, choices=(name,))


JOB = Field("string", "Job id: chosen by the client in `submit`, or assigned by the server.", pattern=JOB_ID_PATTERN)
JOB_REQUIRED = Field("string", JOB.doc, required=True, pattern=JOB_ID_PATTERN)
JOB_OR_NULL = Field("string", "The job this message is about, or null.", required=True, nullable=True,
                    pattern=JOB_ID_PATTERN)

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
        "resume": Field("string", "`welcome.session` of a connection that dropped: take its jobs over.",
                        pattern=r"^[0-9a-f]{32}$"),
        "pending": Field("array", "With `resume`: the jobs whose ending this client has not received; the "
                         "server sends the endings it kept for them.", items=Field("string", pattern=JOB_ID_PATTERN),
                         max_length=1024),
    },
    "submit": SUBMIT_FIELDS,
    "preprocess": PREPROCESS_FIELDS,
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

LORA_ITEM = Field("object", "A LoRA a job may name in `loras` (or a `<lora:name:weight>` prompt tag).", fields={
    "name": Field("string", required=True),
    "family": Field("string", "The model family it was made for (`sd15`, `sdxl`, or another family's name); null "
                    "when its file does not tell.", required=True, nullable=True),
})
PRESET_ITEM = Field("object", "A preset a job may name in `preset`: the settings it gives where a submit leaves the "
                    "field out.", fields={
    "name": Field("string", required=True),
    "few_step": Field("boolean", "For few-step models (LCM, TCD, Lightning ...): steps x strength may go down to "
                      "1 step.", required=True),
    "model": Field("string"),
    "sampler": Field("string", choices=SAMPLERS),
    "steps": Field("integer", minimum=1),
    "guidance": Field("number", minimum=0),
    "negative_prompt": Field("string"),
    "timestep_spacing": Field("string", "The scheduler's timestep spacing.", choices=TIMESTEP_SPACINGS),
    "prompt": Field("string", "Template of the prompt: `{prompt}` is the job's."),
    "loras": Field("array", "LoRAs it applies (a job's own `loras` win on a name given both ways).",
                   items=Field("object", fields={"name": Field("string", required=True),
                                                 "weight": Field("number", required=True)})),
    "description": Field("string"),
})
EMBEDDINGS = Field("array", "Textual-inversion embeddings, used by name in prompts (or as `embedding:name`), each "
                   "with the models of its family.", items=Field("object", fields={
                       "name": Field("string", required=True),
                       "family": Field("string", required=True, choices=FAMILIES),
                       "vectors": Field("integer", "Tokens it takes in a prompt.", required=True),
                   }))

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
            "upscalers": Field("array", "Names for an upscale's `upscaler` (`lanczos`: plain resampling).",
                               items=Field("string")),
            "loras": Field("array", "LoRAs for a job's `loras`.", items=LORA_ITEM),
            "presets": Field("array", "Presets for a job's `preset`.", items=PRESET_ITEM),
            "embeddings": EMBEDDINGS,
        }),
        "device": Field("string", "Where the model runs (cuda, mps, cpu).", required=True),
        "default_model": Field("string", "Model used when a submit names none.", required=True),
        "session": Field("string", "This connection's session: send it as `hello.resume` after a dropped "
                         "connection to get the jobs' endings you missed.", pattern=r"^[0-9a-f]{32}$"),
        "resumed": Field("boolean", "True when this `welcome` answers a `hello.resume`."),
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
        "steps": Field("integer", "Denoising steps that will actually run per image and pass.", required=True,
                       minimum=0),
        # At least 8 where a model runs; an upscale without refine runs none, and names its target (a 3 x 2
        # picture's: 6 x 4), as does a preprocess its picture.
        "diffusion_size": Field("array", "[width, height] the model works at (an upscale without refine: its "
                                "target size).", required=True, items=Field("integer", minimum=1), min_items=2),
        "box": BOX,
        "passes": Field("array", "The diffusion passes, in the order they run (an inpaint diffuses far-apart "
                        "mask islands in passes of their own; progress counts steps over all of them). Each "
                        "pass's box lies inside `box`.", items=Field("object", fields={
                            "box": replace(BOX, required=True),
                            "diffusion_size": Field("array", "[width, height] the pass is diffused at.",
                                                    required=True, items=Field("integer", minimum=1), min_items=2),
                        })),
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
        "ends_job": Field("boolean", "True when this error is the end of job `job` (a refused or failed job); "
                          "false when `job` is null or names a job this error does not end (an unknown or "
                          "refused `cancel`, a `duplicate_job` whose job goes on).", required=True),
    },
    "cancelled": {
        "type": _type("cancelled"),
        "job": JOB_REQUIRED,
        "while": Field("string", "Where the job was when cancelled.", required=True, choices=("queued", "running")),
        "reason": Field("string", "Present when the client did not ask for it: `shutting_down`, the server is stopping "
                        "(SIGTERM / SIGINT).", choices=tuple(CANCEL_REASONS)),
    },
    "status": {
        "type": _type("status"),
        "device": Field("string", required=True),
        "running": Field("string", "This connection's running job, if any.", required=True, nullable=True,
                         pattern=JOB_ID_PATTERN),
        "queued": Field("array", "This connection's queued jobs, in order.", required=True,
                        items=Field("string", pattern=JOB_ID_PATTERN)),
        "ahead": Field("array", "For each job of `queued`, the jobs ahead of it now, counting the running job.",
                       items=Field("integer", minimum=0)),
        "queue_length": Field("integer", "Jobs waiting (not counting the running one), all clients.", required=True,
                              minimum=0),
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
            "capabilities": Field("object", "What the model serves on this server; a job asking it for more is "
                                  "refused before `accepted` (`unsupported_mode`, `unsupported`, "
                                  "`unknown_control_model`, `unknown_adapter`).", fields={
                "modes": Field("array", "Modes it runs.", required=True, items=Field("string", choices=MODES)),
                "control_types": Field("array", "Control types with a ControlNet for it.", required=True,
                                       items=Field("string")),
                "reference_modes": Field("array", "Reference (IP-Adapter) modes it takes; empty: none.",
                                         required=True, items=Field("string", choices=REFERENCE_MODES)),
                "negative_prompt": Field("boolean", "Takes a negative prompt (Flux: only with true CFG).",
                                         required=True),
                "image_guidance": Field("boolean", "Its instruct takes `image_guidance` (InstructPix2Pix; not Flux "
                                        "Kontext); false on a model without instruct.", required=True),
                "loras": Field("boolean", "Applies LoRAs (`loras`, `<lora:>` tags); false on flux, which takes "
                               "none yet.", required=True),
                "clip_skip": Field("boolean", "Takes `clip_skip` (false on flux: its prompt is read whole).",
                                   required=True),
            }),
            "prediction_type": Field("string", "What the UNet predicts: read from the checkpoint (a `v_pred` key, "
                                     "a scheduler config) or set in the model's config.",
                                     choices=("epsilon", "v_prediction")),
            "zero_terminal_snr": Field("boolean", "Trained to zero terminal SNR: sampled with rescaled betas, "
                                       "trailing timesteps and rescaled guidance."),
        })),
        "embeddings": EMBEDDINGS,
        "upscalers": Field("array", "Super-resolution models for `upscale`.", items=Field("object", fields={
            "name": Field("string", required=True),
            "scale": Field("integer", "Factor of one application (from the file name until loaded).",
                           required=True, nullable=True),
            "architecture": Field("string", "Read from the weights once loaded.", required=True, nullable=True),
            "loaded": Field("boolean", required=True),
        })),
        "loras": Field("array", "LoRAs for a job's `loras`.", items=LORA_ITEM),
        "presets": Field("array", "Presets for a job's `preset`.", items=PRESET_ITEM),
    },
}


JOB_MESSAGES = ("submit", "preprocess", "cancel")  # the client messages that name a job
MAX_DEPTH = 32  # nesting of objects and arrays in one message; the deepest valid message needs 5


# What `WebSocket.send` makes of a JavaScript value that is neither a string nor bytes: `String(value)`.
JS_STRINGIFIED = re.compile(r"\[object [A-Za-z0-9]{1,40}\]|undefined")
PICTURE_TEXT = ("data:", "iVBORw0KGgo", "UklGR")  # a data: URL, the base64 of a PNG, of a WebP (RIFF)


def not_json_reason(text: str | bytes, exc: Exception) -> str:
    """Why a text frame is not JSON, naming the mistakes a tool makes, which the parser's own words do not tell."""
    if isinstance(text, str) and JS_STRINGIFIED.fullmatch(text.strip()):
        return (f"it reads `{text.strip()}`, a JavaScript value that `WebSocket.send` turned into a string: send a "
                "message as `JSON.stringify(message)`, and a picture's bytes (an ArrayBuffer or a typed array such as "
                "`imageData.data`) in a binary frame")
    if isinstance(text, str) and text.lstrip().startswith(PICTURE_TEXT):
        return ("it is a picture sent as a text frame: upload a picture as a binary frame (a length-prefixed header "
                "and the file's bytes), or put its base64 in a submit's `image.data`")
    return str(exc)


def decode_json(text: str | bytes) -> dict:
    """Parse a text frame into a JSON object, or raise ``bad_json``."""
    try:
        message = json.loads(text)
    except RecursionError:  # deeper than the parser's stack allows
        raise ProtocolError("bad_json", f"message is nested more than {MAX_DEPTH} levels deep") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("bad_json", f"message is not valid JSON: {not_json_reason(text, exc)}") from None
    if not isinstance(message, dict):
        raise ProtocolError("bad_json", "message must be a JSON object")
    if _depth_over(message, MAX_DEPTH):
        raise ProtocolError("bad_json", f"message is nested more than {MAX_DEPTH} levels deep")
    return message


def _depth_over(value: object, limit: int) -> bool:
    """True when ``value`` nests objects / arrays more than ``limit`` deep (iterative: no recursion)."""
    level = [value]
    for _ in range(limit):
        level = [child for item in level if isinstance(item, (dict, list))
                 for child in (item.values() if isinstance(item, dict) else item) if isinstance(child, (dict, list))]
        if not level:
            return False
    return True


def validate(message: dict, tables: dict[str, dict[str, Field]]) -> dict:
    """Validate a decoded message against the table for its ``type``; return it with defaults."""
    kind = message.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("invalid_field", "`type` is required and must be a string", "type",
                            job=_job_of(message))
    if kind not in tables:
        raise ProtocolError("unknown_type", f"unknown message type {shown(kind)}; expected one of "
                            f"{', '.join(tables)}", "type", job=_job_of(message))
    try:
        return check_fields(message, tables[kind])
    except ProtocolError as exc:
        # Only a submit, a preprocess or a cancel is about a job; a `job` key on any other message is just
        # an unknown field, and naming that job would make a client end a job the error did not end.
        if kind in JOB_MESSAGES:
            exc.job = _job_of(message)
            exc.ends_job = kind != "cancel"  # a refused cancel leaves its job as it was
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
