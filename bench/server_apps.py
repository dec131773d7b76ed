"""The apps `bench/servers.py` runs under real servers, one stack per BENCH_STACK value.

WSGI (``bench.server_apps:wsgi_app``, for gunicorn) and ASGI
(``bench.server_apps:asgi_app``, for uvicorn), each a tiny "hello" app:

- ``bare``: the app alone;
- ``observekit``: everything on: request ID, JSON access line (to stdout, which
  the bench discards), statsd RED metrics (to BENCH_STATSD_PORT on 127.0.0.1)
  and a sampled server span exported through the batch processor over OTLP/HTTP
  (to BENCH_OTLP_ENDPOINT);
- ``observekit-ids``, ``-access``, ``-statsd``, ``-spans``: one part of that
  stack at a time (request IDs are always on), to see what each costs;
- ``otel``: OpenTelemetry's WSGI/ASGI middleware with the SDK, batch span
  processor and metrics on, exporting to the same OTLP endpoint;
- ``floor`` (WSGI): the same signals written by hand in one function, as little
  Python as they take (see ``_floor_wsgi``): a lower bound for what any Python
  middleware that writes them costs on the machine.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

STACK = os.environ.get("BENCH_STACK", "bare")
OTLP = os.environ.get("BENCH_OTLP_ENDPOINT", "http://127.0.0.1:4318")
STATSD_PORT = int(os.environ.get("BENCH_STATSD_PORT", "8125"))
BODY = b"hello"


def _bare_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [BODY]


async def _bare_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await receive()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")],
        }
    )
    await send({"type": "http.response.body", "body": BODY})


# Parts of the full stack, to see what each costs under a real server.
_PARTS = {
    "observekit": {"access", "statsd", "spans"},
    "observekit-ids": set(),
    "observekit-access": {"access"},
    "observekit-statsd": {"statsd"},
    "observekit-spans": {"spans"},
}


def _observekit_config() -> Any:
    import observekit

    parts = _PARTS[STACK]
    return observekit.Config(
        service_name="bench",
        access_log="access" in parts,
        metrics="statsd" if "statsd" in parts else "none",
        statsd_host="127.0.0.1",
        statsd_port=STATSD_PORT,
        traces_exporter="otlp" if "spans" in parts else "none",
        otlp_endpoint=OTLP,
    )


def _otel_providers() -> tuple[Any, Any]:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": "bench"})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=OTLP.rstrip("/") + "/v1/traces"))
    )
    meter_provider = MeterProvider(resource=resource, metric_readers=[InMemoryMetricReader()])
    return tracer_provider, meter_provider


def _floor_wsgi() -> Any:
    """Request ID, context, echoed header, JSON access line, statsd timer and counter
    (packed three requests to a datagram) and the span's data, in one function.

    It leaves out what makes the real thing safe and complete, which can only make it
    cheaper: no escaping (the bench's values need none), no error handling, no
    OpenTelemetry (the span is a tuple kept in memory, never exported), one fixed route.
    """
    import collections
    import contextvars
    import socket
    import time
    from random import getrandbits

    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("floor_request_id")
    perf_counter, now, write = time.perf_counter, time.time, os.write
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.connect(("127.0.0.1", STATSD_PORT))
    packet: list[str] = []
    spans: collections.deque[tuple[Any, ...]] = collections.deque(maxlen=2048)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start = perf_counter()
        rid = getrandbits(128).to_bytes(16, "big").hex()
        span_id = getrandbits(64).to_bytes(8, "big").hex()
        method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
        token = request_id.set(rid)
        seen: list[str] = []

        def respond(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            seen.append(status)
            return start_response(status, [*headers, ("X-Request-ID", rid)], exc_info)

        try:
            body = _bare_wsgi(environ, respond)
        finally:
            request_id.reset(token)
        status = seen[0][:3]
        ms = (perf_counter() - start) * 1000.0
        write(
            1,
            f'{{"timestamp": {now()}, "level": "INFO", "logger": "access", "message": '
            f'"{method} {path} {status}", "request_id": "{rid}", "trace_id": "{rid}", '
            f'"span_id": "{span_id}", "http.request.method": "{method}", "url.path": '
            f'"{path}", "http.route": null, "http.response.status_code": {status}, '
            f'"duration_ms": {ms}, "client.address": "{environ.get("REMOTE_ADDR")}", '
            f'"user_agent.original": "{environ.get("HTTP_USER_AGENT")}", '
            f'"service.name": "bench"}}\n'.encode(),
        )
        tags = f"|#http.request.method:{method},http.route:unmatched,http.response.status_code:{status}"
        packet.append(
            f"bench.http.server.request.duration:{ms}|ms{tags}\nbench.http.server.requests:1|c{tags}"
        )
        if len(packet) == 3:
            try:  # noqa: SIM105 - a try costs nothing in 3.11; suppress() is a call
                sock.send("\n".join(packet).encode())
            except OSError:
                pass
            packet.clear()
        spans.append((rid, span_id, start, ms, method, path, status))
        return body

    return app


def _build_wsgi() -> Any:
    if STACK == "bare":
        return _bare_wsgi
    if STACK == "floor":
        return _floor_wsgi()
    if STACK in _PARTS:
        import observekit
        from observekit.wsgi import ObservabilityMiddleware

        config = _observekit_config()
        observekit.logging.configure(config)
        return ObservabilityMiddleware(_bare_wsgi, config=config)
    if STACK == "otel":
        from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

        tracer_provider, meter_provider = _otel_providers()
        return OpenTelemetryMiddleware(
            _bare_wsgi, tracer_provider=tracer_provider, meter_provider=meter_provider
        )
    raise SystemExit(f"unknown BENCH_STACK {STACK!r}")


def _build_asgi() -> Any:
    if STACK == "bare":
        return _bare_asgi
    if STACK in _PARTS:
        import observekit
        from observekit.asgi import ObservabilityMiddleware

        config = _observekit_config()
        observekit.logging.configure(config)
        return ObservabilityMiddleware(_bare_asgi, config=config)
    if STACK == "otel":
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        tracer_provider, meter_provider = _otel_providers()
        return OpenTelemetryMiddleware(
            _bare_asgi, tracer_provider=tracer_provider, meter_provider=meter_provider
        )
    raise SystemExit(f"unknown BENCH_STACK {STACK!r}")


_kind = os.environ.get("BENCH_KIND", "wsgi")
wsgi_app = _build_wsgi() if _kind == "wsgi" else None
asgi_app = _build_asgi() if _kind == "asgi" else None
