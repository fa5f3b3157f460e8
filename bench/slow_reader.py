"""Server memory for a client that submits N jobs and never reads (issue 12, item 1).

Starts ``easel serve`` on the demo model as a child process, warms it up with one job from a client
that reads, then a client whose socket is never read submits N generate jobs with previews every step.
A reading observer then runs one small job (it runs after the N, first in first out) while the server's
RSS is sampled from /proc. Prints the RSS before, the peak, after the N jobs, and after the never-reading
client is gone, and how that client's connection ended.

    python bench/slow_reader.py                       # 10 jobs of 512x512, previews of 256 every step
    python bench/slow_reader.py --reading             # the same jobs from a client that reads: the
                                                      # engine's own working memory, to compare the peak with
    python bench/slow_reader.py --jobs 10 --steps 20 --budget 1000000000000 --stall 1e9   # no bound (as before)
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import threading
import time
from pathlib import Path

from serverproc import ServerProcess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--preview-size", type=int, default=256)
    parser.add_argument("--budget", type=int, help="[limits] max_outbox_bytes (default: the server's)")
    parser.add_argument("--stall", type=float, help="[server] slow_reader_seconds (default: the server's)")
    parser.add_argument("--reading", action="store_true", help="the client reads everything (a baseline)")
    args = parser.parse_args()

    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    from shared.client import Client

    limits = {"max_outbox_bytes": args.budget} if args.budget else {}
    server_settings = {"slow_reader_seconds": args.stall} if args.stall else {}
    with tempfile.TemporaryDirectory() as folder:
        server = ServerProcess(Path(folder), server_settings, limits)
        try:
            with Client(server.url) as observer:
                observer.run("generate", prompt="warm", steps=2, width=args.size, height=args.size, seed=0,
                             preview_every=1, preview_size=args.preview_size)
                time.sleep(1)
                before = server.proc()
                sock = socket.socket()
                if not args.reading:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.connect(("127.0.0.1", server.port))
                silent = connect(server.url, sock=sock, max_queue=1, max_size=None, ping_interval=None)
                silent.send(json.dumps({"type": "hello", "protocol": 1}))
                for n in range(args.jobs):
                    silent.send(json.dumps({"type": "submit", "job": f"unread-{n}", "mode": "generate",
                                            "prompt": "x", "steps": args.steps, "width": args.size,
                                            "height": args.size, "seed": n, "preview_every": 1,
                                            "preview_size": args.preview_size}))
                if args.reading:
                    def read_all() -> None:
                        ended = 0
                        while ended < args.jobs:
                            raw = silent.recv(timeout=600)
                            if isinstance(raw, str) and json.loads(raw)["type"] in ("result", "error", "cancelled"):
                                ended += 1

                    reader = threading.Thread(target=read_all, daemon=True)
                    reader.start()
                peak, done = [before["rss_mib"]], threading.Event()

                def sample() -> None:
                    while not done.wait(0.25):
                        peak.append(server.proc()["rss_mib"])

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                began = time.perf_counter()
                # The N submits are admitted one by one while the first job runs: an observer job sent
                # before the last of them is queued would finish early and leave the rest unmeasured.
                while observer.status()["queue_length"] < args.jobs - 1 and time.perf_counter() - began < 120:
                    time.sleep(0.05)
                observer.run("generate", prompt="after", steps=2, width=64, height=64, seed=0)
                elapsed = time.perf_counter() - began
                time.sleep(1)
                after = server.proc()
                try:  # read now: what reached the socket, then how the server ended the connection
                    if args.reading:
                        reader.join(600)
                        raise TimeoutError
                    while True:
                        silent.recv(timeout=30)
                except ConnectionClosed as exc:
                    ending = f"closed by the server: {exc.rcvd}" if exc.rcvd else "closed without a reason"
                except TimeoutError:
                    ending = "still open (it read everything)" if args.reading else "still open (server kept it)"
                silent.close()
                time.sleep(1)
                gone = server.proc()
                done.set()
                sampler.join()
        finally:
            code = server.stop()
    kind = "read" if args.reading else "never-read"
    print(f"{args.jobs} {kind} jobs of {args.size}x{args.size}, {args.steps} steps, previews of "
          f"{args.preview_size} every step; server outbox budget {args.budget or 'default (16 MiB)'}, "
          f"slow_reader_seconds {args.stall or 'default (10)'}; {server.allocator()}")
    print(f"  server RSS before         {before['rss_mib']:8.1f} MiB")
    print(f"  server RSS peak           {max(peak):8.1f} MiB  ({max(peak) - before['rss_mib']:+.1f})")
    print(f"  server RSS after the jobs {after['rss_mib']:8.1f} MiB  ({after['rss_mib'] - before['rss_mib']:+.1f})")
    print(f"  server RSS client gone    {gone['rss_mib']:8.1f} MiB  ({gone['rss_mib'] - before['rss_mib']:+.1f})")
    print(f"  threads {before['threads']} -> {gone['threads']}, fds {before['fds']} -> {gone['fds']}")
    print(f"  the never-reading client: {ending}")
    print(f"  jobs ran for {elapsed:.1f} s (server CPU {after['cpu_s'] - before['cpu_s']:.1f} s); "
          f"server exit status {code}, tracebacks in its log: {server.tracebacks()}")
    # a cut-off client's jobs are cancelled: then the figures are not those of N whole jobs
    for line in server.log:
        if "disconnecting" in line:
            print(f"  server: {line.strip()}")


if __name__ == "__main__":
    main()
