"""The chaos experiment: a slow dependency opens a breaker; a killed worker loses only its
in-flight requests. Self-contained; about 20 s. Run from the repository root::

    python examples/chaos/run.py

Starts, on free 127.0.0.1 ports: a UDP receiver standing in for statsd, service2
(gunicorn, 2 gthread workers) and service1 (uvicorn), which calls service2 with a
200 ms timeout, a breaker (5 consecutive failures, open 2 s, 1 probe) and a
client-side fault rule adding 300 ms to its calls to service2. The rule is held off
by its kill file until phase 2. Linux only (worker pids are read from /proc).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Statsd:
    """A UDP socket collecting the DogStatsD lines the services send."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            data = self.sock.recv(65536)
            self.lines.extend(data.decode().splitlines())

    def matching(self, *parts: str) -> list[str]:
        return [line for line in self.lines if all(p in line for p in parts)]


def start(argv: list[str], env: dict[str, str], log: Path, port: int) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=HERE, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{argv[2]} did not start; see {log}")


def load(url: str, n: int, concurrency: int) -> list[tuple[int, float]]:
    """``n`` GETs, ``concurrency`` at a time: (status or 0 on error, seconds) each."""

    def one(_: int) -> tuple[int, float]:
        started = time.perf_counter()
        try:
            status = httpx.get(url, timeout=5).status_code
        except httpx.HTTPError:
            status = 0
        return status, time.perf_counter() - started

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, range(n)))


def summary(results: list[tuple[int, float]]) -> str:
    by_status: dict[int, list[float]] = {}
    for status, seconds in results:
        by_status.setdefault(status, []).append(seconds)
    return ", ".join(
        f"{status}: {len(times)} (max {max(times) * 1000:.0f} ms)"
        for status, times in sorted(by_status.items())
    )


def json_lines(log: Path) -> list[dict[str, Any]]:
    out = []
    for raw in log.read_text().splitlines():
        if raw.startswith("{"):
            out.append(json.loads(raw))
    return out


