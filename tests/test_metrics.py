"""The metrics backends, driven directly: statsd/DogStatsD to a real UDP receiver,
OpenTelemetry into an SDK MeterProvider, and the in-memory backend."""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import statsd as statsd_package
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import observekit
from observekit import metrics as okm
from observekit.metrics.memory import MemoryMetrics, percentile
from observekit.metrics.otel import OtelMetrics
from observekit.metrics.statsd import StatsdMetrics, name_part, tag_value
from tests.statsd_receiver import Metric, StatsdReceiver

CONST_TAGS = (
    "service.name:shop",
    "service.version:1.2.3",
    "deployment.environment:prod",
)
HOSTILE = [
    "a|b",
    "x#y",
    "one,two",
    "k:v",
    "line\nbreak",
    "cr\rlf",
    "at@0.5",
    "sp ace",
    "ünï©ødé",
    "%s%d%%",
    "|#evil:1,service.name:other\nforged.metric:1|c",
    "",
]


@pytest.fixture(autouse=True)
def _fresh_shared_backends() -> Iterator[None]:
    """Every test starts and ends with no shared backend and no default."""
    okm._reset()
    yield
    okm._reset()


@pytest.fixture
def receiver() -> Iterator[StatsdReceiver]:
    with StatsdReceiver() as r:
        yield r


@pytest.fixture
def make_statsd() -> Iterator[Callable[..., StatsdMetrics]]:
    """Builds StatsdMetrics (shop / 1.2.3 / prod unless told) and closes them all afterwards."""
    made: list[StatsdMetrics] = []

    def make(host: str = "127.0.0.1", port: int = 8125, **kwargs: Any) -> StatsdMetrics:
        kwargs.setdefault("service_name", "shop")
        kwargs.setdefault("service_version", "1.2.3")
        kwargs.setdefault("environment", "prod")
        backend = StatsdMetrics(host, port, **kwargs)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


def one_request(
    m: okm.Metrics,
    method: str = "GET",
    route: str = "/users/{id}",
    status: int = 200,
    duration: float = 0.0125,
    error: str | None = None,
) -> None:
    m.request_started(method)
    m.request_finished(method, route, status, duration, error)


def free_udp_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- statsd: names, types, tags ------------------------------------------------------------


def test_dogstatsd_request_is_one_datagram_with_named_typed_tagged_lines(
    receiver: StatsdReceiver, make_statsd: Callable[..., StatsdMetrics]
) -> None:
    """A request sends one datagram: a ms timer and a counter, prefixed, with all the tags."""
    m = make_statsd(port=receiver.port, prefix="myapp", report_interval=60)
    one_request(m, duration=0.0125)
    [datagram] = receiver.wait_for_count(1)
    assert datagram.errors == []
    duration, count = datagram.metrics
    tags = (
        "http.request.method:GET",
        "http.route:/users/{id}",
        "http.response.status_code:200",
        *CONST_TAGS,
    )
    assert duration == Metric(
        "myapp.http.server.request.duration", "12.500000", "ms", None, tags, (), duration.raw
    )
    assert count == Metric("myapp.http.server.requests", "1", "c", None, tags, (), count.raw)
    assert receiver.quiet() == [datagram]


def test_exception_rides_in_the_same_datagram_with_error_type(
    receiver: StatsdReceiver, make_statsd: Callable[..., StatsdMetrics]
) -> None:
    """A failed request adds http.server.exceptions (tag error.type) to its one datagram."""
    m = make_statsd(port=receiver.port, report_interval=60)
    one_request(m, method="POST", route="/orders", status=500, error="myapp.errors.Boom")
    [datagram] = receiver.wait_for_count(1)
    names = [metric.name for metric in datagram.metrics]
    assert names == [
        "http.server.request.duration",
        "http.server.requests",
        "http.server.exceptions",
    ]
    exc = datagram.metrics[2]
    assert (exc.value, exc.type) == ("1", "c")
    assert exc.tag_dict["error.type"] == "myapp.errors.Boom"
    assert exc.tag_dict["http.route"] == "/orders"
    assert exc.tag_dict["http.response.status_code"] == "500"


def test_every_request_is_exactly_one_datagram(
    receiver: StatsdReceiver, make_statsd: Callable[..., StatsdMetrics]
) -> None:
    """Fifty requests make fifty datagrams, each holding its own duration and count."""
    m = make_statsd(port=receiver.port, report_interval=60)
    for i in range(50):
        one_request(m, route=f"/r{i % 5}", duration=i / 1000)
    datagrams = receiver.wait_for_count(50)
    assert len(receiver.quiet()) == 50
    for datagram in datagrams:
        assert [x.type for x in datagram.metrics] == ["ms", "c"]
    assert sorted(float(d.metrics[0].value) for d in datagrams) == [float(i) for i in range(50)]


