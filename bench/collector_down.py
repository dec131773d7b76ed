#!/usr/bin/env python
"""Collector down: steady load on a traced app whose OTLP endpoint refuses connections.

    .venv/bin/python bench/collector_down.py                  # 60 s (+ 5 s warm-up), gunicorn
    .venv/bin/python bench/collector_down.py --seconds 10     # the bounded CI run
    .venv/bin/python bench/collector_down.py --server uvicorn --json out.json

A real server (gunicorn ``--preload``, gthread workers; or uvicorn) serves an app
that opens one server span per request through ``observekit.tracing.ServerSpans``
and exports through the real OTLP/HTTP exporter to a port on 127.0.0.1 that nothing
listens on. This process loads it over N keep-alive connections (raw asyncio
sockets, no client library in the way; each reconnects every 200 requests, so
every worker gets its share), first for a warm-up, then for
``--seconds``. It reads each server process's VmRSS from /proc before the
warm-up, after it and at the end, then stops the server with SIGTERM and reads
the JSON log lines the app wrote (observekit's drop warnings, the exporter's own).

Pass (exit 0) when: no request failed, and no server process grew by 20 MB or
more after the warm-up. The report also shows the dropped-span count (from the
warnings' ``observekit.spans_dropped``) and how many drop warnings were written:
at most one a minute per process, plus one at exit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

try:
    from bench.loadgen import run_load
except ImportError:  # run as a script: bench/ is on sys.path, the repository root may not be
    from loadgen import run_load  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parent.parent
RSS_LIMIT_MB = 20.0
SHUTDOWN_TIMEOUT = 5.0


# -- the app the server runs (built by the factories below, in the server process) ------


class _NoSpans:
    """``--no-tracing``: the same app with no span work, as the memory baseline."""

    header_names: tuple[str, ...] = ()

    def start(self, *args: Any, **kwargs: Any) -> None:
        return None

    def activate(self, handle: Any) -> None:
        return None

    def deactivate(self, token: Any) -> None:
        pass

    def finish(self, handle: Any, **kwargs: Any) -> None:
        pass


def _tracing() -> Any:
    import observekit
    import observekit.logging
    import observekit.tracing

    if os.environ.get("COLLECTOR_DOWN_TRACING") == "0":
        observekit.logging.configure(observekit.Config(service_name="collector-down"))
        return _NoSpans()

    config = observekit.Config(
        service_name="collector-down",
        service_version="bench",
        environment="bench",
        traces_exporter="otlp",
        otlp_endpoint=os.environ["COLLECTOR_DOWN_ENDPOINT"],
        shutdown_timeout=SHUTDOWN_TIMEOUT,
    )
    observekit.logging.configure(config)
    observekit.tracing.configure(config)
    return observekit.tracing.ServerSpans(config)


def create_wsgi() -> Any:
    """gunicorn ``bench.collector_down:create_wsgi()``: configures tracing (pre-fork with --preload)."""
    spans = _tracing()
    names = tuple((n, "HTTP_" + n.upper().replace("-", "_")) for n in spans.header_names)
    body = b'{"ok": true}'

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        headers = {name: environ[key] for name, key in names if key in environ}
        path = environ.get("PATH_INFO", "/")
        handle = spans.start(
            environ["REQUEST_METHOD"],
            path,
            environ["wsgi.url_scheme"],
            headers,
            client=environ.get("REMOTE_ADDR"),
            server_address=environ.get("SERVER_NAME"),
            server_port=int(environ["SERVER_PORT"]),
            user_agent=environ.get("HTTP_USER_AGENT"),
            protocol_version="1.1",
            query=environ.get("QUERY_STRING") or None,
            route="/work",
        )
        token = spans.activate(handle)
        try:
            start_response(
                "200 OK",
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
            return [body]
        finally:
            spans.deactivate(token)
            spans.finish(handle, status=200, route=None, error=None, error_type=None)

    return app


def create_asgi() -> Any:
    """uvicorn ``--factory bench.collector_down:create_asgi``."""
    import observekit.tracing

    spans = _tracing()
    wanted = frozenset(spans.header_names)
    body = b'{"ok": true}'
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"12")],
    }

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await observekit.tracing.ashutdown()  # uvicorn runs no exit handlers
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope["headers"]
            if k.decode("latin-1") in wanted
        }
        server = scope.get("server") or (None, None)
        handle = spans.start(
            scope["method"],
            scope["path"],
            scope.get("scheme", "http"),
            headers,
            client=(scope.get("client") or (None,))[0],
            server_address=server[0],
            server_port=server[1],
            user_agent=None,
            protocol_version=scope.get("http_version"),
            query=None,
            route="/work",
        )
        token = spans.activate(handle)
        try:
            await send(start)
            await send({"type": "http.response.body", "body": body})
        finally:
            spans.deactivate(token)
            spans.finish(handle, status=200, route=None, error=None, error_type=None)

    return app


# -- the bench ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return sorted(out)


RECONNECT_EVERY = 200
"""Requests per connection: reconnecting spreads the load over every worker process."""


def _load(port: int, seconds: float, connections: int) -> dict[str, int]:
    result = run_load(
        port,
        path="/work",
        seconds=seconds,
        connections=connections,
        reconnect_every=RECONNECT_EVERY,
    )
    return {"ok": int(result["2xx"]), "failed": int(result["other"] + result["errors"])}


def _command(server: str, port: int, workers: int) -> list[str]:
    if server == "gunicorn":
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "bench.collector_down:create_wsgi()",
            "--preload",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--worker-class",
            "gthread",
            "--threads",
            "4",
            "--graceful-timeout",
            "30",
        ]
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "bench.collector_down:create_asgi",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
    ]


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode} before it was ready")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"server not listening after {timeout} s")
        time.sleep(0.05)


def _log_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for raw in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            value = json.loads(raw)
            if isinstance(value, dict):
                lines.append(value)
    return lines


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    with socket.socket() as probe:  # the collector's port: bound once, then nothing listens
        probe.bind(("127.0.0.1", 0))
        collector_port = int(probe.getsockname()[1])
    port = _free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"GUNICORN_CMD_ARGS", "WEB_CONCURRENCY", "PYTHONWARNINGS"}
        and not k.startswith(("OTEL_", "OBSERVEKIT_"))
    }
    env["PYTHONPATH"] = str(ROOT)
    env["COLLECTOR_DOWN_ENDPOINT"] = f"http://127.0.0.1:{collector_port}"
    env["COLLECTOR_DOWN_TRACING"] = "0" if args.no_tracing else "1"
    stdout, stderr = workdir / "stdout.log", workdir / "stderr.log"
    with stdout.open("ab") as out, stderr.open("ab") as err:
        proc = subprocess.Popen(
            _command(args.server, port, args.workers),
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    try:
        _wait_ready(port, proc)
        pids = [proc.pid]
        if args.server == "gunicorn":  # the workers boot after the master listens
            deadline = time.monotonic() + 30.0
            while len(pids := _children(proc.pid)) < args.workers:
                if time.monotonic() > deadline:
                    raise SystemExit(f"only {len(pids)} of {args.workers} workers booted")
                time.sleep(0.05)
        rss_start = {pid: _rss_mb(pid) for pid in pids}
        print(
            f"server {args.server} up, processes {pids}; warm-up {args.warmup} s", file=sys.stderr
        )
        warm = _load(port, args.warmup, args.connections)
        rss_warm = {pid: _rss_mb(pid) for pid in pids}
        print(f"load {args.seconds} s over {args.connections} connections", file=sys.stderr)
        started = time.monotonic()
        main = _load(port, args.seconds, args.connections)
        elapsed = time.monotonic() - started
        rss_end = {pid: _rss_mb(pid) for pid in pids}
        if proc.poll() is not None:
            raise SystemExit(f"server died during the load (exit {proc.returncode})")
        stopping = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=SHUTDOWN_TIMEOUT + 30)
        except subprocess.TimeoutExpired:
            raise SystemExit("server did not exit within 35 s of SIGTERM") from None
        shutdown_seconds = time.monotonic() - stopping
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    lines = _log_lines(stdout)
    ours = [line for line in lines if line.get("logger") == "observekit.tracing"]
    drops = [line for line in ours if "observekit.spans_dropped" in line]
    dropped_by_pid: dict[Any, int] = {}
    warnings_by_pid: dict[Any, int] = {}
    for line in drops:
        pid = line.get("process.pid")
        dropped_by_pid[pid] = max(dropped_by_pid.get(pid, 0), int(line["observekit.spans_dropped"]))
        warnings_by_pid[pid] = warnings_by_pid.get(pid, 0) + 1
    failed_spans: dict[Any, int] = {}
    for line in ours:
        if "observekit.spans_failed" in line:
            pid = line.get("process.pid")
            failed_spans[pid] = max(failed_spans.get(pid, 0), int(line["observekit.spans_failed"]))
    exporter_lines = [
        line for line in lines if str(line.get("logger", "")).startswith("opentelemetry")
    ]
    growth = {
        pid: (rss_end[pid] or 0.0) - (rss_warm[pid] or 0.0)
        for pid in pids
        if rss_end.get(pid) is not None and rss_warm.get(pid) is not None
    }
    return {
        "server": args.server,
        "tracing": not args.no_tracing,
        "workers": len(pids),
        "seconds": round(elapsed, 1),
        "warmup_seconds": args.warmup,
        "connections": args.connections,
        "requests": main["ok"] + main["failed"],
        "requests_per_second": round((main["ok"] + main["failed"]) / elapsed, 1),
        "warmup_requests": warm["ok"] + warm["failed"],
        "failed": main["failed"] + warm["failed"],
        "rss_start_mb": {str(p): round(v or 0.0, 1) for p, v in rss_start.items()},
        "rss_after_warmup_mb": {str(p): round(v or 0.0, 1) for p, v in rss_warm.items()},
        "rss_end_mb": {str(p): round(v or 0.0, 1) for p, v in rss_end.items()},
        "rss_growth_mb": round(max(growth.values(), default=0.0), 2),
        "dropped_spans": sum(dropped_by_pid.values()),
        "failed_spans": sum(failed_spans.values()),
        "drop_warnings": max(warnings_by_pid.values(), default=0),
        "observekit_tracing_lines": len(ours),
        "exporter_log_lines": len(exporter_lines),
        "shutdown_seconds": round(shutdown_seconds, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="measured load (default 60)")
    parser.add_argument("--warmup", type=float, default=5.0, help="load before the RSS baseline")
    parser.add_argument("--server", choices=("gunicorn", "uvicorn"), default="gunicorn")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument(
        "--no-tracing", action="store_true", help="baseline: the same app and load, no spans"
    )
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--keep-logs", type=Path, help="copy the server's logs into this dir")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="collector-down-") as tmp:
        report = run(args, Path(tmp))
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for name in ("stdout.log", "stderr.log"):
                (args.keep_logs / name).write_bytes((Path(tmp) / name).read_bytes())
    checks = {
        "no failed requests": report["failed"] == 0,
        f"RSS growth after warm-up < {RSS_LIMIT_MB:.0f} MB": report["rss_growth_mb"] < RSS_LIMIT_MB,
    }
    print(json.dumps(report, indent=2))
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
