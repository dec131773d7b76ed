"""observekit.tracing: SDK set-up, server spans, log IDs, drops and bounded shutdown.

Spans go through the real SDK and, where the wire matters, the real OTLP exporters
to the receivers in ``tests/otlp_receiver.py`` on 127.0.0.1. The detail tests read
them from the SDK's own in-memory exporter. Providers are built with
``set_global=False``; what needs the global provider runs in a subprocess.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import baggage, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import observekit
from observekit import tracing
from tests.otlp_receiver import GrpcReceiver, HangingReceiver, OTLPReceiver, closed_port

ROOT = Path(__file__).resolve().parents[1]
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


# -- helpers -------------------------------------------------------------------------


class Tracing:
    """Providers a test built, shut down (bounded) when it ends."""

    def __init__(self) -> None:
        self.providers: list[TracerProvider] = []

    def provider(
        self, config: observekit.Config, exporter: SpanExporter | None = None, **kwargs: Any
    ) -> TracerProvider:
        provider = tracing.configure(config, exporter=exporter, set_global=False, **kwargs)
        self.providers.append(provider)
        return provider

    def memory(
        self, **fields: Any
    ) -> tuple[tracing.ServerSpans, InMemorySpanExporter, TracerProvider]:
        """ServerSpans on a provider whose spans land in the SDK's in-memory exporter."""
        config = observekit.Config(service_name="test-svc", service_version="1.2.3", **fields)
        exporter = InMemorySpanExporter()
        provider = self.provider(config, exporter)
        return tracing.ServerSpans(config, provider), exporter, provider


@pytest.fixture
def otel() -> Iterator[Tracing]:
    made = Tracing()
    yield made
    for provider in made.providers:
        provider.shutdown()


def request(
    spans: tracing.ServerSpans,
    *,
    method: str = "GET",
    path: str = "/items/42",
    headers: dict[str, str] | None = None,
    route: str | None = None,
    query: str | None = None,
) -> Any:
    return spans.start(
        method,
        path,
        "http",
        headers or {},
        client="10.0.0.7",
        server_address="shop.example",
        server_port=8080,
        user_agent="probe/1.0",
        protocol_version="1.1",
        query=query,
        route=route,
    )


def served(
    spans: tracing.ServerSpans,
    exporter: InMemorySpanExporter,
    provider: TracerProvider,
    *,
    status: int | None = 200,
    route: str | None = None,
    error: BaseException | None = None,
    error_type: str | None = None,
    **start: Any,
) -> ReadableSpan:
    """One request start to finish; returns its exported span."""
    handle = request(spans, **start)
    token = spans.activate(handle)
    spans.deactivate(token)
    spans.finish(handle, status=status, route=route, error=error, error_type=error_type)
    assert provider.force_flush(5000)
    (span,) = exporter.get_finished_spans()
    exporter.clear()
    return span


def settle(provider: TracerProvider, timeout: float = 10.0) -> None:
    """Wait until no export is in flight (one given up on by a bounded shutdown ends late)."""
    processor = tracing._processor_of[provider]
    deadline = time.monotonic() + timeout
    while processor._guarded.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


# -- configure: resource, sampler, exporter, propagators -----------------------------------


def test_resource_carries_service_version_environment_and_extras(otel: Tracing) -> None:
    """The Resource has service.name/version, deployment.environment(.name), deployment.id, extras."""
    config = observekit.Config(
        service_name="checkout",
        service_version="2.0.1",
        environment="prod",
        deployment_id="rollout-7",
        resource_attributes=(("team", "payments"), ("service.name", "not-this")),
    )
    attributes = dict(otel.provider(config).resource.attributes)

    assert attributes["service.name"] == "checkout"
    assert attributes["service.version"] == "2.0.1"
    assert attributes["deployment.environment"] == "prod"
    assert attributes["deployment.environment.name"] == "prod"
    assert attributes["deployment.id"] == "rollout-7"
    assert attributes["team"] == "payments"
    assert attributes["telemetry.sdk.language"] == "python"
    assert attributes["service.instance.id"]


def test_resource_from_the_standard_environment_variables(otel: Tracing) -> None:
    """Config.from_env's OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES end up in the Resource."""
    config = observekit.Config.from_env(
        {
            "OTEL_SERVICE_NAME": "env-svc",
            "OTEL_RESOURCE_ATTRIBUTES": "service.version=9.9,deployment.environment=staging,"
            "k8s.pod.name=pod%2D1",
        }
    )
    attributes = dict(otel.provider(config).resource.attributes)

    assert attributes["service.name"] == "env-svc"
    assert attributes["service.version"] == "9.9"
    assert attributes["deployment.environment"] == "staging"
    assert attributes["k8s.pod.name"] == "pod-1"


def test_unset_environment_is_written_as_unknown(otel: Tracing) -> None:
    """Without an environment the Resource says deployment.environment=unknown, as log lines do."""
    provider = otel.provider(observekit.Config(service_name="s", service_version="1"))

    assert provider.resource.attributes["deployment.environment"] == "unknown"
    assert "deployment.id" not in provider.resource.attributes


