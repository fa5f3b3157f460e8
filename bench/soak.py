"""Soak: N mixed demo jobs from several clients, with cancels, bad requests and disconnects (issue 12, item 8).

Starts ``easel serve`` on the demo model as a child process. Each client thread opens a connection,
sends a few jobs at a time (generate / img2img, sometimes with previews, sometimes a refused one),
cancels some, and now and then drops its connection with jobs in flight and opens a new one. Every
job's end is recorded: ``result``, ``cancelled``, ``error:<code>``, or ``dropped`` (its connection
was closed by the client before it ended: nothing more is sent for it). Some rounds lose their
connection instead (a network blip: the socket goes away without a close frame); the client then
reconnects with ``hello.resume`` and the jobs it had not seen end, and their endings must still
arrive, once (counted as ``… after resume``). On a connection that stays,
a job with more than one ending, or with none, is a violation. The server's RSS, threads and open
fds are printed at intervals; at the end: the end states, violations, tracebacks in the server's log,
and RSS after warm-up against the end.

    python bench/soak.py                          # 200 jobs, 8 clients (a few minutes on 2 CPU cores)
    python bench/soak.py --jobs 1000 --clients 8  # the issue's figure
"""

from __future__ import annotations

import argparse
import base64
import collections
import io
import itertools
import json
import random
import tempfile
import threading
import time
from pathlib import Path

from serverproc import ServerProcess

TERMINAL = ("result", "error", "cancelled")


