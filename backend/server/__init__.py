"""The websocket server. Read it in this order:

- ``session.py``: the protocol of one connection without I/O: ``Session.receive(frame)`` returns a
  ``Reply`` (messages to send, close or not, a job's intake to run off the event loop); hello and
  token, uploads and their budget, job ownership, the handler table.
- ``messages.py``: every message and frame the server sends, built from typed values.
- ``worker.py``: the GPU worker: ``Engine.run`` on the GPU thread, previews and results encoded on
  the encoder thread, a job's messages kept in order.
- ``outbox.py``: one connection's outgoing messages within a byte budget (previews dropped first).
- ``transport.py``: websockets: serving (ws:// or wss://), origin check, frame size limit, the hello
  timeout, token back-off, slow readers cut off, sessions detached and resumed, graceful shutdown;
  ``EaselServer`` and ``ServerThread`` (a server on its own thread).
"""

from backend.server.transport import EaselServer, ServerThread

__all__ = ["EaselServer", "ServerThread"]
