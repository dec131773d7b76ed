"""Outgoing calls through httpx (sync, async) and requests, against a real server on 127.0.0.1.

The server (tests/echo_server.py) answers with the headers it received, so every
assertion about what was sent is about what arrived.
"""

from __future__ import annotations

import asyncio
import socket
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import requests
from hypothesis import example, given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

import observekit
from observekit import ConfigError
from observekit.metrics.memory import MemoryMetrics
from observekit.propagation import headers as headers_module
from observekit.propagation import httpx as ok_httpx
from observekit.propagation import requests as ok_requests
from tests.conftest import LogCapture
from tests.echo_server import EchoServer, echo_server


@pytest.fixture(scope="module")
def server() -> Iterator[EchoServer]:
    with echo_server() as srv:
        yield srv


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    return tp


@pytest.fixture
def metrics() -> MemoryMetrics:
    return MemoryMetrics()


@pytest.fixture(autouse=True)
def _fresh_shared() -> Iterator[None]:
    headers_module._reset()
    yield
    ok_httpx.uninstrument()
    ok_requests.uninstrument()
    headers_module._reset()


Hooks = dict[str, Any]


@pytest.fixture
def hooks(config: observekit.Config, provider: TracerProvider, metrics: MemoryMetrics) -> Hooks:
    return {"config": config, "tracer_provider": provider, "metrics": metrics}


def _sync_httpx(url: str, hooks: Hooks, **kw: Any) -> tuple[int, dict[str, str]]:
    with ok_httpx.instrument_client(httpx.Client(), **hooks) as client:
        response = client.get(url, **kw)
    return response.status_code, response.json()["headers"]


def _async_httpx(url: str, hooks: Hooks, **kw: Any) -> tuple[int, dict[str, str]]:
    async def run() -> tuple[int, dict[str, str]]:
        async with ok_httpx.instrument_client(httpx.AsyncClient(), **hooks) as client:
            response = await client.get(url, **kw)
        return response.status_code, response.json()["headers"]

    # The request context is a ContextVar: asyncio.run copies it into the task.
    return asyncio.run(run())


def _requests(url: str, hooks: Hooks, **kw: Any) -> tuple[int, dict[str, str]]:
    with ok_requests.instrument_session(requests.Session(), **hooks) as session:
        response = session.get(url, **kw)
    return response.status_code, response.json()["headers"]


CLIENTS = [
    pytest.param(_sync_httpx, id="httpx"),
    pytest.param(_async_httpx, id="httpx-async"),
    pytest.param(_requests, id="requests"),
]
Client = Callable[..., tuple[int, dict[str, str]]]


def _client_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]


# -- item 2: request ID and trace context -----------------------------------------------------


@pytest.mark.parametrize("call", CLIENTS)
def test_call_in_context_carries_request_id_and_traceparent(
    call: Client, server: EchoServer, hooks: Hooks, provider: TracerProvider, exporter: Any
) -> None:
    """Inside a request context and a span, the call carries X-Request-ID and a traceparent
    naming the client span, whose parent is the current span."""
    tracer = provider.get_tracer("test")
    with observekit.request_context("req-abc"), tracer.start_as_current_span("server") as parent:
        status, got = call(f"{server.url}/echo", hooks)
    assert status == 200
    assert got["x-request-id"] == "req-abc"
    (client,) = _client_spans(exporter)
    ctx = client.context
    assert got["traceparent"] == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
    assert client.parent is not None
    assert client.parent.span_id == parent.get_span_context().span_id
    assert client.name == "GET"
    attrs = dict(client.attributes or {})
    assert attrs["http.request.method"] == "GET"
    assert attrs["server.address"] == "127.0.0.1"
    assert attrs["server.port"] == server.port
    assert attrs["url.full"] == f"{server.url}/echo"
    assert attrs["http.response.status_code"] == 200


