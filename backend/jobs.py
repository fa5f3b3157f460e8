"""The job queue: clients take turns, one GPU worker, cancel for queued and running jobs."""

from __future__ import annotations

import asyncio
import collections
import itertools
import threading
import time
from dataclasses import dataclass, field

from backend.engine.job import EditJob, PreprocessJob
from shared import job as protocol


@dataclass(eq=False)
class Job:
    """A queued or running job: what the client asked for, what the engine runs, and who asked."""

    request: protocol.Job | protocol.PreprocessJob
    work: EditJob | PreprocessJob
    owner: object  # the client session; jobs are only visible to their owner
    submitted: float = field(default_factory=time.perf_counter)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str | None = None  # `cancelled.reason`: set when the server, not the client, cancels it
    ended: bool = False

    @property
    def id(self) -> str:
        return self.request.id

    def end(self) -> bool:
        """Mark the job ended; False if it already was (so it gets exactly one final message)."""
        if self.ended:
            return False
        self.ended = True
        return True


class JobQueue:
    """Jobs waiting for the worker, taken in turns across clients; lives on the server's event loop.

    One GPU serves a painter in Krita, a WebUI tab and any script at once, so a client that queues
    thirty jobs must not make the others wait for all thirty. The next job is the oldest one of the
    client served least recently; a client not served since it last had nothing queued or running
    goes first (the earliest such job first). A client's own jobs keep their order.
    """

    def __init__(self):
        self._waiting: dict[object, collections.deque[Job]] = {}  # owner → its queued jobs, in order
        self._served: dict[object, int] = {}  # owner → the turn it was last served, until it goes idle
        self._turns = itertools.count()
        self._ready = asyncio.Event()
        self.running: Job | None = None

    def __len__(self) -> int:
        return sum(map(len, self._waiting.values()))

    def put(self, job: Job) -> int:
        """Queue a job; returns how many jobs are now ahead of it (the running one included)."""
        self._waiting.setdefault(job.owner, collections.deque()).append(job)
        self._ready.set()
        return self.waiting().index(job) + (1 if self.running else 0)

    async def next(self) -> Job:
        """Wait for the next job and mark it running."""
        while not self._waiting:
            self._ready.clear()
            await self._ready.wait()
        owner = _next_turn(self._waiting, self._served)
        self.running = self._waiting[owner].popleft()
        if not self._waiting[owner]:
            del self._waiting[owner]
        self._served[owner] = next(self._turns)
        return self.running

    def done(self, job: Job) -> None:
        if self.running is job:
            self.running = None
            self._forget_if_idle(job.owner)

    def find(self, owner: object, job_id: str) -> Job | None:
        """The owner's queued or running job with this id."""
        return next((job for job in self.owned_by(owner) if job.id == job_id), None)

    def cancel(self, job: Job) -> str:
        """Cancel a job: a queued one leaves the queue now, a running one stops at its next step."""
        if job is self.running:
            job.cancel_event.set()
            return "running"
        jobs = self._waiting[job.owner]
        jobs.remove(job)
        if not jobs:
            del self._waiting[job.owner]
            self._forget_if_idle(job.owner)
        return "queued"

    def waiting(self) -> list[Job]:
        """The queued jobs in the order they will run, as things stand (not the running one)."""
        left = {owner: collections.deque(jobs) for owner, jobs in self._waiting.items()}
        served = dict(self._served)
        turns = itertools.count(max(served.values(), default=0) + 1)
        order = []
        while left:
            owner = _next_turn(left, served)
            order.append(left[owner].popleft())
            if not left[owner]:
                del left[owner]
            served[owner] = next(turns)
        return order

    def owned_by(self, owner: object) -> list[Job]:
        """The owner's running job, then its queued ones in order."""
        jobs = list(self._waiting.get(owner, ()))
        if self.running and self.running.owner is owner:
            jobs.insert(0, self.running)
        return jobs

    def _forget_if_idle(self, owner: object) -> None:
        if owner not in self._waiting and not (self.running and self.running.owner is owner):
            self._served.pop(owner, None)


def _next_turn(waiting: dict[object, collections.deque[Job]], served: dict[object, int]) -> object:
    """The owner whose turn it is: never served (earliest queued job first), else served longest ago."""
    return min(waiting, key=lambda owner: (served.get(owner, -1), waiting[owner][0].submitted))
