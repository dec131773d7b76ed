"""End-to-end (issue 3, item 6): gunicorn's own statsd metrics, with DogStatsD tags, reach
the same statsd daemon as observekit's.

A real gunicorn (``python -m gunicorn``, 2 sync workers) on 127.0.0.1 runs with::

    --statsd-host 127.0.0.1:<receiver port> --statsd-prefix <prefix>
    --dogstatsd-tags service.name:<service>

and serves :func:`create_app` from this module (gunicorn calls the factory with
literal arguments). A :class:`~tests.statsd_receiver.StatsdReceiver` plays the
daemon. gunicorn sends ``<prefix>.gunicorn.requests`` (counter),
``<prefix>.gunicorn.request.duration`` (timer, ms),
``<prefix>.gunicorn.request.status.<code>`` and ``<prefix>.gunicorn.workers``
(gauge), each ending in ``|#service.name:<service>``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.statsd_receiver import StatsdReceiver

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "e2eapp"
SERVICE = "e2e-gunicorn"
WORKERS = 2
REQUESTS = 5


def create_app(statsd_port: int = 0, middleware: bool = False) -> Callable[..., Iterable[bytes]]:
    """The WSGI app gunicorn serves; with ``middleware``, wrapped in observekit's, statsd on."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
        return [b"ok\n"]

    if not middleware:
        return app
    import observekit
    from observekit.wsgi import ObservabilityMiddleware

    config = observekit.Config(
        service_name=SERVICE,
        service_version="e2e",
        environment="e2e",
        metrics="statsd",
        statsd_host="127.0.0.1",
        statsd_port=statsd_port,
        statsd_prefix=PREFIX,
        access_log=False,
    )
    return ObservabilityMiddleware(app, config=config)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (graceful), then SIGKILL what is left of the process group we started."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@contextlib.contextmanager
def gunicorn(app: str, receiver: StatsdReceiver, workdir: Path) -> Iterator[str]:
    """Run gunicorn with statsd pointed at ``receiver``; yield its base URL."""
    port = _free_port()
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        app,
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(WORKERS),
        "--worker-class",
        "sync",
        "--timeout",
        "60",
        "--graceful-timeout",
        "5",
        "--statsd-host",
        receiver.address,
        "--statsd-prefix",
        PREFIX,
        "--dogstatsd-tags",
        f"service.name:{SERVICE}",
    ]
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"GUNICORN_CMD_ARGS", "WEB_CONCURRENCY", "PYTHONWARNINGS"}
        and not key.startswith(("OTEL_", "OBSERVEKIT_", "STATSD_"))
    }
    env["PYTHONPATH"] = str(ROOT)
    stderr_path = workdir / "stderr.log"
    with stderr_path.open("ab") as err:
        proc = subprocess.Popen(
            argv,
            cwd=workdir,  # no stray gunicorn.conf.py is picked up
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"gunicorn exited:\n{stderr_path.read_text(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"gunicorn not listening:\n{stderr_path.read_text()}")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


def _send_requests(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=30.0) as client:
        for _ in range(REQUESTS):
            assert client.get("/").status_code == 200


def _tagged(receiver: StatsdReceiver, name: str) -> list[Any]:
    return [m for m in receiver.metrics(name) if m.tag_dict.get("service.name") == SERVICE]


def test_gunicorn_sends_its_own_metrics_with_dogstatsd_tags(
    tmp_path: Path,
) -> None:
    """gunicorn's request counter and timer, status counter and worker gauge arrive tagged."""
    with StatsdReceiver() as receiver:
        with gunicorn("tests.e2e.test_gunicorn_statsd:create_app()", receiver, tmp_path) as url:
            _send_requests(url)
            receiver.wait_for(
                lambda r: (
                    sum(m.number for m in _tagged(r, f"{PREFIX}.gunicorn.requests")) >= REQUESTS
                    and len(_tagged(r, f"{PREFIX}.gunicorn.request.duration")) >= REQUESTS
                ),
                timeout=15,
                what="gunicorn's request metrics",
            )
            receiver.wait_for(
                lambda r: _tagged(r, f"{PREFIX}.gunicorn.workers"),
                timeout=15,
                what="gunicorn's worker gauge",
            )
        assert receiver.errors() == []
        gunicorn_lines = [m for m in receiver.metrics() if m.name.startswith(f"{PREFIX}.gunicorn.")]
        assert all(m.tags == (f"service.name:{SERVICE}",) for m in gunicorn_lines)
        assert {m.type for m in receiver.metrics(f"{PREFIX}.gunicorn.request.duration")} == {"ms"}
        assert {m.type for m in receiver.metrics(f"{PREFIX}.gunicorn.requests")} == {"c"}
        statuses = _tagged(receiver, f"{PREFIX}.gunicorn.request.status.200")
        assert sum(m.number for m in statuses) >= REQUESTS
        workers = _tagged(receiver, f"{PREFIX}.gunicorn.workers")
        assert workers[-1].type == "g"
        assert workers[-1].number == WORKERS


def test_observekit_metrics_reach_the_same_daemon_as_gunicorns(tmp_path: Path) -> None:
    """With the middleware (metrics='statsd'), our request duration lands next to gunicorn's."""
    with StatsdReceiver() as receiver:
        app = f"tests.e2e.test_gunicorn_statsd:create_app({receiver.port}, True)"
        with gunicorn(app, receiver, tmp_path) as url:
            _send_requests(url)
            receiver.wait_for(
                lambda r: len(_tagged(r, f"{PREFIX}.gunicorn.request.duration")) >= REQUESTS,
                timeout=15,
                what="gunicorn's request metrics",
            )
            receiver.wait_for(
                lambda r: len(_tagged(r, f"{PREFIX}.http.server.request.duration")) >= REQUESTS,
                timeout=10,
                what="observekit's http.server.request.duration",
            )
        ours = _tagged(receiver, f"{PREFIX}.http.server.request.duration")
        assert {m.type for m in ours} == {"ms"}
        for metric in ours:
            tags = metric.tag_dict
            assert tags["http.request.method"] == "GET"
            assert tags["http.response.status_code"] == "200"
            assert tags["deployment.environment"] == "e2e"
