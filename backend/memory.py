"""Process-memory tuning for ``easel serve``: keep large freed buffers from staying resident.

Why (measured with ``bench/slow_reader.py``, see docs/benchmarks.md, Reliability): glibc's malloc
starts by serving blocks over 128 KiB with their own ``mmap``, which go back to the system when freed.
But the first time such a block is freed it raises that threshold to the block's size (up to 32 MiB),
so from then on torch's CPU buffers of a few MiB — VAE activations, decoded previews, pixels of a
result — are carved out of the malloc arena of the thread that made them. Freed, they stay resident
as holes between live blocks: the GPU thread's arena held 70–110 MiB of free memory across 512 × 512
jobs, and server RSS swung with it from job to job.

Fixing the threshold (``M_MMAP_THRESHOLD``) turns that adjustment off: buffers of 1 MiB and more are
mapped and unmapped again, and the arenas keep only the small, quickly reused blocks. That costs a few
page faults per large buffer, nothing next to the convolutions that fill them. ``release()`` after a
job hands back what free pages the arenas still hold (``malloc_trim``).

Only glibc has these knobs; elsewhere (macOS, Windows, musl) both functions do nothing. A user who
sets glibc's own ``MALLOC_MMAP_THRESHOLD_`` or ``GLIBC_TUNABLES``, or ``EASEL_MALLOC=system``, keeps
the allocator as configured.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # <malloc.h>
MMAP_THRESHOLD = 1 << 20

_libc: ctypes.CDLL | None = None
_tuned = False


def glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (the one with ``mallopt`` / ``malloc_trim``), else None."""
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.gnu_get_libc_version  # musl and others lack it  # noqa: B018
        except (OSError, AttributeError):
            return None
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        _libc = libc
    return _libc


def user_configured(environ: os._Environ | dict = os.environ) -> bool:
    """Whether the user already chose how malloc behaves (then we leave it as they set it)."""
    return (environ.get("EASEL_MALLOC", "").lower() == "system" or "MALLOC_MMAP_THRESHOLD_" in environ
            or "malloc." in environ.get("GLIBC_TUNABLES", ""))


def tune() -> bool:
    """Fix malloc's mmap threshold for this process; True when it was set. Call once at start-up."""
    global _tuned
    libc = glibc()
    if libc is None or user_configured():
        return False
    _tuned = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    if not _tuned:
        log.debug("mallopt(M_MMAP_THRESHOLD) was refused; malloc keeps its defaults")
    return _tuned


def release() -> None:
    """Give the free pages malloc still holds back to the system (after a job; cheap, a few ms at most)."""
    if _tuned:
        glibc().malloc_trim(0)
