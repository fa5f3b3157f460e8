"""`easel serve` on the demo model as a child process, and what /proc says about it (RSS, threads, fds).

Used by ``bench/slow_reader.py`` and ``bench/soak.py``: the figures are the server's alone, not the
benchmark clients'.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


class ServerProcess:
    """``python -m backend.cli serve`` on the demo models, with extra ``[server]`` / ``[limits]`` settings."""

    def __init__(self, folder: Path, server: dict | None = None, limits: dict | None = None):
        from backend.fixtures.demo_model import demo_models, ensure_demo_model

        root = ensure_demo_model()
        lines = ["[server]", 'default_model = "demo"'] + [f"{k} = {json.dumps(v)}" for k, v in (server or {}).items()]
        lines += ["", "[limits]"] + [f"{k} = {json.dumps(v)}" for k, v in (limits or {}).items()] + [""]
        for name, spec in demo_models(root).items():
            lines += [f"[models.{name}]"] + [f"{key} = {json.dumps(getattr(spec, key))}"
                                             for key in ("source", "family", "inpaint") if getattr(spec, key)] + [""]
        config = folder / "easel.toml"
        config.write_text("\n".join(lines))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}/"
        # The command line, for a test that restarts the server on the same port, as a painter restarts a stuck one.
        self.command = [sys.executable, "-m", "backend.cli", "serve", "--config", str(config), "--port", str(self.port)]
        self.process = subprocess.Popen(self.command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        for line in self.process.stderr:
            self.log.append(line)
            if "listening" in line:
                break
        else:
            raise RuntimeError("the server did not start:\n" + "".join(self.log))
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()

    def _read_log(self) -> None:
        for line in self.process.stderr:
            self.log.append(line)

    def proc(self) -> dict:
        """RSS (MiB), threads, open fds and CPU seconds of the server process, from /proc."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if "VmRSS" not in fields:  # the process has exited
            return {"rss_mib": 0.0, "threads": 0, "fds": 0, "cpu_s": 0.0}
        # user + system time of all its threads: on a shared machine a steadier speed figure than wall time
        ticks = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13]
        return {"rss_mib": int(fields["VmRSS"].split()[0]) / 1024, "threads": int(fields["Threads"]),
                "fds": len(os.listdir(f"/proc/{self.process.pid}/fd")),
                "cpu_s": sum(map(int, ticks)) / os.sysconf("SC_CLK_TCK")}

    def allocator(self) -> str:
        """The malloc the server runs on, as its log says it (``easel serve`` prefers jemalloc)."""
        said = next((line.split("memory: ", 1)[1].strip() for line in self.log if "memory: " in line), "?")
        return f"server memory: {said}"

    def stop(self) -> int:
        self.process.terminate()
        code = self.process.wait(60)
        self._reader.join(5)
        return code

    def tracebacks(self) -> int:
        return sum("Traceback" in line for line in self.log)
