"""End-to-end: traces from real servers to a real OTLP/HTTP receiver on 127.0.0.1.

``tests/e2e/tracing_app.py`` configures tracing at import, so ``gunicorn --preload``
builds the SDK in the master before it forks four workers: every worker must
still export (the SDK restarts its export thread after the fork; the exporter
is built in the worker), boot must not deadlock, and SIGTERM must end within
the flush budget when the collector is refused or wedged. uvicorn with two
worker processes is the ASGI twin. The bounded collector-down soak
(``bench/collector_down.py``) runs here for ~10 s as well.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_servers import _child_env, _free_port, _stop, _wait_until_healthy
from tests.otlp_receiver import HangingReceiver, OTLPReceiver, closed_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
BOOT_SECONDS = 20.0
"""All workers answer within this long of the start: no deadlock at boot."""
SHUTDOWN_TIMEOUT = 5.0  # Config.shutdown_timeout's default, used by the app
EXIT_MARGIN = 4.0
"""What SIGTERM may take beyond the flush budget: graceful stop, interpreter exit."""

GUNICORN = (
    "gunicorn tests.e2e.tracing_app:wsgi_app --preload --workers 4 --worker-class sync"
    " --bind 127.0.0.1:{port} --timeout 60 --graceful-timeout 30"
)
UVICORN = (
    "uvicorn tests.e2e.tracing_app:asgi_app --workers 2 --host 127.0.0.1 --port {port}"
    " --no-access-log --timeout-graceful-shutdown 5"
)


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base_url: str
    stdout: Path
    stderr: Path
    started: float

    def tail(self) -> str:
        return self.stderr.read_text(errors="replace")[-3000:]

    def log_lines(self, logger: str) -> list[dict[str, object]]:
        """The JSON lines (stdout) one logger wrote."""
        out = []
        for raw in self.stdout.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                line = json.loads(raw)
                if isinstance(line, dict) and line.get("logger") == logger:
                    out.append(line)
        return out


@contextlib.contextmanager
def serving(command: str, tmp_path: Path, endpoint: str, *, delay: float = 0.2) -> Iterator[Server]:
    """Start the server (its own process group), wait until /healthz answers; kill at the end."""
    port = _free_port()
    env = _child_env()
    env.update(
        PYTHONPATH=str(ROOT),
        TRACING_E2E_ENDPOINT=endpoint,
        TRACING_E2E_DELAY=str(delay),
        TRACING_E2E_SHUTDOWN=str(SHUTDOWN_TIMEOUT),
    )
    stdout, stderr = tmp_path / "stdout.log", tmp_path / "stderr.log"
    argv = [sys.executable, "-m", *command.format(port=port).split()]
    with stdout.open("ab") as out, stderr.open("ab") as err:
        proc = subprocess.Popen(
            argv,
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    server = Server(proc, f"http://127.0.0.1:{port}", stdout, stderr, time.monotonic())
    try:
        _wait_until_healthy(proc, server.base_url, stderr, BOOT_SECONDS)
        yield server
    finally:
        _stop(proc, grace=30.0)


def reach_workers(server: Server, workers: int, *, timeout: float = BOOT_SECONDS) -> dict[int, str]:
    """Send concurrent slow requests until ``workers`` distinct PIDs answered: PID -> a trace ID."""
    seen: dict[int, str] = {}
    deadline = time.monotonic() + timeout

    def one() -> tuple[int, str]:
        with httpx.Client(timeout=10.0) as client:
            response = client.get(f"{server.base_url}/work?sleep=0.3")
        response.raise_for_status()
        body = response.json()
        return int(body["pid"]), str(body["trace_id"])

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers * 2) as pool:
        while len(seen) < workers:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"only workers {sorted(seen)} answered in {timeout} s:\n{server.tail()}"
                )
            for pid, trace_id in pool.map(lambda _: one(), range(workers * 2)):
                seen.setdefault(pid, trace_id)
    return seen


def sigterm(server: Server) -> float:
    """SIGTERM the server's main process; seconds until it (and its workers) exited."""
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(timeout=SHUTDOWN_TIMEOUT + EXIT_MARGIN + 20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"no exit {SHUTDOWN_TIMEOUT + EXIT_MARGIN + 20} s after SIGTERM")
    return time.monotonic() - started


def pids_of(spans: list[dict[str, object]]) -> set[int]:
    return {int(s["attributes"]["process.pid"]) for s in spans}  # type: ignore[index]