@pytest.mark.parametrize("call", CLIENTS)
def test_caller_headers_are_never_overwritten(
    call: Client, server: EchoServer, hooks: Hooks
) -> None:
    """A request ID or traceparent the caller set arrives unchanged."""
    mine = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with observekit.request_context("ctx-id"):
        _, got = call(
            f"{server.url}/echo", hooks, headers={"x-request-id": "caller", "TraceParent": mine}
        )
    assert got["x-request-id"] == "caller"
    assert got["traceparent"] == mine


@pytest.mark.parametrize("call", CLIENTS)
def test_baggage_and_configured_header_name(
    call: Client, server: EchoServer, hooks: Hooks, provider: TracerProvider
) -> None:
    """Baggage goes out through the propagators; the request-ID header name is configurable."""
    from opentelemetry import baggage, context

    hooks["config"] = observekit.Config(outgoing_request_id_header="X-Correlation-ID")
    token = context.attach(baggage.set_baggage("tenant", "t1"))
    try:
        with observekit.request_context("corr-1"):
            _, got = call(f"{server.url}/echo", hooks)
    finally:
        context.detach(token)
    assert got["x-correlation-id"] == "corr-1"
    assert "x-request-id" not in got
    assert got["baggage"] == "tenant=t1"


# -- item 7: outside any context ------------------------------------------------------------------


@pytest.mark.parametrize("call", CLIENTS)
def test_outside_context_no_request_id_unless_asked(
    call: Client, server: EchoServer, hooks: Hooks
) -> None:
    """Outside a request or task no ID is sent; with outgoing_generate_request_id each call gets one."""
    _, got = call(f"{server.url}/echo", hooks)
    assert "x-request-id" not in got
    hooks["config"] = observekit.Config(outgoing_generate_request_id=True)
    _, first = call(f"{server.url}/echo", hooks)
    _, second = call(f"{server.url}/echo", hooks)
    assert observekit.is_valid_request_id(first["x-request-id"])
    assert first["x-request-id"] != second["x-request-id"]


def test_no_trace_headers_when_tracing_is_off(server: EchoServer, config: Any) -> None:
    """Without any tracer provider the call carries the request ID only."""
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    with observekit.request_context("only-id"):
        _, got = _sync_httpx(f"{server.url}/echo", {"config": config, "metrics": None})
    assert got["x-request-id"] == "only-id"
    assert "traceparent" not in got


# -- redirects and retries ------------------------------------------------------------------------


@pytest.mark.parametrize("call", CLIENTS)
def test_redirect_hops_carry_same_ids(
    call: Client, server: EchoServer, hooks: Hooks, provider: TracerProvider, exporter: Any
) -> None:
    """Each redirect hop carries the same request ID and trace, with its own client span;
    a header the caller set stays on every hop."""
    server.seen.clear()
    kw: dict[str, Any] = {"headers": {"X-Caller": "kept"}}
    if call is not _requests:
        kw["follow_redirects"] = True
    tracer = provider.get_tracer("test")
    with observekit.request_context("hop-id"), tracer.start_as_current_span("server") as parent:
        status, _ = call(f"{server.url}/redirect?to=/echo", hooks, **kw)
    assert status == 200
    hops = [h for path, h in server.seen]
    assert [p for p, _ in server.seen] == ["/redirect?to=/echo", "/echo"]
    assert {h["x-request-id"] for h in hops} == {"hop-id"}
    assert {h["x-caller"] for h in hops} == {"kept"}
    spans = _client_spans(exporter)
    assert len(spans) == 2
    trace_id = parent.get_span_context().trace_id
    for hop, span in zip(hops, sorted(spans, key=lambda s: s.start_time or 0), strict=True):
        assert hop["traceparent"].startswith(f"00-{trace_id:032x}-{span.context.span_id:016x}-")
        assert span.parent is not None
        assert span.parent.span_id == parent.get_span_context().span_id


