"""WSGI and ASGI apps behind observekit's middleware, tracing every request.

Served by ``tests/e2e/test_tracing_servers.py`` (gunicorn ``--preload``, uvicorn
``--workers``). Importing this module configures tracing, so under ``--preload``
the SDK is built in the master, before the fork: that is the case under test.
The server spans come from the middleware; the apps only tag them with their PID.

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
import time
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry import trace

import observekit
import observekit.logging
import observekit.tracing
from observekit.asgi import ObservabilityMiddleware as AsgiMiddleware
from observekit.wsgi import ObservabilityMiddleware as WsgiMiddleware

CONFIG = observekit.Config(
    route_resolver=lambda info: info.path if info.path in ("/work", "/boom") else None,
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
StartResponse = Callable[..., Any]


def _sleep_for(query: str) -> float:
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key == "sleep":
            return min(float(value), 5.0)
    return 0.0


def _trace_id() -> str:
    return format(trace.get_current_span().get_span_context().trace_id, "032x")


def _plain_wsgi(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    trace.get_current_span().set_attribute("process.pid", os.getpid())
    if path == "/healthz":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok\n"]
    time.sleep(_sleep_for(environ.get("QUERY_STRING", "")))
    if path == "/boom":
        raise RuntimeError("boom")
    body = json.dumps({"pid": os.getpid(), "trace_id": _trace_id()}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


async def _plain_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
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
    trace.get_current_span().set_attribute("process.pid", os.getpid())
    if scope["path"] == "/healthz":
        await _send(send, 200, b"ok\n")
        return
    # Blocks the event loop on purpose: a busy worker leaves the next
    # connections to the other workers, so a test can reach each of them.
    time.sleep(_sleep_for(scope.get("query_string", b"").decode("latin-1")))
    await _send(send, 200, json.dumps({"pid": os.getpid(), "trace_id": _trace_id()}).encode())


# The server spans come from observekit's middleware, over the global provider
# configure() set up above (before the fork, under --preload).
wsgi_app = WsgiMiddleware(_plain_wsgi, config=CONFIG)
asgi_app = AsgiMiddleware(_plain_asgi, config=CONFIG)


async def _send(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
