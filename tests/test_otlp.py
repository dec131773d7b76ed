"""observekit's OTLP span encoder, against the SDK's: the same message, field by field.

Both encodings are parsed back with opentelemetry-proto's generated classes and
compared as messages, so field order on the wire does not matter but every value,
default and nesting does.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import observekit
import observekit.tracing
from observekit import _otlp

from .otlp_receiver import OTLPReceiver


class Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


@pytest.fixture
def sdk() -> Iterator[tuple[TracerProvider, Keep]]:
    keep = Keep()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "enc", "service.version": "1.0", "n": 3})
    )
    provider.add_span_processor(SimpleSpanProcessor(keep))
    yield provider, keep
    provider.shutdown()


def decode(data: bytes) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest.FromString(data)


def assert_same(spans: Sequence[ReadableSpan]) -> None:
    ours = decode(_otlp.encode_spans(spans))
    theirs = decode(sdk_encode(spans).SerializeToString())
    assert ours == theirs, f"\nours:   {ours}\ntheirs: {theirs}"


def test_every_span_field_matches_the_sdk(sdk: tuple[TracerProvider, Keep]) -> None:
    """Kinds, remote parents with tracestate, links, events, status, every attribute type:
    the decoded request equals the SDK's."""
    provider, keep = sdk
    tracer = provider.get_tracer("scope-a", "2.0", schema_url="https://example.com/schema")
    other = provider.get_tracer("scope-b")
    carrier = {
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "tracestate": "vendor=abc,other=x y",
    }
    remote = TraceContextTextMapPropagator().extract(carrier)
    attributes: dict[str, Any] = {
        "s": "text",
        "empty": "",
        "unicode": "ünïcødé ✓ 𝄞",
        "t": True,
        "f": False,
        "zero": 0,
        "neg": -42,
        "big": 2**63 - 1,
        "small": -(2**63),
        "pi": 3.14159,
        "fzero": 0.0,
        "inf": math.inf,
        "strs": ["a", "b", ""],
        "ints": [1, -2, 3],
        "floats": [1.5, -0.0],
        "bools": [True, False],
        "emptylist": [],
    }
    for kind in SpanKind:
        with tracer.start_as_current_span(f"span {kind.name}", remote, kind, attributes) as span:
            span.add_event("evt", {"k": "v", "n": 1}, timestamp=1_700_000_000_000_000_000)
            span.add_event("bare")
            span.add_link(
                trace.SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(1)),
                {"link.attr": 7},
            )
            span.set_status(Status(StatusCode.ERROR, "went wrong"))
    with other.start_as_current_span("ok") as span:
        span.set_status(Status(StatusCode.OK))
        with other.start_as_current_span("child", attributes={"x": 1}):
            pass
    try:
        with tracer.start_as_current_span("raises"):
            raise ValueError("boom")
    except ValueError:
        pass
    assert len(keep.spans) == len(SpanKind) + 3
    assert_same(keep.spans)


def test_limits_and_dropped_counts_match_the_sdk(sdk: tuple[TracerProvider, Keep]) -> None:
    """Spans over the attribute, event and link limits carry the same dropped counts."""
    provider, keep = sdk
    tracer = provider.get_tracer("limits")
    with tracer.start_as_current_span("big") as span:
        for i in range(140):
            span.set_attribute(f"a{i}", i)
        for i in range(130):
            span.add_event(f"e{i}")
        for i in range(130):
            span.add_link(trace.SpanContext(i + 1, i + 1, is_remote=False))
    (big,) = keep.spans
    assert big.dropped_attributes
    assert big.dropped_events
    assert big.dropped_links
    assert_same(keep.spans)


def test_spans_of_several_resources_group_like_the_sdk() -> None:
    """Two providers' spans in one batch: one ResourceSpans per resource, each with its scopes."""
    keep = Keep()
    providers = [
        TracerProvider(resource=Resource.create({"service.name": name})) for name in ("a", "b")
    ]
    for provider in providers:
        provider.add_span_processor(SimpleSpanProcessor(keep))
    for i in range(6):
        tracer = providers[i % 2].get_tracer(f"scope{i % 3}")
        with tracer.start_as_current_span(f"s{i}", context=Context()):
            pass
    assert_same(keep.spans)
    assert len(decode(_otlp.encode_spans(keep.spans)).resource_spans) == 2


def test_a_value_otlp_cannot_hold_is_skipped_not_fatal(sdk: tuple[TracerProvider, Keep]) -> None:
    """An int beyond int64 is skipped (as the SDK skips it) and the rest of the span is kept."""
    provider, keep = sdk
    with provider.get_tracer("x").start_as_current_span("s") as span:
        span.set_attribute("ok", 1)
    (readable,) = keep.spans
    readable._attributes = {"ok": 1, "huge": 2**70, "after": "kept"}  # as a span could hold it
    request = decode(_otlp.encode_spans([readable]))
    (encoded,) = request.resource_spans[0].scope_spans[0].spans
    assert [kv.key for kv in encoded.attributes] == ["ok", "after"]


