"""Loopback HTTP stand-ins for the tests: a quiet request handler that answers in one call, and a server thread."""

from __future__ import annotations

import json
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
