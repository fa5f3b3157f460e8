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
import http
import json
import logging
import threading

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from backend.config import Config
from backend.engine.engine import Engine
from backend.jobs import Job, JobQueue
from backend.server.session import ServerState, Session
from backend.server.worker import Worker

log = logging.getLogger(__name__)


class Connection:
    """One websocket and its outbox, drained in order by a single writer task."""

    def __init__(self, ws: ServerConnection):
        self.ws = ws
        self.closed = False
        self._outbox: asyncio.Queue[str | bytes | None] = asyncio.Queue()

    def send(self, message: dict | bytes) -> None:
        """Queue a message (a dict becomes JSON); a no-op once the connection closed."""
        if not self.closed:
            self._outbox.put_nowait(message if isinstance(message, bytes) else json.dumps(message))

    async def write(self) -> None:
        """Send queued messages in order until the connection closes."""
        while True:
            message = await self._outbox.get()
            if message is None:
                return
            try:
                await self.ws.send(message)
            except ConnectionClosed:
                return

    def stop_writer(self) -> None:
        """Send what is queued, then stop (the writer ends at the marker)."""
        self.closed = True
        self._outbox.put_nowait(None)


class EaselServer:
    """Serves the Easel protocol on one host/port with one GPU worker."""

    def __init__(self, config: Config, engine: Engine):
        self.config, self.engine = config, engine
        self.state = ServerState(config, engine)
        self.worker = Worker(engine, self.state.queue, self.deliver)
        self.port = config.port
        self._connections: dict[Session, Connection] = {}

    @property
    def queue(self) -> JobQueue:
        return self.state.queue

    # -- lifecycle ----------------------------------------------------------------------------

    async def serve_forever(self, ready: threading.Event | None = None,
                            stop: asyncio.Future | None = None) -> None:
        limits = self.config.limits
        # Frames up to twice the limit reach the session, which answers `frame_too_large` and keeps the
        # connection; beyond that the websocket layer closes it (1009) without reading the whole frame.
        async with serve(self._handle, self.config.host, self.config.port, process_request=self._check_origin,
                         max_size=2 * limits.max_message_bytes, max_queue=64,
                         compression=None) as server:  # images are compressed already: deflate only costs time
            self.port = next(iter(server.sockets)).getsockname()[1]
            worker = asyncio.create_task(self.worker.run_forever())
            log.info("Easel listening on ws://%s:%d/", self.config.host, self.port)
            if ready is not None:
                ready.set()
            try:
                await (stop if stop is not None else asyncio.Future())
            finally:
                worker.cancel()
                self.worker.stop()

    def allowed_origins(self) -> set[str]:
        """The server's own origins; any other browser page is refused."""
        hosts = {self.config.host, "127.0.0.1", "localhost"} if self.config.host in ("127.0.0.1", "localhost") \
            else {self.config.host}
        hosts = {f"[{host}]" if ":" in host else host for host in hosts}  # IPv6 literals are bracketed
        return {f"{scheme}://{host}:{self.port}" for host in hosts for scheme in ("http", "https")}

    def _check_origin(self, connection: ServerConnection, request: Request) -> Response | None:
        # A web page the user happens to visit could otherwise drive the GPU through the browser.
        origin = request.headers.get("Origin")
        if origin is not None and origin not in self.allowed_origins() | set(self.config.allowed_origins):
            log.warning("refused a connection from origin %s", origin)
            return connection.respond(http.HTTPStatus.FORBIDDEN, f"origin {origin} is not allowed\n")
        return None

    # -- connections --------------------------------------------------------------------------

    def deliver(self, job: Job, messages: list) -> None:
        """Send a job's messages to the connection that submitted it, if it is still there."""
        connection = self._connections.get(job.owner)
        if connection is not None:
            for message in messages:
                connection.send(message)

    async def _handle(self, ws: ServerConnection) -> None:
        session = self.state.open()
        connection = Connection(ws)
        self._connections[session] = connection
        writer = asyncio.create_task(connection.write())
        refused = False
        try:
            async for raw in ws:
                reply = session.receive(raw)
                if reply.intake is not None:
                    # Decoding takes long: off the loop, but awaited, so this connection's requests are
                    # answered in order while the other connections go on.
                    await asyncio.to_thread(reply.intake.build)
                    reply = session.admit(reply.intake)
                for message in reply.send:
                    connection.send(message)
                if reply.close:
                    refused = True
                    break
        except ConnectionClosed:
            pass
        finally:
            del self._connections[session]
            session.close()
            connection.stop_writer()
            await writer  # flushes what was queued, such as the error that explains a refusal
        if refused:
            await ws.close(1008, "unauthorized")


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
