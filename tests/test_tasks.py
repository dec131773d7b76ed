"""track_task and report_queue_size: task context in log lines, task metrics, exceptions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import pytest

import observekit
from observekit import _tasks
from observekit import metrics as okm
from observekit._tasks import report_queue_size, track_task
from observekit.metrics.memory import MemoryMetrics
from observekit.metrics.statsd import StatsdMetrics
from tests.conftest import LogCapture
from tests.statsd_receiver import StatsdReceiver

log = logging.getLogger("tests.worker")


class BoomError(Exception):
    pass


@pytest.fixture(autouse=True)
def _fresh_metrics() -> Iterator[None]:
    """No shared backend, no default and no span hook leak between tests."""
    okm._reset()
    hook = _tasks._span_hook
    yield
    _tasks._span_hook = hook
    okm._reset()


@pytest.fixture
def memory() -> MemoryMetrics:
    return MemoryMetrics()


def task_lines(logs: LogCapture) -> list[dict[str, Any]]:
    return logs.by_logger("tests.worker")


def outcomes(m: MemoryMetrics) -> list[tuple[str, str, str | None, int]]:
    return sorted(
        (t["task.name"], t["task.outcome"], t["error.type"], t["count"])
        for t in m.snapshot()["tasks"]
    )


# -- context -------------------------------------------------------------------------------


def test_sync_decorator_gives_each_call_its_own_task_id_in_log_lines(
    logs: LogCapture, memory: MemoryMetrics
) -> None:
    """Each call of a decorated function is one task; its log lines carry its own ID and name."""

    @track_task("emails.send", metrics=memory)
    def send(n: int) -> int:
        log.info("sending", extra={"n": n})
        return n * 2

    assert send(1) == 2
    assert send(2) == 4
    first, second = task_lines(logs)
    for line in (first, second):
        assert line["task.name"] == "emails.send"
        assert line["task.id"] == line["request_id"]
    assert first["request_id"] != second["request_id"]
    assert observekit.get_request_id() is None  # nothing leaks out of the task


def test_given_task_id_becomes_the_request_id(logs: LogCapture, memory: MemoryMetrics) -> None:
    """task_id (a message ID, say) is the request_id and task.id of every line inside."""
    with track_task("orders.import", task_id="msg-42", metrics=memory) as task:
        assert task.request_id == "msg-42"
        assert observekit.get_request_id() == "msg-42"
        log.info("importing")
    [line] = task_lines(logs)
    assert (line["request_id"], line["task.id"], line["task.name"]) == (
        "msg-42",
        "msg-42",
        "orders.import",
    )


def test_async_decorator_and_async_with(logs: LogCapture, memory: MemoryMetrics) -> None:
    """Coroutine functions and ``async with`` get the same context, even across awaits."""

    @track_task("async.job", metrics=memory)
    async def job(x: int) -> int:
        await asyncio.sleep(0)
        log.info("in job")
        return x + 1

    async def main() -> list[int]:
        async with track_task("async.block", task_id="blk-1", metrics=memory):
            await asyncio.sleep(0)
            log.info("in block")
        return list(await asyncio.gather(job(1), job(2)))

    assert asyncio.run(main()) == [2, 3]
    lines = task_lines(logs)
    assert sorted(line["task.name"] for line in lines) == ["async.block", "async.job", "async.job"]
    jobs = [line for line in lines if line["task.name"] == "async.job"]
    assert jobs[0]["request_id"] != jobs[1]["request_id"]
    assert all(line["task.id"] == line["request_id"] for line in lines)
    assert outcomes(memory) == [
        ("async.block", "success", None, 1),
        ("async.job", "success", None, 2),
    ]


def test_decorating_a_generator_function_is_refused() -> None:
    """A generator would end the task before its first item: TypeError, pointing at ``with``."""

    def gen() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match="generator"):
        track_task("g")(gen)


def test_an_instance_runs_one_block_at_a_time(memory: MemoryMetrics) -> None:
    """Re-entering a running track_task is a RuntimeError (make one per task)."""
    task = track_task("t", metrics=memory)
    with task, pytest.raises(RuntimeError), task:
        pass


# -- metrics and exceptions ---------------------------------------------------------------------


def test_success_and_failure_are_recorded_and_exceptions_pass_unchanged(
    memory: MemoryMetrics,
) -> None:
    """A raising task is a failure labelled with its type; the very same exception propagates."""
    error = BoomError("bad row")

    @track_task("rows.load", metrics=memory)
    def load(fail: bool) -> str:
        if fail:
            raise error
        return "ok"

    assert load(False) == "ok"
    with pytest.raises(BoomError) as caught:
        load(True)
    assert caught.value is error
    assert caught.value.__traceback__ is not None
    with pytest.raises(KeyError), track_task("rows.load", metrics=memory):
        raise KeyError("k")
    assert outcomes(memory) == [
        ("rows.load", "failure", "KeyError", 1),
        ("rows.load", "failure", "tests.test_tasks.BoomError", 1),
        ("rows.load", "success", None, 1),
    ]
    snap = memory.snapshot()
    assert snap["task_active"] == {"rows.load": 0}
    assert snap["task_durations"]["rows.load"]["count"] == 3


def test_async_failure_is_recorded_and_reraised(memory: MemoryMetrics) -> None:
    """An exception from a coroutine task propagates unchanged and counts as a failure."""

    @track_task("async.fail", metrics=memory)
    async def fail() -> None:
        await asyncio.sleep(0)
        raise BoomError("async")

    with pytest.raises(BoomError, match="async"):
        asyncio.run(fail())
    assert outcomes(memory) == [("async.fail", "failure", "tests.test_tasks.BoomError", 1)]


def test_task_active_counts_while_running(memory: MemoryMetrics) -> None:
    """task.active is 1 inside the block and 0 after it."""
    with track_task("t", metrics=memory):
        assert memory.snapshot()["task_active"] == {"t": 1}
    assert memory.snapshot()["task_active"] == {"t": 0}


def test_default_backend_is_used_when_none_is_given() -> None:
    """Without ``metrics=`` the backend set by observekit.metrics.configure() records the task."""
    backend = okm.configure(observekit.Config(metrics="memory"))
    assert isinstance(backend, MemoryMetrics)
    with track_task("defaulted"):
        pass
    report_queue_size("jobs", 12)
    assert outcomes(backend) == [("defaulted", "success", None, 1)]
    assert backend.snapshot()["gauges"] == [
        {"name": "queue.size", "attributes": {"queue.name": "jobs"}, "value": 12.0}
    ]


def test_no_backend_still_gives_context(logs: LogCapture) -> None:
    """With metrics off, track_task still binds the task ID; report_queue_size does nothing."""
    with track_task("quiet"):
        log.info("hello")
    report_queue_size("q", 1)
    [line] = task_lines(logs)
    assert line["task.name"] == "quiet"


class Broken:
    """A backend whose every method raises."""

    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError(f"{name} is broken")

        return fail


def test_a_broken_backend_or_span_hook_never_breaks_the_task(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Failures inside observekit are logged (rate-limited); the task's result is untouched."""
    _tasks._span_hook = lambda name: Broken()  # type: ignore[assignment, return-value]

    @track_task("robust", metrics=Broken())  # type: ignore[arg-type]
    def work() -> str:
        return "done"

    assert work() == "done"
    with pytest.raises(BoomError), track_task("robust", metrics=Broken()):  # type: ignore[arg-type]
        raise BoomError
    report_queue_size("q", 1, metrics=Broken())  # type: ignore[arg-type]
    assert any("track_task" in r.getMessage() for r in caplog.records)