def test_under_load_requests_are_packed_into_fewer_datagrams(
    receiver: StatsdReceiver, make_statsd: Callable[..., StatsdMetrics]
) -> None:
    """With a flush interval, a burst of 300 requests arrives whole in far fewer datagrams,
    none over max_packet, each request's two lines in the same datagram, within the interval."""
    m = make_statsd(port=receiver.port, report_interval=60, flush_interval=0.05)
    for i in range(300):
        one_request(m, route=f"/r{i % 5}", duration=i / 1000)
    receiver.wait_for(lambda r: len(r.metrics("http.server.requests")) >= 300, timeout=2.0)
    datagrams = receiver.quiet()
    assert len(datagrams) < 300 / 2
    assert all(len(d.data) <= m.max_packet for d in datagrams)
    durations = sorted(float(x.value) for x in receiver.metrics("http.server.request.duration"))
    assert durations == [float(i) for i in range(300)]
    for datagram in datagrams:
        types = [x.type for x in datagram.metrics]
        assert types == ["ms", "c"] * (len(types) // 2)


def test_under_load_the_request_thread_sends_each_packet_as_it_fills(
    receiver: StatsdReceiver,
    make_statsd: Callable[..., StatsdMetrics],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under load the calling thread sends each packet once it is full, and what is held
    once flush_interval has passed; the background thread sends only the tail left when
    traffic stops. (Under gunicorn a send every few requests costs less than waking that
    thread, which then contends for the GIL on each of the worker's system calls.)"""
    m = make_statsd(port=receiver.port, report_interval=60, flush_interval=0.05)
    caller = threading.get_ident()
    senders: list[tuple[int, int]] = []
    real_send_now = m._send_now

    def recording(data: bytes) -> None:
        senders.append((threading.get_ident(), len(data)))
        real_send_now(data)

    monkeypatch.setattr(m, "_send_now", recording)
    m._last_send = time.monotonic()  # as if a request had just been sent
    for i in range(80):  # ~20 full packets, within the interval
        one_request(m, route=f"/r{i % 5}", duration=i / 1000)
    assert len(senders) > 10
    assert {thread for thread, _ in senders} == {caller}
    assert all(size <= m.max_packet for _, size in senders)
    assert all(size > m.max_packet - 400 for _, size in senders)  # full packets only
    assert m._pending  # the tail: not full yet

    # Traffic stops: the background thread sends the tail.
    receiver.wait_for(lambda r: len(r.metrics("http.server.requests")) >= 80, timeout=3.0)
    assert senders[-1][0] != caller

    # Held lines go out with the first request after flush_interval, from its own thread.
    m._last_send = time.monotonic()
    one_request(m, route="/held")
    time.sleep(0.06)
    sent = len(senders)
    one_request(m, route="/next")
    assert senders[sent:] == [(caller, senders[sent][1])]
    receiver.wait_for(
        lambda r: any(x.tag_dict.get("http.route") == "/next" for x in r.metrics()),
        what="the request after the interval",
    )
    routes = [x.tag_dict["http.route"] for x in receiver.datagrams[-1].metrics]
    assert routes[-4:] == ["/held", "/held", "/next", "/next"]


def test_a_request_after_a_quiet_spell_is_sent_at_once(
    receiver: StatsdReceiver, make_statsd: Callable[..., StatsdMetrics]
) -> None:
    """Packing never delays the first datagram after a quiet spell: it leaves in the call."""
    m = make_statsd(port=receiver.port, report_interval=60, flush_interval=5.0)
    one_request(m)
    assert m.sent == 1
    one_request(m)  # within the interval: held for packing
    assert m.sent == 1
    m.flush()
    assert m.sent == 2
    assert len(receiver.wait_for_count(2)) == 2


def test_held_lines_are_sent_on_close(
    receiver: StatsdReceiver, make_statsd: Callable[..., StatsdMetrics]
) -> None:
    """Lines still held for packing when the backend closes (at exit too) are sent, not lost."""
    m = make_statsd(port=receiver.port, report_interval=60, flush_interval=5.0)
    for _ in range(4):
        one_request(m)
    m.close()
    receiver.wait_for(lambda r: len(r.metrics("http.server.requests")) == 4, timeout=2.0)


def test_wire_format_matches_the_statsd_package(
    receiver: StatsdReceiver, make_statsd: Callable[..., StatsdMetrics]
) -> None:
    """Plain-statsd lines are byte for byte what the statsd package's own client sends."""
    m = make_statsd(port=receiver.port, prefix="myapp", tags="none", report_interval=60)
    one_request(m, method="GET", route="/", status=200, duration=0.0123456789)
    ours = receiver.wait_for_count(1)[0].data
    receiver.clear()
    client = statsd_package.StatsClient("127.0.0.1", receiver.port, prefix="myapp")
    try:
        with client.pipeline() as pipe:
            pipe.timing("http.server.request.duration.GET.root.200", 12.3456789)
            pipe.incr("http.server.requests.GET.root.200")
    finally:
        client.close()
    theirs = receiver.wait_for_count(1)[0].data
    assert ours == theirs


def test_plain_statsd_folds_labels_into_names(
    receiver: StatsdReceiver, make_statsd: Callable[..., StatsdMetrics]
) -> None:
    """statsd_tags='none': no tags; method, route and status (and error type) are name parts."""
    m = make_statsd(port=receiver.port, prefix="myapp", tags="none", report_interval=60)
    one_request(m, method="DELETE", route="/users/{id}", status=503, error="a.b.Err")
    [datagram] = receiver.wait_for_count(1)
    assert [(x.name, x.value, x.type, x.tags) for x in datagram.metrics] == [
        ("myapp.http.server.request.duration.DELETE.users_id.503", "12.500000", "ms", None),
        ("myapp.http.server.requests.DELETE.users_id.503", "1", "c", None),
        ("myapp.http.server.exceptions.DELETE.users_id.503.a_b_Err", "1", "c", None),
    ]


@pytest.mark.parametrize(
    ("route", "part"),
    [
        pytest.param("/", "root", id="root"),
        pytest.param("/users/{id}", "users_id", id="starlette"),
        pytest.param("/users/{id:int}/", "users_id_int", id="starlette-converter"),
        pytest.param("/users/<int:id>", "users_int_id", id="flask"),
        pytest.param("^users/(?P<pk>[0-9]+)/$", "_users___Ppk_0-9_____", id="django-regex"),
        pytest.param("/api/v1.0/items", "api_v1_0_items", id="dots"),
        pytest.param("unmatched", "unmatched", id="unmatched"),
    ],
)
def test_route_name_folding_scheme(route: str, part: str) -> None:
    """Routes fold to one name part: outer slashes cut, / as _, {}<> dropped, the rest _."""
    assert name_part(route, route=True) == part


@pytest.mark.parametrize("tags", ["dogstatsd", "none"])
@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_labels_cannot_inject_lines_fields_or_tags(
    receiver: StatsdReceiver, make_statsd: Callable[..., StatsdMetrics], tags: str, hostile: str
) -> None:
    """Any method, route, error type or service value stays inside its own tag or name part."""
    m = make_statsd(
        port=receiver.port,
        tags=tags,
        service_name=hostile or "x",
        environment=hostile or None,
        report_interval=60,
    )
    one_request(m, method=hostile, route=hostile, status=500, error=hostile)
    [datagram] = receiver.wait_for_count(1)
    assert datagram.errors == []
    assert len(datagram.metrics) == 3
    base = ["http.server.request.duration", "http.server.requests", "http.server.exceptions"]
    for metric, name in zip(datagram.metrics, base, strict=True):
        assert metric.rate is None
        assert metric.extra == ()
        if tags == "none":
            assert metric.tags is None
            assert metric.name.startswith(name + ".")
            assert metric.name.count(".") == name.count(".") + (4 if "exc" in name else 3)
        else:
            assert metric.name == name
            keys = [tag.partition(":")[0] for tag in metric.tags or ()]
            expected = ["http.request.method", "http.route", "http.response.status_code"]
            expected += ["service.name", "service.version", "deployment.environment"]
            if name == "http.server.exceptions":
                expected.append("error.type")
            assert keys == expected
            assert all(tag.count(":") == 1 for tag in metric.tags or ())


@pytest.fixture(scope="module")
def shared_receiver() -> Iterator[StatsdReceiver]:
    with StatsdReceiver() as r:
        yield r


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(method=st.text(max_size=40), route=st.text(max_size=300), error=st.text(max_size=60))
def test_fuzzed_labels_always_parse_into_exactly_the_expected_tags(
    shared_receiver: StatsdReceiver, method: str, route: str, error: str
) -> None:
    """Arbitrary Unicode labels give three parseable lines with exactly the six/seven tag keys."""
    shared_receiver.clear()
    m = StatsdMetrics("127.0.0.1", shared_receiver.port, report_interval=60)
    try:
        one_request(m, method=method, route=route, status=404, error=error)
        [datagram] = shared_receiver.wait_for_count(1)
    finally:
        m.close()
    assert datagram.errors == []
    assert [len(x.tags or ()) for x in datagram.metrics] == [6, 6, 7]
    assert datagram.metrics[0].tag_dict["http.route"] == tag_value(route)


def test_constant_tags_are_on_every_line_and_environment_defaults_to_unknown(
    receiver: StatsdReceiver, make_statsd: Callable[..., StatsdMetrics]
) -> None:
    """service.name, service.version and deployment.environment tag every line, tasks included."""
    m = make_statsd(port=receiver.port, environment=None, report_interval=60)
    one_request(m, error="E")
    m.task_started("t")
    m.task_finished("t", 0.1, None)
    m.gauge("queue.size", 3, {"queue.name": "q"})
    receiver.wait_for_count(3)
    lines = receiver.metrics()
    assert len(lines) == 6
    for metric in lines:
        assert metric.tag_dict["service.name"] == "shop"
        assert metric.tag_dict["service.version"] == "1.2.3"
        assert metric.tag_dict["deployment.environment"] == "unknown"


def test_prefix_trailing_dot_is_not_doubled(
    receiver: StatsdReceiver, make_statsd: Callable[..., StatsdMetrics]
) -> None:
    """statsd_prefix 'my-app.' gives 'my-app.http...' (one dot, as gunicorn does)."""
    m = make_statsd(port=receiver.port, prefix="my-app.", report_interval=60)
    one_request(m)
    assert receiver.wait_for_count(1)[0].metrics[0].name == "my-app.http.server.request.duration"


# -- statsd: datagram sizes ------------------------------------------------------------------


def test_lines_that_do_not_fit_are_split_over_datagrams_within_max_packet(
    receiver: StatsdReceiver, make_statsd: Callable[..., StatsdMetrics]
) -> None:
    """With a small statsd_max_packet the lines go in several datagrams, none over the limit."""
    m = make_statsd(port=receiver.port, max_packet=400, report_interval=60)
    one_request(m, route="/" + "x" * 120, error="SomeError")
    datagrams = receiver.wait_for_count(2)
    datagrams = receiver.quiet()
    assert all(d.size <= 400 for d in datagrams)
    assert len(datagrams) >= 2
    assert [x.name for x in receiver.metrics()] == [
        "http.server.request.duration",
        "http.server.requests",
        "http.server.exceptions",
    ]


def test_default_max_packet_holds_a_long_route_request_in_one_datagram(
    receiver: StatsdReceiver, make_statsd: Callable[..., StatsdMetrics]
) -> None:
    """The default 1432 bytes hold duration, count and exception even for a 150-char route."""
    m = make_statsd(port=receiver.port, report_interval=60)
    one_request(m, route="/" + "y" * 400, error="pkg.module.SomeLongErrorName")
    [datagram] = receiver.wait_for_count(1)
    assert len(datagram.metrics) == 3
    assert datagram.size <= 1432
    assert len(datagram.metrics[0].tag_dict["http.route"]) == 150  # values are cut at 150


def test_a_line_longer_than_max_packet_is_dropped_and_counted(
    receiver: StatsdReceiver, make_statsd: Callable[..., StatsdMetrics]
) -> None:
    """No datagram ever exceeds statsd_max_packet: an oversize line is dropped, not sent."""
    m = make_statsd(port=receiver.port, max_packet=64, report_interval=60)
    one_request(m)
    m.flush(0.0)
    assert receiver.quiet() == []
    assert m.stats()["oversize"] == 2
    assert m.stats()["dropped"] == 2


# -- statsd: active requests -----------------------------------------------------------------


def test_short_requests_send_no_active_gauge_datagrams(
    receiver: StatsdReceiver, make_statsd: Callable[..., StatsdMetrics]
) -> None:
    """A request that starts and ends between reports adds no datagram and no gauge line."""
    m = make_statsd(port=receiver.port, report_interval=60)
    for _ in range(20):
        one_request(m)
    assert len(receiver.wait_for_count(20)) == 20
    assert len(receiver.quiet()) == 20
    assert "http.server.active_requests" not in receiver.names()


def test_dogstatsd_long_request_shows_as_absolute_per_process_gauge(
    receiver: StatsdReceiver, make_statsd: Callable[..., StatsdMetrics]
) -> None:
    """DogStatsD: a running request is reported as 1|g (tag process.pid), and 0|g at its end."""
    m = make_statsd(port=receiver.port, report_interval=0.05)
    m.request_started("GET")
    receiver.wait_for(lambda r: r.metrics("http.server.active_requests"), what="an active gauge")
    [gauge] = receiver.metrics("http.server.active_requests")
    assert (gauge.value, gauge.type) == ("1", "g")
    assert gauge.tag_dict["http.request.method"] == "GET"
    assert gauge.tag_dict["process.pid"] == str(os.getpid())
    assert gauge.tag_dict["service.name"] == "shop"
    receiver.clear()
    m.request_finished("GET", "/slow", 200, 1.0, None)
    [datagram] = receiver.wait_for_count(1)
    assert [(x.name, x.value) for x in datagram.metrics][-1] == (
        "http.server.active_requests",
        "0",
    )


def test_plain_statsd_active_requests_are_deltas_that_sum_to_zero(
    receiver: StatsdReceiver, make_statsd: Callable[..., StatsdMetrics]
) -> None:
    """Plain statsd: +n|g deltas while requests run, and the matching -n|g when they end."""
    m = make_statsd(port=receiver.port, tags="none", report_interval=0.05)
    for _ in range(3):
        m.request_started("POST")
    name = "http.server.active_requests.POST"
    receiver.wait_for(lambda r: r.metrics(name), what="an active delta")
    for _ in range(3):
        m.request_finished("POST", "/p", 201, 0.5, None)
    m.flush(1.0)
    receiver.wait_for(
        lambda r: sum(int(x.value) for x in r.metrics(name)) == 0, what="deltas summing to 0"
    )
    values = [x.value for x in receiver.metrics(name)]
    assert values[0] == "+3"
    assert all(x.type == "g" for x in receiver.metrics(name))
    assert all(v.startswith(("+", "-")) for v in values)


# -- statsd: bad surroundings ----------------------------------------------------------------


def test_unresolvable_host_neither_blocks_nor_raises(
    make_statsd: Callable[..., StatsdMetrics], caplog: pytest.LogCaptureFixture
) -> None:
    """statsd.invalid: construction and 1000 requests return at once; drops are counted."""
    caplog.set_level(logging.WARNING, logger="observekit.metrics")
    started = time.monotonic()
    m = make_statsd("statsd.invalid", 8125)
    for _ in range(1000):
        one_request(m)
    assert time.monotonic() - started < 1.0
    deadline = time.monotonic() + 30
    while m.stats()["resolve_failures"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert m.stats()["resolve_failures"] >= 1
    assert m.stats()["dropped"] == 1000
    assert m.address is None
    warnings_ = [r for r in caplog.records if r.name == "observekit.metrics"]
    assert len(warnings_) == 1
    assert "statsd.invalid" in warnings_[0].getMessage()


def test_a_hanging_resolver_never_delays_construction_or_requests(
    make_statsd: Callable[..., StatsdMetrics],
) -> None:
    """A DNS look-up that hangs runs in the background; the request path never waits for it."""
    release = threading.Event()
    calls: list[str] = []

    def hanging(host: str, port: int) -> tuple[int, tuple[Any, ...]]:
        calls.append(host)
        release.wait(10)
        raise socket.gaierror("gave up")

    started = time.monotonic()
    m = make_statsd("slow.example", 8125, resolver=hanging)
    for _ in range(100):
        one_request(m)
    elapsed = time.monotonic() - started
    release.set()
    deadline = time.monotonic() + 10  # let the look-up fail here, not in a later test
    while m.stats()["resolve_failures"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert elapsed < 0.5
    assert calls == ["slow.example"]
    assert m.stats()["dropped"] == 100
    assert m.stats()["resolve_failures"] == 1


def test_unreachable_port_never_raises_and_warns_once(
    make_statsd: Callable[..., StatsdMetrics], caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing listening: ICMP refusals surface as send errors, swallowed, counted, one WARNING."""
    caplog.set_level(logging.WARNING, logger="observekit.metrics")
    m = make_statsd(port=free_udp_port(), report_interval=60)
    deadline = time.monotonic() + 10
    sent = 0
    while (m.stats()["send_errors"] < 5 or sent < 500) and time.monotonic() < deadline:
        one_request(m, error="E")
        sent += 1
    stats = m.stats()
    assert stats["send_errors"] >= 5
    assert stats["sent"] + stats["dropped"] == sent
    messages = [r.getMessage() for r in caplog.records if r.name == "observekit.metrics"]
    assert len(messages) == 1
    assert "ConnectionRefusedError" in messages[0]


def test_changed_address_is_picked_up_after_the_ttl(
    make_statsd: Callable[..., StatsdMetrics],
) -> None:
    """When the name moves to another address, metrics follow within the TTL, not sooner."""
    with StatsdReceiver() as first, StatsdReceiver() as second:
        target = {"port": first.port}
        lookups: list[float] = []

        def resolver(host: str, port: int) -> tuple[int, tuple[Any, ...]]:
            assert (host, port) == ("statsd.test", 8125)
            lookups.append(time.monotonic())
            return socket.AF_INET, ("127.0.0.1", target["port"])

        ttl = 0.3
        m = make_statsd("statsd.test", 8125, dns_ttl=ttl, resolver=resolver, report_interval=60)
        assert m.ready(5.0)
        one_request(m, route="/before")
        first.wait_for_count(1)
        target["port"] = second.port
        deadline = time.monotonic() + 10
        while not second.datagrams and time.monotonic() < deadline:
            one_request(m, route="/after")
            time.sleep(0.01)
        assert second.datagrams, "never followed the name to its new address"
        assert second.datagrams[0].metrics[0].tag_dict["http.route"] == "/after"
        assert first.metrics()[0].tag_dict["http.route"] == "/before"
        gaps = [b - a for a, b in itertools.pairwise(lookups)]
        assert gaps
        assert all(gap >= ttl * 0.9 for gap in gaps)


def test_a_failed_re_resolution_keeps_the_last_good_address(
    receiver: StatsdReceiver, make_statsd: Callable[..., StatsdMetrics]
) -> None:
    """DNS failing after a success changes nothing: metrics keep going to the known address."""
    results: list[Any] = [(socket.AF_INET, ("127.0.0.1", receiver.port))]

    def resolver(host: str, port: int) -> tuple[int, tuple[Any, ...]]:
        if results:
            return results.pop()  # type: ignore[no-any-return]
        raise socket.gaierror("temporary failure")

    m = make_statsd("statsd.test", 8125, dns_ttl=0.05, resolver=resolver, report_interval=60)
    assert m.ready(5.0)
    m.request_started("GET")  # starts the background thread that re-resolves
    deadline = time.monotonic() + 10
    while m.stats()["resolve_failures"] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    m.request_finished("GET", "/", 200, 0.001, None)
    receiver.wait_for_count(1)
    assert m.stats()["resolve_failures"] >= 2
    assert m.address == ("127.0.0.1", receiver.port)


def _fork(child: Callable[[], None]) -> int:
    """Run ``child`` in a forked process; return its exit code (0 only if it returned)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            child()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_sends_on_its_own_socket_and_parent_still_works(
    receiver: StatsdReceiver, make_statsd: Callable[..., StatsdMetrics]
) -> None:
    """After fork, the child sends (own socket, own pid, own thread); the parent carries on."""
    m = make_statsd(port=receiver.port, report_interval=0.05)
    one_request(m, route="/parent-before")
    parent_sender = receiver.wait_for_count(1)[0].sender

    def child() -> None:
        m.request_started("GET")  # starts the child's own reporting thread
        deadline = time.monotonic() + 10
        while m.stats()["sent"] == m_sent_before and time.monotonic() < deadline:
            time.sleep(0.01)
        m.request_finished("GET", "/child", 200, 0.001, None)

    m_sent_before = m.stats()["sent"]
    assert _fork(child) == 0
    receiver.wait_for(
        lambda r: any(x.tag_dict.get("http.route") == "/child" for x in r.metrics()),
        what="the child's request",
    )
    one_request(m, route="/parent-after")
    receiver.wait_for(
        lambda r: any(x.tag_dict.get("http.route") == "/parent-after" for x in r.metrics()),
        what="the parent's request after the fork",
    )
    by_route = {
        x.tag_dict.get("http.route"): d.sender for d in receiver.datagrams for x in d.metrics
    }
    assert by_route["/child"] != parent_sender  # the child's own socket
    assert by_route["/parent-after"] == parent_sender
    gauges = receiver.metrics("http.server.active_requests")
    assert any(g.tag_dict["process.pid"] != str(os.getpid()) for g in gauges)  # child's thread


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_during_a_slow_first_lookup_resolves_again_in_the_child(
    receiver: StatsdReceiver, make_statsd: Callable[..., StatsdMetrics]
) -> None:
    """A child forked while the parent's look-up hangs resolves on its own and sends."""
    parent = os.getpid()
    release = threading.Event()

    def resolver(host: str, port: int) -> tuple[int, tuple[Any, ...]]:
        if os.getpid() == parent:
            release.wait(10)
        return socket.AF_INET, ("127.0.0.1", receiver.port)

    m = make_statsd("statsd.test", 8125, resolver=resolver, report_interval=60)

    def child() -> None:
        m.request_started("GET")
        if not m.ready(5.0):
            raise RuntimeError("the child never resolved")
        m.request_finished("GET", "/child", 200, 0.001, None)

    try:
        assert _fork(child) == 0
    finally:
        release.set()
    receiver.wait_for_count(1)
    assert receiver.metrics()[0].tag_dict["http.route"] == "/child"
    assert m.ready(5.0)


# -- statsd: bounded state, lifetime ----------------------------------------------------------


def test_template_cache_is_bounded_and_every_request_still_sent(
    receiver: StatsdReceiver, make_statsd: Callable[..., StatsdMetrics]
) -> None:
    """More (method, route, status) kinds than max_keys: all sent, the cache stays at max_keys."""
    m = make_statsd(port=receiver.port, max_keys=10, report_interval=60)
    for i in range(100):
        one_request(m, route=f"/r{i}")
    assert len(receiver.wait_for_count(100)) == 100
    assert len(m._templates) == 10


def test_close_is_idempotent_and_later_calls_record_nothing(
    receiver: StatsdReceiver, make_statsd: Callable[..., StatsdMetrics]
) -> None:
    """After close() every method still returns quietly; nothing more is sent."""
    m = make_statsd(port=receiver.port)
    m.close()
    m.close()
    one_request(m)
    m.task_started("t")
    m.task_finished("t", 0.1, None)
    m.gauge("g", 1.0)
    m.flush(0.1)
    assert receiver.quiet() == []


def test_tasks_and_gauges_use_the_statsd_wire_format(
    receiver: StatsdReceiver, make_statsd: Callable[..., StatsdMetrics]
) -> None:
    """task.duration (ms), task.completed (c) with outcome/error.type, and absolute gauges."""
    m = make_statsd(port=receiver.port, tags="none", prefix="w", report_interval=60)
    m.task_started("emails.send")
    m.task_finished("emails.send", 0.25, "smtplib.SMTPException")
    m.gauge("queue.size", -2, {"queue.name": "mail"})
    receiver.wait_for_count(2)
    assert [(x.name, x.value, x.type) for x in receiver.metrics()] == [
        ("w.task.duration.emails_send.failure", "250.000000", "ms"),
        ("w.task.completed.emails_send.failure.smtplib_SMTPException", "1", "c"),
        # statsd's own rule: a negative absolute gauge is sent as 0 first, then the value
        ("w.queue.size.mail", "0", "g"),
        ("w.queue.size.mail", "-2", "g"),
    ]


# -- choosing and sharing backends --------------------------------------------------------------


def test_metrics_for_shares_one_backend_per_equal_settings(receiver: StatsdReceiver) -> None:
    """Equal metrics settings share one instance (one socket per process); others get their own."""
    config = observekit.Config(metrics="statsd", statsd_host="127.0.0.1", statsd_port=receiver.port)
    first = okm.metrics_for(config)
    assert isinstance(first, StatsdMetrics)
    assert okm.metrics_for(config) is first
    same = observekit.Config(metrics="statsd", statsd_host="127.0.0.1", statsd_port=receiver.port)
    assert okm.metrics_for(same) is first
    other = okm.metrics_for(
        observekit.Config(metrics="statsd", statsd_host="127.0.0.1", statsd_port=receiver.port + 1)
    )
    assert other is not first
    first.close()
    assert okm.metrics_for(config) is not first


@pytest.mark.parametrize(
    ("settings_", "kind"),
    [
        pytest.param({}, None, id="auto-without-host"),
        pytest.param({"statsd_host": "127.0.0.1"}, StatsdMetrics, id="auto-with-host"),
        pytest.param({"metrics": "none", "statsd_host": "127.0.0.1"}, None, id="none"),
        pytest.param({"metrics": "memory"}, MemoryMetrics, id="memory"),
        pytest.param({"metrics": "otel"}, OtelMetrics, id="otel"),
    ],
)
def test_metrics_for_picks_the_backend_the_config_names(
    settings_: dict[str, Any], kind: type | None
) -> None:
    """auto is statsd when statsd_host is set, else none; the rest as named."""
    backend = okm.metrics_for(observekit.Config(**settings_))
    if kind is None:
        assert backend is None
    else:
        assert isinstance(backend, kind)


def test_configure_sets_the_default_and_get_default_falls_back_to_the_only_backend() -> None:
    """get_default(): configure()'s choice, else the one backend this process built, else None."""
    assert okm.get_default() is None
    only = okm.metrics_for(observekit.Config(metrics="memory"))
    assert okm.get_default() is only
    okm.metrics_for(observekit.Config(metrics="memory", service_name="other"))
    assert okm.get_default() is None  # two: ambiguous
    chosen = okm.configure(observekit.Config(metrics="memory", service_name="chosen"))
    assert isinstance(chosen, MemoryMetrics)
    assert okm.get_default() is chosen
    assert okm.configure(observekit.Config(metrics="none")) is None
    assert okm.get_default() is None


def test_configure_reads_the_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """configure() with no Config uses Config.from_env (OBSERVEKIT_METRICS, STATSD_HOST...)."""
    monkeypatch.setenv("OBSERVEKIT_METRICS", "memory")
    assert isinstance(okm.configure(), MemoryMetrics)


# -- OpenTelemetry ---------------------------------------------------------------------------


@pytest.fixture
def otel() -> Iterator[tuple[OtelMetrics, InMemoryMetricReader]]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    backend = OtelMetrics(
        meter_provider=provider, service_name="shop", service_version="1.2.3", environment="prod"
    )
    yield backend, reader
    backend.close()
    provider.shutdown()


def otel_points(reader: InMemoryMetricReader) -> dict[str, Any]:
    """Metric name -> (metric, its data points) from one collection."""
    data = reader.get_metrics_data()
    assert data is not None
    out = {}
    for resource_metrics in data.resource_metrics:
        for scope in resource_metrics.scope_metrics:
            assert scope.scope.name == "observekit"
            for metric in scope.metrics:
                out[metric.name] = (metric, list(metric.data.data_points))
    return out


def test_otel_request_metrics_follow_the_semantic_conventions(
    otel: tuple[OtelMetrics, InMemoryMetricReader],
) -> None:
    """Histogram in s with the advised buckets, counter, up-down counter, attributes as named."""
    backend, reader = otel
    one_request(backend, duration=0.0125)
    one_request(backend, duration=0.2)
    backend.request_started("POST")
    points = otel_points(reader)
    const = {"service.name": "shop", "service.version": "1.2.3", "deployment.environment": "prod"}
    attrs = {
        "http.request.method": "GET",
        "http.route": "/users/{id}",
        "http.response.status_code": 200,
        **const,
    }
    metric, [hist] = points["http.server.request.duration"]
    assert metric.unit == "s"
    assert dict(hist.attributes) == attrs
    assert hist.count == 2
    assert hist.sum == pytest.approx(0.2125)
    assert tuple(hist.explicit_bounds) == okm.DURATION_BUCKETS
    metric, [count] = points["http.server.requests"]
    assert (metric.unit, count.value, dict(count.attributes)) == ("{request}", 2, attrs)
    metric, active = points["http.server.active_requests"]
    assert metric.unit == "{request}"
    assert {p.attributes["http.request.method"]: p.value for p in active} == {"GET": 0, "POST": 1}
    assert "http.server.exceptions" not in points


def test_otel_exceptions_and_5xx_carry_error_type(
    otel: tuple[OtelMetrics, InMemoryMetricReader],
) -> None:
    """An exception counts in http.server.exceptions; 5xx without one gets error.type '503'."""
    backend, reader = otel
    one_request(backend, route="/boom", status=500, error="myapp.Boom")
    one_request(backend, route="/busy", status=503)
    one_request(backend, route="/gone", status=0, error="asyncio.CancelledError")
    points = otel_points(reader)
    _, excs = points["http.server.exceptions"]
    assert sorted((p.attributes["error.type"], p.value) for p in excs) == [
        ("asyncio.CancelledError", 1),
        ("myapp.Boom", 1),
    ]
    _, durations = points["http.server.request.duration"]
    by_route = {p.attributes["http.route"]: dict(p.attributes) for p in durations}
    assert by_route["/boom"]["error.type"] == "myapp.Boom"
    assert by_route["/busy"]["error.type"] == "503"
    assert "http.response.status_code" not in by_route["/gone"]


def test_otel_tasks_and_gauges(otel: tuple[OtelMetrics, InMemoryMetricReader]) -> None:
    """task.duration/completed/active and a queue.size gauge reach the MeterProvider."""
    backend, reader = otel
    backend.task_started("t")
    backend.task_finished("t", 0.5, None)
    backend.task_started("t")
    backend.task_finished("t", 0.1, "KeyError")
    backend.gauge("queue.size", 7, {"queue.name": "q"})
    points = otel_points(reader)
    _, completed = points["task.completed"]
    assert sorted(
        (p.attributes["task.outcome"], p.attributes.get("error.type"), p.value) for p in completed
    ) == [("failure", "KeyError", 1), ("success", None, 1)]
    _, [active] = points["task.active"]
    assert active.value == 0
    _, [gauge] = points["queue.size"]
    assert (gauge.value, gauge.attributes["queue.name"]) == (7, "q")


def test_two_otel_backends_on_one_provider_both_count() -> None:
    """Backends for two services on one MeterProvider share its instruments; no count is lost."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        a = OtelMetrics(meter_provider=provider, service_name="a")
        b = OtelMetrics(meter_provider=provider, service_name="b")
        one_request(a)
        one_request(b)
        one_request(b)
        _, counts = otel_points(reader)["http.server.requests"]
        assert sorted((p.attributes["service.name"], p.value) for p in counts) == [
            ("a", 1),
            ("b", 2),
        ]
    finally:
        provider.shutdown()


def test_otel_backend_never_raises_after_close_or_on_bad_values(
    otel: tuple[OtelMetrics, InMemoryMetricReader],
) -> None:
    """A closed backend and nonsense values are ignored without an exception."""
    backend, _reader = otel
    backend.gauge("queue.size", "not a number")  # type: ignore[arg-type]
    backend.close()
    one_request(backend)
    backend.flush(0.1)


# -- memory ------------------------------------------------------------------------------------


def test_memory_snapshot_and_percentiles() -> None:
    """Counts, nearest-rank p50/p95, active gauge, exceptions, tasks and gauges as plain data."""
    m = MemoryMetrics()
    for i in range(1, 101):
        one_request(m, duration=i / 1000)
    one_request(m, route="/boom", status=500, error="Boom")
    m.request_started("GET")
    m.task_started("t")
    m.task_finished("t", 0.3, "E")
    m.gauge("queue.size", 4, {"queue.name": "q"})
    snap = m.snapshot()
    users = next(r for r in snap["requests"] if r["http.route"] == "/users/{id}")
    assert users["count"] == 100
    assert users["p50"] == pytest.approx(0.050)
    assert users["p95"] == pytest.approx(0.095)
    assert users["max"] == pytest.approx(0.100)
    assert snap["active_requests"] == {"GET": 1}
    assert snap["exceptions"] == [
        {
            "http.request.method": "GET",
            "http.route": "/boom",
            "http.response.status_code": 500,
            "error.type": "Boom",
            "count": 1,
        }
    ]
    assert snap["tasks"] == [
        {"task.name": "t", "task.outcome": "failure", "error.type": "E", "count": 1}
    ]
    assert snap["gauges"] == [{"name": "queue.size", "attributes": {"queue.name": "q"}, "value": 4}]
    routes = m.by_route()
    assert routes["/boom"]["errors"] == 1
    assert routes["/users/{id}"]["errors"] == 0
    assert routes["/users/{id}"]["p95"] == pytest.approx(0.095)


def test_memory_backend_is_thread_safe_and_bounded() -> None:
    """Eight threads lose no count; durations kept per key never exceed max_samples."""
    m = MemoryMetrics(max_samples=100)

    def work() -> None:
        for _ in range(1000):
            one_request(m)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    [entry] = m.snapshot()["requests"]
    assert entry["count"] == 8000
    assert len(m._requests[("GET", "/users/{id}", 200)].values) == 100
    assert m.snapshot()["active_requests"] == {"GET": 0}


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        pytest.param([], 50, None, id="empty"),
        pytest.param([3.0], 95, 3.0, id="one"),
        pytest.param([1.0, 2.0, 3.0, 4.0], 50, 2.0, id="even"),
        pytest.param([5.0, 1.0, 4.0, 2.0, 3.0], 100, 5.0, id="max"),
    ],
)
def test_percentile_is_nearest_rank(values: list[float], q: float, expected: float | None) -> None:
    """percentile() picks an observed value (nearest rank), None when there are none."""
    assert percentile(values, q) == expected
