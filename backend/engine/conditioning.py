"""Conditioning kept between jobs and passes, keyed by content.

A painter re-runs a job many times with small changes (another seed, strength, a moved
selection), and a job in several passes reads the same control picture more than once. What a
preprocessor makes of a picture, and what the image encoder makes of a reference, depend only on
those pixels and settings, so they are computed once and looked up by a digest of the pixels.
(Prompt embeddings have their own cache, ``prompt_cache``, keyed by the words.)
"""

from __future__ import annotations

import collections
import hashlib
from typing import Any, Callable

import numpy as np
from PIL import Image


def digest(pixels: np.ndarray | Image.Image) -> str:
    """A short fingerprint of a picture's pixels and shape."""
    array = np.ascontiguousarray(np.asarray(pixels))
    return hashlib.blake2b(array.tobytes() + repr((array.shape, array.dtype.str)).encode(),
                           digest_size=16).hexdigest()


class ContentCache:
    """A small LRU: ``get(key, make)`` returns the value for ``key``, calling ``make`` on a miss.

    ``hits`` and ``misses`` count lookups, so tests and benchmarks can see the reuse.
    """

    def __init__(self, size: int):
        self.size = size
        self.hits = self.misses = 0
        self._entries: collections.OrderedDict[tuple, Any] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple, make: Callable[[], Any]) -> Any:
        if key in self._entries:
            self.hits += 1
            self._entries.move_to_end(key)
            return self._entries[key]
        self.misses += 1
        value = make()
        if self.size > 0:
            self._entries[key] = value
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self._entries.clear()
