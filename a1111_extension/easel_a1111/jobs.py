"""Talking to the Easel backend for the tab: run a job step by step, cancel it, preview a control
map, read the status line. No gradio here: the tab turns ``Update``s into component updates.

Every failure becomes one readable sentence; tracebacks go to the WebUI's console only.
"""

from __future__ import annotations

import re
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from PIL import Image

from .params import InputError, TabValues, build_job, control_png, decode, field_label, unused_mask_note
from .protocol import (
    DEFAULT_URL,
    QUEUE_EVERY,
    SAMPLER_LABELS,
    Accepted,
    Cancelled,
    Client,
    EaselError,
    Job,
    Progress,
    Queued,
    Result,
    Started,
    cancel_reason,
    compose,
    eight_bit_grey,
    infotext,
)

PREVIEW_EVERY = 1
CAPABILITIES_TIMEOUT = 2  # s: the tab is built while the WebUI starts, which must not wait on a backend
# s: how long a job whose connection dropped keeps trying to resume it. The server keeps the session far
# longer (resume_seconds); this bounds how long the painter looks at "reconnecting" before a sentence.
RECONNECT_WINDOW = 15.0
# A live backend answers a status at once, even mid-job: the tab asks for one after PROBE_EVERY s of silence.
# One that answers nothing for SILENT_AFTER s is stuck or paused (a stopped process, a hung machine), and a
# Cancel it leaves unanswered for CANCEL_GRACE s cannot be waited for: the tab stops waiting, with a sentence.
# Generous, because a reply waits behind a large result still on its way (only whole messages count).
PROBE_EVERY = 2.0
SILENT_AFTER = 45.0
CANCEL_GRACE = 10.0


@dataclass
class Update:
    """What the tab should show now; ``None`` fields keep what is shown."""

    status: str
    preview: Image.Image | None = None
    images: list[Image.Image] | None = None
    infotexts: list[str] | None = None
    seeds: list[int] | None = None
    guidance: float | None = None  # the CFG scale the result was made at (the model's own on auto)
    sampler: str | None = None  # the sampler it ran, by the WebUI's name (Flux runs its own Euler whatever is picked)
    done: bool = False
    failed: bool = False  # the job could not be run or followed: ``status`` says why


@dataclass
class Connection:
    url: str
    token: str = ""
    cert: str = ""  # for a wss:// server with its own certificate (`easel cert`): that PEM file, pinned

    def client(self, open_timeout: float = 5) -> Client:
        """A client, not yet connected (``with`` connects it)."""
        return Client(self.url, token=self.token or None, name="easel-a1111", open_timeout=open_timeout,
                      cert=self.cert or None, queue_every=QUEUE_EVERY)


# The running job of each browser session, so the Cancel button (another request, maybe another
# thread) can reach the connection the job was submitted on: the server only lets that one cancel it.
_running: dict[str, tuple[Client, str]] = {}
_lock = threading.Lock()
# Sessions whose job's connection is being made again (its socket changes under a Cancel then), and
# those whose Cancel came while it was down: sent once it is resumed.
_reconnecting: set[str] = set()
_cancel_when_back: set[str] = set()


