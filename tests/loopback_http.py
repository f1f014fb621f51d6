"""Loopback HTTP stand-ins for the tests: a quiet request handler that answers in one call, and a server thread."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that keeps pytest's output clean and replies with one call."""

    def log_message(self, *args) -> None:
        pass

    def reply(self, status: int, body: object = b"", content_type: str | None = "application/json",
              headers: dict[str, str] | None = None) -> None:
        """Send a whole response; a body that is not bytes is sent as JSON."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def start_server(handler: type[BaseHTTPRequestHandler], port: int = 0, *,
                 poll_interval: float = 0.5) -> ThreadingHTTPServer:
    """Return a server on 127.0.0.1:port (0: any free port), serving from a daemon thread."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": poll_interval}, daemon=True).start()
    return server


class HangingImageHost:
    """An image host on loopback that holds every request until `release()` (or until the client goes away),
    then answers with `image`; it counts the requests it got. Stands for a slow or stuck image server, and
    lets a test know the moment a worker started fetching."""

    def __init__(self, image: bytes) -> None:
        self.requests = 0
        self._released = threading.Event()
        owner = self

        class Handler(QuietHandler):
            def do_GET(self):  # noqa: N802 (http.server API)
                owner.requests += 1
                while not owner._released.wait(0.05):
                    if self._client_gone():
                        return
                self.reply(200, image, content_type="image/png")

            def _client_gone(self) -> bool:
                import select

                readable, _, _ = select.select([self.connection], [], [], 0)
                return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)

        self.server = start_server(Handler, poll_interval=0.05)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def release(self) -> None:
        """Answer every held request and every later one at once."""
        self._released.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
