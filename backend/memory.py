"""Giving freed memory back to the system: jemalloc for ``easel serve``, and a purge after each job.

Why (measured with ``bench/slow_reader.py``; figures in docs/benchmarks.md, Reliability): glibc's
malloc serves blocks over 128 KiB with their own ``mmap`` only until the first such block is freed;
then it raises that threshold to the block's size (up to 32 MiB), and torch's CPU buffers of a few MiB
(UNet and VAE activations, decoded previews, a result's pixels) are carved out of the malloc arena of
the thread that made them. Freed, they stay resident as holes between live blocks, and each job's
peak regrows the arena with fragmentation: 10 back-to-back 512-px jobs on the demo model grew the
server's RSS by 100-130 MiB at the peak. jemalloc reuses those buffers without the holes (+53-62 MiB,
the same speed), so ``easel serve`` starts itself again with it preloaded when it is installed (Debian and
Ubuntu: ``libjemalloc2``), as the A1111 WebUI's launcher does with tcmalloc.

After each job ``release`` hands every whole free page back (jemalloc: purge all arenas; glibc:
``malloc_trim(0)``; each well under a few ms), so an idle server holds only what is live. Its cost is
the next job faulting those pages in again: about 0.1 s on a 2-core CPU, which a real model's job
hardly notices.

``EASEL_MALLOC=system`` keeps the platform's malloc as it is: no preload, no purge (to compare, or if a
platform misbehaves). Elsewhere than Linux all of this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path

_libc: ctypes.CDLL | None = None
_jemalloc: ctypes.CDLL | None = None
PRELOADED = "EASEL_MALLOC_PRELOADED"  # set for the restarted process, so a preload that did not take never loops
ARENAS_ALL = 4096  # jemalloc's MALLCTL_ARENAS_ALL: ``arena.4096.purge`` purges every arena


def glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (the one with ``malloc_trim``), else None."""
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.gnu_get_libc_version  # musl and others lack it  # noqa: B018
        except (OSError, AttributeError):
            return None
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        _libc = libc
    return _libc


def jemalloc() -> ctypes.CDLL | None:
    """jemalloc when it is this process's malloc (preloaded), else None."""
    global _jemalloc
    if _jemalloc is None and sys.platform.startswith("linux"):
        try:
            path = next((line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                         if "/libjemalloc" in line), None)
            if path is None:
                return None
            lib = ctypes.CDLL(path)  # already mapped: the same copy that serves malloc
            lib.mallctl.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                    ctypes.c_size_t]
        except (OSError, AttributeError):
            return None
        lib.mallctl.restype = ctypes.c_int
        _jemalloc = lib
    return _jemalloc


def allocator() -> str:
    """Which malloc serves this process, and whether ``release`` runs, in words for the server's log."""
    name = "jemalloc" if jemalloc() is not None else "glibc's malloc" if glibc() else "the platform's malloc"
    if not enabled():
        return f"{name}, as it is" + (" (EASEL_MALLOC=system)" if _kept_as_is(os.environ) else "")
    return f"{name}, free pages given back after each job"


def enabled() -> bool:
    """Whether ``release`` does anything here: jemalloc or glibc, and not turned off with ``EASEL_MALLOC=system``."""
    return not _kept_as_is(os.environ) and (jemalloc() is not None or glibc() is not None)


def release() -> bool:
    """Give the free pages malloc still holds back to the system; True when that was done."""
    if not enabled():
        return False
    if (lib := jemalloc()) is not None:
        return lib.mallctl(f"arena.{ARENAS_ALL}.purge".encode(), None, None, None, 0) == 0
    return glibc().malloc_trim(0) == 1


def preload_environment(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The environment to start this program again in, with jemalloc preloaded; None where that is not
    wanted or cannot be: not Linux, ``EASEL_MALLOC=system``, jemalloc already in use or tried once, not installed."""
    if (not sys.platform.startswith("linux") or _kept_as_is(environ) or environ.get(PRELOADED)
            or jemalloc() is not None):
        return None
    library = ctypes.util.find_library("jemalloc")  # a name such as libjemalloc.so.2, which ld.so looks up itself
    if library is None:
        return None
    preload = " ".join(filter(None, (library, environ.get("LD_PRELOAD", ""))))
    return {**environ, "LD_PRELOAD": preload, PRELOADED: "1"}


def _kept_as_is(environ: Mapping[str, str]) -> bool:
    return environ.get("EASEL_MALLOC", "").lower() == "system"
