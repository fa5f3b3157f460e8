"""Error codes and the exception that becomes an ``error`` message."""

from __future__ import annotations

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
    "unsupported": "The job asks its model for something that model cannot do (a control type, references, "
                   "a negative prompt ...); `models` lists what each model supports.",
    "unknown_control_model": "No ControlNet is configured for this control type and the job's model family.",
    "unknown_preprocessor": "The named preprocessor does not exist, or no preprocessor fits the control type.",
    "missing_annotator": "The preprocessor's annotator weights are not in the configured annotators source.",
    "unknown_adapter": "No IP-Adapter is configured for the job's model family.",
    "unknown_upscaler": "`upscaler` names no configured super-resolution model.",
    "unknown_lora": "A LoRA (in `loras` or a `<lora:name:weight>` tag of the prompt) names no configured LoRA.",
    "wrong_family": "A LoRA was made for another model family than the job's model.",
    "unknown_preset": "`preset` names no preset of this server.",
    "unknown_embedding": "A prompt names (as `embedding:name`) no textual-inversion embedding of the model's family.",
    "out_of_memory": "The device ran out of memory during the job; lower the size, batch, ControlNets or references.",
    "not_received": "A `hello.pending` job whose submit this session never received (lost with the connection): "
                    "send it again.",
    "unknown_session": "`hello.resume` names no session this server kept (closed by its client, expired, or "
                       "never one), or the one this connection already holds.",
    "shutting_down": "The server is stopping: it takes no new jobs.",
    "internal": "The server failed unexpectedly on a job or a message; it keeps running.",
}

CANCEL_REASONS = {"shutting_down": "the server is shutting down"}
"""A ``cancelled`` message's ``reason`` (present when the client did not ask for the cancel), in plain words."""


def cancel_reason(reason: str | None) -> str:
    """Why the server cancelled a job, in plain words for a status line; "" when the client asked for it.
    A reason from a newer server than this list is shown as it came."""
    if not reason:
        return ""
    return CANCEL_REASONS.get(reason, f"the server gave the reason {shown(reason)}")


MAX_ECHO = 80  # characters of a client's value repeated in an error message
MAX_MESSAGE = 1000  # characters of an error's `message`
MAX_FIELD = 120  # characters of an error's `field`


def shown(value: object, limit: int = MAX_ECHO) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters: errors never echo a large input."""
    text = repr(value)
    if len(text) <= limit:
        return text
    closing = text[-1] if text[-1] in "'\"" else ""  # a cut string still reads as one: 'abc…'
    return text[:limit - 1 - len(closing)] + "…" + closing


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, and made valid Unicode (a lone surrogate becomes U+FFFD)."""
    text = text if len(text) <= limit else text[:limit - 1] + "…"
    return text.encode("utf-8", "replace").decode("utf-8") if not text.isascii() else text


class ProtocolError(Exception):
    """A request the server refuses; becomes an ``error`` message."""

    def __init__(self, code: str, message: str, field: str | None = None, job: str | None = None, *,
                 ends_job: bool = True):
        super().__init__(message)
        assert code in ERROR_CODES, code
        self.code, self.message, self.field, self.job = code, message, field, job
        # False when `job` names a job this error does not end: a cancel of it, or a submit that reused
        # the id of a job still queued or running (that job goes on).
        self.ends_job = ends_job

    def sentence(self) -> str:
        """The message as a sentence to show a person: capitalised, ending with a full stop."""
        message = self.message[:1].upper() + self.message[1:]
        return message if message.endswith(".") else message + "."

    def to_message(self) -> dict:
        field = None if self.field is None else clip(self.field, MAX_FIELD)
        return {"type": "error", "job": self.job, "code": self.code, "message": clip(self.message, MAX_MESSAGE),
                "field": field, "ends_job": self.job is not None and self.ends_job}
