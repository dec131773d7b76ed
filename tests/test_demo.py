"""The README's demo command runs two real services and prints their logs, a trace and RED metrics."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from observekit.cli import BURST

pytestmark = pytest.mark.e2e


def _section(out: str, title: str) -> list[str]:
    """The non-empty lines of the ``== title ...`` section."""
    start = out.index(f"== {title}")
    rest = out[start:].split("\n", 1)[1]
    end = rest.find("\n== ")
    body = rest if end == -1 else rest[:end]
    return [x for x in body.splitlines() if x.strip()]


def test_demo_shows_shared_ids_a_trace_tree_and_red_counts() -> None:
    """`observekit demo`: both services log the same request IDs, one trace spans both down to the SELECT, and the metric counts equal the requests sent."""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "observekit.cli", "demo"], capture_output=True, text=True, timeout=60
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert elapsed < 30, elapsed

    # Every response's X-Request-ID: an incoming one is kept, else a new 32-hex one.
    answers = re.findall(
        r"^  GET (/\S*) +(?:X-Request-ID: (\S+)|no ID header) +-> (\d{3})  X-Request-ID: (\S+)$",
        out,
        re.M,
    )
    assert [(path, given or None) for path, given, _, _ in answers] == BURST
    for path, given, status, rid in answers:
        assert status == ("200" if path == "/" else "500")
        assert rid == given if given else re.fullmatch(r"[0-9a-f]{32}", rid)

    # The interleaved log lines: each ID sent to / shows up in both services' lines.
    logs = _section(out, "Logs of both services")
    short = [x.split() for x in logs if re.match(r"\d\d:\d\d:\d\d\.\d{3}  ", x)]
    by_id: dict[str, set[str]] = {}
    for fields in short:
        by_id.setdefault(fields[2], set()).add(fields[1])
    for path, _, _, rid in answers:
        assert by_id[rid] == ({"service1", "service2"} if path == "/" else {"service1"}), rid
    times = [fields[0] for fields in short]
    assert times == sorted(times)
    assert {"service1", "service2"} <= {fields[1] for fields in short[:12]}
    # The failing route: logged once as ERROR with its 500 access line.
    fail_id = next(rid for path, _, _, rid in answers if path == "/fail")
    assert [f[3:5] for f in short if f[2] == fail_id] == [
        ["INFO", "service1"],
        ["ERROR", "observekit"],
        ["ERROR", "observekit.access"],
    ]

    # The trace tree: service1 GET / > its client GET > service2 GET / > SELECT.
    trace = _section(out, "Trace")
    shape = [(len(x) - len(x.lstrip()), x.split()[0:3]) for x in trace]
    assert shape == [
        (0, ["GET", "/", "service1"]),
        (2, ["GET", "service1", "CLIENT"]),
        (4, ["GET", "/", "service2"]),
        (6, ["SELECT", "service2", "CLIENT"]),
    ], trace
    durations = [float(x.split()[-2]) for x in trace]
    assert all(d > 0 for d in durations)
    assert durations[0] >= durations[1]

    # RED: counts equal the requests sent per route; /fail's all count as errors.
    red = {tuple(x.split()[:3]): x.split()[3:] for x in _section(out, "RED metrics")[1:]}
    sent_root = sum(1 for path, _ in BURST if path == "/")
    sent_fail = len(BURST) - sent_root
    assert set(red) == {
        ("service1", "GET", "/"),
        ("service1", "GET", "/fail"),
        ("service2", "GET", "/"),
    }
    assert red["service1", "GET", "/"][:2] == [str(sent_root), "0"]
    assert red["service1", "GET", "/fail"][:2] == [str(sent_fail), str(sent_fail)]
    assert red["service2", "GET", "/"][:2] == [str(sent_root), "0"]
    for p50, p95 in (values[2:] for values in red.values()):
        assert 0 < float(p50) <= float(p95)


def test_keep_running_leaves_both_services_up_until_stopped() -> None:
    """`observekit demo --keep-running` prints URLs that answer (with a request ID) and stops both services on SIGTERM."""
    import signal
    import socket
    import urllib.request

    with subprocess.Popen(
        [sys.executable, "-m", "observekit.cli", "demo", "--keep-running"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            urls: list[str] = []
            for line in proc.stdout:
                if line.startswith("the services stay up:"):
                    urls = re.findall(r"curl -i (\S+)", line)
                    break
            assert len(urls) == 3, proc.stderr.read() if proc.stderr else ""
            request = urllib.request.Request(urls[0], headers={"X-Request-ID": "by-hand-1"})  # noqa: S310
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                assert response.status == 200
                assert response.headers["X-Request-ID"] == "by-hand-1"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
            for url in (urls[0], urls[2]):
                port = int(url.rstrip("/").rsplit(":", 1)[1])
                with (
                    pytest.raises(ConnectionRefusedError),
                    socket.create_connection(("127.0.0.1", port), timeout=1),
                ):
                    pass
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
