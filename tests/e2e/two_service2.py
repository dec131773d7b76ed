"""service2 of the two-service end-to-end test: ASGI under uvicorn, one database query.

Served by ``tests/e2e/test_two_services.py``. ``/work`` logs one app line, runs a
sqlite3 query inside a ``SELECT`` span (``db.system`` ``sqlite``) and another app
line, and answers JSON with the request ID and trace ID it saw. Every app line
carries ``probe``: the caller's ``User-Agent``, which the test makes unique per
request (so it can find the lines without trusting ``request_id``).

Environment: ``TWO_E2E_ENDPOINT`` (OTLP/HTTP base URL).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from typing import Any

from opentelemetry import trace

import observekit
import observekit.logging
import observekit.tracing
from observekit.asgi import ObservabilityMiddleware

CONFIG = observekit.Config(
    service_name="e2e-service2",
    service_version="e2e",
    environment="e2e",
    traces_exporter="otlp",
    otlp_endpoint=os.environ["TWO_E2E_ENDPOINT"],
    route_resolver=lambda info: info.path if info.path == "/work" else None,
)
observekit.logging.configure(CONFIG)
observekit.tracing.configure(CONFIG, schedule_delay=0.1)
log = logging.getLogger("e2e.service2")
tracer = trace.get_tracer("e2e.service2")
_db = sqlite3.connect(":memory:", check_same_thread=False)
_db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
_db.executemany("INSERT INTO items (name) VALUES (?)", [("a",), ("b",), ("c",)])


def _probe(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"user-agent":
            return str(value.decode("latin-1"))
    return None


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await observekit.tracing.ashutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    body = b"ok\n"
    if scope["path"] == "/work":
        probe = _probe(scope)
        log.info("service2 got the call", extra={"probe": probe})
        statement = "SELECT count(*) FROM items"
        with tracer.start_as_current_span(
            "SELECT",
            kind=trace.SpanKind.CLIENT,
            attributes={"db.system": "sqlite", "db.statement": statement},
        ):
            (count,) = _db.execute(statement).fetchone()
        log.info("service2 queried the database", extra={"probe": probe, "count": count})
        context = trace.get_current_span().get_span_context()
        body = json.dumps(
            {
                "request_id": observekit.get_request_id(),
                "trace_id": format(context.trace_id, "032x"),
                "count": count,
            }
        ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


app = ObservabilityMiddleware(_app, config=CONFIG)
