"""Server spans made without the SDK's Span machinery, on a provider configure() built.

They must behave as SDK spans do for everything an application can do with the
current span, and give way to the SDK's spans as soon as the provider holds a
processor observekit does not know.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, Span, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Status, StatusCode

import observekit
import observekit.tracing
from observekit import Config
from observekit.tracing import _LightSpan
from observekit.wsgi import ObservabilityMiddleware

from .util import call

ODD = object()
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


@pytest.fixture
def keep() -> Iterator[tuple[Keep, Any, Config]]:
    exporter = Keep()
    config = Config(service_name="light", traces_exporter="otlp")
    provider = observekit.tracing.configure(
        config, exporter=exporter, set_global=False, schedule_delay=0.05
    )
    yield exporter, provider, config
    provider.shutdown()
    observekit.logging.use_trace_ids(None)


def serve(provider: Any, config: Config, app: Any, **kwargs: Any) -> Any:
    middleware = ObservabilityMiddleware(app, config=config, tracer_provider=provider)
    result = call(middleware, "/work", **kwargs)
    provider.force_flush()
    return result


def test_application_code_enriches_the_current_server_span(
    keep: tuple[Keep, Any, Config],
) -> None:
    """set_attribute(s), events, exceptions, status, links and an SDK child span all reach
    the exported server span, which is a light one."""
    exporter, provider, config = keep
    seen: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        span = trace.get_current_span()
        seen.append(span)
        span.set_attribute("user.id", 42)
        span.set_attributes({"tenant": "acme", "flags": ["a", "b"]})
        span.set_attribute("obj", ODD)  # the SDK's cleaning applies
        span.add_event("cache.miss", {"key": "k1"})
        span.add_link(trace.SpanContext(0xABC, 0xDEF, is_remote=True))
        span.record_exception(KeyError("k1"))
        span.set_status(Status(StatusCode.ERROR, "degraded"))
        with provider.get_tracer("app").start_as_current_span("SELECT") as child:
            child.set_attribute("db.system", "sqlite")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    result = serve(provider, config, app, headers={"traceparent": TRACEPARENT})
    assert result.status == "200 OK"
    assert type(seen[0]) is _LightSpan
    server = next(s for s in exporter.spans if s.kind is trace.SpanKind.SERVER)
    child = next(s for s in exporter.spans if s.name == "SELECT")
    assert child.parent is not None
    assert child.parent.span_id == server.context.span_id
    assert child.context.trace_id == server.context.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    assert server.parent is not None
    assert server.parent.is_remote
    attrs = dict(server.attributes)
    assert attrs["user.id"] == 42
    assert attrs["tenant"] == "acme"
    assert attrs["flags"] == ("a", "b")
    reference = TracerProvider().get_tracer("ref").start_span("ref")
    reference.set_attribute("obj", ODD)
    assert attrs["obj"] == reference.attributes["obj"]
    assert attrs["http.response.status_code"] == 200
    assert attrs["http.request.method"] == "GET"
    assert [e.name for e in server.events] == ["cache.miss", "exception"]
    assert server.events[1].attributes["exception.type"] == "KeyError"
    assert [link.context.span_id for link in server.links] == [0xDEF]
    assert server.status.status_code is StatusCode.ERROR
    assert server.status.description == "degraded"
    assert server.resource.attributes["service.name"] == "light"
    assert server.instrumentation_scope is not None
    assert server.instrumentation_scope.name == "observekit"


def test_attribute_limits_apply_to_what_the_application_sets(
    keep: tuple[Keep, Any, Config],
) -> None:
    """Past the SDK's 128-attribute limit, values are dropped and counted, as on SDK spans."""
    exporter, provider, config = keep

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        span = trace.get_current_span()
        for i in range(200):
            span.set_attribute(f"a{i}", i)
        start_response("200 OK", [])
        return [b""]

    serve(provider, config, app)
    (server,) = exporter.spans
    assert len(server.attributes) == 128
    # observekit's own attributes came first; the status code set at the end is dropped too
    assert server.dropped_attributes == 200 + 1 - (128 - 6)


def test_an_ended_span_takes_no_changes_and_is_exported_once(
    keep: tuple[Keep, Any, Config],
) -> None:
    """After the request, the span held by the app ignores writes; a second end() is a no-op."""
    exporter, provider, config = keep
    held: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        held.append(trace.get_current_span())
        start_response("204 No Content", [])
        return []

    serve(provider, config, app)
    span = held[0]
    assert not span.is_recording()
    span.set_attribute("late", 1)
    span.add_event("late")
    span.end()
    provider.force_flush()
    (server,) = exporter.spans
    assert "late" not in server.attributes
    assert not server.events


