"""End-to-end: observekit's middleware behind real servers (gunicorn, uvicorn) on 127.0.0.1.

Each server runs as a subprocess (one per module, per server kind) serving
``tests/e2e/wsgi_app.py`` or ``tests/e2e/asgi_app.py``; its stdout (the JSON
log lines) and stderr (the server's own lines) go to files. The tests talk to
it with httpx and read the stdout file back, polling with a deadline because
the server writes its lines after the client already has the response.

Every request a test sends carries a unique ``User-Agent``. The apps log it as
``probe`` and observekit writes it on the access line as
``user_agent.original``, so a request's lines are found without relying on the
``request_id`` field that is under test.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]
STREAM_CHUNKS = 3  # the apps' STREAM_CHUNKS
GENERATED_ID = re.compile(r"[0-9a-f]{32}")
ALLOWED_CHARS = "ABCXYZabcxyz0189-._:+=/@"
ERROR_BODY = b"Internal Server Error\n"
WAIT_SECONDS = 15.0

Line = dict[str, Any]


# -- servers -----------------------------------------------------------------


@dataclass(frozen=True)
class ServerSpec:
    name: str
    kind: str  # "wsgi" or "asgi": which app module it serves
    command: str  # after ``python -m``; ``{port}`` is filled in
    rejects_control_bytes: bool  # answers 400 itself to a header value holding \x01

    @property
    def service_name(self) -> str:
        return f"e2e-{self.kind}"

    def argv(self, port: int) -> list[str]:
        return [sys.executable, "-m", *self.command.format(port=port).split()]


_GUNICORN = (
    "gunicorn tests.e2e.wsgi_app:app --bind 127.0.0.1:{port} --workers 2"
    " --timeout 60 --graceful-timeout 5"
)
# --no-access-log: uvicorn's own access lines are plain text on *stdout*.
_UVICORN = (
    "uvicorn tests.e2e.asgi_app:app --host 127.0.0.1 --port {port} --workers 1"
    " --no-access-log --timeout-graceful-shutdown 5"
)

SERVERS = [
    pytest.param(
        ServerSpec("gunicorn-sync", "wsgi", f"{_GUNICORN} --worker-class sync", True),
        id="gunicorn-sync",
    ),
    pytest.param(
        ServerSpec(
            "gunicorn-gthread", "wsgi", f"{_GUNICORN} --worker-class gthread --threads 8", True
        ),
        id="gunicorn-gthread",
    ),
    pytest.param(
        ServerSpec("uvicorn", "asgi", f"{_UVICORN} --loop asyncio --http h11", False),
        id="uvicorn",
    ),
    pytest.param(
        ServerSpec("uvicorn-standard", "asgi", f"{_UVICORN} --loop uvloop --http httptools", True),
        id="uvicorn-standard",
    ),
]
"""uvicorn twice: pure Python (asyncio loop, h11 parser), and what ``uvicorn[standard]``
installs and "auto" picks (uvloop, httptools), whose parser refuses control bytes in
header values itself."""


class LogFile:
    """The server's stdout file, read incrementally; only complete lines count."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self.raw: list[bytes] = []
        self.parsed: list[Line | None] = []

    def refresh(self) -> None:
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n")
        if end < 0:
            return
        for raw in data[:end].split(b"\n"):
            self.raw.append(raw)
            self.parsed.append(_parse(raw))
        self._offset += end + 1

    def mark(self) -> int:
        """A position: ``lines(since=mark)`` returns only lines written after it."""
        self.refresh()
        return len(self.raw)

    def lines(self, since: int = 0) -> list[Line]:
        """Every complete line that is a JSON object (test_stdout_is_json_lines checks the rest)."""
        self.refresh()
        return [line for line in self.parsed[since:] if line is not None]

    def text(self) -> bytes:
        self.refresh()
        return b"\n".join(self.raw)


def _parse(raw: bytes) -> Line | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


