"""A real HTTP/1.1 server on 127.0.0.1, in a thread, that answers with the headers it received.

Routes (GET/HEAD/POST):

``/echo``              200, JSON ``{"headers": {lowercase name: value}, "path": ...}``
``/redirect?to=URL``   302 to ``URL`` (relative or absolute)
``/status/N``          status N, the echo body
``/flaky/KEY``         503 the first time KEY is seen, then the echo (for retries)
``/slow?s=S``          headers at once, then the body after S seconds
``/nobody``            204
``/sleep?s=S``         the echo after S seconds (nothing sent before: a slow dependency)
Every request is also appended to :attr:`EchoServer.seen` (path, headers).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class EchoServer:
    def __init__(self, server: ThreadingHTTPServer) -> None:
        self.server = server
        self.port = int(server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.flaky: set[str] = set()
        self.lock = threading.Lock()


def _handler(state: list[EchoServer]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        wbufsize = 65536  # headers and body in one send: no delayed-ACK stall per call

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD" and status not in (204, 304):
                self.wfile.write(body)

        def _handle(self) -> None:
            server = state[0]
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            parts = urlsplit(self.path)
            with server.lock:
                server.seen.append((self.path, headers))
            body = json.dumps({"headers": headers, "path": self.path}).encode()
            query = parse_qs(parts.query)
            if parts.path == "/redirect":
                self._answer(302, b"", {"Location": query["to"][0]})
            elif parts.path.startswith("/status/"):
                self._answer(int(parts.path.rsplit("/", 1)[1]), body)
            elif parts.path.startswith("/flaky/"):
                key = parts.path.rsplit("/", 1)[1]
                with server.lock:
                    first = key not in server.flaky
                    server.flaky.add(key)
                self._answer(503 if first else 200, body)
            elif parts.path == "/slow":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.flush()
                time.sleep(float(query.get("s", ["0.2"])[0]))
                self.wfile.write(body)
            elif parts.path == "/sleep":
                time.sleep(float(query.get("s", ["0.2"])[0]))
                self._answer(200, body)
            elif parts.path == "/nobody":
                self._answer(204, b"")
            else:
                self._answer(200, body)

        do_GET = do_POST = do_HEAD = do_PUT = _handle  # noqa: N815

    return Handler


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # 100 concurrent connections must not wait on the backlog
    daemon_threads = True


@contextmanager
def echo_server() -> Iterator[EchoServer]:
    state: list[EchoServer] = []
    httpd = _Server(("127.0.0.1", 0), _handler(state))
    server = EchoServer(httpd)
    state.append(server)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
