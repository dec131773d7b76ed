"""RED metrics for requests and tasks, sent to statsd/DogStatsD, OpenTelemetry or memory.

The core calls one :class:`Metrics` backend per process; which one comes from
:class:`~observekit.Config` (``metrics``, ``statsd_*``):

``statsd``  UDP to a statsd or DogStatsD daemon (:mod:`observekit.metrics.statsd`,
            needs ``observekit[statsd]``); ``auto`` picks it when ``statsd_host`` is set.
``otel``    the OpenTelemetry metrics API, so any MeterProvider (OTLP, Prometheus)
            receives them (:mod:`observekit.metrics.otel`, needs ``observekit[otel]``).
``memory``  in-process counts and durations with :meth:`MemoryMetrics.snapshot`
            (:mod:`observekit.metrics.memory`), for tests and the demo.
``none``    nothing.

Names follow OpenTelemetry's semantic conventions (the constants below). Every
backend method returns quickly and never raises: a metric that cannot be
recorded is counted and dropped, and the request goes on.

Importing this package imports neither ``statsd`` nor ``opentelemetry``; each
backend module imports its own library.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from .._config import Config

__all__ = [
    "ACTIVE_REQUESTS",
    "CLIENT_ERRORS",
    "CLIENT_REQUESTS",
    "CLIENT_REQUEST_DURATION",
    "DURATION_BUCKETS",
    "EXCEPTIONS",
    "QUEUE_SIZE",
    "REQUESTS",
    "REQUEST_DURATION",
    "TASK_ACTIVE",
    "TASK_COMPLETED",
    "TASK_DURATION",
    "Metrics",
    "backend_kind",
    "configure",
    "get_default",
    "metrics_for",
]

REQUEST_DURATION = "http.server.request.duration"
"""statsd: a timer in milliseconds; OpenTelemetry: a histogram in seconds."""
REQUESTS = "http.server.requests"
"""Requests counted when they finish."""
ACTIVE_REQUESTS = "http.server.active_requests"
"""Requests in flight (statsd gauge, OpenTelemetry UpDownCounter); labelled by method only."""
EXCEPTIONS = "http.server.exceptions"
"""Requests that ended in an exception, labelled ``error.type``."""
CLIENT_REQUEST_DURATION = "http.client.request.duration"
"""Outgoing calls (:mod:`observekit.propagation`), until the response body is read or closed:
labelled method, ``server.address``, ``server.port``, status."""
CLIENT_REQUESTS = "http.client.requests"
"""Outgoing calls counted when they finish."""
CLIENT_ERRORS = "http.client.errors"
"""Outgoing calls that failed (transport error, or status >= 400), labelled ``error.type``."""
TASK_DURATION = "task.duration"
TASK_COMPLETED = "task.completed"
TASK_ACTIVE = "task.active"
QUEUE_SIZE = "queue.size"

DURATION_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
"""The bucket boundaries (seconds) OpenTelemetry's HTTP semantic conventions advise for
``http.server.request.duration``; the OpenTelemetry backend uses them for task durations too."""

# Label keys (OpenTelemetry attribute names).
METHOD = "http.request.method"
ROUTE = "http.route"
STATUS = "http.response.status_code"
ERROR_TYPE = "error.type"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
SERVICE_NAME = "service.name"
SERVICE_VERSION = "service.version"
ENVIRONMENT = "deployment.environment"
TASK_NAME = "task.name"
TASK_OUTCOME = "task.outcome"
QUEUE_NAME = "queue.name"

log = logging.getLogger("observekit.metrics")


class Metrics(Protocol):
    """What the core (and :func:`observekit.track_task`) calls on a metrics backend.

    Every method returns without blocking on I/O (at most one non-blocking UDP
    send) and never raises. ``route`` is the final label the core chose (a
    route template, ``unmatched`` or ``overflow``); ``method`` is a known
    method or ``_OTHER``; ``status`` is ``0`` when no response was started.

    A backend may say ``reads_context = False`` when ``request_finished`` reads
    nothing from the current context; the core then may call it without the
    request's context entered. Without the attribute the core assumes it does.
    """

    def request_started(self, method: str) -> None:
        """``http.server.active_requests`` +1."""

    def request_finished(
        self, method: str, route: str, status: int, duration_s: float, error_type: str | None
    ) -> None:
        """Active -1, the duration, the request count and, with ``error_type``, an exception."""

    def client_request_finished(
        self,
        method: str,
        server_address: str,
        server_port: int,
        status: int,
        duration_s: float,
        error_type: str | None,
    ) -> None:
        """One outgoing call: ``http.client.request.duration``, ``http.client.requests`` and,
        with ``error_type`` (``timeout``, ``connection_refused``, ``"503"``...), an error."""

    def task_started(self, name: str) -> None:
        """``task.active`` +1."""

    def task_finished(self, name: str, duration_s: float, error_type: str | None) -> None:
        """Active -1, ``task.duration`` and ``task.completed`` (failure when ``error_type``)."""

    def gauge(self, name: str, value: float, attributes: Mapping[str, str] | None = None) -> None:
        """Set a gauge (such as ``queue.size``) to ``value``."""

    def count(self, name: str, attributes: Mapping[str, str] | None = None, value: int = 1) -> None:
        """Add ``value`` to the counter ``name`` (resilience events: shed, rate-limited, faults)."""

    def flush(self, timeout: float) -> None:
        """Send whatever is pending, waiting at most ``timeout`` seconds."""

    def close(self) -> None:
        """Flush briefly and release sockets and threads; later calls record nothing."""


def backend_kind(config: Config) -> str | None:
    """The backend ``config`` asks for: ``statsd``, ``otel``, ``memory``, or ``None``."""
    choice = config.metrics
    if choice == "auto":
        return "statsd" if config.statsd_host is not None else None
    if choice == "none":
        return None
    return choice


_lock = threading.Lock()
_shared: dict[tuple[Any, ...], Metrics] = {}
_default: Metrics | None = None
_default_set = False


def _key(kind: str, config: Config) -> tuple[Any, ...]:
    common = (
        kind,
        config.service_name,
        config.resolved_service_version(),
        config.environment,
        config.max_routes,
    )
    if kind == "statsd":
        return (
            *common,
            config.statsd_host,
            config.statsd_port,
            config.statsd_prefix,
            config.statsd_tags,
            config.statsd_max_packet,
            config.statsd_dns_ttl,
            config.statsd_flush_interval,
        )
    return common


def _build(kind: str, config: Config) -> Metrics:
    if kind == "statsd":
        from .statsd import StatsdMetrics

        if config.statsd_host is None:
            raise ValueError("metrics='statsd' needs statsd_host (env: STATSD_HOST)")
        return StatsdMetrics.from_config(config)
    if kind == "otel":
        from .otel import OtelMetrics

        return OtelMetrics.from_config(config)
    from .memory import MemoryMetrics

    return MemoryMetrics.from_config(config)


def metrics_for(config: Config) -> Metrics | None:
    """The backend for ``config`` (``None`` when metrics are off).

    One instance per process for equal metrics settings: every middleware
    built from an equal Config shares one UDP socket or one set of
    OpenTelemetry instruments. With ``metrics="auto"`` and the ``statsd``
    package missing, a WARNING is logged and ``None`` returned; an explicit
    ``metrics="statsd"`` or ``"otel"`` without its package raises ImportError
    naming the extra to install.
    """
    kind = backend_kind(config)
    if kind is None:
        return None
    key = _key(kind, config)
    with _lock:
        backend = _shared.get(key)
        if backend is None:
            try:
                backend = _build(kind, config)
            except ImportError as exc:
                if config.metrics != "auto":
                    raise
                log.warning("statsd_host is set but metrics are off: %s", exc)
                return None
            _shared[key] = backend
    return backend


def _forget(backend: Metrics) -> None:
    """Called by a backend's ``close()``: the next ``metrics_for`` builds a fresh one."""
    global _default, _default_set
    with _lock:
        for key, value in list(_shared.items()):
            if value is backend:
                del _shared[key]
        if _default is backend:
            _default, _default_set = None, False


def configure(config: Config | None = None) -> Metrics | None:
    """Set the process default backend (used by ``track_task`` and ``report_queue_size``).

    ``config`` defaults to :meth:`Config.from_env`. Returns the backend, or
    ``None`` when the config turns metrics off (which is then the default).
    """
    global _default, _default_set
    backend = metrics_for(Config.from_env() if config is None else config)
    with _lock:
        _default, _default_set = backend, True
    return backend


def get_default() -> Metrics | None:
    """The backend set by :func:`configure`.

    Before any ``configure()`` call: the backend the middleware uses when this
    process has built exactly one (so tasks in a web app land next to its
    requests), else ``None``.
    """
    if _default_set:
        return _default
    with _lock:
        if len(_shared) == 1:
            return next(iter(_shared.values()))
    return None


def _reset() -> None:
    """Close and forget every shared backend and the default (for tests)."""
    global _default, _default_set
    with _lock:
        backends = list(_shared.values())
        _shared.clear()
        _default, _default_set = None, False
    for backend in backends:
        backend.close()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