def test_redirect_to_denied_host_drops_our_headers(server: EchoServer, hooks: Hooks) -> None:
    """A redirect from an allowed host to a denied one does not take our headers along
    (httpx copies the previous hop's headers; they are taken off again)."""
    hooks["config"] = observekit.Config(outgoing_denied_hosts=("localhost",))
    target = f"http://localhost:{server.port}/echo"
    for call in (_sync_httpx, _requests):
        server.seen.clear()
        kw = {"follow_redirects": True} if call is _sync_httpx else {}
        with observekit.request_context("secret-id"):
            _, got = call(f"{server.url}/redirect?to={target}", hooks, **kw)
        assert server.seen[0][1]["x-request-id"] == "secret-id"
        assert "x-request-id" not in got
        assert "traceparent" not in got


def test_requests_retries_resend_same_headers(server: EchoServer, hooks: Hooks) -> None:
    """urllib3 retries (under the adapter) resend the same request ID and traceparent."""
    session = ok_requests.instrument_session(requests.Session(), **hooks)
    retry = Retry(total=2, status_forcelist=[503], backoff_factor=0, allowed_methods=None)
    session.mount("http://", HTTPAdapter(max_retries=retry))
    ok_requests.instrument_session(session, **hooks)  # the new adapter
    server.seen.clear()
    with observekit.request_context("retry-id"):
        response = session.get(f"{server.url}/flaky/r1")
    assert response.status_code == 200
    assert len(server.seen) == 2
    first, second = (h for _, h in server.seen)
    assert first["x-request-id"] == second["x-request-id"] == "retry-id"
    assert first["traceparent"] == second["traceparent"]


def test_httpx_transport_retries_resend_same_headers(server: EchoServer, hooks: Hooks) -> None:
    """httpx's own connection retries happen inside the wrapped transport, with the same headers."""
    transport = ok_httpx.ObservekitTransport(httpx.HTTPTransport(retries=2), **hooks)
    with observekit.request_context("t-id"), httpx.Client(transport=transport) as client:
        got = client.get(f"{server.url}/echo").json()["headers"]
    assert got["x-request-id"] == "t-id"


# -- item 3: hosts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allowed", "denied", "to_ip", "to_name"),
    [
        pytest.param((), (), True, True, id="default-everywhere"),
        pytest.param(("127.0.0.1",), (), True, False, id="allow-list"),
        pytest.param((), ("localhost",), True, False, id="deny-list"),
        pytest.param(("*",), ("127.0.0.1",), False, True, id="deny-wins"),
    ],
)
def test_allow_and_deny_lists(
    server: EchoServer,
    hooks: Hooks,
    allowed: tuple[str, ...],
    denied: tuple[str, ...],
    to_ip: bool,
    to_name: bool,
) -> None:
    """The allow-list and deny-list decide which hosts get the request ID and trace headers."""
    hooks["config"] = observekit.Config(
        outgoing_allowed_hosts=allowed, outgoing_denied_hosts=denied
    )
    with observekit.request_context("h-id"):
        _, by_ip = _requests(f"http://127.0.0.1:{server.port}/echo", hooks)
        _, by_name = _sync_httpx(f"http://localhost:{server.port}/echo", hooks)
    assert ("x-request-id" in by_ip, "traceparent" in by_ip) == (to_ip, to_ip)
    assert ("x-request-id" in by_name, "traceparent" in by_name) == (to_name, to_name)


def test_host_patterns() -> None:
    """Patterns: exact names (any case), ``*.domain`` for subdomains only, IPs, IPv6 brackets."""
    out = headers_module.Outgoing(
        observekit.Config(
            outgoing_allowed_hosts=("*.internal", "API.example.com", "[::1]"),
            outgoing_denied_hosts=("secret.internal",),
        ),
        metrics=None,
    )
    assert out.sends_to("a.internal")
    assert out.sends_to("b.a.INTERNAL")
    assert not out.sends_to("internal")
    assert not out.sends_to("secret.internal")
    assert out.sends_to("api.example.com")
    assert not out.sends_to("example.com")
    assert out.sends_to("::1")
    assert out.sends_to("[::1]")


