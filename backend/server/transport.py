"""The websocket transport: serving, origin checks, frame size, one ordered outbox per connection.

Each connection is a ``Session`` (``session.py``, the protocol without I/O) plus a ``Connection``
(its websocket and outbox). The transport feeds each incoming frame to the session, runs the
session's intake (decoding a job's pictures) on a thread, and writes the replies. Running jobs
report through the ``Worker`` (``worker.py``), whose messages reach the job's connection here.

Flow of a job: frame -> ``Session.receive`` -> ``Intake.build`` off the event loop -> ``Session.admit``
(queued, ``accepted``) -> ``Worker`` runs ``Engine.run`` on the GPU thread -> previews and results
encoded on the encoder thread -> ``EaselServer.deliver`` -> the connection's outbox.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import http
import json
import logging
import signal
import threading
import time
import weakref
from typing import Callable

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from backend import memory
from backend.config import Config, cleartext_warning
from backend.engine.engine import Engine
from backend.jobs import Job, JobQueue
from backend.server import messages
from backend.server.outbox import Outbox
from backend.server.session import ServerState, Session
from backend.server.worker import Worker
from backend.tls import server_context

log = logging.getLogger(__name__)

PRE_HELLO_BYTES = 256 * 1024  # largest message before a successful hello (the largest hello is about 70 kB)
# Close codes by which a client says it is done: its session ends at once. 1005 is a close frame without a
# code, what `WebSocket.close()` sends in browsers and in Node's `ws`. Not 1001 (going away): a browser sends
# it for a page that unloads, also on a reload, after which the page may resume its session.
CLIENT_DONE = (1000, 1005)
CLOSE_REASON_BYTES = 123  # the most a close frame's reason may hold (RFC 6455)


def close_reason(reason: str, fallback: str) -> str:
    """``reason`` if it fits a close frame, else ``fallback``."""
    return reason if len(reason.encode()) <= CLOSE_REASON_BYTES else fallback


def origin_refusal(origin: str, allowed: set[str]) -> tuple[str, str]:
    """The close reason a refused page reads, and the line the server logs: each says how to let the page in.
    A page opened from a file (origin `null`) is told to be served over http://localhost instead, since allowing
    `null` lets every file page in; one opened under the other loopback name of an allowed origin is told that."""
    scheme, _, rest = origin.partition("://")
    host, colon, port = rest.rpartition(":") if rest.count(":") == 1 else (rest, "", "")
    aliases = {"127.0.0.1": "localhost", "localhost": "127.0.0.1"}
    alias = f"{scheme}://{aliases[host]}{colon}{port}" if host in aliases else None
    shown_origin = origin[:200]
    if origin == "null":
        reason = "origin null (a file:// page or a sandboxed frame) is not allowed: serve the page over http://localhost"
        advice = ("a page opened from a file:// URL or in a sandboxed frame: serve the page over http://localhost "
                  "(e.g. `python3 -m http.server`) and allow that origin with `easel serve --allow-origin "
                  "http://localhost:PORT` or `[server] allowed_origins` (allowing \"null\" lets every file page in)")
    elif alias in allowed:
        reason = f"origin {origin} is not allowed; {alias} is: open the page as {alias}"
        advice = f"{alias} is allowed, a different origin to a browser: open the page as {alias}, or allow this one too"
    else:
        reason = f"origin {origin} is not allowed: add it with easel serve --allow-origin or [server] allowed_origins"
        advice = f"to let its pages connect, start easel serve with --allow-origin {shown_origin} or add it to " \
            "[server] allowed_origins"
    shorter = close_reason(f"origin {origin} is not allowed: add it to [server] allowed_origins",
                           "origin not allowed: see easel serve --allow-origin or [server] allowed_origins")
    return close_reason(reason, shorter), f"refused a connection from origin {shown_origin}: {advice}"


def _carries_token(text: str) -> bool:
    """Whether a refused hello tried a token at all."""
    try:
        return bool(json.loads(text).get("token"))
    except (ValueError, AttributeError, RecursionError):
        return True  # not a hello that can be read: count it as the failure it is


def url_host(host: str) -> str:
    """``host`` as a URL (or ``host:port``) writes it: an IPv6 literal in brackets."""
    return f"[{host}]" if ":" in host else host


def listen_address(scheme: str, host: str, port: int) -> str:
    """Where clients reach a server bound to ``host``, as the log says it: an IPv6 address in brackets (else the
    URL cannot be pasted), and for every address of the machine, that clients use one of them."""
    url = f"{scheme}://{url_host(host)}:{port}/"
    if host in ("", "0.0.0.0", "::"):
        return f"{url} (every address of this machine: clients use its name or LAN address)"
    return url


class Connection:
    """One websocket and its outbox (``outbox.py``: a byte budget), drained in order by a single writer task."""

    def __init__(self, ws: ServerConnection, budget: int, stall: float, on_stall: Callable[[Connection], None]):
        self.ws = ws
        self.closed = False
        self.outbox = Outbox(budget)
        self.stall, self.on_stall = stall, on_stall
        self._wake = asyncio.Event()
        self._stopping = False
        self._progress = 0  # messages written so far: the writer's headway
        self._watch: asyncio.TimerHandle | None = None
        self.writer: asyncio.Task | None = None

    def send(self, message: dict | bytes) -> None:
        """Queue a message (a dict becomes JSON); a no-op once the connection closed."""
        if self.closed:
            return
        if not self.outbox.put(message) and self._watch is None:
            # Over the budget with no preview left to drop: cut the client off unless it reads on.
            self._watch = asyncio.get_running_loop().call_later(self.stall, self._check_stall, self._headway())
        self._wake.set()

    def _headway(self) -> tuple[int, int]:
        """Messages written, and bytes still in the socket's write buffer: either changes while the client
        reads, even in the middle of one large frame."""
        transport = getattr(self.ws, "transport", None)
        return self._progress, transport.get_write_buffer_size() if transport is not None else 0

    def _check_stall(self, headway: tuple[int, int]) -> None:
        self._watch = None
        if self.closed or self.outbox.bytes <= self.outbox.budget:
            return
        if self._headway() == headway:  # nothing read for `stall` seconds while over the budget
            self.on_stall(self)
        else:
            self._watch = asyncio.get_running_loop().call_later(self.stall, self._check_stall, self._headway())

    async def write(self) -> None:
        """Send queued messages in order until the connection closes."""
        while True:
            message = self.outbox.take()
            if message is None:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self.ws.send(message)
            except ConnectionClosed:
                return
            self._progress += 1

    def stop_writer(self) -> None:
        """Send what is queued, then stop."""
        self.closed = True
        self._stopping = True
        self._wake.set()

    def drop(self) -> None:
        """Forget what is queued (the client is being cut off) and stop the writer."""
        self.outbox.clear()
        self.stop_writer()
        if self._watch is not None:
            self._watch.cancel()


class AuthThrottle:
    """Back-off for failed authentication, per peer address: each failure doubles the wait before that
    address's next attempt is read (``BASE`` s, at most ``CAP`` s); a success or ``FORGET`` s of quiet resets it."""

    BASE, CAP, FORGET, REMEMBER = 0.25, 8.0, 600.0, 4096  # seconds, seconds, seconds, addresses

    def __init__(self):
        self._failures: collections.OrderedDict[str, tuple[int, float]] = collections.OrderedDict()
        # A peer's lock and how many of its connections hold or wait for it; gone when none does, so that
        # connections from ever new addresses (IPv6, or any of 127.0.0.0/8) leave nothing behind.
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def delay(self, peer: str) -> float:
        count, last = self._failures.get(peer, (0, 0.0))
        if not count or time.monotonic() - last > self.FORGET:
            return 0.0
        return min(self.BASE * 2 ** (count - 1), self.CAP)

    @contextlib.asynccontextmanager
    async def turn(self, peer: str):
        """Attempts from one address are read one at a time, so parallel connections wait their turn."""
        lock, users = self._locks.get(peer, (None, 0))
        lock = lock or asyncio.Lock()
        self._locks[peer] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            users = self._locks[peer][1] - 1
            if users:
                self._locks[peer] = (lock, users)
            else:
                del self._locks[peer]

    def failed(self, peer: str) -> int:
        count = self._failures.pop(peer, (0, 0.0))[0] + 1
        self._failures[peer] = (count, time.monotonic())
        while len(self._failures) > self.REMEMBER:
            self._failures.popitem(last=False)
        return count

    def succeeded(self, peer: str) -> None:
        self._failures.pop(peer, None)


