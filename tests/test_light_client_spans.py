"""Client spans on a provider configure() built: light spans and trace headers written
straight from the span context, against a real server on 127.0.0.1.

They must export as SDK spans would (kind, parent, attributes, status, exception
event, once), send the same ``traceparent``/``tracestate`` the propagators would,
fall back to the propagators when there is baggage, and give way to the SDK's
spans as soon as the provider holds a processor observekit does not know.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import pytest
import requests
from opentelemetry import baggage, context, trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import observekit
import observekit.tracing
from observekit import Config
from observekit.metrics.memory import MemoryMetrics
from observekit.propagation import headers as headers_module
from observekit.propagation import httpx as ok_httpx
from observekit.propagation import requests as ok_requests
from tests.echo_server import EchoServer, echo_server


class Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


@pytest.fixture(scope="module")
def server() -> Iterator[EchoServer]:
    with echo_server() as srv:
        yield srv


@pytest.fixture
def keep() -> Iterator[tuple[Keep, Any, dict[str, Any]]]:
    headers_module._reset()
    exporter = Keep()
    config = Config(service_name="light-client", traces_exporter="otlp")
    provider = observekit.tracing.configure(
        config, exporter=exporter, set_global=False, schedule_delay=0.05
    )
    hooks = {"config": config, "tracer_provider": provider, "metrics": MemoryMetrics()}
    yield exporter, provider, hooks
    provider.shutdown()
    observekit.logging.use_trace_ids(None)
    headers_module._reset()


def _sync_httpx(url: str, hooks: dict[str, Any]) -> tuple[int, dict[str, str]]:
    with ok_httpx.instrument_client(httpx.Client(), **hooks) as client:
        response = client.get(url)
    return response.status_code, response.json()["headers"]


def _async_httpx(url: str, hooks: dict[str, Any]) -> tuple[int, dict[str, str]]:
    async def run() -> tuple[int, dict[str, str]]:
        async with ok_httpx.instrument_client(httpx.AsyncClient(), **hooks) as client:
            response = await client.get(url)
        return response.status_code, response.json()["headers"]

    return asyncio.run(run())


def _requests(url: str, hooks: dict[str, Any]) -> tuple[int, dict[str, str]]:
    with ok_requests.instrument_session(requests.Session(), **hooks) as session:
        response = session.get(url)
    return response.status_code, response.json()["headers"]


CLIENTS = [
    pytest.param(_sync_httpx, id="httpx"),
    pytest.param(_async_httpx, id="httpx-async"),
    pytest.param(_requests, id="requests"),
]
Client = Callable[[str, dict[str, Any]], tuple[int, dict[str, str]]]


def _clients(exporter: Keep, provider: Any) -> list[ReadableSpan]:
    provider.force_flush()
    return [s for s in exporter.spans if s.kind == SpanKind.CLIENT]


def _light(hooks: dict[str, Any]) -> bool:
    """Whether the hooks' calls get light client spans (the SDK hands both kinds to the
    processors as plain ReadableSpans, so the exported type cannot tell)."""
    tracing = headers_module.outgoing_for(**hooks)._tracing
    assert tracing is not None
    return tracing.light is not None and tracing.processors._span_processors is tracing.verified


def _traceparent(span: ReadableSpan) -> str:
    ctx = span.context
    assert ctx is not None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


@pytest.mark.parametrize("call", CLIENTS)
def test_light_client_span_is_a_child_and_exported_once(
    call: Client, server: EchoServer, keep: tuple[Keep, Any, dict[str, Any]]
) -> None:
    """Under a current span, the call's CLIENT span is light, a child of that span, with the HTTP attributes; the traceparent sent
    names it; it is exported once."""
    exporter, provider, hooks = keep
    tracer = provider.get_tracer("test")
    with observekit.request_context("light-1"), tracer.start_as_current_span("server") as parent:
        status, got = call(f"{server.url}/echo", hooks)
    assert status == 200
    assert got["x-request-id"] == "light-1"
    (client,) = _clients(exporter, provider)
    assert _light(hooks)
    assert client.name == "GET"
    assert client.parent is not None
    assert client.parent.span_id == parent.get_span_context().span_id
    assert client.context is not None
    assert client.context.trace_id == parent.get_span_context().trace_id
    assert got["traceparent"] == _traceparent(client)
    assert "tracestate" not in got
    assert dict(client.attributes or {}) == {
        "http.request.method": "GET",
        "server.address": "127.0.0.1",
        "server.port": server.port,
        "url.full": f"{server.url}/echo",
        "http.response.status_code": 200,
    }
    assert client.status.status_code == StatusCode.UNSET
    assert client.resource.attributes["service.name"] == "light-client"
    assert client.instrumentation_scope is not None
    assert client.instrumentation_scope.name == "observekit"
    assert client.end_time is not None
    assert client.start_time is not None
    assert client.start_time <= client.end_time
    provider.force_flush()
    assert len(_clients(exporter, provider)) == 1


@pytest.mark.parametrize("call", CLIENTS)
def test_light_client_span_error_status(
    call: Client, server: EchoServer, keep: tuple[Keep, Any, dict[str, Any]]
) -> None:
    """A 500 answer sets error.type to the status code and the ERROR status."""
    exporter, provider, hooks = keep
    call(f"{server.url}/status/500", hooks)
    (span,) = _clients(exporter, provider)
    assert _light(hooks)
    assert (span.attributes or {})["error.type"] == "500"
    assert (span.attributes or {})["http.response.status_code"] == 500
    assert span.status.status_code == StatusCode.ERROR


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("client", ["httpx", "requests"])
def test_light_client_span_records_the_transport_error(
    client: str, keep: tuple[Keep, Any, dict[str, Any]]
) -> None:
    """Connection refused: the light span gets error.type, an ERROR status with the
    exception's description and one exception event."""
    exporter, provider, hooks = keep
    url = f"http://127.0.0.1:{_closed_port()}/x"
    get: Any
    if client == "httpx":
        get = ok_httpx.instrument_client(httpx.Client(), **hooks).get
    else:
        get = ok_requests.instrument_session(requests.Session(), **hooks).get
    with pytest.raises((httpx.ConnectError, requests.ConnectionError)):
        get(url)
    (span,) = _clients(exporter, provider)
    assert _light(hooks)
    assert (span.attributes or {})["error.type"] == "connection_refused"
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description
    assert "Connect" in span.status.description
    (event,) = span.events
    assert event.name == "exception"
    assert "exception.stacktrace" in (event.attributes or {})