_URL_PART = st.text(alphabet="aZ09-._~:@[]!/?#%", max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    scheme=st.sampled_from(["http", "HTTPS", "ws", "", "a:b", "x/y"]),
    sep=st.sampled_from(["://", ":/", ""]),
    authority=_URL_PART,
    rest=_URL_PART,
)
@example(scheme="http", sep="://", authority="user:pw@Host.Example:8080", rest="/p?q#f")
@example(scheme="http", sep="://", authority="[::1]:9000", rest="")
@example(scheme="https", sep="://", authority="h", rest="?a=1")
def test_split_url_remembered_per_authority_gives_the_parsed_answer(
    scheme: str, sep: str, authority: str, rest: str
) -> None:
    """split_url (remembered per scheme and authority) answers as parsing the URL does, on
    the first call and the next: whatever follows the authority never changes it."""
    url = f"{scheme}{sep}{authority}{rest}"
    parsed = headers_module._split(url)
    assert headers_module.split_url(url) == parsed
    assert headers_module.split_url(url) == parsed


def test_split_url_reads_host_and_port_as_urllib_does() -> None:
    """Lowercased scheme and host, the port as an int (None when absent), userinfo dropped."""
    for url in (
        "http://Service2.Internal:8000/items/42?x=1",
        "https://user:secret@api.example.com/v1",
        "http://[::1]:9000/",
        "http://host?only=query",
        "http://host#frag",
        "HTTP://h",
    ):
        parts = urllib.parse.urlsplit(url)
        assert headers_module.split_url(url) == (parts.scheme, parts.hostname, parts.port), url


# -- item 4: client spans -----------------------------------------------------------------------


def test_span_ends_when_body_is_read_not_at_headers(
    server: EchoServer, hooks: Hooks, exporter: Any
) -> None:
    """The client span ends when the streamed body is read or closed, not when headers arrive."""
    with ok_httpx.instrument_client(httpx.Client(), **hooks) as client:
        with client.stream("GET", f"{server.url}/slow?s=0.2") as response:
            assert response.status_code == 200
            assert _client_spans(exporter) == []
            response.read()
            assert len(_client_spans(exporter)) == 1
        (span,) = _client_spans(exporter)
        assert (span.end_time or 0) - (span.start_time or 0) >= 0.15e9
    session = ok_requests.instrument_session(requests.Session(), **hooks)
    response = session.get(f"{server.url}/slow?s=0.2", stream=True)
    assert len(_client_spans(exporter)) == 1
    response.close()
    assert len(_client_spans(exporter)) == 2
    response = session.get(f"{server.url}/slow?s=0.05", stream=True)
    for _ in response.iter_content(16):
        pass
    assert len(_client_spans(exporter)) == 3


def test_async_span_ends_on_aclose(server: EchoServer, hooks: Hooks, exporter: Any) -> None:
    """AsyncClient: the span ends at aclose() of a streamed response, not at its headers."""
    asyncio.run(_async_span_ends_on_aclose(server, hooks, exporter))


async def _async_span_ends_on_aclose(server: EchoServer, hooks: Hooks, exporter: Any) -> None:
    async with ok_httpx.instrument_client(httpx.AsyncClient(), **hooks) as client:
        async with client.stream("GET", f"{server.url}/slow?s=0.05") as response:
            assert response.status_code == 200
            assert _client_spans(exporter) == []
        assert len(_client_spans(exporter)) == 1


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("client", "exc"),
    [
        pytest.param("httpx", httpx.ConnectError, id="httpx"),
        pytest.param("requests", requests.ConnectionError, id="requests"),
    ],
)
def test_transport_error_ends_span_and_counts(
    client: str, exc: type[BaseException], hooks: Hooks, exporter: Any, metrics: MemoryMetrics
) -> None:
    """Connection refused: the app gets the client's own exception; the span and the error
    counter say ``connection_refused``."""
    url = f"http://127.0.0.1:{_closed_port()}/x?token=secret"
    if client == "httpx":
        get: Callable[[str], Any] = ok_httpx.instrument_client(httpx.Client(), **hooks).get
    else:
        get = ok_requests.instrument_session(requests.Session(), **hooks).get
    with pytest.raises(exc):
        get(url)
    (span,) = _client_spans(exporter)
    assert span.attributes is not None
    assert span.attributes["error.type"] == "connection_refused"
    assert span.status.status_code == trace.StatusCode.ERROR
    (error,) = metrics.snapshot()["client_errors"]
    assert error["error.type"] == "connection_refused"
    assert error["http.response.status_code"] == 0


