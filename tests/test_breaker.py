"""Circuit breakers: state machine, exact half-open probes under threads and asyncio, logs, metrics."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from observekit.metrics.memory import MemoryMetrics
from observekit.resilience import BreakerRegistry, CircuitBreaker, CircuitOpenError
from observekit.resilience.breaker import TRANSITIONS


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        with pytest.raises(RuntimeError), breaker.guard():
            raise RuntimeError("dependency down")


def test_consecutive_failures_open_then_fail_fast() -> None:
    """N consecutive failures open it; then calls fail fast with CircuitOpenError (no call made)."""
    clock = Clock()
    breaker = CircuitBreaker("api", failure_threshold=3, open_for=10.0, clock=clock)
    _fail(breaker, 2)
    with breaker.guard():
        pass  # a success resets the consecutive count
    _fail(breaker, 2)
    assert breaker.state == "closed"
    _fail(breaker, 1)
    assert breaker.state == "open"
    with pytest.raises(CircuitOpenError) as info:
        breaker.acquire()
    assert info.value.state == "open"
    assert info.value.retry_after == pytest.approx(10.0)
    assert "circuit 'api' is open" in str(info.value)


def test_half_open_probe_success_closes_failure_reopens() -> None:
    """After open_for the probes run: all succeed -> closed; one fails -> open again."""
    clock = Clock()
    breaker = CircuitBreaker(
        "api", failure_threshold=1, open_for=5.0, half_open_probes=2, clock=clock
    )
    _fail(breaker, 1)
    clock.now += 5.0
    assert breaker.state == "half_open"
    p1, p2 = breaker.acquire(), breaker.acquire()
    with pytest.raises(CircuitOpenError) as info:
        breaker.acquire()
    assert info.value.state == "half_open"
    p1.success()
    assert breaker.state == "half_open"
    p2.success()
    assert breaker.state == "closed"
    _fail(breaker, 1)
    clock.now += 5.0
    with pytest.raises(RuntimeError), breaker.guard():
        raise RuntimeError("still down")
    assert breaker.state == "open"


def test_failure_ratio_over_window() -> None:
    """Ratio mode opens when failures/calls >= ratio with min_calls in the window; old calls age out."""
    clock = Clock()
    breaker = CircuitBreaker(
        "api", failure_ratio=0.5, window=10.0, min_calls=4, open_for=1.0, clock=clock
    )
    for ok in (True, False, True):
        breaker.acquire().success() if ok else breaker.acquire().failure()
    assert breaker.state == "closed"  # 1 of 3: too few calls anyway
    clock.now += 11.0  # all of those age out
    for ok in (True, True, True, False):
        breaker.acquire().success() if ok else breaker.acquire().failure()
    assert breaker.state == "closed"  # 1 of 4
    breaker.acquire().failure()
    assert breaker.state == "closed"  # 2 of 5
    breaker.acquire().failure()
    assert breaker.state == "open"  # 3 of 6 = 0.5


def test_stale_outcome_is_ignored() -> None:
    """A call admitted while closed that reports after the breaker opened changes nothing."""
    clock = Clock()
    breaker = CircuitBreaker("api", failure_threshold=1, open_for=5.0, clock=clock)
    slow = breaker.acquire()
    _fail(breaker, 1)
    clock.now += 5.0
    probe = breaker.acquire()
    slow.success()  # from the closed era: must not close the breaker
    assert breaker.state == "half_open"
    probe.success()
    assert breaker.state == "closed"


def test_exceptions_not_counted_and_cancellation() -> None:
    """``counts`` decides what is a failure; a CancelledError (BaseException) is not one."""
    breaker = CircuitBreaker(
        "api", failure_threshold=1, counts=lambda exc: not isinstance(exc, KeyError)
    )
    with pytest.raises(KeyError), breaker.guard():
        raise KeyError("not the dependency's fault")
    with pytest.raises(asyncio.CancelledError), breaker.guard():
        raise asyncio.CancelledError
    assert breaker.state == "closed"


def test_transitions_logged_and_counted(logs) -> None:  # type: ignore[no-untyped-def]
    """Every state change writes one line (WARNING when it opens) and counts one transition."""
    clock = Clock()
    metrics = MemoryMetrics()
    breaker = CircuitBreaker(
        "service2:8000", failure_threshold=2, open_for=1.0, clock=clock, metrics=metrics
    )
    _fail(breaker, 2)
    clock.now += 1.0
    breaker.acquire().success()
    lines = logs.by_logger("observekit.breaker")
    assert [(ln["level"], ln["breaker.from"], ln["breaker.to"]) for ln in lines] == [
        ("WARNING", "closed", "open"),
        ("INFO", "open", "half_open"),
        ("INFO", "half_open", "closed"),
    ]
    assert lines[0]["message"] == "circuit service2:8000: closed -> open"
    assert metrics.counter(TRANSITIONS, **{"breaker.to": "open"}) == 1
    assert metrics.counter(TRANSITIONS, **{"server.address": "service2:8000"}) == 3


@pytest.mark.parametrize("probes", [pytest.param(1, id="1-probe"), pytest.param(3, id="3-probes")])
def test_exactly_n_probes_under_500_threads(probes: int) -> None:
    """500 threads released together at the moment it turns half-open: exactly N reach the dependency."""
    breaker = CircuitBreaker("dep", failure_threshold=1, open_for=0.2, half_open_probes=probes)
    _fail(breaker, 1)
    reached = 0
    fast = 0
    count_lock = threading.Lock()
    start = threading.Barrier(500)
    release_dependency = threading.Event()

    def caller() -> None:
        nonlocal reached, fast
        start.wait()
        try:
            with breaker.guard():
                with count_lock:
                    reached += 1
                release_dependency.wait(5)  # the probe call is slow: others arrive meanwhile
        except CircuitOpenError:
            with count_lock:
                fast += 1

    threads = [threading.Thread(target=caller) for _ in range(500)]
    time.sleep(0.2)  # open_for elapses: the first caller to arrive turns it half-open
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while fast + reached < 500 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert reached == probes
    assert fast == 500 - probes
    release_dependency.set()
    for t in threads:
        t.join()
    assert breaker.state == "closed"


@pytest.mark.parametrize("probes", [pytest.param(1, id="1-probe"), pytest.param(3, id="3-probes")])
def test_exactly_n_probes_under_500_tasks(probes: int) -> None:
    """500 asyncio tasks at the moment it turns half-open: exactly N reach the dependency."""

    async def main() -> tuple[int, int]:
        breaker = CircuitBreaker("dep", failure_threshold=1, open_for=0.1, half_open_probes=probes)
        breaker.acquire().failure()
        await asyncio.sleep(0.1)
        reached = fast = 0
        gate = asyncio.Event()

        async def caller() -> None:
            nonlocal reached, fast
            try:
                async with breaker.guard():
                    reached += 1
                    await gate.wait()
            except CircuitOpenError:
                fast += 1

        tasks = [asyncio.create_task(caller()) for _ in range(500)]
        while reached + fast < 500:
            await asyncio.sleep(0.01)
        counts = (reached, fast)
        gate.set()
        await asyncio.gather(*tasks)
        assert breaker.state == "closed"
        return counts

    assert asyncio.run(main()) == (probes, 500 - probes)


def test_registry_per_host_and_bounded() -> None:
    """One breaker per host with shared settings; open ones survive eviction beyond max_hosts."""
    registry = BreakerRegistry(max_hosts=2, failure_threshold=1, open_for=60.0)
    with pytest.raises(RuntimeError), registry.guard("a"):
        raise RuntimeError
    with registry.guard("b"):
        pass
    with pytest.raises(CircuitOpenError):
        registry.guard("a")
    with registry.guard("c"):  # third host: the oldest closed one (b) goes
        pass
    assert registry.states() == {"a": "open", "c": "closed"}


def test_bad_settings_raise() -> None:
    """Invalid breaker settings raise ValueError/TypeError when built."""
    with pytest.raises(ValueError, match="half_open_probes"):
        CircuitBreaker(half_open_probes=0)
    with pytest.raises(ValueError, match="failure_ratio"):
        BreakerRegistry(failure_ratio=1.5)
    with pytest.raises(TypeError):
        CircuitBreaker(failure_threshold="5")  # type: ignore[arg-type]
