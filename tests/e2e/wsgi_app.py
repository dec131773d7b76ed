"""The WSGI application the end-to-end tests serve with gunicorn.

Importing this module points the root logger at stdout (JSON lines) and wraps
a small app in observekit's WSGI middleware. Every response carries
``X-Worker-PID`` so a test can tell which worker process served it. Routes:

``/``        two app lines (``seen_header`` = the raw ``X-Request-ID`` as the
             app saw it), 1 ms apart; JSON body with ``get_request_id()``.

Every app line also carries ``probe``, the request's raw ``User-Agent``: the
tests send a unique one per request, so they can find all of a request's lines
(the access line has it as ``user_agent.original``) without trusting
``request_id``, which is what is under test.
``/quiet``   one app line that does not repeat any header (for invalid IDs).
``/thread``  a thread started with a copied context logs two lines 1 ms apart.
``/stream``  a body of ``STREAM_CHUNKS`` chunks, each logged as it is produced.
``/boom``    logs one line, then raises ``RuntimeError("boom")``.
``/own-header`` sets its own ``X-Request-ID`` response header.
``/healthz`` readiness probe (excluded from the access log by default).
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import observekit
from observekit.wsgi import ObservabilityMiddleware

CONFIG = observekit.Config(service_name="e2e-wsgi", service_version="e2e", environment="e2e")
observekit.logging.configure(CONFIG)

STREAM_CHUNKS = 3
log = logging.getLogger("e2e.app")

StartResponse = Callable[..., Any]


def _headers(
    content_type: str, extra: list[tuple[str, str]] | None = None
) -> list[tuple[str, str]]:
    return [("Content-Type", content_type), ("X-Worker-PID", str(os.getpid())), *(extra or [])]


def _json(start_response: StartResponse, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response("200 OK", _headers("application/json", [("Content-Length", str(len(data)))]))
    return [data]


def _stream(seen: str | None, probe: str | None) -> Iterator[bytes]:
    for i in range(STREAM_CHUNKS):
        log.info("stream chunk", extra={"seen_header": seen, "probe": probe, "chunk": i})
        time.sleep(0.001)
        yield f"{i}:{observekit.get_request_id()}\n".encode()


def _in_thread(seen: str | None, probe: str | None) -> str | None:
    result: dict[str, str | None] = {}

    def work() -> None:
        rid = observekit.get_request_id()
        log.info(
            "thread start", extra={"seen_header": seen, "probe": probe, "thread_request_id": rid}
        )
        time.sleep(0.001)
        rid = observekit.get_request_id()
        log.info(
            "thread end", extra={"seen_header": seen, "probe": probe, "thread_request_id": rid}
        )
        result["request_id"] = rid

    thread = threading.Thread(target=contextvars.copy_context().run, args=(work,))
    thread.start()
    thread.join()
    return result.get("request_id")


def routes(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    seen = environ.get("HTTP_X_REQUEST_ID")
    probe = environ.get("HTTP_USER_AGENT")
    if path == "/":
        log.info("handler start", extra={"seen_header": seen, "probe": probe})
        time.sleep(0.001)
        log.info("handler end", extra={"seen_header": seen, "probe": probe})
        return _json(start_response, {"request_id": observekit.get_request_id()})
    if path == "/quiet":
        log.info("quiet handler", extra={"probe": probe})
        return _json(start_response, {"request_id": observekit.get_request_id()})
    if path == "/thread":
        thread_rid = _in_thread(seen, probe)
        return _json(
            start_response,
            {"request_id": observekit.get_request_id(), "thread_request_id": thread_rid},
        )
    if path == "/stream":
        start_response("200 OK", _headers("text/plain"))
        return _stream(seen, probe)
    if path == "/boom":
        log.info("about to fail", extra={"seen_header": seen, "probe": probe})
        raise RuntimeError("boom")
    if path == "/own-header":
        start_response("200 OK", _headers("text/plain", [("X-Request-ID", "set-by-the-app")]))
        return [b"own header\n"]
    if path == "/healthz":
        start_response("200 OK", _headers("text/plain"))
        return [b"ok\n"]
    start_response("404 Not Found", _headers("text/plain"))
    return [b"not found\n"]


app = ObservabilityMiddleware(routes, config=CONFIG)
