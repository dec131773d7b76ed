"""Server spans through the middlewares, exported over real OTLP/HTTP to a real receiver."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest

import observekit
import observekit.tracing
from observekit import Config
from observekit._core import RequestInfo
from observekit.asgi import ObservabilityMiddleware as AsgiMiddleware
from observekit.wsgi import ObservabilityMiddleware as WsgiMiddleware

from .conftest import LogCapture
from .otlp_receiver import OTLPReceiver
from .util import call

PARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as r:
        yield r


@pytest.fixture
def traced(receiver: OTLPReceiver) -> Iterator[tuple[Config, Any]]:
    config = Config(
        service_name="orders",
        service_version="7.1",
        traces_exporter="otlp",
        otlp_endpoint=receiver.endpoint,
        route_resolver=lambda info: "/orders/{id}" if info.path.startswith("/orders/") else None,
    )
    provider = observekit.tracing.configure(config, set_global=False, schedule_delay=0.05)
    yield config, provider
    provider.shutdown()
    observekit.logging.use_trace_ids(None)


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    logging.getLogger("app").info("handling")
    if environ["PATH_INFO"] == "/orders/boom":
        raise RuntimeError("payment failed")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def test_wsgi_server_span_continues_traceparent(
    traced: tuple[Config, Any], receiver: OTLPReceiver, logs: LogCapture
) -> None:
    """A WSGI request with traceparent gives one SERVER span in that trace, named by the route, with semconv attributes."""
    config, provider = traced
    mw = WsgiMiddleware(wsgi_app, config=config, tracer_provider=provider)
    result = call(
        mw,
        "/orders/42",
        headers={"traceparent": TRACEPARENT, "X-Request-ID": "req-1"},
        QUERY_STRING="a=1",
    )
    provider.force_flush()
    (span,) = receiver.wait_for(lambda spans: len(spans) >= 1, timeout=10)
    assert span["kind"] == "SERVER"
    assert span["name"] == "GET /orders/{id}"
    assert span["trace_id"] == PARENT_TRACE
    assert span["parent_span_id"] == PARENT_SPAN
    attrs = span["attributes"]
    assert attrs["http.request.method"] == "GET"
    assert attrs["http.route"] == "/orders/{id}"
    assert attrs["http.response.status_code"] == 200
    assert attrs["url.path"] == "/orders/42"
    assert attrs["server.address"] == "127.0.0.1"
    assert span["resource"]["service.name"] == "orders"
    assert result.header_values("X-Request-ID") == ["req-1"]  # an incoming ID still wins
    app_line, access = logs.by_logger("app")[0], logs.access()[0]
    for line in (app_line, access):
        assert (line["trace_id"], line["span_id"]) == (PARENT_TRACE, span["span_id"])
        assert line["request_id"] == "req-1"


def test_request_id_is_the_trace_id_without_an_incoming_id(
    traced: tuple[Config, Any], receiver: OTLPReceiver, logs: LogCapture
) -> None:
    """Traced and without an incoming request ID, the request ID is the trace ID (one ID for logs and trace)."""
    config, provider = traced
    mw = WsgiMiddleware(wsgi_app, config=config, tracer_provider=provider)
    rid = call(mw, "/orders/7").header_values("X-Request-ID")[0]
    provider.force_flush()
    (span,) = receiver.wait_for(lambda spans: len(spans) >= 1, timeout=10)
    assert rid == span["trace_id"]
    assert logs.access()[0]["trace_id"] == rid


def test_wsgi_exception_sets_error_status_and_records_it(
    traced: tuple[Config, Any], receiver: OTLPReceiver, logs: LogCapture
) -> None:
    """An unhandled exception gives the span status ERROR, error.type and an exception event."""
    config, provider = traced
    mw = WsgiMiddleware(wsgi_app, config=config, tracer_provider=provider)
    with pytest.raises(RuntimeError):
        call(mw, "/orders/boom")
    provider.force_flush()
    (span,) = receiver.wait_for(lambda spans: len(spans) >= 1, timeout=10)
    assert span["status"]["code"] == "ERROR"
    assert span["attributes"]["error.type"] == "RuntimeError"
    assert span["attributes"]["http.response.status_code"] == 500
    assert [e["name"] for e in span["events"]] == ["exception"]
    error_line = next(x for x in logs.lines() if x["logger"] == "observekit")
    assert error_line["trace_id"] == span["trace_id"]


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    logging.getLogger("app").info("asgi handling")
    await asyncio.sleep(0)
    await send({"type": "http.response.start", "status": 503, "headers": []})
    await send({"type": "http.response.body", "body": b"busy"})


def test_asgi_one_span_per_request_not_per_message(
    traced: tuple[Config, Any], receiver: OTLPReceiver, logs: LogCapture
) -> None:
    """Concurrent ASGI requests each give exactly one SERVER span (no span per send), 5xx marked ERROR."""
    config, provider = traced
    mw = AsgiMiddleware(asgi_app, config=config, tracer_provider=provider)

    async def one(i: int) -> None:
        scope = {
            "type": "http",
            "method": "GET",
            "path": f"/orders/{i}",
            "headers": [(b"host", b"shop.example:8443")],
            "scheme": "https",
            "http_version": "1.1",
            "server": ("10.0.0.1", 8000),
            "query_string": b"",
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: dict[str, Any]) -> None:
            pass

        await mw(scope, receive, send)

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(10)))

    asyncio.run(main())
    provider.force_flush()
    spans = receiver.wait_for(lambda spans: len(spans) >= 10, timeout=10)
    assert len(spans) == 10
    assert {s["name"] for s in spans} == {"GET /orders/{id}"}
    assert {s["status"]["code"] for s in spans} == {"ERROR"}
    assert {s["attributes"]["server.address"] for s in spans} == {"shop.example"}
    assert {s["attributes"]["server.port"] for s in spans} == {8443}
    by_trace = {s["trace_id"]: s["span_id"] for s in spans}
    for line in logs.by_logger("app"):
        assert by_trace[line["trace_id"]] == line["span_id"]
        assert line["request_id"] == line["trace_id"]


def test_resolver_sees_request_info(traced: tuple[Config, Any], receiver: OTLPReceiver) -> None:
    """The route resolver receives the RequestInfo the adapters build."""
    seen: list[RequestInfo] = []
    config, provider = traced
    import dataclasses

    config = dataclasses.replace(config, route_resolver=lambda info: seen.append(info) or None)
    call(WsgiMiddleware(wsgi_app, config=config, tracer_provider=provider), "/x")
    assert [i.path for i in seen] == ["/x"]


@pytest.mark.parametrize("flags", ["01", "00"])
def test_a_list_body_finished_without_entering_still_logs_the_span_ids(
    receiver: OTLPReceiver, logs: LogCapture, flags: str
) -> None:
    """Without a route resolver a list body finishes outside the request context; its
    access line still carries the server span's IDs (none when the span is not sampled)."""
    config = Config(service_name="orders", traces_exporter="otlp", otlp_endpoint=receiver.endpoint)
    provider = observekit.tracing.configure(config, set_global=False, schedule_delay=0.05)
    try:
        mw = WsgiMiddleware(wsgi_app, config=config, tracer_provider=provider)
        assert mw.observer.detached_finish
        call(mw, "/orders/42", headers={"traceparent": f"00-{PARENT_TRACE}-{PARENT_SPAN}-{flags}"})
        provider.force_flush()
        app_line, access = logs.by_logger("app")[0], logs.access()[0]
        if flags == "00":
            assert "trace_id" not in app_line
            assert "trace_id" not in access
            return
        (span,) = receiver.wait_for(lambda spans: len(spans) >= 1, timeout=10)
        for line in (app_line, access):
            assert (line["trace_id"], line["span_id"]) == (PARENT_TRACE, span["span_id"])
    finally:
        provider.shutdown()
        observekit.logging.use_trace_ids(None)


