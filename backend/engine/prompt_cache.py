"""Prompt embeddings kept between jobs, keyed by (model, prompt, negative prompt, guidance on/off).

A painter re-runs the same prompt many times (new seed, moved selection, other strength); the
text encoders' output only depends on the words, so the second job skips them. Embeddings come
from the pipeline's own ``encode_prompt`` with the arguments its ``__call__`` would use, so a job
with a cached embedding diffuses exactly the same numbers as one without.
"""

from __future__ import annotations

import collections


class PromptCache:
    """A small LRU of prompt embeddings; ``size`` 0 turns it off (the pipeline encodes each call)."""

    def __init__(self, size: int):
        self.size = size
        self._entries: collections.OrderedDict[tuple, dict] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def kwargs(self, model_name: str, pipe, family: str, prompt: str, negative: str | None, guided: bool) -> dict:
        """The pipeline call's prompt arguments: the words themselves, or their cached embeddings."""
        if self.size == 0:
            return {"prompt": prompt, "negative_prompt": negative}
        key = (model_name, prompt, negative, guided)
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        entry = self._encode(pipe, family, prompt, negative, guided)
        self._entries[key] = entry
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return entry

    @staticmethod
    def _encode(pipe, family: str, prompt: str, negative: str | None, guided: bool) -> dict:
        import torch

        device = pipe._execution_device
        with torch.no_grad():
            if family == "sdxl":
                embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
                    prompt, device=device, num_images_per_prompt=1, do_classifier_free_guidance=guided,
                    negative_prompt=negative)
                return {"prompt_embeds": embeds, "negative_prompt_embeds": negative_embeds,
                        "pooled_prompt_embeds": pooled, "negative_pooled_prompt_embeds": negative_pooled}
            embeds, negative_embeds = pipe.encode_prompt(prompt, device, 1, guided, negative_prompt=negative)
        return {"prompt_embeds": embeds, "negative_prompt_embeds": negative_embeds}
