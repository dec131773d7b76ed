"""WSGI and ASGI apps that trace every request with ``observekit.tracing.ServerSpans``.

Served by ``tests/e2e/test_tracing_servers.py`` (gunicorn ``--preload``, uvicorn
``--workers``). Importing this module configures tracing, so under ``--preload``
the SDK is built in the master, before the fork: that is the case under test.
The core does not call ServerSpans yet, so the apps call it themselves (start,
activate, finish) exactly as the core will.

Environment: ``TRACING_E2E_ENDPOINT`` (OTLP/HTTP base URL, required),
``TRACING_E2E_SHUTDOWN`` (``shutdown_timeout``, default 5),
``TRACING_E2E_DELAY`` (batch schedule delay in s, default 0.2).

Routes: ``/work`` (route ``/work``; ``?sleep=S`` sleeps S seconds, blocking, in
both apps; answers the
worker PID and the trace ID as JSON), ``/boom`` (raises), ``/healthz``. Every span
gets a ``process.pid`` attribute: the Resource was built before the fork.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry import trace

import observekit
import observekit.logging
import observekit.tracing

CONFIG = observekit.Config(
    service_name="e2e-tracing",
    service_version="e2e",
    environment="e2e",
    traces_exporter="otlp",
    otlp_endpoint=os.environ["TRACING_E2E_ENDPOINT"],
    shutdown_timeout=float(os.environ.get("TRACING_E2E_SHUTDOWN", "5")),
)
observekit.logging.configure(CONFIG)
observekit.tracing.configure(
    CONFIG, schedule_delay=float(os.environ.get("TRACING_E2E_DELAY", "0.2"))
)
SPANS = observekit.tracing.ServerSpans(CONFIG)
_HEADERS = tuple((name, "HTTP_" + name.upper().replace("-", "_")) for name in SPANS.header_names)

StartResponse = Callable[..., Any]


def _sleep_for(query: str) -> float:
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key == "sleep":
            return min(float(value), 5.0)
    return 0.0


def wsgi_app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path == "/healthz":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok\n"]
    query = environ.get("QUERY_STRING", "")
    headers = {name: environ[key] for name, key in _HEADERS if key in environ}
    handle = SPANS.start(
        environ["REQUEST_METHOD"],
        path,
        environ["wsgi.url_scheme"],
        headers,
        client=environ.get("REMOTE_ADDR"),
        server_address=environ.get("SERVER_NAME"),
        server_port=int(environ["SERVER_PORT"]),
        user_agent=environ.get("HTTP_USER_AGENT"),
        protocol_version=environ.get("SERVER_PROTOCOL", "").partition("/")[2] or None,
        query=query or None,
        route=path if path in ("/work", "/boom") else None,
    )
    token = SPANS.activate(handle)
    status, error = 200, None
    try:
        trace.get_current_span().set_attribute("process.pid", os.getpid())
        time.sleep(_sleep_for(query))
        if path == "/boom":
            raise RuntimeError("boom")
        body = json.dumps({"pid": os.getpid(), "trace_id": SPANS.trace_id(handle)}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    except Exception as exc:
        status, error = 500, exc
        start_response(
            "500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info()
        )
        return [b"error\n"]
    finally:
        SPANS.deactivate(token)
        SPANS.finish(handle, status=status, route=None, error=error, error_type=None)


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                # uvicorn ends a SIGTERM by re-raising it with the default handler:
                # no exit handlers run, so the flush happens here.
                await observekit.tracing.ashutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/healthz":
        await _send(send, 200, b"ok\n")
        return
    wanted = set(SPANS.header_names)
    headers = {
        k.decode("latin-1"): v.decode("latin-1")
        for k, v in scope["headers"]
        if k.decode("latin-1") in wanted
    }
    query = scope.get("query_string", b"").decode("latin-1")
    server = scope.get("server") or (None, None)
    client = scope.get("client") or (None, None)
    handle = SPANS.start(
        scope["method"],
        path,
        scope.get("scheme", "http"),
        headers,
        client=client[0],
        server_address=server[0],
        server_port=server[1],
        user_agent=None,
        protocol_version=scope.get("http_version"),
        query=query or None,
        route="/work" if path == "/work" else None,
    )
    token = SPANS.activate(handle)
    status, error = 200, None
    try:
        trace.get_current_span().set_attribute("process.pid", os.getpid())
        # Blocks the event loop on purpose: a busy worker leaves the next
        # connections to the other workers, so a test can reach each of them.
        time.sleep(_sleep_for(query))
        body = json.dumps({"pid": os.getpid(), "trace_id": SPANS.trace_id(handle)}).encode()
        await _send(send, 200, body)
    except Exception as exc:
        status, error = 500, exc
        raise
    finally:
        SPANS.deactivate(token)
        SPANS.finish(handle, status=status, route=None, error=error, error_type=None)


async def _send(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
