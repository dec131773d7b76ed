"""Rate limiting: GCRA arithmetic, the memory backend under threads and asyncio, the Redis
backend against the real Redis (sync and asyncio), its fail modes when Redis is down or
hung, and the 429 answers the middleware sends."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from typing import Any

import httpx
import pytest
import redis

from observekit import Config
from observekit.asgi import ObservabilityMiddleware as AsgiMiddleware
from observekit.metrics.memory import MemoryMetrics
from observekit.resilience import MemoryRateLimiter, RateLimit, client_address
from observekit.resilience.guards import BACKEND_ERRORS
from observekit.resilience.ratelimit import RATE_LIMITED
from observekit.resilience.ratelimit_redis import (
    AsyncRedisRateLimiter,
    RateLimitBackendError,
    RedisRateLimiter,
)
from observekit.wsgi import ObservabilityMiddleware
from tests.redis_util import blackhole_port, closed_port, redis_url
from tests.util import call

__all__ = ["blackhole_port", "redis_url"]  # fixtures used below


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def ok_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


async def ok_asgi(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize(
    ("spec", "limit", "period"),
    [
        pytest.param("100/minute", 100, 60.0, id="minute"),
        pytest.param("10/second", 10, 1.0, id="second"),
        pytest.param("20/10s", 20, 10.0, id="10s"),
        pytest.param(" 5 / hours ", 5, 3600.0, id="spaces-plural"),
        pytest.param("1/day", 1, 86400.0, id="day"),
    ],
)
def test_parse_specs(spec: str, limit: int, period: float) -> None:
    """Specs parse to (limit, period); burst defaults to the limit."""
    rate = RateLimit.parse(spec)
    assert (rate.limit, rate.period, rate.burst) == (limit, period, limit)


@pytest.mark.parametrize("spec", ["100", "0/minute", "10/fortnight", "x/s", ""])
def test_bad_specs_raise(spec: str) -> None:
    """A malformed spec is a ValueError naming the format (and a ConfigError in Config)."""
    with pytest.raises(ValueError, match="rate limit"):
        RateLimit.parse(spec)


def test_gcra_burst_then_sustained_rate() -> None:
    """From cold: exactly `burst` at once, then one per emission interval, with honest headers."""
    clock = Clock()
    limiter = MemoryRateLimiter(clock=clock)
    rate = RateLimit.parse("10/second")
    decisions = [limiter.hit("k", rate) for _ in range(11)]
    assert [d.allowed for d in decisions] == [True] * 10 + [False]
    assert [d.remaining for d in decisions[:10]] == list(range(9, -1, -1))
    denied = decisions[-1]
    assert denied.retry_after == pytest.approx(0.1)
    assert denied.reset_after == pytest.approx(1.0)
    clock.now += 0.1
    assert limiter.hit("k", rate).allowed
    assert not limiter.hit("k", rate).allowed
    clock.now += 1.0  # fully replenished
    assert sum(limiter.hit("k", rate).allowed for _ in range(20)) == 10


def test_memory_exact_under_threads() -> None:
    """32 threads x 50 tries on one key within one window: exactly 100 allowed."""
    limiter = MemoryRateLimiter()
    rate = RateLimit.parse("100/hour")
    allowed = 0
    lock = threading.Lock()
    barrier = threading.Barrier(32)

    def worker() -> None:
        nonlocal allowed
        barrier.wait()
        mine = sum(limiter.hit("shared", rate).allowed for _ in range(50))
        with lock:
            allowed += mine

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert allowed == 100


def test_memory_exact_under_asyncio() -> None:
    """500 tasks on one key: exactly 100 allowed."""

    async def main() -> int:
        limiter = MemoryRateLimiter()
        rate = RateLimit.parse("100/hour")
        results = await asyncio.gather(*(limiter.ahit("k", rate) for _ in range(500)))
        return sum(d.allowed for d in results)

    assert asyncio.run(main()) == 100


def test_memory_bounded_by_lru() -> None:
    """Beyond max_keys the least recently used key is evicted; recent ones keep their state."""
    clock = Clock()
    limiter = MemoryRateLimiter(max_keys=3, clock=clock)
    rate = RateLimit.parse("1/hour")
    for key in ("a", "b", "c"):
        assert limiter.hit(key, rate).allowed
    assert not limiter.hit("a", rate).allowed  # "a" is now the most recent
    assert limiter.hit("d", rate).allowed  # evicts "b"
    assert len(limiter) == 3
    assert limiter.hit("b", rate).allowed  # forgotten, so fresh again (evicts "c")
    assert not limiter.hit("a", rate).allowed


@pytest.mark.parametrize(
    ("xff", "trusted", "expected"),
    [
        pytest.param(None, 1, "10.0.0.9", id="no-header"),
        pytest.param("1.1.1.1", 0, "10.0.0.9", id="untrusted"),
        pytest.param("6.6.6.6, 1.1.1.1", 1, "1.1.1.1", id="one-proxy-ignores-spoof"),
        pytest.param("6.6.6.6, 1.1.1.1, 172.16.0.2", 2, "1.1.1.1", id="two-proxies"),
        pytest.param("1.1.1.1", 2, "10.0.0.9", id="too-few-hops"),
    ],
)
def test_client_address_trusts_exactly_n_proxies(
    xff: str | None, trusted: int, expected: str
) -> None:
    """X-Forwarded-For: the n-th entry from the right with n trusted proxies, never further left."""
    headers = {"x-forwarded-for": xff} if xff else {}
    assert client_address("10.0.0.9", headers, trusted) == expected


def test_middleware_429_with_headers_and_metrics(logs) -> None:  # type: ignore[no-untyped-def]
    """Past the limit: 429, Retry-After, RateLimit-* headers, X-Request-ID, an access line, a count."""
    config = Config(service_name="rl", rate_limit="3/minute", metrics="memory")
    app = ObservabilityMiddleware(ok_app, config=config)
    metrics = app.observer.metrics
    assert isinstance(metrics, MemoryMetrics)
    metrics.clear()
    statuses = [call(app, "/x").status for _ in range(4)]
    assert statuses == ["200 OK"] * 3 + ["429 Too Many Requests"]
    denied = call(app, "/x")
    assert denied.header_values("Retry-After") == ["20"]
    assert denied.header_values("RateLimit-Limit") == ["3"]
    assert denied.header_values("RateLimit-Remaining") == ["0"]
    assert int(denied.header_values("RateLimit-Reset")[0]) in (59, 60)
    assert len(denied.header_values("X-Request-ID")) == 1
    assert json.loads(denied.body) == {"error": "rate limited", "retry_after": 20}
    assert metrics.counter(RATE_LIMITED) == 2
    assert [ln["http.response.status_code"] for ln in logs.access()][-2:] == [429, 429]
    assert call(app, "/healthz").status == "200 OK"  # health is never limited


def test_middleware_per_route_and_header_key() -> None:
    """Per-path limits come first; an API-key header keys the limit, the address is the fallback."""
    config = Config(
        rate_limit="100/minute",
        rate_limit_routes=(("/login", "1/minute"),),
        rate_limit_key="header:X-API-Key",
    )
    app = ObservabilityMiddleware(ok_app, config=config)
    assert call(app, "/login", {"X-API-Key": "a"}).status.startswith("200")
    assert call(app, "/login", {"X-API-Key": "a"}).status.startswith("429")
    assert call(app, "/login", {"X-API-Key": "b"}).status.startswith("200")
    assert call(app, "/login").status.startswith("200")  # no key: by address
    assert call(app, "/login").status.startswith("429")
    assert call(app, "/other", {"X-API-Key": "a"}).status.startswith("200")  # the global limit


def test_middleware_trusted_proxy_key() -> None:
    """Behind one trusted proxy, clients are told apart by X-Forwarded-For's last entry only."""
    app = ObservabilityMiddleware(ok_app, config=Config(rate_limit="1/minute", trusted_proxies=1))
    spoofed = {"X-Forwarded-For": "9.9.9.9, 1.1.1.1"}
    assert call(app, "/", {"X-Forwarded-For": "1.1.1.1"}).status.startswith("200")
    assert call(app, "/", spoofed).status.startswith("429")  # the spoofed part is ignored
    assert call(app, "/", {"X-Forwarded-For": "2.2.2.2"}).status.startswith("200")


