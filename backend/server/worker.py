"""The GPU worker: runs queued jobs one at a time and reports them to their clients.

Three threads take part, so that the GPU never waits for a PNG encoder and the event loop never
waits for either:

- the event loop takes the next job from the queue and sends the messages;
- the GPU thread (``easel-gpu``, one, because the engine runs one job at a time) runs ``Engine.run``;
  its ``Reporter`` calls only hand work to the encoder thread and return;
- the encoder thread (``easel-encode``, one) encodes previews and results and builds every message of
  a running job. Being a single FIFO thread is what keeps a job's messages in order: ``started``,
  then each preview frame just before its ``progress``, then the result frames and ``result`` (or
  ``cancelled`` / ``error``, which wait for the job's earlier messages to be out).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch
from PIL import Image

from backend import memory
from backend.engine.engine import Engine, EngineResult, JobCancelled
from backend.engine.models import ModelError
from backend.engine.passes import Pass
from backend.imaging import encode
from backend.jobs import Job, JobQueue
from backend.server import messages

log = logging.getLogger(__name__)

Deliver = Callable[[Job, list], None]  # sends messages (dicts, frames) to a job's client; on the event loop


class Worker:
    """Takes jobs from the queue, one at a time, and runs them on the GPU thread."""

    def __init__(self, engine: Engine, queue: JobQueue, deliver: Deliver):
        self.engine, self.queue, self.deliver = engine, queue, deliver
        self._gpu = ThreadPoolExecutor(1, thread_name_prefix="easel-gpu")
        self._encoder = ThreadPoolExecutor(1, thread_name_prefix="easel-encode")

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await self.queue.next()
            try:
                await self._run(loop, job)
            finally:
                self.queue.done(job)  # before the trim below: a status asked after the result says it is done
            # The job's buffers are free now: hand their pages back, so that the next job does not grow the
            # arena around them (backend/memory.py; trimming only once the queue ran empty left the peak higher).
            await loop.run_in_executor(self._gpu, memory.release)

    def stop(self) -> None:
        """Stop the running job at its next step and let the threads go (the server is stopping)."""
        if self.queue.running:
            self.queue.running.cancel_event.set()
        self._gpu.shutdown(wait=False, cancel_futures=True)
        self._encoder.shutdown(wait=False, cancel_futures=True)

    async def _run(self, loop: asyncio.AbstractEventLoop, job: Job) -> None:
        started = time.perf_counter()
        reporter = _Reporter(loop, job, self._encoder, self.deliver)
        try:
            result = await loop.run_in_executor(self._gpu, self.engine.run, job.work, reporter)
            ending = await loop.run_in_executor(self._encoder, encode_result, job, result, started)
        except Exception as exc:
            ending = [_failure(job, exc)]
            if is_out_of_memory(exc):
                del exc  # its traceback holds the job's tensors
                await loop.run_in_executor(self._gpu, free_memory)
            # the job's progress still being encoded goes out before the message that ends it
            await loop.run_in_executor(self._encoder, _nothing)
        if job.end():  # a job cancelled while it finished already got its one ending
            self.deliver(job, ending)
            log.info("job %s (%s) %s in %.1fs", job.id, _what(job), _outcome(ending[-1]), time.perf_counter() - started)


class _Reporter:
    """The engine's ``Reporter`` for one job. Called on the GPU thread; builds nothing there."""

    def __init__(self, loop: asyncio.AbstractEventLoop, job: Job, encoder: ThreadPoolExecutor, deliver: Deliver):
        self.loop, self.job, self.encoder, self.deliver = loop, job, encoder, deliver

    def started(self, steps: int, passes: list[Pass]) -> None:
        self._later(lambda: [messages.started(self.job, steps, passes)])

    def progress(self, step: int, total: int, preview: Image.Image | None) -> None:
        self._later(functools.partial(encode_progress, self.job, step, total, preview))

    def is_cancelled(self) -> bool:
        return self.job.cancel_event.is_set()

    def _later(self, build: Callable[[], list]) -> None:
        """Build messages on the encoder thread, in the order asked, then send them from the event loop."""
        self.encoder.submit(self._build_and_deliver, build)

    def _build_and_deliver(self, build: Callable[[], list]) -> None:
        try:
            out = build()
        except Exception:  # the encoder thread has no caller to raise to
            log.exception("could not build a message of job %s", self.job.id)
            return
        try:
            self.loop.call_soon_threadsafe(self.deliver, self.job, out)
        except RuntimeError:  # the event loop is closed: the server stopped, nobody is listening
            pass


def encode_progress(job: Job, step: int, total: int, preview: Image.Image | None) -> list:
    """``progress``, after its preview frame when there is a preview (encoder thread)."""
    if preview is None:
        return [messages.progress(job.id, step, total)]
    try:
        image = encode(np.asarray(preview.convert("RGBA")), job.request.output_format)
    except Exception:  # a preview is a nicety: the step still counts
        log.exception("could not encode a preview of job %s", job.id)
        return [messages.progress(job.id, step, total)]
    image_id, frame = messages.preview_frame(job.id, step, image)
    return [frame, messages.progress(job.id, step, total, image_id)]


def encode_result(job: Job, result: EngineResult, started: float) -> list:
    """Result frames (or inline data) followed by the ``result`` message (encoder thread)."""
    request, out, images = job.request, [], []
    fmt = "png" if request.inline else request.output_format
    for layer in result.layers:
        image = encode(layer.pixels, fmt)
        if request.inline:
            images.append(messages.result_image(layer, image))
        else:
            image_id, frame = messages.result_frame(job.id, layer.index, image)
            out.append(frame)
            images.append(messages.result_image(layer, image, frame=image_id))
    out.append(messages.result(job, result, images, started, time.perf_counter()))
    return out


def _what(job: Job) -> str:
    """A job as the log names it: mode and model, never the prompt (a painter's words stay out of the log)."""
    work = job.work
    if getattr(work, "mode", None):
        return f"{work.mode} on {work.model}"
    return f"preprocess {getattr(job.request, 'preprocessor', '')}".strip()


def _outcome(ending: dict) -> str:
    kind = ending.get("type")
    if kind == "error":
        return f"failed ({ending.get('code')})"
    return {"result": "done", "cancelled": "cancelled"}.get(kind, str(kind))


def _failure(job: Job, exc: Exception) -> dict:
    """The message that ends a job the engine did not finish."""
    if isinstance(exc, JobCancelled):
        return messages.cancelled(job.id, "running", job.cancel_reason)
    if isinstance(exc, ModelError):
        return messages.model_error(job.id, exc)
    if is_out_of_memory(exc):
        log.warning("job %s ran out of device memory: %s", job.id, str(exc).splitlines()[0] if str(exc) else "")
        return messages.out_of_memory(job)
    log.error("job %s failed", job.id, exc_info=exc)  # the engine failed: tell the client, keep serving
    return messages.internal_error(job.id, exc)


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the RuntimeError other devices (MPS, CPU allocators) raise for it."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def free_memory() -> None:
    """Give back what a failed job held: its tensors are garbage now, the allocator's cache goes too."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _nothing() -> None:
    """A no-op: run on the encoder thread, it waits for what was queued there before it."""
