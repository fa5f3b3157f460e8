"""The websocket server: sessions, validation, the job queue and the GPU worker.

Flow of a job: text/binary frame -> ``parse_client_message`` / ``decode_frame`` -> ``Job.from_message``
-> ``intake`` (rules, uploads, images decoded off the event loop) -> ``JobQueue`` -> the worker runs ``Engine.run`` on its own
thread -> results are encoded off the loop and sent to the job's session as frames + ``result``.
"""

from __future__ import annotations

import asyncio
import hmac
import http
import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

import shared
from backend.config import Config
from backend.engine.engine import Engine, EngineResult, JobCancelled
from backend.engine.job import EditJob
from backend.engine.models import ModelError
from backend.engine.passes import Pass, layer_box
from backend.imaging import encode
from backend.intake import build_edit_job, build_preprocess_job
from backend.jobs import Job, JobQueue
from shared import job as protocol
from shared.images import ImageData, decode_frame, encode_frame
from shared.rules import seed_range
from shared.messages import (FAMILIES, IMAGE_FORMATS, MODES, PROTOCOL_VERSION, REFERENCE_MODES, SAMPLERS,
                             ProtocolError, parse_client_message)

log = logging.getLogger(__name__)
SERVER_NAME = f"easel/{shared.__version__}"
CLIENT_ROLES = ("image", "mask", "control", "reference")


class Session:
    """One client connection: its uploads and an ordered outbox drained by a single writer."""

    def __init__(self, ws: ServerConnection):
        self.ws = ws
        self.greeted = False
        self.closed = False
        self.uploads: dict[str, ImageData] = {}
        self._outbox: asyncio.Queue = asyncio.Queue()

    def send(self, message: dict | bytes) -> None:
        """Queue a message (a dict becomes JSON); a no-op once the session closed."""
        if not self.closed:
            self._outbox.put_nowait(message if isinstance(message, bytes) else json.dumps(message))

    async def write(self) -> None:
        """Send queued messages in order until the session closes."""
        while True:
            message = await self._outbox.get()
            if message is None:
                return
            try:
                await self.ws.send(message)
            except ConnectionClosed:
                return

    def upload_bytes(self) -> int:
        return sum(len(image.data) for image in self.uploads.values())

    def stop_writer(self) -> None:
        self.closed = True
        self._outbox.put_nowait(None)


