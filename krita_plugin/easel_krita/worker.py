"""The network side: one thread that owns the websocket connection and runs jobs.

Websocket I/O, image conversion and encoding all run on this thread; results come back to the
UI thread as Qt signals (queued across threads), so Krita never waits on the network.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
import uuid
from typing import Callable

from . import liveness, plan, protocol
from .protocol import capabilities
from .qt import QObject, QTimer, pyqtSignal

RECONNECT_MS = 3000
HEARTBEAT_S = 5  # an idle connection asks for the server's status this often, to notice it has gone
WATCH_MS = 250  # how often the UI thread looks at the server's silence (liveness)
# s: how long a job whose connection dropped (a Wi-Fi blink) tries to resume it. The server keeps the
# session and the job's ending far longer; this bounds the wait before the docker says it is lost.
RESUME_S = 15.0


def sentence(exc: BaseException) -> str:
    """An exception as something a painter can read (no traceback, no class names)."""
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    message = message[0].upper() + message[1:]
    return message if message.endswith((".", "!", "?")) else message + "."


class Worker(QObject):
    """A connection to the Easel server, with a job thread and automatic reconnects.

    Signals carry the job id first; ``job_event`` kinds are accepted (jobs ahead in the queue), queued
    (jobs ahead now, each time that count changes while the job waits: the worker asks every QUEUE_EVERY s),
    started ((steps, (width, height)): denoising steps per image and the size the model works at),
    progress ((step, total)), preview (QImage), result (whatever ``finish`` returned), error (a
    sentence) and cancelled (the server's ``reason`` when it cancelled the job itself, else None).
    ``models_changed`` carries a fresh ``models`` reply.
    """

    # "connected" | "connecting" | "disconnected" | "not_responding" (connected, but silent), a sentence
    state_changed = pyqtSignal(str, str)
    # The same, once ``state`` / ``message`` hold it (UI thread). What a widget made later listens to: it reads
    # ``state`` first, and a state_changed sent before it listened (queued from the worker thread, but not
    # yet in ``state``) would never reach it.
    state_shown = pyqtSignal(str, str)
    job_event = pyqtSignal(str, str, object)
    models_changed = pyqtSignal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.url, self.token, self.cert = "", "", ""  # until configure() names a server
        self.state, self.message = "connecting", "Connecting to the Easel server …"
        self.models: dict | None = None
        self.welcome: dict | None = None
        self._client = None
        self._tasks: queue.Queue = queue.Queue()
        self._cancelled: set[str] = set()
        self._submitted: set[str] = set()  # jobs the server knows: only those can be cancelled there
        self._silent: str | None = None  # why the server counts as not responding
        self._orphan = None  # a client dropped with jobs given up: resumed on reconnect to cancel them
        self._given_up: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="easel-worker", daemon=True)
        self.state_changed.connect(self._remember_state)
        self._retry = QTimer(self)
        self._retry.setInterval(RECONNECT_MS)
        self._retry.timeout.connect(self._reconnect)
        self.auto_reconnect = True
        self._held = False  # the last refusal needs the painter (liveness.retry): no reconnects until configure()
        self.liveness = liveness.Liveness()
        self._running: str | None = None  # the job the worker thread waits on (None: idle or a short request)
        self._depth = 0  # nested _waiting blocks
        self._watch = QTimer(self)
        self._watch.setInterval(WATCH_MS)
        self._watch.timeout.connect(self._check_liveness)
        self._watch.start()
        self._thread.start()  # last: the thread uses everything above

    # -- UI thread ----------------------------------------------------------------------------

    def configure(self, url: str, token: str = "", force: bool = False, cert: str = "") -> None:
        """Use this server from now on: connect if it changed, if not connected, or if ``force``.
        ``cert``: for a ``wss://`` server with a self-signed certificate (``easel cert``), its PEM file,
        trusted alone (pinned)."""
        url, token, cert = url.strip() or protocol.messages.DEFAULT_URL, token.strip(), cert.strip()
        if force or (url, token, cert) != (self.url, self.token, self.cert) or self.state == "disconnected":
            self.url, self.token, self.cert = url, token, cert
            self._held = False
            self._tasks.put(("connect", None))

    def not_ready(self) -> str:
        """Why a job cannot start now, as a sentence."""
        if self.state == "not_responding":
            return self.message
        if self.state == "connecting":
            return f"Still connecting to the Easel server at {self.url}; try again in a moment."
        if self._held:  # the server is there and said what to mend (the token ...): not "start it"
            return f"Not connected to the Easel server. {self.message}"
        return (f"Not connected to the Easel server. {self.message} Start it with `easel serve`, or check "
                "the address at the top of the Easel docker.")

    def native_size(self, model: str | None = None) -> int:
        return plan.native_size(self.models, model)

    @property
    def offer(self) -> capabilities.Offer:
        """What the server offers (control types, reference modes, limits); the whole vocabulary
        until it has said."""
        return capabilities.offer((self.welcome or {}).get("capabilities"))

    def refresh_models(self) -> None:
        """Ask the server for its models again (``models_changed`` tells when they are in)."""
        self._tasks.put(("models", None))

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex[:16]

    def submit(self, build: Callable[[], plan.Job], finish: Callable[[object], object], job: str | None = None) -> str:
        """Queue a job: ``build()`` (run here, on the worker) returns the ``Job``; ``finish``
        turns the protocol Result into what the ``result`` event carries. Returns the job id (``job``,
        when the caller took one from ``new_id`` already: a cancel before this submit still counts)."""
        job = job or self.new_id()
        self._tasks.put(("job", (job, build, finish)))
        return job

    def preprocess(self, preprocessor: str, build: Callable[[], object], finish: Callable[[object], object],
                   job: str | None = None) -> str:
        """Queue a preprocess job: ``build()`` returns the ImageData to make a map of."""
        job = job or self.new_id()
        self._tasks.put(("preprocess", (job, preprocessor, build, finish)))
        return job

    def cancel(self, job: str) -> None:
        """Cancel a queued or running job; it ends with a ``cancelled`` (or its result, if too late).
        A job on a server that is not responding is given up at once: the connection is dropped (a
        cancel could not reach it) and the worker reconnects when the server answers again."""
        with self._lock:
            self._cancelled.add(job)
            client = self._client if job in self._submitted else None
        if client is not None and not self.liveness.responding:
            with self._lock:
                self._orphan = client
                self._given_up.append(job)
            # Queued like every other event (never inside the caller's cancel()).
            QTimer.singleShot(0, lambda: self.job_event.emit(job, "cancelled", None))
            threading.Thread(target=client.abort, daemon=True).start()
            return
        if client is not None:
            # A small send, but still network I/O: keep it off the UI thread too.
            threading.Thread(target=self._send_cancel, args=(client, job), daemon=True).start()

    def stop(self) -> None:
        self._retry.stop()
        self._watch.stop()
        self._tasks.put(("stop", None))

    def _remember_state(self, state: str, message: str) -> None:
        self.state, self.message = state, message
        if state == "disconnected" and self.auto_reconnect and not self._held:
            self._retry.start()
        else:
            self._retry.stop()
        self.state_shown.emit(state, message)

    def _reconnect(self) -> None:
        if self.state == "disconnected":
            self._tasks.put(("connect", None))

    def _check_liveness(self) -> None:
        """Probe a silent server and say when it stops (or starts again) answering (UI thread: cheap)."""
        client = self._client
        now = time.monotonic()
        with self._lock:
            if client is not None and client.heard is not None:
                self.liveness.heard(client.heard)
            step = self.liveness.tick(now)
            silence, busy = self.liveness.silence(now), self._running is not None
        if client is None:
            return
        if step.probe:
            threading.Thread(target=self._send_probe, args=(client,), daemon=True).start()
        if step.change == "not_responding":
            self._silent = liveness.not_responding(self.url, silence, busy)
            self.state_changed.emit("not_responding", self._silent)
            if not busy:  # nothing to wait for: drop the connection, the reconnect timer tries again
                threading.Thread(target=client.abort, daemon=True).start()
        elif step.change == "responding" and self.state == "not_responding":
            self._silent = None
            self.state_changed.emit("connected", f"The Easel server at {self.url} answers again.")

    # -- worker thread ------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            try:
                kind, payload = self._tasks.get(timeout=HEARTBEAT_S)
            except queue.Empty:
                self._heartbeat()
                continue
            if kind == "stop":
                self._close()
                return
            try:
                if kind == "connect":
                    self._connect()
                elif kind == "job":
                    self._run_job(*payload)
                elif kind == "preprocess":
                    self._run_preprocess(*payload)
                elif kind == "models" and self._client is not None:
                    self._refresh_models(self._client)
            except Exception as exc:  # a bug must not kill the thread: report it as a sentence
                if kind in ("job", "preprocess"):
                    self.job_event.emit(payload[0], "error", f"Easel failed: {sentence(exc)}")

    def _heartbeat(self) -> None:
        """Notice a server that went away while we were idle (then the UI timer reconnects)."""
        if self._client is None:
            return
        try:
            with self._waiting():
                self._client.status()
        except Exception as exc:
            if getattr(exc, "code", "closed") not in ("closed", "unreachable"):
                return  # the server answered something odd, but it is there
            self._close()
            self.state_changed.emit("disconnected", self._silent or
                                    f"Lost the connection to the Easel server: {sentence(exc)}")

    def _waiting(self, job: str | None = None):
        """While in this block the worker waits on the server (liveness counts its silence). Nests:
        a models refresh inside a job's events leaves the job's wait as it was."""
        worker = self

        class Waiting:
            def __enter__(self):
                with worker._lock:
                    self.outer = worker._depth == 0
                    worker._depth += 1
                    if self.outer:
                        worker.liveness.wait(time.monotonic())
                        worker._running = job

            def __exit__(self, *exc):
                with worker._lock:
                    worker._depth -= 1
                    if self.outer:
                        worker.liveness.done()
                        worker._running = None

        return Waiting()

    def _close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:
                pass
            self._client = None

    def _connect(self) -> bool:
        self._close()
        client_module = protocol.client_module()
        self.state_changed.emit("connecting", f"Connecting to {self.url} …")
        with self._lock:
            orphan, given_up = self._orphan, self._given_up
        resuming = orphan is not None and orphan.session is not None and orphan.url == self.url
        if self.cert and not self.url.startswith("wss://"):
            self._held = True
            self.state_changed.emit("disconnected", f"A certificate is set, but {self.url} is not a wss:// address: "
                                                    "the server's token and pictures would travel in clear.")
            return False
        def fresh():
            return client_module.Client(self.url, token=self.token or None, name="easel-krita", open_timeout=5,
                                        cert=self.cert or None, queue_every=client_module.QUEUE_EVERY)

        client = orphan if resuming else fresh()
        try:
            if resuming:
                # The session whose jobs were given up: resumed, so they can be cancelled and free the server.
                client.resume = True  # abort() switched it off
                try:
                    client.reconnect()
                except client_module.EaselError as exc:
                    if exc.code in ("unreachable", "closed"):
                        raise
                    # The server no longer knows the session (the painter restarted the stuck server, or it let
                    # the session go): its jobs went with it. Asking again would fail again, every retry and
                    # every Connect, and never reconnect: a new session instead.
                    client.close()
                    with self._lock:
                        self._orphan, self._given_up = None, []
                    client = fresh()
                    client.connect()
                else:
                    for job in given_up:
                        client.cancel(job)
            else:
                client.connect()
            with self._lock:
                self._orphan, self._given_up = None, []
            models = client.models()
        except client_module.EaselError as exc:
            client.close()
            self._held = not liveness.retry(exc.code, exc.tls)  # set before the signal that starts the retry timer
            hint = " Type the server's token at the top of the Easel docker and press Connect." \
                if exc.code == "unauthorized" else ""
            self.state_changed.emit("disconnected", sentence(exc) + hint)
            return False
        except Exception as exc:
            client.close()
            self.state_changed.emit("disconnected", f"Cannot talk to the Easel server at {self.url}: {sentence(exc)}")
            return False
        self._client, self.models, self.welcome = client, models, client.welcome
        self._silent = None
        self.state_changed.emit("connected", f"Connected to {self.url} ({client.welcome.get('device', '?')}).")
        return True

    def _ensure_connected(self, job: str) -> bool:
        if self._client is not None or self._connect():
            return True
        self.job_event.emit(job, "error", f"Not connected to the Easel server at {self.url}. "
                                          "Start it with `easel serve`, or check the address in the docker.")
        return False

    def _lost(self, job: str, exc: BaseException) -> None:
        """Report a failed job; a closed connection also changes the state (and reconnects)."""
        self.job_event.emit(job, "error", sentence(exc))
        if getattr(exc, "code", None) in ("closed", "unreachable"):
            self._close()
            self.state_changed.emit("disconnected", self._silent or sentence(exc))

    def _run_job(self, job: str, build, finish) -> None:
        if self._take_cancel(job) or not self._ensure_connected(job):
            return
        client_module = protocol.client_module()
        try:
            request = dataclasses.replace(build(), id=job)
        except Exception as exc:
            self.job_event.emit(job, "error", sentence(exc))
            return
        if self._take_cancel(job):
            return
        try:
            client = self._client
            with self._waiting(job):
                try:
                    client.submit(request)
                except client_module.EaselError as exc:
                    # The server closed this connection since the last job (restarted, say) and the idle
                    # heartbeat has not noticed yet: nothing of the job reached it, so it goes once more on
                    # a new connection instead of failing with the old connection's close.
                    if exc.code != "closed" or not self._connect():
                        raise
                    client = self._client
                    client.submit(request)
                with self._lock:
                    self._submitted.add(job)
                    cancel_now = job in self._cancelled  # Cancel pressed while we were uploading
                if cancel_now:
                    client.cancel(job)
                for event in self._follow(client, job):
                    self._forward(job, event, client_module, finish, client)
        except client_module.EaselError as exc:
            self._lost(job, exc)
        finally:
            with self._lock:
                self._cancelled.discard(job)
                self._submitted.discard(job)

    def _follow(self, client, job: str):
        """The job's events. A connection that drops mid-job without the server closing it is resumed
        (for up to RESUME_S): the server ran the job on and kept its ending, which then arrives once. A
        Cancel pressed meanwhile is sent when the connection is back."""
        while True:
            try:
                yield from client.events(job)
                return
            except protocol.client_module().EaselError as exc:
                if not exc.dropped:
                    raise
            self.state_changed.emit("connecting", f"The connection to {self.url} dropped; resuming the job …")
            client.reconnect_within(RESUME_S)  # an EaselError when it does not come back: the job is lost
            self.state_changed.emit("connected", f"Connected to {self.url} again.")
            with self._lock:
                cancel_now = job in self._cancelled
            if cancel_now:
                client.cancel(job)

    def _run_preprocess(self, job: str, preprocessor: str, build, finish) -> None:
        if self._take_cancel(job) or not self._ensure_connected(job):
            return
        client_module = protocol.client_module()

        def forward(event) -> None:
            # The map's queue position and progress reach the docker as a job's do; the map itself
            # comes back from ``preprocess``.
            if not isinstance(event, client_module.Result):
                self._forward(job, event, client_module, None, None)

        try:
            image = build()
            with self._lock:
                self._submitted.add(job)
            with self._waiting(job):
                result = self._client.preprocess(preprocessor, image, on_event=forward)
            self.job_event.emit(job, "result", finish(result))
        except client_module.EaselError as exc:
            self._lost(job, exc)
        except Exception as exc:
            self.job_event.emit(job, "error", sentence(exc))
        finally:
            with self._lock:
                self._submitted.discard(job)

    def _take_cancel(self, job: str) -> bool:
        if job in self._cancelled:
            self._cancelled.discard(job)
            self.job_event.emit(job, "cancelled", None)
            return True
        return False

    def _refresh_models(self, client) -> None:
        """Read the ``models`` reply again: a model loaded by a job reports what only loading tells
        (a single-file checkpoint's native size), which plans the next job's crop."""
        try:
            with self._waiting():
                self.models = client.models()
        except Exception:
            return  # the heartbeat or the next job reports a dropped connection
        self.models_changed.emit(self.models)

    def _forward(self, job: str, event, client_module, finish, client) -> None:
        if isinstance(event, client_module.Accepted):
            self.job_event.emit(job, "accepted", event.position)
        elif isinstance(event, client_module.Queued):
            self.job_event.emit(job, "queued", event.position)
        elif isinstance(event, client_module.Started):
            self.job_event.emit(job, "started", (event.steps, event.diffusion_size))
        elif isinstance(event, client_module.Progress):
            self.job_event.emit(job, "progress", (event.step, event.total))
            if event.preview is not None and event.preview.format == "rgba8":
                from .qt import rgba_image
                self.job_event.emit(job, "preview", rgba_image(event.preview.data, event.preview.width,
                                                               event.preview.height))
        elif isinstance(event, client_module.Result):
            # Before the result goes out, so a Generate pressed on it plans with the fresh reply.
            self._refresh_models(client)
            try:
                payload = finish(event)
            except Exception as exc:
                self.job_event.emit(job, "error", f"The result could not be read: {sentence(exc)}")
                return
            self.job_event.emit(job, "result", payload)
        elif isinstance(event, client_module.Cancelled):
            self.job_event.emit(job, "cancelled", event.reason)

    @staticmethod
    def _send_probe(client) -> None:
        try:
            client.probe()
        except Exception:
            pass  # a dropped connection is reported by the thread that reads

    @staticmethod
    def _send_cancel(client, job: str) -> None:
        try:
            client.cancel(job)
        except Exception:
            pass  # the job's own events report a dropped connection
