"""A tiny JSON HTTP server on 127.0.0.1 for the fakes of outside services."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# path, headers, body -> (status, JSON or None), or (status, JSON or None, response headers)
Route = Callable[[str, Message, bytes], tuple[Any, ...]]
GetRoute = Callable[[str], tuple[int, bytes, str]]  # path -> (status, body, content type)


class JsonServer:
    """Calls route(path, headers, body) for every POST; answers its (status, JSON or None).
    GETs go to `get` when given (files such as an HLS stream). Each `observers` entry is called
    with the path before a POST is answered: what the caller's side looks like meanwhile."""

    def __init__(self, route: Route, get: GetRoute | None = None) -> None:
        self.observers: list[Callable[[str], None]] = []
        observers = self.observers

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                for observe in observers:
                    observe(self.path)
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, body, *more = route(self.path, self.headers, raw)
                data = json.dumps(body).encode() if body is not None else b""
                self._send(status, data, "application/json", more[0] if more else {})

            def do_GET(self) -> None:
                status, data, kind = get(self.path) if get else (404, b"", "text/plain")
                self._send(status, data, kind)

            def _send(
                self, status: int, data: bytes, kind: str, headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                if data:
                    self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