class Watch:
    """Watches a running job's connection from a thread of its own: probes it while it is silent, and
    drops it (``Client.abort``) when the backend stops answering or leaves a Cancel unanswered; ``why``
    ("silent" or "cancel") says which. Paused while the connection is being made again."""

    def __init__(self, client: Client):
        self.client, self.why = client, None
        self.since = time.monotonic()
        self.cancelled_at: float | None = None
        self.paused = False
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def cancel_asked(self) -> None:
        if self.cancelled_at is None:
            self.cancelled_at = time.monotonic()

    def resume(self) -> None:
        self.since, self.paused = time.monotonic(), False

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        probed = 0.0
        while not self._stop.wait(0.25):
            if self.paused:
                continue
            now = time.monotonic()
            heard = max(self.since, self.client.heard or 0.0)
            if now - heard >= PROBE_EVERY and now - probed >= PROBE_EVERY:
                probed = now
                try:
                    self.client.probe()
                except Exception:  # noqa: BLE001 - a dropped connection is the reader's to report
                    pass
            if self.cancelled_at is not None and now - max(heard, self.cancelled_at) >= CANCEL_GRACE:
                self.why = "cancel"
            elif now - heard >= SILENT_AFTER:
                self.why = "silent"
            if self.why is not None:
                self.client.abort()
                return

    def sentence(self, url: str) -> str:
        if self.why == "cancel":
            return (f"Cancelled here: the Easel backend at {url} did not answer the Cancel within {CANCEL_GRACE:g} s "
                    "(it may be stuck or paused), so the tab stopped waiting for the job.")
        return (f"The Easel backend at {url} stopped answering mid-job (nothing for {SILENT_AFTER:g} s): it may be "
                "stuck or paused. The tab stopped waiting for the job; restart the backend if it does not recover.")


_watches: dict[str, Watch] = {}


def describe(error: Exception, url: str) -> str:
    """One sentence for the painter."""
    if isinstance(error, InputError):
        return str(error)
    if isinstance(error, EaselError):
        if error.code == "unreachable" and "TLS handshake" in error.message:
            return (f"Cannot reach the Easel backend at {url}: {error.message}. Give the server's certificate "
                    "(from `easel cert`) in Settings > Easel.")
        if error.code == "bad_url":
            return (f"{url} is not an Easel backend address: set one like {DEFAULT_URL} (wss:// for a server with "
                    "a certificate) in Settings > Easel.")
        if error.code == "unauthorized":  # (no job was sent: the hello was refused)
            return (f"The Easel backend at {url} needs a token, and the one in Settings > Easel is missing or wrong: "
                    "give the one the server was started with (--token).")
        if error.code == "unreachable":
            why = f" ({error.reason})" if error.reason else ""
            return (f"Cannot reach the Easel backend at {url}{why}: start it with `easel serve`, "
                    "or set its address in Settings > Easel.")
        if error.code == "closed":
            return f"The connection to the Easel backend at {url} closed: {error.message}."
        where = f" ({field_label(error.field)})" if error.field else ""
        return f"The Easel backend refused the job: {error.message}{where}."
    traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    return f"Something went wrong in the Easel tab: {type(error).__name__}: {error}"


def run(connection: Connection, values: TabValues, session: str) -> Iterator[Update]:
    """Submit the job and follow it: progress with previews, then the composited results."""
    try:
        request = build_job(values)
    except InputError as exc:
        yield Update(str(exc), done=True, failed=True)
        return
    request.preview_every, request.preview_size = PREVIEW_EVERY, 256
    yield Update("Connecting to the Easel backend…")
    client = watch = None
    try:
        client = connection.client().connect()
        job = client.submit(request)
        watch = Watch(client)
        with _lock:
            _running[session] = (client, job)
            _watches[session] = watch
        while True:
            try:
                for event in client.events(job):
                    yield from _shown(event, values, request)
                break
            except EaselError as exc:
                if watch.why is not None:  # the watch dropped a backend that stopped answering
                    yield Update(watch.sentence(connection.url), done=True, failed=True)
                    return
                if not exc.dropped:
                    raise
                # The backend still runs the job and keeps its ending for our session: get it back.
                yield Update("The connection to the Easel backend dropped; reconnecting…")
                watch.paused = True
                with _lock:
                    _reconnecting.add(session)
                try:
                    client.reconnect_within(RECONNECT_WINDOW)
                    failure = None
                except EaselError as failed:
                    failure = failed
                with _lock:
                    _reconnecting.discard(session)
                    wanted = session in _cancel_when_back
                    _cancel_when_back.discard(session)
                if failure is None:
                    watch.resume()
                    if wanted:
                        watch.cancel_asked()
                        client.cancel(job)
                elif failure.code in ("unreachable", "closed"):
                    yield Update(f"Lost the connection to the Easel backend at {connection.url} mid-job and could "
                                 f"not reconnect within {RECONNECT_WINDOW:g} s ({failure.message}). The job may "
                                 "still finish there, but its result will not reach this tab.", done=True,
                                 failed=True)
                    return
                else:
                    yield Update(f"The connection to the Easel backend at {connection.url} dropped mid-job, and "
                                 f"the backend no longer has the job: {failure.message}.", done=True, failed=True)
                    return
    except Exception as exc:  # noqa: BLE001 - every failure becomes a sentence in the tab
        yield Update(describe(exc, connection.url), done=True, failed=True)
    finally:
        with _lock:
            _running.pop(session, None)
            _watches.pop(session, None)
            _reconnecting.discard(session)
            _cancel_when_back.discard(session)
        if watch is not None:
            watch.stop()
        if client is not None:
            client.close()


