"""A synchronous Python client for the Easel server (``websockets.sync.client``).

    with Client("ws://127.0.0.1:8760/") as easel:
        job = easel.submit(Job.create("inpaint", prompt="a red door", image=picture, mask=mask, seed=7))
        for event in easel.events(job):
            ...  # Accepted, Started, Progress (with .preview), then Result or Cancelled

A client made with ``queue_every`` (seconds) asks the server where a job waiting in the queue stands
while its events are read, and yields ``Queued`` between ``Accepted`` and ``Started`` each time the
count of jobs ahead changes.

Pictures are ``shared.images.ImageData``: ``ImageData.from_file(path)``, ``from_png(data)``,
``from_pil(picture)``, ``from_array(array)``; a result's ``images[i].image`` has ``.data`` (the file's
bytes), ``.to_pil()`` and ``.to_array()``, with the image's ``seed`` and ``offset`` beside it.

``events`` raises ``EaselError`` when the server answers the job with an ``error``, and so does every
call when the connection fails (``code`` "unreachable", "closed", or the protocol's error code).
One client may be used from several threads at once: a GUI's worker thread iterates a job's events
while the UI thread calls ``cancel``, ``status`` or ``models``, or two threads each run their own job.
There is no asyncio API: in asyncio code, run the blocking calls in a thread
(``await asyncio.to_thread(easel.run, ...)``).
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import itertools
import json
import logging
import os
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterator

from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidURI
from websockets.sync.client import connect

from .errors import ProtocolError, cancel_reason
from .images import ImageData, decode_frame, encode_frame
from .job import Job, PreprocessJob
from .limits import check_request
from .rules import check_message_size
from .vocabulary import DEFAULT_URL, PROTOCOL_VERSION


def _image_data(image) -> ImageData:
    """``image`` if it is ``ImageData``; else a ``TypeError`` saying how to make one of what it is."""
    if isinstance(image, ImageData):
        return image
    kind = type(image).__name__
    if isinstance(image, (str, bytes, os.PathLike)):
        how = ("ImageData.from_png(data) for a PNG file's bytes" if isinstance(image, bytes) else
               "ImageData.from_file(path) for a PNG file")
    elif hasattr(image, "shape") and hasattr(image, "dtype"):
        how = "ImageData.from_array(array) for a uint8 array"
    elif hasattr(image, "save") and hasattr(image, "mode"):
        how = "ImageData.from_pil(picture) for a Pillow image"
    else:
        how = "ImageData.from_png, from_file, from_pil or from_array"
    raise TypeError(f"must be ImageData (shared.images) or a wire reference like {{'frame': id}}, not {kind}: "
                    f"use {how}")


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


def _left(timeout: float | None, began: float) -> float | None:
    """Seconds left of ``timeout`` counted from ``began`` (``time.monotonic()``); None for no timeout."""
    return None if timeout is None else max(0.0, timeout - (time.monotonic() - began))


# The websocket library logs a keepalive that failed with its traceback, which Python prints to stderr when the
# tool has configured no logging; the failure reaches the caller as EaselError already. A library's NullHandler
# keeps that console quiet, and a tool that does configure logging still gets the record.
_log = logging.getLogger("easel.client")
_log.addHandler(logging.NullHandler())
# The sync client has pings from websockets 13 on; the WebUI's gradio keeps 11 or 12 (no keepalive there).
_PINGS = "ping_interval" in inspect.signature(connect).parameters

# s: how often the hosts (Krita, the WebUI tab, `easel run`) ask where a job waiting in the queue stands: a long
# queue's count then goes down as it moves, for one small `status` a second.
QUEUE_EVERY = 1.0

_NOT_CONNECTED = ("the client is not connected: call connect() first (or use `with Client(...)`), and again "
                  "after close()")


class EaselError(Exception):
    """The server refused or failed a request (an ``error`` message), or the connection failed.

    ``code``: the protocol's error code (docs/protocol.md §6), or ``unreachable`` (``reason`` says why in
    a few words), ``closed``, ``bad_url``, ``cancelled`` (``JobCancelled``). ``field``: the job's field
    at fault; ``job``: the job it is about (for a failed connection, the job that was waited for)."""

    def __init__(self, code: str, message: str, field: str | None = None, job: str | None = None,
                 ends_job: bool = True, dropped: bool = False, reason: str = "", tls: bool = False):
        super().__init__(f"{message} [{code}" + (f", field {field}]" if field else "]"))
        self.code, self.message, self.field, self.job = code, message, field, job
        self.ends_job = ends_job  # False: about job `job` (a refused cancel, a duplicate id) without ending it
        # True: the connection went away without the server closing it (a network blink), so the session and
        # its jobs live on at the server for a while, and a later ``reconnect()`` may still get their endings.
        self.dropped = dropped
        self.reason = reason  # "unreachable": why, in a few words (nothing listening, no answer in time ...)
        # True: "unreachable" because the TLS handshake failed (a wrong pinned certificate, a ws:// server):
        # trying again cannot help until the user changes something, unlike a server not running yet.
        self.tls = tls


class JobCancelled(EaselError):
    """Raised by ``Client.run`` when the job was cancelled."""


def _why_cancelled(event: "Cancelled") -> str:
    """Why a job nobody here cancelled ended so: else the user was left to think they had."""
    why = cancel_reason(event.reason)
    return f": {why}" if why else ""


@dataclass
class Accepted:
    job: str
    position: int


@dataclass
class Queued:
    """The job still waits: ``position`` jobs are ahead of it now, counted as ``Accepted.position`` counts
    them (the running job included). Only from a client made with ``queue_every``, when the count changed."""

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
    reason: str | None = None  # "shutting_down" when the server cancelled it; None when the client asked


Event = Accepted | Queued | Started | Progress | Result | Cancelled


def _meant_url(url: str) -> str:
    """``"; did you mean ws://localhost:8760/?"`` for an address typed as a browser's or without a scheme."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        rest, scheme = url, ""
    if scheme.lower() not in ("", "http", "https") or not rest:
        return ""
    host, _, path = rest.partition("/")
    if ":" not in host:  # (a websocket address without a port is port 80, not the server's)
        host += f":{DEFAULT_URL.rsplit(':', 1)[1].strip('/')}"
    return f"; did you mean {'wss' if scheme.lower() == 'https' else 'ws'}://{host}/{path}?"


