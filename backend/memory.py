"""Giving freed memory back to the system after each job (glibc's ``malloc_trim``).

Why (measured with ``bench/slow_reader.py``; figures in docs/benchmarks.md, Reliability): glibc's
malloc serves blocks over 128 KiB with their own ``mmap`` only until the first such block is freed;
then it raises that threshold to the block's size (up to 32 MiB), and torch's CPU buffers of a few MiB
(UNet and VAE activations, decoded previews, a result's pixels) are carved out of the malloc arena of
the thread that made them. Freed, they stay resident as holes between live blocks: after one warm-up
job the GPU thread's arena held 70-110 MiB of free but resident memory, and server RSS swung with it
from job to job. ``malloc_trim(0)`` hands every whole free page of every arena back (well under a
millisecond to a few ms), so an idle server holds only what is live, and each job starts from an
arena without holes (the peak of 10 back-to-back 512-px jobs was lower than with a trim only when the
queue ran empty). Its cost is the next job faulting those pages in again: about 0.1 s, 1-9 % of a
512-px demo job on a 2-core CPU, a fixed cost that a real model's job hardly notices.

Tried and dropped: a fixed ``M_MMAP_THRESHOLD`` (1-8 MiB) keeps those buffers out of the arenas
altogether, but every large buffer is then mapped and faulted in afresh on each step, which made demo
jobs on the CPU 20-50 % slower; ``M_ARENA_MAX=2`` changed nothing measurable.

Only glibc has ``malloc_trim``; elsewhere (macOS, Windows, musl) ``release`` does nothing, and
``EASEL_MALLOC=system`` turns it off (to compare, or if a platform misbehaves).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_libc: ctypes.CDLL | None = None


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


def enabled() -> bool:
    """Whether ``release`` does anything here: glibc, and not turned off with ``EASEL_MALLOC=system``."""
    return os.environ.get("EASEL_MALLOC", "").lower() != "system" and glibc() is not None


def release() -> bool:
    """Give the free pages malloc still holds back to the system; True when some went back."""
    return enabled() and glibc().malloc_trim(0) == 1