class _Reporter:
    """Bridges the engine (worker thread) to a session (event loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, job: Job):
        self.loop, self.job = loop, job

    def _send(self, message: dict | bytes) -> None:
        self.loop.call_soon_threadsafe(self.job.owner.send, message)

    def started(self, steps: int, passes: list[Pass]) -> None:
        work = self.job.work
        edit = isinstance(work, EditJob)
        message = {"type": "started", "job": self.job.id, "model": work.model if edit else work.preprocessor,
                   "steps": steps, "diffusion_size": list(passes[0].size)}
        if edit and work.mode != "generate":
            message["box"] = layer_box(passes).as_list()
            message["passes"] = [{"box": p.box.as_list(), "diffusion_size": list(p.size)} for p in passes]
        self._send(message)

    def progress(self, step, total, preview) -> None:
        message = {"type": "progress", "job": self.job.id, "step": step, "total": total}
        if preview is not None:
            image_id = f"{self.job.id}.p{step}"
            fmt = self.job.request.output_format
            image = encode(np.asarray(preview.convert("RGBA")), fmt)
            self._send(encode_frame({"image": image_id, "job": self.job.id, "role": "preview", "format": fmt,
                                     "width": image.width, "height": image.height, "step": step}, image.data))
            message["preview"] = image_id
        self._send(message)

    def is_cancelled(self) -> bool:
        return self.job.cancel_event.is_set()


class EaselServer:
    """Serves the Easel protocol on one host/port with one GPU worker."""

    def __init__(self, config: Config, engine: Engine):
        self.config, self.engine = config, engine
        self.queue = JobQueue()
        self.sessions: set[Session] = set()
        self.port = config.port
        self._gpu = ThreadPoolExecutor(1, thread_name_prefix="easel-gpu")

    # -- lifecycle ----------------------------------------------------------------------------

    async def serve_forever(self, ready: threading.Event | None = None,
                            stop: asyncio.Future | None = None) -> None:
        limits = self.config.limits
        async with serve(self._handle, self.config.host, self.config.port, process_request=self._check_origin,
                         max_size=2 * limits.max_message_bytes, max_queue=64,
                         compression=None) as server:  # images are compressed already: deflate only costs time
            self.port = next(iter(server.sockets)).getsockname()[1]
            worker = asyncio.create_task(self._worker())
            log.info("Easel listening on ws://%s:%d/", self.config.host, self.port)
            if ready is not None:
                ready.set()
            try:
                await (stop if stop is not None else asyncio.Future())
            finally:
                worker.cancel()
                if self.queue.running:
                    self.queue.running.cancel_event.set()
                self._gpu.shutdown(wait=False, cancel_futures=True)

    def allowed_origins(self) -> set[str]:
        """The server's own origins; any other browser page is refused."""
        hosts = {self.config.host, "127.0.0.1", "localhost"} if self.config.host in ("127.0.0.1", "localhost") \
            else {self.config.host}
        hosts = {f"[{host}]" if ":" in host else host for host in hosts}  # IPv6 literals are bracketed
        return {f"{scheme}://{host}:{self.port}" for host in hosts for scheme in ("http", "https")}

    def _check_origin(self, connection: ServerConnection, request):
        origin = request.headers.get("Origin")
        if origin is not None and origin not in self.allowed_origins() | set(self.config.allowed_origins):
            log.warning("refused a connection from origin %s", origin)
            return connection.respond(http.HTTPStatus.FORBIDDEN, f"origin {origin} is not allowed\n")
        return None

    # -- connections --------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        session = Session(ws)
        self.sessions.add(session)
        writer = asyncio.create_task(session.write())
        refused = False
        try:
            async for raw in ws:
                if not await self._on_message(session, raw):
                    refused = True
                    break
        except ConnectionClosed:
            pass
        finally:
            self.sessions.discard(session)
            self._drop(session)
            session.stop_writer()
            await writer  # flushes what was queued, such as the error that explains a refusal
        if refused:
            await ws.close(1008, "unauthorized")

    async def _on_message(self, session: Session, raw: str | bytes) -> bool:
        """Handle one frame; False when the connection must close."""
        try:
            size = len(raw) if isinstance(raw, bytes) else len(raw.encode())
            if size > self.config.limits.max_message_bytes:
                raise ProtocolError("frame_too_large", f"message of {size} bytes is over this server's limit "
                                    f"of {self.config.limits.max_message_bytes}")
            if isinstance(raw, bytes):
                if not session.greeted:
                    raise ProtocolError("hello_required", "send `hello` before anything else")
                self._on_upload(session, raw)
                return True
            message = parse_client_message(raw)
            if message["type"] != "hello" and not session.greeted:
                raise ProtocolError("hello_required", "send `hello` before anything else")
            await getattr(self, f"_on_{message['type']}")(session, message)
        except ProtocolError as exc:
            session.send(exc.to_message())
            return exc.code != "unauthorized"
        except Exception as exc:  # a bug must cost one answer, not the connection or the server
            log.exception("failed to handle a message")
            session.send(ProtocolError("internal", f"the server failed on this message: {exc}").to_message())
        return True

    async def _on_hello(self, session: Session, message: dict) -> None:
        if self.config.token and not hmac.compare_digest(message.get("token", "").encode(),
                                                         self.config.token.encode()):
            raise ProtocolError("unauthorized", "this server needs a token, and the one sent is missing or wrong",
                                "token")
        if message["protocol"] != PROTOCOL_VERSION:
            raise ProtocolError("unsupported_protocol", f"this server speaks protocol {PROTOCOL_VERSION}, "
                                f"the client {message['protocol']}", "protocol")
        session.greeted = True
        limits = self.config.limits
        session.send({
            "type": "welcome", "server": SERVER_NAME, "protocol": PROTOCOL_VERSION,
            "capabilities": {
                "modes": list(MODES), "families": list(FAMILIES), "samplers": list(SAMPLERS),
                "image_formats": list(IMAGE_FORMATS),
                "control_types": sorted({kind for types in self.config.controlnets.values() for kind in types}),
                "preprocessors": self.engine.preprocessors.available(),
                "reference_families": sorted(self.config.ip_adapters),
                "reference_modes": [mode for mode in REFERENCE_MODES if mode != "face" or any(
                    spec.face for spec in self.config.ip_adapters.values())],
                "limits": {"max_steps": limits.max_steps, "max_batch": limits.max_batch,
                           "max_side": limits.max_side, "max_pixels": limits.max_pixels,
                           "max_message_bytes": limits.max_message_bytes,
                           "max_generate_side": limits.max_generate_side},
            },
            "device": str(self.engine.device), "default_model": self.engine.registry.default,
        })

    def _on_upload(self, session: Session, raw: bytes) -> None:
        header, image = decode_frame(raw)
        if header["role"] not in CLIENT_ROLES:
            raise ProtocolError("invalid_field", f"clients upload roles {', '.join(CLIENT_ROLES)}, not "
                                f"{header['role']!r}", "role")
        session.uploads.pop(header["image"], None)  # the same id again replaces the earlier upload
        if session.upload_bytes() + len(image.data) > self.config.limits.max_upload_bytes:
            raise ProtocolError("limit_exceeded", "too many unused uploads on this connection; reference them in "
                                "a submit or reconnect", header["role"])
        session.uploads[header["image"]] = image

    async def _on_submit(self, session: Session, message: dict) -> None:
        registry = self.engine.registry
        await self._queue(session, protocol.Job.from_message(message, validate=False), build_edit_job,
                          self.config.limits, registry.names(), registry.default)

    async def _on_preprocess(self, session: Session, message: dict) -> None:
        await self._queue(session, protocol.PreprocessJob.from_message(message, validate=False),
                          build_preprocess_job, self.config.limits)

    async def _queue(self, session: Session, request, build, *args) -> None:
        """Check a job request off the event loop and queue it."""
        request.id = request.id or uuid.uuid4().hex[:16]
        job_id = request.id
        if self.queue.find(session, job_id):
            raise ProtocolError("duplicate_job", f"job {job_id} is still queued or running", "job", job_id)
        if len(self.queue.owned_by(session)) >= self.config.limits.max_queued_per_client:
            raise ProtocolError("limit_exceeded", "too many jobs queued from this connection", "job", job_id)
        try:
            work = await asyncio.to_thread(build, request, session.uploads, *args)
        except ProtocolError as exc:
            exc.job = job_id
            raise
        job = Job(request, work, session)
        session.send({"type": "accepted", "job": job_id, "position": self.queue.put(job)})

    async def _on_cancel(self, session: Session, message: dict) -> None:
        job = self.queue.find(session, message["job"])
        if job is None or job.ended:
            raise ProtocolError("unknown_job", f"no queued or running job {message['job']!r} on this connection",
                                "job", message["job"])
        if self.queue.cancel(job) == "queued" and job.end():
            session.send({"type": "cancelled", "job": job.id, "while": "queued"})

    async def _on_status(self, session: Session, message: dict) -> None:
        own = self.queue.owned_by(session)
        running = self.queue.running if self.queue.running in own else None
        session.send({"type": "status", "device": str(self.engine.device),
                      "running": running.id if running else None,
                      "queued": [job.id for job in own if job is not running],
                      "queue_length": len(self.queue), "clients": len(self.sessions),
                      "loaded_models": self.engine.registry.loaded_names()})

    async def _on_models(self, session: Session, message: dict) -> None:
        session.send({"type": "models", "default": self.engine.registry.default,
                      "models": self.engine.registry.describe()})

    def _drop(self, session: Session) -> None:
        """A client left: its queued jobs go, its running job stops at the next step."""
        for job in self.queue.owned_by(session):
            self.queue.cancel(job)
            if job is not self.queue.running:
                job.end()

    # -- the worker ---------------------------------------------------------------------------

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await self.queue.next()
            try:
                await self._run(loop, job)
            finally:
                self.queue.done(job)

    async def _run(self, loop: asyncio.AbstractEventLoop, job: Job) -> None:
        session: Session = job.owner
        started = time.perf_counter()
        try:
            result = await loop.run_in_executor(self._gpu, self.engine.run, job.work, _Reporter(loop, job))
            messages = await asyncio.to_thread(self._result_messages, job, result, started)
        except JobCancelled:
            if job.end():
                session.send({"type": "cancelled", "job": job.id, "while": "running"})
            return
        except ModelError as exc:
            field = exc.field if exc.unit is None else f"control[{exc.unit}].{exc.field}"
            if job.end():
                session.send(ProtocolError(exc.code, exc.message, field, job.id).to_message())
            return
        except Exception as exc:  # the engine failed: tell the client, keep serving
            log.exception("job %s failed", job.id)
            if job.end():
                session.send(ProtocolError("internal", f"the job failed: {type(exc).__name__}: {exc}", None,
                                           job.id).to_message())
            return
        if job.end():
            for message in messages:
                session.send(message)

    def _result_messages(self, job: Job, result: EngineResult, started: float) -> list:
        """Result frames (or inline data) followed by the ``result`` message."""
        request, messages, images = job.request, [], []
        for layer in result.layers:
            fmt = "png" if request.inline else request.output_format
            encoded = encode(layer.pixels, fmt)
            item = {"index": layer.index, "seed": layer.seed, "width": encoded.width, "height": encoded.height,
                    "offset": list(layer.offset), "format": fmt}
            if request.inline:
                item["data"] = encoded.to_base64()
            else:
                item["image"] = f"{job.id}.r{layer.index}"
                messages.append(encode_frame({"image": item["image"], "job": job.id, "role": "result",
                                              "format": fmt, "width": encoded.width, "height": encoded.height,
                                              "index": layer.index}, encoded.data))
            images.append(item)
        now = time.perf_counter()
        timings = {"queued": round(started - job.submitted, 4), "load": round(result.load_seconds, 4),
                   "run": round(result.run_seconds, 4), "total": round(now - job.submitted, 4)}
        messages.append({"type": "result", "job": job.id, "images": images,
                         "parameters": parameters(job, result), "timings": timings})
        return messages


