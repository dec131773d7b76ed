"""Metrics through the OpenTelemetry metrics API, so any MeterProvider receives them.

Instruments (meter ``observekit``), named and labelled as OpenTelemetry's HTTP
semantic conventions say:

==============================  ========================  ===========  =========================
name                            instrument                unit         attributes
==============================  ========================  ===========  =========================
http.server.request.duration    Histogram                 s            method, route, status
                                                                       [, error.type]
http.server.requests            ObservableCounter         {request}    as the duration
http.server.active_requests     ObservableUpDownCounter   {request}    http.request.method
http.server.exceptions          ObservableCounter         {exception}  method, route, status,
                                                                       error.type
task.duration                   Histogram                 s            task.name, task.outcome
                                                                       [, error.type]
task.completed                  ObservableCounter         {task}       as the duration
task.active                     ObservableUpDownCounter   {task}       task.name
http.client.request.duration    Histogram                 s            method, server.address,
                                                                       server.port, status
                                                                       [, error.type]
http.client.requests            ObservableCounter         {request}    as the duration
http.client.errors              ObservableCounter         {error}      as the duration, with
                                                                       error.type
(any gauge, e.g. queue.size)    Gauge                                  the attributes given
==============================  ========================  ===========  =========================

The counters are the asynchronous kinds on purpose: each synchronous SDK call
costs 5-9 µs, so per request only the histogram is a call into the SDK, and the
sums are kept in our own tallies and read at collection (the exported Sum is
the same; only exemplars are lost on those counters). The histograms advise the
semantic conventions' bucket boundaries (:data:`~observekit.metrics.DURATION_BUCKETS`);
a View can still override them. ``error.type`` on the duration is the
exception's type, or the status code for a 5xx answered without one, as the
conventions ask. ``http.response.status_code`` is left out when no response was
started (status ``0``). With ``constant_attributes`` (the default) every point
also carries ``service.name``, ``service.version`` and
``deployment.environment``, which otherwise live only on the MeterProvider's
Resource.

Attribute dicts are built once per (method, route, status) and reused (the SDK
still copies and hashes them on every histogram record, except for
``http.client.request.duration``, recorded through
:class:`~observekit.metrics._light.LightHistogram`). Only this module and
``_light`` import ``opentelemetry``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .._every import Every
from . import (
    ACTIVE_REQUESTS,
    CLIENT_ERRORS,
    CLIENT_REQUEST_DURATION,
    CLIENT_REQUESTS,
    DURATION_BUCKETS,
    ENVIRONMENT,
    ERROR_TYPE,
    EXCEPTIONS,
    METHOD,
    REQUEST_DURATION,
    REQUESTS,
    ROUTE,
    SERVER_ADDRESS,
    SERVER_PORT,
    SERVICE_NAME,
    SERVICE_VERSION,
    STATUS,
    TASK_ACTIVE,
    TASK_COMPLETED,
    TASK_DURATION,
    TASK_NAME,
    TASK_OUTCOME,
    _forget,
    log,
)

try:
    from opentelemetry import metrics as otel_metrics
    from opentelemetry.metrics import CallbackOptions, Observation
except ImportError:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "observekit's OpenTelemetry metrics need opentelemetry-api and -sdk: "
        "pip install 'observekit[otel]'"
    ) from None

from ._light import LightHistogram  # after the friendly ImportError above

if TYPE_CHECKING:
    from .._config import Config

__all__ = ["OtelMetrics"]

Attrs = dict[str, Any]
_OVERFLOW_KEY: tuple[Any, ...] = ("otel.metric.overflow",)
_OVERFLOW_ATTRS: Attrs = {"otel.metric.overflow": True}  # what the SDK itself uses


class _Tally:
    """Sums per attribute set, kept by us and read by an observable instrument's callback.

    Adding is a dict update under a lock (about 0.2 µs); a synchronous Counter
    or UpDownCounter costs 5-9 µs per call in the SDK (it re-cleans, copies and
    hashes the attributes every time). The exported data is the same Sum.
    """

    __slots__ = ("_cap", "_counts", "_lock")

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._counts: dict[tuple[Any, ...], list[Any]] = {}
        self._lock = threading.Lock()

    def add(self, key: tuple[Any, ...], attrs: Attrs, amount: int) -> None:
        with self._lock:
            entry = self._counts.get(key)
            if entry is None:
                if len(self._counts) >= self._cap:
                    key, attrs = _OVERFLOW_KEY, _OVERFLOW_ATTRS
                    entry = self._counts.get(key)
                if entry is None:
                    entry = self._counts[key] = [attrs, 0]
            entry[1] += amount

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            entries = [(attrs, value) for attrs, value in self._counts.values()]
        return [Observation(value, attrs) for attrs, value in entries]

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._counts = {}


class _Instruments:
    """observekit's instruments on one MeterProvider, shared by every backend using it.

    (The SDK hands a second registration of an observable instrument the first
    one and drops the new callbacks, so there must be exactly one per provider.)
    """

    def __init__(self, provider: otel_metrics.MeterProvider, cap: int) -> None:
        from .. import __version__

        meter = provider.get_meter("observekit", __version__)
        self.meter = meter
        self.duration = meter.create_histogram(
            REQUEST_DURATION,
            unit="s",
            description="Duration of HTTP server requests.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        self.task_duration = meter.create_histogram(
            TASK_DURATION,
            unit="s",
            description="Duration of tasks.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        self.client_duration = meter.create_histogram(
            CLIENT_REQUEST_DURATION,
            unit="s",
            description="Duration of HTTP client requests.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        # Outgoing calls record through the light path (see _light.py): ~3 µs instead of ~12.
        self.client_duration_light = LightHistogram(self.client_duration)
        self.requests = _Tally(cap)
        self.client_requests = _Tally(cap)
        self.client_errors = _Tally(cap)
        self.active = _Tally(cap)
        self.exceptions = _Tally(cap)
        self.task_completed = _Tally(cap)
        self.task_active = _Tally(cap)
        meter.create_observable_counter(
            REQUESTS,
            [self.requests.observe],
            unit="{request}",
            description="HTTP server requests finished.",
        )
        meter.create_observable_up_down_counter(
            ACTIVE_REQUESTS,
            [self.active.observe],
            unit="{request}",
            description="Active HTTP server requests.",
        )
        meter.create_observable_counter(
            EXCEPTIONS,
            [self.exceptions.observe],
            unit="{exception}",
            description="HTTP server requests that raised.",
        )
        meter.create_observable_counter(
            TASK_COMPLETED,
            [self.task_completed.observe],
            unit="{task}",
            description="Tasks finished, by outcome.",
        )
        meter.create_observable_up_down_counter(
            TASK_ACTIVE, [self.task_active.observe], unit="{task}", description="Tasks running."
        )
        meter.create_observable_counter(
            CLIENT_REQUESTS,
            [self.client_requests.observe],
            unit="{request}",
            description="HTTP client requests finished.",
        )
        meter.create_observable_counter(
            CLIENT_ERRORS,
            [self.client_errors.observe],
            unit="{error}",
            description="HTTP client requests that failed, by error.type.",
        )
        self.gauges: dict[str, Any] = {}
        self.counters: dict[str, Any] = {}

    def tallies(self) -> tuple[_Tally, ...]:
        return (
            self.requests,
            self.active,
            self.exceptions,
            self.task_completed,
            self.task_active,
            self.client_requests,
            self.client_errors,
        )


_registry: weakref.WeakKeyDictionary[Any, _Instruments] = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


def _instruments_for(provider: otel_metrics.MeterProvider, cap: int) -> _Instruments:
    with _registry_lock:
        found = _registry.get(provider)
        if found is None:
            found = _registry[provider] = _Instruments(provider, cap)
        return found


class OtelMetrics:
    """The OpenTelemetry backend. ``meter_provider`` defaults to the global one.

    With the API's default (proxy) provider, instruments created now start
    recording once the application installs an SDK MeterProvider. Per request
    this makes one SDK call (the duration histogram); the counters and
    up-down counters are asynchronous instruments read from our own tallies at
    collection time (see :class:`_Tally`).
    """

    def __init__(
        self,
        *,
        meter_provider: otel_metrics.MeterProvider | None = None,
        service_name: str = "unknown_service",
        service_version: str = "unknown",
        environment: str | None = None,
        constant_attributes: bool = True,
        max_keys: int = 20_000,
    ) -> None:
        provider = (
            meter_provider if meter_provider is not None else otel_metrics.get_meter_provider()
        )
        self._provider = provider
        self._inst = _instruments_for(provider, max(max_keys, 1000))
        self._const: Attrs = (
            {
                SERVICE_NAME: service_name,
                SERVICE_VERSION: service_version,
                ENVIRONMENT: environment or "unknown",
            }
            if constant_attributes
            else {}
        )
        # Backends with other constant attributes share the provider's tallies: key by them too.
        self._ident = tuple(self._const.items())
        self._max_keys = max_keys
        self._request_attrs: dict[tuple[str, str, int, str | None], tuple[Any, ...]] = {}
        self._method_attrs: dict[str, tuple[tuple[Any, ...], Attrs]] = {}
        self._task_attrs: dict[tuple[str, str | None], tuple[tuple[Any, ...], Attrs]] = {}
        self._task_names: dict[str, tuple[tuple[Any, ...], Attrs]] = {}
        self._gauge_attrs: dict[tuple[tuple[str, str], ...], Attrs] = {}
        # (tally key, attributes, the histogram's aggregation key for them) per kind of call
        self._client_attrs: dict[tuple[str, str, int, int, str | None], tuple[Any, ...]] = {}
        self._closed = False
        self.errors = 0
        self._warnings = Every(60.0)

    @classmethod
    def from_config(cls, config: Config) -> OtelMetrics:
        return cls(
            service_name=config.service_name,
            service_version=config.resolved_service_version(),
            environment=config.environment,
            max_keys=min(50_000, (config.max_routes + 2) * 64),
        )

    # -- cached (tally key, attribute dict) pairs; the dicts are never mutated ----------------

    def _cache(self, cache: dict[Any, Any], key: Any, value: Any) -> Any:
        if len(cache) < self._max_keys:
            cache[key] = value
        return value

    def _for_request(
        self, method: str, route: str, status: int, error_type: str | None
    ) -> tuple[Any, ...]:
        """(tally key, duration/count attributes, exception attributes) for one request kind."""
        key = (method, route, status, error_type)
        found = self._request_attrs.get(key)
        if found is not None:
            return found
        attrs: Attrs = {METHOD: method, ROUTE: route}
        if status:
            attrs[STATUS] = status
        errors = {**attrs, ERROR_TYPE: error_type or ""}
        semconv_error = error_type or (str(status) if status >= 500 else None)
        if semconv_error is not None:
            attrs[ERROR_TYPE] = semconv_error
        value = (self._ident + key, {**attrs, **self._const}, {**errors, **self._const})
        return self._cache(self._request_attrs, key, value)  # type: ignore[no-any-return]

    def _for_method(self, method: str) -> tuple[tuple[Any, ...], Attrs]:
        found = self._method_attrs.get(method)
        if found is None:
            value = ((*self._ident, method), {METHOD: method, **self._const})
            found = self._cache(self._method_attrs, method, value)
        return found

    def _for_task_name(self, name: str) -> tuple[tuple[Any, ...], Attrs]:
        found = self._task_names.get(name)
        if found is None:
            value = ((*self._ident, name), {TASK_NAME: name, **self._const})
            found = self._cache(self._task_names, name, value)
        return found

    # -- the Metrics interface ------------------------------------------------------------

    def request_started(self, method: str) -> None:
        if self._closed:
            return
        try:
            key, attrs = self._for_method(method)
            self._inst.active.add(key, attrs, 1)
        except Exception:
            self._error()

    def request_finished(
        self, method: str, route: str, status: int, duration_s: float, error_type: str | None
    ) -> None:
        if self._closed:
            return
        try:
            key, attrs, error_attrs = self._for_request(method, route, status, error_type)
            inst = self._inst
            inst.duration.record(duration_s, attrs)
            inst.requests.add(key, attrs, 1)
            mkey, mattrs = self._for_method(method)
            inst.active.add(mkey, mattrs, -1)
            if error_type is not None:
                inst.exceptions.add(key, error_attrs, 1)
        except Exception:
            self._error()

    def client_request_finished(
        self,
        method: str,
        server_address: str,
        server_port: int,
        status: int,
        duration_s: float,
        error_type: str | None,
    ) -> None:
        if self._closed:
            return
        try:
            key = (method, server_address, server_port, status, error_type)
            found = self._client_attrs.get(key)
            if found is None:
                attrs: Attrs = {METHOD: method, SERVER_ADDRESS: server_address}
                attrs[SERVER_PORT] = server_port
                if status:
                    attrs[STATUS] = status
                if error_type is not None:
                    attrs[ERROR_TYPE] = error_type
                attrs = {**attrs, **self._const}
                value = (self._ident + key, attrs, self._inst.client_duration_light.key(attrs))
                found = self._cache(self._client_attrs, key, value)
            tally_key, attrs, aggregation_key = found
            inst = self._inst
            inst.client_duration_light.record(duration_s, attrs, aggregation_key)
            inst.client_requests.add(tally_key, attrs, 1)
            if error_type is not None:
                inst.client_errors.add(tally_key, attrs, 1)
        except Exception:
            self._error()

    def task_started(self, name: str) -> None:
        if self._closed:
            return
        try:
            key, attrs = self._for_task_name(name)
            self._inst.task_active.add(key, attrs, 1)
        except Exception:
            self._error()

    def task_finished(self, name: str, duration_s: float, error_type: str | None) -> None:
        if self._closed:
            return
        try:
            found = self._task_attrs.get((name, error_type))
            if found is None:
                attrs: Attrs = {
                    TASK_NAME: name,
                    TASK_OUTCOME: "success" if error_type is None else "failure",
                }
                if error_type is not None:
                    attrs[ERROR_TYPE] = error_type
                value = ((*self._ident, name, error_type), {**attrs, **self._const})
                found = self._cache(self._task_attrs, (name, error_type), value)
            key, attrs = found
            inst = self._inst
            inst.task_duration.record(duration_s, attrs)
            inst.task_completed.add(key, attrs, 1)
            nkey, nattrs = self._for_task_name(name)
            inst.task_active.add(nkey, nattrs, -1)
        except Exception:
            self._error()

    def gauge(self, name: str, value: float, attributes: Mapping[str, str] | None = None) -> None:
        if self._closed:
            return
        try:
            instrument, attrs = self._named(self._inst.gauges, "gauge", name, attributes)
            instrument.set(value, attrs)
        except Exception:
            self._error()

    def count(self, name: str, attributes: Mapping[str, str] | None = None, value: int = 1) -> None:
        if self._closed:
            return
        try:
            instrument, attrs = self._named(self._inst.counters, "counter", name, attributes)
            instrument.add(value, attrs)
        except Exception:
            self._error()

    def _named(
        self,
        made: dict[str, Any],
        kind: str,
        name: str,
        attributes: Mapping[str, str] | None,
    ) -> tuple[Any, Attrs]:
        """The instrument named ``name`` (made once) and the cached attributes for a point."""
        instrument = made.get(name)
        if instrument is None:
            create = getattr(self._inst.meter, f"create_{kind}")
            instrument = made[name] = create(name)
        key = tuple(sorted(attributes.items())) if attributes else ()
        attrs = self._gauge_attrs.get(key)
        if attrs is None:
            attrs = self._cache(self._gauge_attrs, key, {**dict(key), **self._const})
        return instrument, attrs

    def flush(self, timeout: float = 5.0) -> None:
        """``force_flush`` the MeterProvider (an SDK provider exports now), within ``timeout``."""
        force_flush = getattr(self._provider, "force_flush", None)
        if force_flush is None:
            return
        try:
            force_flush(timeout_millis=max(0, int(timeout * 1000)))
        except Exception:
            self._error()

    def close(self) -> None:
        """Stop recording. The MeterProvider is the application's: it is not shut down here."""
        if not self._closed:
            self._closed = True
            _forget(self)

    def _error(self) -> None:
        self.errors += 1
        with contextlib.suppress(Exception):
            if self._warnings.ready() is not None:
                log.warning(
                    "OpenTelemetry metrics failed (%d times so far); the request goes on",
                    self.errors,
                    exc_info=True,
                )


def _after_fork_in_child() -> None:
    """A new process starts with its own counts (and no lock held by a vanished thread)."""
    global _registry_lock
    _registry_lock = threading.Lock()
    for instruments in list(_registry.values()):
        for tally in instruments.tallies():
            tally.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