def test_an_unknown_processor_gets_sdk_spans(keep: tuple[Keep, Any, Config]) -> None:
    """A processor added to the provider after configure() sees every span, from on_start,
    because spans are then made by the SDK."""
    exporter, provider, config = keep
    started: list[Any] = []
    extra = Keep()

    class Watching(SimpleSpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            started.append(span)

    provider.add_span_processor(Watching(extra))

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b""]

    serve(provider, config, app)
    assert len(started) == 1
    assert isinstance(started[0], Span)
    assert [s.name for s in extra.spans] == ["GET"]
    assert [s.name for s in exporter.spans] == ["GET"]


@pytest.mark.parametrize(
    ("sampler", "traceparent", "exported"),
    [
        pytest.param("always_off", None, False, id="always_off"),
        pytest.param(
            "parentbased_always_on", TRACEPARENT[:-2] + "00", False, id="parent-unsampled"
        ),
        pytest.param("parentbased_always_off", TRACEPARENT, True, id="parent-sampled"),
        pytest.param("traceidratio", None, False, id="ratio-0"),
    ],
)
def test_the_configured_sampler_decides(
    sampler: str, traceparent: str | None, exported: bool
) -> None:
    """The provider's sampler is asked for every light span; unsampled ones are not exported
    and their request ID is not a trace ID."""
    exporter = Keep()
    config = Config(
        service_name="s",
        traces_exporter="otlp",
        traces_sampler=sampler,
        traces_sampler_arg=0.0 if sampler == "traceidratio" else None,
    )
    provider = observekit.tracing.configure(
        config, exporter=exporter, set_global=False, schedule_delay=0.05
    )
    try:
        headers = {"traceparent": traceparent} if traceparent else {}

        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            start_response("200 OK", [])
            return [b""]

        result = serve(provider, config, app, headers=headers)
        assert bool(exporter.spans) is exported
        (rid,) = result.header_values("X-Request-ID")
        if not exported:
            assert rid != "4bf92f3577b34da6a3ce929d0e0e4736"
    finally:
        provider.shutdown()


def test_the_stock_runtime_context_is_set_and_read_directly() -> None:
    """observekit sets and reads OpenTelemetry's context through its ContextVar, not
    two Python calls each way: the shortcut must be in use (it switches itself off
    when the SDK's runtime context changes) and agree with the public API."""
    from opentelemetry import context as otel_context
    from opentelemetry.trace.propagation import _SPAN_KEY

    assert observekit.tracing._context_var is not None, "the runtime-context shortcut is off"
    span = trace.NonRecordingSpan(
        trace.SpanContext(0x1234, 0x5678, is_remote=False, trace_flags=trace.TraceFlags(1))
    )
    assert observekit.tracing._get_current_span() is trace.get_current_span()
    token = observekit.tracing._attach(trace.set_span_in_context(span))
    try:
        assert trace.get_current_span() is span
        assert observekit.tracing._get_current_span() is span
        odd = otel_context.set_value(_SPAN_KEY, "not a span")
        assert observekit.tracing._get_current_span(odd) is trace.INVALID_SPAN
        assert observekit.tracing.current_ids() == ("0" * 28 + "1234", "0" * 12 + "5678")
    finally:
        otel_context.detach(token)
    assert trace.get_current_span() is trace.INVALID_SPAN


def start_get(spans: observekit.tracing.ServerSpans, headers: dict[str, str] | None = None) -> Any:
    """A server span for ``GET /`` with nothing but ``headers`` known."""
    return spans.start(
        "GET",
        "/",
        "http",
        headers or {},
        client=None,
        server_address=None,
        server_port=None,
        user_agent=None,
        protocol_version=None,
        query=None,
        route=None,
    )


def test_default_id_generator_is_called_directly(keep: tuple[Keep, Any, Config]) -> None:
    """With the SDK's RandomIdGenerator, IDs come straight from getrandbits: each span
    gets its own non-zero span ID and a new trace its own trace ID."""
    exporter, provider, config = keep
    spans = observekit.tracing.ServerSpans(config, provider)
    assert spans._light is not None
    assert spans._light.random_ids
    for _ in range(50):
        handle = start_get(spans)
        spans.finish(handle, status=200, route=None, error=None, error_type=None)
    provider.force_flush()
    contexts = [span.context for span in exporter.spans]
    assert len(contexts) == 50
    assert len({c.span_id for c in contexts}) == 50
    assert all(c.span_id for c in contexts)
    assert len({c.trace_id for c in contexts}) == 50
    assert all(c.trace_id for c in contexts)


