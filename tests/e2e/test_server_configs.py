"""gunicorn and uvicorn set up by observekit: ``-c python:observekit.gunicorn`` and
``python -m observekit.uvicorn``, each serving an app that has no observekit code
(``routes`` of the plain e2e apps), wrapped without a code change.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.frameworks import Running, check_request_id_echo, run_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


@pytest.fixture(scope="module")
def gunicorn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    argv = [
        "-m", "gunicorn", "-c", "python:observekit.gunicorn", "tests.e2e.wsgi_app:routes",
        "--bind", "127.0.0.1:{port}", "--workers", "2", "--graceful-timeout", "5",
    ]  # fmt: skip
    env = {"OBSERVEKIT_WRAP": "1", "OTEL_SERVICE_NAME": "e2e-gunicorn", "STATSD_PREFIX": "shop"}
    with run_server("gunicorn", argv, tmp_path_factory.mktemp("gunicorn"), env) as running:
        yield running


@pytest.fixture(scope="module")
def uvicorn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    argv = [
        "-m", "observekit.uvicorn", "tests.e2e.asgi_app:routes", "--host", "127.0.0.1",
        "--port", "{port}", "--timeout-graceful-shutdown", "5",
    ]  # fmt: skip
    env = {"OTEL_SERVICE_NAME": "e2e-uvicorn"}
    with run_server("uvicorn", argv, tmp_path_factory.mktemp("uvicorn"), env) as running:
        yield running


def _all_json(path: Path) -> None:
    raw = [line for line in path.read_bytes().split(b"\n") if line.strip()]
    assert raw
    assert all(line.startswith(b"{") and line.endswith(b"}") for line in raw), raw[:5]


def test_gunicorn_config_wraps_the_app_and_logs_json(gunicorn: Running) -> None:
    """OBSERVEKIT_WRAP=1: an app with no observekit code echoes IDs; gunicorn's own lines are JSON."""
    sent = check_request_id_echo(gunicorn, "/")
    assert sent.access["http.response.status_code"] == 200
    lines = gunicorn.log.lines()
    booting = [line for line in lines if line["logger"] == "gunicorn.error"]
    assert any("Booting worker" in line["message"] for line in booting)
    assert all(line["service.name"] == "e2e-gunicorn" for line in booting)
    # gunicorn's access log would come after the context is gone: it is off.
    assert [line for line in lines if line["logger"] == "gunicorn.access"] == []
    _all_json(gunicorn.log.path)


def test_gunicorn_config_sends_gunicorns_statsd_metrics(gunicorn: Running) -> None:
    """STATSD_HOST set: gunicorn's own metrics reach the same daemon as observekit's, tagged."""
    gunicorn.send("/")
    deadline = time.monotonic() + 15
    while True:
        names = {m.name: m for d in gunicorn.statsd.datagrams for m in d.metrics}
        if "shop.gunicorn.requests" in names and any(
            n.startswith("http.server") or n.startswith("shop.http.server") for n in names
        ):
            break
        assert time.monotonic() < deadline, sorted(names)
        time.sleep(0.05)
    assert names["shop.gunicorn.requests"].tag_dict["service.name"] == "e2e-gunicorn"


def test_uvicorn_runner_wraps_the_app_and_access_lines_carry_the_id(uvicorn: Running) -> None:
    """python -m observekit.uvicorn: IDs echoed; uvicorn's own access line is JSON with the request ID."""
    sent = check_request_id_echo(uvicorn, "/")
    rid = sent.request_id
    uvicorn_access = [
        line for line in uvicorn.lines_with_id(rid) if line["logger"] == "uvicorn.access"
    ]
    assert len(uvicorn_access) == 1
    assert '"GET / HTTP/1.1" 200' in uvicorn_access[0]["message"]
    startup = [line for line in uvicorn.log.lines() if line["logger"] == "uvicorn.error"]
    assert any("Uvicorn running" in line["message"] for line in startup)
    _all_json(uvicorn.log.path)