@pytest.mark.parametrize("call", CLIENTS)
def test_timeout_is_error_type_timeout(
    call: Client, server: EchoServer, hooks: Hooks, metrics: MemoryMetrics
) -> None:
    """A read timeout (here while reading the body) is counted as ``error.type=timeout``,
    whatever the client wraps it in (requests raises ConnectionError(ReadTimeoutError))."""
    with pytest.raises((httpx.TimeoutException, requests.RequestException)):
        call(f"{server.url}/slow?s=0.5", hooks, timeout=0.1)
    errors = metrics.snapshot()["client_errors"]
    assert [e["error.type"] for e in errors] == ["timeout"]


def test_url_full_has_no_credentials(server: EchoServer, hooks: Hooks, exporter: Any) -> None:
    """Credentials in the URL never reach the span; signature query values are redacted."""
    url = f"http://user:pw@127.0.0.1:{server.port}/echo?sig=abc&page=2"
    _sync_httpx(url, hooks)
    _requests(url, hooks)
    for span in _client_spans(exporter):
        full = (span.attributes or {})["url.full"]
        assert full == f"http://REDACTED:REDACTED@127.0.0.1:{server.port}/echo?sig=REDACTED&page=2"


@pytest.mark.parametrize("call", CLIENTS)
def test_4xx_5xx_are_errors_on_client_spans(
    call: Client, server: EchoServer, hooks: Hooks, exporter: Any
) -> None:
    """Per the client conventions, 4xx and 5xx set error.type to the status code."""
    call(f"{server.url}/status/404", hooks)
    (span,) = _client_spans(exporter)
    assert (span.attributes or {})["error.type"] == "404"
    assert span.status.status_code == trace.StatusCode.ERROR


# -- item 5: metrics ------------------------------------------------------------------------------


@pytest.mark.parametrize("call", CLIENTS)
def test_duration_metric_labels(
    call: Client, server: EchoServer, hooks: Hooks, metrics: MemoryMetrics
) -> None:
    """http.client.request.duration is recorded with method, server.address, port and status."""
    call(f"{server.url}/echo", hooks)
    call(f"{server.url}/status/503", hooks)
    snap = metrics.snapshot()
    got = sorted(
        (
            r["http.request.method"],
            r["server.address"],
            r["server.port"],
            r["http.response.status_code"],
            r["count"],
        )
        for r in snap["client_requests"]
    )
    assert got == [
        ("GET", "127.0.0.1", server.port, 200, 1),
        ("GET", "127.0.0.1", server.port, 503, 1),
    ]
    assert [e["error.type"] for e in snap["client_errors"]] == ["503"]


def test_server_address_label_is_capped(
    server: EchoServer, hooks: Hooks, metrics: MemoryMetrics
) -> None:
    """Beyond outgoing_max_hosts distinct hosts, server.address is ``overflow``."""
    hooks["config"] = observekit.Config(outgoing_max_hosts=1)
    _sync_httpx(f"http://127.0.0.1:{server.port}/echo", hooks)
    _sync_httpx(f"http://localhost:{server.port}/echo", hooks)
    assert sorted(r["server.address"] for r in metrics.snapshot()["client_requests"]) == [
        "127.0.0.1",
        "overflow",
    ]


