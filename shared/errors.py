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
    "unknown_control_model": "No ControlNet is configured for this control type and the job's model family.",
    "unknown_preprocessor": "The named preprocessor does not exist, or no preprocessor fits the control type.",
    "missing_annotator": "The preprocessor's annotator weights are not in the configured annotators source.",
    "unknown_adapter": "No IP-Adapter is configured for the job's model family.",
    "unknown_upscaler": "`upscaler` names no configured super-resolution model.",
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