@pytest.mark.parametrize(
    ("command", "workers"),
    [
        pytest.param(GUNICORN, 4, id="gunicorn-preload-4"),
        pytest.param(UVICORN, 2, id="uvicorn-2"),
    ],
)
def test_every_worker_exports_its_spans(command: str, workers: int, tmp_path: Path) -> None:
    """Every worker process (forked after the SDK was built, or spawned) exports its spans."""
    with OTLPReceiver() as receiver, serving(command, tmp_path, receiver.endpoint) as server:
        answered = reach_workers(server, workers)
        boot = time.monotonic() - server.started
        spans = receiver.wait_for(
            lambda got: set(answered.values()) <= {s["trace_id"] for s in got}, timeout=15.0
        )

        assert len(answered) == workers
        assert boot < BOOT_SECONDS
        by_trace = {s["trace_id"]: s for s in spans}
        for pid, trace_id in answered.items():
            span = by_trace[trace_id]
            assert span["attributes"]["process.pid"] == pid  # type: ignore[index]
            assert span["name"] == "GET /work"
            assert span["kind"] == "SERVER"
            assert span["resource"]["service.name"] == "e2e-tracing"  # type: ignore[index]
        # The SDK refreshes process-dependent resource attributes in a forked child.
        instances = {s["resource"]["service.instance.id"] for s in spans}  # type: ignore[index]
        assert len(instances) == workers
        if command == GUNICORN:
            booted = re.findall(r"Booting worker with pid: (\d+)", server.tail())
            assert {int(p) for p in booted} >= set(answered)

        elapsed = sigterm(server)
    print(
        f"{command.split()[0]}: workers {sorted(answered)}, boot {boot:.2f} s, exit {elapsed:.2f} s"
    )
    assert elapsed < SHUTDOWN_TIMEOUT + EXIT_MARGIN


@pytest.mark.parametrize(
    ("command", "workers"),
    [
        pytest.param(GUNICORN, 4, id="gunicorn-preload-4-atexit"),
        pytest.param(UVICORN, 2, id="uvicorn-2-lifespan"),
    ],
)
def test_workers_flush_queued_spans_at_sigterm(command: str, workers: int, tmp_path: Path) -> None:
    """Spans still queued at SIGTERM are flushed: gunicorn workers at exit, uvicorn at lifespan end."""
    with (
        OTLPReceiver() as receiver,
        serving(command, tmp_path, receiver.endpoint, delay=60.0) as server,
    ):
        answered = reach_workers(server, workers)
        assert receiver.spans == []  # a 60 s batch delay: nothing leaves before the exit

        elapsed = sigterm(server)
        spans = receiver.wait_for(
            lambda got: set(answered.values()) <= {s["trace_id"] for s in got}, timeout=5.0
        )
    assert pids_of(spans) == set(answered)
    print(
        f"{command.split()[0]}: {len(spans)} spans from {sorted(answered)} at exit, {elapsed:.2f} s"
    )
    assert elapsed < SHUTDOWN_TIMEOUT + EXIT_MARGIN


@pytest.mark.parametrize(
    ("command", "workers"),
    [
        pytest.param(GUNICORN, 4, id="gunicorn-preload-4"),
        pytest.param(UVICORN, 2, id="uvicorn-2"),
    ],
)
@pytest.mark.parametrize("collector", ["refused", "wedged"])
def test_sigterm_is_bounded_when_the_collector_is_down(
    command: str, workers: int, collector: str, tmp_path: Path
) -> None:
    """Collector refusing or never answering: requests succeed and SIGTERM ends within ~5 s."""
    with HangingReceiver() as wedged:
        endpoint = wedged.endpoint if collector == "wedged" else f"http://127.0.0.1:{closed_port()}"
        with serving(command, tmp_path, endpoint) as server:
            reach_workers(server, workers)
            with httpx.Client(timeout=10.0) as client:
                statuses = {client.get(f"{server.base_url}/work").status_code for _ in range(50)}
            assert statuses == {200}
            if collector == "wedged":  # an export is stuck in a worker when SIGTERM comes
                deadline = time.monotonic() + 5.0
                while wedged.accepted == 0 and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert wedged.accepted >= 1

            elapsed = sigterm(server)
            lines = server.log_lines("observekit.tracing")
    print(f"{command.split()[0]}, collector {collector}: exit {elapsed:.2f} s after SIGTERM")
    assert elapsed < SHUTDOWN_TIMEOUT + EXIT_MARGIN
    messages = [str(line["message"]) for line in lines]
    assert any("could not export" in m or "did not finish" in m for m in messages), messages


def test_collector_down_soak_bounded(tmp_path: Path) -> None:
    """bench/collector_down.py for 10 s: 0 failed requests, RSS growth < 20 MB, drops warned."""
    report_path = tmp_path / "report.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "collector_down.py"),
            "--seconds",
            "10",
            "--json",
            str(report_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OBSERVEKIT_"))},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    assert report["requests"] > 1000
    assert report["failed"] == 0
    assert report["rss_growth_mb"] < 20
    assert report["dropped_spans"] > 0
    assert 1 <= report["drop_warnings"] <= 3  # bounded: at most one a minute, plus the exit one
    assert report["shutdown_seconds"] < SHUTDOWN_TIMEOUT + EXIT_MARGIN
