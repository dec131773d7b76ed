#!/usr/bin/env python
"""In-process overhead benchmark: what each middleware stack adds per request.

Runs every stack -- bare app, observekit, and the alternatives users assemble by
hand -- in ONE process and ONE run, interleaved: every round runs every stack
once (``--requests`` requests each) in a freshly shuffled order, and a stack's
figure is the median over rounds of its per-request time. "Added" is that median
minus the bare app's median (WSGI: a tiny WSGI app; ASGI: a bare Starlette app).

    .venv/bin/python bench/overhead.py                 # default run, ~2.5 minutes
    .venv/bin/python bench/overhead.py --quick         # bounded CI run, well under 60 s
    .venv/bin/python bench/overhead.py --json bench/results/overhead.json

Before measuring, every stack is checked to really do its job (IDs echoed,
access/JSON lines written and parseable, spans exported, metrics recorded,
statsd datagrams sent); a stack that does not makes the run fail loudly.
See bench/README.md for what each stack is and how to read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import io
import json
import logging
import math
import os
import platform
import random
import socket
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import requests
import requests.adapters
import statsd
from asgi_correlation_id import CorrelationIdMiddleware
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware as OtelASGI
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware as OtelWSGI
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from pythonjsonlogger.json import JsonFormatter as StockJsonFormatter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import observekit
import observekit.asgi
import observekit.logging
import observekit.tracing
import observekit.wsgi

perf_counter_ns = time.perf_counter_ns
process_time_ns = time.process_time_ns
CLOCKS = ("wall", "cpu")

# Many short rounds rather than a few long ones: on a shared machine another
# process's burst then spoils a few samples (which the median ignores) instead of
# every sample a little.
DEFAULT_ROUNDS = 81
DEFAULT_REQUESTS = 1500
QUICK_ROUNDS = 15
QUICK_REQUESTS = 300
NOISY_SE = 0.05  # warn when an "added" figure's standard error exceeds this share of it

HAND_LOGGER = "app.requests"
ACCESS_LOGGER = "observekit.access"
VERIFY_ID = "bench-verify-0123456789"


class BenchError(RuntimeError):
    """A stack did not do what it is supposed to do: the numbers would be meaningless."""


def require(condition: object, what: str) -> None:
    if not condition:
        raise BenchError(what)


# --------------------------------------------------------------------------------------
# The logging sink: identical for every stack.
# --------------------------------------------------------------------------------------


class Sink:
    """The root logger (INFO) has the one handler observekit.logging.configure()
    installs, on os.devnull: observekit's lines go there. The hand-written
    stack's logger has its own StreamHandler on the same devnull stream with the
    stock python-json-logger formatter and propagate=False. So every line is
    formatted exactly once, by exactly one formatter, and written once.
    """

    def __init__(self) -> None:
        self.stream = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        # observekit's lines: exactly what observekit.logging.configure() installs.
        self.root_handler = observekit.logging.configure(
            observekit.Config(service_name="bench"), stream=self.stream, level="INFO"
        )

        self.hand_logger = logging.getLogger(HAND_LOGGER)
        self.hand_logger.propagate = False
        self.hand_handler = logging.StreamHandler(self.stream)
        # Stock settings: the README's format string, everything else default.
        self.hand_handler.setFormatter(
            StockJsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
        )
        self.hand_logger.addHandler(self.hand_handler)

        # OpenTelemetry, asgi-correlation-id and asyncio stay quiet.
        for name in ("opentelemetry", "asyncio", "asgi_correlation_id"):
            logging.getLogger(name).setLevel(logging.ERROR)

    @contextlib.contextmanager
    def capture(self) -> Iterator[dict[str, list[dict[str, Any]]]]:
        """Point both handlers at a buffer; yield {"root": [...], "hand": [...]} parsed lines."""
        bufs = {"root": io.StringIO(), "hand": io.StringIO()}
        out: dict[str, list[dict[str, Any]]] = {"root": [], "hand": []}
        self.root_handler.setStream(bufs["root"])  # type: ignore[arg-type]
        self.hand_handler.setStream(bufs["hand"])  # type: ignore[arg-type]
        try:
            yield out
        finally:
            self.root_handler.setStream(self.stream)
            self.hand_handler.setStream(self.stream)
            for key, buf in bufs.items():
                for line in buf.getvalue().splitlines():
                    try:
                        out[key].append(json.loads(line))
                    except ValueError:
                        raise BenchError(
                            f"{key} handler wrote a line that is not JSON: {line!r}"
                        ) from None

    def handler_count(self) -> int:
        return len(logging.getLogger().handlers) + len(self.hand_logger.handlers)


# --------------------------------------------------------------------------------------
# OpenTelemetry SDK: real providers and OTLP/HTTP exporters (each encodes every span as
# it would for a collector); only the HTTP hop is cut: a session that answers 200.
# --------------------------------------------------------------------------------------


class _DiscardAdapter(requests.adapters.HTTPAdapter):
    """The collector's side of the wire: every POST answered 200 at once, nothing sent."""

    def send(self, request: Any, *args: Any, **kwargs: Any) -> requests.Response:
        response = requests.Response()
        response.status_code = 200
        response._content = b""
        response.request = request
        response.url = request.url
        return response