def test_lone_surrogates_become_valid_utf8(sdk: tuple[TracerProvider, Keep]) -> None:
    """A str holding a lone surrogate (from a mis-decoded header) still encodes as valid UTF-8."""
    provider, keep = sdk
    with provider.get_tracer("x").start_as_current_span("s") as span:
        span.set_attribute("ok", 1)
    (readable,) = keep.spans
    readable._attributes = {"path": "/a\udcff"}
    request = decode(_otlp.encode_spans([readable]))  # parsing checks UTF-8
    (encoded,) = request.resource_spans[0].scope_spans[0].spans
    assert encoded.attributes[0].value.string_value == "/a?"


scalars = (
    st.text(max_size=20)
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
)
homogeneous = (
    st.lists(st.text(max_size=5), max_size=4)
    | st.lists(st.integers(-(2**40), 2**40), max_size=4)
    | st.lists(st.booleans(), max_size=4)
    | st.lists(st.floats(allow_nan=False), max_size=4)
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=12), scalars | homogeneous, max_size=12))
def test_any_attributes_encode_like_the_sdk(attributes: dict[str, Any]) -> None:
    """Random attribute maps of every type OpenTelemetry allows: identical messages."""
    keep = Keep()
    provider = TracerProvider(resource=Resource.create({"service.name": "h"}))
    provider.add_span_processor(SimpleSpanProcessor(keep))
    with provider.get_tracer("h").start_as_current_span("s", attributes=attributes):
        pass
    assert_same(keep.spans)


def test_the_otlp_exporter_sends_observekits_encoding(sdk: tuple[TracerProvider, Keep]) -> None:
    """configure()'s OTLP/HTTP exporter serializes with observekit's encoder and a real
    receiver decodes every span."""
    with OTLPReceiver() as receiver:
        config = observekit.Config(
            service_name="fast", traces_exporter="otlp", otlp_endpoint=receiver.endpoint
        )
        provider = observekit.tracing.configure(config, set_global=False, schedule_delay=0.05)
        calls: list[int] = []
        real = _otlp._Encoder.encode

        def counting(self: _otlp._Encoder, spans: Sequence[ReadableSpan]) -> bytes:
            calls.append(len(spans))
            return real(self, spans)

        _otlp._Encoder.encode = counting  # type: ignore[method-assign]
        try:
            tracer = provider.get_tracer("t")
            for i in range(25):
                with tracer.start_as_current_span(f"s{i}", attributes={"i": i}):
                    pass
            assert provider.force_flush()
        finally:
            _otlp._Encoder.encode = real  # type: ignore[method-assign]
            provider.shutdown()
        spans = receiver.wait_for(lambda s: len(s) >= 25, timeout=10)
        assert sorted(s["attributes"]["i"] for s in spans) == list(range(25))
        assert sum(calls) == 25


# -- the shortcuts: light spans read by field, contexts by index, whole attribute sets --


def light_spans() -> Any:
    """A function making ended light spans with given attributes (as observekit's server
    spans are made), on a provider configure() built."""
    from observekit.tracing import _LightSink

    config = observekit.Config(service_name="light-enc", traces_exporter="none")
    provider = observekit.tracing.configure(config, set_global=False)
    sink = _LightSink(provider, None)

    def make(attributes: dict[str, Any], name: str = "GET /items/{id}") -> ReadableSpan:
        span = sink.start(name, Context(), dict(attributes))
        span.end()
        assert type(span) is observekit.tracing._LightSpan
        return span  # type: ignore[return-value]

    return make


def assert_same_warm(encoder: _otlp._Encoder, spans: Sequence[ReadableSpan]) -> None:
    """As assert_same, through an encoder that keeps its caches from call to call."""
    ours = decode(encoder.encode(spans))
    theirs = decode(sdk_encode(spans).SerializeToString())
    assert ours == theirs, f"\nours:   {ours}\ntheirs: {theirs}"


def test_the_fast_paths_are_on_with_the_installed_sdk() -> None:
    """The encoder reads SpanContext by index and light spans by field: if the installed
    OpenTelemetry changes either layout the probe turns the shortcut off, and this fails
    so that someone looks."""
    assert _otlp._tuple_context, "SpanContext no longer unpacks as the encoder expects"
    assert observekit.tracing._LightSpan in _otlp._direct


def test_light_spans_encode_like_the_sdk_reads_them() -> None:
    """A light span with a remote parent, trace state, user attributes past the limit,
    events, links and an error status: read by field, encoded as the SDK encodes it
    through its properties."""
    make = light_spans()
    span = make({"http.request.method": "GET", "server.port": 8000})
    assert_same([span])
    carrier = {
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "tracestate": "vendor=abc",
    }
    from observekit.tracing import _LightSink

    provider = observekit.tracing.configure(
        observekit.Config(service_name="light-enc2", traces_exporter="none"), set_global=False
    )
    sink = _LightSink(provider, None)
    remote = TraceContextTextMapPropagator().extract(carrier)
    live: Any = sink.start("POST", remote, {"url.path": "/x"})
    for i in range(130):
        live.set_attribute(f"a{i}", i)
    live.add_event("evt", {"k": "v"})
    live.add_link(trace.SpanContext(0x12, 0x34, is_remote=True), {"n": 1})
    live.set_status(Status(StatusCode.ERROR, "bad"))
    live.end()
    assert live.dropped_attributes
    assert_same([live, span])
    bare: Any = sink.start("GET", Context(), {})
    bare.set_status(StatusCode.OK)
    bare.end()
    assert_same([bare])


