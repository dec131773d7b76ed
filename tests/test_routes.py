"""Route labels: the framework's template, a user resolver, the cardinality cap, method labels."""

from __future__ import annotations

import random
import string
import threading
from typing import Any

import pytest

from observekit import Config
from observekit._core import OVERFLOW, Observer, RequestInfo, RouteLabels
from observekit.wsgi import ObservabilityMiddleware

from .conftest import LogCapture
from .util import call


def test_labels_capped_with_overflow() -> None:
    """Past the cap, new routes are 'overflow'; routes seen before keep their label."""
    labels = RouteLabels(3)
    assert [labels(r) for r in ("/a", "/b", "/c", "/d", "/a", "/e")] == [
        "/a",
        "/b",
        "/c",
        OVERFLOW,
        "/a",
        OVERFLOW,
    ]


def test_cap_holds_under_threads() -> None:
    """Eight threads adding distinct routes at once never push the label set past the cap."""
    labels = RouteLabels(50)
    seen: set[str] = set()
    lock = threading.Lock()

    def work(n: int) -> None:
        got = {labels(f"/r{n}-{i}") for i in range(200)}
        with lock:
            seen.update(got)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen - {OVERFLOW}) == 50


def test_scanner_traffic_leaves_at_most_routes_plus_one_labels() -> None:
    """100,000 requests to /users/<n> plus random scanner paths give at most (routes + 1) labels."""

    def resolver(info: RequestInfo) -> str | None:
        parts = info.path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "users" and parts[1].isdigit():
            return "/users/{id}"
        if info.path == "/health":
            return "/health"
        return None

    observer = Observer(Config(access_log=False, route_resolver=resolver, max_routes=10))
    rng = random.Random(7)
    labels = set()
    for n in range(100_000):
        if n % 10 == 0:
            path = "/" + "".join(rng.choices(string.ascii_lowercase + "/.", k=12))
        elif n % 97 == 0:
            path = "/health"
        else:
            path = f"/users/{n}"
        route = observer.resolve_route(RequestInfo("GET", path, {}), None)
        labels.add("unmatched" if route is None else observer.route_label(route))
    assert labels == {"/users/{id}", "/health", "unmatched"}


def test_resolver_route_reaches_the_access_line(logs: LogCapture) -> None:
    """A route_resolver's template is the access line's http.route; no template, no field."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b""]

    def resolver(info: RequestInfo) -> str | None:
        return "/items/{id}" if info.path.startswith("/items/") else None

    mw = ObservabilityMiddleware(app, config=Config(route_resolver=resolver))
    call(mw, "/items/9")
    call(mw, "/other")
    first, second = logs.access()
    assert first["http.route"] == "/items/{id}"
    assert "http.route" not in second


def test_broken_resolver_is_absorbed(logs: LogCapture) -> None:
    """A route_resolver that raises leaves the request as it was and is counted as internal."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    def resolver(info: RequestInfo) -> str | None:
        raise RuntimeError("resolver bug")

    mw = ObservabilityMiddleware(app, config=Config(route_resolver=resolver))
    assert call(mw, "/x").body == b"ok"
    (access,) = logs.access()
    assert "http.route" not in access
    assert mw.observer.internal_errors == 1


@pytest.mark.parametrize(
    ("method", "label"),
    [
        pytest.param("GET", "GET", id="known"),
        pytest.param("PATCH", "PATCH", id="patch"),
        pytest.param("FOOBAR", "_OTHER", id="made-up"),
        pytest.param("get", "_OTHER", id="lowercase"),
    ],
)
def test_method_labels(method: str, label: str) -> None:
    """Known methods are their own label; anything else is _OTHER (semantic conventions)."""
    assert Observer(Config(access_log=False)).method_label(method) == label