# -- item 6: the DEBUG line -----------------------------------------------------------------------


@pytest.mark.parametrize("call", CLIENTS)
def test_debug_line_per_call(
    call: Client, server: EchoServer, hooks: Hooks, logs: LogCapture
) -> None:
    """One DEBUG JSON line per call: method, URL without credentials or query values, status,
    duration and the request ID."""
    with observekit.request_context("log-id"):
        call(f"http://u:p@127.0.0.1:{server.port}/echo?q=secret&page=2", hooks)
    (line,) = logs.by_logger("observekit.client")
    assert line["level"] == "DEBUG"
    assert line["request_id"] == "log-id"
    assert line["http.request.method"] == "GET"
    assert line["url.full"] == f"http://127.0.0.1:{server.port}/echo?q=REDACTED&page=REDACTED"
    assert line["http.response.status_code"] == 200
    assert isinstance(line["duration_ms"], float)
    assert "secret" not in logs.text.split("observekit.client")[1].split("\n")[0]


# -- item 1: global opt-in --------------------------------------------------------------------------


def test_global_instrument_covers_module_level_calls(server: EchoServer, hooks: Hooks) -> None:
    """instrument() covers httpx.get and requests.get; uninstrument() undoes it; hooking a
    session too does not add the headers twice."""
    ok_httpx.instrument(**hooks)
    ok_requests.instrument(**hooks)
    with observekit.request_context("global-id"):
        by_httpx = httpx.get(f"{server.url}/echo").json()["headers"]
        by_requests = requests.get(f"{server.url}/echo", timeout=10).json()["headers"]
        double = ok_requests.instrument_session(requests.Session(), **hooks)
        server.seen.clear()
        double.get(f"{server.url}/echo")
    assert by_httpx["x-request-id"] == by_requests["x-request-id"] == "global-id"
    assert "traceparent" in by_httpx
    assert "traceparent" in by_requests
    assert len(server.seen) == 1
    ok_httpx.uninstrument()
    ok_requests.uninstrument()
    with observekit.request_context("gone"):
        assert "x-request-id" not in httpx.get(f"{server.url}/echo").json()["headers"]
        assert (
            "x-request-id" not in requests.get(f"{server.url}/echo", timeout=10).json()["headers"]
        )


def test_mounts_are_wrapped(server: EchoServer, hooks: Hooks) -> None:
    """instrument_client wraps mounted transports too, and is idempotent."""
    client = httpx.Client(mounts={"http://127.0.0.1": httpx.HTTPTransport()})
    ok_httpx.instrument_client(client, **hooks)
    ok_httpx.instrument_client(client, **hooks)
    with observekit.request_context("mount-id"), client:
        got = client.get(f"{server.url}/echo").json()["headers"]
    assert got["x-request-id"] == "mount-id"


# -- item 8 (in-process part): 100 concurrent async calls --------------------------------------------


def test_hundred_concurrent_async_calls_keep_their_own_ids(
    server: EchoServer, hooks: Hooks
) -> None:
    """100 calls through one AsyncClient under asyncio.gather, each in its own request
    context, each arrive with their own ID."""

    async def run() -> list[tuple[str, str]]:
        async with ok_httpx.instrument_client(httpx.AsyncClient(), **hooks) as client:

            async def one(i: int) -> tuple[str, str]:
                with observekit.request_context(f"id-{i}"):
                    await asyncio.sleep(0)
                    response = await client.get(f"{server.url}/echo")
                    return f"id-{i}", response.json()["headers"]["x-request-id"]

            return await asyncio.gather(*(one(i) for i in range(100)))

    pairs = asyncio.run(run())
    assert len(pairs) == 100
    assert all(sent == received for sent, received in pairs)


# -- robustness and config ----------------------------------------------------------------------------


