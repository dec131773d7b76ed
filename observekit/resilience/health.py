"""Liveness and readiness endpoints, answered by the middleware before anything else.

``/healthz`` (liveness) answers ``200 {"status": "ok"}`` and touches nothing:
if the process can answer it, it is alive. ``/readyz`` (readiness) runs every
check at once, each with its own timeout, and answers ``200`` when all pass,
else ``503``, with each check's state and latency::

    {"status": "fail", "checks": {"redis": {"status": "ok", "latency_ms": 0.41},
                                  "db": {"status": "fail", "latency_ms": 1000.6,
                                         "error": "timeout after 1.0 s"}}}

A check is a callable (sync or ``async``) that returns anything but ``False``
when healthy and returns ``False`` or raises when not. :func:`redis_check` and
:func:`dbapi_check` are ready-made. A check still running from an earlier
probe (it hung past its timeout) is reported as failing without being started
again, so a stuck dependency cannot pile up threads.

Both endpoints skip request IDs from the access log, metrics and traces, and
are never shed, rate limited or fault-injected.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

__all__ = ["Answer", "Check", "Health", "dbapi_check", "redis_check"]

_JSON = "application/json"


class Answer:
    """A short response the middleware sends instead of calling the app."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @classmethod
    def json(cls, status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> Answer:
        body = json.dumps(payload, separators=(",", ":")).encode() + b"\n"
        return cls(
            status,
            [("Content-Type", _JSON), ("Content-Length", str(len(body))), *headers],
            body,
        )


@dataclass(frozen=True)
class Check:
    """A named readiness check with its own timeout (seconds)."""

    name: str
    fn: Callable[[], Any]
    timeout: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a check needs a non-empty name, got {self.name!r}")
        if not callable(self.fn):
            raise TypeError(f"check {self.name!r}: fn must be callable, got {self.fn!r}")
        if not 0 < self.timeout <= 60:
            raise ValueError(f"check {self.name!r}: timeout must be in (0, 60], got {self.timeout}")


def as_check(item: Any, default_timeout: float) -> Check:
    """A :class:`Check` from a Check or a bare callable (named after its function)."""
    if isinstance(item, Check):
        return item
    if callable(item):
        name = getattr(item, "__name__", None) or type(item).__name__
        return Check(name, item, default_timeout)
    raise TypeError(f"readiness checks must be callables or Check objects, got {item!r}")


def redis_check(
    url: str = "redis://127.0.0.1:6379/0", *, name: str = "redis", timeout: float = 1.0
) -> Check:
    """Readiness of Redis: ``PING`` over a client with connect and read timeouts."""
    try:
        import redis
        from redis.backoff import NoBackoff
    except ImportError:
        raise ImportError("redis_check needs redis-py: pip install 'observekit[redis]'") from None
    client = redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=redis.retry.Retry(NoBackoff(), 0),
    )

    def ping() -> bool:
        return bool(client.ping())

    return Check(name, ping, timeout)


def dbapi_check(
    connect: Callable[[], Any],
    *,
    name: str = "db",
    query: str = "SELECT 1",
    timeout: float = 1.0,
) -> Check:
    """Readiness of a database through any DB-API 2.0 driver.

    ``connect`` opens a connection (``lambda: psycopg.connect(dsn, connect_timeout=1)``);
    the check runs ``query``, fetches one row and closes the connection.
    """

    def run_query() -> bool:
        conn = connect()
        try:
            cursor = conn.cursor()
            try:
                cursor.execute(query)
                cursor.fetchone()
            finally:
                cursor.close()
        finally:
            conn.close()
        return True

    return Check(name, run_query, timeout)


_LIVE = Answer.json(200, {"status": "ok"})


