"""Requests/s under real servers: the bare app, observekit with everything on, OpenTelemetry.

    .venv/bin/python bench/servers.py            # 3 rounds x 5 s per stack, about 2.5 minutes
    .venv/bin/python bench/servers.py --quick    # 1 round x 2 s: checks every stack serves
    .venv/bin/python bench/servers.py --parts    # also observekit one part at a time
    .venv/bin/python bench/servers.py --floor    # also the hand-written floor under gunicorn

Each stack runs under a real server on 127.0.0.1, loaded from a separate process
(`bench/loadgen.py`) for a bounded time after a warm-up; rounds interleave the
stacks in a shuffled order and each stack's figure is its median requests/s.
statsd datagrams go to a UDP socket and spans to a minimal OTLP/HTTP sink, both
in this process, so the exporters do their real work.

Goals (issue 3): under gunicorn sync workers, observekit with everything on keeps
at least 0.80x the bare app's requests/s; under uvicorn, it serves at least 3x
what OpenTelemetry's ASGI middleware serves. ``--floor`` adds, under gunicorn, the same
signals written by hand in one function with no OpenTelemetry (``floor`` in
``bench/server_apps.py``): where even it stays under 0.80x, no Python middleware that
writes those signals reaches the gunicorn goal on that machine.
"""

from __future__ import annotations

import argparse
import http.server
import importlib.util
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _uvicorn(loop: str, http: str) -> dict[str, object]:
    """uvicorn, one worker, with the given event loop and HTTP parser."""
    return {
        "kind": "asgi",
        "stacks": ["bare", "otel", "observekit"],
        "connections": 32,
        "cmd": lambda port: [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.server_apps:asgi_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
            "--loop",
            loop,
            "--http",
            http,
        ],
    }


SERVERS = {
    "gunicorn-sync": {
        "kind": "wsgi",
        "stacks": ["bare", "observekit"],
        "connections": 8,
        "cmd": lambda port: [
            sys.executable,
            "-m",
            "gunicorn",
            "bench.server_apps:wsgi_app",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--worker-class",
            "sync",
            "--log-level",
            "warning",
        ],
    },
    "uvicorn": _uvicorn("asyncio", "h11"),
    # uvicorn[standard]: uvloop and httptools, what most deployments install.
    "uvicorn-standard": {**_uvicorn("uvloop", "httptools"), "needs": ("uvloop", "httptools")},
}
GOALS = [
    ("gunicorn-sync", "observekit", "bare", 0.80),
    ("uvicorn", "observekit", "otel", 3.0),
    ("uvicorn-standard", "observekit", "otel", 3.0),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Sinks:
    """A statsd UDP socket drained by a thread, and an OTLP/HTTP endpoint answering 200."""

    def __init__(self) -> None:
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.settimeout(0.2)
        self.datagrams = 0
        self.span_posts = 0
        self._stop = False
        threading.Thread(target=self._drain, daemon=True).start()
        sinks = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                sinks.span_posts += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def _drain(self) -> None:
        while not self._stop:
            try:
                self.udp.recv(65535)
                self.datagrams += 1
            except OSError:
                continue

    @property
    def statsd_port(self) -> int:
        port: int = self.udp.getsockname()[1]
        return port

    @property
    def otlp_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}"

    def close(self) -> None:
        self._stop = True
        self.http.shutdown()
        self.http.server_close()
        self.udp.close()


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("server did not become ready")


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _tree(pid: int) -> list[int]:
    """The server's process and its children (gunicorn's workers), from /proc (Linux)."""
    out = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for child in f.read().split():
                    out += _tree(int(child))
    except OSError:
        pass
    return out


