"""Prompt embeddings kept between jobs, keyed by what the text encoders see.

A painter re-runs the same prompt many times (new seed, moved selection, other strength); the
text encoders' output only depends on the words, so the second job skips them. The key is the
parsed prompt (its pieces and their weights, with embeddings as their tokens), not the typed text:
``(red:1.0) door`` and ``red door`` share an entry, ``(red:1.2) door`` has its own. Embeddings come
from ``prompts.encode``, which for plain prompts calls the pipeline's own ``encode_prompt`` with the
arguments its ``__call__`` would use, so a job with a cached embedding diffuses exactly the same
numbers as one without.
"""

from __future__ import annotations

import collections
from typing import Callable, Hashable


class PromptCache:
    """A small LRU of prompt embeddings; ``size`` 0 turns it off (each job encodes its prompt)."""

    def __init__(self, size: int):
        self.size = size
        self._entries: collections.OrderedDict[Hashable, dict] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, encode: Callable[[], dict]) -> dict:
        """The pipeline call's prompt arguments for ``key``: kept ones, or ``encode()``'s."""
        if self.size == 0:
            return encode()
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        entry = encode()
        self._entries[key] = entry
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return entry
