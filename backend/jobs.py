"""The job queue: first in, first out, one GPU worker, cancel for queued and running jobs."""

from __future__ import annotations

import asyncio
import collections
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
    """FIFO of jobs waiting for the worker; lives on the server's event loop."""

    def __init__(self):
        self._waiting: collections.deque[Job] = collections.deque()
        self._ready = asyncio.Event()
        self.running: Job | None = None

    def __len__(self) -> int:
        return len(self._waiting)

    def put(self, job: Job) -> int:
        """Queue a job; returns how many jobs are ahead of it."""
        position = len(self._waiting) + (1 if self.running else 0)
        self._waiting.append(job)
        self._ready.set()
        return position

    async def next(self) -> Job:
        """Wait for the next job and mark it running."""
        while not self._waiting:
            self._ready.clear()
            await self._ready.wait()
        self.running = self._waiting.popleft()
        return self.running

    def done(self, job: Job) -> None:
        if self.running is job:
            self.running = None

    def find(self, owner: object, job_id: str) -> Job | None:
        """The owner's queued or running job with this id."""
        if self.running and self.running.owner is owner and self.running.id == job_id:
            return self.running
        return next((job for job in self._waiting if job.owner is owner and job.id == job_id), None)

    def cancel(self, job: Job) -> str:
        """Cancel a job: a queued one leaves the queue now, a running one stops at its next step."""
        if job is self.running:
            job.cancel_event.set()
            return "running"
        self._waiting.remove(job)
        return "queued"

    def waiting(self) -> list[Job]:
        """The queued jobs, in order (not the running one)."""
        return list(self._waiting)

    def owned_by(self, owner: object) -> list[Job]:
        jobs = [job for job in self._waiting if job.owner is owner]
        if self.running and self.running.owner is owner:
            jobs.insert(0, self.running)
        return jobs