@pytest.mark.parametrize("call", CLIENTS)
def test_calls_in_turn_in_two_traces_each_name_their_own(
    call: Client, server: EchoServer, keep: tuple[Keep, Any, dict[str, Any]]
) -> None:
    """Calls alternating between two traces (the traceparent's trace part is remembered
    between calls) each send the trace and span of their own client span."""
    exporter, provider, hooks = keep
    tracer = provider.get_tracer("test")
    a, b = tracer.start_span("a"), tracer.start_span("b")
    sent = []
    for parent in (a, b, a, b):
        with trace.use_span(parent, end_on_exit=False):
            _, got = call(f"{server.url}/echo", hooks)
        sent.append((parent.get_span_context().trace_id, got["traceparent"]))
    spans = _clients(exporter, provider)
    assert len(spans) == 4
    assert len({trace_id for trace_id, _ in sent}) == 2
    by_traceparent = {_traceparent(span): span for span in spans}
    for trace_id, traceparent in sent:
        span = by_traceparent[traceparent]  # the one sent names the call's own span
        assert span.context is not None
        assert span.context.trace_id == trace_id


def test_tracestate_of_the_parent_is_sent(
    server: EchoServer, keep: tuple[Keep, Any, dict[str, Any]]
) -> None:
    """Under a remote parent with a tracestate, the call sends that tracestate and a
    traceparent in the parent's trace, as the propagators would."""
    exporter, provider, hooks = keep
    parent = TraceContextTextMapPropagator().extract(
        {
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "tracestate": "vendor=abc,other=1",
        }
    )
    token = context.attach(parent)
    try:
        _, got = _sync_httpx(f"{server.url}/echo", hooks)
    finally:
        context.detach(token)
    (span,) = _clients(exporter, provider)
    assert got["traceparent"] == _traceparent(span)
    assert got["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    assert got["tracestate"] == "vendor=abc,other=1"
    assert span.parent is not None
    assert span.parent.span_id == 0x00F067AA0BA902B7


def test_unsampled_parent_sends_flags_00_and_exports_nothing(
    server: EchoServer, keep: tuple[Keep, Any, dict[str, Any]]
) -> None:
    """Under an unsampled remote parent the call still carries the trace (flags 00), and no
    client span is exported."""
    exporter, provider, hooks = keep
    parent = TraceContextTextMapPropagator().extract(
        {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"}
    )
    token = context.attach(parent)
    try:
        _, got = _requests(f"{server.url}/echo", hooks)
    finally:
        context.detach(token)
    assert got["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    assert got["traceparent"].endswith("-00")
    assert _clients(exporter, provider) == []


@pytest.mark.parametrize("call", CLIENTS)
def test_baggage_goes_through_the_propagators(
    call: Client, server: EchoServer, keep: tuple[Keep, Any, dict[str, Any]]
) -> None:
    """With baggage in the context, the propagators write the headers: baggage arrives,
    and the traceparent still names the light client span."""
    exporter, provider, hooks = keep
    token = context.attach(baggage.set_baggage("tenant", "t1"))
    try:
        _, got = call(f"{server.url}/echo", hooks)
    finally:
        context.detach(token)
    (span,) = _clients(exporter, provider)
    assert got["baggage"] == "tenant=t1"
    assert got["traceparent"] == _traceparent(span)


def test_a_processor_added_later_gets_sdk_client_spans(
    server: EchoServer, keep: tuple[Keep, Any, dict[str, Any]]
) -> None:
    """Once the application adds its own processor, client spans are the SDK's and reach
    both processors."""
    exporter, provider, hooks = keep
    theirs = Keep()
    _sync_httpx(f"{server.url}/echo", hooks)
    assert _light(hooks)
    provider.add_span_processor(SimpleSpanProcessor(theirs))
    _, got = _sync_httpx(f"{server.url}/echo", hooks)
    assert not _light(hooks)
    _, sdk = _clients(exporter, provider)
    assert [s.context for s in theirs.spans] == [sdk.context]
    assert got["traceparent"] == _traceparent(sdk)


def test_other_propagators_are_used_as_configured(
    server: EchoServer, keep: tuple[Keep, Any, dict[str, Any]]
) -> None:
    """With propagators=("baggage",) no traceparent is written, light span or not."""
    exporter, provider, hooks = keep
    hooks["config"] = Config(service_name="light-client", propagators=("baggage",))
    token = context.attach(baggage.set_baggage("k", "v"))
    try:
        _, got = _sync_httpx(f"{server.url}/echo", hooks)
    finally:
        context.detach(token)
    assert "traceparent" not in got
    assert got["baggage"] == "k=v"
    assert len(_clients(exporter, provider)) == 1


def test_server_and_client_light_spans_link_up(
    server: EchoServer, keep: tuple[Keep, Any, dict[str, Any]]
) -> None:
    """Inside a WSGI request (light SERVER span), the call's light CLIENT span is its child."""
    from observekit.wsgi import ObservabilityMiddleware
    from tests.util import call

    exporter, provider, hooks = keep

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        _sync_httpx(f"{server.url}/echo", hooks)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    middleware = ObservabilityMiddleware(app, config=hooks["config"], tracer_provider=provider)
    call(middleware, "/work")
    provider.force_flush()
    (server_span,) = [s for s in exporter.spans if s.kind == SpanKind.SERVER]
    (client,) = [s for s in exporter.spans if s.kind == SpanKind.CLIENT]
    assert _light(hooks)
    assert client.parent is not None
    assert server_span.context is not None
    assert client.parent.span_id == server_span.context.span_id
    assert client.context is not None
    assert client.context.trace_id == server_span.context.trace_id