class EaselServer:
    """Serves the Easel protocol on one host/port with one GPU worker."""

    def __init__(self, config: Config, engine: Engine):
        self.config, self.engine = config, engine
        self.state = ServerState(config, engine)
        self.worker = Worker(engine, self.state.queue, self.deliver)
        self.port = config.port
        self.auth = AuthThrottle()
        self._hurry = False  # a second stop signal: the running job gets no grace
        self._connections: dict[Session, Connection] = {}
        # Handshakes from foreign origins, and their close reason (weak: a handshake that fails never reaches _handle)
        self._refused: weakref.WeakKeyDictionary[ServerConnection, str] = weakref.WeakKeyDictionary()

    @property
    def queue(self) -> JobQueue:
        return self.state.queue

    # -- lifecycle ----------------------------------------------------------------------------

    async def serve_forever(self, ready: threading.Event | None = None,
                            stop: asyncio.Future | None = None) -> None:
        """Serve until ``stop`` is done (or, without one, SIGTERM / SIGINT in the main thread), then shut
        down gracefully (``shutdown``)."""
        loop = asyncio.get_running_loop()
        restore = []  # Python-level signal handlers set here, to put back
        if stop is None:
            stop = loop.create_future()
            if threading.current_thread() is threading.main_thread():
                for signum in (signal.SIGTERM, signal.SIGINT):
                    try:
                        loop.add_signal_handler(signum, self._signalled, stop, signum)
                    except NotImplementedError:  # Windows' event loops: `easel serve` stopped there at start
                        restore.append((signum, signal.signal(
                            signum, lambda s, _frame: loop.call_soon_threadsafe(self._signalled, stop, s))))
        limits = self.config.limits
        tls = server_context(self.config.tls_cert, self.config.tls_key) if self.config.tls_cert else None
        if (warning := cleartext_warning(self.config)) is not None:
            log.warning(warning)
        # Frames up to twice the limit reach the session, which answers `frame_too_large` and keeps the
        # connection; beyond that the websocket layer closes it (1009) without reading the whole frame.
        async with serve(self._handle, self.config.host, self.config.port, process_request=self._check_request,
                         max_size=2 * limits.max_message_bytes, max_queue=64, ssl=tls,
                         compression=None) as server:  # images are compressed already: deflate only costs time
            self.port = next(iter(server.sockets)).getsockname()[1]
            worker = asyncio.create_task(self.worker.run_forever())
            pruner = asyncio.create_task(self._prune_kept())
            log.info("Easel listening on %s", listen_address("wss" if tls else "ws", self.config.host, self.port))
            if ready is not None:
                ready.set()
            try:
                reason = await stop
                if isinstance(reason, signal.Signals):
                    log.info("%s: shutting down", reason.name)
                server.close(close_connections=False)  # no new connections
                await self.shutdown()
            finally:
                pruner.cancel()
                worker.cancel()
                self.worker.stop()
                for signum, handler in restore:
                    signal.signal(signum, handler)
        log.info("Easel stopped")

    def _signalled(self, stop: asyncio.Future, signum: int) -> None:
        """The first SIGTERM / SIGINT stops the server; another, while a job has its grace, cancels that job now
        (the admin who pressed Ctrl-C twice did not mean to wait ``shutdown_grace`` seconds)."""
        if not stop.done():
            stop.set_result(signal.Signals(signum))
        elif not self._hurry:
            self._hurry = True
            log.info("%s again: not waiting for the running job", signal.Signals(signum).name)

    async def shutdown(self) -> None:
        """Take no new jobs, cancel the queued ones (``cancelled``), let the running job finish within
        ``shutdown_grace`` seconds or cancel it, deliver what is left, close every connection (1001)."""
        state, queue = self.state, self.state.queue
        state.closing = True
        waiting = queue.waiting()
        for job in waiting:
            queue.cancel(job)
            if job.end():
                self.deliver(job, [messages.cancelled(job.id, "queued", "shutting_down")])
        if waiting:
            log.info("cancelled %d queued job(s): the server is stopping", len(waiting))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.shutdown_grace
        running = queue.running
        if running is not None and self.config.shutdown_grace > 0 and not self._hurry:
            # else the log said nothing for up to shutdown_grace seconds, as if the server hung
            log.info("waiting up to %gs for job %s to finish (Ctrl-C or SIGTERM again: cancel it now)",
                     self.config.shutdown_grace, running.id)
        while queue.running is not None and loop.time() < deadline and not self._hurry:
            await asyncio.sleep(0.05)
        if queue.running is not None:
            log.info("cancelling job %s: the server is stopping", queue.running.id)
            queue.running.cancel_reason = "shutting_down"
            queue.running.cancel_event.set()
            deadline = loop.time() + 30  # it stops at its next step (a model still loading takes longer)
            while queue.running is not None and loop.time() < deadline:
                await asyncio.sleep(0.05)
        if running is not None and queue.running is running:
            log.warning("job %s did not stop in time", running.id)
        await asyncio.gather(*(self._close(connection, 1001, "server shutting down")
                               for connection in list(self._connections.values())))

    async def _prune_kept(self) -> None:
        """Drop kept endings as they pass ``resume_seconds`` (``Session.prune``), not only when a session's next
        job ends: a client that stays connected and idle would otherwise hold its last results for ever."""
        interval = max(self.config.resume_seconds / 4, 0.05)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            sessions = [*self.state.sessions, *self.state.detached.values()]
            if any([session.prune(now) for session in sessions]):  # a list: prune every one of them
                await asyncio.to_thread(memory.release)  # the results' pages go back to the system

    async def _close(self, connection: Connection, code: int, reason: str) -> None:
        """Send what is queued (a few seconds at most), then close with ``code`` and ``reason``."""
        connection.stop_writer()
        if connection.writer is not None:
            try:
                await asyncio.wait_for(asyncio.shield(connection.writer), 5)
            except asyncio.TimeoutError:
                connection.drop()
        await connection.ws.close(code, reason)

    def allowed_origins(self) -> set[str]:
        """The server's own origins; any other browser page is refused."""
        hosts = {self.config.host, "127.0.0.1", "localhost"} if self.config.host in ("127.0.0.1", "localhost") \
            else {self.config.host}
        return {f"{scheme}://{url_host(host)}:{self.port}" for host in hosts for scheme in ("http", "https")}

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """The handshake's checks: room for one more connection, and the browser origin."""
        if len(self._connections) >= self.config.limits.max_connections:  # each holds a socket and buffers
            log.warning("refused a connection: %d are open (max_connections)", len(self._connections))
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE,
                                      f"too many connections ({self.config.limits.max_connections} open, this server's "
                                      "max_connections): try again when another client has disconnected\n")
        # A web page the user happens to visit could otherwise drive the GPU through the browser.
        origins = request.headers.get_all("Origin")
        if len(origins) > 1:  # which one would the browser mean? Refuse rather than guess
            log.warning("refused a connection with %d Origin headers", len(origins))
            return connection.respond(http.HTTPStatus.FORBIDDEN, "more than one Origin header\n")
        origin = origins[0] if origins else None
        allowed = self.allowed_origins() | set(self.config.allowed_origins)
        if origin is not None and origin not in allowed:
            # A browser shows a page nothing of a refused handshake (an HTTP 403 is a bare close 1006), so the
            # handshake completes and `_handle` closes at once with 1008 and the reason, reading nothing.
            reason, line = origin_refusal(origin, allowed)
            log.warning("%s", line)
            self._refused[connection] = reason
        return None

    # -- connections --------------------------------------------------------------------------

    def deliver(self, job: Job, messages: list) -> None:
        """Send a job's messages to the connection that submitted it, if it is still there. A job's ending
        is also kept a while, for a client whose connection drops (``Session.keep``, ``hello.resume``)."""
        if any(isinstance(m, dict) and m.get("type") in ("result", "error", "cancelled") for m in messages):
            job.owner.keep(job.id, messages)
        connection = self._connections.get(job.owner)
        if connection is not None:
            for message in messages:
                connection.send(message)

    async def _handle(self, ws: ServerConnection) -> None:
        if (refusal := self._refused.pop(ws, None)) is not None:  # a foreign browser origin: no session
            ws.protocol.max_message_size = PRE_HELLO_BYTES  # nothing it sends is read: let none of it be large
            await ws.close(1008, refusal)
            return
        config = self.config
        session = self.state.open()
        peer = str(ws.remote_address[0]) if ws.remote_address else "?"

        def cut_off(connection: Connection) -> None:
            budget = connection.outbox.budget
            log.warning("disconnecting %s: it read nothing for %gs with %d bytes waiting (budget %d); its jobs "
                        "are cancelled", peer, connection.stall, connection.outbox.bytes, budget)
            session.close()
            connection.drop()
            asyncio.ensure_future(ws.close(1008, f"not reading: over the {budget}-byte outbox for "
                                              f"{connection.stall:g}s"))

        connection = Connection(ws, config.limits.max_outbox_bytes, config.slow_reader_seconds, cut_off)
        self._connections[session] = connection
        connection.writer = asyncio.create_task(connection.write())
        loop = asyncio.get_running_loop()
        hello_timer = loop.call_later(config.hello_timeout, lambda: session.greeted or asyncio.ensure_future(
            ws.close(1008, f"no hello within {config.hello_timeout:g}s")))
        # Until its hello succeeds a client may send only small messages: the websocket layer reads a whole
        # message before the session sees it, so a stranger (no token yet) could make the server hold twice
        # max_message_bytes per connection. Its frame-size limit is read per frame, so it can change here.
        full_size = 2 * config.limits.max_message_bytes
        ws.protocol.max_message_size = min(PRE_HELLO_BYTES, full_size)
        refused = cut = False
        try:
            async for raw in ws:
                greeted = session.greeted
                if config.token and not session.greeted and isinstance(raw, str):
                    reply = await self._authenticate(session, peer, raw)
                else:
                    reply = session.receive(raw)
                if session.greeted and not greeted and reply.resume is None:
                    # websockets' own "connection open" names nobody: which client, from where
                    name = session.client if session.client.isprintable() else repr(session.client)  # no forged lines
                    log.info("%s connected from %s", name or "a client", peer)
                if reply.intake is not None:
                    # Decoding takes long: off the loop, but awaited, so this connection's requests are
                    # answered in order while the other connections go on.
                    await asyncio.to_thread(reply.intake.build)
                    reply = session.admit(reply.intake)
                if reply.resume is not None:  # this connection takes over a dropped one's session
                    del self._connections[session]
                    session = reply.resume
                    old = self._connections.get(session)
                    if old is not None:  # its old connection is still open here: it goes
                        old.drop()
                        asyncio.ensure_future(old.ws.close(1008, "session resumed on another connection"))
                    self._connections[session] = connection
                    log.info("%s resumed a session with %d job(s) queued or running", peer,
                             len(self.queue.owned_by(session)))
                if session.greeted:
                    ws.protocol.max_message_size = full_size
                for message in reply.send:
                    connection.send(message)
                if reply.close:
                    refused = True
                    break
        except ConnectionClosed:
            pass
        finally:
            hello_timer.cancel()
            cut = connection.closed  # cut off as a slow reader, or its session resumed elsewhere
            if self._connections.get(session) is connection:  # else the session lives on elsewhere
                del self._connections[session]
                if session.greeted and not refused and not cut and not self.state.closing \
                        and ws.close_code not in CLIENT_DONE:  # dropped, not closed: the client may come back
                    session.detach(loop.call_later)
                else:
                    session.close()
            connection.stop_writer()
            await connection.writer  # flushes what was queued, such as the error that explains a refusal
        if refused:
            await ws.close(1008, "unauthorized")

    async def _authenticate(self, session: Session, peer: str, raw: str):
        """A text frame before a successful hello on a server with a token: slowed after failures."""
        async with self.auth.turn(peer):
            delay = self.auth.delay(peer)
            if delay:
                await asyncio.sleep(delay)
            reply = session.receive(raw)
            if session.greeted:
                self.auth.succeeded(peer)
            elif reply.close and not _carries_token(raw):
                # Nothing was guessed: a page or a tool that (re)connects before its user has given it the token
                # must not slow down the right token of every other client on the same address (loopback).
                log.warning("refused a hello without a token from %s: this server needs one", peer)
            elif reply.close:  # unauthorized; the token itself is never logged
                failures = self.auth.failed(peer)
                log.warning("failed authentication from %s (%d in a row; its next attempt waits %gs)", peer,
                            failures, self.auth.delay(peer))
            return reply


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
        return f"{'wss' if self.server.config.tls_cert else 'ws'}://127.0.0.1:{self.server.port}/"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._stop = self._loop.create_future()
        self._loop.run_until_complete(self.server.serve_forever(self._ready, self._stop))

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(60):
            raise RuntimeError("the Easel server did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(lambda: self._stop.done() or self._stop.set_result(None))
        self._thread.join(30)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
