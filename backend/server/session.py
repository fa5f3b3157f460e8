"""The protocol core of one connection, without I/O: frames in, replies out.

Modelled on the websockets library's split of protocol state from I/O: ``Session.receive`` takes one
frame as it came off the socket (text or bytes) and returns a ``Reply``: the messages to send back on
this connection, whether to close it, and at most one ``Intake``. An intake decodes a job's pictures,
which can take seconds, so the transport runs ``Intake.build`` on a thread and then hands it back to
``Session.admit``, which queues the job or sends its refusal. Nothing here awaits, reads a socket or
starts a thread: tests drive a session with plain calls.

What all connections share (config, engine, the job queue, who is connected, the sessions of dropped
connections kept for a resume) is a ``ServerState``. A session outlives its connection when that
drops: ``detach`` keeps its jobs running and their endings (``keep``) until a ``hello.resume`` takes
it over (``redeliver`` sends each missed ending once) or ``resume_seconds`` pass.
Messages of running jobs (started, progress, result ...) are the worker's (``worker.py``).
"""

from __future__ import annotations

import collections
import hmac
import logging
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, ClassVar

from backend.config import Config
from backend.intake import build_edit_job, build_preprocess_job
from backend.jobs import Job, JobQueue
from backend.presets import apply_preset
from backend.server import messages
from shared import job as protocol
from shared import loras as lora_rules
from shared import rules
from shared.errors import shown
from shared.images import ImageData, decode_frame
from shared.messages import CLIENT_MESSAGES, PROTOCOL_VERSION, ProtocolError, decode_json, validate

if TYPE_CHECKING:
    from backend.engine.engine import Engine
    from backend.engine.job import EditJob, PreprocessJob

log = logging.getLogger(__name__)

CLIENT_ROLES = ("image", "mask", "control", "reference")  # frame roles a client may upload
# A session keeps the endings of at most this many jobs (refusals included: a flood of bad submits must not
# grow it), and remembers having received this many job ids (a few dozen bytes each).
KEPT_ENDINGS = 1024
RECEIVED_KEPT = 4096
MAX_UPLOADS = 1024  # unused uploads one connection may hold, however small: each costs bookkeeping


