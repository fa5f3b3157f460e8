"""Giving freed memory back to the system: ``easel serve`` on jemalloc, or glibc's malloc trimmed after each job.

Why (measured with ``bench/slow_reader.py``; figures in docs/benchmarks.md, Reliability): glibc's
malloc serves blocks over 128 KiB with their own ``mmap`` only until the first such block is freed;
then it raises that threshold to the block's size (up to 32 MiB), and torch's CPU buffers of a few MiB
(UNet and VAE activations, decoded previews, a result's pixels) are carved out of the malloc arena of
the thread that made them. Freed, they stay resident as holes between live blocks, and each job's
peak regrows the arena with fragmentation: 10 back-to-back 512-px jobs on the demo model grew the
server's RSS by 100-130 MiB at the peak. jemalloc reuses those buffers without the holes (+40-60 MiB,
about the same speed), so ``easel serve`` starts itself again with it preloaded when it is installed (Debian and
Ubuntu: ``libjemalloc2``), as the A1111 WebUI's launcher does with tcmalloc. Its background thread hands
pages unused for about ``DECAY_MS`` back to the system (``JEMALLOC_CONF``; a ``MALLOC_CONF`` of the
user's own is kept instead), so an idle server shrinks by itself, and back-to-back jobs reuse their
pages without faulting them in again.

On glibc's malloc ``release`` runs ``malloc_trim(0)`` after each job (well under a few ms): every whole
free page of every arena goes back, so an idle server holds only what is live. Its cost is the next
job faulting those pages in again: about 0.1 s on a 2-core CPU, which a real model's job hardly notices.

``EASEL_MALLOC=system`` keeps the platform's malloc as it is: no preload, no trim (to compare, or if a
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
_jemalloc: bool | None = None
PRELOADED = "EASEL_MALLOC_PRELOADED"  # set for the restarted process, so a preload that did not take never loops
DECAY_MS = 2000
# A background thread returns pages unused for DECAY_MS; muzzy (MADV_FREE) pages would still count in RSS.
JEMALLOC_CONF = f"background_thread:true,dirty_decay_ms:{DECAY_MS},muzzy_decay_ms:0"


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


def jemalloc() -> bool:
    """Whether jemalloc is this process's malloc (preloaded)."""
    global _jemalloc
    if _jemalloc is None:
        try:
            maps = Path("/proc/self/maps").read_text() if sys.platform.startswith("linux") else ""
        except OSError:
            maps = ""
        _jemalloc = "/libjemalloc" in maps
    return _jemalloc


def allocator() -> str:
    """Which malloc serves this process and how it gives memory back, in words for the server's log."""
    if jemalloc():
        conf = os.environ.get("MALLOC_CONF", "")
        return (f"jemalloc, pages unused for {DECAY_MS / 1000:g} s given back" if conf == JEMALLOC_CONF
                else f"jemalloc (MALLOC_CONF={conf or 'its defaults'})")
    if not enabled():
        return "the platform's malloc, as it is" + (" (EASEL_MALLOC=system)" if _kept_as_is(os.environ) else "")
    return "glibc's malloc, free pages given back after each job"


def enabled() -> bool:
    """Whether ``release`` does anything here: glibc's malloc (not jemalloc, which gives pages back by itself),
    and not turned off with ``EASEL_MALLOC=system``."""
    return not _kept_as_is(os.environ) and not jemalloc() and glibc() is not None


def release() -> bool:
    """Give the free pages glibc's malloc still holds back to the system; True when some went back."""
    return enabled() and glibc().malloc_trim(0) == 1


def preload_environment(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The environment to start this program again in, with jemalloc preloaded; None where that is not
    wanted or cannot be: not Linux, ``EASEL_MALLOC=system``, jemalloc already in use or tried once, not installed."""
    if not sys.platform.startswith("linux") or _kept_as_is(environ) or environ.get(PRELOADED) or jemalloc():
        return None
    library = ctypes.util.find_library("jemalloc")  # a name such as libjemalloc.so.2, which ld.so looks up itself
    if library is None:
        return None
    preload = " ".join(filter(None, (library, environ.get("LD_PRELOAD", ""))))
    return {"MALLOC_CONF": JEMALLOC_CONF, **environ, "LD_PRELOAD": preload, PRELOADED: "1"}


def _kept_as_is(environ: Mapping[str, str]) -> bool:
    return environ.get("EASEL_MALLOC", "").lower() == "system"
