"""A synchronous Python client for the Easel server (``websockets.sync.client``).

    with Client("ws://127.0.0.1:8760/") as easel:
        job = easel.submit(Job.create("inpaint", prompt="a red door", image=picture, mask=mask, seed=7))
        for event in easel.events(job):
            ...  # Accepted, Started, Progress (with .preview), then Result or Cancelled

``events`` raises ``EaselError`` when the server answers the job with an ``error``.
``cancel`` may be called from another thread while one thread iterates events.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterator

from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidURI
from websockets.sync.client import connect

from .images import ImageData, decode_frame, encode_frame
from .job import Job, PreprocessJob
from .vocabulary import DEFAULT_URL, PROTOCOL_VERSION


def tls_options(url: str, cert: str | None) -> dict:
    """``connect`` options for ``url``: for ``wss://`` with ``cert``, trust that certificate only."""
    if cert is None or not url.startswith("wss://"):
        return {}
    context = ssl.create_default_context(cafile=cert)
    # Pinned: the chain must end at this very self-signed certificate, whatever name the box has on the LAN.
    context.check_hostname = False
    return {"ssl": context}


def tls_hint(exc: ssl.SSLError, cert: str | None) -> str:
    """What to try when a TLS handshake fails: the three causes need different fixes."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ("is the pinned certificate the server's?" if cert else
                "the server's certificate is not trusted here: pin it, the easel-cert.pem that `easel cert` wrote")
    return "does the server speak wss://? One started without a TLS certificate speaks ws:// only"


def unreachable_reason(exc: BaseException, timeout: float) -> str:
    """Why a connection could not be opened, in words: a server not started, a wrong host name and a
    server that does not answer in time need different fixes."""
    if isinstance(exc, ConnectionRefusedError):
        return "nothing is listening at that address and port"
    if isinstance(exc, socket.gaierror):
        return "that host name is unknown"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    return str(exc) or type(exc).__name__


class EaselError(Exception):
    """The server refused or failed a request (an ``error`` message), or the connection failed."""

    def __init__(self, code: str, message: str, field: str | None = None, job: str | None = None,
                 ends_job: bool = True, dropped: bool = False, reason: str = ""):
        super().__init__(f"{message} [{code}" + (f", field {field}]" if field else "]"))
        self.code, self.message, self.field, self.job = code, message, field, job
        self.ends_job = ends_job  # False: about job `job` (a refused cancel, a duplicate id) without ending it
        # True: the connection went away without the server closing it (a network blink), so the session and
        # its jobs live on at the server for a while, and a later ``reconnect()`` may still get their endings.
        self.dropped = dropped
        self.reason = reason  # "unreachable": why, in a few words (nothing listening, no answer in time ...)


class JobCancelled(EaselError):
    """Raised by ``Client.run`` when the job was cancelled."""


@dataclass
class Accepted:
    job: str
    position: int


@dataclass
class Started:
    """The job runs: ``steps`` per image and pass; ``passes`` are (box, diffusion size) in run order."""

    job: str
    steps: int
    diffusion_size: tuple[int, int]
    box: tuple[int, int, int, int] | None
    passes: list[tuple[tuple[int, int, int, int], tuple[int, int]]] = field(default_factory=list)


@dataclass
class Progress:
    job: str
    step: int
    total: int
    preview: ImageData | None = None


@dataclass
class ResultImage:
    index: int
    seed: int
    offset: tuple[int, int]
    image: ImageData


@dataclass
class Result:
    job: str
    images: list[ResultImage]
    parameters: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)


@dataclass
class Cancelled:
    job: str
    stage: str  # "queued" or "running"


Event = Accepted | Started | Progress | Result | Cancelled


class Client:
    """One websocket connection to an Easel server."""

    def __init__(self, url: str = DEFAULT_URL, *, token: str | None = None, name: str = "easel-python",
                 open_timeout: float = 10, max_size: int | None = 2**29, cert: str | None = None,
                 resume: bool = True):
        """``cert``: for a ``wss://`` server with a self-signed certificate (``easel cert``), that
        certificate's PEM file: the connection is trusted only if the server holds its key (pinned).
        ``resume``: when the connection drops (no close from the server), reconnect once and resume the
        session: jobs go on, and endings that were missed arrive as if nothing happened."""
        self.url, self.token, self.name, self.cert = url, token, name, cert
        self.resume = resume
        self.session: str | None = None  # welcome.session
        self._pending: set[str] = set()  # jobs submitted whose ending has not arrived
        # Jobs sent but not yet `accepted` (or ended): sent again when a resume says their submit was lost.
        self._unsent: dict[str, Job | PreprocessJob] = {}
        self.open_timeout, self.max_size = open_timeout, max_size
        self.welcome: dict | None = None
        self._ws = None
        self._jobs: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self._replies: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self._frames: dict[str, ImageData] = {}
        self._ids = itertools.count(1)
        self.heard: float | None = None  # time.monotonic() of the last message from the server
        self._probes = 0  # status requests sent by probe() whose replies are not to be kept
        self._probe_lock = threading.Lock()
        self._resuming = False

    # -- connection ---------------------------------------------------------------------------

    def connect(self) -> "Client":
        """Open the connection and say hello; raises EaselError if refused or unreachable."""
        self._open()
        self._hello()
        return self

    def reconnect(self) -> "Client":
        """Open a new connection and resume this client's session: its jobs' missed endings arrive."""
        if self._ws is not None:
            self._ws.close()
        self._open()
        self._hello(resume=True)
        return self

    def reconnect_within(self, seconds: float) -> None:
        """``reconnect()``, tried again while the server cannot be reached (a network blink can last
        seconds) for at most ``seconds``, backing off from a quarter second to two. Raises the last
        ``EaselError`` when it does not come back in time, or at once when the server refuses the
        resume or ``abort()`` gave the session up meanwhile."""
        deadline, wait = time.monotonic() + seconds, 0.25
        while True:
            try:
                self.reconnect()
                return
            except EaselError as exc:
                if exc.code not in ("unreachable", "closed") or not self.resume or \
                        time.monotonic() + wait > deadline:
                    raise
            time.sleep(wait)
            wait = min(wait * 2, 2.0)

    def _hello(self, resume: bool = False) -> None:
        hello = {"type": "hello", "protocol": PROTOCOL_VERSION, "client": self.name}
        if self.token:
            hello["token"] = self.token
        if resume and self.session:
            hello.update(resume=self.session, pending=sorted(self._pending))
        self._send(hello)
        self.welcome = self._await_reply("welcome")
        self.session = self.welcome.get("session", self.session)

    def _open(self) -> None:
        try:
            options = tls_options(self.url, self.cert)
        except OSError as exc:  # before connecting: a missing file is not an unreachable server
            reason = f"cannot read the certificate to pin, {self.cert}: {exc.strerror or exc}"
            raise EaselError("unreachable", reason, reason=reason) from None
        try:
            # Images are compressed already (or raw on purpose): per-message deflate only costs time.
            self._ws = connect(self.url, open_timeout=self.open_timeout, max_size=self.max_size, compression=None,
                               **options)
        except ssl.SSLError as exc:
            raise EaselError("unreachable", f"the TLS handshake with {self.url} failed ({tls_hint(exc, self.cert)}): "
                             f"{exc}") from None
        except InvalidURI:
            raise EaselError("bad_url", f"{self.url} is not a websocket address like ws://127.0.0.1:8760/") from None
        except (OSError, TimeoutError) as exc:
            reason = unreachable_reason(exc, self.open_timeout)
            raise EaselError("unreachable", f"cannot reach the Easel server at {self.url}: {reason}",
                             reason=reason) from None
        except Exception as exc:  # handshake refused (bad origin, HTTP error ...)
            if isinstance(exc, InvalidMessage) and self.url.startswith("ws://"):
                # What a ws:// client reads from a wss:// server: TLS bytes, not an HTTP answer.
                exc = f"{exc} (a server started with a TLS certificate speaks wss:// only)"
            reason = f"the server refused the connection: {exc}"
            raise EaselError("unreachable", f"the Easel server at {self.url} refused the connection: {exc}",
                             reason=reason) from None

    def abort(self) -> None:
        """Drop the connection at once, from any thread, with no close handshake and no resume (for a
        server that stopped answering): a thread reading events gets ``EaselError("closed")``."""
        self.resume = False
        ws = self._ws
        if ws is not None:
            try:
                ws.socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already gone

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None

    def __enter__(self) -> "Client":
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- requests -----------------------------------------------------------------------------

    def upload(self, image: ImageData, role: str = "image") -> dict:
        """Send an image as a binary frame; returns the reference to put in a request."""
        image_id = f"up-{next(self._ids)}"
        header = {"image": image_id, "role": role, "format": image.format,
                  "width": image.width, "height": image.height}
        self._send_frame(encode_frame(header, image.data))
        return {"frame": image_id}

    def submit(self, job: Job | str, **params) -> str:
        """Queue a job; its images that are ``ImageData`` are uploaded first. Returns the job id.

        ``submit("inpaint", prompt=..., image=...)`` is short for ``submit(Job.create("inpaint", ...))``.
        The job is sent as it is: hosts that want an answer before sending call ``job.check()``.
        """
        if isinstance(job, str):
            job = Job.create(job, **params)
        elif params:
            raise TypeError("submit takes a Job, or a mode and its parameters, not both")
        job = dataclasses.replace(job, id=job.id or uuid.uuid4().hex[:16])
        self._send_job(job)
        return job.id

    def cancel(self, job: str) -> None:
        """Ask the server to cancel a job; its events end with Cancelled (or its result, if too late)."""
        self._send({"type": "cancel", "job": job})

    def events(self, job: str) -> Iterator[Event]:
        """Yield the job's events until it ends; raise EaselError if it ends in an error."""
        while True:
            while not self._jobs[job]:
                self._receive()
            event = self._jobs[job].popleft()
            if isinstance(event, EaselError):
                if event.ends_job:  # else the job goes on: its own ending is still to come
                    del self._jobs[job]
                raise event
            yield event
            if isinstance(event, (Result, Cancelled)):
                del self._jobs[job]
                return

    def run(self, job: Job | str, *, on_event: Callable[[Event], None] | None = None, **params) -> Result:
        """Submit a job (as ``submit`` takes it) and wait for its result; raises JobCancelled or EaselError."""
        job = self.submit(job, **params)
        for event in self.events(job):
            if on_event:
                on_event(event)
            if isinstance(event, Cancelled):
                raise JobCancelled("cancelled", f"job {job} was cancelled", job=job)
            if isinstance(event, Result):
                return event
        raise AssertionError("unreachable")

    def preprocess(self, preprocessor: str, image: ImageData, *, resolution: int | None = None,
                   output_format: str | None = None, on_event: Callable[[Event], None] | None = None) -> ImageData:
        """The control map ``preprocessor`` (a name, or a control type) makes of ``image``, as PNG or
        in ``output_format`` ("rgba8": raw pixels, no encoding on either side)."""
        request = PreprocessJob(image=image, preprocessor=preprocessor, id=uuid.uuid4().hex[:16],
                                resolution=resolution, output_format=output_format or "png")
        job = request.id
        self._send_job(request)
        for event in self.events(job):
            if on_event:
                on_event(event)
            if isinstance(event, Result):
                return event.images[0].image
        raise JobCancelled("cancelled", f"preprocess job {job} was cancelled", job=job)

    def probe(self) -> None:
        """Ask for a ``status`` whose reply only counts as a sign of life (``heard``) and is not kept;
        safe from another thread while one thread reads events, like ``cancel``."""
        with self._probe_lock:
            self._probes += 1
        self._send({"type": "status"})

    def status(self) -> dict:
        self._send({"type": "status"})
        return self._await_reply("status")

    def models(self) -> dict:
        self._send({"type": "models"})
        return self._await_reply("models")

    # -- plumbing -----------------------------------------------------------------------------

    def _reference(self, image, role: str) -> dict:
        """A job's image as a wire reference: ``ImageData`` is uploaded as a binary frame."""
        if isinstance(image, ImageData):
            return self.upload(image, role)
        raise TypeError(f"a job's {role} must be ImageData or a wire reference, not {type(image).__name__}")

    def _send_job(self, job: Job | PreprocessJob) -> None:
        """Upload a job's pictures and send it. When the connection drops meanwhile, the job waits: the next
        read resumes the session, and if the server never received the submit it is sent again then."""
        self._pending.add(job.id)
        self._unsent[job.id] = job
        try:
            self._send(job.to_message(self._reference))
        except EaselError as exc:
            if not (exc.dropped and self.resume and self.session):
                self._pending.discard(job.id)
                self._unsent.pop(job.id, None)
                raise

    def _send(self, message: dict) -> None:
        self._send_frame(json.dumps(message))

    def _send_frame(self, frame: str | bytes) -> None:
        if self._ws is None:
            raise EaselError("closed", "the client is not connected")
        try:
            self._ws.send(frame)
        except ConnectionClosed as exc:
            raise EaselError("closed", f"the connection to the Easel server closed: {exc}",
                             dropped=exc.rcvd is None) from None

    def _await_reply(self, kind: str) -> dict:
        while not self._replies[kind]:
            self._receive()
        return self._replies[kind].popleft()

    def _receive(self) -> None:
        """Read one message and file it under its job (or as a reply)."""
        try:
            raw = self._ws.recv()
        except ConnectionClosed as exc:
            if exc.rcvd is None and self.resume and not self._resuming and self.session and self._pending:
                self._resuming = True  # once: a second drop in a row is an error (``dropped``: retry later)
                try:
                    self.reconnect()
                except EaselError as failed:
                    failed.dropped = failed.code in ("unreachable", "closed")  # not a refused resume
                    raise
                finally:
                    self._resuming = False
                return
            reason = exc.rcvd.reason if exc.rcvd and exc.rcvd.reason else "connection closed"
            raise EaselError("closed", f"the Easel server closed the connection: {reason}",
                             dropped=exc.rcvd is None and self.resume and bool(self.session)) from None
        self.heard = time.monotonic()
        if isinstance(raw, bytes):
            header, image = decode_frame(raw)
            self._frames[header["image"]] = image
            return
        message = json.loads(raw)
        kind, job = message["type"], message.get("job")
        if kind == "error" and message["code"] == "not_received" and job in self._unsent:
            self._send_job(self._unsent[job])  # the submit was lost with the old connection
            return
        ends = kind in ("result", "cancelled") or (kind == "error" and message.get("ends_job", True))
        if ends or kind == "accepted":
            self._unsent.pop(job, None)
        if ends:
            self._pending.discard(job)
        if kind == "error":
            error = EaselError(message["code"], message["message"], message.get("field"), job,
                               message.get("ends_job", True))
            if job is None:
                raise error
            self._jobs[job].append(error)
        elif kind == "accepted":
            self._jobs[job].append(Accepted(job, message["position"]))
        elif kind == "started":
            box = message.get("box")
            passes = [(tuple(p["box"]), tuple(p["diffusion_size"])) for p in message.get("passes", [])]
            self._jobs[job].append(Started(job, message["steps"], tuple(message["diffusion_size"]),
                                           tuple(box) if box else None, passes))
        elif kind == "progress":
            preview = self._frames.pop(message["preview"], None) if "preview" in message else None
            self._jobs[job].append(Progress(job, message["step"], message["total"], preview))
        elif kind == "result":
            self._jobs[job].append(Result(job, [self._result_image(item) for item in message["images"]],
                                          message["parameters"], message["timings"]))
        elif kind == "cancelled":
            self._jobs[job].append(Cancelled(job, message["while"]))
        elif kind == "status" and self._take_probe():
            return  # a probe's answer: it said the server is alive, nothing more
        else:
            self._replies[kind].append(message)

    def _take_probe(self) -> bool:
        with self._probe_lock:
            if self._probes:
                self._probes -= 1
                return True
            return False

    def _result_image(self, item: dict) -> ResultImage:
        if "data" in item:
            image = ImageData.from_base64(item["data"])
        else:
            image = self._frames.pop(item["image"])
        return ResultImage(item["index"], item["seed"], tuple(item["offset"]), image)
