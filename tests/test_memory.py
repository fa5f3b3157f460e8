"""Freed memory goes back to the system after each job (backend/memory.py): `easel serve` on jemalloc
where it is installed, purged or trimmed after each job, not with EASEL_MALLOC=system, a no-op elsewhere;
and TAESD previews decode at about the asked size. What they save is measured in bench/slow_reader.py,
not here (RSS figures on a shared machine are no test)."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from backend import memory


@pytest.fixture
def fresh(monkeypatch):
    """The module as a new process sees it, whatever the tests before did."""
    monkeypatch.setattr(memory, "_libc", None)
    monkeypatch.setattr(memory, "_jemalloc", None)
    monkeypatch.delenv("EASEL_MALLOC", raising=False)
    return monkeypatch


JEMALLOC = ctypes.util.find_library("jemalloc")


def test_on_glibc_freed_memory_goes_back(fresh):
    if memory.glibc() is None or memory.jemalloc():
        pytest.skip("not glibc's malloc: nothing to trim (see the no-op and jemalloc tests)")
    assert memory.enabled()
    garbage = [bytearray(64 * 1024) for _ in range(512)]  # 32 MiB in blocks that come from the arena
    del garbage[:-1]  # the last one stays, so the freed blocks are holes below it, not the heap's top
    assert memory.release() is True


@pytest.mark.parametrize("value", ["system", "SYSTEM"])
def test_easel_malloc_system_turns_it_off(fresh, value):
    fresh.setenv("EASEL_MALLOC", value)
    assert not memory.enabled()
    assert memory.release() is False


def test_elsewhere_it_is_a_no_op(fresh):
    fresh.setattr(memory.sys, "platform", "darwin")
    assert memory.glibc() is None and not memory.jemalloc() and not memory.enabled()
    assert memory.release() is False
    assert memory.preload_environment({}) is None


@pytest.mark.skipif(JEMALLOC is None, reason="jemalloc is not installed (Debian/Ubuntu: libjemalloc2)")
def test_under_jemalloc_an_idle_process_gives_freed_memory_back_by_itself():
    # A fresh interpreter in the environment `easel serve` restarts itself in: of 256 MiB in 1 MiB blocks, freed,
    # what jemalloc keeps at first goes back while the process does nothing (its background thread); on its
    # defaults it would stay until the process allocated again.
    script = """if True:
        import time
        from backend import memory
        def rss():
            return int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1]) >> 10
        print(memory.jemalloc(), memory.enabled(), memory.allocator(), sep="|")
        before = rss()
        garbage = [bytes(range(256)) * 4096 for _ in range(256)]  # written, so resident
        del garbage
        held, deadline = rss(), time.monotonic() + 60
        while rss() > before + 16 and time.monotonic() < deadline:
            time.sleep(0.1)
        print(before, held, rss(), sep="|")
    """
    environ = memory.preload_environment({**os.environ, "EASEL_MALLOC": "", memory.PRELOADED: ""})
    if environ is None:
        pytest.skip("this test process already runs on jemalloc")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=environ)
    said, figures = done.stdout.splitlines()
    assert said == "True|False|jemalloc, pages unused for 2 s given back", done.stderr
    before, held, after = map(int, figures.split("|"))
    assert held > before + 40, "some freed blocks stayed with the allocator at first"
    assert after <= before + 16, f"RSS stayed at {after} MiB (was {before} before, {held} after the free)"


def test_serve_is_started_again_on_jemalloc_once_and_only_where_wanted(fresh):
    # The environment `easel serve` restarts itself in: jemalloc first, the user's own preloads and settings kept,
    # and a mark so that a preload ld.so ignored cannot restart it for ever.
    fresh.setattr(memory, "jemalloc", lambda: False)
    fresh.setattr(memory.ctypes.util, "find_library", lambda name: "libjemalloc.so.2" if name == "jemalloc" else None)
    environ = memory.preload_environment({"LD_PRELOAD": "libmine.so", "PATH": "/bin"})
    assert environ == {"LD_PRELOAD": "libjemalloc.so.2 libmine.so", "PATH": "/bin", memory.PRELOADED: "1",
                       "MALLOC_CONF": memory.JEMALLOC_CONF}
    assert memory.preload_environment({})["LD_PRELOAD"] == "libjemalloc.so.2"
    assert memory.preload_environment({"MALLOC_CONF": "narenas:2"})["MALLOC_CONF"] == "narenas:2", "the user's own"
    assert memory.preload_environment(environ) is None
    assert memory.preload_environment({"EASEL_MALLOC": "system"}) is None
    fresh.setattr(memory.ctypes.util, "find_library", lambda name: None)
    assert memory.preload_environment({}) is None, "not installed: glibc's malloc and its trim, as before"


def test_a_libc_that_is_not_glibc_is_left_alone(fresh):
    class Musl:  # has malloc but no gnu_get_libc_version (nor malloc_trim)
        def __init__(self, name):
            pass

    fresh.setattr(memory.ctypes, "CDLL", Musl)
    assert memory.glibc() is None
    assert memory.release() is False


def test_no_c_library_at_all_is_left_alone(fresh):
    def missing(name):
        raise OSError(f"{name}: cannot open shared object file")

    fresh.setattr(memory.ctypes, "CDLL", missing)
    assert memory.glibc() is None and memory.release() is False


def test_the_worker_releases_memory_after_each_job(client, monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "release", lambda: calls.append(time.perf_counter()))
    client.run("generate", prompt="x", steps=2, width=64, height=64, seed=0)
    deadline = time.perf_counter() + 10  # it runs after the ending was sent
    while not calls and time.perf_counter() < deadline:
        time.sleep(0.05)
    assert calls


@pytest.mark.parametrize("latent_size, preview_size, decoded, size", [
    ((64, 64), 256, (32, 32), (256, 256)), ((64, 96), 256, (22, 32), (256, 176)),
    ((64, 64), 512, (64, 64), (512, 512)), ((8, 8), 256, (8, 8), (256, 256))])
def test_taesd_previews_decode_at_about_the_asked_size(demo_root, latent_size, preview_size, decoded, size):
    from diffusers import AutoencoderTiny

    from backend.engine.previews import Previewer

    taesd, seen = AutoencoderTiny.from_pretrained(demo_root / "taesd"), []
    real = taesd.decode
    taesd.decode = lambda latent: seen.append(tuple(latent.shape[-2:])) or real(latent)
    preview = Previewer(None, taesd)(torch.randn(1, 4, *latent_size), preview_size)
    assert seen == [decoded]  # not the job's full size, only to be shrunk afterwards
    assert preview.size == size
    assert np.asarray(preview).std() > 0