@dataclass
class Server:
    spec: ServerSpec
    base_url: str
    proc: subprocess.Popen[bytes]
    log: LogFile
    stderr_path: Path
    rejected: dict[str, int]
    """Generated ID -> worker PID, for every request this module sent with an invalid ID."""

    def stderr_tail(self, lines: int = 30) -> str:
        text = self.stderr_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def wait_for(
        self, what: str, found: Callable[[list[Line]], bool], timeout: float = WAIT_SECONDS
    ) -> list[Line]:
        """Poll the stdout file until ``found(lines)``; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.log.lines()
            if found(lines):
                return lines
            if self.proc.poll() is not None:
                pytest.fail(
                    f"{self.spec.name} exited while waiting for {what}:\n{self.stderr_tail()}"
                )
            if time.monotonic() > deadline:
                tail = b"\n".join(self.log.raw[-10:]).decode(errors="replace")
                pytest.fail(
                    f"{self.spec.name}: no {what} within {timeout} s.\nlast stdout lines:\n{tail}\n"
                    f"stderr:\n{self.stderr_tail()}"
                )
            time.sleep(0.02)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_listening(proc: subprocess.Popen[bytes], port: int, stderr: Path) -> None:
    deadline = time.monotonic() + 30.0
    while True:
        if proc.poll() is not None:
            pytest.fail(
                f"server exited with {proc.returncode}:\n{stderr.read_text(errors='replace')}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"server not listening on {port} after 30 s:\n{stderr.read_text()}")
            time.sleep(0.05)


def _wait_until_healthy(
    proc: subprocess.Popen[bytes], base_url: str, stderr: Path, seconds: float
) -> None:
    """Poll ``/healthz`` until it answers 200 (every worker booted); fail with the server's stderr."""
    deadline = time.monotonic() + seconds
    while True:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{_tail(stderr)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/healthz", timeout=1.0).status_code == 200:
                return
        if time.monotonic() > deadline:
            pytest.fail(f"not ready within {seconds} s (boot deadlock?):\n{_tail(stderr)}")
        time.sleep(0.05)


def _tail(stderr: Path) -> str:
    return stderr.read_text(errors="replace")[-3000:]


def _child_env(*drop_prefixes: str) -> dict[str, str]:
    """This environment without what would change how a server under test behaves."""
    return {
        key: value
        for key, value in os.environ.items()
        if key not in {"GUNICORN_CMD_ARGS", "WEB_CONCURRENCY", "PYTHONWARNINGS"}
        and not key.startswith(("OTEL_", "OBSERVEKIT_", *drop_prefixes))
    }


def _stop(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM (graceful), then SIGKILL the whole process group (master and workers)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the group we started: leftover workers
    proc.wait(timeout=10)


@pytest.fixture(scope="module", params=SERVERS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    spec: ServerSpec = request.param
    workdir = tmp_path_factory.mktemp(spec.name)
    port = _free_port()
    argv = spec.argv(port)
    env = _child_env()
    env["PYTHONPATH"] = str(ROOT)
    stdout_path, stderr_path = workdir / "stdout.log", workdir / "stderr.log"
    # Append mode: the workers share the file, and O_APPEND keeps each line whole.
    with stdout_path.open("ab") as out, stderr_path.open("ab") as err:
        proc = subprocess.Popen(
            argv,
            cwd=workdir,  # no stray gunicorn.conf.py is picked up
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    try:
        _wait_until_listening(proc, port, stderr_path)
        base_url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base_url, timeout=30.0) as client:
            assert client.get("/healthz").status_code == 200
        yield Server(spec, base_url, proc, LogFile(stdout_path), stderr_path, {})
    finally:
        _stop(proc)


# -- requests ----------------------------------------------------------------


@dataclass
class Sent:
    """One request sent to the server, its response, and every log line it produced."""

    response: httpx.Response
    user_agent: str
    lines: list[Line]
    """App lines (``probe``) and the access line (``user_agent.original``) of this request."""

    @property
    def ids(self) -> list[str]:
        return self.response.headers.get_list("x-request-id")

    @property
    def access(self) -> list[Line]:
        return [line for line in self.lines if line["logger"] == "observekit.access"]

    @property
    def app_lines(self) -> list[Line]:
        return [line for line in self.lines if line["logger"] == "e2e.app"]


def send(
    server: Server,
    path: str,
    headers: dict[str, str | bytes] | list[tuple[str, str | bytes]] | None = None,
) -> Sent:
    """GET ``path`` with a unique User-Agent, then wait for the request's access line."""
    user_agent = f"observekit-e2e/{uuid.uuid4().hex}"
    request_headers = httpx.Headers(headers)
    request_headers["User-Agent"] = user_agent
    with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
        response = client.get(path, headers=request_headers)

    def mine(line: Line) -> bool:
        return line.get("probe") == user_agent or line.get("user_agent.original") == user_agent

    def has_access(lines: list[Line]) -> bool:
        return any(line.get("user_agent.original") == user_agent for line in lines)

    lines = server.wait_for(f"access line for {path}", has_access)
    return Sent(response, user_agent, [line for line in lines if mine(line)])


def lines_with_id(server: Server, request_id: str) -> list[Line]:
    return [line for line in server.log.lines() if line.get("request_id") == request_id]


def _timestamp(line: Line) -> float:
    return datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()


def _assert_all_carry(sent: Sent, request_id: str, expected_lines: int) -> None:
    assert len(sent.access) == 1, sent.lines
    assert len(sent.lines) == expected_lines, sent.lines
    wrong = [line for line in sent.lines if line.get("request_id") != request_id]
    assert wrong == [], f"lines of request {request_id!r} carrying another ID"


# -- 1. a valid incoming ID ----------------------------------------------------


@pytest.mark.parametrize(
    "make_id",
    [
        pytest.param(lambda t: f"checkout-{t[:8]}", id="simple"),
        pytest.param(lambda t: f"{ALLOWED_CHARS}{t}", id="every-allowed-char"),
        pytest.param(lambda t: ("m" + t * 4)[:128], id="128-chars"),
    ],
)
def test_valid_request_id_is_echoed_once_and_on_every_line(
    server: Server, make_id: Callable[[str], str]
) -> None:
    """A valid X-Request-ID comes back exactly once and is on the app lines and the access line."""
    incoming = make_id(uuid.uuid4().hex)
    sent = send(server, "/", {"X-Request-ID": incoming})

    assert sent.response.status_code == 200
    assert sent.ids == [incoming]
    assert sent.response.json() == {"request_id": incoming}
    _assert_all_carry(sent, incoming, expected_lines=3)
    assert [line["seen_header"] for line in sent.app_lines] == [incoming, incoming]
    access = sent.access[0]
    assert access["level"] == "INFO"
    assert access["http.request.method"] == "GET"
    assert access["url.path"] == "/"
    assert access["http.response.status_code"] == 200
    assert access["http.response.body.size"] == len(sent.response.content)
    assert access["client.address"] == "127.0.0.1"
    assert access["user_agent.original"] == sent.user_agent
    assert isinstance(access["duration_ms"], float | int)
    assert access["duration_ms"] >= 0.9  # the handler sleeps 1 ms
    assert lines_with_id(server, incoming) == sent.lines


def test_app_set_request_id_header_is_replaced(server: Server) -> None:
    """When the app sets its own X-Request-ID, the client still gets exactly one: the request's."""
    incoming = f"own-{uuid.uuid4().hex}"
    sent = send(server, "/own-header", {"X-Request-ID": incoming})

    assert sent.response.status_code == 200
    assert sent.ids == [incoming]
    _assert_all_carry(sent, incoming, expected_lines=1)


# -- 2. no incoming ID -----------------------------------------------------------


def test_missing_request_id_is_generated(server: Server) -> None:
    """Without an incoming ID, a new 32-hex ID is in the response header and on every line."""
    sent = send(server, "/")

    assert sent.response.status_code == 200
    assert len(sent.ids) == 1
    generated = sent.ids[0]
    assert GENERATED_ID.fullmatch(generated), generated
    assert sent.response.json() == {"request_id": generated}
    _assert_all_carry(sent, generated, expected_lines=3)
    assert [line["seen_header"] for line in sent.app_lines] == [None, None]


def test_generated_ids_differ_between_requests(server: Server) -> None:
    """Two requests without an incoming ID get two different generated IDs."""
    first, second = send(server, "/quiet"), send(server, "/quiet")

    assert first.ids != second.ids
    for sent in (first, second):
        assert GENERATED_ID.fullmatch(sent.ids[0])
        _assert_all_carry(sent, sent.ids[0], expected_lines=2)


# -- 3. an invalid incoming ID ---------------------------------------------------

CHARACTERS = "characters"  # the rejection reason for a value with a character outside the set


@pytest.mark.parametrize(
    ("make_value", "reason"),
    [
        pytest.param(lambda t: (t * 5)[:129], "longer than 128 characters (129)", id="129-chars"),
        pytest.param(lambda t: (t * 7)[:200], "longer than 128 characters (200)", id="200-chars"),
        pytest.param(lambda t: f'{t}"quote', CHARACTERS, id="double-quote"),
        pytest.param(lambda t: f"{t} space", CHARACTERS, id="inner-space"),
        pytest.param(lambda t: f"{t},comma", CHARACTERS, id="comma"),
        pytest.param(lambda t: f"{t}\ttab", CHARACTERS, id="inner-tab"),
        pytest.param(lambda t: f"{t}-café".encode(), CHARACTERS, id="non-ascii-utf8"),
        pytest.param(lambda t: f"{t}-\xff\xfe".encode("latin-1"), CHARACTERS, id="non-utf8-bytes"),
        pytest.param(lambda t: "", "empty", id="empty"),
        pytest.param(lambda t: f"{t}\x01ctl", CHARACTERS, id="control-byte"),
        pytest.param(lambda t: f"{t}\x7fdel", CHARACTERS, id="del-byte"),
    ],
)
def test_invalid_request_id_is_replaced_and_never_repeated(
    server: Server, make_value: Callable[[str], str | bytes], reason: str
) -> None:
    """An invalid X-Request-ID is replaced by a generated ID and shows up in no header and no line.

    The WARNING that names the header, the reason and the new ID is written
    unless this worker already wrote one in the last 10 s (then it must not).
    gunicorn refuses a control byte (\\x01, \\x7f) in a header value itself with
    a 400, before the app or observekit run; uvicorn (h11) passes it on.
    """
    token = uuid.uuid4().hex
    value = make_value(token)
    control = isinstance(value, str) and re.search(r"[\x00-\x08\x0a-\x1f\x7f]", value)
    if control and server.spec.rejects_control_bytes:
        with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
            response = client.get("/quiet", headers={"X-Request-ID": value})
            assert client.get("/healthz").status_code == 200  # the server carries on
        assert response.status_code == 400
        assert "x-request-id" not in response.headers
        assert token.encode() not in server.log.text()
        return
    sent = send(server, "/quiet", {"X-Request-ID": value})

    assert sent.response.status_code == 200
    assert len(sent.ids) == 1
    new_id = sent.ids[0]
    assert GENERATED_ID.fullmatch(new_id), new_id
    assert sent.response.json() == {"request_id": new_id}
    _assert_all_carry(sent, new_id, expected_lines=2)
    pid = int(sent.response.headers["x-worker-pid"])
    server.rejected[new_id] = pid
    for name, header_value in sent.response.headers.raw:
        assert token.encode() not in name + b": " + header_value
    assert token.encode() not in server.log.text(), "the rejected value reached a log line"

    _check_rejection_warning(server, sent, new_id, pid, reason)
    assert token.encode() not in server.log.text()


def _check_rejection_warning(
    server: Server, sent: Sent, new_id: str, pid: int, reason: str
) -> None:
    """The rate-limited WARNING: there when this worker's 10 s window is open, else absent."""
    warnings = [
        line
        for line in server.log.lines()
        if line["logger"] == "observekit"
        and line["level"] == "WARNING"
        and "request_id.header" in line
    ]
    mine = [line for line in warnings if line.get("request_id") == new_id]
    earlier = [
        _timestamp(line)
        for line in warnings
        if line.get("request_id") != new_id
        and server.rejected.get(line.get("request_id", "")) == pid
    ]
    gap = _timestamp(sent.app_lines[0]) - max(earlier) if earlier else None
    if gap is None or gap > 10.5:
        assert len(mine) == 1, (
            f"no WARNING for a rejected ID (worker {pid}, last warning {gap} s ago)"
        )
    elif gap < 9.5:
        assert mine == [], f"a second WARNING {gap:.1f} s after the last one from worker {pid}"
    for line in mine:
        assert line["request_id.header"].lower() == "x-request-id"
        assert reason in line["request_id.rejection"]
        assert new_id in line["message"]
        assert "x-request-id" in line["message"].lower()
        assert reason in line["message"]


def test_repeated_request_id_header(server: Server) -> None:
    """Two X-Request-ID headers: ASGI uses the first; WSGI gets them joined and generates an ID.

    A WSGI server hands the app one ``HTTP_X_REQUEST_ID`` (gunicorn joins the
    values with ","), and a comma is not allowed in an ID, so the joined value
    is rejected. Neither incoming value is ever repeated on WSGI.
    """
    first, second = f"first-{uuid.uuid4().hex}", f"second-{uuid.uuid4().hex}"
    sent = send(server, "/quiet", [("X-Request-ID", first), ("X-Request-ID", second)])

    assert sent.response.status_code == 200
    assert len(sent.ids) == 1
    if server.spec.kind == "asgi":
        assert sent.ids == [first]
    else:
        assert GENERATED_ID.fullmatch(sent.ids[0])
        server.rejected[sent.ids[0]] = int(sent.response.headers["x-worker-pid"])
        assert first.encode() not in server.log.text()
    _assert_all_carry(sent, sent.ids[0], expected_lines=2)
    assert second.encode() not in server.log.text()
    for _, value in sent.response.headers.raw:
        assert second.encode() not in value


# -- 4. X-Correlation-ID -----------------------------------------------------------


def test_correlation_id_used_without_request_id(server: Server) -> None:
    """Without X-Request-ID, a valid X-Correlation-ID is the request ID, echoed as X-Request-ID."""
    correlation = f"corr-{uuid.uuid4().hex}"
    sent = send(server, "/", {"X-Correlation-ID": correlation})

    assert sent.response.status_code == 200
    assert sent.ids == [correlation]
    assert sent.response.json() == {"request_id": correlation}
    _assert_all_carry(sent, correlation, expected_lines=3)


def test_request_id_wins_over_correlation_id(server: Server) -> None:
    """With both headers valid, X-Request-ID is the one used."""
    incoming, correlation = f"req-{uuid.uuid4().hex}", f"corr-{uuid.uuid4().hex}"
    sent = send(server, "/", {"X-Request-ID": incoming, "X-Correlation-ID": correlation})

    assert sent.ids == [incoming]
    _assert_all_carry(sent, incoming, expected_lines=3)
    assert correlation.encode() not in server.log.text()


def test_correlation_id_used_when_request_id_invalid(server: Server) -> None:
    """An invalid X-Request-ID falls through to a valid X-Correlation-ID and is never repeated."""
    token = uuid.uuid4().hex
    correlation = f"corr-{uuid.uuid4().hex}"
    sent = send(server, "/quiet", {"X-Request-ID": f"{token} bad", "X-Correlation-ID": correlation})

    assert sent.ids == [correlation]
    _assert_all_carry(sent, correlation, expected_lines=2)
    assert token.encode() not in server.log.text()
    for _, value in sent.response.headers.raw:
        assert token.encode() not in value


# -- 5. an unhandled exception ---------------------------------------------------


def test_unhandled_exception_gives_500_with_id_and_one_error_line(server: Server) -> None:
    """/boom: a 500 with X-Request-ID, one ERROR line with the traceback, a 500 access line."""
    incoming = f"boom-{uuid.uuid4().hex}"
    sent = send(server, "/boom", {"X-Request-ID": incoming})

    assert sent.response.status_code == 500
    assert sent.ids == [incoming]
    assert sent.response.content == ERROR_BODY
    access = sent.access
    assert len(access) == 1
    assert access[0]["level"] == "ERROR"
    assert access[0]["http.response.status_code"] == 500
    assert access[0]["request_id"] == incoming
    assert access[0].get("error.type") == "RuntimeError"

    mine = lines_with_id(server, incoming)
    errors = [line for line in mine if line["level"] == "ERROR" and line["logger"] == "observekit"]
    assert len(errors) == 1, errors
    error = errors[0]
    assert error["exception.type"] == "RuntimeError"
    assert error["exception.message"] == "boom"
    stacktrace = error["exception.stacktrace"]
    assert stacktrace.startswith("Traceback (most recent call last):")
    assert "RuntimeError: boom" in stacktrace
    assert "app.py" in stacktrace  # the frame that raised
    about_to_fail = [line for line in mine if line["logger"] == "e2e.app"]
    assert [line["message"] for line in about_to_fail] == ["about to fail"]
    assert len(mine) == 3, mine  # app line, ERROR line, access line: nothing logged twice


# -- threads and streaming bodies --------------------------------------------------


def test_context_reaches_thread_with_copied_context(server: Server) -> None:
    """A thread started with copy_context().run sees the request ID, and its lines carry it."""
    incoming = f"thread-{uuid.uuid4().hex}"
    sent = send(server, "/thread", {"X-Request-ID": incoming})

    assert sent.response.json() == {"request_id": incoming, "thread_request_id": incoming}
    _assert_all_carry(sent, incoming, expected_lines=3)
    assert [line["thread_request_id"] for line in sent.app_lines] == [incoming, incoming]


def test_context_reaches_every_streamed_chunk(server: Server) -> None:
    """Every chunk of a streamed body is made inside the request context; all bytes are counted."""
    incoming = f"stream-{uuid.uuid4().hex}"
    sent = send(server, "/stream", {"X-Request-ID": incoming})

    assert sent.response.status_code == 200
    assert sent.ids == [incoming]
    assert sent.response.text.splitlines() == [f"{i}:{incoming}" for i in range(STREAM_CHUNKS)]
    _assert_all_carry(sent, incoming, expected_lines=STREAM_CHUNKS + 1)
    assert [line["chunk"] for line in sent.app_lines] == list(range(STREAM_CHUNKS))
    assert sent.access[0]["http.response.body.size"] == len(sent.response.content)


# -- 7. isolation under concurrency ----------------------------------------------

ISOLATION_REQUESTS = 2000
IN_FLIGHT = 300
CLIENTS = 30
ISOLATION_ROUTES = {"/": 3, "/thread": 3, "/stream": STREAM_CHUNKS + 1}
"""Route -> lines per request (app lines + the access line)."""

Result = tuple[str, str, int, list[str], str]


async def _fire(base_url: str, plan: list[tuple[str, str]]) -> list[Result]:
    """Send ``plan`` with ``IN_FLIGHT`` requests in flight at any time.

    Spread over ``CLIENTS`` clients of ``IN_FLIGHT // CLIENTS`` connections each:
    httpcore's pool does work proportional to its size and queue on every
    request, so one client with 300 connections and 2,000 queued requests
    spends ~10 s of CPU in the pool alone on this 2-core machine. The
    keep-alive expiry stays below the servers' (gunicorn gthread 2 s, uvicorn
    5 s) so that a request is never written into a connection the server is
    closing ("Server disconnected without sending a response").
    """
    per_client = IN_FLIGHT // CLIENTS
    limits = httpx.Limits(
        max_connections=per_client, max_keepalive_connections=per_client, keepalive_expiry=1.0
    )
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60.0)
            )
            for _ in range(CLIENTS)
        ]
        slots = [asyncio.Semaphore(per_client) for _ in range(CLIENTS)]

        async def one(i: int, rid: str, path: str) -> Result:
            headers = {"X-Request-ID": rid, "User-Agent": f"observekit-e2e/{rid}"}
            async with slots[i % CLIENTS]:  # keeps httpcore's wait queue short
                response = await clients[i % CLIENTS].get(path, headers=headers)
            echoed = response.headers.get_list("x-request-id")
            return rid, path, response.status_code, echoed, response.text

        return await asyncio.gather(*(one(i, rid, path) for i, (rid, path) in enumerate(plan)))


