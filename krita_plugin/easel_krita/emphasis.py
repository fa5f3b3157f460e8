"""Ctrl+Up / Ctrl+Down in a prompt, as in the WebUI: the weight of the words at the cursor, up or down.

Pure (no Krita, no Qt): the text and selection in, the new text and selection out. The selected words
become ``(words:1.1)``; inside such a group its weight moves by the step, and at 1 the brackets go.
Without a selection the group the cursor is in is taken, else the word under it.
"""

from __future__ import annotations

import re

from .protocol import prompt_syntax

STEP = 0.1
_GROUP_END = re.compile(r":\s*([-+]?(?:\d+\.?\d*|\.\d+))\s*\)")  # ":1.2)" after a group's words
_WORD_EDGE = set(" \t\n,.;:()[]<>|")


def reweigh(text: str, start: int, end: int, up: bool) -> tuple[str, int, int]:
    """``text`` with the words of ``text[start:end]`` (or those at the cursor) weighted one step up or
    down, and the selection on them afterwards; unchanged when there is nothing to weigh."""
    if start == end:
        start, end = _group_at(text, start) or _word_at(text, start)
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start == end:
        return text, start, end
    weight = _GROUP_END.match(text, end) if start > 0 and text[start - 1] == "(" else None
    if weight is None:  # plain words: a group of their own
        new = 1 + STEP if up else 1 - STEP
        return f"{text[:start]}({text[start:end]}:{new:g}){text[end:]}", start + 1, end + 1
    new = round(min(prompt_syntax.MAX_WEIGHT, max(0.0, float(weight[1]) + (STEP if up else -STEP))), 2)
    if new == 1:  # weight 1 is no group at all
        return text[:start - 1] + text[start:end] + text[weight.end():], start - 1, end - 1
    return f"{text[:end]}:{new:g}){text[weight.end():]}", start, end


def _group_at(text: str, cursor: int) -> tuple[int, int] | None:
    """The words of the ``(words:number)`` group the cursor is in."""
    opening = text.rfind("(", 0, cursor)
    if opening < 0 or ")" in text[opening:cursor]:
        return None
    colon = text.find(":", opening)
    if colon < 0 or _GROUP_END.match(text, colon) is None or "(" in text[opening + 1:colon]:
        return None
    return opening + 1, colon


def _word_at(text: str, cursor: int) -> tuple[int, int]:
    start = end = cursor
    while start > 0 and text[start - 1] not in _WORD_EDGE:
        start -= 1
    while end < len(text) and text[end] not in _WORD_EDGE:
        end += 1
    return start, end
