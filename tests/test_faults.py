"""Fault injection: off unless enabled, the observed rate within the binomial interval, only
matching requests, never health endpoints, kill switches, and every fault marked."""

from __future__ import annotations

import asyncio
import math
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from observekit import Config, ConfigError
from observekit.asgi import ObservabilityMiddleware as AsgiMiddleware
from observekit.metrics.memory import MemoryMetrics
from observekit.resilience import FaultRule, FaultRules, parse_rules
from observekit.resilience.faults import INJECTED, KILL_ENV
from observekit.wsgi import ObservabilityMiddleware
from tests.util import call


def ok_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def binomial_99(n: int, p: float) -> tuple[float, float]:
    """The normal approximation of the two-sided 99 % interval of a Binomial(n, p) count."""
    sd = math.sqrt(n * p * (1 - p))
    return n * p - 2.576 * sd, n * p + 2.576 * sd


def test_ten_percent_over_10000_requests(logs) -> None:  # type: ignore[no-untyped-def]
    """10 % error faults on /api/*: observed count within the binomial 99 % interval, only
    /api/* affected, health never, each fault on its access line and counted."""
    config = Config(
        faults_enabled=True,
        fault_rules=(FaultRule(probability=0.1, status=503, paths=("/api/*",)),),
        metrics="memory",
        access_log_exclude_paths=(),
    )
    app = ObservabilityMiddleware(ok_app, config=config)
    metrics = app.observer.metrics
    assert isinstance(metrics, MemoryMetrics)
    metrics.clear()
    api = [call(app, "/api/items").status[:3] for _ in range(10_000)]
    other = [call(app, "/other").status[:3] for _ in range(1000)]
    health = [call(app, path).status[:3] for path in ("/healthz", "/readyz") for _ in range(500)]
    low, high = binomial_99(10_000, 0.1)
    injected = api.count("503")
    assert low <= injected <= high, (low, injected, high)
    assert set(api) == {"200", "503"}
    assert set(other) == {"200"}
    assert set(health) == {"200"}
    assert metrics.counter(INJECTED, **{"fault.type": "error", "fault.side": "server"}) == injected
    marked = [ln for ln in logs.access() if "fault.injected" in ln]
    assert len(marked) == injected
    assert marked[0]["fault.injected"] == "error 503 (rule0)"
    assert {ln["url.path"] for ln in marked} == {"/api/items"}


def test_off_unless_enabled() -> None:
    """Rules without faults_enabled inject nothing (and build no guard at all)."""
    config = Config(fault_rules=(FaultRule(status=500),))
    app = ObservabilityMiddleware(ok_app, config=config)
    assert app.observer.guards is None
    assert all(call(app, "/").status.startswith("200") for _ in range(50))


def test_latency_method_and_secret_header(logs) -> None:  # type: ignore[no-untyped-def]
    """Latency added only to POSTs carrying the shared secret; marked on the access line."""
    rule = FaultRule(latency=0.2, methods=("POST",), header=("X-Chaos-Key", "s3cret"))
    app = ObservabilityMiddleware(ok_app, config=Config(faults_enabled=True, fault_rules=(rule,)))

    def timed(method: str, headers: dict[str, str]) -> float:
        start = time.perf_counter()
        assert call(app, "/", headers, REQUEST_METHOD=method).status.startswith("200")
        return time.perf_counter() - start

    assert timed("POST", {"X-Chaos-Key": "s3cret"}) >= 0.2
    assert timed("POST", {"X-Chaos-Key": "wrong"}) < 0.1
    assert timed("GET", {"X-Chaos-Key": "s3cret"}) < 0.1
    assert timed("POST", {}) < 0.1
    marked = [ln["fault.injected"] for ln in logs.access() if "fault.injected" in ln]
    assert marked == ["latency 200ms (rule0)"]


