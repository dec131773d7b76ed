"""Circuit breakers and dependency-side faults on hooked httpx (sync, async) and requests calls.

Every call goes to a real HTTP server on 127.0.0.1 (tests/echo_server.py), which
records each request it receives, so "the host was not contacted" is counted there.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import observekit
from observekit import ConfigError, ObservekitError
from observekit.metrics.memory import MemoryMetrics
from observekit.propagation import headers as headers_module
from observekit.propagation import httpx as ok_httpx
from observekit.propagation import requests as ok_requests
from observekit.resilience import CircuitOpenError, FaultRule
from tests.conftest import LogCapture
from tests.echo_server import EchoServer, echo_server

CLIENTS = ["httpx", "ahttpx", "requests"]


@pytest.fixture(scope="module")
def server() -> Iterator[EchoServer]:
    with echo_server() as srv:
        yield srv


@pytest.fixture(autouse=True)
def _fresh_shared() -> Iterator[None]:
    headers_module._reset()
    yield
    headers_module._reset()


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def metrics() -> MemoryMetrics:
    return MemoryMetrics()


class Caller:
    """One client kind, hooked with a Config; ``get`` returns (status, headers) or raises."""

    def __init__(
        self, kind: str, config: observekit.Config, metrics: MemoryMetrics, exporter: Any
    ) -> None:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        hooks: dict[str, Any] = {"config": config, "metrics": metrics, "tracer_provider": provider}
        self.kind = kind
        if kind == "httpx":
            self.client: Any = ok_httpx.instrument_client(httpx.Client(), **hooks)
        elif kind == "ahttpx":
            self.client = ok_httpx.instrument_client(httpx.AsyncClient(), **hooks)
            self.loop = asyncio.new_event_loop()  # one loop: the pool's connections live on it
        else:
            self.client = ok_requests.instrument_session(requests.Session(), **hooks)

    def get(self, url: str, timeout: float = 5.0) -> tuple[int, dict[str, str]]:
        if self.kind == "ahttpx":
            return self.loop.run_until_complete(self.aget(url, timeout))
        response = self.client.get(url, timeout=timeout)
        return response.status_code, dict(response.headers)

    async def aget(self, url: str, timeout: float = 5.0) -> tuple[int, dict[str, str]]:
        response = await self.client.get(url, timeout=timeout)
        return response.status_code, dict(response.headers)

    def many(self, urls: list[str]) -> list[Any]:
        """All at once (threads, or asyncio tasks): each status, or the exception raised."""
        if self.kind == "ahttpx":

            async def run() -> list[Any]:
                async def one(url: str) -> Any:
                    try:
                        return (await self.aget(url))[0]
                    except Exception as exc:
                        return exc

                return await asyncio.gather(*(one(u) for u in urls))

            return self.loop.run_until_complete(run())
        out: list[Any] = [None] * len(urls)
        start = threading.Barrier(len(urls))

        def one(i: int) -> None:
            start.wait()
            try:
                out[i] = self.get(urls[i])[0]
            except Exception as exc:
                out[i] = exc

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(urls))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        return out

    def close(self) -> None:
        if self.kind == "ahttpx":
            self.loop.run_until_complete(self.client.aclose())
            self.loop.close()
        else:
            self.client.close()


def _hits(server: EchoServer, marker: str) -> int:
    with server.lock:
        return sum(1 for path, _ in server.seen if marker in path)


def _breaker_config(**kw: Any) -> observekit.Config:
    settings: dict[str, Any] = {
        "service_name": "test-svc",
        "breakers_enabled": True,
        "breaker_failure_threshold": 3,
        "breaker_open_seconds": 30.0,
    }
    settings.update(kw)
    return observekit.Config(**settings)


@pytest.fixture
def server2() -> Iterator[EchoServer]:
    """A fresh server per test: a fresh host:port, so a fresh breaker."""
    with echo_server() as srv:
        yield srv


@pytest.mark.parametrize("kind", CLIENTS)
def test_breaker_opens_after_threshold_and_fails_fast(
    kind: str, server2: EchoServer, metrics: MemoryMetrics, exporter: Any, logs: LogCapture
) -> None:
    """Three 5xx answers open the breaker; the next call raises CircuitOpenError (also the
    client's own error class) without reaching the server, counted as error.type
    circuit_open, with an error span; the transition is logged and counted."""
    caller = Caller(kind, _breaker_config(), metrics, exporter)
    marker = uuid.uuid4().hex
    try:
        for _ in range(3):
            assert caller.get(f"{server2.url}/status/500?m={marker}")[0] == 500
        assert _hits(server2, marker) == 3
        client_error = httpx.TransportError if kind != "requests" else requests.ConnectionError
        started = time.perf_counter()
        for _ in range(5):
            with pytest.raises(CircuitOpenError) as info:
                caller.get(f"{server2.url}/echo?m={marker}")
            assert isinstance(info.value, client_error)
            assert isinstance(info.value, ObservekitError)
        assert time.perf_counter() - started < 0.5
        assert _hits(server2, marker) == 3  # the host was never contacted
        assert info.value.state == "open"
        assert "is open: failing fast" in str(info.value)
    finally:
        caller.close()
    snap = metrics.snapshot()
    refused = [e for e in snap["client_errors"] if e["error.type"] == "circuit_open"]
    assert [e["count"] for e in refused] == [5]
    assert metrics.counter("observekit.breaker.transitions", **{"breaker.to": "open"}) == 1
    spans = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]
    open_spans = [s for s in spans if (s.attributes or {}).get("error.type") == "circuit_open"]
    assert len(open_spans) == 5
    assert open_spans[0].events[0].name == "exception"
    opened = [r for r in logs.lines() if r.get("breaker.to") == "open"]
    assert len(opened) == 1
    assert opened[0]["server.address"] == f"127.0.0.1:{server2.port}"


@pytest.mark.parametrize("kind", CLIENTS)
def test_half_open_admits_exactly_n_probes_then_closes(
    kind: str, server2: EchoServer, metrics: MemoryMetrics, exporter: Any
) -> None:
    """After open_seconds, 10 simultaneous calls: exactly 2 probes reach the server (the
    rest fail fast); both succeeding closes the breaker and calls flow again."""
    config = _breaker_config(breaker_open_seconds=0.3, breaker_half_open_probes=2)
    caller = Caller(kind, config, metrics, exporter)
    marker = uuid.uuid4().hex
    try:
        for _ in range(3):
            caller.get(f"{server2.url}/status/503?m={marker}")
        with pytest.raises(CircuitOpenError):
            caller.get(f"{server2.url}/echo?m={marker}")
        time.sleep(0.35)
        before = _hits(server2, marker)
        results = caller.many([f"{server2.url}/sleep?s=0.3&m={marker}"] * 10)
        assert sorted(r for r in results if isinstance(r, int)) == [200, 200]
        refused = [r for r in results if isinstance(r, CircuitOpenError)]
        assert len(refused) == 8
        assert all(r.state == "half_open" for r in refused)
        assert _hits(server2, marker) - before == 2
        assert [caller.get(f"{server2.url}/echo?m={marker}")[0] for _ in range(5)] == [200] * 5
    finally:
        caller.close()
    moves = [
        (c["attributes"]["breaker.from"], c["attributes"]["breaker.to"])
        for c in metrics.snapshot()["counters"]
        if c["name"] == "observekit.breaker.transitions"
    ]
    assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


@pytest.mark.parametrize("kind", CLIENTS)
def test_failed_probe_and_timeouts_reopen(
    kind: str, server2: EchoServer, metrics: MemoryMetrics, exporter: Any
) -> None:
    """Timeouts are failures: two read timeouts open the breaker; a probe that times out
    again opens it again (no call admitted after it)."""
    config = _breaker_config(breaker_failure_threshold=2, breaker_open_seconds=0.2)
    caller = Caller(kind, config, metrics, exporter)
    slow = f"{server2.url}/sleep?s=0.4"
    timeout_error = (httpx.TimeoutException, requests.Timeout, requests.ConnectionError)
    try:
        for _ in range(2):
            with pytest.raises(timeout_error):
                caller.get(slow, timeout=0.1)
        with pytest.raises(CircuitOpenError):
            caller.get(f"{server2.url}/echo")
        time.sleep(0.25)
        with pytest.raises(timeout_error) as info:
            caller.get(slow, timeout=0.1)
        assert not isinstance(info.value, CircuitOpenError)
        with pytest.raises(CircuitOpenError) as refused:
            caller.get(f"{server2.url}/echo")
        assert refused.value.state == "open"
    finally:
        caller.close()


def test_breaker_hosts_limits_which_hosts_get_one(
    server2: EchoServer, metrics: MemoryMetrics, exporter: Any
) -> None:
    """With breaker_hosts=("localhost",), calls to 127.0.0.1 never open a breaker."""
    config = _breaker_config(breaker_failure_threshold=1, breaker_hosts=("localhost",))
    caller = Caller("httpx", config, metrics, exporter)
    try:
        for _ in range(5):
            assert caller.get(f"{server2.url}/status/500")[0] == 500
        assert caller.get(f"http://localhost:{server2.port}/status/500")[0] == 500
        with pytest.raises(CircuitOpenError):
            caller.get(f"http://localhost:{server2.port}/echo")
    finally:
        caller.close()


# -- faults ------------------------------------------------------------------------------


def _fault_config(*rules: FaultRule, **kw: Any) -> observekit.Config:
    return observekit.Config(service_name="test-svc", faults_enabled=True, fault_rules=rules, **kw)


def _binomial_interval(n: int, p: float, level: float = 0.99) -> tuple[int, int]:
    """The central ``level`` interval of Binomial(n, p), from its exact CDF."""
    pmf = [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]
    tail = (1 - level) / 2
    low, acc = 0, 0.0
    while acc + pmf[low] < tail:
        acc += pmf[low]
        low += 1
    high, acc = n, 0.0
    while acc + pmf[high] < tail:
        acc += pmf[high]
        high -= 1
    return low, high


@pytest.mark.parametrize("kind", ["httpx", "requests"])
def test_latency_on_ten_percent_of_matching_host_only(
    kind: str, server: EchoServer, metrics: MemoryMetrics, exporter: Any
) -> None:
    """p=0.1, +40 ms, host localhost: over 400 calls the number slowed is in the binomial
    99 % interval; each marked call's span lasted >= 40 ms (the latency counts toward the
    duration); 100 calls to 127.0.0.1 (same server, other host name) are never touched."""
    rule = FaultRule(side="client", hosts=("localhost",), latency=0.04, probability=0.1)
    caller = Caller(kind, _fault_config(rule), metrics, exporter)
    n = 400
    try:
        for _ in range(n):
            caller.get(f"http://localhost:{server.port}/echo")
        for _ in range(100):
            caller.get(f"{server.url}/echo")
    finally:
        caller.close()
    low, high = _binomial_interval(n, 0.1)
    injected = metrics.counter("observekit.faults.injected", **{"fault.side": "client"})
    assert low <= injected <= high, (low, injected, high)
    spans = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert len(spans) == n + 100
    marked = [s for s in spans if "fault.injected" in (s.attributes or {})]
    assert len(marked) == injected
    for span in marked:
        assert span.attributes is not None
        assert span.attributes["server.address"] == "localhost"
        assert span.end_time is not None
        assert span.start_time is not None
        assert span.end_time - span.start_time >= 40_000_000
    durations = {e["server.address"]: e for e in metrics.snapshot()["client_requests"]}
    assert durations["localhost"]["max"] >= 0.04
    assert durations["127.0.0.1"]["count"] == 100


@pytest.mark.parametrize("kind", CLIENTS)
def test_injected_timeout_raises_the_clients_timeout(
    kind: str, server2: EchoServer, metrics: MemoryMetrics, exporter: Any, logs: LogCapture
) -> None:
    """timeout=True raises httpx.ReadTimeout / requests.ReadTimeout without contacting the
    host, counted as error.type timeout and marked on the span and the DEBUG line."""
    rule = FaultRule(side="client", timeout=True, latency=0.05, name="slow-dep")
    caller = Caller(kind, _fault_config(rule), metrics, exporter)
    expected = requests.exceptions.ReadTimeout if kind == "requests" else httpx.ReadTimeout
    marker = uuid.uuid4().hex
    try:
        started = time.perf_counter()
        with pytest.raises(expected):
            caller.get(f"{server2.url}/echo?m={marker}")
        assert time.perf_counter() - started >= 0.05
    finally:
        caller.close()
    assert _hits(server2, marker) == 0
    (error,) = metrics.snapshot()["client_errors"]
    assert error["error.type"] == "timeout"
    (span,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert span.attributes is not None
    assert span.attributes["fault.injected"] == "latency+timeout 50ms (slow-dep)"
    (line,) = [r for r in logs.lines() if r.get("logger") == "observekit.client"]
    assert line["fault.injected"] == "latency+timeout 50ms (slow-dep)"


@pytest.mark.parametrize("kind", CLIENTS)
def test_latency_beyond_read_timeout_times_out_at_the_timeout(
    kind: str, server2: EchoServer, metrics: MemoryMetrics, exporter: Any
) -> None:
    """+300 ms on a call with a 100 ms timeout: the client's ReadTimeout after ~100 ms,
    as a really slow dependency would give."""
    rule = FaultRule(side="client", latency=0.3)
    caller = Caller(kind, _fault_config(rule), metrics, exporter)
    expected = requests.exceptions.ReadTimeout if kind == "requests" else httpx.ReadTimeout
    try:
        started = time.perf_counter()
        with pytest.raises(expected):
            caller.get(f"{server2.url}/echo", timeout=0.1)
        assert 0.09 <= time.perf_counter() - started < 0.25
    finally:
        caller.close()


@pytest.mark.parametrize("kind", CLIENTS)
def test_injected_status_returns_without_hitting_the_server(
    kind: str, server2: EchoServer, metrics: MemoryMetrics, exporter: Any
) -> None:
    """status=503 on path /api/*: a synthetic 503 (marked with X-Observekit-Fault), the
    server never sees it; other paths go through. With a breaker, the 503s open it."""
    rule = FaultRule(side="client", status=503, paths=("/api/*",))
    config = _fault_config(rule, breakers_enabled=True, breaker_failure_threshold=2)
    caller = Caller(kind, config, metrics, exporter)
    marker = uuid.uuid4().hex
    try:
        assert caller.get(f"{server2.url}/echo?m={marker}")[0] == 200
        status, headers = caller.get(f"{server2.url}/api/x?m={marker}")
        assert status == 503
        assert {k.lower(): v for k, v in headers.items()}["x-observekit-fault"] == "rule0"
        assert _hits(server2, marker) == 1
        caller.get(f"{server2.url}/api/x?m={marker}")
        with pytest.raises(CircuitOpenError):
            caller.get(f"{server2.url}/echo?m={marker}")
        assert _hits(server2, marker) == 1
    finally:
        caller.close()
    assert metrics.counter("observekit.faults.injected", **{"fault.type": "error"}) == 2


def test_kill_switch_and_off_by_default(
    server: EchoServer, metrics: MemoryMetrics, exporter: Any, monkeypatch: Any
) -> None:
    """Client rules without faults_enabled inject nothing (and add no per-call object);
    OBSERVEKIT_FAULTS_KILL=1 stops injection."""
    rule = FaultRule(side="client", status=503)
    off = observekit.Config(service_name="off", fault_rules=(rule,))
    assert headers_module.outgoing_for(off, metrics=metrics).resilience is None
    assert headers_module.outgoing_for(observekit.Config(), metrics=metrics).resilience is None
    monkeypatch.setenv("OBSERVEKIT_FAULTS_KILL", "1")
    caller = Caller("httpx", _fault_config(rule), metrics, exporter)
    try:
        assert caller.get(f"{server.url}/echo")[0] == 200
    finally:
        caller.close()


# -- config ------------------------------------------------------------------------------


def test_config_env_equals_code() -> None:
    """The OBSERVEKIT_BREAKER* variables give the same Config as the keyword arguments."""
    env = {
        "OBSERVEKIT_BREAKERS_ENABLED": "1",
        "OBSERVEKIT_BREAKER_FAILURE_THRESHOLD": "7",
        "OBSERVEKIT_BREAKER_FAILURE_RATIO": "0.5",
        "OBSERVEKIT_BREAKER_WINDOW": "20",
        "OBSERVEKIT_BREAKER_OPEN_SECONDS": "2.5",
        "OBSERVEKIT_BREAKER_HALF_OPEN_PROBES": "3",
        "OBSERVEKIT_BREAKER_HOSTS": "service2, *.internal",
    }
    code = observekit.Config(
        breakers_enabled=True,
        breaker_failure_threshold=7,
        breaker_failure_ratio=0.5,
        breaker_window=20.0,
        breaker_open_seconds=2.5,
        breaker_half_open_probes=3,
        breaker_hosts=("service2", "*.internal"),
    )
    assert observekit.Config.from_env(env) == code


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"breakers_enabled": "yes"}, "breakers_enabled"),
        ({"breaker_failure_threshold": 0}, "breaker_failure_threshold"),
        ({"breaker_failure_ratio": 1.5}, "breaker_failure_ratio"),
        ({"breaker_open_seconds": -1}, "breaker_open_seconds"),
        ({"breaker_half_open_probes": 0}, "breaker_half_open_probes"),
        ({"breaker_hosts": "service2"}, "breaker_hosts"),
    ],
)
def test_bad_breaker_config(kwargs: dict[str, Any], field: str) -> None:
    """Bad breaker settings fail at Config time, naming the field."""
    with pytest.raises(ConfigError) as info:
        observekit.Config(**kwargs)
    assert info.value.field == field


# -- the chaos example -------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_chaos_example_runs() -> None:
    """examples/chaos/run.py (real gunicorn and uvicorn): the injected 300 ms opens
    service1's breaker, a probe closes it, and killing a gunicorn worker under load fails
    no more requests than were in flight."""
    script = Path(__file__).resolve().parents[1] / "examples" / "chaos" / "run.py"
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=80, check=False
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "closed -> open" in out
    assert "half_open -> closed" in out
    assert '"error.type": "circuit_open"' in out
    assert "latency 300ms (slow-service2)" in out
    assert "RESULT: ok" in out