def test_callable_key_none_means_unlimited() -> None:
    """A key callable returning None exempts the request."""
    config = Config(
        rate_limit="1/minute",
        rate_limit_key=lambda info: None if info.path == "/free" else "all",
    )
    app = ObservabilityMiddleware(ok_app, config=config)
    assert [call(app, "/free").status[:3] for _ in range(3)] == ["200"] * 3
    assert [call(app, "/paid").status[:3] for _ in range(2)] == ["200", "429"]


# -- Redis ------------------------------------------------------------------------------


def test_redis_exact_and_every_key_expires(redis_url: str) -> None:
    """Against real Redis: exactly the burst from cold, and the key carries a TTL."""
    limiter = RedisRateLimiter(redis_url, prefix=f"test:{uuid.uuid4().hex}:")
    rate = RateLimit.parse("100/hour")
    began = time.monotonic()
    results = [limiter.hit("k", rate) for _ in range(130)]
    elapsed = time.monotonic() - began
    assert sum(d.allowed for d in results) == 100
    assert results[0].remaining == 99
    assert results[99].remaining == 0
    # 36 s (one emission interval) less the time the 101 hits took, on Redis's clock.
    assert 36.0 - elapsed - 0.01 <= results[100].retry_after <= 36.0 + 0.01
    with redis.Redis.from_url(redis_url) as client:
        ttl = client.pttl(limiter.prefix + "k")
    assert 3_599_000 < ttl <= 3_600_000
    limiter.close()


