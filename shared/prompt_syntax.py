"""A1111 prompt syntax: emphasis, prompt editing, alternation and BREAK, read into weighted pieces of text.

Emphasis: ``(word)`` is word x 1.1, ``((word))`` x 1.21, ``[word]`` / 1.1, ``(word:1.3)`` x 1.3, and
groups nest by multiplying. ``\\(``, ``\\)``, ``\\[``, ``\\]`` and ``\\\\`` are the characters themselves.
Text outside any group has weight 1, so a prompt without brackets reads as one piece, its own text.

The prompt may change as the picture is painted, step by step (A1111's "new" scheduling):

* ``[from:to:when]`` reads ``from`` up to step ``when`` and ``to`` after it; ``[to:when]`` adds ``to``
  after it, ``[from::when]`` drops ``from`` after it. A ``when`` with a decimal point is a share of the
  steps (``0.5``: half way), without one a step number (``5``);
* ``[a|b|c]`` reads ``a`` at the first step, ``b`` at the second, ... and round again.

``BREAK`` (the word, in capitals) ends the text encoder's chunk: what follows starts a chunk of its own.

Unlike A1111 (which quietly closes what is left open) a bracket that does not match, or a weight that
is not a number, is refused with a message saying where: a painter's typo should not silently change
the emphasis of the rest of the prompt.

Pure and standard library only: hosts check prompts with it before sending, the server parses with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ProtocolError, shown

UP = 1.1  # A1111's factor for one level of ( ) or [ ]
MAX_WEIGHT = 10.0
MAX_NESTING = 32  # groups inside groups: (((word))) is 3. A prompt of 3,000 nested groups meant weights of 10^138
# (and, read the first way, a minute of a core on the thread that takes jobs in; now a tree deeper than Python recurses)
_NUMBER_LIKE = re.compile(r"\s*[-+]?[0-9.]+\s*")
_ESCAPES = "()[]\\"
_BREAK = re.compile(r"\s*\bBREAK\b\s*")

Piece = tuple[str, float]
"""A run of prompt text and its weight."""


@dataclass(frozen=True)
class _Group:
    """Emphasis: what it holds, weighted by ``factor``."""

    factor: float
    nodes: tuple


@dataclass(frozen=True)
class _Edit:
    """``[before:after:when]``: ``when`` as written (a share of the steps with a decimal point, else a step)."""

    before: tuple
    after: tuple
    when: str

    def last_step_before(self, steps: int) -> int:
        value = float(self.when) * steps if "." in self.when else float(self.when)
        return int(min(value, steps))  # (min first: a step of 400 digits reads as infinity)


@dataclass(frozen=True)
class _Alternation:
    options: tuple[tuple, ...]


@dataclass(frozen=True)
class _Separator:
    """A ``:`` or ``|`` at the top of a ``[ ]`` group, until the group closes and says what it is."""

    char: str


@dataclass(frozen=True)
class Prompt:
    """A parsed prompt; ``pieces`` gives its text at a step."""

    nodes: tuple

    @property
    def changes(self) -> bool:
        """Whether the text depends on the step (prompt editing or alternation)."""
        return _changes(self.nodes)

    def pieces(self, step: int = 1, steps: int = 1) -> tuple[Piece, ...]:
        """The prompt as (text, weight) pieces at ``step`` (from 1) of ``steps``, neighbours of equal
        weight merged and empty text dropped."""
        out: list[Piece] = []
        _render(self.nodes, step, steps, 1.0, out)
        return _merged(out)


def read(prompt: str, field: str = "prompt") -> Prompt:
    """The prompt, parsed; raise ``ProtocolError`` (``invalid_field``, naming ``field``) for malformed syntax."""
    items: list = []
    # A stack of open groups: (opening character, its position, the items read inside it so far).
    stack: list[tuple[str, int, list]] = []
    text: list[str] = []

    def flush() -> None:
        if text:
            (stack[-1][2] if stack else items).append("".join(text))
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
            node = _emphasis(inner, field, start) if opening == "(" else _square(inner, field, start)
            (stack[-1][2] if stack else items).append(node)
        elif char in ":|" and stack and stack[-1][0] == "[":
            flush()
            stack[-1][2].append(_Separator(char))
        else:
            text.append(char)
        index += 1
    flush()
    if stack:
        opening, start, _ = stack[-1]
        closing = ")" if opening == "(" else "]"
        raise _error(field, f"'{opening}' at character {start + 1} is never closed with '{closing}' (write "
                     f"\\{opening} for the character itself)")
    return Prompt(tuple(items))


def parse(prompt: str, field: str = "prompt") -> tuple[Piece, ...]:
    """The prompt's (text, weight) pieces at its first step (all of them, for a prompt that does not
    change); raise ``ProtocolError`` for malformed syntax as ``read`` does."""
    return read(prompt, field).pieces()


def chunks(pieces: tuple[Piece, ...]) -> list[tuple[Piece, ...]]:
    """The pieces cut where the prompt says ``BREAK``: each part starts a text-encoder chunk of its own.
    Empty parts are dropped; a prompt without ``BREAK`` is one part."""
    parts: list[list[Piece]] = [[]]
    for text, weight in pieces:
        for number, part in enumerate(_BREAK.split(text)):
            if number:
                parts.append([])
            if part:
                parts[-1].append((part, weight))
    return [tuple(part) for part in parts if part] or [()]


def plain(pieces: tuple[Piece, ...]) -> str:
    """The text of the pieces without their weights."""
    return "".join(text for text, _ in pieces)


def words(pieces: tuple[Piece, ...]) -> str:
    """The text of the pieces without weights or ``BREAK``: for text encoders that take words alone."""
    return " ".join(plain(part) for part in chunks(pieces))


def weighted(pieces: tuple[Piece, ...]) -> bool:
    """Whether any piece has a weight other than 1."""
    return any(weight != 1.0 for _, weight in pieces)


def _emphasis(inner: list, field: str, start: int) -> _Group:
    """A closed ``( )`` group: its words x 1.1, or x the ``:number`` at its end."""
    factor = UP
    if inner and isinstance(inner[-1], str) and ":" in inner[-1]:
        head, _, tail = inner[-1].rpartition(":")
        if not tail.strip() or _NUMBER_LIKE.fullmatch(tail):
            try:
                factor = float(tail)
            except ValueError:
                raise _error(field, f"the weight {shown(tail.strip())} of the group at character {start + 1} is not a "
                             "number (write it like (word:1.3))") from None
            if not 0 <= factor <= MAX_WEIGHT:
                raise _error(field, f"the weight {factor:g} of the group at character {start + 1} must be between 0 "
                             f"and {MAX_WEIGHT:g}")
            inner = inner[:-1] + ([head] if head else [])
    return _Group(factor, tuple(inner))


def _square(inner: list, field: str, start: int):
    """A closed ``[ ]`` group: an alternation when it holds ``|``, an edit when it ends in ``:number``
    after one or two ``:``, else its words / 1.1."""
    options = _split(inner, "|")
    if len(options) > 1:
        return _Alternation(tuple(tuple(option) for option in options))
    parts = _split(inner, ":")
    when = parts[-1]
    if len(parts) in (2, 3) and len(when) == 1 and isinstance(when[0], str) and _NUMBER_LIKE.fullmatch(when[0]):
        try:
            value = float(when[0])
        except ValueError:
            raise _error(field, f"the step {shown(when[0].strip())} of the prompt edit at character {start + 1} is "
                         "not a number (write it like [from:to:0.5] or [from:to:10])") from None
        if value < 0:
            raise _error(field, f"the step {value:g} of the prompt edit at character {start + 1} must be 0 or more")
        return _Edit(tuple(parts[0]) if len(parts) == 3 else (), tuple(parts[-2]), when[0].strip())
    return _Group(1 / UP, tuple(_split(inner, "")[0]))


def _split(inner: list, char: str) -> list[list]:
    """A ``[ ]`` group's items cut at its ``char`` separators; the other separators are text again."""
    parts: list[list] = [[]]
    for item in inner:
        if item == _Separator(char):
            parts.append([])
        else:
            parts[-1].append(item.char if isinstance(item, _Separator) else item)
    return parts


def _render(nodes: tuple, step: int, steps: int, weight: float, out: list[Piece]) -> None:
    for node in nodes:
        if isinstance(node, str):
            out.append((node, weight))
        elif isinstance(node, _Group):
            _render(node.nodes, step, steps, round(weight * node.factor, 6), out)
        elif isinstance(node, _Edit):
            _render(node.before if step <= node.last_step_before(steps) else node.after, step, steps, weight, out)
        else:
            _render(node.options[(step - 1) % len(node.options)], step, steps, weight, out)


def _changes(nodes: tuple) -> bool:
    return any(isinstance(node, (_Edit, _Alternation)) or (isinstance(node, _Group) and _changes(node.nodes))
               for node in nodes)


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