def workers_of(master: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == master:
                found.append(int(entry.name))
    return sorted(found)


def short(line: dict[str, Any], keys: tuple[str, ...]) -> str:
    return json.dumps({k: line[k] for k in keys if k in line})


def main() -> int:
    statsd = Statsd()
    tmp = Path(tempfile.mkdtemp(prefix="observekit-chaos-"))
    kill_file = tmp / "faults-off"
    kill_file.touch()
    port1, port2 = free_port(), free_port()
    base = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "STATSD_HOST": "127.0.0.1",
        "STATSD_PORT": str(statsd.port),
    }
    env2 = {**base, "OTEL_SERVICE_NAME": "service2"}
    env1 = {
        **base,
        "OTEL_SERVICE_NAME": "service1",
        "SERVICE2_URL": f"http://127.0.0.1:{port2}",
        "OBSERVEKIT_BREAKERS_ENABLED": "1",
        "OBSERVEKIT_BREAKER_FAILURE_THRESHOLD": "5",
        "OBSERVEKIT_BREAKER_OPEN_SECONDS": "2",
        "OBSERVEKIT_BREAKER_HALF_OPEN_PROBES": "1",
        "OBSERVEKIT_FAULTS_ENABLED": "1",
        "OBSERVEKIT_FAULT_RULES": (
            "side=client,host=127.0.0.1,path=/work,latency=0.3,name=slow-service2"
        ),
        "OBSERVEKIT_FAULTS_KILL_FILE": str(kill_file),
    }
    log1, log2 = tmp / "service1.log", tmp / "service2.log"
    gunicorn = [sys.executable, "-m", "gunicorn", "services:service2", "--bind",
                f"127.0.0.1:{port2}", "--workers", "2", "--worker-class", "gthread",
                "--threads", "4", "--graceful-timeout", "2"]  # fmt: skip
    uvicorn = [sys.executable, "-m", "uvicorn", "services:service1", "--host", "127.0.0.1",
               "--port", str(port1), "--no-access-log", "--lifespan", "off"]  # fmt: skip
    procs = [start(gunicorn, env2, log2, port2), start(uvicorn, env1, log1, port1)]
    url1 = f"http://127.0.0.1:{port1}/"
    try:
        print("== 1. service1 -> service2, healthy: 40 requests, 4 at a time")
        print("  ", summary(load(url1, 40, 4)))

        print("== 2. inject +300 ms into service1 -> service2 calls (timeout 200 ms)")
        kill_file.unlink()
        time.sleep(1.1)  # the kill switch is looked at once a second
        print("  ", summary(load(url1, 40, 4)))

        print("== 3. fault off again; after the 2 s open period one probe closes the breaker")
        kill_file.touch()
        time.sleep(2.2)
        print("  ", summary(load(url1, 40, 4)))

        time.sleep(0.3)
        lines = json_lines(log1)
        print("-- service1 log: breaker transitions")
        for line in lines:
            if line.get("logger") == "observekit.breaker":
                print("  ", short(line, ("level", "logger", "message")))
        client = [line for line in lines if line.get("logger") == "observekit.client"]
        keys = ("level", "logger", "message", "error.type", "fault.injected", "duration_ms")
        print("-- service1 log: outgoing calls (first of each kind)")
        for kind in (("fault.injected", "timeout"), ("error.type", "circuit_open")):
            found = [line for line in client if line.get(kind[0]) and kind[1] in str(line)]
            if found:
                print("  ", short(found[0], keys), f"x{len(found)}")
        print("-- statsd lines from service1")
        for parts in (
            ("observekit.breaker.transitions",),
            ("observekit.faults.injected",),
            ("http.client.errors", "error.type:timeout"),
            ("http.client.errors", "error.type:circuit_open"),
        ):
            found = statsd.matching(*parts)
            if found:
                print("  ", found[0], f"x{len(found)}")
        moves = Counter(
            tuple(
                t.split(":")[1] for t in line.split("|#")[1].split(",") if t.startswith("breaker.")
            )
            for line in statsd.matching("observekit.breaker.transitions")
        )
        print("   transitions (from, to):", dict(moves))

        print("== 4. kill -9 a gunicorn worker of service2 under load (8 clients, 3 s)")
        url2 = f"http://127.0.0.1:{port2}/work"
        master = procs[0].pid
        before = workers_of(master)
        in_flight = 0
        in_flight_lock = threading.Lock()
        outcomes: Counter[str] = Counter()
        failed_at: list[float] = []
        stop = time.monotonic() + 3.0

        def client() -> None:
            nonlocal in_flight
            with httpx.Client(headers={"Connection": "close"}) as c:
                while time.monotonic() < stop:
                    with in_flight_lock:
                        in_flight += 1
                    try:
                        status = c.get(url2, timeout=5).status_code
                        outcomes[str(status)] += 1
                    except httpx.HTTPError as exc:
                        outcomes[type(exc).__name__] += 1
                        failed_at.append(time.monotonic())
                    finally:
                        with in_flight_lock:
                            in_flight -= 1

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        victim = before[0]
        with in_flight_lock:
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            at_kill = in_flight
        for t in threads:
            t.join()
        after = workers_of(master)
        failed = sum(n for k, n in outcomes.items() if k != "200")
        print(f"   workers {before} -> killed {victim} -> {after}")
        print(
            f"   outcomes {dict(outcomes)}; requests in flight (all workers) at the kill: {at_kill}"
        )
        late = max((t - killed_at for t in failed_at), default=0.0)
        print(f"   failed {failed} <= in flight {at_kill}: {failed <= at_kill}")
        print(f"   last failure {late * 1000:.0f} ms after the kill; none in the 2 s after")
        ok = failed <= at_kill and late < 0.5 and len(after) == 2 and victim not in after
        ok = ok and bool(statsd.matching("observekit.breaker.transitions", "breaker.to:open"))
        print("RESULT:", "ok" if ok else "UNEXPECTED")
        return 0 if ok else 1
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    raise SystemExit(main())