def _shown(event, values: TabValues, request: Job) -> Iterator[Update]:
    if isinstance(event, (Accepted, Queued)) and event.position > 0:  # 0: it starts next, "Running" follows
        yield Update(f"Waiting: {event.position} job{'s' * (event.position != 1)} ahead in the backend's queue…")
    elif isinstance(event, Started):
        yield Update(f"Running: {event.steps} steps at {event.diffusion_size[0]}x{event.diffusion_size[1]}…")
    elif isinstance(event, Progress):
        preview = decode(event.preview) if event.preview else None
        yield Update(f"Step {event.step}/{event.total}", preview=preview)
    elif isinstance(event, Cancelled):
        why = cancel_reason(event.reason)  # the backend's own cancel: else it read as the painter's
        yield Update(f"Cancelled by the Easel backend: {why}." if why else "Cancelled.", done=True)
    elif isinstance(event, Result):
        images, texts = finish(values, event, request)
        seconds = event.timings.get("total", 0)
        seeds = [item.seed for item in sorted(event.images, key=lambda item: item.index)]
        note = unused_mask_note(values)
        yield Update(f"Done: {len(images)} image{'s' * (len(images) != 1)} in {seconds:.1f} s."
                     + (f" {note}" if note else ""),
                     images=images, infotexts=texts, seeds=seeds, guidance=event.parameters.get("guidance"),
                     sampler=sampler_label(event.parameters.get("sampler")), done=True)


def sampler_label(name: str | None) -> str | None:
    """A result's sampler by the WebUI's name, as its infotext says it."""
    return SAMPLER_LABELS.get(name, name) if name else None


def finish(values: TabValues, result: Result, job: Job | None = None) -> tuple[list[Image.Image], list[str]]:
    """Whole pictures (inpaint, remove and instruct layers composited over the input: the one shared
    composite, so every pixel outside the layer's alpha is the input's own; an expand's result is the new
    canvas itself) and their infotexts. ``job``: the job as sent, for what the result does not repeat."""
    parameters = dict(result.parameters)
    if job is not None and job.mode == "instruct":
        # (the server's parameters leave out the image guidance and whether a mask was painted)
        parameters.setdefault("image_guidance", job.image_guidance)
        parameters["masked"] = job.mask is not None
    images, texts = [], []
    for item in sorted(result.images, key=lambda item: item.index):
        picture = decode(item.image)
        if parameters.get("mode") in ("inpaint", "remove", "instruct"):
            base = np.asarray(eight_bit_grey(values.picture).convert("RGBA"))
            picture = Image.fromarray(compose.composite(base, np.asarray(picture), item.offset), "RGBA")
        images.append(picture)
        texts.append(infotext(parameters, item.seed, picture.size))
    return images, texts


