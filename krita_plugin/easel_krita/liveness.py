"""Is the server still answering? An application-level heartbeat, as pure bookkeeping.

While the plugin waits for the server (a job in flight, a reply due), silence is suspicious: a job's
steps can be slow, but a live server answers a ``status`` at once, even mid-job. So after
``probe_after`` seconds of silence the worker sends a ``status``; after ``silent_after`` seconds with
no message at all the server is "not responding". Any message from the server makes it responding
again. Times are plain numbers (``time.monotonic()``), so the rules are tested without a clock.
"""

from __future__ import annotations

from dataclasses import dataclass

PROBE_AFTER = 1.5  # seconds of silence before a probe
SILENT_AFTER = 5.0  # seconds of silence before "not responding" (a probe had 3.5 s to be answered)


@dataclass
class Step:
    """What to do after a ``tick``: send a probe, and whether the verdict changed ("not_responding",
    "responding", or None)."""

    probe: bool = False
    change: str | None = None


class Liveness:
    def __init__(self, probe_after: float = PROBE_AFTER, silent_after: float = SILENT_AFTER):
        self.probe_after, self.silent_after = probe_after, silent_after
        self.last_heard: float | None = None
        self.waiting_since: float | None = None  # None: nothing is expected from the server
        self.last_probe: float | None = None
        self.responding = True

    def wait(self, now: float) -> None:
        """Something is expected from the server from now on (a job, a reply)."""
        if self.waiting_since is None:
            self.waiting_since = now

    def done(self) -> None:
        """Nothing is expected any more; silence is normal again."""
        self.waiting_since = self.last_probe = None

    def heard(self, now: float) -> None:
        self.last_heard = now

    def silence(self, now: float) -> float:
        """Seconds without a message while waiting (0 when not waiting)."""
        if self.waiting_since is None:
            return 0.0
        since = max(self.waiting_since, self.last_heard if self.last_heard is not None else self.waiting_since)
        return max(0.0, now - since)

    def tick(self, now: float) -> Step:
        """Called often (every few hundred ms): decide on a probe and on the verdict."""
        quiet = self.silence(now)
        step = Step()
        if quiet >= self.probe_after and (self.last_probe is None or now - self.last_probe >= self.probe_after):
            self.last_probe = now
            step.probe = True
        if quiet >= self.silent_after and self.responding:
            self.responding = False
            step.change = "not_responding"
        elif quiet < self.silent_after and not self.responding:
            self.responding = True
            step.change = "responding"
        return step


def not_responding(url: str, seconds: float, busy: bool) -> str:
    """The sentence the docker shows for a server that stopped answering."""
    what = "Cancel stops waiting for it" if busy else "Easel reconnects when it answers again"
    return (f"The Easel server at {url} is not responding (nothing for {seconds:.0f} s): it may be stuck or "
            f"paused. {what}.")


# Refusals only the painter can mend (the token, the address, a plugin or server of another protocol):
# retrying every few seconds cannot, and each try swaps the sentence saying what to do for "Connecting …".
NEEDS_THE_PAINTER = frozenset({"unauthorized", "unsupported_protocol", "bad_url"})


def retry(code: str | None, tls: bool = False) -> bool:
    """Whether a connection that failed with error ``code`` is worth trying again by itself (a server
    down or restarting is; a wrong token is not, until the painter presses Connect, nor a failed TLS
    handshake, ``tls``: a certificate that is not the server's, or a server without one)."""
    return not tls and code not in NEEDS_THE_PAINTER
