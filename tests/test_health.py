"""Health endpoints: liveness touches nothing, readiness runs checks with timeouts and answers
JSON 200/503; neither writes an access line or a metric, nor reaches the app."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from typing import Any

import httpx
import pytest

from observekit import Config, ConfigError
from observekit.asgi import ObservabilityMiddleware as AsgiMiddleware
from observekit.metrics.memory import MemoryMetrics
from observekit.resilience import Check, dbapi_check, redis_check
from observekit.wsgi import ObservabilityMiddleware
from tests.redis_util import closed_port, redis_url
from tests.util import call

__all__ = ["redis_url"]

app_calls: list[str] = []


def ok_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    app_calls.append(environ["PATH_INFO"])
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def test_liveness_answered_by_middleware(logs) -> None:  # type: ignore[no-untyped-def]
    """/healthz: 200 JSON with X-Request-ID; no app call, no access line, no metric."""
    app_calls.clear()
    app = ObservabilityMiddleware(
        ok_app, config=Config(metrics="memory", access_log_exclude_paths=())
    )
    metrics = app.observer.metrics
    assert isinstance(metrics, MemoryMetrics)
    metrics.clear()
    result = call(app, "/healthz", {"X-Request-ID": "probe-1"})
    assert result.status == "200 OK"
    assert json.loads(result.body) == {"status": "ok"}
    assert result.header_values("X-Request-ID") == ["probe-1"]
    assert result.header_values("Content-Type") == ["application/json"]
    assert app_calls == []
    assert logs.access() == []
    assert metrics.snapshot()["requests"] == []


def test_readiness_checks_ok_fail_timeout() -> None:
    """/readyz runs every check: one failing or slow check makes it 503, each with latency."""

    def fine() -> None:
        return None

    def broken() -> None:
        raise ConnectionError("db at postgres://user:secret@db/x refused")

    def slow() -> None:
        time.sleep(1.0)

    config = Config(
        readiness_checks=(fine, Check("broken", broken), Check("slow", slow, timeout=0.2)),
    )
    app = ObservabilityMiddleware(ok_app, config=config)
    start = time.perf_counter()
    result = call(app, "/readyz")
    elapsed = time.perf_counter() - start
    assert result.status == "503 Service Unavailable"
    body = json.loads(result.body)
    assert body["status"] == "fail"
    assert body["checks"]["fine"]["status"] == "ok"
    assert body["checks"]["broken"] == {
        "status": "fail",
        "latency_ms": body["checks"]["broken"]["latency_ms"],
        "error": "ConnectionError",  # the type only: no secret from the message
    }
    assert body["checks"]["slow"]["error"] == "timeout after 0.2 s"
    assert 0.19 < elapsed < 0.6  # checks run at once, bounded by the timeout
    # The slow check is still running: the next probe does not start another.
    again = json.loads(call(app, "/readyz").body)
    assert again["checks"]["slow"]["error"] == "still running from an earlier probe"


def test_readiness_all_ok_redis_and_dbapi(redis_url: str) -> None:
    """Ready-made checks against the real Redis and a DB-API connection: 200 with latencies."""
    config = Config(
        readiness_checks=(
            redis_check(redis_url),
            dbapi_check(lambda: sqlite3.connect(":memory:"), name="sqlite"),
        )
    )
    result = call(ObservabilityMiddleware(ok_app, config=config), "/readyz")
    assert result.status == "200 OK"
    body = json.loads(result.body)
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"redis", "sqlite"}
    assert all(c["latency_ms"] >= 0 for c in body["checks"].values())


def test_readiness_redis_down() -> None:
    """Redis refusing connections: its check fails and readiness is 503."""
    config = Config(readiness_checks=(redis_check(f"redis://127.0.0.1:{closed_port()}/0"),))
    result = call(ObservabilityMiddleware(ok_app, config=config), "/readyz")
    assert result.status.startswith("503")
    assert json.loads(result.body)["checks"]["redis"]["error"] == "ConnectionError"


def test_asgi_readiness_async_and_sync_checks() -> None:
    """Under ASGI: async checks are awaited with their timeout, sync ones run in threads;
    the loop keeps serving meanwhile."""
    loop_thread: list[int] = []

    async def async_ok() -> bool:
        await asyncio.sleep(0.01)
        return True

    async def async_hang() -> None:
        await asyncio.sleep(5)

    def sync_ok() -> None:
        loop_thread.append(threading.get_ident())

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"app"})

    config = Config(
        readiness_checks=(async_ok, Check("hang", async_hang, timeout=0.2), sync_ok),
        health_path="/live",
        readiness_path="/ready",
    )
    middleware = AsgiMiddleware(app, config=config)

    async def main() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            ready, live = await asyncio.gather(client.get("/ready"), client.get("/live"))
            return ready, live, await client.get("/healthz")

    ready, live, old_path = asyncio.run(main())
    assert ready.status_code == 503
    checks = ready.json()["checks"]
    assert checks["async_ok"]["status"] == "ok"
    assert checks["sync_ok"]["status"] == "ok"
    assert checks["hang"]["error"] == "timeout after 0.2 s"
    assert live.status_code == 200
    assert live.json() == {"status": "ok"}
    assert len(ready.headers.get_list("x-request-id")) == 1
    assert old_path.text == "app"  # /healthz is the app's own once the path is moved
    assert loop_thread
    assert loop_thread[0] != threading.get_ident()


def test_health_off_and_bad_config() -> None:
    """health_path=None leaves /healthz to the app; bad paths and checks are ConfigErrors."""
    app_calls.clear()
    app = ObservabilityMiddleware(ok_app, config=Config(health_path=None, readiness_path=None))
    assert call(app, "/healthz").body == b"ok"
    assert app_calls == ["/healthz"]
    with pytest.raises(ConfigError, match="health_path"):
        Config(health_path="healthz")
    with pytest.raises(ConfigError, match="readiness checks must be"):
        Config(readiness_checks=("not callable",))
    assert Config.from_env({"OBSERVEKIT_READINESS_PATH": ""}).readiness_path is None
