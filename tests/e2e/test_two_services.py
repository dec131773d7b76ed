"""End-to-end, two services: the talk's demo with real servers and a real OTLP receiver.

service1 (``tests/e2e/two_service1.py``, WSGI under gunicorn) calls service2
(``tests/e2e/two_service2.py``, ASGI under uvicorn) with requests, httpx sync and
httpx async; service2 runs a sqlite3 query inside a span. Both export to one
in-test OTLP/HTTP receiver. Checked: every log line of both services for one
incoming request carries the same request ID (the incoming ``X-Request-ID``, or
the one service1 generated), and the spans form one trace: service1 SERVER ->
CLIENT -> service2 SERVER -> the ``SELECT`` span. And 100 concurrent async calls
under ``asyncio.gather``, each in its own request context, arrive at service2
each with their own ID.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_servers import _child_env, _free_port, _stop, _wait_until_healthy
from tests.otlp_receiver import OTLPReceiver, Span

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
BOOT_SECONDS = 20.0
ROUTES = ["/requests", "/httpx", "/httpx-async"]
Line = dict[str, Any]


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    base_url: str
    stdout: Path
    stderr: Path

    def lines(self) -> list[Line]:
        out = []
        for raw in self.stdout.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                line = json.loads(raw)
                if isinstance(line, dict):
                    out.append(line)
        return out

    def tail(self) -> str:
        return self.stderr.read_text(errors="replace")[-3000:]


@contextlib.contextmanager
def _serving(argv: list[str], port: int, workdir: Path, env: dict[str, str]) -> Iterator[Service]:
    """Start a server in its own process group, wait for /healthz; SIGTERM, then kill, at the end."""
    workdir.mkdir()
    stdout, stderr = workdir / "stdout.log", workdir / "stderr.log"
    with stdout.open("ab") as out, stderr.open("ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", *argv],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    service = Service(proc, f"http://127.0.0.1:{port}", stdout, stderr)
    try:
        _wait_until_healthy(proc, service.base_url, stderr, BOOT_SECONDS)
        yield service
    finally:
        _stop(proc, grace=15.0)


@dataclass
class Demo:
    receiver: OTLPReceiver
    service1: Service
    service2: Service


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    workdir = tmp_path_factory.mktemp("two-services")
    port1, port2 = _free_port(), _free_port()
    with OTLPReceiver() as receiver:
        env = _child_env()
        env.update(
            PYTHONPATH=str(ROOT),
            TWO_E2E_ENDPOINT=receiver.endpoint,
            TWO_E2E_SERVICE2=f"http://127.0.0.1:{port2}",
        )
        service2_argv = [
            "uvicorn",
            "tests.e2e.two_service2:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port2),
            "--no-access-log",
            "--timeout-graceful-shutdown",
            "5",
        ]
        service1_argv = [
            "gunicorn",
            "tests.e2e.two_service1:app",
            "--workers",
            "1",
            "--worker-class",
            "sync",
            "--bind",
            f"127.0.0.1:{port1}",
            "--timeout",
            "60",
        ]
        with (
            _serving(service2_argv, port2, workdir / "service2", env) as service2,
            _serving(service1_argv, port1, workdir / "service1", env) as service1,
        ):
            yield Demo(receiver, service1, service2)


def _call(demo: Demo, route: str, request_id: str | None) -> tuple[str, dict[str, Any]]:
    """GET ``route`` on service1 with a unique User-Agent (the probe); returns it and the body."""
    probe = f"two-e2e/{uuid.uuid4().hex}"
    headers = {"User-Agent": probe}
    if request_id is not None:
        headers["X-Request-ID"] = request_id
    response = httpx.get(f"{demo.service1.base_url}{route}", headers=headers, timeout=30.0)
    assert response.status_code == 200, demo.service1.tail()
    return probe, response.json()


def _lines_of(service: Service, probe: str, expected: int) -> list[Line]:
    """The app lines (``probe``), the access line (``user_agent.original``) and, in service1,
    the client's DEBUG line (``url.full`` ends at service2) of one request; waits for all."""
    deadline = time.monotonic() + 10.0
    while True:
        found = [
            line
            for line in service.lines()
            if line.get("probe") == probe or line.get("user_agent.original") == probe
        ]
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def _trace(receiver: OTLPReceiver, trace_id: str) -> list[Span]:
    def complete(spans: list[Span]) -> bool:
        return len([s for s in spans if s["trace_id"] == trace_id]) >= 4

    spans = receiver.wait_for(complete, timeout=10.0)
    return [s for s in spans if s["trace_id"] == trace_id]


