"""Django through its real servers: gunicorn (WSGI, sync workers) and uvicorn (ASGI).

One server per kind for the module; each test asserts on the response, the JSON
lines, the statsd datagrams and the OTLP spans of the same requests.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.frameworks import (
    Running,
    check_exception,
    check_request_id_echo,
    check_route,
    run_server,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

SERVERS = {
    "gunicorn": [
        "-m", "gunicorn", "tests.e2e.django_app.wsgi:application", "--bind", "127.0.0.1:{port}",
        "--workers", "1", "--worker-class", "gthread", "--threads", "4", "--graceful-timeout", "5",
    ],
    "uvicorn": [
        "-m", "uvicorn", "tests.e2e.django_app.asgi:application", "--host", "127.0.0.1",
        "--port", "{port}", "--no-access-log", "--timeout-graceful-shutdown", "5",
    ],
}  # fmt: skip


@pytest.fixture(scope="module", params=list(SERVERS))
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    name = f"django-{request.param}"
    with run_server(name, SERVERS[request.param], tmp_path_factory.mktemp(name)) as running:
        yield running


def test_request_id_is_echoed_and_on_every_line(server: Running) -> None:
    """An incoming X-Request-ID is echoed once and carried by the view's line and the access line."""
    sent = check_request_id_echo(server, "/")
    assert sent.response.json()["request_id"] == sent.request_id


def test_route_template_from_resolver_match(server: Running) -> None:
    """include()d routes give the full template (resolver_match.route, as {name}) in logs, metrics, span."""
    sent = check_route(server, "/api/v1/items/42", "/api/v1/items/{item_id}")
    assert sent.app_lines[0]["item_id"] == 42


def test_async_view(server: Running) -> None:
    """An async view runs in the request's context under both servers."""
    sent = check_route(server, "/api/v1/async/abc", "/api/v1/async/{name}")
    assert sent.response.json()["request_id"] == sent.request_id
    assert [line["request_id"] for line in sent.app_lines] == [sent.request_id]


def test_exception_turned_into_500_is_logged_once_and_counted(server: Running) -> None:
    """Django renders the 500; observekit logs the exception once (no django.request twin) and counts it."""
    sent = check_exception(server, "/boom", "/boom")
    assert [line["request_id"] for line in sent.app_lines] == [sent.request_id]
    django_lines = [
        line for line in server.lines_with_id(sent.request_id) if line["logger"] == "django.request"
    ]
    assert django_lines == []


@pytest.mark.parametrize("path", ["/stream", "/astream"])
def test_streaming_response_keeps_the_context_until_closed(server: Running, path: str) -> None:
    """Every chunk of a StreamingHttpResponse (sync or async iterator) logs with the request's ID."""
    sent = server.send(path)
    assert sent.response.status_code == 200
    rid = sent.request_id
    assert sent.response.text.splitlines() == [rid] * 3
    assert [line["request_id"] for line in sent.app_lines] == [rid] * 3
    access = sent.access
    assert access["request_id"] == rid
    assert access["http.route"] == path
    assert access["http.response.body.size"] == len(sent.response.content)
    # The access line comes after the last chunk: the request ended at close().
    assert sent.lines.index(access) == len(sent.lines) - 1


def test_unmatched_path_is_one_label(server: Running) -> None:
    """A 404 carries the request ID and is counted under the fixed ``unmatched`` label."""
    sent = server.send("/no/such/page")
    assert sent.response.status_code == 404
    assert "http.route" not in sent.access
    server.wait_metric("http.server.requests", "unmatched", 404)