def _cpu_seconds(pids: list[int]) -> float | None:
    """User + system CPU seconds the processes have used; None where /proc is missing."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += int(fields[11]) + int(fields[12])
    return total / _TICK


def _load(port: int, seconds: float, connections: int) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "loadgen.py"),
            "--port",
            str(port),
            "--seconds",
            str(seconds),
            "--connections",
            str(connections),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, float] = json.loads(out)
    return result


def _sample(
    server: str, stack: str, sinks: _Sinks, seconds: float, warmup: float
) -> dict[str, float]:
    spec = SERVERS[server]
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "BENCH_KIND": str(spec["kind"]),
        "BENCH_STACK": stack,
        "BENCH_STATSD_PORT": str(sinks.statsd_port),
        "BENCH_OTLP_ENDPOINT": sinks.otlp_endpoint,
    }
    proc = subprocess.Popen(
        spec["cmd"](port),
        cwd=ROOT,
        env=env,  # type: ignore[operator]
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_ready(port, proc)
        _load(port, warmup, int(spec["connections"]))  # type: ignore[call-overload]
        pids = _tree(proc.pid)
        before = _cpu_seconds(pids)
        result = _load(port, seconds, int(spec["connections"]))  # type: ignore[call-overload]
        after = _cpu_seconds(pids)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    result["rps"] = result["2xx"] / result["seconds"]
    # CPU the server's processes spent per request: unlike requests/s, it barely moves
    # when another process competes for the CPUs.
    if before is not None and after is not None and result["2xx"]:
        result["cpu_us"] = (after - before) / result["2xx"] * 1e6
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument(
        "--quick", action="store_true", help="1 round x 2 s: checks every stack serves"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal fails")
    parser.add_argument("--stacks", default="", help="comma-separated subset, e.g. bare,otel")
    parser.add_argument(
        "--servers", default="", help=f"comma-separated subset of {', '.join(SERVERS)}"
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also run the hand-written floor under gunicorn (a lower bound; see server_apps.py)",
    )
    parser.add_argument(
        "--parts",
        action="store_true",
        help="also run observekit one part at a time (ids, access, statsd, spans)",
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.warmup = 1, 2.0, 0.5
    sinks = _Sinks()
    samples: dict[tuple[str, str], list[dict[str, float]]] = {}
    wanted = set(filter(None, args.stacks.split(",")))
    servers = set(filter(None, args.servers.split(","))) or set(SERVERS)
    if servers - set(SERVERS):
        parser.error(f"unknown server(s): {', '.join(sorted(servers - set(SERVERS)))}")
    parts = [f"observekit-{part}" for part in ("ids", "access", "statsd", "spans")]
    missing = {
        server: [m for m in spec.get("needs", ()) if importlib.util.find_spec(m) is None]  # type: ignore[attr-defined]
        for server, spec in SERVERS.items()
    }
    for server, modules in missing.items():
        if modules:
            print(f"{server}: skipped, {', '.join(modules)} not installed", file=sys.stderr)
    runs = [
        (server, stack)
        for server, spec in SERVERS.items()
        if server in servers and not missing[server]
        for stack in [*spec["stacks"], *(parts if args.parts else [])]  # type: ignore[misc]
        if not wanted or stack in wanted
    ]
    if args.floor and "gunicorn-sync" in servers:
        runs.append(("gunicorn-sync", "floor"))
    started = time.monotonic()
    try:
        for round_no in range(args.rounds):
            random.shuffle(runs)
            for server, stack in runs:
                samples.setdefault((server, stack), []).append(
                    _sample(server, stack, sinks, args.seconds, args.warmup)
                )
            print(
                f"round {round_no + 1}/{args.rounds} done ({time.monotonic() - started:.0f} s)",
                file=sys.stderr,
            )
    finally:
        sinks.close()
    print("# observekit under real servers (requests/s, median over rounds)\n")
    print(
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; {args.rounds} rounds x {args.seconds:g} s "
        f"per stack after {args.warmup:g} s warm-up; load from bench/loadgen.py in its own process\n"
    )
    print("| server | stack | req/s | server CPU µs/request | failed | non-2xx |")
    print("|---|---|---:|---:|---:|---:|")
    median: dict[tuple[str, str], float] = {}
    failed = False
    for (server, stack), results in sorted(samples.items()):
        median[server, stack] = statistics.median(r["rps"] for r in results)
        errors = sum(int(r["errors"]) for r in results)
        other = sum(int(r["other"]) for r in results)
        failed = failed or errors > 0 or other > 0
        cpu = [r["cpu_us"] for r in results if "cpu_us" in r]
        cpu_text = f"{statistics.median(cpu):.0f}" if cpu else "—"
        print(
            f"| {server} | {stack} | {median[server, stack]:.0f} | {cpu_text} | {errors} | {other} |"
        )
    print(
        f"\nstatsd datagrams received: {sinks.datagrams}; OTLP span posts received: {sinks.span_posts}\n"
    )
    ok = not failed
    for server, stack, base, goal in GOALS:
        if (server, stack) not in median or (server, base) not in median:
            continue
        ratio = median[server, stack] / median[server, base]
        passed = ratio >= goal
        ok = ok and passed
        print(
            f"{server}: {stack} / {base} = {ratio:.2f}x (goal >= {goal:g}x) {'PASS' if passed else 'FAIL'}"
        )
    if ("gunicorn-sync", "floor") in median and ("gunicorn-sync", "bare") in median:
        floor = median["gunicorn-sync", "floor"] / median["gunicorn-sync", "bare"]
        print(
            f"gunicorn-sync: floor / bare = {floor:.2f}x (hand-written, no OpenTelemetry: a bound)"
        )
    if failed:
        print("FAIL: some requests failed")
    return 1 if (args.strict and not ok) or failed else 0


if __name__ == "__main__":
    sys.exit(main())