def parameters(job: Job, result: EngineResult) -> dict:
    """The job as run, for the ``result`` message: defaults filled, the seed resolved, the size made."""
    work = job.work
    if not isinstance(work, EditJob):
        return {"mode": "preprocess", "preprocessor": work.preprocessor, "resolution": work.resolution}
    out = {"mode": work.mode, "model": work.model, "prompt": work.prompt, "negative_prompt": work.negative_prompt,
           "seed": work.seed, "steps": work.steps, "guidance": work.guidance, "strength": work.strength,
           "batch": work.batch, "sampler": work.sampler, "mask_grow": work.mask_grow,
           "mask_feather": work.mask_feather, "seeds": seed_range(work.seed, work.batch)}
    if work.mode == "generate":
        del out["strength"]
        out["width"], out["height"] = result.passes[0].size
    if work.references:
        out["references"] = [{"weight": r.weight, "mode": r.mode} for r in work.references]
    if work.control:
        out["control"] = [{"type": u.type, "preprocess": u.preprocessor or "off", "scale": u.scale,
                           "start": u.start, "end": u.end} for u in work.control]
    return out


class ServerThread:
    """A server running on its own event loop thread (tests, ``easel demo``, embedding)."""

    def __init__(self, config: Config, engine: Engine):
        self.server = EaselServer(config, engine)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Future | None = None
        self._thread = threading.Thread(target=self._run, name="easel-server", daemon=True)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._stop = self._loop.create_future()
        self._loop.run_until_complete(self.server.serve_forever(self._ready, self._stop))

    def start(self) -> "ServerThread":
        self._thread.start()
        if not self._ready.wait(60):
            raise RuntimeError("the Easel server did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(lambda: self._stop.done() or self._stop.set_result(None))
        self._thread.join(30)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