def test_redis_sustained_rate(redis_url: str) -> None:
    """After the burst, Redis's own clock admits one request per emission interval."""
    limiter = RedisRateLimiter(redis_url, prefix=f"test:{uuid.uuid4().hex}:")
    rate = RateLimit.parse("5/0.5s")  # T = 0.1 s
    start = time.monotonic()
    allowed = 0
    while time.monotonic() - start < 1.0:
        allowed += limiter.hit("k", rate).allowed
        time.sleep(0.002)
    assert 5 + 9 <= allowed <= 5 + 11
    limiter.close()


def test_redis_asyncio_through_asgi(redis_url: str) -> None:
    """Under ASGI the Redis backend is redis.asyncio: 429 past the limit, shared across apps."""
    config = Config(
        service_name=f"rl-{uuid.uuid4().hex}",
        rate_limit="5/hour",
        rate_limit_backend="redis",
        redis_url=redis_url,
    )

    async def main() -> list[int]:
        # Two middleware instances = two "processes" sharing the one Redis limit.
        apps = [AsgiMiddleware(ok_asgi, config=config) for _ in range(2)]
        statuses = []
        for i in range(8):
            transport = httpx.ASGITransport(app=apps[i % 2])
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                statuses.append((await client.get("/")).status_code)
        for app in apps:  # a server's loop lives as long as the process; this one ends here
            await app.observer.guards._alimiter.aclose()
        return statuses

    assert asyncio.run(main()) == [200] * 5 + [429] * 3


@pytest.mark.parametrize(
    ("mode", "expected"),
    [pytest.param("open", "200", id="open"), pytest.param("closed", "503", id="closed")],
)
def test_redis_refused_fail_mode(logs, mode: str, expected: str) -> None:  # type: ignore[no-untyped-def]
    """Redis refusing connections: the configured fail mode, quickly, logged once, never a 500."""
    config = Config(
        rate_limit="1/hour",
        rate_limit_backend="redis",
        redis_url=f"redis://127.0.0.1:{closed_port()}/0",
        rate_limit_fail_mode=mode,
        metrics="memory",
    )
    app = ObservabilityMiddleware(ok_app, config=config)
    metrics = app.observer.metrics
    assert isinstance(metrics, MemoryMetrics)
    metrics.clear()
    start = time.perf_counter()
    results = [call(app, "/") for _ in range(5)]
    elapsed = time.perf_counter() - start
    assert [r.status[:3] for r in results] == [expected] * 5
    if mode == "closed":
        assert results[0].header_values("Retry-After") == ["1"]
    assert elapsed < 1.0
    assert metrics.counter(BACKEND_ERRORS, **{"ratelimit.fail_mode": mode}) == 5
    warnings = [ln for ln in logs.lines() if ln["logger"] == "observekit.ratelimit"]
    assert len(warnings) == 1  # at a bounded rate
    assert warnings[0]["message"].endswith(f"failing {mode}")


def test_redis_hung_bounded_latency(blackhole_port: int) -> None:
    """A Redis that accepts and never answers: each request waits at most about the command
    timeout (then not at all while Redis is left alone), and gets the fail mode."""
    limiter = RedisRateLimiter(
        f"redis://127.0.0.1:{blackhole_port}/0", connect_timeout=0.1, timeout=0.15
    )
    rate = RateLimit.parse("1/hour")
    start = time.perf_counter()
    with pytest.raises(RateLimitBackendError, match="Timeout"):
        limiter.hit("k", rate)
    first = time.perf_counter() - start
    assert 0.14 < first < 0.5
    start = time.perf_counter()
    with pytest.raises(RateLimitBackendError, match="recently"):
        limiter.hit("k", rate)
    assert time.perf_counter() - start < 0.01

    app = ObservabilityMiddleware(
        ok_app,
        config=Config(
            rate_limit="1/hour",
            rate_limit_backend="redis",
            redis_url=f"redis://127.0.0.1:{blackhole_port}/0",
            redis_timeout=0.15,
        ),
    )
    start = time.perf_counter()
    assert call(app, "/").status.startswith("200")
    assert time.perf_counter() - start < 0.5


def test_redis_hung_asyncio_bounded(blackhole_port: int) -> None:
    """redis.asyncio against a hung Redis: bounded by the timeout, the loop never blocked."""

    async def main() -> tuple[float, int]:
        limiter = AsyncRedisRateLimiter(f"redis://127.0.0.1:{blackhole_port}/0", timeout=0.15)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        start = time.perf_counter()
        with pytest.raises(RateLimitBackendError):
            await limiter.ahit("k", RateLimit.parse("1/hour"))
        elapsed = time.perf_counter() - start
        task.cancel()
        await limiter.aclose()
        return elapsed, ticks

    elapsed, ticks = asyncio.run(main())
    assert 0.14 < elapsed < 0.5
    assert ticks >= 8  # the loop kept running while waiting for Redis