@pytest.mark.timeout(150)
def test_concurrent_requests_never_see_a_foreign_id(server: Server) -> None:
    """2,000 concurrent requests (300 in flight), distinct IDs: 0 lines carry a foreign ID."""
    routes = list(ISOLATION_ROUTES)
    run = uuid.uuid4().hex[:8]
    plan = [(f"iso-{run}-{i:04d}", routes[i % len(routes)]) for i in range(ISOLATION_REQUESTS)]
    route_of = dict(plan)
    mark = server.log.mark()

    started = time.monotonic()
    results = asyncio.run(_fire(server.base_url, plan))
    elapsed = time.monotonic() - started

    bad_responses = []
    for rid, path, status, echoed, body in results:
        if path == "/stream":
            body_ok = body.splitlines() == [f"{i}:{rid}" for i in range(STREAM_CHUNKS)]
        else:
            parsed = json.loads(body) if status == 200 else {}
            body_ok = (
                parsed.get("request_id") == rid and parsed.get("thread_request_id", rid) == rid
            )
        if status != 200 or echoed != [rid] or not body_ok:
            bad_responses.append((rid, path, status, echoed, body[:200]))

    def all_access_lines(_: list[Line]) -> bool:
        lines = server.log.lines(since=mark)  # ``mark`` counts raw lines, JSON or not
        return sum(1 for line in lines if line["logger"] == "observekit.access") >= len(plan)

    server.wait_for(f"{len(plan)} access lines", all_access_lines, timeout=60.0)
    lines = server.log.lines(since=mark)

    sent = set(route_of)
    foreign = []
    for line in lines:
        rid = line.get("request_id")
        expected = {line.get("seen_header"), line.get("thread_request_id")}
        if line["logger"] == "observekit.access":
            expected.add(line.get("user_agent.original", "").removeprefix("observekit-e2e/"))
        expected.discard(None)
        if rid not in sent or (expected and expected != {rid}):
            foreign.append(line)
    assert foreign == [], (
        f"{len(foreign)} of {len(lines)} lines carry a foreign ID, e.g. {foreign[:3]}"
    )
    assert bad_responses == [], f"{len(bad_responses)} bad responses, e.g. {bad_responses[:3]}"

    access_ids = collections.Counter(
        line["request_id"] for line in lines if line["logger"] == "observekit.access"
    )
    assert set(access_ids) == sent
    assert [rid for rid, n in access_ids.items() if n != 1] == []
    per_id = collections.Counter(line["request_id"] for line in lines)
    wrong_counts = {
        rid: (per_id[rid], ISOLATION_ROUTES[route_of[rid]])
        for rid in sent
        if per_id[rid] != ISOLATION_ROUTES[route_of[rid]]
    }
    assert wrong_counts == {}, f"{len(wrong_counts)} IDs with the wrong number of lines"
    print(
        f"{server.spec.name}: {len(plan)} requests in {elapsed:.1f} s, {len(lines)} lines checked"
    )


