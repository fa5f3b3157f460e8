"""The docker's prompt fields: text boxes that offer LoRA tags and embedding names as the painter types,
and weigh the words at the cursor with Ctrl+Up / Ctrl+Down as the WebUI's do.

``completion.complete`` says what the word at the cursor could become; here a ``QCompleter`` popup
shows it, and the pick replaces the word. While the popup is open, Enter, Tab and Esc are the popup's
(QCompleter hands each key to the field first: the field must leave those alone). ``emphasis.reweigh``
says what Ctrl+Up / Ctrl+Down make of the text.
"""

from __future__ import annotations

from typing import Callable

from .completion import Completion, complete
from .emphasis import reweigh
from .qt import QT6, Qt, QtCore, QtGui, QtWidgets

W = QtWidgets
_KEYS = Qt.Key if QT6 else Qt
_POPUP_KEYS = {getattr(_KEYS, name) for name in ("Key_Return", "Key_Enter", "Key_Tab", "Key_Backtab", "Key_Escape")}
_CONTROL = Qt.KeyboardModifier.ControlModifier if QT6 else Qt.ControlModifier
_KEEP_ANCHOR = QtGui.QTextCursor.MoveMode.KeepAnchor if QT6 else QtGui.QTextCursor.KeepAnchor


class _Completing:
    """The completer of one field; ``words()`` gives the LoRA and embedding names on offer now."""

    def __init__(self, field, words: Callable[[], tuple[tuple[str, ...], tuple[str, ...]]]):
        self.field, self.words = field, words
        self.pending: Completion | None = None
        self.completer = W.QCompleter([], field)
        self.completer.setWidget(field)
        self.completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive if QT6 else Qt.CaseInsensitive)
        self.completer.setCompletionMode(W.QCompleter.CompletionMode.UnfilteredPopupCompletion if QT6
                                         else W.QCompleter.UnfilteredPopupCompletion)
        self.completer.activated[str].connect(self.pick)

    def popup_open(self) -> bool:
        return self.completer.popup().isVisible()

    def update(self, text: str, cursor: int, cursor_rect) -> None:
        """Offer what the word at ``cursor`` could become (typed text only: not a pick's own change)."""
        loras, embeddings = self.words()
        self.pending = complete(text, cursor, loras, embeddings)
        if self.pending is None:
            self.completer.popup().hide()
            return
        self.completer.model().setStringList(list(self.pending.choices))
        rect = QtCore.QRect(cursor_rect)
        rect.setWidth(max(200, self.completer.popup().sizeHintForColumn(0) + 24))
        self.completer.complete(rect)
        self.completer.popup().setCurrentIndex(self.completer.model().index(0, 0))  # Enter takes the first

    def pick(self, choice: str) -> None:
        """Put ``choice`` in place of the word it completes."""
        if self.pending is None:
            return
        start, end = self.pending.start, self.pending.end
        self.pending = None
        self.field.replace_span(start, end, choice)


class _Completes:
    """The keys both fields handle: the completer's while its list is open, Ctrl+Up / Ctrl+Down (a mixin,
    before the Qt class)."""

    completing: _Completing

    def keyPressEvent(self, event):  # noqa: N802 (Qt's name)
        if self.completing.popup_open() and event.key() in _POPUP_KEYS:
            event.ignore()  # the completer's: pick or close
            return
        if event.key() in (_KEYS.Key_Up, _KEYS.Key_Down) and event.modifiers() & _CONTROL:
            text, start, end = self.selection()
            new = reweigh(text, start, end, event.key() == _KEYS.Key_Up)
            if new[0] != text:
                self.show_text(*new)
            return
        super().keyPressEvent(event)
        if event.text():  # typed (or deleted) text, not a move of the cursor
            self.completing.update(*self.typed())


class PromptEdit(_Completes, W.QPlainTextEdit):
    """The prompt: several lines."""

    def __init__(self, words):
        super().__init__()
        self.completing = _Completing(self, words)

    def typed(self):
        """The text, the cursor's place in it and the cursor's rectangle."""
        return self.toPlainText(), self.textCursor().position(), self.cursorRect()

    def selection(self):
        cursor = self.textCursor()
        return self.toPlainText(), cursor.selectionStart(), cursor.selectionEnd()

    def replace_span(self, start: int, end: int, text: str) -> None:
        cursor = self.textCursor()
        cursor.setPosition(start)
        cursor.setPosition(end, _KEEP_ANCHOR)
        cursor.insertText(text)  # one undo step in the field
        self.setTextCursor(cursor)

    def show_text(self, text: str, start: int, end: int) -> None:
        """``text`` in place of the field's (one undo step), ``text[start:end]`` selected."""
        self.replace_span(0, len(self.toPlainText()), text)
        cursor = self.textCursor()
        cursor.setPosition(start)
        cursor.setPosition(end, _KEEP_ANCHOR)
        self.setTextCursor(cursor)


class PromptLine(_Completes, W.QLineEdit):
    """The negative prompt: one line."""

    def __init__(self, words):
        super().__init__()
        self.completing = _Completing(self, words)

    def typed(self):
        return self.text(), self.cursorPosition(), self.cursorRect()

    def selection(self):
        start = self.selectionStart() if self.hasSelectedText() else self.cursorPosition()
        return self.text(), start, start + len(self.selectedText())

    def replace_span(self, start: int, end: int, text: str) -> None:
        self.setSelection(start, end - start)
        self.insert(text)  # (undoable in the field, as typing is)

    def show_text(self, text: str, start: int, end: int) -> None:
        self.replace_span(0, len(self.text()), text)
        self.setSelection(start, end - start)