class Client:
    """One websocket connection to an Easel server."""

    def __init__(self, url: str = DEFAULT_URL, *, token: str | None = None, name: str = "easel-python",
                 open_timeout: float = 10, max_size: int | None = 2**29, cert: str | None = None,
                 resume: bool = True, keepalive: float | None = 20, queue_every: float | None = None):
        """``cert``: for a ``wss://`` server with a self-signed certificate (``easel cert``), that
        certificate's PEM file: the connection is trusted only if the server holds its key (pinned).
        ``resume``: when the connection drops (no close from the server), reconnect once and resume the
        session: jobs go on, and endings that were missed arrive as if nothing happened.
        ``keepalive``: seconds between pings; a server that leaves one unanswered as long is given up
        (``EaselError("closed")``, or the resume above). None: never (so with websockets before 13).
        ``queue_every``: while a job whose events are read waits in the server's queue, ask the server
        this often (a ``status``, seconds) how many jobs are ahead of it, and yield ``Queued`` when that
        changed. None: never (``Accepted.position`` is then the only count)."""
        self.url, self.token, self.name, self.cert = url, token, name, cert
        self.resume = resume
        self.session: str | None = None  # welcome.session
        # Jobs submitted whose ending has not arrived, in the order sent: a resume names them in that order, and
        # those whose submit was lost are sent again in it (the server runs a connection's jobs in order).
        self._pending: dict[str, None] = {}
        # Jobs sent but not yet `accepted` (or ended): sent again when a resume says their submit was lost.
        self._unsent: dict[str, Job | PreprocessJob] = {}
        self.open_timeout, self.max_size, self.keepalive = open_timeout, max_size, keepalive
        self.queue_every = queue_every
        # Jobs accepted and not yet started, with the jobs ahead of each as last heard: those a wait asks about.
        self._ahead: dict[str, int] = {}
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
        self._abandoned: set[str] = set()  # jobs whose run() was interrupted: their messages are dropped
        self._ended_by: str | None = None  # "close" / "abort": this client ended the connection itself
        # One thread reads the socket at a time and files what it reads; the others wait for their message.
        self._read_cond = threading.Condition()
        self._reader: int | None = None  # threading.get_ident() of the thread reading now

    # -- connection ---------------------------------------------------------------------------

    def connect(self) -> "Client":
        """Open the connection and say hello (a new session: a connection open already is closed, ending
        its session); raises EaselError if refused or unreachable."""
        self.close()  # (a second connect() left the first socket open, and its session alive at the server)
        self._pending.clear()  # jobs of an earlier session end with it
        self._abandoned.clear()
        self._ahead.clear()
        self._unsent.clear()
        self._open()
        self._hello()
        return self

    def reconnect(self) -> "Client":
        """Open a new connection and resume this client's session: its jobs' missed endings arrive.
        When the server no longer has the session (it restarted, or ``resume_seconds`` passed), the
        client says hello afresh on the new connection and raises ``EaselError("unknown_session")``:
        it is connected, with a new session, and its unfinished jobs are gone."""
        if self._ws is not None:
            # 1001 (going away) keeps the session for the resume below; a plain close() (1000) would end it and
            # cancel its jobs, so a reconnect on a connection still open lost them all.
            self._ws.close(1001)
        self._open()
        try:
            self._hello(resume=True)
        except EaselError as exc:
            if exc.code != "unknown_session":
                raise
            # (the connection was left without a session: the next request got `hello_required`)
            lost = sorted(self._pending)
            self._pending.clear()
            self._unsent.clear()
            self._ahead.clear()
            self.session = None
            self._hello()
            raise EaselError("unknown_session", "the server no longer has this client's session (it restarted, or "
                             "the session expired): connected again with a new session, but its unfinished jobs "
                             f"are lost{': ' + ', '.join(lost) if lost else ''}; submit them again",
                             "resume") from None
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
            hello.update(resume=self.session, pending=list(self._pending))
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
            self._ended_by = None
            if _PINGS:
                options.update(ping_interval=self.keepalive, ping_timeout=self.keepalive)
            self._ws = connect(self.url, open_timeout=self.open_timeout, max_size=self.max_size, compression=None,
                               logger=_log, **options)
        except ssl.SSLError as exc:
            reason = f"the TLS handshake failed ({tls_hint(exc, self.cert)})"
            raise EaselError("unreachable", f"the TLS handshake with {self.url} failed ({tls_hint(exc, self.cert)}): "
                             f"{exc}", reason=reason, tls=True) from None
        except InvalidURI:
            raise EaselError("bad_url", f"{self.url} is not a websocket address like ws://127.0.0.1:8760/"
                             f"{_meant_url(self.url)}") from None
        except ConnectionClosed:  # a network blink cuts the handshake: it said "refused ... no close frame"
            reason = "the connection was cut during the opening handshake"
            raise EaselError("unreachable", f"cannot reach the Easel server at {self.url}: {reason}",
                             reason=reason) from None
        except (OSError, TimeoutError) as exc:
            reason = unreachable_reason(exc, self.open_timeout)
            raise EaselError("unreachable", f"cannot reach the Easel server at {self.url}: {reason}",
                             reason=reason) from None
        except Exception as exc:  # handshake refused (bad origin, HTTP error ...)
            if isinstance(exc, InvalidMessage) and isinstance(exc.__cause__, EOFError):
                # Nothing came back at all: a network blink looks like this, and so may a wss:// server.
                tls = " or a server started with a TLS certificate, which speaks wss:// only" \
                    if self.url.startswith("ws://") else ""
                reason = f"the connection closed before the server answered (a network cut: try again{tls})"
                raise EaselError("unreachable", f"cannot reach the Easel server at {self.url}: {reason}",
                                 reason=reason) from None
            if isinstance(exc, InvalidMessage) and self.url.startswith("ws://"):
                # What a ws:// client reads from a wss:// server: TLS bytes, not an HTTP answer.
                exc = f"{exc} (a server started with a TLS certificate speaks wss:// only)"
            body = getattr(getattr(exc, "response", None), "body", None)
            if body and getattr(exc.response, "status_code", None) == 503:
                # the server's own sentence (too many connections open), not just "HTTP 503"
                exc = f"{body.decode(errors='replace').strip()[:200]} (HTTP 503)"
            reason = f"the server refused the connection: {exc}"
            raise EaselError("unreachable", f"the Easel server at {self.url} refused the connection: {exc}",
                             reason=reason) from None

    def abort(self) -> None:
        """Drop the connection at once, from any thread, with no close handshake and no resume (for a
        server that stopped answering): a thread reading events gets ``EaselError("closed")``."""
        self.resume = False
        self._ended_by = "abort"
        ws = self._ws
        if ws is not None:
            try:
                ws.socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already gone

    def close(self) -> None:
        """End the connection and its session (the server cancels its jobs); a thread reading events
        gets ``EaselError("closed")``. ``connect()`` opens a new one."""
        if self._ws is not None:
            self._ended_by = "close"
            self._ws.close()
            self._ws = None

    def __enter__(self) -> "Client":
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- requests -----------------------------------------------------------------------------

    def upload(self, image: ImageData, role: str = "image") -> dict:
        """Send an image as a binary frame; returns the reference to put in a request. The request that
        names it uses it up (send it again for the next one): jobs given ``ImageData`` upload it themselves."""
        reference, frame = self._frame(image, role)
        self._send_frame(frame)
        return reference

    def _frame(self, image: ImageData, role: str) -> tuple[dict, bytes]:
        """An image's wire reference and the binary frame that uploads it."""
        image_id = f"up-{next(self._ids)}"
        header = {"image": image_id, "role": role, "format": image.format,
                  "width": image.width, "height": image.height}
        return {"frame": image_id}, encode_frame(header, image.data)

    def check(self, request: Job | PreprocessJob) -> None:
        """What ``submit`` (and ``preprocess``) refuse before uploading anything: a picture that is not
        ``ImageData`` (``TypeError``), bytes that are not what they say, and a job over the limits the server's
        ``welcome`` gives (sizes, steps, batch), as ``EaselError`` with the server's own code, sentence and field.
        The server's other rules: ``job.check()``."""
        try:
            request.to_message(lambda image, role: _image_data(image).check() and {"frame": "unsent"})
            check_request(request, self._limits())
        except ProtocolError as exc:  # (the server's answer to a bad upload names no job)
            raise EaselError(exc.code, exc.message, exc.field, request.id) from None

    def _limits(self) -> dict:
        """``welcome.capabilities.limits``: empty before the welcome, or from a server that gives none."""
        return ((self.welcome or {}).get("capabilities") or {}).get("limits") or {}

    def submit(self, job: Job | str, /, **params) -> str:
        """Queue a job; its images that are ``ImageData`` are uploaded first. Returns the job id.

        ``submit("inpaint", prompt=..., image=...)`` is short for ``submit(Job.create("inpaint", ...))``.
        What ``check`` refuses raises before anything is sent; for the other rules, hosts that want an
        answer before sending call ``job.check()``.
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
        self._ahead.pop(job, None)  # (a queued job leaves the queue: no more counts for a host to show)
        self._send({"type": "cancel", "job": job})

    def events(self, job: str, timeout: float | None = None) -> Iterator[Event]:
        """Yield the job's events until it ends; raise EaselError if it ends in an error. With ``timeout``
        (seconds from the first event asked for), ``EaselError("timeout")`` when the job has not ended by
        then; the job goes on at the server, and ``events(job)`` goes on following it."""
        if job not in self._pending and not self._jobs.get(job):
            # (waiting for it would block for ever: no message about it is coming)
            raise EaselError("unknown_job", f"no job {job} of this client is waiting for its events: it was never "
                             "submitted on this client, or its events were read already", job=job, ends_job=False)
        deadline = None if timeout is None else time.monotonic() + timeout
        asked = time.monotonic()  # when the job's place in the queue was last asked for (or came with `accepted`)
        while True:
            until = deadline
            if self.queue_every is not None and job in self._ahead:  # (never while it runs: not in _ahead)
                if time.monotonic() - asked >= self.queue_every:
                    self._ask_places()
                    asked = time.monotonic()
                until = asked + self.queue_every if deadline is None else min(asked + self.queue_every, deadline)
            try:
                if not self._wait(lambda: self._jobs[job], until):
                    if deadline is None or time.monotonic() < deadline:
                        continue  # time to ask where the job stands
                    raise EaselError("timeout", f"job {job} did not end within {timeout:g}s; it goes on at the server "
                                     "(cancel it, or read its events again)", job=job, ends_job=False)
            except EaselError as exc:
                if exc.job is None and exc.code in ("closed", "unreachable", "unknown_session"):
                    exc.job = job  # the job waited for: after reconnect(), events(exc.job) goes on
                    exc.ends_job = not exc.dropped
                raise
            event = self._jobs[job].popleft()
            if isinstance(event, EaselError):
                if event.ends_job:  # else the job goes on: its own ending is still to come
                    del self._jobs[job]
                raise event
            if isinstance(event, (Result, Cancelled)):
                # before the yield: ``run`` stops iterating at the result, and the job's queue stayed behind
                del self._jobs[job]
                yield event
                return
            yield event

    def run(self, job: Job | str, /, *, on_event: Callable[[Event], None] | None = None,
            timeout: float | None = None, **params) -> Result:
        """Submit a job (as ``submit`` takes it) and wait for its result; raises JobCancelled or EaselError.
        When the wait ends otherwise (Ctrl+C, a notebook's interrupt, an exception from ``on_event``, no
        result within ``timeout`` seconds: ``EaselError("timeout")``) the job is cancelled, and what comes
        of it is not kept."""
        began = time.monotonic()
        job = self.submit(job, **params)
        try:
            for event in self.events(job, _left(timeout, began)):
                if on_event:
                    on_event(event)
                if isinstance(event, Cancelled):
                    raise JobCancelled("cancelled", f"job {job} was cancelled{_why_cancelled(event)}", job=job)
                if isinstance(event, Result):
                    return event
        except EaselError as exc:
            if exc.code == "timeout":
                self._abandon(job)
                raise EaselError("timeout", f"job {job} did not end within {timeout:g}s, so it was cancelled",
                                 job=job) from None
            raise  # a dropped connection's job is still to be followed (``exc.job``)
        except BaseException:
            # (the job ran on at the server, the next job queued behind it, and its events piled up here)
            self._abandon(job)
            raise
        raise AssertionError("unreachable")

    def _abandon(self, job: str) -> None:
        """Cancel a job nobody will read the events of, and drop them as they come."""
        if job not in self._pending:
            return
        self._abandoned.add(job)
        self._jobs.pop(job, None)
        try:
            self.cancel(job)
        except EaselError:
            pass  # the connection is gone: the job goes with its session

    def preprocess(self, preprocessor: str, image: ImageData, *, resolution: int | None = None,
                   output_format: str | None = None, on_event: Callable[[Event], None] | None = None,
                   timeout: float | None = None) -> ImageData:
        """The control map ``preprocessor`` (a name, or a control type) makes of ``image``, as PNG or
        in ``output_format`` ("rgba8": raw pixels, no encoding on either side); ``timeout`` as ``run``'s."""
        began = time.monotonic()
        request = PreprocessJob(image=image, preprocessor=preprocessor, id=uuid.uuid4().hex[:16],
                                resolution=resolution, output_format=output_format or "png")
        job = request.id
        self._send_job(request)
        why = ""
        try:
            for event in self.events(job, _left(timeout, began)):
                if on_event:
                    on_event(event)
                if isinstance(event, Result):
                    return event.images[0].image
                if isinstance(event, Cancelled):
                    why = _why_cancelled(event)
        except EaselError as exc:
            if exc.code == "timeout":
                self._abandon(job)
                raise EaselError("timeout", f"preprocess job {job} did not end within {timeout:g}s, so it was "
                                 "cancelled", job=job) from None
            raise
        except BaseException:  # interrupted, as ``run``
            self._abandon(job)
            raise
        raise JobCancelled("cancelled", f"preprocess job {job} was cancelled{why}", job=job)

    def probe(self) -> None:
        """Ask for a ``status`` whose reply only counts as a sign of life (``heard``) and is not kept (but
        for where this client's queued jobs stand, with ``queue_every``); safe from another thread while
        one thread reads events, like ``cancel``."""
        with self._probe_lock:
            self._probes += 1
        self._send({"type": "status"})

    def _ask_places(self) -> None:
        """A probe for where the queued jobs stand: its reply files their ``Queued`` events."""
        try:
            self.probe()
        except EaselError:
            pass  # a dropped connection is the read's to find (and resume)

    def status(self) -> dict:
        self._send({"type": "status"})
        return self._await_reply("status")

    def models(self) -> dict:
        self._send({"type": "models"})
        return self._await_reply("models")

    # -- plumbing -----------------------------------------------------------------------------

    def _send_job(self, job: Job | PreprocessJob, again: bool = False) -> None:
        """Upload a job's pictures and send it. When the connection drops meanwhile, the job waits: the next
        read resumes the session, and if the server never received the submit it is sent again then."""
        if job.id in self._pending and not again:
            # (the server's refusal came as an error of the job already running: its events() raised it)
            raise EaselError("duplicate_job", f"job {job.id} of this client is still queued or running: wait for "
                             "its end, or give this one another id (or none: one is made up)", "job", job.id,
                             ends_job=False)
        # Everything is checked before the first picture is uploaded: a wrong one raises with nothing sent (no
        # upload left unused at the server, no 6000x4000 photo uploaded for a minute only to be refused) and no
        # job left waiting here.
        self.check(job)
        limits = self._limits()
        frames: list[bytes] = []

        def reference(image, role: str) -> dict:  # (a frame over the limit is refused naming the job's field)
            wire, frame = self._frame(_image_data(image), role)
            if "max_message_bytes" in limits:
                check_message_size(len(frame), limits["max_message_bytes"])
            frames.append(frame)
            return wire

        try:
            message = job.to_message(reference)
            if "max_message_bytes" in limits:
                check_message_size(len(json.dumps(message).encode()), limits["max_message_bytes"])
        except ProtocolError as exc:
            raise EaselError(exc.code, exc.message, exc.field, job.id) from None
        self._pending[job.id] = None
        self._unsent[job.id] = job
        try:
            for frame in frames:
                self._send_frame(frame)
            self._send(message)
        except EaselError as exc:
            if not (exc.dropped and self.resume and self.session):
                self._pending.pop(job.id, None)
                self._unsent.pop(job.id, None)
                raise

    def _send(self, message: dict) -> None:
        self._send_frame(json.dumps(message))

    def _send_frame(self, frame: str | bytes) -> None:
        if self._ws is None:
            raise EaselError("closed", _NOT_CONNECTED)
        try:
            self._ws.send(frame)
        except ConnectionClosed as exc:
            if self._ended_by:  # (after abort() it said "no close frame received or sent")
                raise EaselError("closed", f"the connection was ended by {self._ended_by}() on this client: call "
                                 "connect() for a new session") from None
            raise EaselError("closed", f"the connection to the Easel server closed: {exc}",
                             dropped=exc.rcvd is None) from None

    def _await_reply(self, kind: str) -> dict:
        self._wait(lambda: self._replies[kind])
        return self._replies[kind].popleft()

    def _wait(self, ready: Callable[[], object], deadline: float | None = None) -> bool:
        """Read messages until ``ready()``; False if ``deadline`` (``time.monotonic()``) passes first. When
        another thread is reading, wait for it to file what it reads (a UI thread's ``status`` reply read
        by the worker thread iterating events, say)."""
        me = threading.get_ident()
        while not ready():
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if left == 0:
                return False
            with self._read_cond:
                if self._reader not in (None, me):
                    self._read_cond.wait(0.5 if left is None else min(0.5, left))
                    continue
                nested = self._reader == me  # a resume's hello, read while resuming
                self._reader = me
            try:
                self._receive(left)
            finally:
                if not nested:
                    with self._read_cond:
                        self._reader = None
                        self._read_cond.notify_all()
        return True

    def _receive(self, timeout: float | None = None) -> None:
        """Read one message and file it under its job (or as a reply); nothing when ``timeout`` passes first."""
        ws = self._ws
        if ws is None:
            raise EaselError("closed", _NOT_CONNECTED)
        try:
            raw = ws.recv(timeout)
        except TimeoutError:
            return
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
            if self._ended_by:  # (it said "the Easel server closed the connection" after our own close())
                raise EaselError("closed", f"the connection was ended by {self._ended_by}() on this client") from None
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
            self._send_job(self._unsent[job], again=True)  # the submit was lost with the old connection
            return
        ends = kind in ("result", "cancelled") or (kind == "error" and message.get("ends_job", True))
        if kind == "error" and not ends and job is not None and job not in self._pending:
            return  # a refused cancel of a job that ended meanwhile: nobody waits for its events any more
        if ends or kind == "accepted":
            self._unsent.pop(job, None)
        if ends or kind == "started":
            self._ahead.pop(job, None)
        if ends:
            self._pending.pop(job, None)
        if kind == "error":
            error = EaselError(message["code"], message["message"], message.get("field"), job,
                               message.get("ends_job", True))
            if job is None:
                raise error
            self._jobs[job].append(error)
        elif kind == "accepted":
            self._ahead[job] = message["position"]
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
            self._jobs[job].append(Cancelled(job, message["while"], message.get("reason")))
        elif kind == "status":
            self._place(message)
            if not self._take_probe():  # (a probe's answer said the server is alive, and where the jobs stand)
                self._replies[kind].append(message)
        else:
            self._replies[kind].append(message)
        if job in self._abandoned:
            self._jobs.pop(job, None)
            if ends:
                self._abandoned.discard(job)

    def _place(self, status: dict) -> None:
        """File a ``Queued`` for each waiting job whose count of jobs ahead a ``status`` reply changed; a job
        it no longer lists as queued runs or has ended (a ``started`` missed in a resume): not asked about."""
        places = dict(zip(status["queued"], status.get("ahead", ())))  # (a server before `ahead`: no counts)
        for job, known in list(self._ahead.items()):  # (a copy: ``cancel`` on another thread takes jobs out)
            if job not in status["queued"]:
                self._ahead.pop(job, None)
            elif places.get(job, known) != known:
                self._ahead[job] = places[job]
                if self.queue_every is not None:
                    unread = self._jobs[job]
                    if unread and isinstance(unread[-1], Queued):
                        unread.pop()  # not read yet: only the newest count is worth showing
                    unread.append(Queued(job, places[job]))

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