@pytest.mark.parametrize(
    ("sampler", "arg", "expected"),
    [
        pytest.param("always_on", None, 200, id="always_on"),
        pytest.param("always_off", None, 0, id="always_off"),
        pytest.param("parentbased_always_off", None, 0, id="parentbased_always_off"),
        pytest.param("traceidratio", 0.0, 0, id="traceidratio-0"),
        pytest.param("traceidratio", 1.0, 200, id="traceidratio-1"),
        pytest.param(
            "parentbased_traceidratio", None, 200, id="parentbased_traceidratio-default-1"
        ),
    ],
)
def test_sampler_decides_what_is_recorded(
    otel: Tracing, sampler: str, arg: float | None, expected: int
) -> None:
    """Each OTEL_TRACES_SAMPLER choice records all, none, or its ratio of 200 new traces."""
    spans, exporter, provider = otel.memory(traces_sampler=sampler, traces_sampler_arg=arg)
    for _ in range(200):
        handle = request(spans)
        spans.finish(handle, status=200, route=None, error=None, error_type=None)
    assert provider.force_flush(5000)

    assert len(exporter.get_finished_spans()) == expected


def test_traceidratio_keeps_about_its_ratio(otel: Tracing) -> None:
    """traceidratio 0.25 from the environment keeps about a quarter of 4000 new traces."""
    config = observekit.Config.from_env(
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"},
        service_name="ratio",
    )
    exporter = InMemorySpanExporter()
    spans = tracing.ServerSpans(config, otel.provider(config, exporter, max_queue_size=4096))
    kept = 0
    for _ in range(4000):
        handle = request(spans)
        kept += spans.trace_id(handle) is not None
        spans.finish(handle, status=200, route=None, error=None, error_type=None)
    assert otel.providers[0].force_flush(5000)

    assert 800 < kept < 1200  # 1000 expected; 6.9 standard deviations either side
    assert len(exporter.get_finished_spans()) == kept


def test_parent_based_sampler_follows_the_incoming_decision(otel: Tracing) -> None:
    """parentbased_always_off still records a request whose incoming traceparent is sampled."""
    spans, exporter, provider = otel.memory(traces_sampler="parentbased_always_off")

    span = served(spans, exporter, provider, headers={"traceparent": TRACEPARENT})
    assert hex_ids(span)[0] == TRACE_ID
    handle = request(spans, headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"})
    assert spans.trace_id(handle) is None  # the caller did not sample: neither do we


def test_otlp_http_from_env_reaches_the_receiver(otel: Tracing) -> None:
    """OTEL_EXPORTER_OTLP_ENDPOINT (a base URL) sends spans over OTLP/HTTP to <base>/v1/traces."""
    with OTLPReceiver() as receiver:
        config = observekit.Config.from_env(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint + "/", "OTEL_SERVICE_NAME": "wire"}
        )
        assert config.traces_exporter == "otlp"
        provider = otel.provider(config)
        spans = tracing.ServerSpans(config, provider)
        handle = request(spans, route="/items/{id}")
        spans.finish(handle, status=200, route=None, error=None, error_type=None)
        assert provider.force_flush(5000)

        (span,) = receiver.wait_for(lambda got: len(got) == 1)
        assert receiver.requests[0]["content-type"] == "application/x-protobuf"
    assert span["name"] == "GET /items/{id}"
    assert span["kind"] == "SERVER"
    assert span["scope"] == "observekit"
    assert span["resource"]["service.name"] == "wire"
    assert span["attributes"]["http.response.status_code"] == 200
    assert tracing.export_stats(provider).exported == 1


_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


def _one_span(provider: TracerProvider) -> None:
    provider.get_tracer("t").start_span("one").end()
    assert provider.force_flush(5000)