def test_kill_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kill file (re-read at most once a second) and the kill env turn every rule off."""
    kill = tmp_path / "faults.off"
    now = [0.0]
    rules = FaultRules([FaultRule(status=500)], enabled=True, kill_file=str(kill))
    monkeypatch.setattr("observekit.resilience.faults.time.monotonic", lambda: now[0])

    def decide() -> object:
        return rules.decide(side="server", method="GET", path="/", headers={})

    assert decide() is not None
    kill.touch()
    now[0] += 0.5
    assert decide() is not None  # not looked at again within the second
    now[0] += 0.6
    assert decide() is None
    kill.unlink()
    now[0] += 1.1
    assert decide() is not None
    monkeypatch.setenv(KILL_ENV, "1")
    now[0] += 1.1
    assert decide() is None


def test_client_side_rules_by_host() -> None:
    """Dependency-side rules match outgoing calls per host (what the httpx/requests hooks call)."""
    rules = FaultRules(
        [
            FaultRule(side="client", hosts=("Service2",), latency=(0.2, 0.4)),
            FaultRule(side="client", hosts=("slow",), timeout=True),
        ],
        enabled=True,
    )
    fault = rules.decide(side="client", method="GET", path="/x", headers={}, host="service2")
    assert fault is not None
    assert 0.2 <= fault.latency <= 0.4
    assert fault.kind == "latency"
    timeout = rules.decide(side="client", method="GET", path="/", headers={}, host="slow")
    assert timeout is not None
    assert timeout.timeout
    assert timeout.kind == "timeout"
    assert rules.decide(side="client", method="GET", path="/", headers={}, host="other") is None
    assert rules.decide(side="server", method="GET", path="/", headers={}) is None


def test_asgi_latency_does_not_block_the_loop() -> None:
    """Under ASGI injected latency is an asyncio sleep: ten delayed requests overlap."""
    rule = FaultRule(latency=0.2)

    async def ok(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    app = AsgiMiddleware(ok, config=Config(faults_enabled=True, fault_rules=(rule,)))

    async def main() -> float:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            start = time.perf_counter()
            await asyncio.gather(*(client.get("/") for _ in range(10)))
            return time.perf_counter() - start

    assert 0.2 <= asyncio.run(main()) < 0.6


def test_rules_from_env_equal_code() -> None:
    """OBSERVEKIT_FAULT_RULES gives the same Config as the rules written in code."""
    env = {
        "OBSERVEKIT_FAULTS_ENABLED": "1",
        "OBSERVEKIT_FAULT_RULES": "p=0.1,latency=0.3,path=/api/*,method=GET|POST;"
        "side=client,host=service2,latency=0.2..0.4,name=slowdep",
    }
    code = Config(
        faults_enabled=True,
        fault_rules=(
            FaultRule(probability=0.1, latency=0.3, paths=("/api/*",), methods=("GET", "POST")),
            FaultRule(side="client", hosts=("service2",), latency=(0.2, 0.4), name="slowdep"),
        ),
    )
    assert Config.from_env(env) == code
    with pytest.raises(ConfigError, match="OBSERVEKIT_FAULT_RULES"):
        Config.from_env({"OBSERVEKIT_FAULT_RULES": "p=0.1"})
    with pytest.raises(ValueError, match="unknown fault rule key"):
        parse_rules("sometimes=1")


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"probability": 2, "status": 500}, id="probability"),
        pytest.param({"status": 700}, id="status"),
        pytest.param({"latency": -1}, id="latency"),
        pytest.param({"timeout": True}, id="timeout-server"),
        pytest.param({}, id="nothing"),
    ],
)
def test_bad_rules_raise(kwargs: dict[str, Any]) -> None:
    """A rule that could not do what it says is a ValueError when built."""
    with pytest.raises(ValueError, match=r"must|needs|applies"):
        FaultRule(**kwargs)


def test_env_kill_var_is_not_set_in_tests() -> None:
    """Guard for the suite: a stray kill switch in the environment would hide failures."""
    assert KILL_ENV not in os.environ


def test_fault_marked_on_span_and_health_untraced() -> None:
    """An injected fault is an attribute of the request's server span (exported over real
    OTLP/HTTP); health probes make no span at all."""
    import observekit.tracing
    from tests.otlp_receiver import OTLPReceiver

    with OTLPReceiver() as receiver:
        config = Config(
            traces_exporter="otlp",
            otlp_endpoint=receiver.endpoint,
            faults_enabled=True,
            fault_rules=(FaultRule(status=503, paths=("/chaos",)),),
        )
        provider = observekit.tracing.configure(config, set_global=False, schedule_delay=0.05)
        try:
            app = ObservabilityMiddleware(ok_app, config=config, tracer_provider=provider)
            assert call(app, "/healthz").status.startswith("200")
            assert call(app, "/chaos").status.startswith("503")
            provider.force_flush()
            (span,) = receiver.wait_for(lambda spans: len(spans) >= 1, timeout=10)
        finally:
            provider.shutdown()
            observekit.logging.use_trace_ids(None)
    assert span["attributes"]["fault.injected"] == "error 503 (rule0)"
    assert span["attributes"]["url.path"] == "/chaos"