def test_a_warm_encoder_keeps_value_types_apart() -> None:
    """1, True, 1.0 and "1", and 0.0 and -0.0, are different values to OTLP: through one
    encoder, repeated so every cache has seen them, each encodes as the SDK encodes it,
    light span or SDK span."""
    make = light_spans()
    encoder = _otlp._Encoder()
    keep = Keep()
    provider = TracerProvider(resource=Resource.create({"service.name": "types"}))
    provider.add_span_processor(SimpleSpanProcessor(keep))
    values: list[Any] = [1, True, 1.0, "1", 0, False, 0.0, -0.0, "", 2**62, -1]
    for _ in range(3):
        for value in values:
            light = make({"v": value, "m": "GET"})
            with provider.get_tracer("t").start_as_current_span("s", attributes={"v": value}):
                pass
            sdk_span = keep.spans[-1]
            assert_same_warm(encoder, [light])
            assert_same_warm(encoder, [sdk_span])
            if isinstance(value, float):
                # protobuf compares 0.0 == -0.0: the sign is checked on its own
                for span in (light, sdk_span):
                    (encoded,) = (
                        decode(encoder.encode([span])).resource_spans[0].scope_spans[0].spans
                    )
                    (got,) = [kv.value.double_value for kv in encoded.attributes if kv.key == "v"]
                    assert math.copysign(1.0, got) == math.copysign(1.0, value)


def test_the_attribute_set_cache_pauses_on_misses_and_retries() -> None:
    """Eight different sets in a row pause the whole-set cache for the next 1024 sets
    (high-cardinality values would only churn it); after them a repeating set is
    reused again. A hit between misses resets the count."""
    make = light_spans()
    encoder = _otlp._Encoder()
    common = make({"http.request.method": "GET", "url.path": "/"})
    assert_same_warm(encoder, [common])  # a miss, kept
    assert_same_warm(encoder, [common])  # a hit
    assert encoder._set_misses == 0
    for i in range(_otlp._SET_MISSES - 1):
        assert_same_warm(encoder, [make({"url.path": f"/a/{i}"})])
    assert_same_warm(encoder, [common])  # a hit resets the count
    assert encoder._set_misses == 0
    assert not encoder._set_paused
    for i in range(_otlp._SET_MISSES):
        assert_same_warm(encoder, [make({"url.path": f"/b/{i}"})])
    assert encoder._set_paused == _otlp._SET_PAUSE
    kept = dict(encoder._sets)
    spans = [make({"url.path": f"/c/{i}"}) for i in range(_otlp._SET_PAUSE - 1)] + [common]
    assert_same_warm(encoder, spans)  # the 1024 sets skip the cache, and encode right
    assert encoder._sets == kept
    assert encoder._set_paused == 0
    assert encoder._set_misses == 0
    assert_same_warm(encoder, [common])
    assert encoder._set_misses == 0, "a repeating set is no longer reused after the pause"


def test_the_attribute_set_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """However many different sets come (the pause kept off), it holds at most its limit."""
    monkeypatch.setattr(_otlp, "_SET_MISSES", 10**9)
    make = light_spans()
    encoder = _otlp._Encoder()
    spans = [make({"url.path": f"/{i}", "n": i}) for i in range(_otlp._SET_LIMIT * 2 + 5)]
    assert_same_warm(encoder, spans)
    assert 0 < len(encoder._sets) <= _otlp._SET_LIMIT


small_scalars = (
    st.sampled_from(["GET", "POST", "/", "/a", ""])
    | st.sampled_from([0, 1, -1, 200, 2**63 - 1])
    | st.booleans()
    | st.sampled_from([0.0, -0.0, 1.0, 1.5])
    | st.lists(st.sampled_from(["a", "b"]), max_size=2)
)
_warm = _otlp._Encoder()
_make_light: list[Any] = []


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.dictionaries(st.sampled_from(["a", "b", "c", "http.route"]), small_scalars, max_size=4),
        min_size=1,
        max_size=6,
    )
)
def test_random_attribute_sets_through_a_warm_encoder(sets: list[dict[str, Any]]) -> None:
    """Attribute sets drawn from a few keys and values, so that they repeat, through one
    encoder kept warm across every example: each batch decodes equal to the SDK's."""
    if not _make_light:
        _make_light.append(light_spans())
    make = _make_light[0]
    spans = [make(attributes) for attributes in sets]
    assert_same_warm(_warm, spans)
    for span, attributes in zip(spans, sets, strict=True):
        (encoded,) = decode(_warm.encode([span])).resource_spans[0].scope_spans[0].spans
        for kv in encoded.attributes:
            value = attributes[kv.key]
            if isinstance(value, float):
                assert math.copysign(1.0, kv.value.double_value) == math.copysign(1.0, value)