def picture_b64(size: int, seed: int) -> str:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class Soak:
    def __init__(self, url: str, jobs: int, seed: int):
        self.url, self.total = url, jobs
        self.counter = itertools.count()
        self.ends: dict[str, list[str]] = {}
        self.violations: list[str] = []
        self.lock = threading.Lock()
        self.finished = 0
        self.image = picture_b64(96, seed)
        self.seed = seed
        self.resumes = 0
        self.resumed_jobs: set[str] = set()

    def next_id(self, client: int) -> str | None:
        n = next(self.counter)
        return f"c{client}-{n}" if n < self.total else None

    def end(self, job: str, how: str) -> None:
        with self.lock:
            self.ends.setdefault(job, []).append(how)
            if len(self.ends[job]) == 1:
                self.finished += 1
            else:
                self.violations.append(f"{job}: {self.ends[job]}")

    def client(self, index: int) -> None:
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        rng = random.Random(self.seed * 1000 + index)
        out_of_jobs = False
        while not out_of_jobs:
            ws = connect(self.url, max_size=None)
            try:
                ws.send(json.dumps({"type": "hello", "protocol": 1, "client": f"soak-{index}"}))
                welcome = json.loads(ws.recv(timeout=60))
                assert welcome["type"] == "welcome"
                ws.session = welcome["session"]
                for _ in range(rng.randint(1, 6)):  # rounds on this connection
                    pending = set()
                    for _ in range(rng.randint(1, 3)):
                        job = self.next_id(index)
                        if job is None:
                            out_of_jobs = True
                            break
                        ws.send(json.dumps(self.job_message(job, rng)))
                        pending.add(job)
                    if not pending:
                        break
                    if rng.random() < 0.25:
                        ws.send(json.dumps({"type": "cancel", "job": rng.choice(sorted(pending))}))
                    if rng.random() < 0.1:  # leave with jobs in flight
                        for job in pending:
                            self.end(job, "dropped")
                        break
                    if rng.random() < 0.15:  # a network blip: the socket goes away, then resume
                        ws = self.blip(ws, pending)
                        if ws is None:
                            break
                    try:
                        self.read_until_ended(ws, pending)
                    except (ConnectionClosed, TimeoutError) as exc:
                        self.violations.append(f"connection of client {index} failed: {exc!r}")
                        for job in pending:
                            self.end(job, "lost")
                        break
            finally:
                if ws is not None:
                    ws.close()

    def blip(self, ws, pending: set[str]):
        """Lose the connection under ``pending`` jobs and resume on a new one; None if that failed."""
        import socket

        from websockets.sync.client import connect

        waiting = set(pending)  # first every job is accepted (a submit lost on the wire is not a lost result)
        while waiting:
            message = ws.recv(timeout=300)
            if isinstance(message, bytes):
                continue
            message = json.loads(message)
            if message["type"] == "accepted":
                waiting.discard(message["job"])
            elif message["type"] in TERMINAL and message.get("ends_job", True) and message.get("job") in pending:
                waiting.discard(message["job"])
                pending.discard(message["job"])
                self.end(message["job"], message["type"] if message["type"] != "error" else
                         f"error:{message['code']}")
        ws.socket.shutdown(socket.SHUT_RDWR)
        ws.socket.close()
        again = connect(self.url, max_size=None)
        again.send(json.dumps({"type": "hello", "protocol": 1, "resume": ws.session, "pending": sorted(pending)}))
        welcome = json.loads(again.recv(timeout=60))
        if welcome.get("type") != "welcome" or not welcome.get("resumed"):
            self.violations.append(f"resume refused: {welcome}")
            for job in pending:
                self.end(job, "lost")
            again.close()
            return None
        again.session = ws.session
        self.resumes += 1
        self.resumed_jobs.update(pending)
        return again

    def job_message(self, job: str, rng: random.Random) -> dict:
        kind = rng.random()
        message = {"type": "submit", "job": job, "prompt": "soak", "seed": rng.randrange(1000),
                   "steps": rng.randint(2, 4)}
        if kind < 0.1:  # refused: too many steps
            return {**message, "mode": "generate", "steps": 100_000}
        if kind < 0.55:
            message.update(mode="generate", width=rng.choice([64, 128]), height=64)
        else:
            message.update(mode="img2img", strength=0.75, image={"data": self.image, "format": "png"})
        if rng.random() < 0.3:
            message.update(preview_every=1, preview_size=64)
        return message

    def read_until_ended(self, ws, pending: set[str]) -> None:
        while pending:
            raw = ws.recv(timeout=300)
            if isinstance(raw, bytes):
                continue
            message = json.loads(raw)
            if message["type"] not in TERMINAL:
                continue
            job = message.get("job")
            if message["type"] == "error" and not message.get("ends_job", True):
                continue  # a refused cancel of a job that had ended already
            if job not in pending:
                self.violations.append(f"an ending for {job}, which had no pending ending: {message}")
                continue
            pending.discard(job)
            self.end(job, message["type"] if message["type"] != "error" else f"error:{message['code']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between RSS lines")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        server = ServerProcess(Path(folder))
        soak = Soak(server.url, args.jobs, args.seed)
        samples = []
        try:
            began = time.perf_counter()
            threads = [threading.Thread(target=soak.client, args=(i,), daemon=True) for i in range(args.clients)]
            for thread in threads:
                thread.start()
            print(f"{'seconds':>8} {'ended':>6} {'RSS MiB':>8} {'threads':>7} {'fds':>4}")
            while any(thread.is_alive() for thread in threads):
                for thread in threads:
                    thread.join(args.interval / len(threads))
                figures = server.proc()
                samples.append((soak.finished, figures["rss_mib"]))
                print(f"{time.perf_counter() - began:8.0f} {soak.finished:6d} {figures['rss_mib']:8.1f} "
                      f"{figures['threads']:7d} {figures['fds']:4d}", flush=True)
            time.sleep(1)
            final = server.proc()
        finally:
            code = server.stop()
    states = collections.Counter(ends[0] + (" after resume" if job in soak.resumed_jobs else "")
                                 for job, ends in soak.ends.items())
    delivered = sum(1 for job in soak.resumed_jobs
                    if soak.ends.get(job, ["?"])[0] not in ("lost", "?", "error:unknown_job"))
    warm = [rss for finished, rss in samples if finished >= args.jobs // 5] or [samples[-1][1]]
    print(f"\n{args.jobs} jobs from {args.clients} clients in {time.perf_counter() - began:.0f} s")
    print("end states: " + ", ".join(f"{state} {count}" for state, count in sorted(states.items())))
    print(f"jobs with exactly one ending: {sum(len(e) == 1 for e in soak.ends.values())} of {len(soak.ends)}; "
          f"violations: {len(soak.violations)}")
    for violation in soak.violations[:10]:
        print("  " + violation)
    print(f"connections lost under jobs and resumed: {soak.resumes}; their {len(soak.resumed_jobs)} jobs' endings "
          f"delivered after the resume: {delivered} ({100 * delivered / max(1, len(soak.resumed_jobs)):.0f} %)")
    print(f"RSS after warm-up (20% of jobs) {warm[0]:.1f} MiB, end {final['rss_mib']:.1f} MiB "
          f"({100 * (final['rss_mib'] - warm[0]) / warm[0]:+.1f} %), min..max after warm-up "
          f"{min(warm):.1f}..{max(warm):.1f}; threads {final['threads']}, fds {final['fds']}")
    print(f"server exit status {code}; tracebacks in its log: {server.tracebacks()}")


if __name__ == "__main__":
    main()
