"""One connection's outgoing messages, within a byte budget (no I/O: the transport drains it).

A client that reads slower than its jobs make pictures (or not at all) would make the server hold
every preview and result for it. The outbox bounds that:

- while its bytes are within ``budget``, everything waits in order;
- over the budget, queued preview frames go first, oldest first, the newest one kept (the
  ``progress`` that named a dropped frame loses its ``preview`` key, so a client never waits for it);
- still over the budget: ``put`` says so, and the transport disconnects the client if its writer
  then makes no headway for a while (a client that reads slowly but reads is never cut off, however
  large one result is).
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass


@dataclass(eq=False)
class _Item:
    message: dict | str | bytes  # a progress dict stays a dict until it is sent: its preview may go
    size: int
    preview_of: _Item | None = None  # a preview frame: the progress message that names it


class Outbox:
    """Messages waiting to be written to one connection, in order."""

    def __init__(self, budget: int):
        self.budget = budget
        self.bytes = 0
        self.dropped_previews = 0
        self._items: collections.deque[_Item] = collections.deque()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, message: dict | bytes) -> bool:
        """Queue a message; False when the outbox is over its budget even without older previews."""
        if isinstance(message, dict) and message.get("type") == "progress" and "preview" in message:
            item = _Item(message, 120)
            if self._items and isinstance(self._items[-1].message, bytes):
                self._items[-1].preview_of = item  # a preview frame goes out just before its progress
        else:
            if isinstance(message, dict):
                message = json.dumps(message)
            item = _Item(message, len(message))
        self._items.append(item)
        self.bytes += item.size
        if self.bytes > self.budget:
            self._drop_previews()
        return self.bytes <= self.budget

    def take(self) -> str | bytes | None:
        """The next message to write, or None when empty."""
        if not self._items:
            return None
        item = self._items.popleft()
        self.bytes -= item.size
        return json.dumps(item.message) if isinstance(item.message, dict) else item.message

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0

    def _drop_previews(self) -> None:
        previews = [item for item in self._items if item.preview_of is not None]
        for item in previews[:-1]:  # oldest first; the newest preview stays
            if self.bytes <= self.budget:
                return
            self._items.remove(item)
            self.bytes -= item.size
            item.preview_of.message.pop("preview", None)
            self.dropped_previews += 1