def _sdk_copy(span: Any) -> ReadableSpan:
    """What end() used to hand the processor: an SDK ReadableSpan of the same data."""
    return ReadableSpan(
        name=span._name,
        context=span._context,
        parent=span._parent,
        resource=span._resource,
        attributes=span._attributes,
        events=span._events or (),
        links=span._links or (),
        kind=span._kind,
        status=span._status,
        start_time=span._start_time,
        end_time=span._end_time,
        instrumentation_scope=span._instrumentation_scope,
    )


_READ = (
    "name",
    "context",
    "kind",
    "parent",
    "start_time",
    "end_time",
    "status",
    "attributes",
    "events",
    "links",
    "resource",
    "instrumentation_scope",
    "dropped_attributes",
    "dropped_events",
    "dropped_links",
)


@pytest.mark.parametrize("traceparent", [None, TRACEPARENT], ids=["root", "child"])
def test_span_contexts_are_built_as_the_api_builds_them(
    keep: tuple[Keep, Any, Config], traceparent: str | None
) -> None:
    """A light span's SpanContext is made without SpanContext.__new__'s call, on the
    layout the encoder's probe checked; it is equal, field by field, to the API's own."""
    from observekit import _otlp

    assert _otlp._tuple_context, "the API's SpanContext layout changed: contexts are built slowly"
    _exporter, provider, config = keep
    headers = {} if traceparent is None else {"traceparent": traceparent}
    spans = observekit.tracing.ServerSpans(config, provider)
    handle = start_get(spans, headers)
    assert handle is not None
    made = handle.span.get_span_context()
    expected = trace.SpanContext(
        made.trace_id, made.span_id, False, trace.TraceFlags(1), made.trace_state
    )
    assert type(made) is trace.SpanContext
    assert made == expected
    for name in ("trace_id", "span_id", "is_remote", "trace_flags", "trace_state", "is_valid"):
        assert getattr(made, name) == getattr(expected, name), name
    assert made.is_valid
    assert made.trace_flags.sampled
    assert not made.is_remote
    if traceparent is not None:
        assert made.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    spans.finish(handle, status=200, route=None, error=None, error_type=None)


@pytest.mark.parametrize(
    "enriched", [pytest.param(False, id="plain"), pytest.param(True, id="enriched")]
)
def test_the_processor_receives_the_span_itself(
    keep: tuple[Keep, Any, Config], enriched: bool
) -> None:
    """No copy per request: the exporter gets the very span the app saw, and everything
    it reads (properties, to_json) equals what an SDK ReadableSpan of it would give."""
    exporter, provider, config = keep
    held: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        span = trace.get_current_span()
        held.append(span)
        if enriched:
            for i in range(130):
                span.set_attribute(f"a{i}", i)
            for i in range(130):
                span.add_event(f"e{i}", {"i": i}, timestamp=1_700_000_000_000_000_000 + i)
            span.add_link(trace.SpanContext(0xABC, 0xDEF, is_remote=True), {"l": 1})
            span.set_status(Status(StatusCode.ERROR, "degraded"))
        start_response("404 Not Found", [])
        return [b""]

    serve(provider, config, app, headers={"traceparent": TRACEPARENT})
    (exported,) = exporter.spans
    assert exported is held[0]
    assert type(exported) is _LightSpan
    assert isinstance(exported, ReadableSpan)
    copy = _sdk_copy(exported)
    for name in _READ:
        assert getattr(exported, name) == getattr(copy, name), name
    assert exported.get_span_context() == copy.get_span_context()
    assert exported.to_json() == copy.to_json()
    assert exported.to_json(indent=None) == copy.to_json(indent=None)
    assert dict(exported.attributes)["http.response.status_code"] == 404
    assert bool(exported.dropped_attributes) is enriched
    assert bool(exported.dropped_events) is enriched
    assert len(exported.links) == int(enriched)


