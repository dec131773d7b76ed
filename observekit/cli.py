"""``observekit demo``: two services, one request path, and what observekit shows of it.

service1 (Django under gunicorn) calls service2 (Starlette under uvicorn) through an
instrumented httpx client; service2 reads a database. Both send metrics to a statsd
receiver and spans to an OTLP/HTTP receiver that run in this process. The demo sends a
burst of requests and prints the two services' log lines interleaved, the trace of one
request as a tree, and RED metrics per service and route.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["main"]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NEEDED = ("gunicorn", "uvicorn", "django", "starlette", "httpx", "opentelemetry.proto")

# (path on service1, incoming X-Request-ID or None), sent in this order.
BURST: list[tuple[str, str | None]] = [
    ("/", "demo-1"),
    ("/", None),
    ("/fail", None),
    ("/", "demo-2"),
    ("/", None),
    ("/", "demo-3"),
    ("/fail", "demo-4"),
    ("/", None),
    ("/", "demo-5"),
    ("/fail", None),
]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Service:
    """One service as a subprocess; its stdout JSON lines collected with their service name."""

    def __init__(self, name: str, command: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.name = name
        self.lines: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"message": raw.rstrip("\n"), "level": "RAW"}
            if not isinstance(line, dict):
                line = {"message": raw.rstrip("\n"), "level": "RAW"}
            with self._lock:
                self.lines.append(line)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.stderr.append(raw)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.lines)

    def wait_ready(self, port: int, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited:\n" + "".join(self.stderr))
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise SystemExit(f"{self.name} did not start in time:\n" + "".join(self.stderr))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _get(url: str, request_id: str | None) -> tuple[int, str]:
    headers = {"X-Request-ID": request_id} if request_id else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - loopback only
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback only
            response.read()
            return response.status, response.headers.get("X-Request-ID", "")
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers.get("X-Request-ID", "")


def _short(service: str, line: dict[str, Any]) -> str:
    stamp = str(line.get("timestamp", ""))[11:23]
    return (
        f"{stamp}  {service:<8}  {line.get('request_id', '-'):<32}  "
        f"{line.get('level', ''):<7} {line.get('logger', ''):<17} {line.get('message', '')}"
    )


def _access_lines(service: _Service) -> int:
    return sum(1 for x in service.snapshot() if x.get("logger") == "observekit.access")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def demo(keep_running: bool) -> int:
    missing = [name for name in NEEDED if importlib.util.find_spec(name.split(".")[0]) is None]
    if missing:
        print(f"the demo needs {', '.join(missing)}: pip install 'observekit[demo]'")
        return 2
    if not (EXAMPLES / "django" / "service1").is_dir():
        print(f"the demo runs the example services of a source checkout; {EXAMPLES} is missing")
        return 2
    from . import _demo

    statsd = _demo.StatsdReceiver()
    spans = _demo.SpanReceiver()
    port1, port2 = _free_port(), _free_port()
    url1, url2 = f"http://127.0.0.1:{port1}", f"http://127.0.0.1:{port2}"
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OBSERVEKIT_METRICS": "statsd",
        "STATSD_HOST": "127.0.0.1",
        "STATSD_PORT": str(statsd.port),
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": spans.endpoint,
    }
    database = "SQLite in a temporary directory"
    if os.environ.get("SERVICE2_DATABASE_URL"):
        parts = urlsplit(os.environ["SERVICE2_DATABASE_URL"])
        database = f"{parts.scheme}://{parts.hostname}:{parts.port}{parts.path}"  # no password
    services: list[_Service] = []
    try:
        service2 = _Service(
            "service2",
            [
                *(sys.executable, "-m", "uvicorn", "service2:app", "--host", "127.0.0.1"),
                *("--port", str(port2), "--no-access-log", "--log-level", "warning"),
            ],
            EXAMPLES / "starlette",
            {**env, "OTEL_SERVICE_NAME": "service2"},
        )
        services.append(service2)
        service1 = _Service(
            "service1",
            [
                *(sys.executable, "-m", "gunicorn", "-c", "python:observekit.gunicorn"),
                *("service1.wsgi", "--bind", f"127.0.0.1:{port1}", "--workers", "2"),
                *("--worker-class", "gthread", "--threads", "4", "--graceful-timeout", "5"),
            ],
            EXAMPLES / "django",
            {
                **env,
                "OTEL_SERVICE_NAME": "service1",
                "DJANGO_SETTINGS_MODULE": "service1.settings",
                "SERVICE2_URL": url2,
            },
        )
        services.append(service1)
        deadline = time.monotonic() + 30
        service2.wait_ready(port2, deadline)
        service1.wait_ready(port1, deadline)
        print("observekit demo")
        print(f"  service1  Django under gunicorn (gthread, 2 workers)  {url1}")
        print(f"  service2  Starlette under uvicorn, {database}  {url2}")
        print(f"  statsd receiver 127.0.0.1:{statsd.port}/udp and OTLP receiver {spans.endpoint}")
        print("  (both in this process)\n")

        sent: dict[str, int] = {}
        answers: list[tuple[str, str | None, int, str]] = []
        for path, request_id in BURST:
            status, rid = _get(url1 + path, request_id)
            sent[path] = sent.get(path, 0) + 1
            answers.append((path, request_id, status, rid))
        print(f"sent {len(BURST)} requests to service1:")
        for path, request_id, status, rid in answers:
            incoming = f"X-Request-ID: {request_id}" if request_id else "no ID header"
            print(f"  GET {path:<6} {incoming:<26} -> {status}  X-Request-ID: {rid}")

        # Metrics: one timer per request, service2 gets one call per GET /. Each request
        # ends with one access line per service; wait for them all to be read.
        expected = len(BURST) + sent.get("/", 0)
        _wait(lambda: len(statsd.timers) >= expected, 5.0)
        for service, count in ((service1, len(BURST)), (service2, sent.get("/", 0))):
            _wait(lambda s=service, n=count: _access_lines(s) >= n, 5.0)
        # The trace of the last request to / that came with an ID (the first ones include
        # the workers' warm-up): found by its access line.
        chosen = [rid for path, given, _, rid in answers if path == "/" and given][-1]
        trace_id = next(
            (
                str(x.get("trace_id", ""))
                for x in service1.snapshot()
                if x.get("request_id") == chosen and x.get("logger") == "observekit.access"
            ),
            "",
        )
        tree = spans.wait_for_trace(trace_id, 4) if trace_id else []

        print("\n== Logs of both services, interleaved in time ==\n")
        lines = sorted(
            (
                (str(x.get("timestamp", "")), s.name, x)
                for s in services
                for x in s.snapshot()
                if x.get("request_id")
            ),
            key=lambda item: item[0],
        )
        print(f"-- request {chosen}: its lines in both services, as written --")
        for _, _, line in lines:
            if line.get("request_id") == chosen:
                print(json.dumps(line))
        print("\n-- every request's lines (time, service, request ID, level, logger, message) --")
        for _, name, line in lines:
            print(_short(name, line))

        print(f"\n== Trace {trace_id} (request {chosen}) ==\n")
        for row in _demo.trace_tree(tree):
            print(row)

        print("\n== RED metrics per service and route (from the statsd timers received) ==\n")
        for row in _demo.red_table(statsd.timers):
            print(row)

        if keep_running:
            # SIGTERM (a supervisor, `kill`) stops the services too, as Ctrl-C does.
            signal.signal(signal.SIGTERM, _interrupt)
            print(f"\nthe services stay up: curl -i {url1}/  curl -i {url1}/fail  curl -i {url2}/")
            print("Ctrl-C stops them")
            with contextlib.suppress(KeyboardInterrupt):
                service1.proc.wait()
    finally:
        for service in reversed(services):
            service.stop()
        statsd.close()
        spans.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``observekit`` command."""
    parser = argparse.ArgumentParser(prog="observekit")
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser(
        "demo", help="run two services, send them requests, print their logs, a trace and metrics"
    )
    demo_parser.add_argument(
        "--keep-running", action="store_true", help="leave the services up for you to curl"
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args.keep_running)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