@pytest.mark.parametrize("incoming", [True, False], ids=["incoming-id", "no-incoming-id"])
@pytest.mark.parametrize("route", ROUTES)
def test_one_request_id_on_every_line_of_both_services(
    demo: Demo, route: str, incoming: bool
) -> None:
    """The incoming X-Request-ID (or the one service1 generated without one) is on every
    log line of both services for that request, and is what service2 saw."""
    sent = f"two-e2e-{uuid.uuid4().hex[:12]}" if incoming else None
    probe, body = _call(demo, route, sent)
    request_id = body["request_id"]
    if sent is not None:
        assert request_id == sent
    assert request_id
    assert body["service2"]["request_id"] == request_id
    assert body["service2"]["count"] == 3

    # service1: two app lines and its access line (found by probe), plus the client's
    # DEBUG line, which carries no probe: it is the one line for service2's URL with this ID.
    lines1 = _lines_of(demo.service1, probe, expected=3)
    assert sorted(line["logger"] for line in lines1) == [
        "e2e.service1",
        "e2e.service1",
        "observekit.access",
    ], lines1
    assert {line.get("request_id") for line in lines1} == {request_id}
    client_lines = [
        line
        for line in demo.service1.lines()
        if line.get("logger") == "observekit.client" and line.get("request_id") == request_id
    ]
    assert len(client_lines) == 1, client_lines
    assert client_lines[0]["url.full"] == f"{demo.service2.base_url}/work"
    assert client_lines[0]["http.response.status_code"] == 200

    # service2: two app lines and its access line, all with service1's request ID.
    lines2 = _lines_of(demo.service2, probe, expected=3)
    assert sorted(line["logger"] for line in lines2) == [
        "e2e.service2",
        "e2e.service2",
        "observekit.access",
    ], lines2
    assert {line.get("request_id") for line in lines2} == {request_id}


@pytest.mark.parametrize("route", ROUTES)
def test_spans_of_both_services_form_one_trace(demo: Demo, route: str) -> None:
    """service1 SERVER -> its CLIENT span -> service2 SERVER -> the SELECT span: one trace,
    each span the child of the one before, each from the right service."""
    _, body = _call(demo, route, None)
    trace_id = body["trace_id"]
    assert body["service2"]["trace_id"] == trace_id
    spans = _trace(demo.receiver, trace_id)
    assert len(spans) == 4, [(s["name"], s["kind"]) for s in spans]

    def one(kind: str, service: str) -> Span:
        found = [s for s in spans if s["kind"] == kind and s["resource"]["service.name"] == service]
        assert len(found) == 1, spans
        return found[0]

    server1 = one("SERVER", "e2e-service1")
    client = [s for s in spans if s["kind"] == "CLIENT" and s["name"] == "GET"]
    assert len(client) == 1, spans
    client1 = client[0]
    server2 = one("SERVER", "e2e-service2")
    db = [s for s in spans if s["name"] == "SELECT"]
    assert len(db) == 1, spans
    db_span = db[0]

    assert server1["parent_span_id"] is None
    assert server1["name"] == f"GET {route}"
    assert client1["resource"]["service.name"] == "e2e-service1"
    assert client1["parent_span_id"] == server1["span_id"]
    assert client1["attributes"]["url.full"] == f"{demo.service2.base_url}/work"
    assert client1["attributes"]["http.response.status_code"] == 200
    assert server2["parent_span_id"] == client1["span_id"]
    assert server2["name"] == "GET /work"
    assert db_span["resource"]["service.name"] == "e2e-service2"
    assert db_span["parent_span_id"] == server2["span_id"]
    assert db_span["attributes"]["db.system"] == "sqlite"
    # Within one process each child lies within its parent's time span (one clock: same
    # host). Across the wire only the start is ordered: service2's span ends after its
    # last byte is sent, which may be after service1's client has read it and ended.
    for parent, child in ((server1, client1), (server2, db_span)):
        assert parent["start_ns"] <= child["start_ns"] <= child["end_ns"] <= parent["end_ns"]
    assert client1["start_ns"] <= server2["start_ns"] <= client1["end_ns"]


def test_hundred_concurrent_async_calls_each_carry_their_own_id(demo: Demo) -> None:
    """Inside one service1 request, 100 httpx calls under asyncio.gather, each in its own
    request_context, reach service2 each with their own request ID."""
    _, body = _call(demo, "/fan-out", "fan-out-e2e")
    pairs = body["service2"]
    assert len(pairs) == 100
    assert [received for _, received in pairs] == [f"fan-out-e2e-{i}" for i in range(100)]
    assert all(sent == received for sent, received in pairs)
