"""An in-process metrics backend for tests and the demo: counts, durations, percentiles.

Thread-safe (one lock). Durations are kept per (method, route, status) and per
task, at most ``max_samples`` each (beyond that a uniform random sample of them,
so percentiles stay representative and memory stays bounded). Read everything
with :meth:`MemoryMetrics.snapshot` (plain dicts and lists) or the per-route
summary :meth:`MemoryMetrics.by_route` the demo prints.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import (
    ERROR_TYPE,
    METHOD,
    ROUTE,
    SERVER_ADDRESS,
    SERVER_PORT,
    STATUS,
    TASK_NAME,
    TASK_OUTCOME,
    _forget,
)

if TYPE_CHECKING:
    from .._config import Config

__all__ = ["MemoryMetrics", "percentile"]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by the nearest-rank method; ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class _Samples:
    """Up to ``limit`` values: all of them, then a uniform reservoir sample (Algorithm R)."""

    __slots__ = ("count", "limit", "max", "sum", "values")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.values: list[float] = []
        self.count = 0
        self.sum = 0.0
        self.max = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        self.sum += value
        if value > self.max or self.count == 1:
            self.max = value
        if len(self.values) < self.limit:
            self.values.append(value)
        else:
            slot = random.randrange(self.count)
            if slot < self.limit:
                self.values[slot] = value

    def summary(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "sum": self.sum,
            "max": self.max,
            "p50": percentile(self.values, 50),
            "p95": percentile(self.values, 95),
            "p99": percentile(self.values, 99),
        }


class MemoryMetrics:
    """Records every call in memory; durations in seconds."""

    reads_context = False  # see observekit.metrics.Metrics

    def __init__(
        self,
        *,
        max_samples: int = 10_000,
        constant_labels: Mapping[str, str] | None = None,
    ) -> None:
        self.max_samples = max_samples
        self.constant_labels = dict(constant_labels or {})
        self._lock = threading.Lock()
        self._closed = False
        self.clear()

    @classmethod
    def from_config(cls, config: Config) -> MemoryMetrics:
        return cls(
            constant_labels={
                "service.name": config.service_name,
                "service.version": config.resolved_service_version(),
                "deployment.environment": config.environment or "unknown",
            }
        )

    def clear(self) -> None:
        """Forget everything recorded so far."""
        with self._lock:
            self._requests: dict[tuple[str, str, int], _Samples] = {}
            self._active: dict[str, int] = {}
            self._exceptions: dict[tuple[str, str, int, str], int] = {}
            self._tasks: dict[tuple[str, str, str | None], int] = {}
            self._task_durations: dict[str, _Samples] = {}
            self._task_active: dict[str, int] = {}
            self._gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
            self._client: dict[tuple[str, str, int, int], _Samples] = {}
            self._client_errors: dict[tuple[str, str, int, int, str], int] = {}
            self._counters: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}

    # -- the Metrics interface ------------------------------------------------------

    def request_started(self, method: str) -> None:
        with self._lock:
            self._active[method] = self._active.get(method, 0) + 1

    def request_finished(
        self, method: str, route: str, status: int, duration_s: float, error_type: str | None
    ) -> None:
        key = (method, route, status)
        with self._lock:
            self._active[method] = self._active.get(method, 0) - 1
            samples = self._requests.get(key)
            if samples is None:
                samples = self._requests[key] = _Samples(self.max_samples)
            samples.add(duration_s)
            if error_type is not None:
                ekey = (method, route, status, error_type)
                self._exceptions[ekey] = self._exceptions.get(ekey, 0) + 1

    def client_request_finished(
        self,
        method: str,
        server_address: str,
        server_port: int,
        status: int,
        duration_s: float,
        error_type: str | None,
    ) -> None:
        key = (method, server_address, server_port, status)
        with self._lock:
            samples = self._client.get(key)
            if samples is None:
                samples = self._client[key] = _Samples(self.max_samples)
            samples.add(duration_s)
            if error_type is not None:
                ekey = (*key, error_type)
                self._client_errors[ekey] = self._client_errors.get(ekey, 0) + 1

    def task_started(self, name: str) -> None:
        with self._lock:
            self._task_active[name] = self._task_active.get(name, 0) + 1

    def task_finished(self, name: str, duration_s: float, error_type: str | None) -> None:
        outcome = "success" if error_type is None else "failure"
        with self._lock:
            self._task_active[name] = self._task_active.get(name, 0) - 1
            key = (name, outcome, error_type)
            self._tasks[key] = self._tasks.get(key, 0) + 1
            samples = self._task_durations.get(name)
            if samples is None:
                samples = self._task_durations[name] = _Samples(self.max_samples)
            samples.add(duration_s)

    def gauge(self, name: str, value: float, attributes: Mapping[str, str] | None = None) -> None:
        try:
            number = float(value)
            key = (name, tuple(sorted(attributes.items())) if attributes else ())
        except (TypeError, ValueError):
            return
        with self._lock:
            self._gauges[key] = number

    def count(self, name: str, attributes: Mapping[str, str] | None = None, value: int = 1) -> None:
        try:
            key = (name, tuple(sorted(attributes.items())) if attributes else ())
            amount = int(value)
        except (TypeError, ValueError):
            return
        with self._lock:
            self._counters[key] = self._counters.get(key, 0) + amount

    def counter(self, name: str, **attributes: str) -> int:
        """The sum of counter ``name`` over every label set that includes ``attributes``."""
        wanted = set(attributes.items())
        with self._lock:
            return sum(
                n
                for (cname, attrs), n in self._counters.items()
                if cname == name and wanted <= set(attrs)
            )

    def flush(self, timeout: float = 0.0) -> None:
        return None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _forget(self)

    # -- reading ----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything recorded, as plain dicts and lists (durations in seconds).

        ``requests``: one entry per (method, route, status) with ``count``, ``sum``,
        ``max``, ``p50``, ``p95``, ``p99``; ``active_requests``: method -> in flight;
        ``exceptions``: per (method, route, status, error.type); ``tasks``: per
        (task.name, task.outcome, error.type) with ``count``; ``task_durations``:
        task name -> summary; ``task_active``; ``gauges`` and ``counters``: name,
        attributes, value; ``client_requests``: one entry per outgoing (method,
        server.address, server.port, status) with the duration summary;
        ``client_errors``: the same plus ``error.type``.
        """
        with self._lock:
            requests = [
                {METHOD: m, ROUTE: r, STATUS: s, **samples.summary()}
                for (m, r, s), samples in self._requests.items()
            ]
            exceptions = [
                {METHOD: m, ROUTE: r, STATUS: s, ERROR_TYPE: e, "count": n}
                for (m, r, s, e), n in self._exceptions.items()
            ]
            tasks = [
                {TASK_NAME: name, TASK_OUTCOME: outcome, ERROR_TYPE: err, "count": n}
                for (name, outcome, err), n in self._tasks.items()
            ]
            return {
                "labels": dict(self.constant_labels),
                "requests": requests,
                "active_requests": dict(self._active),
                "exceptions": exceptions,
                "tasks": tasks,
                "task_durations": {n: s.summary() for n, s in self._task_durations.items()},
                "task_active": dict(self._task_active),
                "gauges": [
                    {"name": name, "attributes": dict(attrs), "value": value}
                    for (name, attrs), value in self._gauges.items()
                ],
                "client_requests": [
                    {METHOD: m, SERVER_ADDRESS: a, SERVER_PORT: p, STATUS: s, **samples.summary()}
                    for (m, a, p, s), samples in self._client.items()
                ],
                "client_errors": [
                    {
                        METHOD: m,
                        SERVER_ADDRESS: a,
                        SERVER_PORT: p,
                        STATUS: s,
                        ERROR_TYPE: e,
                        "count": n,
                    }
                    for (m, a, p, s, e), n in self._client_errors.items()
                ],
                "counters": [
                    {"name": name, "attributes": dict(attrs), "value": value}
                    for (name, attrs), value in self._counters.items()
                ],
            }

    def by_route(self) -> dict[str, dict[str, Any]]:
        """Per route: ``count``, ``errors`` (5xx or an exception), ``p50``/``p95`` in seconds."""
        with self._lock:
            merged: dict[str, list[Any]] = {}
            for (_m, route, status), samples in self._requests.items():
                entry = merged.setdefault(route, [0, 0, []])
                entry[0] += samples.count
                if status >= 500:
                    entry[1] += samples.count
                entry[2].extend(samples.values)
            for (_m, route, status, _e), n in self._exceptions.items():
                if status < 500 and route in merged:
                    merged[route][1] += n
        return {
            route: {
                "count": count,
                "errors": errors,
                "p50": percentile(values, 50),
                "p95": percentile(values, 95),
            }
            for route, (count, errors, values) in sorted(merged.items())
        }
