"""Network faults between a client and a server on loopback, for the reliability tests."""

from __future__ import annotations

import socket
import threading
import time

UPLOAD_BYTES = 2048  # a client frame at least this large is an upload (hello, submit and status are smaller)


class Blinker:
    """A TCP proxy between a client and the server whose link can be cut, as a Wi-Fi blink or a sleeping
    laptop cuts it: open connections end with no websocket close, and for a while new ones are reset."""

    def __init__(self, upstream: str):
        host, port = upstream.removeprefix("ws://").rstrip("/").split(":")
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"ws://127.0.0.1:{self.listener.getsockname()[1]}/"
        self.down_until = 0.0
        self.cut_on_upload = False  # True: the client's next upload is lost on the way, and the link cut
        self.links: list[socket.socket] = []
        self.connections = 0
        self.frozen = False  # True: nothing passes either way and nothing closes, as with a stopped server
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self, seconds: float) -> None:
        self.down_until = time.monotonic() + seconds
        for end in self.links:
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # that side went already
        self.links.clear()

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self.listener.accept()
            except OSError:
                return  # closed
            if time.monotonic() < self.down_until:
                near.close()
                continue
            self.connections += 1
            far = socket.create_connection(self.upstream)
            self.links += [near, far]
            for source, sink, upstream in ((near, far, True), (far, near, False)):
                threading.Thread(target=self._pump, args=(source, sink, upstream), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        try:
            while data := source.recv(65536):
                if upstream and self.cut_on_upload and len(data) >= UPLOAD_BYTES:
                    self.cut_on_upload = False
                    self.cut(0)  # what the client sent is lost with the link, whatever its sends said
                    return
                while self.frozen:
                    time.sleep(0.02)
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()
        self.cut(0)