class Health:
    """The liveness and readiness endpoints (see the module docstring)."""

    def __init__(
        self,
        *,
        liveness_path: str | None = "/healthz",
        readiness_path: str | None = "/readyz",
        checks: Iterable[Any] = (),
        timeout: float = 1.0,
    ) -> None:
        self.liveness_path = liveness_path
        self.readiness_path = readiness_path
        self.checks = tuple(as_check(c, timeout) for c in checks)
        names = [c.name for c in self.checks]
        if len(set(names)) != len(names):
            raise ValueError(f"readiness check names must be unique, got {names}")
        self.paths = frozenset(p for p in (liveness_path, readiness_path) if p)
        """The paths answered here; the boundary looks a request's path up in it."""
        self._running: set[str] = set()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            # Imported here, in the worker, on the first readiness probe: importing
            # concurrent.futures.thread registers a fork hook, and one registered after
            # OpenTelemetry's TracerProvider (in a gunicorn --preload master) makes the
            # provider's after-fork hook wait forever on that module's lock in every worker.
            from concurrent.futures import ThreadPoolExecutor

            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(
                        max_workers=max(2, len(self.checks)), thread_name_prefix="observekit-ready"
                    )
        return self._pool

    def _start(self, check: Check) -> bool:
        with self._lock:
            if check.name in self._running:
                return False
            self._running.add(check.name)
            return True

    def _done(self, name: str) -> None:
        with self._lock:
            self._running.discard(name)

    def _run_sync(self, check: Check) -> Any:
        try:
            result = check.fn()
            if inspect.isawaitable(result):
                result = asyncio.run(_await(result))
            return result
        finally:
            self._done(check.name)

    def answer(self, path: str) -> Answer:
        """The response for ``path`` (one of :attr:`paths`), for a thread (WSGI)."""
        if path != self.readiness_path:
            return _LIVE
        from concurrent.futures import TimeoutError as FutureTimeout

        pool = self._executor()
        started = time.perf_counter()
        futures = {}
        results: dict[str, dict[str, Any]] = {}
        for check in self.checks:
            if self._start(check):
                futures[check.name] = (check, pool.submit(self._run_sync, check))
            else:
                results[check.name] = _still_running()
        for name, (check, future) in futures.items():
            left = check.timeout - (time.perf_counter() - started)
            try:
                value = future.result(timeout=max(0.0, left))
            except FutureTimeout:
                results[name] = _timed_out(check, started)
            except Exception as exc:
                results[name] = _failed(exc, started)
            else:
                results[name] = _outcome(value, started)
        return _ready_answer(self.checks, results)

    async def aanswer(self, path: str) -> Answer:
        """The response for ``path``, for a coroutine (ASGI); never blocks the loop."""
        if path != self.readiness_path:
            return _LIVE
        results: dict[str, dict[str, Any]] = {}

        async def run(check: Check) -> None:
            if not self._start(check):
                results[check.name] = _still_running()
                return
            started = time.perf_counter()
            if inspect.iscoroutinefunction(check.fn):
                try:
                    value = await asyncio.wait_for(check.fn(), check.timeout)
                except asyncio.TimeoutError:
                    results[check.name] = _timed_out(check, started)
                except Exception as exc:
                    results[check.name] = _failed(exc, started)
                else:
                    results[check.name] = _outcome(value, started)
                finally:
                    self._done(check.name)
                return
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(self._executor(), self._run_sync, check)
            try:
                value = await asyncio.wait_for(asyncio.shield(future), check.timeout)
            except asyncio.TimeoutError:
                results[check.name] = _timed_out(check, started)
            except Exception as exc:
                results[check.name] = _failed(exc, started)
            else:
                results[check.name] = _outcome(value, started)

        await asyncio.gather(*(run(c) for c in self.checks))
        return _ready_answer(self.checks, results)


async def _await(value: Any) -> Any:
    return await value


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 2)


def _outcome(value: Any, started: float) -> dict[str, Any]:
    if value is False:
        return {"status": "fail", "latency_ms": _ms(started), "error": "check returned False"}
    return {"status": "ok", "latency_ms": _ms(started)}


def _failed(exc: BaseException, started: float) -> dict[str, Any]:
    # The exception's type only: messages can carry connection strings or passwords.
    return {"status": "fail", "latency_ms": _ms(started), "error": type(exc).__name__}


def _timed_out(check: Check, started: float) -> dict[str, Any]:
    return {
        "status": "fail",
        "latency_ms": _ms(started),
        "error": f"timeout after {check.timeout} s",
    }


def _still_running() -> dict[str, Any]:
    return {"status": "fail", "latency_ms": 0.0, "error": "still running from an earlier probe"}


def _ready_answer(checks: tuple[Check, ...], results: dict[str, dict[str, Any]]) -> Answer:
    ordered = {c.name: results[c.name] for c in checks}
    ok = all(r["status"] == "ok" for r in ordered.values())
    return Answer.json(200 if ok else 503, {"status": "ok" if ok else "fail", "checks": ordered})