def test_broken_hook_never_breaks_the_call(server: EchoServer, hooks: Hooks) -> None:
    """A failing request-ID generator is absorbed: the call goes on with a default ID."""

    def broken() -> str:
        raise RuntimeError("generator down")

    hooks["config"] = observekit.Config(
        outgoing_generate_request_id=True, request_id_generator=broken
    )
    _, got = _sync_httpx(f"{server.url}/echo", hooks)
    assert observekit.is_valid_request_id(got["x-request-id"])


def test_config_env_equals_code() -> None:
    """The outgoing settings read from OBSERVEKIT_* equal the same values given in code."""
    env = {
        "OBSERVEKIT_OUTGOING_REQUEST_ID_HEADER": "X-Trace-Me",
        "OBSERVEKIT_OUTGOING_ALLOWED_HOSTS": "*.internal, api.example.com",
        "OBSERVEKIT_OUTGOING_DENIED_HOSTS": "secret.internal",
        "OBSERVEKIT_OUTGOING_GENERATE_REQUEST_ID": "true",
        "OBSERVEKIT_OUTGOING_MAX_HOSTS": "7",
    }
    assert observekit.Config.from_env(env) == observekit.Config(
        outgoing_request_id_header="X-Trace-Me",
        outgoing_allowed_hosts=("*.internal", "api.example.com"),
        outgoing_denied_hosts=("secret.internal",),
        outgoing_generate_request_id=True,
        outgoing_max_hosts=7,
    )


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param(
            {"outgoing_allowed_hosts": ("http://x",)}, "outgoing_allowed_hosts", id="scheme"
        ),
        pytest.param({"outgoing_denied_hosts": ("a/b",)}, "outgoing_denied_hosts", id="path"),
        pytest.param({"outgoing_allowed_hosts": "x.com"}, "outgoing_allowed_hosts", id="str"),
        pytest.param(
            {"outgoing_request_id_header": "X Bad"}, "outgoing_request_id_header", id="header"
        ),
        pytest.param(
            {"outgoing_generate_request_id": "yes"}, "outgoing_generate_request_id", id="bool"
        ),
        pytest.param({"outgoing_max_hosts": 0}, "outgoing_max_hosts", id="max-hosts"),
    ],
)
def test_bad_outgoing_config(kwargs: dict[str, Any], field: str) -> None:
    """Bad outgoing settings raise ConfigError naming the field."""
    with pytest.raises(ConfigError) as info:
        observekit.Config(**kwargs)
    assert info.value.field == field


def test_wrong_types_rejected() -> None:
    """The hooks refuse what is not a client, session, transport or adapter."""
    with pytest.raises(TypeError):
        ok_httpx.instrument_client(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ok_requests.instrument_session(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ok_httpx.ObservekitTransport(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ok_requests.ObservekitAdapter(object())  # type: ignore[arg-type]


def test_requests_hooks_leave_no_reference_cycle(server: EchoServer, hooks: Hooks) -> None:
    """Once a requests call is finished its hooks are off the urllib3 response: a hooked
    call leaves no more cyclic garbage than a bare one (each would otherwise wait for the
    cyclic collector, which slows every request of the process)."""
    import gc

    bare = requests.Session()
    hooked = ok_requests.instrument_session(requests.Session(), **hooks)
    for session in (bare, hooked):  # warm up: pools, connections, caches
        session.get(f"{server.url}/echo").content  # noqa: B018
    found: dict[str, int] = {}
    enabled = gc.isenabled()
    gc.disable()
    try:
        for name, session in (("bare", bare), ("hooked", hooked)):
            gc.collect()
            with observekit.request_context("no-cycle"):
                for _ in range(20):
                    response = session.get(f"{server.url}/echo")
                    sent = response.json()["headers"].get("x-request-id")
                    assert sent == ("no-cycle" if name == "hooked" else None)
                    del response
            found[name] = gc.collect()
    finally:
        if enabled:
            gc.enable()
    assert found["hooked"] <= found["bare"], found
