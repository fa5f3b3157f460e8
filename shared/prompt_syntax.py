"""A1111 prompt emphasis, read into weighted pieces of text.

``(word)`` is word x 1.1, ``((word))`` x 1.21, ``[word]`` / 1.1, ``(word:1.3)`` x 1.3, and groups nest
by multiplying. ``\\(``, ``\\)``, ``\\[``, ``\\]`` and ``\\\\`` are the characters themselves. Text
outside any group has weight 1, so a prompt without brackets reads as one piece, its own text.

Unlike A1111 (which quietly closes what is left open) a bracket that does not match, or a weight that
is not a number, is refused with a message saying where: a painter's typo should not silently change
the emphasis of the rest of the prompt. ``[from:to:when]`` prompt editing is refused as unsupported.

Pure and standard library only: hosts check prompts with it before sending, the server parses with it.
"""

from __future__ import annotations

import re

from .errors import ProtocolError, shown

UP = 1.1  # A1111's factor for one level of ( ) or [ ]
MAX_WEIGHT = 10.0
MAX_NESTING = 32  # groups inside groups: (((word))) is 3. Each closing reweighs all it holds, so a prompt of
# 3,000 nested groups took a minute of a core to read (on the thread that takes jobs in), for weights of 10^138
_NUMBER_LIKE = re.compile(r"\s*[-+]?[0-9.]+\s*")
_ESCAPES = "()[]\\"

Piece = tuple[str, float]
"""A run of prompt text and its weight."""


def parse(prompt: str, field: str = "prompt") -> tuple[Piece, ...]:
    """The prompt as (text, weight) pieces, neighbours of equal weight merged and empty text dropped;
    raise ``ProtocolError`` (``invalid_field``, naming ``field``) for malformed emphasis."""
    pieces: list[Piece] = []
    # A stack of open groups: (opening character, its position, the pieces read inside it so far).
    stack: list[tuple[str, int, list[Piece]]] = []
    text: list[str] = []

    def flush() -> None:
        if text:
            (stack[-1][2] if stack else pieces).append(("".join(text), 1.0))
            text.clear()

    index = 0
    while index < len(prompt):
        char = prompt[index]
        if char == "\\" and index + 1 < len(prompt) and prompt[index + 1] in _ESCAPES:
            text.append(prompt[index + 1])
            index += 2
            continue
        if char in "([":
            if len(stack) == MAX_NESTING:
                raise _error(field, f"'{char}' at character {index + 1} opens a group {MAX_NESTING + 1} deep; groups "
                             f"nest at most {MAX_NESTING} deep (a weight says more: (word:1.5))")
            flush()
            stack.append((char, index, []))
        elif char in ")]":
            if not stack:
                raise _error(field, f"'{char}' at character {index + 1} closes nothing (write \\{char} for the "
                             "character itself)")
            if stack[-1][0] != ("(" if char == ")" else "["):
                raise _error(field, f"'{char}' at character {index + 1} does not close the '{stack[-1][0]}' at "
                             f"character {stack[-1][1] + 1}")
            flush()
            opening, start, inner = stack.pop()
            inner = _weighted(opening, inner, field, start)
            (stack[-1][2] if stack else pieces).extend(inner)
        else:
            text.append(char)
        index += 1
    flush()
    if stack:
        opening, start, _ = stack[-1]
        closing = ")" if opening == "(" else "]"
        raise _error(field, f"'{opening}' at character {start + 1} is never closed with '{closing}' (write "
                     f"\\{opening} for the character itself)")
    return _merged(pieces)


def plain(pieces: tuple[Piece, ...]) -> str:
    """The text of the pieces without their weights."""
    return "".join(text for text, _ in pieces)


def weighted(pieces: tuple[Piece, ...]) -> bool:
    """Whether any piece has a weight other than 1."""
    return any(weight != 1.0 for _, weight in pieces)


def _weighted(opening: str, inner: list[Piece], field: str, start: int) -> list[Piece]:
    """A closed group's pieces with its factor applied: 1.1, 1/1.1, or the ``:number`` at its end."""
    factor = UP if opening == "(" else 1 / UP
    if inner and inner[-1][1] == 1.0 and ":" in inner[-1][0]:
        head, _, tail = inner[-1][0].rpartition(":")
        if opening == "(" and (not tail.strip() or _NUMBER_LIKE.fullmatch(tail)):
            try:
                factor = float(tail)
            except ValueError:
                raise _error(field, f"the weight {shown(tail.strip())} of the group at character {start + 1} is not a "
                             "number (write it like (word:1.3))") from None
            if not 0 <= factor <= MAX_WEIGHT:
                raise _error(field, f"the weight {factor:g} of the group at character {start + 1} must be between 0 "
                             f"and {MAX_WEIGHT:g}")
            inner = inner[:-1] + ([(head, 1.0)] if head else [])
        elif opening == "[" and _NUMBER_LIKE.fullmatch(tail):
            raise _error(field, f"[from:to:when] prompt editing (character {start + 1}) is not supported; for a "
                         "weight write (word:0.9)")
    return [(text, round(weight * factor, 6)) for text, weight in inner]


def _merged(pieces: list[Piece]) -> tuple[Piece, ...]:
    out: list[Piece] = []
    for text, weight in pieces:
        if not text:
            continue
        if out and out[-1][1] == weight:
            out[-1] = (out[-1][0] + text, weight)
        else:
            out.append((text, weight))
    return tuple(out)


def _error(field: str, message: str) -> ProtocolError:
    return ProtocolError("invalid_field", f"`{field}`: {message}", field)
