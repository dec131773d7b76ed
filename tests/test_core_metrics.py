"""RED metrics through the middlewares: the core feeds the backend one record per request."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

import observekit.metrics
from observekit import Config
from observekit._core import RequestInfo
from observekit.asgi import ObservabilityMiddleware as AsgiMiddleware
from observekit.metrics.memory import MemoryMetrics
from observekit.wsgi import ObservabilityMiddleware as WsgiMiddleware

from .statsd_receiver import StatsdReceiver
from .util import call


@pytest.fixture(autouse=True)
def _fresh_backends() -> Iterator[None]:
    observekit.metrics._reset()
    yield
    observekit.metrics._reset()


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    path = environ["PATH_INFO"]
    if path == "/boom":
        raise KeyError("boom")
    start_response("404 Not Found" if path == "/missing" else "200 OK", [])
    return [b"ok"]


def resolver(info: RequestInfo) -> str | None:
    return "/users/{id}" if info.path.startswith("/users/") else None


def memory(mw: Any) -> MemoryMetrics:
    backend = mw.observer.metrics
    assert isinstance(backend, MemoryMetrics)
    return backend


def requests_by_key(backend: MemoryMetrics) -> dict[tuple[str, str, int], int]:
    return {
        (r["http.request.method"], r["http.route"], r["http.response.status_code"]): r["count"]
        for r in backend.snapshot()["requests"]
    }


def test_wsgi_requests_counted_by_method_route_and_status() -> None:
    """Each WSGI request is one record: route template (or 'unmatched'), method, status; none left active."""
    mw = WsgiMiddleware(
        wsgi_app, config=Config(metrics="memory", route_resolver=resolver, access_log=False)
    )
    for path in ("/users/1", "/users/2", "/missing", "/other"):
        call(mw, path)
    call(mw, "/users/3", REQUEST_METHOD="BREW")
    with pytest.raises(KeyError):
        call(mw, "/boom")
    backend = memory(mw)
    assert requests_by_key(backend) == {
        ("GET", "/users/{id}", 200): 2,
        ("GET", "unmatched", 404): 1,
        ("GET", "unmatched", 200): 1,
        ("_OTHER", "/users/{id}", 200): 1,
        ("GET", "unmatched", 500): 1,
    }
    (exc,) = backend.snapshot()["exceptions"]
    assert (exc["error.type"], exc["http.response.status_code"], exc["count"]) == (
        "KeyError",
        500,
        1,
    )
    assert all(v == 0 for v in backend.snapshot()["active_requests"].values())


def test_in_flight_request_is_active_until_close() -> None:
    """A WSGI request counts as active until the server closes its body, not when the app returns."""
    mw = WsgiMiddleware(wsgi_app, config=Config(metrics="memory", access_log=False))
    from wsgiref.util import setup_testing_defaults

    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    body = mw(environ, lambda status, headers, exc_info=None: None)
    assert memory(mw).snapshot()["active_requests"] == {"GET": 1}
    list(body)
    body.close()  # type: ignore[attr-defined]
    assert memory(mw).snapshot()["active_requests"] == {"GET": 0}


def test_asgi_requests_counted_and_durations_recorded() -> None:
    """ASGI requests are recorded with their duration; an exception is counted with error.type."""
    mw = AsgiMiddleware(
        _asgi_app, config=Config(metrics="memory", route_resolver=resolver, access_log=False)
    )

    async def run(path: str) -> None:
        scope = {"type": "http", "method": "GET", "path": path, "headers": [], "scheme": "http"}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: dict[str, Any]) -> None:
            pass

        with contextlib.suppress(ValueError):
            await mw(scope, receive, send)

    async def main() -> None:
        await asyncio.gather(*(run(f"/users/{i}") for i in range(20)), run("/fail"))

    asyncio.run(main())
    backend = memory(mw)
    assert requests_by_key(backend) == {
        ("GET", "/users/{id}", 200): 20,
        ("GET", "unmatched", 500): 1,
    }
    route = backend.by_route()["/users/{id}"]
    assert route["count"] == 20
    assert 0 < route["p50"] <= route["p95"] < 1.0
    (exc,) = backend.snapshot()["exceptions"]
    assert exc["error.type"] == "ValueError"


async def _asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["path"] == "/fail":
        raise ValueError("fail")
    await asyncio.sleep(0.001)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_route_cap_applies_to_metrics() -> None:
    """Past max_routes, new route templates are reported as 'overflow'."""

    def every_path_a_route(info: RequestInfo) -> str | None:
        return info.path

    mw = WsgiMiddleware(
        wsgi_app,
        config=Config(
            metrics="memory", route_resolver=every_path_a_route, max_routes=3, access_log=False
        ),
    )
    for i in range(10):
        call(mw, f"/p{i}")
    routes = {key[1] for key in requests_by_key(memory(mw))}
    assert routes == {"/p0", "/p1", "/p2", "overflow"}


@pytest.mark.parametrize("tags", ["dogstatsd", "none"])
def test_statsd_datagram_per_request_end_to_end(tags: str) -> None:
    """Through the WSGI middleware, each request reaches a real UDP receiver as statsd metrics."""
    receiver = StatsdReceiver()
    try:
        mw = WsgiMiddleware(
            wsgi_app,
            config=Config(
                service_name="shop",
                metrics="auto",
                statsd_host="127.0.0.1",
                statsd_port=receiver.port,
                statsd_prefix="edge",
                statsd_tags=tags,
                route_resolver=resolver,
                access_log=False,
            ),
        )
        for i in range(5):
            call(mw, f"/users/{i}")
        receiver.wait_for(lambda r: len([m for m in r.metrics() if m.type == "ms"]) >= 5, timeout=5)
        timers = [m for m in receiver.metrics() if m.type == "ms"]
        assert len(timers) == 5
        if tags == "dogstatsd":
            assert {m.name for m in timers} == {"edge.http.server.request.duration"}
            assert timers[0].tag_dict["http.route"] == "/users/{id}"
            assert timers[0].tag_dict["service.name"] == "shop"
            assert timers[0].tag_dict["http.response.status_code"] == "200"
        else:
            assert all(m.name.startswith("edge.http.server.request.duration.") for m in timers)
            assert all("users" in m.name for m in timers)
    finally:
        receiver.close()