def discard_session() -> requests.Session:
    session = requests.Session()
    session.mount("http://", _DiscardAdapter())
    return session


class CountingExporter(SpanExporter):
    """A real OTLP/HTTP exporter (it encodes every span) in front of a discarding session."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.exported = 0

    def export(self, spans: Any) -> SpanExportResult:
        result = self.inner.export(spans)
        if result is SpanExportResult.SUCCESS:
            self.exported += len(spans)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


@dataclass
class Otel:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    exporter: CountingExporter
    reader: InMemoryMetricReader

    @classmethod
    def build(cls) -> Otel:
        resource = Resource.create({"service.name": "bench"})
        exporter = CountingExporter(
            OTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces", session=discard_session())
        )
        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
        reader = InMemoryMetricReader()
        meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
        return cls(tracer_provider, meter_provider, exporter, reader)

    def flush(self) -> None:
        self.tracer_provider.force_flush()

    def metric_names(self) -> set[str]:
        data = self.reader.get_metrics_data()
        names: set[str] = set()
        if data is None:
            return names
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    names.add(metric.name)
        return names

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


# --------------------------------------------------------------------------------------
# The hand-written alternative: what users write themselves.
# --------------------------------------------------------------------------------------

hand_request_id: ContextVar[str | None] = ContextVar("hand_request_id", default=None)


class HandWrittenWSGI:
    """uuid4().hex, a ContextVar, "request received" + "request processed" JSON lines
    through python-json-logger, and a statsd counter + timer."""

    def __init__(self, app: Any, logger: logging.Logger, stats: statsd.StatsClient) -> None:
        self.app = app
        self.logger = logger
        self.stats = stats

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        rid = uuid.uuid4().hex
        token = hand_request_id.set(rid)
        start = time.perf_counter()
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "/")
        self.logger.info(
            "request received", extra={"request_id": rid, "method": method, "path": path}
        )
        status = [500]

        def sr(status_line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status[0] = int(status_line[:3])
            return start_response(status_line, headers, exc_info)

        try:
            return self.app(environ, sr)
        finally:
            duration_ms = (time.perf_counter() - start) * 1000.0
            self.logger.info(
                "request processed",
                extra={
                    "request_id": rid,
                    "method": method,
                    "path": path,
                    "status": status[0],
                    "duration_ms": round(duration_ms, 3),
                },
            )
            self.stats.incr("http.requests")
            self.stats.timing("http.request.duration", duration_ms)
            hand_request_id.reset(token)


class HandWrittenASGI:
    """The same as :class:`HandWrittenWSGI`, for ASGI."""

    def __init__(self, app: Any, logger: logging.Logger, stats: statsd.StatsClient) -> None:
        self.app = app
        self.logger = logger
        self.stats = stats

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = uuid.uuid4().hex
        token = hand_request_id.set(rid)
        start = time.perf_counter()
        method = scope["method"]
        path = scope["path"]
        self.logger.info(
            "request received", extra={"request_id": rid, "method": method, "path": path}
        )
        status = 500

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            duration_ms = (time.perf_counter() - start) * 1000.0
            self.logger.info(
                "request processed",
                extra={
                    "request_id": rid,
                    "method": method,
                    "path": path,
                    "status": status,
                    "duration_ms": round(duration_ms, 3),
                },
            )
            self.stats.incr("http.requests")
            self.stats.timing("http.request.duration", duration_ms)
            hand_request_id.reset(token)


# --------------------------------------------------------------------------------------
# The apps and the request drivers.
# --------------------------------------------------------------------------------------

_BODY = [b"hello"]
_HEADERS = [
    ("Content-Type", "text/plain; charset=utf-8"),
    ("Content-Length", "5"),
    ("Cache-Control", "no-store"),
]


def bare_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", list(_HEADERS))
    return _BODY


def make_environ(extra: dict[str, str] | None = None) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "54321",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_USER_AGENT": "observekit-bench/1.0",
        "HTTP_ACCEPT": "*/*",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    environ.update(extra or {})
    return environ


def _write(data: bytes) -> None:
    pass


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return _write


def run_wsgi(app: Any, environ: dict[str, Any], n: int) -> tuple[int, int]:
    """n requests; returns (wall ns, process CPU ns). The environ is copied per request
    (apps mutate it)."""
    copy = environ.copy
    start_response = _start_response
    c0 = process_time_ns()
    t0 = perf_counter_ns()
    for _ in range(n):
        body = app(copy(), start_response)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
    t1 = perf_counter_ns()
    return t1 - t0, process_time_ns() - c0


def call_wsgi(app: Any, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
    """One request, recording what the server would see."""
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen["status"] = status
        seen["headers"] = list(headers)
        return _write

    body = app(environ.copy(), start_response)
    try:
        data = b"".join(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return seen["status"], seen["headers"], data


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


def make_starlette() -> Starlette:
    return Starlette(routes=[Route("/", hello)])


def make_scope(extra_headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"user-agent", b"observekit-bench/1.0"),
        (b"accept", b"*/*"),
        *(extra_headers or []),
    ]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 54321),
        "server": ("127.0.0.1", 8000),
    }


_REQUEST_MESSAGE = {"type": "http.request", "body": b"", "more_body": False}


async def _receive() -> dict[str, Any]:
    return _REQUEST_MESSAGE


async def _send(message: Any) -> None:
    pass


async def run_asgi(app: Any, scope: dict[str, Any], n: int) -> tuple[int, int]:
    """n requests; returns (wall ns, process CPU ns). Scope and its header list are
    copied per request (Starlette and asgi-correlation-id mutate them)."""
    receive = _receive
    send = _send
    headers = scope["headers"]
    c0 = process_time_ns()
    t0 = perf_counter_ns()
    for _ in range(n):
        s = scope.copy()
        s["headers"] = headers.copy()
        await app(s, receive, send)
    t1 = perf_counter_ns()
    return t1 - t0, process_time_ns() - c0


async def call_asgi(
    app: Any, scope: dict[str, Any]
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    s = scope.copy()
    s["headers"] = list(scope["headers"])
    await app(s, _receive, send)
    start = [m for m in messages if m["type"] == "http.response.start"]
    require(len(start) == 1, f"expected one http.response.start, got {messages!r}")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return start[0]["status"], list(start[0].get("headers") or []), body


# --------------------------------------------------------------------------------------
# Stacks and their checks.
# --------------------------------------------------------------------------------------


@dataclass
class Stack:
    kind: str  # "wsgi" | "asgi"
    name: str
    app: Any
    describe: str
    samples_us: dict[str, list[float]] = field(
        default_factory=lambda: {clock: [] for clock in CLOCKS}
    )

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass
class Env:
    sink: Sink
    otel: Otel
    udp: socket.socket
    stats: statsd.StatsClient
    loop: asyncio.AbstractEventLoop
    environ: dict[str, Any]
    scope: dict[str, Any]
    ok_provider: Any = None  # observekit's own TracerProvider (the "full" stacks)
    ok_exporter: Any = None  # its OTLP/HTTP exporter (observekit's encoder)


def build_stacks(env: Env) -> list[Stack]:
    otel = env.otel
    hand_logger = env.sink.hand_logger
    rid_only = observekit.Config(access_log=False)
    with_access = observekit.Config()
    # Everything on: request ID, access line, statsd RED metrics (DogStatsD tags) and a
    # sampled server span through observekit's batch processor to its OTLP/HTTP exporter.
    full = observekit.Config(
        service_name="bench",
        metrics="statsd",
        statsd_host="127.0.0.1",
        statsd_port=env.udp.getsockname()[1],
        traces_exporter="otlp",
        otlp_endpoint="http://127.0.0.1:9",
    )
    env.ok_exporter = CountingExporter(
        observekit.tracing.otlp_http_exporter(
            "http://127.0.0.1:9/v1/traces", session=discard_session()
        )
    )
    env.ok_provider = observekit.tracing.configure(full, exporter=env.ok_exporter, set_global=False)

    def otel_wsgi(app: Any) -> Any:
        return OtelWSGI(
            app, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
        )

    def otel_asgi(app: Any) -> Any:
        return OtelASGI(
            app, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
        )

    star = make_starlette()
    return [
        Stack("wsgi", "bare", bare_wsgi, "tiny WSGI app: 200 text/plain b'hello'"),
        Stack(
            "wsgi",
            "observekit-rid",
            observekit.wsgi.ObservabilityMiddleware(bare_wsgi, config=rid_only),
            "observekit, access_log=False",
        ),
        Stack(
            "wsgi",
            "observekit-rid+access",
            observekit.wsgi.ObservabilityMiddleware(bare_wsgi, config=with_access),
            "observekit, access line on",
        ),
        Stack(
            "wsgi",
            "observekit-full",
            observekit.wsgi.ObservabilityMiddleware(
                bare_wsgi, config=full, tracer_provider=env.ok_provider
            ),
            "observekit, access line + statsd metrics + sampled span (batch processor)",
        ),
        Stack("wsgi", "otel", otel_wsgi(bare_wsgi), "OTel WSGI middleware + SDK"),
        Stack(
            "wsgi",
            "hand-written",
            HandWrittenWSGI(bare_wsgi, hand_logger, env.stats),
            "uuid4 + contextvar + 2 JSON lines + 2 statsd sends",
        ),
        Stack(
            "wsgi",
            "otel+hand-written",
            otel_wsgi(HandWrittenWSGI(bare_wsgi, hand_logger, env.stats)),
            "OTel outside the hand-written wrapper",
        ),
        Stack("asgi", "bare", star, "bare Starlette, one route"),
        Stack(
            "asgi",
            "observekit-rid",
            observekit.asgi.ObservabilityMiddleware(star, config=rid_only),
            "observekit, access_log=False",
        ),
        Stack(
            "asgi",
            "observekit-rid+access",
            observekit.asgi.ObservabilityMiddleware(star, config=with_access),
            "observekit, access line on",
        ),
        Stack(
            "asgi",
            "asgi-correlation-id",
            CorrelationIdMiddleware(star),
            "asgi_correlation_id.CorrelationIdMiddleware, defaults",
        ),
        Stack(
            "asgi",
            "observekit-full",
            observekit.asgi.ObservabilityMiddleware(
                star, config=full, tracer_provider=env.ok_provider
            ),
            "observekit, access line + statsd metrics + sampled span (batch processor)",
        ),
        Stack("asgi", "otel", otel_asgi(star), "OTel ASGI middleware + SDK"),
        Stack(
            "asgi",
            "hand-written",
            HandWrittenASGI(star, hand_logger, env.stats),
            "uuid4 + contextvar + 2 JSON lines + 2 statsd sends",
        ),
        Stack(
            "asgi",
            "otel+hand-written",
            otel_asgi(HandWrittenASGI(star, hand_logger, env.stats)),
            "OTel outside the hand-written wrapper",
        ),
    ]


def _header(headers: list[tuple[Any, Any]], name: str) -> list[str]:
    out = []
    for k, v in headers:
        k = k.decode("latin-1") if isinstance(k, bytes) else k
        v = v.decode("latin-1") if isinstance(v, bytes) else v
        if k.lower() == name.lower():
            out.append(v)
    return out


def _drain_udp(udp: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(udp.recv(65535))
        except BlockingIOError:
            return out


Observed = tuple[int, list[tuple[Any, Any]], bytes, dict[str, list[Any]], list[bytes], int]
"""status, response headers, body, captured log lines, statsd datagrams, spans exported"""


def verify(stack: Stack, env: Env) -> str:
    """Prove the stack does its job; return a one-line summary. Raises BenchError."""
    name = stack.name
    is_observekit = name.startswith("observekit")
    has_full = name == "observekit-full"
    has_access = name in ("observekit-rid+access", "observekit-full")
    has_otel = name.startswith("otel")
    has_hand = name.endswith("hand-written")
    has_cid = name == "asgi-correlation-id"
    what = stack.key

    def one(with_id: bool) -> Observed:
        _drain_udp(env.udp)
        env.otel.flush()
        env.ok_provider.force_flush()
        before = env.otel.exporter.exported + env.ok_exporter.exported
        headers: list[tuple[Any, Any]]
        if stack.kind == "wsgi":
            environ = make_environ({"HTTP_X_REQUEST_ID": VERIFY_ID} if with_id else None)
            with env.sink.capture() as lines:
                status_line, headers, body = call_wsgi(stack.app, environ)
            status = int(status_line[:3])
        else:
            cid = uuid.uuid4().hex
            extra = [(b"x-request-id", (VERIFY_ID if is_observekit else cid).encode())]
            scope = make_scope(extra if with_id else None)
            with env.sink.capture() as lines:
                status, headers, body = env.loop.run_until_complete(call_asgi(stack.app, scope))
        env.otel.flush()
        env.ok_provider.force_flush()
        spans = env.otel.exporter.exported + env.ok_exporter.exported - before
        # observekit may hold a datagram up to statsd_flush_interval (0.05 s) to pack it
        time.sleep(0.12)
        datagrams = _drain_udp(env.udp)
        return status, headers, body, lines, datagrams, spans

    notes: list[str] = []
    for with_id in (False, True):
        status, headers, body, lines, datagrams, spans = one(with_id)
        require(status == 200 and body == b"hello", f"{what}: got {status} {body!r}")
        rids = _header(headers, "x-request-id")
        if is_observekit:
            require(len(rids) == 1, f"{what}: expected one X-Request-ID, got {rids!r}")
            if with_id:
                require(rids[0] == VERIFY_ID, f"{what}: incoming X-Request-ID not echoed: {rids!r}")
            else:
                require(
                    observekit.is_valid_request_id(rids[0]), f"{what}: bad generated ID {rids!r}"
                )
        elif has_cid:
            require(len(rids) == 1, f"{what}: asgi-correlation-id sent no ID: {headers!r}")
        else:
            require(not rids, f"{what}: unexpected X-Request-ID {rids!r}")
        access = [x for x in lines["root"] if x.get("logger") == ACCESS_LOGGER]
        others = [x for x in lines["root"] if x.get("logger") != ACCESS_LOGGER]
        require(not others, f"{what}: unexpected lines on the root handler: {others!r}")
        if has_access:
            require(len(access) == 1, f"{what}: expected one access line, got {access!r}")
            line = access[0]
            require(line.get("request_id") == rids[0], f"{what}: access line ID mismatch: {line!r}")
            require(
                line.get("http.response.status_code") == 200
                and line.get("service.name") == "bench",
                f"{what}: access line incomplete: {line!r}",
            )
        else:
            require(not access, f"{what}: unexpected access line {access!r}")
        hand = lines["hand"]
        if has_hand:
            require(len(hand) == 2, f"{what}: expected 2 hand-written lines, got {hand!r}")
            require(
                [x.get("message") for x in hand] == ["request received", "request processed"]
                and hand[0].get("request_id")
                and hand[0]["request_id"] == hand[1]["request_id"]
                and hand[1].get("status") == 200
                and "asctime" in hand[0],
                f"{what}: hand-written lines wrong: {hand!r}",
            )
            require(
                len(datagrams) == 2
                and datagrams[0].endswith(b"|c")
                and datagrams[1].endswith(b"|ms"),
                f"{what}: expected a statsd counter and a timer, got {datagrams!r}",
            )
        elif has_full:
            require(not hand, f"{what}: unexpected hand-written lines")
            require(
                datagrams and any(b"http.server.request.duration" in d for d in datagrams),
                f"{what}: no statsd request metrics, got {datagrams!r}",
            )
            require(spans == 1, f"{what}: expected 1 server span, got {spans}")
        else:
            require(not hand and not datagrams, f"{what}: unexpected hand-written output")
        if has_full:
            pass
        elif has_otel:
            # WSGI: one server span; ASGI: the server span plus one per send.
            require(spans >= 1, f"{what}: no span exported")
        else:
            require(spans == 0, f"{what}: unexpected spans")
        if not notes:
            notes.append(f"status {status}")
            if rids:
                notes.append("X-Request-ID echoed")
            if has_access:
                notes.append("1 access line")
            if has_hand:
                notes.append("2 JSON lines + 2 statsd datagrams")
            if has_full:
                notes.append(f"{len(datagrams)} statsd datagram(s), {spans} span/request")
            if has_otel:
                notes.append(f"{spans} span(s)/request")
    if has_otel:
        names = env.otel.metric_names()
        require(
            any(n.startswith("http.server.") for n in names),
            f"{what}: no http.server.* metric recorded (have {sorted(names)})",
        )
        notes.append("metrics recorded")
    return ", ".join(notes)


# --------------------------------------------------------------------------------------
# Measuring.
# --------------------------------------------------------------------------------------


def sample(stack: Stack, env: Env, n: int) -> dict[str, float]:
    """One timed sample of n requests: µs per request, by wall clock and by CPU clock."""
    if stack.kind == "wsgi":
        wall, cpu = run_wsgi(stack.app, env.environ, n)
    else:
        wall, cpu = env.loop.run_until_complete(run_asgi(stack.app, env.scope, n))
    return {"wall": wall / n / 1000.0, "cpu": cpu / n / 1000.0}


def between_samples(env: Env) -> None:
    """Identical for every stack, outside the timed region: no stack inherits another's
    garbage or its batch of unexported spans."""
    env.otel.flush()
    env.ok_provider.force_flush()
    gc.collect()


def measure(
    stacks: list[Stack],
    env: Env,
    rounds: int,
    requests: int,
    seed: int,
    progress: Callable[[str], None],
) -> None:
    rng = random.Random(seed)
    order = list(stacks)
    t_start = time.monotonic()
    for r in range(rounds):
        rng.shuffle(order)
        for stack in order:
            between_samples(env)
            for clock, value in sample(stack, env, requests).items():
                stack.samples_us[clock].append(value)
        if r == 0 or (r + 1) % max(1, rounds // 10) == 0 or r + 1 == rounds:
            elapsed = time.monotonic() - t_start
            progress(f"  round {r + 1}/{rounds} done ({elapsed:.0f} s)")


# --------------------------------------------------------------------------------------
# Reporting.
# --------------------------------------------------------------------------------------

VERSIONED = (
    "observekit",
    "opentelemetry-sdk",
    "opentelemetry-instrumentation-wsgi",
    "opentelemetry-instrumentation-asgi",
    "asgi-correlation-id",
    "python-json-logger",
    "starlette",
    "statsd",
)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in VERSIONED:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _loadavg() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def median_se(values: list[float]) -> float:
    """Standard error of the median, from a robust spread (IQR / 1.349 estimates sigma)."""
    if len(values) < 2:
        return float("inf")
    q1, q3 = quartiles(values)
    return 1.2533 * (q3 - q1) / 1.349 / math.sqrt(len(values))


def quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


Summary = dict[str, dict[str, dict[str, Any]]]  # kind -> stack name -> row


def summarize(stacks: list[Stack], clock: str) -> Summary:
    out: Summary = {}
    for kind in ("wsgi", "asgi"):
        group = [s for s in stacks if s.kind == kind]
        bare = next(s for s in group if s.name == "bare").samples_us[clock]
        bare_med = median(bare)
        bare_se = median_se(bare)
        rows: dict[str, dict[str, Any]] = {}
        for s in group:
            samples = s.samples_us[clock]
            med = median(samples)
            q1, q3 = quartiles(samples)
            paired = [a - b for a, b in zip(samples, bare, strict=True)]
            rows[s.name] = {
                "describe": s.describe,
                "median_us": med,
                "q1_us": q1,
                "q3_us": q3,
                "min_us": min(samples),
                "added_us": med - bare_med,
                "added_se_us": (median_se(samples) ** 2 + bare_se**2) ** 0.5,
                # Same-round differences: a second estimate, less sensitive to slow drift.
                "added_paired_median_us": median(paired),
                "samples_us": samples,
            }
        out[kind] = rows
    return out


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf")


def table(
    kind: str, rows: dict[str, dict[str, Any]], other: dict[str, dict[str, Any]], other_clock: str
) -> list[str]:
    ref = rows["observekit-rid+access"]["added_us"]
    title = "WSGI (over a bare WSGI app)" if kind == "wsgi" else "ASGI (over bare Starlette)"
    lines = [
        f"### {title}",
        "",
        "| stack | median µs/request | IQR µs | µs added over bare "
        f"| added x observekit-rid+access | µs added, {other_clock} clock |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        if name == "bare":
            added, rel, alt = "—", "—", "—"
        else:
            added = f"{row['added_us']:.2f} ±{row['added_se_us']:.2f}"
            rel = f"{ratio(row['added_us'], ref):.2f}x"
            alt = f"{other[name]['added_us']:.2f}"
        lines.append(
            f"| {name} | {row['median_us']:.2f} | {row['q1_us']:.2f}-{row['q3_us']:.2f} "
            f"| {added} | {rel} | {alt} |"
        )
    return lines


CHECKS = (
    (
        "WSGI: observekit-full added / otel+hand-written added",
        "wsgi",
        "observekit-full",
        "otel+hand-written",
        0.25,
    ),
    (
        "ASGI: observekit-full added / otel+hand-written added",
        "asgi",
        "observekit-full",
        "otel+hand-written",
        0.25,
    ),
    (
        "ASGI: observekit-rid added / asgi-correlation-id added",
        "asgi",
        "observekit-rid",
        "asgi-correlation-id",
        0.5,
    ),
    (
        "WSGI: observekit-rid+access added / hand-written added",
        "wsgi",
        "observekit-rid+access",
        "hand-written",
        0.4,
    ),
    (
        "ASGI: observekit-rid+access added / hand-written added",
        "asgi",
        "observekit-rid+access",
        "hand-written",
        0.4,
    ),
)


def checks(summary: Summary) -> list[dict[str, Any]]:
    out = []
    for label, kind, num_name, den_name, limit in CHECKS:
        num = summary[kind][num_name]["added_us"]
        den = summary[kind][den_name]["added_us"]
        value = ratio(num, den)
        out.append(
            {
                "check": label,
                "numerator_us": num,
                "denominator_us": den,
                "ratio": value,
                "limit": limit,
                "pass": value <= limit,
            }
        )
    return out


def noisy_stacks(summary: Summary) -> list[str]:
    return [
        f"{kind}:{name} (±{100 * row['added_se_us'] / row['added_us']:.0f}%)"
        for kind in ("wsgi", "asgi")
        for name, row in summary[kind].items()
        if name != "bare" and row["added_se_us"] > NOISY_SE * abs(row["added_us"])
    ]


# --------------------------------------------------------------------------------------
# Main.
# --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--rounds",
        type=int,
        help=f"interleaved rounds (default {DEFAULT_ROUNDS}; --quick {QUICK_ROUNDS})",
    )
    p.add_argument(
        "--requests",
        type=int,
        help=f"requests per stack per round (default {DEFAULT_REQUESTS}; --quick {QUICK_REQUESTS})",
    )
    p.add_argument("--quick", action="store_true", help="a bounded run for CI (well under 60 s)")
    p.add_argument("--warmup", type=int, help="warm-up requests per stack (default: --requests)")
    p.add_argument("--seed", type=int, default=None, help="seed for the round order shuffle")
    p.add_argument(
        "--clock",
        choices=CLOCKS,
        default="wall",
        help="clock for the table and the checks: wall (perf_counter_ns, default) or "
        "cpu (process_time_ns: immune to other processes taking the CPU); both are "
        "always recorded",
    )
    p.add_argument("--json", metavar="PATH", help="also write the results (all samples) as JSON")
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when a goal check fails (verification failures always exit 2)",
    )
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS
    if args.requests is None:
        args.requests = QUICK_REQUESTS if args.quick else DEFAULT_REQUESTS
    if args.warmup is None:
        args.warmup = args.requests
    if args.rounds < 1 or args.requests < 1 or args.warmup < 0:
        p.error("--rounds and --requests must be at least 1, --warmup at least 0")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**32)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    sink = Sink()
    otel = Otel.build()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    stats = statsd.StatsClient("127.0.0.1", udp.getsockname()[1], prefix="bench")
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    env = Env(sink, otel, udp, stats, loop, make_environ(), make_scope())
    stacks = build_stacks(env)
    handlers_before = sink.handler_count()
    load_before = _loadavg()
    t0 = time.monotonic()
    try:
        say("verifying stacks:")
        for stack in stacks:
            say(f"  {stack.key:<28} ok: {verify(stack, env)}")
        require(sink.handler_count() == handlers_before == 2, "logging handlers changed")

        say(f"warming up ({args.warmup} requests per stack) ...")
        for stack in stacks:
            if args.warmup:
                sample(stack, env, args.warmup)
        between_samples(env)

        say(
            f"measuring: {args.rounds} rounds x {len(stacks)} stacks x {args.requests} "
            f"requests, shuffled order (seed {args.seed}) ..."
        )
        measure(stacks, env, args.rounds, args.requests, args.seed, say)
    except BenchError as exc:
        say(f"\nFAILED: {exc}")
        return 2
    finally:
        otel.shutdown()
        loop.close()
        udp.close()
    wall = time.monotonic() - t0
    load_after = _loadavg()

    summaries = {clock: summarize(stacks, clock) for clock in CLOCKS}
    clock = args.clock
    other_clock = next(c for c in CLOCKS if c != clock)
    summary, other = summaries[clock], summaries[other_clock]
    results = {c: checks(summaries[c]) for c in CLOCKS}
    info = versions()
    clock_name = {
        "wall": "wall clock (time.perf_counter_ns)",
        "cpu": "process CPU time (time.process_time_ns, all threads)",
    }
    out = [
        "# observekit in-process overhead",
        "",
        f"Python {info['python']} ({platform.python_implementation()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs) on {platform.system()} {platform.release()}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in info.items() if k != "python"),
        f"observekit imported from {os.path.dirname(observekit.__file__)}",
        f"rounds {args.rounds} x requests {args.requests} per stack per round, "
        f"warm-up {args.warmup}, seed {args.seed}, wall {wall:.0f} s, "
        f"load average {load_before} -> {load_after}",
        f"clock: {clock_name[clock]}; per stack: median over rounds of µs/request; "
        "added = median - bare median (± its standard error)",
        "",
    ]
    for kind in ("wsgi", "asgi"):
        out += table(kind, summary[kind], other[kind], other_clock)
        out.append("")
    noisy = noisy_stacks(summary)
    if noisy:
        out.append(
            f"WARNING: noisy run (load average {load_before} -> {load_after}); the standard "
            f"error of µs added exceeds {NOISY_SE:.0%} for: " + ", ".join(noisy)
        )
        if clock == "wall":
            out.append(
                "  another process is probably competing for the CPUs; compare the "
                "cpu-clock column, re-run with more --rounds, or with --clock cpu"
            )
        out.append("")
    out.append("### goal checks")
    out.append("")
    for c, alt in zip(results[clock], results[other_clock], strict=True):
        out.append(
            f"{c['check']}: {c['numerator_us']:.2f} / {c['denominator_us']:.2f} = "
            f"{c['ratio']:.3f} (limit {c['limit']}) {'PASS' if c['pass'] else 'FAIL'}"
            f"   [{other_clock} clock: {alt['ratio']:.3f}]"
        )
    print("\n".join(out), flush=True)

    if args.json:
        payload = {
            "args": dict(vars(args)),
            "versions": info,
            "observekit_path": os.path.dirname(observekit.__file__),
            "platform": {
                "implementation": platform.python_implementation(),
                "machine": platform.machine(),
                "system": f"{platform.system()} {platform.release()}",
                "cpus": os.cpu_count(),
            },
            "wall_s": wall,
            "load_average": {"before": load_before, "after": load_after},
            "clock": clock,
            "results": summaries,
            "checks": results,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=2)
        say(f"wrote {args.json}")
    if args.strict and not all(c["pass"] for c in results[clock]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