class Uploads(dict):
    """A connection's unused uploads by image id, with their payload bytes kept as a running total.

    Summing the payloads on every upload made a flood of tiny frames quadratic on the event loop (100,000
    one-byte frames kept it busy for minutes, every other client waiting). An intake thread pops the
    frames its request names (``backend.intake``), so the total is adjusted in ``pop`` itself."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __setitem__(self, key: str, image: ImageData) -> None:
        self.pop(key, None)
        super().__setitem__(key, image)
        self.bytes += len(image.data)

    def pop(self, key: str, default=None):
        image = super().pop(key, None)
        if image is None:
            return default
        self.bytes = max(0, self.bytes - len(image.data))  # (never below 0 if a clear came in between)
        return image

    def clear(self) -> None:
        super().clear()
        self.bytes = 0


@dataclass(eq=False)
class ServerState:
    """What every connection of one server shares."""

    config: Config
    engine: Engine
    queue: JobQueue = field(default_factory=JobQueue)
    sessions: set[Session] = field(default_factory=set)  # the open connections
    closing: bool = False  # the server is shutting down: no new jobs
    detached: dict[str, Session] = field(default_factory=dict)  # sessions of dropped connections, by token

    def open(self) -> Session:
        """A session for a new connection."""
        session = Session(self)
        self.sessions.add(session)
        return session

    def clients(self) -> int:
        """Connected clients: sessions that said a successful ``hello`` (not bare sockets)."""
        return sum(1 for session in self.sessions if session.greeted)


@dataclass(eq=False)
class Intake:
    """A job request whose pictures still have to be decoded and checked (``build``, off the event loop)."""

    request: protocol.Job | protocol.PreprocessJob
    builder: Callable[[], EditJob | PreprocessJob]  # raises ProtocolError for what the client got wrong
    work: EditJob | PreprocessJob | None = None
    refusal: dict | None = None  # the error message to send instead of ``accepted``

    def build(self) -> None:
        """Decode and check the job; blocking (pictures can be large), and safe on any thread."""
        try:
            self.work = self.builder()
        except ProtocolError as exc:
            exc.job = self.request.id
            self.refusal = messages.error(exc)
        except Exception as exc:  # a bug must cost one answer, not the connection or the server
            log.exception("failed to take in job %s", self.request.id)
            self.refusal = messages.internal_error(self.request.id, exc)  # the job ends with this error


@dataclass
class Reply:
    """What the transport does after one incoming frame."""

    send: list[dict | bytes] = field(default_factory=list)  # to this connection, in order
    close: bool = False  # close the connection (1008, unauthorized) once ``send`` went out
    resume: Session | None = None  # a kept session this connection takes over (hello.resume)
    intake: Intake | None = None  # run ``intake.build`` off the event loop, then ``Session.admit(intake)``


class Session:
    """One client connection's protocol state: greeted or not, its uploads, and (through the queue) its jobs."""

    def __init__(self, state: ServerState):
        self.state = state
        self.greeted = False
        self.client = ""  # `hello.client`, for the server's log
        self.given: frozenset[str] = frozenset()  # the keys of the message being handled, as the client sent it
        self.uploads = Uploads()
        self.token = secrets.token_hex(16)  # `welcome.session`: what a reconnecting client presents
        # The endings (result frames + result, error, cancelled) of this session's jobs, kept for a client
        # whose connection drops before or just after they went out: job id -> (messages, bytes, when).
        self.kept: collections.OrderedDict[str, tuple[list, int, float]] = collections.OrderedDict()
        self.expiry = None  # while detached: the timer that ends the session
        # The ids of the jobs this session took a submit or preprocess for (the newest RECEIVED_KEPT): on a
        # resume they tell a job whose ending expired from one whose submit was lost with the connection.
        self.received: collections.OrderedDict[str, None] = collections.OrderedDict()

    def keep(self, job_id: str, ending: list) -> None:
        """Keep a job's ending for a while (``resume_seconds``, ``max_kept_bytes``), oldest dropped first."""
        now = time.monotonic()
        size = sum(len(m) if isinstance(m, bytes) else
                   200 + sum(200 + len(image.get("data", "")) for image in m.get("images", ())) for m in ending)
        self.kept[job_id] = (ending, size, now)
        self.prune(now)

    def prune(self, now: float) -> bool:
        """Drop kept endings older than ``resume_seconds`` or over ``max_kept_bytes``, oldest first; True when
        some went. Also called on a timer (the transport's): an idle session must not hold its last results."""
        config = self.state.config
        total, before = sum(entry[1] for entry in self.kept.values()), len(self.kept)
        while self.kept:
            oldest_id, (_, oldest_size, when) = next(iter(self.kept.items()))
            if total <= config.limits.max_kept_bytes and now - when <= config.resume_seconds \
                    and len(self.kept) <= KEPT_ENDINGS:
                break
            del self.kept[oldest_id]
            total -= oldest_size
        return len(self.kept) < before

    def redeliver(self, pending: list[str]) -> list:
        """The kept endings of ``pending`` jobs, each sent once. A job neither kept nor still queued or running
        gets ``not_received`` when its submit never arrived (the client sends it again), else ``unknown_job``
        (its ending expired)."""
        out = []
        for job_id in dict.fromkeys(pending):
            if job_id in self.kept:
                out.extend(self.kept.pop(job_id)[0])
            elif job_id not in self.received:
                out.append(messages.error(ProtocolError(
                    "not_received", f"job {job_id!r} never arrived here: its submit was lost with the connection; "
                    "send it again", "pending", job_id)))
            elif self.state.queue.find(self, job_id) is None:
                out.append(messages.error(ProtocolError(
                    "unknown_job", f"no ending of job {job_id!r} is kept: it went out on an earlier resume (a kept "
                    f"ending does on one only), or it was let go ({self.state.config.resume_seconds:g}s after it "
                    "was sent, or for max_kept_bytes)",
                    "pending", job_id)))
        return out

    # -- what the transport calls --------------------------------------------------------------

    def receive(self, raw: str | bytes) -> Reply:
        """Handle one frame. Never raises: whatever a client sends gets at worst an ``error``."""
        try:
            # (the websocket layer closes the connection only at twice this size)
            rules.check_message_size(len(raw) if isinstance(raw, bytes) else len(raw.encode()),
                                     self.state.config.limits.max_message_bytes)
            if isinstance(raw, bytes):
                if raw[:1] == b"{":  # never a frame (its length prefix would be over 2 GB): JSON sent as bytes
                    hint = "this binary frame looks like a JSON message: send JSON messages as text frames"
                    if not self.greeted:
                        raise ProtocolError("hello_required", f"send `hello` before anything else ({hint})")
                    raise ProtocolError("bad_image", f"binary frames carry images; {hint}")
                self._require_hello()
                self._upload(raw)
                return Reply()
            decoded = decode_json(raw)
            message = validate(decoded, CLIENT_MESSAGES)
            self.given = frozenset(decoded)  # the fields the client set: a preset fills the others
            if message["type"] != "hello":
                self._require_hello()
            return self.HANDLERS[message["type"]](self, message)
        except ProtocolError as exc:
            if exc.job is not None and exc.ends_job and self._live(exc.job):
                # A refused request that reuses the id of a job still queued or running (its fields are
                # checked before `duplicate_job`): the error ends the request, not that job, which goes on.
                exc.ends_job = False
            error = messages.error(exc)
            if exc.job is not None and exc.ends_job:  # a refused job's ending: kept like the others
                self.keep(exc.job, [error])
            return Reply([error], close=exc.code == "unauthorized")
        except Exception as exc:  # a bug must cost one answer, not the connection or the server
            log.exception("failed to handle a message")
            return Reply([messages.internal_error(None, exc)])

    def admit(self, intake: Intake) -> Reply:
        """Queue a job that ``intake.build`` took in, or send why it was refused."""
        if intake.refusal is not None:
            self.keep(intake.request.id, [intake.refusal])  # a refusal is an ending: kept like the others
            return Reply([intake.refusal])
        if self.state.closing:
            # The server began to stop while the pictures were decoded: the shutdown has already cancelled
            # the queue, so a job queued now would get `accepted` and then never end.
            refusal = messages.error(ProtocolError("shutting_down", "the server is shutting down and takes no new "
                                                   "jobs", None, intake.request.id))
            self.keep(intake.request.id, [refusal])  # an ending like any other refusal
            return Reply([refusal])
        try:
            # Again: other connections' jobs may have been queued while this one's pictures were decoded (each
            # connection decodes on its own thread), and each waiting job holds its pictures.
            self._room_for(intake.request.id)
        except ProtocolError as exc:
            refusal = messages.error(exc)
            self.keep(intake.request.id, [refusal])
            return Reply([refusal])
        job = Job(intake.request, intake.work, self)
        return Reply([messages.accepted(job.id, self.state.queue.put(job))])

    def detach(self, call_later: Callable) -> None:
        """The connection dropped without a goodbye: the jobs go on and their endings are kept for
        ``resume_seconds``, for a client that reconnects with ``hello.resume``; then the session closes."""
        self.state.sessions.discard(self)
        self.state.detached[self.token] = self
        self.uploads.clear()
        self.expiry = call_later(self.state.config.resume_seconds, self.expire)

    def expire(self) -> None:
        if self.state.detached.get(self.token) is self:
            self.close()

    def close(self) -> None:
        """The client left: its queued jobs go, its running job stops at the next step, its uploads are dropped."""
        if self.state.detached.get(self.token) is self:
            del self.state.detached[self.token]
        self.kept.clear()
        self.state.sessions.discard(self)
        queue = self.state.queue
        for job in queue.owned_by(self):
            queue.cancel(job)
            if job is not queue.running:
                job.end()
        self.uploads.clear()

    # -- handlers, one per client message type ------------------------------------------------

    def _hello(self, message: dict) -> Reply:
        config, engine = self.state.config, self.state.engine
        # compare_digest: the time taken must not tell how much of a guessed token was right
        if config.token and not hmac.compare_digest(message.get("token", "").encode(), config.token.encode()):
            raise ProtocolError("unauthorized", "this server needs a token, and the one sent is missing or wrong",
                                "token")
        if message["protocol"] != PROTOCOL_VERSION:
            raise ProtocolError("unsupported_protocol", f"this server speaks protocol {PROTOCOL_VERSION}, "
                                f"the client {shown(message['protocol'])}", "protocol")
        if message.get("pending") and "resume" not in message:
            # Without `resume` this hello starts a new session, whose welcome would leave the jobs named waiting
            # for endings that never come: say so instead.
            raise ProtocolError("invalid_field", "`pending` names jobs of the session in `resume`; this hello has no "
                                "`resume` (send it with the `welcome.session` of the dropped connection, or say "
                                "hello without `pending` for a new session)", "pending")
        preprocessors = engine.preprocessors.available()
        engine.refresh_folders()
        if "resume" in message and self.greeted and message["resume"] != self.token:
            # Taking another session over would orphan this one: its jobs would run on with nowhere to send
            # their endings, kept (and counted) for ever.
            raise ProtocolError("invalid_field", "this connection already has a session: resume on a new connection, "
                                "in its first hello", "resume")
        if "resume" in message and self.greeted:
            # Its own id: nothing to take over. Said as such, not as an expiry the client would look for.
            raise ProtocolError("unknown_session", "this connection already holds that session (resumed or "
                                "greeted here): nothing to resume; resume only on a new connection, after a drop",
                                "resume")
        if "resume" in message:
            # A dropped connection's session, or one whose old connection the server still thinks is open
            # (the client noticed the drop first): the transport closes that old connection.
            kept = self.state.detached.pop(message["resume"], None) or next(
                (s for s in self.state.sessions if s.token == message["resume"] and s is not self), None)
            if kept is None:
                # Ended sessions leave no trace, so every way a session ends is named.
                raise ProtocolError("unknown_session", "no session to resume by that id: its client closed it "
                                    "(close code 1000, or a close frame without a code, ends a session), it "
                                    f"expired (no resume within {config.resume_seconds:g}s of the drop) or the "
                                    "server restarted; say hello without `resume`", "resume")
            if kept.expiry is not None:
                kept.expiry.cancel()
                kept.expiry = None
            self.state.sessions.discard(self)
            self.state.sessions.add(kept)
            kept.greeted = True
            welcome = messages.welcome(config, str(engine.device), preprocessors, engine.registry.default,
                                       engine.upscalers.names(), kept.token, resumed=True,
                                       loras=engine.loras.describe(), embeddings=engine.embeddings.listing())
            return Reply([welcome, *kept.redeliver(message.get("pending", []))], resume=kept)
        self.greeted = True
        self.client = str(message.get("client", ""))
        return Reply([messages.welcome(config, str(engine.device), preprocessors, engine.registry.default,
                                       engine.upscalers.names(), self.token, loras=engine.loras.describe(),
                                       embeddings=engine.embeddings.listing())])

    def _submit(self, message: dict) -> Reply:
        registry, limits = self.state.engine.registry, self.state.config.limits
        request = protocol.Job.from_message(message, validate=False)  # receive validated it
        engine, given = self.state.engine, self.given
        if not _names_known(request, registry.names(), engine.loras.files):
            engine.refresh_folders(at_most_every=1.0)  # a file added since this client's hello
        names, default = registry.names(), registry.default
        upscalers = engine.upscalers

        def build() -> EditJob:
            return build_edit_job(request, self.uploads, limits, names, default, upscalers.names(),
                                  upscalers.default, lambda job: apply_preset(job, given, self.state.config.presets),
                                  engine.loras.families(), registry.family, registry.capabilities,
                                  engine.usable_embeddings,
                                  (self.state.config.skipped_models, self.state.config.skipped_loras))

        return self._take(request, build)

    def _preprocess(self, message: dict) -> Reply:
        limits = self.state.config.limits
        request = protocol.PreprocessJob.from_message(message, validate=False)
        return self._take(request, lambda: build_preprocess_job(request, self.uploads, limits))

    def _cancel(self, message: dict) -> Reply:
        queue = self.state.queue
        job = queue.find(self, message["job"])
        if job is None or job.ended:
            raise ProtocolError("unknown_job", f"no queued or running job {message['job']!r} on this connection",
                                "job", message["job"], ends_job=False)
        if queue.cancel(job) == "queued" and job.end():
            ending = messages.cancelled(job.id, "queued")
            self.keep(job.id, [ending])  # an ending like any other: kept for a client whose connection drops
            return Reply([ending])
        return Reply()  # a running job ends with `cancelled` (or its result) from the worker

    def _status(self, message: dict) -> Reply:
        state = self.state
        own = state.queue.owned_by(self)
        running = state.queue.running if state.queue.running in own else None
        queued = [job for job in own if job is not running]
        # `accepted.position` only held as things stood then: other connections' later jobs may have gone ahead
        order = {job: index for index, job in enumerate(state.queue.waiting())}
        ahead = [order[job] + (1 if state.queue.running else 0) for job in queued]
        return Reply([messages.status(str(state.engine.device), running.id if running else None,
                                      [job.id for job in queued], len(state.queue),
                                      state.clients(), state.engine.registry.loaded_names(), ahead)])

    def _models(self, message: dict) -> Reply:
        self.state.engine.refresh_folders()
        registry = self.state.engine.registry
        return Reply([messages.models(registry.default, registry.describe(),
                                      self.state.engine.upscalers.describe(), self.state.engine.loras.describe(),
                                      self.state.config.presets, self.state.engine.embeddings.listing())])

    # An explicit table, so the handled types are greppable and a test can hold them to CLIENT_MESSAGES.
    HANDLERS: ClassVar[dict[str, Callable[[Session, dict], Reply]]] = {
        "hello": _hello, "submit": _submit, "preprocess": _preprocess, "cancel": _cancel, "status": _status,
        "models": _models,
    }

    # -- helpers ------------------------------------------------------------------------------

    def _live(self, job_id: str) -> bool:
        """Whether this connection has a queued or running job of that id."""
        job = self.state.queue.find(self, job_id)
        return job is not None and not job.ended

    def _require_hello(self) -> None:
        if not self.greeted:
            raise ProtocolError("hello_required", "send `hello` before anything else")

    def _upload(self, raw: bytes) -> None:
        """Keep an uploaded picture until a job names it, within this connection's upload budget."""
        header, image = decode_frame(raw)
        if header["role"] not in CLIENT_ROLES:
            raise ProtocolError("invalid_field", f"clients upload roles {', '.join(CLIENT_ROLES)}, not "
                                f"{header['role']!r}", "role")
        self.uploads.pop(header["image"], None)  # the same id again replaces the earlier upload
        budget = self.state.config.limits.upload_budget
        # (both said "too many unused uploads", leaving a client to guess which limit, and how far off it was)
        if self.uploads.bytes + len(image.data) > budget:
            raise ProtocolError("limit_exceeded", f"this {len(image.data)}-byte upload would take this connection's "
                                f"unused uploads past {budget} bytes ({self.uploads.bytes} held), this server's "
                                "most: name the pictures sent in a submit first (each serves one request), or "
                                "reconnect", header["role"])
        if len(self.uploads) >= MAX_UPLOADS:
            raise ProtocolError("limit_exceeded", f"this connection holds {MAX_UPLOADS} unused uploads, the most it "
                                "may: name them in a submit first (each serves one request), or reconnect",
                                header["role"])
        self.uploads[header["image"]] = image

    def _take(self, request: protocol.Job | protocol.PreprocessJob,
              build: Callable[[], EditJob | PreprocessJob]) -> Reply:
        """The checks that need no pictures; the rest is the intake's, off the event loop."""
        request.id = request.id or uuid.uuid4().hex[:16]
        self.received[request.id] = None
        self.received.move_to_end(request.id)
        while len(self.received) > RECEIVED_KEPT:
            self.received.popitem(last=False)
        if self.state.closing:
            raise ProtocolError("shutting_down", "the server is shutting down and takes no new jobs", None, request.id)
        queue = self.state.queue
        if queue.find(self, request.id):
            raise ProtocolError("duplicate_job", f"job {request.id} is still queued or running (this submit is "
                                "refused; that job goes on)", "job", request.id, ends_job=False)
        # The id is the client's again (an id may be reused once its job ended): the old job's kept ending
        # must not answer a resume that asks for the new one.
        self.kept.pop(request.id, None)
        self._room_for(request.id)
        return Reply(intake=Intake(request, build))

    def _room_for(self, job_id: str) -> None:
        """Refuse a job past ``max_queued_per_client`` or ``max_queued``."""
        queue, limits = self.state.queue, self.state.config.limits
        if len(queue.owned_by(self)) >= limits.max_queued_per_client:
            raise ProtocolError("limit_exceeded", f"this connection has {limits.max_queued_per_client} jobs queued or "
                                "running, this server's most (max_queued_per_client); submit more when some have "
                                "ended", "job", job_id)
        if len(queue) >= limits.max_queued:  # each waiting job holds its decoded pictures
            raise ProtocolError("limit_exceeded", f"the server's queue is full ({limits.max_queued} jobs waiting); "
                                "try again when some have run", "job", job_id)


def _names_known(request: protocol.Job, models, loras) -> bool:
    """Whether every model and LoRA ``request`` names is one the server has (a malformed tag counts as
    known: the intake says what is wrong with it)."""
    if request.model is not None and request.model not in models:
        return False
    named = [lora.name for lora in request.loras]
    try:
        named += [name for name, _ in lora_rules.split_prompt(request.prompt)[1]]
    except ProtocolError:
        pass
    return all(name in loras for name in named)
