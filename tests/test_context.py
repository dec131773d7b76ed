"""The request context: get_request_id, bind, request_context, threads and tasks."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from typing import Any

import pytest

import observekit
from observekit import Config
from observekit.wsgi import ObservabilityMiddleware

from .conftest import LogCapture
from .util import call


def test_no_request_id_outside_a_request() -> None:
    """Outside any request or context, get_request_id() is None and bind() does nothing."""
    assert observekit.get_request_id() is None
    observekit.bind(x=1)  # nothing to bind to; must not raise
    assert observekit.get_request_id() is None


def test_request_context_generates_and_restores(logs: LogCapture) -> None:
    """request_context() gives a task a fresh valid ID and fields, and restores the outer context after."""
    with observekit.request_context(job="nightly") as outer:
        assert observekit.is_valid_request_id(outer.request_id)
        assert len(outer.request_id) == 32
        assert observekit.get_request_id() == outer.request_id
        with observekit.request_context(request_id="inner-1"):
            assert observekit.get_request_id() == "inner-1"
            logging.getLogger("task").info("inner")
        assert observekit.get_request_id() == outer.request_id
        logging.getLogger("task").info("outer")
    assert observekit.get_request_id() is None
    inner_line, outer_line = logs.lines()
    assert inner_line["request_id"] == "inner-1"
    assert "job" not in inner_line
    assert outer_line["job"] == "nightly"


def test_request_context_replaces_invalid_id(logs: LogCapture) -> None:
    """An invalid request_id given to request_context is replaced and warned about without the value."""
    with observekit.request_context(request_id="bad id\nINJECT") as ctx:
        assert ctx.request_id != "bad id\nINJECT"
        assert observekit.is_valid_request_id(ctx.request_id)
    (warning,) = logs.lines()
    assert warning["level"] == "WARNING"
    assert warning["request_id"] == ctx.request_id
    assert "INJECT" not in logs.text


def test_request_context_isolated_between_tasks() -> None:
    """Concurrent asyncio tasks each keep their own request_context across awaits."""

    async def job(i: int) -> tuple[str, str | None]:
        with observekit.request_context(request_id=f"task-{i}"):
            await asyncio.sleep(0)
            await asyncio.sleep(0.001 * (i % 3))
            return f"task-{i}", observekit.get_request_id()

    async def main() -> list[tuple[str, str | None]]:
        return await asyncio.gather(*(job(i) for i in range(200)))

    results = asyncio.run(main())
    assert all(expected == seen for expected, seen in results)


def test_thread_with_copied_context_sees_id_and_binds_to_request(logs: LogCapture) -> None:
    """A thread started with a copied context sees the request ID, and its bind() shows on the access line."""
    seen: dict[str, Any] = {}

    def worker() -> None:
        seen["id"] = observekit.get_request_id()
        observekit.bind(worker="done")
        logging.getLogger("worker").info("in thread")

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        ctx = contextvars.copy_context()
        t = threading.Thread(target=ctx.run, args=(worker,))
        t.start()
        t.join()
        start_response("200 OK", [])
        return [b"ok"]

    call(ObservabilityMiddleware(app, config=Config()), headers={"X-Request-ID": "thr-1"})
    assert seen["id"] == "thr-1"
    (worker_line,) = logs.by_logger("worker")
    assert worker_line["request_id"] == "thr-1"
    (access,) = logs.access()
    assert access["worker"] == "done"


def test_plain_thread_has_no_request_id() -> None:
    """A thread started without copying the context does not inherit the request ID."""
    seen: list[str | None] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        t = threading.Thread(target=lambda: seen.append(observekit.get_request_id()))
        t.start()
        t.join()
        start_response("200 OK", [])
        return [b""]

    call(
        ObservabilityMiddleware(app, config=Config(access_log=False)), headers={"X-Request-ID": "r"}
    )
    assert seen == [None]


def test_invalid_request_context_ids_warn_at_most_every_10_seconds(
    logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task queue feeding many bad IDs to request_context gives one WARNING per 10 s, then a count."""
    from observekit import _context, _every

    clock = [5000.0]
    monkeypatch.setattr(_every.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(_context, "_rejections", _every.Every(10.0))
    for _ in range(50):
        with observekit.request_context(request_id="bad id"):
            pass
    clock[0] += 10.0
    with observekit.request_context(request_id="bad id"):
        pass
    warnings = logs.lines()
    assert len(warnings) == 2
    assert warnings[1]["request_id.rejections_suppressed"] == 49
