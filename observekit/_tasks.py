"""Worker applications: give a task (a queue job, a cron run) what a request gets.

``track_task(name)`` opens a request context whose ID is the task's ID (so every
log line inside carries ``request_id``, ``task.name`` and ``task.id``), records
``task.active``, ``task.duration`` and ``task.completed`` (``task.outcome``
success or failure, with ``error.type``), runs the task inside a span when
tracing installed one (:data:`_span_hook`), and lets every exception through
unchanged::

    @observekit.track_task("emails.send")
    def send(batch): ...

    async def handle(message):
        async with observekit.track_task("orders.import", task_id=message.id):
            ...

    observekit.report_queue_size("orders", queue.qsize())
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, TypeVar, cast

from ._context import bind, request_context
from ._core import qualified_name
from ._every import Every
from .metrics import QUEUE_NAME, QUEUE_SIZE, Metrics, get_default

__all__ = ["report_queue_size", "track_task"]

F = TypeVar("F", bound=Callable[..., Any])

# --- tracing hook --------------------------------------------------------------------------
_span_hook: Callable[[str], AbstractContextManager[Any]] | None = None
"""HOOK FOR TRACING (set by observekit.tracing / the core, not by users).

When set, ``track_task`` calls ``_span_hook(task_name)`` after the task's context
is entered (so ``get_request_id()`` is the task ID) and runs the task inside the
returned context manager; its ``__exit__`` receives the task's exception, if
any. Errors raised by the hook are logged (rate-limited) and ignored."""
# -------------------------------------------------------------------------------------------

_log = logging.getLogger("observekit")
_failures = Every(60.0)


def _internal(what: str) -> None:
    with contextlib.suppress(Exception):
        if _failures.ready() is not None:
            _log.warning("track_task: %s; the task goes on", what, exc_info=True)


class track_task:  # noqa: N801 - used like a function: ``with track_task("x"):``
    """Track one task: its context (ID in every log line), its metrics and its span.

    Use it as a decorator on a function or coroutine function (each call is one
    task, with a new ID unless ``task_id`` is given) or as a context manager
    with ``with`` or ``async with`` (one block per instance at a time).
    ``task_id`` must be a valid request ID; an invalid one is replaced, with a
    rate-limited WARNING. ``metrics`` defaults to
    :func:`observekit.metrics.get_default` at the time the task starts.
    Exceptions (any ``BaseException``, cancellation included) count as a
    failure labelled with their type and propagate unchanged.
    """

    __slots__ = ("_context", "_metrics", "_span", "_start", "metrics", "name", "task_id")

    def __init__(
        self, name: str, *, task_id: str | None = None, metrics: Metrics | None = None
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"track_task needs a non-empty task name, got {name!r}")
        self.name = name
        self.task_id = task_id
        self.metrics = metrics
        self._context: request_context | None = None
        self._metrics: Metrics | None = None
        self._span: AbstractContextManager[Any] | None = None
        self._start = 0.0

    @property
    def request_id(self) -> str | None:
        """The ID of the running task (inside the block), else ``None``."""
        return None if self._context is None else self._context.request_id

    # -- as a decorator ------------------------------------------------------------------

    def __call__(self, fn: F) -> F:
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(
                "track_task cannot decorate a generator function (the task would end "
                "before its first item); use `with track_task(...)` inside it"
            )
        name, task_id, metrics = self.name, self.task_id, self.metrics
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                async with track_task(name, task_id=task_id, metrics=metrics):
                    return await fn(*args, **kwargs)

            return cast(F, run_async)

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            with track_task(name, task_id=task_id, metrics=metrics):
                return fn(*args, **kwargs)

        return cast(F, run)

    # -- as a context manager --------------------------------------------------------------

    def __enter__(self) -> track_task:
        if self._context is not None:
            raise RuntimeError("this track_task is already running; make one per task")
        context = request_context(self.task_id, **{"task.name": self.name})
        context.__enter__()
        self._context = context
        bind(**{"task.id": context.request_id})
        backend = self.metrics if self.metrics is not None else get_default()
        self._metrics = backend
        if backend is not None:
            try:
                backend.task_started(self.name)
            except Exception:
                _internal("recording the task start failed")
        hook = _span_hook
        if hook is not None:
            try:
                span = hook(self.name)
                span.__enter__()
                self._span = span
            except Exception:
                self._span = None
                _internal("starting the task span failed")
        self._start = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        duration = time.perf_counter() - self._start
        context, span, backend = self._context, self._span, self._metrics
        self._context = self._span = self._metrics = None
        try:
            if span is not None:
                try:
                    span.__exit__(exc_type, exc, tb)
                except Exception:
                    _internal("ending the task span failed")
            if backend is not None:
                try:
                    error_type = None if exc is None else qualified_name(type(exc))
                    backend.task_finished(self.name, duration, error_type)
                except Exception:
                    _internal("recording the task failed")
        finally:
            if context is not None:
                context.__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> track_task:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def report_queue_size(name: str, size: float, *, metrics: Metrics | None = None) -> None:
    """Set the ``queue.size`` gauge of queue ``name`` (label ``queue.name``). Never raises.

    ``metrics`` defaults to :func:`observekit.metrics.get_default`; with no
    backend this does nothing.
    """
    backend = metrics if metrics is not None else get_default()
    if backend is None:
        return
    try:
        backend.gauge(QUEUE_SIZE, size, {QUEUE_NAME: name})
    except Exception:
        _internal("reporting a queue size failed")