# -- 6. stdout is JSON lines ------------------------------------------------------


def test_stdout_is_json_lines(server: Server) -> None:
    """Every line the server wrote to stdout is one JSON object with the core and service fields."""
    for path in ("/", "/boom", "/stream", "/thread", "/quiet"):
        send(server, path, {"X-Request-ID": f"json-{uuid.uuid4().hex}"})
    invalid = send(server, "/quiet", {"X-Request-ID": "not valid"})
    server.rejected[invalid.ids[0]] = int(invalid.response.headers["x-worker-pid"])
    send(server, "/nope")

    raw_lines = server.log.raw
    assert len(raw_lines) >= 10
    not_json = [
        raw for raw, parsed in zip(raw_lines, server.log.parsed, strict=True) if parsed is None
    ]
    assert not_json == [], f"{len(not_json)} stdout lines are not JSON objects, e.g. {not_json[:3]}"
    required = (
        "timestamp",
        "level",
        "logger",
        "message",
        "service.name",
        "service.version",
        "deployment.environment",
    )
    for line in server.log.lines():
        missing = [key for key in required if key not in line]
        assert missing == [], (missing, line)
        assert line["service.name"] == server.spec.service_name
        assert line["service.version"] == "e2e"
        assert line["deployment.environment"] == "e2e"
        assert line["timestamp"].endswith("Z")
        assert line["level"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
        if line["logger"] in {"e2e.app", "observekit.access"}:
            assert isinstance(line.get("request_id"), str), line
