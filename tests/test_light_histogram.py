"""The light histogram path (observekit.metrics._light) and the OTel client metrics on it.

A point recorded through :class:`LightHistogram` must export exactly as the same
point recorded through the SDK's ``Histogram.record`` (counts, sum, min, max,
buckets, attributes, exemplars), must really skip ``Histogram.record`` once its
attribute set is known (else the speed-up is silently gone), and must give way to
the SDK's own path wherever it cannot be sure to record the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics import _internal as sdk_metrics_internal
from opentelemetry.sdk.metrics._internal.measurement import Measurement
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.trace import TracerProvider

from observekit.metrics import DURATION_BUCKETS
from observekit.metrics import _light as light_module
from observekit.metrics._light import LightHistogram
from observekit.metrics.otel import OtelMetrics

GET = {"http.request.method": "GET", "server.address": "a.internal", "server.port": 80}
POST = {**GET, "http.request.method": "POST", "http.response.status_code": 503}
VALUES = [0.0, 0.004, 0.02, 0.02, 0.3, 7.5, 12.0]


class Counted:
    """Counts the calls to one histogram's ``record`` (the SDK's path)."""

    def __init__(self, histogram: Any) -> None:
        self.calls = 0
        original = histogram.record

        def record(*args: Any, **kwargs: Any) -> None:
            self.calls += 1
            original(*args, **kwargs)

        histogram.record = record


def _histogram(reader: InMemoryMetricReader, views: tuple[View, ...] = ()) -> Any:
    provider = MeterProvider(metric_readers=[reader], views=list(views))
    return provider.get_meter("t").create_histogram(
        "d", unit="s", explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS)
    )


def _points(reader: InMemoryMetricReader) -> list[dict[str, Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    out = []
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    out.append(
                        {
                            "attributes": dict(point.attributes),
                            "count": point.count,
                            "sum": point.sum,
                            "min": point.min,
                            "max": point.max,
                            "buckets": tuple(point.bucket_counts),
                            "exemplars": sorted(
                                (e.value, e.span_id, e.trace_id, dict(e.filtered_attributes or {}))
                                for e in point.exemplars
                            ),
                        }
                    )
    return sorted(out, key=lambda p: sorted(p["attributes"].items()))


@pytest.fixture
def span() -> Iterator[trace.Span]:
    """A current sampled span, so the default (trace-based) filter samples exemplars."""
    with TracerProvider().get_tracer("t").start_as_current_span("parent") as current:
        yield current


def _drive(record: Callable[[float, dict[str, Any]], None]) -> None:
    for value in VALUES:
        record(value, GET)
    for value in VALUES[:3]:
        record(value, POST)


@pytest.mark.parametrize("build", ["_filled", "_built"])
def test_light_points_export_as_the_sdk_records_them(
    span: trace.Span, build: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same counts, sum, min, max, buckets, attributes and exemplars as Histogram.record,
    with the measurement built either way the module can build it."""
    monkeypatch.setattr(light_module, "_measurement", getattr(light_module, build))
    sdk_reader, light_reader = InMemoryMetricReader(), InMemoryMetricReader()
    sdk = _histogram(sdk_reader)
    light = LightHistogram(_histogram(light_reader))
    keys = {id(GET): light.key(GET), id(POST): light.key(POST)}
    assert light.light
    _drive(sdk.record)
    _drive(lambda value, attributes: light.record(value, attributes, keys[id(attributes)]))
    expected = _points(sdk_reader)
    assert _points(light_reader) == expected
    assert [p["count"] for p in expected] == [7, 3]
    assert all(p["exemplars"] for p in expected)  # exemplars were sampled, and compared


def test_measurement_built_at_once_equals_the_sdks_own(span: trace.Span) -> None:
    """The fields-at-once measurement is the one the SDK's constructor makes (on this SDK
    that is the one used)."""
    args = (0.25, 123, None, None)
    for build in (light_module._filled, light_module._built):
        assert build(*args, GET) == Measurement(*args, GET)
    assert light_module._measurement is light_module._filled


def test_light_path_skips_histogram_record_after_a_sets_first_point() -> None:
    """Only the first point of each attribute set goes through Histogram.record."""
    reader = InMemoryMetricReader()
    histogram = _histogram(reader)
    counted = Counted(histogram)
    light = LightHistogram(histogram)
    key_get, key_post = light.key(GET), light.key(POST)
    for value in VALUES:
        light.record(value, GET, key_get)
        light.record(value, POST, key_post)
    assert counted.calls == 2
    assert [p["count"] for p in _points(reader)] == [len(VALUES), len(VALUES)]


def _view_dropping_port() -> View:
    return View(instrument_name="d", attribute_keys={"http.request.method", "server.address"})