def test_the_exporter_takes_the_proxy_from_the_environment_once(
    otel: Tracing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY is honoured, read when the exporter is built rather than on every post
    (requests' per-post read walks all of os.environ); NO_PROXY exempts the collector."""
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    collector = "http://collector.invalid:4318"
    with OTLPReceiver() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.endpoint)
        config = observekit.Config(
            service_name="proxied", traces_exporter="otlp", otlp_endpoint=collector
        )
        provider = otel.provider(config, schedule_delay=0.05)
        _one_span(provider)
        proxy.wait_for(lambda got: len(got) == 1)
        assert proxy.proxied == [collector + "/v1/traces"]

        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")
        _one_span(provider)
        proxy.wait_for(lambda got: len(got) == 2)  # still through the proxy read at start

        monkeypatch.setenv("NO_PROXY", "collector.invalid")
        exempt = otel.provider(config, schedule_delay=0.05)
        _one_span(exempt)
        assert tracing.export_stats(exempt).exported == 0  # straight to collector.invalid
        assert len(proxy.proxied) == 2


@pytest.mark.parametrize("name", ["NETRC", "OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER"])
def test_the_exporter_keeps_requests_own_session_when_the_environment_needs_it(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """A .netrc file or a credential provider in the environment: the SDK's own session."""
    url = "http://127.0.0.1:4318/v1/traces"
    monkeypatch.delenv("NETRC", raising=False)
    session = tracing._lean_session(url)
    assert session is not None
    assert session.trust_env is False
    monkeypatch.setenv(name, "/nowhere/file")
    assert tracing._lean_session(url) is None


def test_the_exporter_takes_the_ca_bundle_from_the_environment_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """REQUESTS_CA_BUNDLE (else CURL_CA_BUNDLE) verifies the collector, as requests does;
    a certificate of OTEL_EXPORTER_OTLP_CERTIFICATE wins over both."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/requests.pem")
    monkeypatch.setenv("CURL_CA_BUNDLE", "/etc/curl.pem")
    session = tracing._lean_session("https://collector.example/v1/traces")
    assert session is not None
    session.verify = True  # what the SDK's transport sets without a certificate
    tracing._ca_bundle_once(session)
    assert session.verify == "/etc/requests.pem"
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    session.verify = True
    tracing._ca_bundle_once(session)
    assert session.verify == "/etc/curl.pem"
    session.verify = "/etc/otel-collector.pem"
    tracing._ca_bundle_once(session)
    assert session.verify == "/etc/otel-collector.pem"


def test_signal_specific_endpoint_is_used_as_it_is(otel: Tracing) -> None:
    """OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=<...>/v1/traces is not given a second /v1/traces."""
    with OTLPReceiver() as receiver:
        config = observekit.Config.from_env(
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.traces_url}, service_name="sig"
        )
        provider = otel.provider(config)
        spans = tracing.ServerSpans(config, provider)
        spans.finish(request(spans), status=200, route=None, error=None, error_type=None)
        assert provider.force_flush(5000)
        receiver.wait_for(lambda got: len(got) == 1)


def test_signal_specific_endpoint_with_its_own_path_wins_over_the_base(otel: Tracing) -> None:
    """OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is the traces URL whatever its path (nothing is
    appended), and it wins over OTEL_EXPORTER_OTLP_ENDPOINT, as the OTLP exporter spec says."""
    with OTLPReceiver(path="/ingest/otlp-traces") as receiver:
        config = observekit.Config.from_env(
            {
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.traces_url,
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed_port()}",
            },
            service_name="sig",
        )
        assert config.otlp_traces_endpoint == receiver.traces_url
        assert config.traces_exporter == "otlp"
        provider = otel.provider(config)
        spans = tracing.ServerSpans(config, provider)
        spans.finish(request(spans), status=200, route=None, error=None, error_type=None)
        assert provider.force_flush(5000)
        receiver.wait_for(lambda got: len(got) == 1)


@pytest.mark.parametrize(
    ("endpoint", "traces_endpoint", "url"),
    [
        pytest.param(None, "http://c/x", "http://c/x", id="signal-only"),
        pytest.param("http://b:4318", "http://c:9/t/", "http://c:9/t/", id="signal-wins"),
        pytest.param("http://b:4318", None, "http://b:4318/v1/traces", id="base-only"),
    ],
)
def test_traces_url_takes_the_signal_endpoint_as_it_is(
    endpoint: str | None, traces_endpoint: str | None, url: str
) -> None:
    """A signal-specific endpoint is never given /v1/traces; a base endpoint is."""
    assert tracing._traces_url(endpoint, traces_endpoint) == url


def test_signal_endpoint_without_http_scheme_names_its_own_field() -> None:
    """A bad OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is reported as otlp_traces_endpoint."""
    config = observekit.Config(traces_exporter="otlp", otlp_traces_endpoint="collector:4318")
    with pytest.raises(observekit.ConfigError, match="otlp_traces_endpoint"):
        tracing.configure(config, set_global=False)


def test_gzip_compressed_export_is_decoded(otel: Tracing) -> None:
    """An OTLP/HTTP exporter with gzip compression is read by the receiver just the same."""
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    with OTLPReceiver() as receiver:
        config = observekit.Config(service_name="gz")
        exporter = OTLPSpanExporter(
            endpoint=receiver.traces_url, compression=Compression.Gzip, timeout=5
        )
        provider = otel.provider(config, exporter)
        spans = tracing.ServerSpans(config, provider)
        spans.finish(request(spans), status=200, route=None, error=None, error_type=None)
        assert provider.force_flush(5000)

        (span,) = receiver.wait_for(lambda got: len(got) == 1)
        assert receiver.requests[0]["content-encoding"] == "gzip"
    assert span["resource"]["service.name"] == "gz"


def test_otlp_grpc_when_configured(otel: Tracing) -> None:
    """otlp_protocol='grpc' exports to a gRPC receiver."""
    with GrpcReceiver() as receiver:
        config = observekit.Config(
            service_name="grpc-svc",
            traces_exporter="otlp",
            otlp_protocol="grpc",
            otlp_endpoint=receiver.endpoint,
        )
        provider = otel.provider(config)
        spans = tracing.ServerSpans(config, provider)
        spans.finish(
            request(spans, route="/g"), status=200, route=None, error=None, error_type=None
        )
        assert provider.force_flush(5000)
        (span,) = receiver.wait_for(lambda got: len(got) == 1)
        provider.shutdown()  # close the channel before the server goes
    assert span["name"] == "GET /g"
    assert span["resource"]["service.name"] == "grpc-svc"


def test_console_exporter_prints_spans(otel: Tracing, capsys: pytest.CaptureFixture[str]) -> None:
    """traces_exporter='console' writes each span as JSON to stdout."""
    config = observekit.Config(service_name="console-svc", traces_exporter="console")
    provider = otel.provider(config)
    spans = tracing.ServerSpans(config, provider)
    spans.finish(request(spans, route="/c"), status=200, route=None, error=None, error_type=None)
    assert provider.force_flush(5000)

    out = capsys.readouterr().out
    assert json.loads(out)["name"] == "GET /c"


def test_exporter_none_builds_no_processor(otel: Tracing) -> None:
    """traces_exporter='none' still makes spans (trace IDs, propagation) but exports nothing."""
    config = observekit.Config(service_name="quiet")
    provider = otel.provider(config)
    spans = tracing.ServerSpans(config, provider)
    handle = request(spans)

    assert spans.trace_id(handle) is not None
    spans.finish(handle, status=200, route=None, error=None, error_type=None)
    assert tracing.export_stats(provider) == tracing.ExportStats(0, 0, 0, 0)


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        pytest.param(None, "http://localhost:4318/v1/traces", id="default"),
        pytest.param("http://c:4318", "http://c:4318/v1/traces", id="base"),
        pytest.param("http://c:4318/", "http://c:4318/v1/traces", id="base-slash"),
        pytest.param("https://c/otlp/", "https://c/otlp/v1/traces", id="prefix"),
        pytest.param("http://c:4318/v1/traces", "http://c:4318/v1/traces", id="signal-url"),
    ],
)
def test_traces_url_follows_the_otlp_endpoint_rules(endpoint: str | None, url: str) -> None:
    """A base endpoint gets /v1/traces appended; a traces URL is kept."""
    assert tracing._traces_url(endpoint) == url


def test_endpoint_without_http_scheme_is_a_config_error() -> None:
    """An OTLP/HTTP endpoint that is not an http(s) URL is refused when configuring."""
    config = observekit.Config(traces_exporter="otlp", otlp_endpoint="collector:4318")
    with pytest.raises(observekit.ConfigError, match="otlp_endpoint"):
        tracing.configure(config, set_global=False)


@pytest.mark.parametrize("name", ["b3", "b3multi", "jaeger", "xray"])
def test_missing_propagator_package_is_a_clear_config_error(name: str) -> None:
    """A propagator whose package is not installed fails configure() naming what to install."""
    if list(entry_points(group="opentelemetry_propagator", name=name)):
        pytest.skip(f"{name} propagator is installed here")
    config = observekit.Config(propagators=("tracecontext", name))
    with pytest.raises(observekit.ConfigError, match="pip install opentelemetry-propagator"):
        tracing.configure(config, set_global=False)


@pytest.mark.parametrize(
    ("propagators", "names"),
    [
        pytest.param(
            ("tracecontext", "baggage"), ("baggage", "traceparent", "tracestate"), id="default"
        ),
        pytest.param(("tracecontext",), ("traceparent", "tracestate"), id="tracecontext"),
        pytest.param(("none",), (), id="none"),
    ],
)
def test_header_names_are_what_the_propagators_read(
    propagators: tuple[str, ...], names: tuple[str, ...]
) -> None:
    """header_names lists exactly the lowercase headers the configured propagators read."""
    config = observekit.Config(propagators=propagators)
    assert tracing.ServerSpans(config, TracerProvider(shutdown_on_exit=False)).header_names == names


# -- server spans ----------------------------------------------------------------------------


def test_incoming_traceparent_is_continued(otel: Tracing) -> None:
    """A valid traceparent makes the server span a child: same trace ID, parent = its span ID."""
    spans, exporter, provider = otel.memory()
    span = served(spans, exporter, provider, headers={"traceparent": TRACEPARENT})

    assert hex_ids(span)[0] == TRACE_ID
    assert span.parent is not None
    assert span.parent.is_remote
    assert format(span.parent.span_id, "016x") == PARENT_ID
    assert span.kind is SpanKind.SERVER


def test_without_traceparent_a_new_trace_starts(otel: Tracing) -> None:
    """No incoming headers: a root span with a fresh trace ID, whatever context is current."""
    spans, exporter, provider = otel.memory()
    leftover = trace.NonRecordingSpan(
        trace.SpanContext(int(TRACE_ID, 16), int(PARENT_ID, 16), is_remote=False)
    )
    token = spans.activate(tracing._Handle(leftover, tracing._ROOT, "GET", None))
    try:  # a span some earlier request left current on this thread
        span = served(spans, exporter, provider)
    finally:
        spans.deactivate(token)

    assert span.parent is None
    assert hex_ids(span)[0] != TRACE_ID


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("garbage", id="garbage"),
        pytest.param(f"00-{'0' * 32}-{PARENT_ID}-01", id="zero-trace-id"),
        pytest.param(f"00-{TRACE_ID}-{'0' * 16}-01", id="zero-span-id"),
        pytest.param(f"ff-{TRACE_ID}-{PARENT_ID}-01", id="version-ff"),
        pytest.param(f"00-{TRACE_ID.upper()}-{PARENT_ID}-01", id="uppercase"),
        pytest.param("", id="empty"),
    ],
)
def test_invalid_traceparent_is_ignored(otel: Tracing, value: str) -> None:
    """An invalid traceparent starts a new trace, without an error."""
    spans, exporter, provider = otel.memory()
    span = served(spans, exporter, provider, headers={"traceparent": value})

    assert span.parent is None
    assert hex_ids(span)[0] != TRACE_ID


def test_span_has_the_stable_http_server_attributes(otel: Tracing) -> None:
    """Name 'GET /items/{id}', SERVER kind, and the stable semconv attributes with their values."""
    spans, exporter, provider = otel.memory()
    span = served(spans, exporter, provider, route="/items/{id}", query="page=2")

    assert span.name == "GET /items/{id}"
    assert dict(span.attributes or {}) == {
        "http.request.method": "GET",
        "url.path": "/items/42",
        "url.scheme": "http",
        "url.query": "page=2",
        "http.route": "/items/{id}",
        "server.address": "shop.example",
        "server.port": 8080,
        "client.address": "10.0.0.7",
        "user_agent.original": "probe/1.0",
        "network.protocol.version": "1.1",
        "http.response.status_code": 200,
    }
    assert span.status.status_code is StatusCode.UNSET
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "observekit"


def test_route_learned_at_finish_names_the_span(otel: Tracing) -> None:
    """A route first known at finish renames the span and sets http.route."""
    spans, exporter, provider = otel.memory()
    span = served(spans, exporter, provider, route="/items/{id}", path="/items/7")

    assert span.name == "GET /items/{id}"
    assert (span.attributes or {})["http.route"] == "/items/{id}"


def test_without_route_the_span_is_named_by_method(otel: Tracing) -> None:
    """No route: the span is named just 'GET' (never the raw path) and has no http.route."""
    spans, exporter, provider = otel.memory()
    span = served(spans, exporter, provider)

    assert span.name == "GET"
    assert "http.route" not in (span.attributes or {})


@pytest.mark.parametrize(
    ("method", "attribute", "original", "name"),
    [
        pytest.param("PATCH", "PATCH", None, "PATCH /r", id="known"),
        pytest.param("get", "GET", "get", "GET /r", id="lowercase"),
        pytest.param("FOO", "_OTHER", "FOO", "HTTP /r", id="unknown"),
    ],
)
def test_request_method_follows_semconv(
    otel: Tracing, method: str, attribute: str, original: str | None, name: str
) -> None:
    """Unknown methods become _OTHER (span 'HTTP ...'), case variants are canonical, both keep the original."""
    spans, exporter, provider = otel.memory()
    span = served(spans, exporter, provider, method=method, route="/r")
    attributes = span.attributes or {}

    assert attributes["http.request.method"] == attribute
    assert attributes.get("http.request.method_original") == original
    assert span.name == name


def test_requests_that_share_method_and_server_keep_their_own_attributes(
    otel: Tracing,
) -> None:
    """The attributes a method and server give are worked out once per process and copied:
    each span still carries its own path, route and client, and the cache stays bounded
    when clients make up methods."""
    spans, exporter, provider = otel.memory()
    first = request(spans, path="/a", route="/a")
    second = request(spans, path="/b", method="GET")
    for handle in (first, second):
        spans.finish(handle, status=200, route=None, error=None, error_type=None)
    assert provider.force_flush(5000)
    a, b = (dict(span.attributes or {}) for span in exporter.get_finished_spans())
    assert (a["url.path"], a["http.route"]) == ("/a", "/a")
    assert b["url.path"] == "/b"
    assert "http.route" not in b
    assert a["server.address"] == b["server.address"] == "shop.example"
    exporter.clear()

    for i in range(300):
        spans.finish(
            request(spans, method=f"M{i}"), status=405, route=None, error=None, error_type=None
        )
    assert provider.force_flush(5000)
    made_up = exporter.get_finished_spans()
    assert len(made_up) == 300
    assert [(s.attributes or {})["http.request.method_original"] for s in made_up] == [
        f"M{i}" for i in range(300)
    ]
    assert len(spans._heads) <= 256


def test_signature_query_values_are_redacted(otel: Tracing) -> None:
    """url.query values of AWSAccessKeyId, Signature, sig, X-Goog-Signature become REDACTED."""
    spans, exporter, provider = otel.memory()
    query = "a=1&sig=s3cr3t&Signature=x&AWSAccessKeyId=k&X-Goog-Signature=g&design=ok"
    span = served(spans, exporter, provider, query=query)

    assert (span.attributes or {})["url.query"] == (
        "a=1&sig=REDACTED&Signature=REDACTED&AWSAccessKeyId=REDACTED"
        "&X-Goog-Signature=REDACTED&design=ok"
    )


@pytest.mark.parametrize("status", [500, 503])
def test_5xx_sets_error_status_and_error_type(otel: Tracing, status: int) -> None:
    """A 5xx response sets span status ERROR and error.type to the status code."""
    spans, exporter, provider = otel.memory()
    span = served(spans, exporter, provider, status=status)

    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == str(status)
    assert (span.attributes or {})["http.response.status_code"] == status


def test_4xx_leaves_status_unset(otel: Tracing) -> None:
    """A 4xx is the client's error: the server span's status stays UNSET, no error.type."""
    spans, exporter, provider = otel.memory()
    span = served(spans, exporter, provider, status=404)

    assert span.status.status_code is StatusCode.UNSET
    assert "error.type" not in (span.attributes or {})


class BoomError(RuntimeError):
    pass


def test_exception_is_recorded_with_error_status(otel: Tracing) -> None:
    """An exception: status ERROR with its message, an 'exception' event, error.type its class."""
    spans, exporter, provider = otel.memory()
    try:
        raise BoomError("kaput")
    except BoomError as exc:
        error = exc
    span = served(spans, exporter, provider, status=500, error=error)

    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "BoomError: kaput"
    assert (span.attributes or {})["error.type"] == f"{__name__}.BoomError"
    (event,) = span.events
    assert event.name == "exception"
    assert (event.attributes or {})["exception.type"] == f"{__name__}.BoomError"
    assert "kaput" in str((event.attributes or {})["exception.stacktrace"])


def test_given_error_type_wins(otel: Tracing) -> None:
    """error_type from the core (e.g. a timeout it detected) is written as it is, with ERROR."""
    spans, exporter, provider = otel.memory()
    span = served(spans, exporter, provider, status=None, error_type="timeout")

    assert (span.attributes or {})["error.type"] == "timeout"
    assert span.status.status_code is StatusCode.ERROR
    assert "http.response.status_code" not in (span.attributes or {})


def test_activate_makes_the_span_current_with_incoming_baggage(otel: Tracing) -> None:
    """Inside activate/deactivate the server span is current, with the incoming baggage."""
    spans, _, _ = otel.memory()
    handle = request(spans, headers={"traceparent": TRACEPARENT, "baggage": "tenant=acme"})
    assert tracing.current_ids() is None

    token = spans.activate(handle)
    try:
        current = trace.get_current_span()
        assert current is handle.span
        assert baggage.get_baggage("tenant") == "acme"
        assert tracing.current_ids() == (TRACE_ID, hex_ids(handle.span)[1])  # type: ignore[arg-type]
        assert spans.trace_id(handle) == TRACE_ID
    finally:
        spans.deactivate(token)
        spans.finish(handle, status=200, route=None, error=None, error_type=None)
    assert tracing.current_ids() is None
    assert spans.trace_id(handle) == TRACE_ID  # still known after the span ended


def test_deactivate_tolerates_a_token_from_another_context(
    otel: Tracing, caplog: pytest.LogCaptureFixture
) -> None:
    """A token made in another context (or used twice) is ignored: no exception, no log line."""
    spans, _, _ = otel.memory()
    handle = request(spans)
    other = contextvars.copy_context()
    token = other.run(spans.activate, handle)

    with caplog.at_level(logging.DEBUG):
        spans.deactivate(token)  # not ours
        own = spans.activate(handle)
        spans.deactivate(own)
        spans.deactivate(own)  # twice
        spans.deactivate(None)
    spans.finish(handle, status=200, route=None, error=None, error_type=None)

    assert caplog.records == []
    assert tracing.current_ids() is None


class ExplodingHeaders(dict[str, str]):
    def __contains__(self, key: object) -> bool:
        raise RuntimeError("headers exploded")


def test_no_method_raises_into_the_request(otel: Tracing, caplog: pytest.LogCaptureFixture) -> None:
    """A failure inside ServerSpans is logged (once) and the request goes on without a span."""
    spans, exporter, provider = otel.memory()
    with caplog.at_level(logging.ERROR, logger="observekit.tracing"):
        handles = [request(spans, headers=ExplodingHeaders(x="1")) for _ in range(3)]
        assert handles == [None, None, None]
        token = spans.activate(None)
        spans.deactivate(token)
        spans.finish(None, status=200, route=None, error=None, error_type=None)
        assert spans.trace_id(None) is None

    assert len(caplog.records) == 1  # rate-limited: one report for three failures
    assert "ServerSpans.start" in caplog.records[0].getMessage()
    assert provider.force_flush(5000)
    assert exporter.get_finished_spans() == ()


def test_unsampled_span_has_no_trace_id_and_exports_nothing(otel: Tracing) -> None:
    """With always_off, trace_id() and current_ids() are None and nothing is exported."""
    spans, exporter, provider = otel.memory(traces_sampler="always_off")
    handle = request(spans)
    token = spans.activate(handle)
    try:
        assert tracing.current_ids() is None
        assert spans.trace_id(handle) is None
    finally:
        spans.deactivate(token)
        spans.finish(handle, status=200, route=None, error=None, error_type=None)
    assert provider.force_flush(5000)
    assert exporter.get_finished_spans() == ()


# -- current_ids and task spans ---------------------------------------------------------


def test_current_ids_follow_any_current_span(otel: Tracing) -> None:
    """current_ids() gives the hex IDs of whichever span is current, also outside requests."""
    _, _, provider = otel.memory()
    tracer = provider.get_tracer("app")

    assert tracing.current_ids() is None
    with tracer.start_as_current_span("outer") as outer:
        outer_ids = tracing.current_ids()
        with tracer.start_as_current_span("inner") as inner:
            inner_ids = tracing.current_ids()
        assert tracing.current_ids() == outer_ids
    assert outer_ids == hex_ids(outer)  # type: ignore[arg-type]
    assert inner_ids == hex_ids(inner)  # type: ignore[arg-type]
    assert inner_ids[0] == outer_ids[0]
    assert inner_ids[1] != outer_ids[1]
    assert tracing.current_ids() is None


@pytest.fixture
def global_tracer_provider() -> Iterator[InMemorySpanExporter]:
    """A global provider for task_span (which uses the global one), removed afterwards."""
    from opentelemetry.util._once import Once

    exporter = InMemorySpanExporter()
    provider = tracing.configure(
        observekit.Config(service_name="tasks"), exporter=exporter, set_global=False
    )
    saved = (trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE)
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE = saved
        provider.shutdown()


def test_task_span_is_current_and_a_child(
    global_tracer_provider: InMemorySpanExporter, otel: Tracing
) -> None:
    """task_span(name) is an INTERNAL span named after the task, current inside, under the request."""
    config = observekit.Config(service_name="tasks")
    spans = tracing.ServerSpans(config)
    handle = request(spans)
    token = spans.activate(handle)
    try:
        with tracing.task_span("send-invoice") as span:
            inside = tracing.current_ids()
    finally:
        spans.deactivate(token)
        spans.finish(handle, status=200, route=None, error=None, error_type=None)
    trace.get_tracer_provider().force_flush(5000)  # type: ignore[attr-defined]

    task, server = global_tracer_provider.get_finished_spans()
    assert task.name == "send-invoice"
    assert task.kind is SpanKind.INTERNAL
    assert inside == hex_ids(task)
    assert span is not None
    assert task.parent is not None
    assert task.parent.span_id == server.context.span_id


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_task_span_records_the_exception_and_lets_it_through(
    global_tracer_provider: InMemorySpanExporter, mode: str
) -> None:
    """A task that raises: the exception propagates unchanged, the span has it and ERROR."""
    import asyncio

    async def work() -> None:
        with tracing.task_span("flaky"):
            await asyncio.sleep(0)
            raise BoomError("nope")

    def sync_work() -> None:
        with tracing.task_span("flaky"):
            raise BoomError("nope")

    with pytest.raises(BoomError, match="nope"):
        sync_work() if mode == "sync" else asyncio.run(work())
    trace.get_tracer_provider().force_flush(5000)  # type: ignore[attr-defined]

    (task,) = global_tracer_provider.get_finished_spans()
    assert task.status.status_code is StatusCode.ERROR
    assert (task.attributes or {})["error.type"] == f"{__name__}.BoomError"
    assert [e.name for e in task.events] == ["exception"]
    assert tracing.current_ids() is None


# -- drops, failures and bounded shutdown ------------------------------------------------


def test_sdk_queue_internals_this_relies_on_are_there(otel: Tracing) -> None:
    """The SDK's batch queue (a bounded deque) is reachable: drops can be seen and counted."""
    provider = otel.provider(observekit.Config(service_name="pin"), InMemorySpanExporter())
    processor = tracing._processor_of[provider]

    assert processor._queue is not None
    assert processor._queue.maxlen == 2048


def test_full_queue_drops_are_counted_and_warned_once_a_minute(
    otel: Tracing, caplog: pytest.LogCaptureFixture
) -> None:
    """Collector wedged, tiny queue: drops are counted, one WARNING with the count, not one per drop."""
    with HangingReceiver() as hanging:
        config = observekit.Config(
            service_name="drops",
            traces_exporter="otlp",
            otlp_endpoint=hanging.endpoint,
            shutdown_timeout=1.0,
        )
        provider = otel.provider(
            config, max_queue_size=4, max_export_batch_size=2, schedule_delay=0.01
        )
        spans = tracing.ServerSpans(config, provider)
        with caplog.at_level(logging.WARNING):
            for _ in range(200):
                spans.finish(request(spans), status=200, route=None, error=None, error_type=None)
            stats = tracing.export_stats(provider)

            assert stats.dropped >= 190
            mine = [r for r in caplog.records if r.name == "observekit.tracing"]
            assert len(mine) == 1, [r.getMessage() for r in mine]
            assert "dropped 1 spans since the last warning" in mine[0].getMessage()
            assert not [r for r in caplog.records if "Queue full" in r.getMessage()]

            started = time.monotonic()
            provider.shutdown()
            assert time.monotonic() - started < 1.0 + 1.0
        settle(provider)
        final = [r.getMessage() for r in caplog.records if r.name == "observekit.tracing"]
        assert any(f"({stats.dropped} in all)" in m for m in final[1:]), final


def test_one_export_attempt_ends_within_the_exporter_timeout() -> None:
    """The OTLP exporter's retries against a closed port stop within its timeout (no 64 s back-off)."""
    config = observekit.Config(
        traces_exporter="otlp",
        otlp_endpoint=f"http://127.0.0.1:{closed_port()}",
        shutdown_timeout=3.0,
    )
    exporter = tracing._build_exporter(config)
    span = TracerProvider(shutdown_on_exit=False).get_tracer("t").start_span("x")
    span.end()
    started = time.monotonic()
    try:
        result = exporter.export([span])  # type: ignore[list-item]
    finally:
        exporter.shutdown()

    assert result.name == "FAILURE"
    assert time.monotonic() - started < 3.0 + 0.5
    assert exporter.failed == 1


def test_failed_export_keeps_no_span_alive() -> None:
    """After a failed OTLP export returns, its batch is freed at once, not at the next full GC."""
    import gc
    import weakref

    config = observekit.Config(
        traces_exporter="otlp",
        otlp_endpoint=f"http://127.0.0.1:{closed_port()}",
        shutdown_timeout=1.0,
    )
    exporter = tracing._build_exporter(config)
    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("t")
    batch = []
    for _ in range(20):
        span = tracer.start_span("x")
        span.end()
        batch.append(span._readable_span())  # type: ignore[attr-defined]
    alive = [weakref.ref(span) for span in batch]
    del span
    gc.disable()
    try:
        assert exporter.export(batch).name == "FAILURE"
        del batch  # as the SDK's batch processor lets go of its list
        assert [ref for ref in alive if ref() is not None] == []
    finally:
        gc.enable()
        exporter.shutdown()


def test_someone_elses_exporter_gets_the_batch_untouched(otel: Tracing) -> None:
    """An exporter passed to configure() receives the SDK's batch as it is (it may keep it)."""
    kept: list[Any] = []

    class Keeper(SpanExporter):
        def export(self, spans: Any) -> Any:
            kept.append(spans)
            return SpanExportResult.SUCCESS

    config = observekit.Config(service_name="keeper")
    provider = otel.provider(config, Keeper())
    spans = tracing.ServerSpans(config, provider)
    for _ in range(3):
        spans.finish(request(spans), status=200, route=None, error=None, error_type=None)
    assert provider.force_flush(5000)

    assert sum(len(batch) for batch in kept) == 3


@pytest.mark.parametrize("collector", ["closed-port", "hanging"])
def test_shutdown_is_bounded_when_the_collector_is_unreachable(
    otel: Tracing, collector: str
) -> None:
    """shutdown() returns within shutdown_timeout (+1 s), refused or wedged collector alike."""
    with HangingReceiver() as hanging:
        endpoint = (
            hanging.endpoint if collector == "hanging" else f"http://127.0.0.1:{closed_port()}"
        )
        config = observekit.Config(
            service_name="bounded",
            traces_exporter="otlp",
            otlp_endpoint=endpoint,
            shutdown_timeout=1.5,
        )
        provider = otel.provider(config)
        spans = tracing.ServerSpans(config, provider)
        for _ in range(50):
            spans.finish(request(spans), status=200, route=None, error=None, error_type=None)

        started = time.monotonic()
        flushed = tracing.shutdown()
        elapsed = time.monotonic() - started
    settle(provider)
    assert elapsed < 1.5 + 1.0
    assert not flushed or collector == "closed-port"
    assert tracing.export_stats(provider).exported == 0


def test_default_shutdown_is_bounded_by_five_seconds(otel: Tracing) -> None:
    """With the default shutdown_timeout (5 s) a wedged collector holds shutdown at most ~5 s."""
    with HangingReceiver() as hanging:
        config = observekit.Config(
            service_name="bounded", traces_exporter="otlp", otlp_endpoint=hanging.endpoint
        )
        assert config.shutdown_timeout == 5.0
        provider = otel.provider(config, schedule_delay=0.01)
        spans = tracing.ServerSpans(config, provider)
        for _ in range(10):
            spans.finish(request(spans), status=200, route=None, error=None, error_type=None)
        deadline = time.monotonic() + 5.0
        while hanging.accepted == 0 and time.monotonic() < deadline:  # an export is in flight
            time.sleep(0.01)

        started = time.monotonic()
        provider.shutdown()
        elapsed = time.monotonic() - started
    settle(provider)
    assert hanging.accepted >= 1
    assert 4.0 < elapsed < 5.0 + 1.0


def test_ashutdown_flushes_from_an_event_loop(otel: Tracing) -> None:
    """ashutdown() (for ASGI lifespan) flushes queued spans without blocking the loop."""
    import asyncio

    with OTLPReceiver() as receiver:
        config = observekit.Config(
            service_name="lifespan", traces_exporter="otlp", otlp_endpoint=receiver.endpoint
        )
        provider = otel.provider(config, schedule_delay=60.0)
        spans = tracing.ServerSpans(config, provider)
        for _ in range(5):
            spans.finish(request(spans), status=200, route=None, error=None, error_type=None)

        async def main() -> tuple[bool, int]:
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0)

            ticker = asyncio.ensure_future(tick())
            try:
                return await tracing.ashutdown(), ticks
            finally:
                ticker.cancel()

        flushed, ticks = asyncio.run(main())
        receiver.wait_for(lambda got: len(got) == 5, timeout=2.0)
    assert flushed is True
    assert ticks > 0


def test_shutdown_with_a_live_collector_delivers_everything(otel: Tracing) -> None:
    """shutdown() with a reachable collector exports every queued span and reports success."""
    with OTLPReceiver() as receiver:
        config = observekit.Config(
            service_name="flush", traces_exporter="otlp", otlp_endpoint=receiver.endpoint
        )
        provider = otel.provider(config, schedule_delay=60.0)
        spans = tracing.ServerSpans(config, provider)
        for _ in range(300):
            spans.finish(request(spans), status=200, route=None, error=None, error_type=None)
        processor = tracing._processor_of[provider]

        assert processor.shutdown() is True
        receiver.wait_for(lambda got: len(got) == 300, timeout=2.0)
    assert tracing.export_stats(provider).exported == 300


# -- the global set-up, in a fresh interpreter -----------------------------------------------

GLOBAL_SCRIPT = """
import io, json, logging, sys
import observekit, observekit.logging
from opentelemetry import propagate, trace
from observekit import tracing

stream = io.StringIO()
config = observekit.Config(service_name="global-svc", traces_exporter="otlp",
                           otlp_endpoint=sys.argv[1], shutdown_timeout=3.0)
observekit.logging.configure(config, stream=stream)
assert not tracing.is_configured()
first = tracing.configure(config)
assert tracing.configure(config) is first, "same config: same provider"
assert trace.get_tracer_provider() is first and tracing.is_configured()
assert sorted(propagate.get_global_textmap().fields) == ["baggage", "traceparent", "tracestate"]

spans = tracing.ServerSpans(config)
handle = spans.start("GET", "/g", "http", {}, client=None, server_address=None, server_port=None,
                     user_agent=None, protocol_version=None, query=None, route="/g")
token = spans.activate(handle)
logging.getLogger("app").warning("inside")
spans.deactivate(token)
spans.finish(handle, status=200, route=None, error=None, error_type=None)
logging.getLogger("app").warning("outside")

other = tracing.configure(observekit.Config(service_name="second"))
assert other is not first and trace.get_tracer_provider() is first
tasks = sys.modules.get("observekit._tasks")
print(json.dumps({
    "lines": [json.loads(line) for line in stream.getvalue().splitlines()],
    "trace_id": spans.trace_id(handle),
    "task_hook": None if tasks is None else getattr(tasks, "_span_hook", None) is tracing.task_span,
}))
# no shutdown(): the exit handler must flush the span
"""


def test_global_configure_is_idempotent_logs_ids_and_flushes_at_exit() -> None:
    """Global set-up: idempotent, log lines carry trace_id/span_id, the exit handler flushes."""
    with OTLPReceiver() as receiver:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OBSERVEKIT_"))}
        env["PYTHONPATH"] = str(ROOT)
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(GLOBAL_SCRIPT), receiver.endpoint],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr
        (span,) = receiver.wait_for(lambda got: len(got) == 1, timeout=5.0)
    result = json.loads(done.stdout)
    inside, outside, warning = result["lines"]
    assert inside["message"] == "inside"
    assert inside["trace_id"] == result["trace_id"] == span["trace_id"]
    assert inside["span_id"] == span["span_id"]
    assert "trace_id" not in outside
    assert warning["logger"] == "observekit.tracing"
    assert "already set" in warning["message"]
    assert "Overriding of current TracerProvider" not in done.stderr
    assert result["task_hook"] is True  # observekit.track_task now records spans
    assert span["resource"]["service.name"] == "global-svc"


def test_import_observekit_does_not_import_opentelemetry() -> None:
    """observekit.tracing is opt-in: `import observekit` leaves opentelemetry unimported."""
    code = "import sys, observekit; print(any(m.startswith('opentelemetry') for m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert out.strip() == "False"