def test_an_ended_span_refuses_every_change(keep: tuple[Keep, Any, Config]) -> None:
    """The processor holds the live span: once ended, nothing may change it, including
    observekit's own _set_clean and a status (which the exporter thread may be reading)."""
    exporter, provider, config = keep
    held: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        held.append(trace.get_current_span())
        start_response("200 OK", [])
        return [b""]

    serve(provider, config, app)
    (span,) = exporter.spans
    before = span.to_json()
    span.set_status(Status(StatusCode.ERROR, "late"))
    span.set_status(StatusCode.ERROR, "late")
    span._set_clean("http.response.status_code", 500)
    span._set_clean("late", "x")
    span.set_attribute("late", 1)
    span.set_attributes({"late": 2})
    span.add_event("late")
    span.add_link(trace.SpanContext(0x1, 0x2, is_remote=False))
    span.record_exception(ValueError("late"))
    span.update_name("late")
    span.end(end_time=1)
    assert span.to_json() == before
    assert span.status.status_code is StatusCode.UNSET
    assert span.attributes["http.response.status_code"] == 200
    provider.force_flush()
    assert exporter.spans == [span]


def test_status_rules_are_the_sdks() -> None:
    """Before the end: UNSET is ignored, ERROR replaces UNSET, OK is final; a status code
    with a description becomes a Status."""
    from observekit.tracing import _LightSink

    provider = observekit.tracing.configure(
        Config(service_name="status", traces_exporter="none"), set_global=False
    )
    span: Any = _LightSink(provider, None).start("s", None, {})
    span.set_status(StatusCode.UNSET)
    assert span.status.status_code is StatusCode.UNSET
    span.set_status(StatusCode.ERROR, "first")
    assert (span.status.status_code, span.status.description) == (StatusCode.ERROR, "first")
    span.set_status(Status(StatusCode.UNSET))
    assert span.status.description == "first"
    span.set_status(Status(StatusCode.OK))
    span.set_status(Status(StatusCode.ERROR, "after ok"))
    assert span.status.status_code is StatusCode.OK
    span.end()


def test_light_spans_are_queued_without_on_end(keep: tuple[Keep, Any, Config]) -> None:
    """A light span goes straight onto the SDK batch processor's queue (its emit inlined):
    on the installed SDK that path must be on, and on_end is not called."""
    exporter, provider, config = keep
    processor = observekit.tracing._processor_of[provider]
    assert processor._batch is not None, "the SDK's BatchProcessor.emit changed: inlining is off"
    calls: list[Any] = []
    processor.on_end = calls.append  # type: ignore[method-assign]

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b""]

    serve(provider, config, app)
    assert calls == []
    assert len(exporter.spans) == 1


def test_a_changed_emit_turns_the_inlined_queueing_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the SDK's emit does anything else, light spans go through on_end and emit."""
    from opentelemetry.sdk._shared_internal import BatchProcessor

    real = BatchProcessor.emit
    seen: list[Any] = []

    def emit(self: Any, data: Any) -> None:
        seen.append(data)
        real(self, data)

    monkeypatch.setattr(BatchProcessor, "emit", emit)
    exporter = Keep()
    config = Config(service_name="changed", traces_exporter="otlp")
    provider = observekit.tracing.configure(
        config, exporter=exporter, set_global=False, schedule_delay=0.05
    )
    try:
        processor = observekit.tracing._processor_of[provider]
        assert processor._batch is None

        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            start_response("200 OK", [])
            return [b""]

        serve(provider, config, app)
        assert len(seen) == 1
        assert exporter.spans == seen
    finally:
        provider.shutdown()


def test_after_a_fork_the_sdks_emit_restarts_the_export_thread(
    keep: tuple[Keep, Any, Config],
) -> None:
    """The inlined queueing keeps emit's fork check: in a process whose pid is not the
    one the batch processor started in (a forked child, uWSGI / gunicorn --preload), the
    span goes through emit, which re-initialises the processor (a new export thread)."""
    exporter, provider, config = keep
    batch = observekit.tracing._processor_of[provider]._batch
    assert batch is not None
    reinit: list[int] = []
    real_reinit = batch._at_fork_reinit

    def at_fork_reinit() -> None:
        reinit.append(1)
        real_reinit()

    batch._at_fork_reinit = at_fork_reinit
    batch._pid = -1  # as in a child forked after the processor was built

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b""]

    serve(provider, config, app)
    assert reinit == [1]
    assert batch._pid == os.getpid()
    assert [s.name for s in exporter.spans] == ["GET"]