def test_span_hook_wraps_the_task_and_sees_its_exception(memory: MemoryMetrics) -> None:
    """The tracing hook gets the task name inside the task's context and its exception at exit."""
    seen: list[tuple[str, str | None, str]] = []

    @contextlib.contextmanager
    def span(name: str) -> Iterator[None]:
        rid = observekit.get_request_id()
        try:
            yield
        except BaseException as exc:
            seen.append((name, rid, type(exc).__name__))
            raise
        seen.append((name, rid, "ok"))

    _tasks._span_hook = span
    with track_task("traced", task_id="tid-1", metrics=memory):
        pass
    with pytest.raises(BoomError), track_task("traced", task_id="tid-2", metrics=memory):
        raise BoomError
    assert seen == [("traced", "tid-1", "ok"), ("traced", "tid-2", "BoomError")]


# -- through a real statsd receiver --------------------------------------------------------------


def test_task_metrics_and_queue_gauge_reach_a_statsd_receiver() -> None:
    """task.duration, task.completed and queue.size arrive as DogStatsD lines with their tags."""
    with StatsdReceiver() as receiver:
        backend = StatsdMetrics(
            "127.0.0.1", receiver.port, prefix="worker", service_name="w", report_interval=60
        )
        try:
            with track_task("emails.send", metrics=backend):
                pass
            with pytest.raises(BoomError), track_task("emails.send", metrics=backend):
                raise BoomError
            report_queue_size("emails", 5, metrics=backend)
            receiver.wait_for_count(3)
        finally:
            backend.close()
        lines = receiver.metrics()
        summary = [
            (
                x.name,
                x.type,
                x.tag_dict.get("task.outcome"),
                x.tag_dict.get("error.type"),
                x.tag_dict.get("task.name") or x.tag_dict.get("queue.name"),
            )
            for x in lines
        ]
        assert summary == [
            ("worker.task.duration", "ms", "success", None, "emails.send"),
            ("worker.task.completed", "c", "success", None, "emails.send"),
            ("worker.task.duration", "ms", "failure", None, "emails.send"),
            ("worker.task.completed", "c", "failure", "tests.test_tasks.BoomError", "emails.send"),
            ("worker.queue.size", "g", None, None, "emails"),
        ]
        assert lines[-1].value == "5"
        assert all(x.tag_dict["service.name"] == "w" for x in lines)
