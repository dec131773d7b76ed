"""Flask (gunicorn), Starlette and FastAPI (uvicorn) and aiohttp (its own runner) through their real servers.

One server per framework for the module. Each test checks the response, the JSON
lines, the statsd datagrams and the OTLP span of the same request.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.e2e.frameworks import (
    Running,
    check_exception,
    check_request_id_echo,
    check_route,
    run_server,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


@dataclass(frozen=True)
class Framework:
    name: str
    argv: list[str]
    routes: dict[str, str]  # path -> the template it must be reported under


FRAMEWORKS = [
    Framework(
        "flask",
        ["-m", "gunicorn", "tests.e2e.flask_app:app", "--bind", "127.0.0.1:{port}",
         "--workers", "1", "--graceful-timeout", "5"],
        {"/api/items/7": "/api/items/{item_id}", "/": "/"},
    ),
    Framework(
        "starlette",
        ["-m", "uvicorn", "tests.e2e.starlette_app:app", "--host", "127.0.0.1", "--port", "{port}",
         "--no-access-log", "--timeout-graceful-shutdown", "5"],
        {
            "/items/7": "/items/{item_id}",
            "/api/v2/items/7": "/api/{version}/items/{item_id}",
            "/api/v2/sub/things/9": "/api/{version}/sub/things/{thing_id}",
        },
    ),
    Framework(
        "fastapi",
        ["-m", "uvicorn", "tests.e2e.fastapi_app:app", "--host", "127.0.0.1", "--port", "{port}",
         "--no-access-log", "--timeout-graceful-shutdown", "5"],
        {
            "/items/7": "/items/{item_id}",
            "/api/v1/users/42": "/api/v1/users/{user_id}",
            "/sub/things/9": "/sub/things/{thing_id}",
        },
    ),
    Framework(
        "aiohttp",
        ["-m", "aiohttp.web", "-H", "127.0.0.1", "-P", "{port}", "tests.e2e.aiohttp_app:create_app"],
        {"/items/7": "/items/{item_id}"},
    ),
]  # fmt: skip
ONLY = {f.name: pytest.param(f, id=f.name) for f in FRAMEWORKS}


@pytest.fixture(scope="module", params=[pytest.param(f, id=f.name) for f in FRAMEWORKS])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Framework, Running]]:
    framework: Framework = request.param
    workdir = tmp_path_factory.mktemp(framework.name)
    with run_server(framework.name, framework.argv, workdir) as running:
        yield framework, running


def test_request_id_is_echoed_and_on_every_line(server: tuple[Framework, Running]) -> None:
    """An incoming X-Request-ID is echoed once and carried by the app's line and the access line."""
    _, running = server
    sent = check_request_id_echo(running, "/")
    assert sent.response.json()["request_id"] == sent.request_id


def test_route_template_in_access_line_metrics_and_span(server: tuple[Framework, Running]) -> None:
    """Each path is reported under its framework's route template (mounts composed), never the raw path."""
    framework, running = server
    for path, route in framework.routes.items():
        check_route(running, path, route)


def test_exception_is_a_500_with_id_logged_once_and_counted(
    server: tuple[Framework, Running],
) -> None:
    """The handler raises: 500 carrying the ID, one ERROR line with traceback, error metric, span ERROR."""
    framework, running = server
    sent = check_exception(running, "/boom", "/boom")
    assert [line["request_id"] for line in sent.app_lines] == [sent.request_id]
    if framework.name == "starlette":
        # The app's own Exception handler rendered the page, with the request ID on it.
        assert sent.response.text == "the app's own 500 page"
    elif framework.name == "fastapi":
        # No 500 handler registered (and a sync endpoint): observekit's own 500 answers.
        assert sent.response.text == "Internal Server Error\n"
    # No second record of the same exception (Flask's app.logger, aiohttp's server logger).
    traces = [line for line in running.lines_with_id(sent.request_id) if "exception.type" in line]
    assert len(traces) == 1


def test_unmatched_path_is_one_label(server: tuple[Framework, Running]) -> None:
    """A 404 carries the request ID and is counted under the fixed ``unmatched`` label."""
    _, running = server
    sent = running.send("/no/such/page")
    assert sent.response.status_code == 404
    assert sent.access["request_id"] == sent.request_id
    assert "http.route" not in sent.access
    running.wait_metric("http.server.requests", "unmatched", 404)


@pytest.mark.parametrize("server", [ONLY["flask"]], indirect=True)
def test_flask_stream_keeps_the_context(server: tuple[Framework, Running]) -> None:
    """Flask: every chunk of a streamed body logs with the request's ID; the access line comes last."""
    _, running = server
    sent = running.send("/stream")
    rid = sent.request_id
    assert sent.response.text.splitlines() == [rid] * 3
    assert [line["request_id"] for line in sent.app_lines] == [rid] * 3
    assert sent.lines[-1] is sent.access
    assert sent.access["http.route"] == "/stream"


@pytest.mark.parametrize("server", [ONLY["starlette"]], indirect=True)
def test_starlette_exception_handlers_keep_working(server: tuple[Framework, Running]) -> None:
    """Starlette/FastAPI: an HTTPException handler answers as it would, and its response carries the ID."""
    _, running = server
    sent = running.send("/teapot")
    assert sent.response.status_code == 418
    assert sent.response.text == "handled 418"
    assert sent.access["request_id"] == sent.request_id
    assert sent.access["http.route"] == "/teapot"


@pytest.mark.parametrize("server", [ONLY["fastapi"]], indirect=True)
def test_fastapi_exception_handlers_keep_status_body_and_carry_the_id(
    server: tuple[Framework, Running],
) -> None:
    """FastAPI: HTTPException, a custom handler and a 422 keep status and body; each carries the ID."""
    _, running = server
    cases = [
        ("/missing/5", 404, {"detail": "item 5 not found"}, "/missing/{item_id}"),
        ("/reserve/3", 409, {"error": "out_of_stock", "item_id": 3}, "/reserve/{item_id}"),
        ("/search?limit=many", 422, None, "/search"),
    ]
    for path, status, body, route in cases:
        sent = running.send(path)
        assert sent.response.status_code == status, sent.response.text
        if body is not None:
            assert sent.response.json() == body
        else:  # FastAPI's validation error names the bad query parameter
            [error] = sent.response.json()["detail"]
            assert error["loc"] == ["query", "limit"]
            assert error["type"] == "int_parsing"
        rid = sent.request_id  # exactly one X-Request-ID header
        access = sent.access
        assert access["request_id"] == rid
        assert access["http.response.status_code"] == status
        assert access["http.route"] == route
        assert "error.type" not in access  # a handled answer, not an exception
        running.wait_metric("http.server.requests", route, status)
    # None of them was logged as an exception.
    assert not [line for s in running.sent for line in s.lines if "exception.type" in line]


@pytest.mark.parametrize("server", [ONLY["aiohttp"]], indirect=True)
def test_aiohttp_raised_http_exception_carries_the_id(server: tuple[Framework, Running]) -> None:
    """aiohttp: a raised web.HTTPNotFound on a matched route keeps its body, gets the ID and the route."""
    _, running = server
    sent = running.send("/gone/x")
    assert sent.response.status_code == 404
    assert sent.response.text == "no such thing"
    assert sent.access["request_id"] == sent.request_id
    assert sent.access["http.route"] == "/gone/{what}"