@pytest.mark.parametrize(
    ("make_reader", "views", "points"),
    [
        pytest.param(
            lambda: InMemoryMetricReader(
                preferred_temporality={Histogram: AggregationTemporality.DELTA}
            ),
            (),
            [(GET, len(VALUES))],
            id="delta-temporality",
        ),
        pytest.param(
            InMemoryMetricReader,
            (_view_dropping_port(),),
            [({"http.request.method": "GET", "server.address": "a.internal"}, len(VALUES))],
            id="view-with-attribute-keys",
        ),
    ],
)
def test_gives_way_to_the_sdk_where_it_cannot_be_sure(
    make_reader: Callable[[], InMemoryMetricReader],
    views: tuple[View, ...],
    points: list[tuple[dict[str, Any], int]],
) -> None:
    """Delta readers (aggregations reset on collect) and attribute-filtering views: every
    point goes through Histogram.record, and is recorded right."""
    reader = make_reader()
    histogram = _histogram(reader, views)
    counted = Counted(histogram)
    light = LightHistogram(histogram)
    key = light.key(GET)
    for value in VALUES:
        light.record(value, GET, key)
    assert counted.calls == len(VALUES)
    assert [(p["attributes"], p["count"]) for p in _points(reader)] == points


def test_a_reader_added_later_gets_every_point() -> None:
    """A reader added after the first points is found, and both readers count right."""
    first, second = InMemoryMetricReader(), InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[first])
    light = LightHistogram(provider.get_meter("t").create_histogram("d"))
    key = light.key(GET)
    light.record(0.1, GET, key)
    light.record(0.2, GET, key)
    provider.add_metric_reader(second)
    light.record(0.3, GET, key)
    light.record(0.4, GET, key)
    assert [p["count"] for p in _points(first)] == [4]
    assert [(p["count"], p["sum"]) for p in _points(second)] == [(2, pytest.approx(0.7))]


def test_a_disabled_meter_records_nothing_and_keeps_the_light_path() -> None:
    """While the meter is disabled (the SDK's meter configurator) nothing is recorded, as
    with Histogram.record, before a set's first point or after; enabled again, points
    are light again."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    if not hasattr(provider, "_set_meter_configurator"):
        pytest.skip("this SDK has no meter configurator")
    histogram = provider.get_meter("t").create_histogram("d")
    counted = Counted(histogram)
    light = LightHistogram(histogram)
    key = light.key(GET)

    def enable(on: bool) -> None:
        provider._set_meter_configurator(
            meter_configurator=lambda scope: sdk_metrics_internal._MeterConfig(is_enabled=on)
        )

    for on, value in ((False, 8.0), (True, 0.1), (False, 9.0), (True, 0.2), (True, 0.3)):
        enable(on)
        light.record(value, GET, key)
    assert [(p["count"], round(p["sum"], 6)) for p in _points(reader)] == [(3, 0.6)]
    assert counted.calls == 1
    assert light.light


def test_odd_amounts_and_non_sdk_histograms_take_the_sdks_path() -> None:
    """NaN, infinity and negative amounts are the SDK's to refuse (no exception, no point);
    a histogram that is not the SDK's own (the API's no-op) is only ever called."""
    reader = InMemoryMetricReader()
    light = LightHistogram(_histogram(reader))
    key = light.key(GET)
    light.record(0.5, GET, key)
    for odd in (math.nan, math.inf, -1.0):
        light.record(odd, GET, key)
    assert [(p["count"], p["sum"]) for p in _points(reader)] == [(1, 0.5)]

    noop = trace.NoOpTracerProvider()  # any object that is no SDK histogram
    other = LightHistogram(noop)
    assert not other.light
    assert other.key(GET) is None


def test_otel_client_metrics_record_through_the_light_path() -> None:
    """OtelMetrics.client_request_finished: the duration histogram with method, address,
    port, status, error.type and the constant attributes, the request and error counters;
    after the first call of a kind, no Histogram.record."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    backend = OtelMetrics(meter_provider=provider, service_name="shop", environment="prod")
    counted = Counted(backend._inst.client_duration)
    try:
        for _ in range(3):
            backend.client_request_finished("GET", "a.internal", 443, 200, 0.02, None)
        backend.client_request_finished("GET", "a.internal", 443, 0, 1.5, "timeout")
        backend.client_request_finished("GET", "a.internal", 443, 0, 1.5, "timeout")
        assert counted.calls == 2
        data = reader.get_metrics_data()
        assert data is not None
        metrics = {
            metric.name: list(metric.data.data_points)
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }
        const = {
            "service.name": "shop",
            "service.version": "unknown",
            "deployment.environment": "prod",
        }
        base = {"http.request.method": "GET", "server.address": "a.internal", "server.port": 443}
        durations = sorted(
            (p.count, round(p.sum, 6), dict(p.attributes))
            for p in metrics["http.client.request.duration"]
        )
        assert durations == [
            (2, 3.0, {**base, "error.type": "timeout", **const}),
            (3, 0.06, {**base, "http.response.status_code": 200, **const}),
        ]
        [errors] = metrics["http.client.errors"]
        assert (errors.value, errors.attributes["error.type"]) == (2, "timeout")
        assert sorted(p.value for p in metrics["http.client.requests"]) == [2, 3]
    finally:
        backend.close()
        provider.shutdown()
