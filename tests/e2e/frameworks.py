"""Shared by the framework e2e tests: one real server subprocess with a statsd and an OTLP receiver.

The server's stdout (JSON lines) goes to a file read back with
:class:`tests.e2e.test_servers.LogFile`; ``STATSD_HOST``/``STATSD_PORT`` and
``OTEL_EXPORTER_OTLP_ENDPOINT`` point at receivers in this process, so each
test can check the route template on the access line, in the metrics and in
the span name of the same request. Every request carries a unique User-Agent,
which the test apps log as ``probe``.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_servers import (
    ROOT,
    LogFile,
    _child_env,
    _free_port,
    _stop,
    _wait_until_listening,
)
from tests.otlp_receiver import OTLPReceiver
from tests.statsd_receiver import StatsdReceiver

Line = dict[str, Any]
WAIT_SECONDS = 15.0


@dataclass
class Sent:
    """One request, its response, and the lines it produced (found by its User-Agent)."""

    response: httpx.Response
    user_agent: str
    lines: list[Line]

    @property
    def request_id(self) -> str:
        ids = self.response.headers.get_list("x-request-id")
        assert len(ids) == 1, ids
        return ids[0]

    @property
    def access(self) -> Line:
        access = [line for line in self.lines if line["logger"] == "observekit.access"]
        assert len(access) == 1, self.lines
        return access[0]

    @property
    def app_lines(self) -> list[Line]:
        return [line for line in self.lines if line["logger"] == "e2e.app"]


@dataclass
class Running:
    name: str
    base_url: str
    proc: subprocess.Popen[bytes]
    log: LogFile
    stderr_path: Path
    statsd: StatsdReceiver
    otlp: OTLPReceiver
    sent: list[Sent] = field(default_factory=list)

    def stderr_tail(self, lines: int = 40) -> str:
        text = self.stderr_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def send(self, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> Sent:
        """Send ``path`` with a unique User-Agent; wait for its access line."""
        user_agent = f"observekit-e2e/{uuid.uuid4().hex}"
        request_headers = httpx.Headers(headers)
        request_headers["User-Agent"] = user_agent
        with httpx.Client(base_url=self.base_url, timeout=30.0) as client:
            response = client.request(method, path, headers=request_headers)

        def mine(line: Line) -> bool:
            return line.get("probe") == user_agent or line.get("user_agent.original") == user_agent

        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            lines = [line for line in self.log.lines() if mine(line)]
            if any(line.get("user_agent.original") == user_agent for line in lines):
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{self.name}: no access line for {path}:\n{self.stderr_tail()}")
            time.sleep(0.02)
        sent = Sent(response, user_agent, lines)
        self.sent.append(sent)
        return sent

    def lines_with_id(self, request_id: str) -> list[Line]:
        return [line for line in self.log.lines() if line.get("request_id") == request_id]

    def request_metrics(self, route: str, status: int) -> list[dict[str, str]]:
        """Tags of every ``http.server.requests`` counter received for ``route`` and ``status``."""
        found = []
        for datagram in self.statsd.datagrams:
            for metric in datagram.metrics:
                tags = metric.tag_dict
                if (
                    metric.name.endswith("http.server.requests")
                    and tags.get("http.route") == route
                    and tags.get("http.response.status_code") == str(status)
                ):
                    found.append(tags)
        return found

    def wait_metric(self, name: str, route: str, status: int) -> dict[str, str]:
        """The tags of the first ``name`` datagram for ``route``/``status`` (waits for it)."""
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            for datagram in self.statsd.datagrams:
                for metric in datagram.metrics:
                    tags = metric.tag_dict
                    if (
                        metric.name.endswith(name)
                        and tags.get("http.route") == route
                        and tags.get("http.response.status_code") == str(status)
                    ):
                        return tags
            if time.monotonic() > deadline:
                names = sorted(
                    {
                        f"{m.name} {m.tag_dict.get('http.route')}"
                        for d in self.statsd.datagrams
                        for m in d.metrics
                    }
                )
                pytest.fail(f"{self.name}: no {name} for {route} {status}; got {names}")
            time.sleep(0.02)

    def wait_span(self, trace_id: str) -> dict[str, Any]:
        """The SERVER span of the trace ``trace_id`` (the request ID of an untagged request)."""
        spans = self.otlp.wait_for(
            lambda spans: any(s["trace_id"] == trace_id for s in spans), timeout=WAIT_SECONDS
        )
        return next(s for s in spans if s["trace_id"] == trace_id and s["kind"] == "SERVER")


@contextlib.contextmanager
def run_server(
    name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None
) -> Iterator[Running]:
    """Start ``argv`` (``{port}`` filled in) with statsd and OTLP receivers; stop it after."""
    port = _free_port()
    argv = [part.format(port=port) for part in argv]
    statsd = StatsdReceiver()
    otlp = OTLPReceiver()
    otlp.__enter__()
    full_env = _child_env("STATSD_", "DJANGO_")
    full_env.update(
        PYTHONPATH=str(ROOT),
        STATSD_HOST="127.0.0.1",
        STATSD_PORT=str(statsd.port),
        OTEL_EXPORTER_OTLP_ENDPOINT=otlp.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="100",
        OBSERVEKIT_SERVICE_VERSION="e2e",
    )
    full_env.update(env or {})
    stdout_path, stderr_path = workdir / "stdout.log", workdir / "stderr.log"
    with stdout_path.open("ab") as out, stderr_path.open("ab") as err:
        proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=workdir,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    try:
        _wait_until_listening(proc, port, stderr_path)
        yield Running(
            name, f"http://127.0.0.1:{port}", proc, LogFile(stdout_path), stderr_path, statsd, otlp
        )
    finally:
        _stop(proc)
        otlp.close()
        statsd.close()


# -- checks every framework passes ---------------------------------------------------


def check_request_id_echo(server: Running, path: str) -> Sent:
    """A valid incoming X-Request-ID comes back once and is on the app and access lines."""
    incoming = f"e2e-{uuid.uuid4().hex[:12]}"
    sent = server.send(path, {"X-Request-ID": incoming})
    assert sent.response.status_code == 200, sent.response.text
    assert sent.response.headers.get_list("x-request-id") == [incoming]
    assert sent.app_lines, sent.lines
    assert {line.get("request_id") for line in sent.lines} == {incoming}
    return sent


def check_route(server: Running, path: str, route: str) -> Sent:
    """The route template is on the access line, in the statsd metrics and the span name."""
    sent = server.send(path)
    assert sent.response.status_code == 200, sent.response.text
    access = sent.access
    assert access["http.route"] == route
    assert access["url.path"] == path.split("?")[0]
    assert access["http.response.status_code"] == 200
    assert access["request_id"] == sent.request_id
    tags = server.wait_metric("http.server.request.duration", route, 200)
    assert tags["service.name"].startswith("e2e-")
    # No incoming ID: the request ID is the trace ID, so the span is found by it.
    span = server.wait_span(sent.request_id)
    assert span["name"] == f"GET {route}"
    assert span["attributes"]["http.route"] == route
    return sent


def check_exception(server: Running, path: str, route: str, error_type: str = "ValueError") -> Sent:
    """An exception: a 500 carrying the ID, ONE error line with traceback, counted, on the span."""
    sent = server.send(path)
    assert sent.response.status_code == 500
    rid = sent.request_id
    errors = [
        line
        for line in server.lines_with_id(rid)
        if line["level"] == "ERROR" and "exception.stacktrace" in line
    ]
    assert len(errors) == 1, errors
    assert errors[0]["exception.type"] == error_type
    assert "Traceback" in errors[0]["exception.stacktrace"]
    access = sent.access
    assert access["http.response.status_code"] == 500
    assert access["error.type"] == error_type
    assert access["http.route"] == route
    assert access["level"] == "ERROR"
    tags = server.wait_metric("http.server.exceptions", route, 500)
    assert tags["error.type"] == error_type
    span = server.wait_span(rid)
    assert span["name"] == f"GET {route}"
    assert span["status"]["code"] == "ERROR"
    return sent