def cancel(session: str) -> Update | None:
    """Ask the server to cancel this session's running job; what to say when that cannot be done now
    (``failed`` when it could not be done at all)."""
    later = Update("Cancelling once the connection to the backend is back…")
    with _lock:
        running = _running.get(session)
        if running is not None and session in _reconnecting:
            _cancel_when_back.add(session)
            return later
    if running is None:
        return Update("Nothing is running.")
    client, job = running
    try:
        client.cancel(job)
        with _lock:
            watch = _watches.get(session)
        if watch is not None:  # a backend that does not answer it is not waited for
            watch.cancel_asked()
    except EaselError as exc:
        if exc.code == "closed":
            # The connection is down, maybe only for a blink: the job's runner resumes it and cancels then.
            with _lock:
                if session in _running:
                    _cancel_when_back.add(session)
                    return later
        return Update(f"Could not cancel: {exc.message}", failed=True)
    return None


def preprocess(connection: Connection, control_type: str,
               picture: Image.Image | None) -> tuple[Image.Image | None, str]:
    """The control map the backend's preprocessor for ``control_type`` makes of ``picture``."""
    if picture is None:
        return None, "Add a picture first: the preview runs the preprocessor on it."
    watch = None
    try:
        with connection.client() as client:
            watch = Watch(client)  # a backend that stops answering is not waited for here either
            return decode(client.preprocess(control_type, control_png(picture))).convert("RGB"), \
                f"{control_type} map made by the backend."
    except Exception as exc:  # noqa: BLE001
        stuck = watch is not None and watch.why is not None
        return None, watch.sentence(connection.url) if stuck else describe(exc, connection.url)
    finally:
        if watch is not None:
            watch.stop()


@dataclass
class Offered:
    """What the backend offers, read in one connection; None where it could not be reached."""

    capabilities: dict | None = None
    models: dict | None = None


def offered(connection: Connection) -> Offered:
    """The backend's ``welcome.capabilities`` and ``models`` reply (quickly: the WebUI may be starting)."""
    try:
        with connection.client(open_timeout=CAPABILITIES_TIMEOUT) as client:
            return Offered(client.welcome["capabilities"], client.models())
    except Exception:  # noqa: BLE001 - no backend yet: the tab offers the whole vocabulary
        return Offered()


def capabilities(connection: Connection) -> dict | None:
    """The backend's ``welcome.capabilities``, or None when it cannot be reached (quickly)."""
    return offered(connection).capabilities


def markdown(sentence: str, error: bool = False, busy: bool = False) -> str:
    """A sentence as the tab's Markdown lines show it: a ``<lora:name:w>`` in it otherwise reads as an HTML tag
    or a link and loses its brackets (the painter would then type the tag without them, and the prompt would
    hold plain words, no LoRA). Code spans show their text as it is, so they are left alone. An ``error`` is
    marked as the WebUI marks its own (``<div class='error'>``, coloured by style.css), or it reads like a
    status line; the blank lines keep its text Markdown (an HTML block's own lines are not). ``busy``: said
    while a job is still in flight, marked (an empty ``<span class='easel-busy'>``) for javascript/easel.js,
    which shows Cancel for the WebUI's Esc and Ctrl+Enter then (read off the text, it missed the lines of a
    job whose connection is being made again)."""
    parts = re.split(r"(`[^`]*`)", sentence)
    text = "".join(part if part.startswith("`") else part.replace("<", "&lt;").replace(">", "&gt;")
                   for part in parts)
    if busy:
        text += "<span class='easel-busy'></span>"
    return f"<div class='error'>\n\n{text}\n\n</div>" if error else text


def busy(session: str) -> bool:
    """Whether this session's job is still in flight."""
    with _lock:
        return session in _running


def status_line(connection: Connection) -> str:
    """One line about the backend: reachable, device, models, queue."""
    return _status(connection)[0]


def status_markdown(connection: Connection) -> str:
    """The status line as the tab shows it: a backend it cannot reach is an error."""
    return markdown(*_status(connection))


def _status(connection: Connection) -> tuple[str, bool]:
    try:
        with connection.client() as client:
            status, models = client.status(), client.models()
    except Exception as exc:  # noqa: BLE001
        return describe(exc, connection.url), True
    return (f"Easel backend at {connection.url}: {client.welcome['server']} on {status['device']}, "
            f"default model {models['default']}, {status['queue_length']} job(s) waiting."), False
