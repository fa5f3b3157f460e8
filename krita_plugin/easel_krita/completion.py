"""What the word being typed in a prompt could become: a LoRA tag after ``<``, an embedding by name.

Pure (no Krita, no Qt): the prompt's text and cursor in, the span to replace and the choices out. The
docker shows the choices in a popup as the painter types and puts the one picked in place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

MAX_CHOICES = 50
_TAG = re.compile(r"<(?P<typed>[^<>\s]*)$")  # an open tag just before the cursor: "<", "<lo", "<lora:ink"
_WORD = re.compile(r"(?P<explicit>embedding:)?(?P<typed>[\w.\-]*)$", re.IGNORECASE)
_REST_OF_WORD = re.compile(r"[\w.\-]*")


@dataclass(frozen=True)
class Completion:
    """Replace ``text[start:end]`` with one of ``choices`` (best first)."""

    start: int
    end: int
    choices: tuple[str, ...]


def complete(text: str, cursor: int, loras: Sequence[str], embeddings: Sequence[str]) -> Completion | None:
    """The completion of what is typed at ``cursor``, or None when nothing fits.

    ``<`` and the start of ``<lora:name`` offer LoRA tags (``<lora:name:1>``); a word of two characters
    or more offers the embeddings whose names start with it, and ``embedding:`` all of them. Names match
    without regard to case, those starting with the typed text first, then those containing it."""
    before = text[:cursor]
    tag = _TAG.search(before)
    if tag is not None and loras:
        typed = tag["typed"]
        if "lora:".startswith(typed.lower()):
            typed_name = ""
        elif typed.lower().startswith("lora:") and ":" not in typed[5:]:
            typed_name = typed[5:]
        else:
            return None  # another tag, or the weight is being typed
        names = _matching(typed_name, loras)
        return Completion(tag.start(), cursor, tuple(f"<lora:{name}:1>" for name in names)) if names else None
    word = _WORD.search(before)
    typed, explicit = word["typed"], word["explicit"]
    if not embeddings or (not explicit and len(typed) < 2):
        return None
    end = _REST_OF_WORD.match(text, cursor).end()  # the whole word, when the cursor is inside it
    names = [name for name in _matching(typed, embeddings) if explicit or name.lower() != typed.lower()]
    if not names:
        return None
    return Completion(word.start(), end, tuple((explicit or "") + name for name in names))


def _matching(typed: str, names: Sequence[str]) -> list[str]:
    """``names`` that start with ``typed`` (sorted), then those that contain it, ignoring case."""
    key = typed.lower()
    starts = sorted((name for name in names if name.lower().startswith(key)), key=str.lower)
    within = sorted((name for name in names if key in name.lower() and not name.lower().startswith(key)),
                    key=str.lower)
    return (starts + within)[:MAX_CHOICES]