@pytest.mark.parametrize(
    ("host", "server", "expected"),
    [
        ("shop.example:8443", ("10.0.0.1", 8000), ("shop.example", 8443)),
        ("shop.example", ("10.0.0.1", 8000), ("shop.example", 8000)),
        (None, ("10.0.0.1", 8000), ("10.0.0.1", 8000)),
        ("[::1]:8080", None, ("[::1]", 8080)),
        ("[::1]", ["::1", 9000], ("[::1]", 9000)),  # "server" as a list: not cacheable
        ("shop.example:https", ("10.0.0.1", 8000), ("shop.example", 8000)),
        ("shop.example:\u00b2", ("10.0.0.1", 8000), ("shop.example", 8000)),  # "²".isdigit()
        (None, None, (None, None)),
    ],
)
def test_asgi_server_details_from_host_and_scope(
    host: str | None, server: Any, expected: tuple[str | None, int | None]
) -> None:
    """server.address/port from the Host header, else the scope's server; the same answer
    the first time and from the per-process cache after."""
    from observekit.asgi import _add_details

    for _ in range(2):
        info = RequestInfo("GET", "/", {} if host is None else {"host": host})
        _add_details(info, {"server": server, "http_version": "2", "query_string": b"a=1"})
        assert (info.server_address, info.server_port) == expected
        assert (info.protocol_version, info.query) == ("2", "a=1")


@pytest.mark.parametrize(
    ("host", "name", "port", "expected"),
    [
        ("shop.example:8443", "10.0.0.1", "8000", ("shop.example", 8443)),
        ("shop.example", "10.0.0.1", "8000", ("shop.example", 8000)),
        (None, "10.0.0.1", "8000", ("10.0.0.1", 8000)),
        ("[::1]:8080", None, None, ("[::1]", 8080)),
        ("[::1]", "::1", "9000", ("[::1]", 9000)),
        ("shop.example:https", "10.0.0.1", "8000", ("shop.example", None)),
        ("shop.example:\u00b2", "10.0.0.1", "8000", ("shop.example", None)),  # "²".isdigit()
        ("shop.example:8443", ["10.0.0.1"], "8000", ("shop.example", 8443)),  # not cacheable
        (None, None, None, (None, None)),
    ],
)
def test_wsgi_server_details_from_host_and_environ(
    host: str | None, name: Any, port: str | None, expected: tuple[str | None, int | None]
) -> None:
    """server.address/port from the Host header, else SERVER_NAME and SERVER_PORT; the same
    answer the first time and from the per-process cache after."""
    from observekit.wsgi import _add_details

    environ = {"SERVER_PROTOCOL": "HTTP/1.1", "QUERY_STRING": "a=1"}
    if name is not None:
        environ["SERVER_NAME"] = name
    if port is not None:
        environ["SERVER_PORT"] = port
    for _ in range(2):
        info = RequestInfo("GET", "/", {} if host is None else {"host": host})
        _add_details(info, environ)
        assert (info.server_address, info.server_port) == expected
        assert (info.protocol_version, info.query) == ("1.1", "a=1")
