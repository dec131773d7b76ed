"""OpenTelemetry traces: the SDK set-up, one server span per request, trace IDs for log lines.

Needs the ``otel`` extra (``pip install 'observekit[otel]'``); ``import observekit``
never imports this module. ::

    import observekit.tracing

    provider = observekit.tracing.configure(observekit.Config.from_env())

:func:`configure` builds a ``TracerProvider`` from a :class:`~observekit.Config`:
a Resource (``service.name``, ``service.version``, ``deployment.environment``,
``deployment.id``, the extra resource attributes), the sampler, a bounded batch
processor around the exporter (OTLP over HTTP/protobuf by default, gRPC, console
or none), and the propagators. It makes them global, and has every observekit log
line carry ``trace_id`` and ``span_id`` while a span is current.

Safe under pre-forking servers (``gunicorn --preload``): the SDK's batch processor
restarts its export thread in each child, and the OTLP exporter is built in the
process that first exports, so no connection or gRPC channel crosses a fork.

Bounded at exit: the flush at interpreter exit, or on :func:`shutdown`, takes at most
``Config.shutdown_timeout`` seconds (default 5), collector reachable or not; one
export attempt, retries included, is bounded by it too (at least 1 s, at most 10 s).
uvicorn runs no exit handlers on SIGTERM: call :func:`ashutdown` on ASGI lifespan
shutdown there.

When the collector is slow or down the batch queue fills and new spans are
dropped, never blocking a request: they are counted (:func:`export_stats`) and
one WARNING on logger ``observekit.tracing`` per minute says how many.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import logging
import os
import random
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk import version as _sdk_version
from opentelemetry.sdk.resources import Resource, ServiceInstanceIdResourceDetector
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace import sampling as _sampling
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind, Status, StatusCode, TraceFlags, set_span_in_context
from opentelemetry.trace.propagation import _SPAN_KEY

from . import _otlp
from ._config import Config
from ._core import _pid
from ._every import Every
from ._exceptions import ConfigError
from ._memo import remembered

__all__ = [
    "BoundedBatchSpanProcessor",
    "ExportStats",
    "ServerSpans",
    "ashutdown",
    "configure",
    "otlp_http_exporter",
    "current_ids",
    "export_stats",
    "is_configured",
    "shutdown",
    "task_span",
]

_log = logging.getLogger("observekit.tracing")

_SCOPE: Final = "observekit"
_SCOPE_VERSION: Final = "0.1.0"
_WARN_EVERY: Final = 60.0
"""Seconds between two warnings about dropped or unexported spans."""

# -- semantic conventions (the stable HTTP server ones) ------------------------------
# Plain strings, equal to opentelemetry.semconv.attributes.*: a module-level constant
# is a LOAD_GLOBAL, an attribute of an imported module two lookups.
_METHOD: Final = "http.request.method"
_METHOD_ORIGINAL: Final = "http.request.method_original"
_ROUTE: Final = "http.route"
_STATUS: Final = "http.response.status_code"
_URL_PATH: Final = "url.path"
_URL_SCHEME: Final = "url.scheme"
_URL_QUERY: Final = "url.query"
_CLIENT: Final = "client.address"
_SERVER_ADDRESS: Final = "server.address"
_SERVER_PORT: Final = "server.port"
_USER_AGENT: Final = "user_agent.original"
_PROTOCOL_VERSION: Final = "network.protocol.version"
_ERROR_TYPE: Final = "error.type"

_KNOWN_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY"}
)
# Query parameters whose values semantic conventions say to redact (as
# opentelemetry.util.http.PARAMS_TO_REDACT); "Signature" also covers X-Goog-Signature.
_REDACT_PARAMS: Final = frozenset({"AWSAccessKeyId", "Signature", "sig", "X-Goog-Signature"})
_REDACT_HINTS: Final = ("sig", "Signature", "AWSAccessKeyId")

_SERVER: Final = SpanKind.SERVER
_INTERNAL: Final = SpanKind.INTERNAL
_ERROR: Final = Status(StatusCode.ERROR)
_ROOT: Final = Context()
_UNSET: Final = Status(StatusCode.UNSET)
_SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED: Final = TraceFlags(TraceFlags.DEFAULT)
"""The parent of a server span without incoming trace headers: never the current
context, which a previous request on this thread may have left behind."""

_attach = otel_context.attach
_get_current_span = trace.get_current_span
_getrandbits = random.getrandbits  # the module's instance, reseeded in a forked child
_new_tuple = tuple.__new__
_INVALID_CONTEXT: Final = trace.INVALID_SPAN_CONTEXT
_DEFAULT_TRACE_STATE: Final = trace.DEFAULT_TRACE_STATE
_MAX_TRACE_ID: Final = (1 << 128) - 1
_MAX_SPAN_ID: Final = (1 << 64) - 1


def _runtime_var() -> contextvars.ContextVar[Context] | None:
    """The ContextVar behind OpenTelemetry's runtime context, when it is the stock one.

    ``otel_context.attach`` and ``get_current`` each go through two Python calls to
    set or read it; a request does that several times. Any other runtime context
    (or a changed SDK) gets ``None`` and the public API is used.
    """
    try:
        from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext

        runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
        var = getattr(runtime, "_current_context", None)
    except ImportError:
        return None
    if type(runtime) is ContextVarsRuntimeContext and isinstance(var, contextvars.ContextVar):
        return var
    return None


_context_var = _runtime_var()
if _context_var is not None:
    _attach = _context_var.set  # type: ignore[assignment]
    _current_context = _context_var.get

    def _get_current_span(context: Context | None = None) -> trace.Span:
        span = (_current_context() if context is None else context).get(_SPAN_KEY)
        return span if isinstance(span, trace.Span) else trace.INVALID_SPAN


# -- configure ---------------------------------------------------------------------


@dataclass(frozen=True)
class ExportStats:
    """What happened to the spans of the processors :func:`configure` built."""

    dropped: int
    """Spans dropped because the batch queue was full (collector slow or down)."""
    failed: int
    """Spans the exporter handed to the collector without success."""
    exported: int
    """Spans the collector accepted."""
    queued: int
    """Spans waiting in the queue now."""


class _Setup:
    """One provider :func:`configure` built, what it needs at exit, and how it was asked for."""

    __slots__ = ("key", "processor", "provider")

    def __init__(
        self,
        provider: TracerProvider,
        processor: BoundedBatchSpanProcessor | None,
        key: tuple[Any, ...] | None,
    ) -> None:
        self.provider = provider
        self.processor = processor
        self.key = key


_lock = threading.Lock()
_setups: list[_Setup] = []
_global_setup: list[_Setup | None] = [None]
_atexit_registered: list[bool] = [False]


def configure(
    config: Config | None = None,
    *,
    exporter: SpanExporter | None = None,
    set_global: bool = True,
    max_queue_size: int = 2048,
    max_export_batch_size: int = 512,
    schedule_delay: float = 5.0,
) -> TracerProvider:
    """Build the OpenTelemetry SDK from ``config`` (default ``Config.from_env()``).

    The exporter is ``exporter`` when given, else what ``config.traces_exporter``
    names: ``otlp`` (``config.otlp_protocol``: HTTP/protobuf to
    ``otlp_traces_endpoint`` as it is, else ``otlp_endpoint`` + ``/v1/traces``; or gRPC
    to ``otlp_traces_endpoint`` or ``otlp_endpoint``), ``console``,
    or ``none`` (spans are made, for trace IDs and propagation, but not exported).
    Spans go through a :class:`BoundedBatchSpanProcessor` (``max_queue_size``
    spans at most; export every ``schedule_delay`` seconds or ``max_export_batch_size``
    spans). The OTLP exporter's own variables (``OTEL_EXPORTER_OTLP_HEADERS``,
    ``..._CERTIFICATE``, ``..._COMPRESSION``) still apply; its timeout is
    ``min(10, config.shutdown_timeout)`` seconds (at least 1).

    With ``set_global`` (the default) the provider and the propagators become
    OpenTelemetry's global ones, log lines get ``trace_id``/``span_id``, and
    ``observekit.track_task`` records a span per task. Calling it again with an
    equal config returns the same provider. If another global TracerProvider is
    already set (OpenTelemetry allows one per process), it stays, a WARNING says
    so, and the new provider is returned unset: hand it to :class:`ServerSpans`.

    Raises :class:`~observekit.ConfigError` for a propagator, exporter or
    endpoint that cannot be used.
    """
    if config is None:
        config = Config.from_env()
    if exporter is not None and not isinstance(exporter, SpanExporter):
        raise TypeError(f"exporter must be a SpanExporter, got {exporter!r}")
    if max_queue_size < 1 or not 1 <= max_export_batch_size <= max_queue_size:
        raise ValueError(
            "max_queue_size must be >= 1 and max_export_batch_size from 1 to max_queue_size, "
            f"got {max_queue_size!r} and {max_export_batch_size!r}"
        )
    if not schedule_delay > 0:
        raise ValueError(f"schedule_delay must be a positive number, got {schedule_delay!r}")
    key = None
    if exporter is None:
        key = (config, max_queue_size, max_export_batch_size, schedule_delay)
    with _lock:
        existing = _global_setup[0]
        if set_global and existing is not None and key is not None and existing.key == key:
            return existing.provider
        propagator = _build_propagator(config.propagators)
        provider = TracerProvider(
            sampler=_build_sampler(config),
            resource=_build_resource(config),
            shutdown_on_exit=False,  # our own, bounded, exit handler below
        )
        _own_providers.add(provider)
        processor = None
        if exporter is not None or config.traces_exporter != "none":
            processor = BoundedBatchSpanProcessor(
                exporter if exporter is not None else _build_exporter(config),
                max_queue_size=max_queue_size,
                max_export_batch_size=max_export_batch_size,
                schedule_delay=schedule_delay,
                shutdown_timeout=config.shutdown_timeout,
            )
            provider.add_span_processor(processor)
            _processors.add(processor)
            _processor_of[provider] = processor
        setup = _Setup(provider, processor, key)
        _setups[:] = [s for s in _setups if s.processor is None or not s.processor.is_shut_down]
        _setups.append(setup)
        if not _atexit_registered[0]:
            atexit.register(_at_exit)
            _atexit_registered[0] = True
        if set_global:
            _make_global(setup, propagator)
    return provider


def _make_global(setup: _Setup, propagator: TextMapPropagator) -> None:
    current = trace.get_tracer_provider()
    if not isinstance(current, trace.ProxyTracerProvider):
        _log.warning(
            "a global OpenTelemetry TracerProvider is already set (%s); it stays global, and "
            "observekit.tracing.configure() returns a provider that is not: pass it to "
            "ServerSpans(config, provider)",
            type(current).__name__,
        )
        return
    trace.set_tracer_provider(setup.provider)
    from opentelemetry import propagate

    propagate.set_global_textmap(propagator)
    _global_setup[0] = setup
    from . import logging as ok_logging

    ok_logging.use_trace_ids(current_ids)
    from . import _tasks

    _tasks._span_hook = task_span


def is_configured() -> bool:
    """True once a global TracerProvider is set: by :func:`configure`, or by the
    application's own OpenTelemetry set-up (which observekit then uses as it is)."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def shutdown(timeout: float | None = None) -> bool:
    """Flush and stop every processor :func:`configure` built, within ``timeout`` seconds.

    ``None``: the largest ``Config.shutdown_timeout`` among them. Spans not
    exported by then are given up (a WARNING says how many). Returns True when all
    were flushed. Runs by itself at interpreter exit; calling it again does nothing.
    """
    with _lock:
        setups = list(_setups)
        _setups.clear()
    if timeout is None:
        timeout = max(
            (s.processor.shutdown_timeout for s in setups if s.processor is not None), default=0.0
        )
    ok = True
    deadline = time.monotonic() + max(0.0, timeout)
    for setup in setups:
        if setup.processor is not None:
            budget = max(0.0, deadline - time.monotonic())
            ok = setup.processor.shutdown(timeout=budget) and ok
        try:
            setup.provider.shutdown()  # its processors are stopped: returns at once
        except Exception:
            _log.exception("shutting down a TracerProvider failed")
    return ok


async def ashutdown(timeout: float | None = None) -> bool:
    """:func:`shutdown` for an event loop: the flush runs in a thread, the loop goes on.

    Call it on ASGI ``lifespan.shutdown``. uvicorn stops on SIGTERM by re-raising
    the signal after its graceful shutdown, with the default handler, so the
    process dies without running exit handlers: lifespan is the last hook there.
    """
    import asyncio

    return await asyncio.to_thread(shutdown, timeout)


def _at_exit() -> None:
    shutdown()


def export_stats(provider: TracerProvider | None = None) -> ExportStats:
    """Span counts of ``provider``'s observekit processor (None: all :func:`configure` built)."""
    with _lock:
        if provider is None:
            processors = list(_processors)
        else:
            one = _processor_of.get(provider)
            processors = [] if one is None else [one]
    return ExportStats(
        dropped=sum(p.dropped_spans for p in processors),
        failed=sum(p.failed_spans for p in processors),
        exported=sum(p.exported_spans for p in processors),
        queued=sum(p.queued_spans for p in processors),
    )


_processors: weakref.WeakSet[BoundedBatchSpanProcessor] = weakref.WeakSet()
_own_providers: weakref.WeakSet[TracerProvider] = weakref.WeakSet()
"""Providers :func:`configure` built (their processors are observekit's)."""
_processor_of: weakref.WeakKeyDictionary[TracerProvider, BoundedBatchSpanProcessor] = (
    weakref.WeakKeyDictionary()
)


# -- the pieces configure() builds ---------------------------------------------------


def _build_sampler(config: Config) -> _sampling.Sampler:
    ratio = 1.0 if config.traces_sampler_arg is None else float(config.traces_sampler_arg)
    name = config.traces_sampler
    if name == "always_on":
        return _sampling.ALWAYS_ON
    if name == "always_off":
        return _sampling.ALWAYS_OFF
    if name == "traceidratio":
        return _sampling.TraceIdRatioBased(ratio)
    if name == "parentbased_always_off":
        return _sampling.ParentBased(_sampling.ALWAYS_OFF)
    if name == "parentbased_traceidratio":
        return _sampling.ParentBasedTraceIdRatio(ratio)
    return _sampling.ParentBased(_sampling.ALWAYS_ON)


def _build_resource(config: Config) -> Resource:
    """The Resource, from ``config`` only (no hidden ``OTEL_RESOURCE_ATTRIBUTES`` read).

    ``service.instance.id`` comes from the SDK's detector, which the TracerProvider
    runs again in a forked child: each worker process gets its own.
    """
    environment = config.environment or "unknown"
    attributes: dict[str, str] = {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.version": _sdk_version.__version__,
    }
    attributes.update(config.resource_attributes)
    attributes.update(
        {
            "service.name": config.service_name,
            "service.version": config.resolved_service_version(),
            # Both names: "deployment.environment" is what DESIGN.md and older
            # backends use, ".name" what semantic conventions 1.27+ renamed it to.
            "deployment.environment": environment,
            "deployment.environment.name": environment,
        }
    )
    if config.deployment_id is not None:
        attributes["deployment.id"] = config.deployment_id
    return ServiceInstanceIdResourceDetector().detect().merge(Resource(attributes))


_PROPAGATOR_PACKAGES: Final = {
    "b3": "opentelemetry-propagator-b3",
    "b3multi": "opentelemetry-propagator-b3",
    "jaeger": "opentelemetry-propagator-jaeger",
    "xray": "opentelemetry-propagator-aws-xray",
}


def _build_propagator(names: Sequence[str]) -> CompositePropagator:
    """The propagators ``names`` (``OTEL_PROPAGATORS`` values) list, as one composite."""
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    if "none" in names:
        return CompositePropagator([])
    found: list[TextMapPropagator] = []
    for name in dict.fromkeys(names):
        if name == "tracecontext":
            found.append(TraceContextTextMapPropagator())
        elif name == "baggage":
            found.append(W3CBaggagePropagator())
        else:
            found.append(_load_propagator(name))
    return CompositePropagator(found)


def _load_propagator(name: str) -> TextMapPropagator:
    from importlib.metadata import entry_points

    package = _PROPAGATOR_PACKAGES.get(name, f"the package providing {name!r}")
    for entry in entry_points(group="opentelemetry_propagator", name=name):
        try:
            propagator = entry.load()()
        except Exception as exc:
            raise ConfigError(
                "propagators", f"propagator {name!r} ({package}) failed to load: {exc!r}"
            ) from None
        if isinstance(propagator, TextMapPropagator):
            return propagator
    raise ConfigError(
        "propagators",
        f"propagator {name!r} is not installed: pip install {package} "
        "(or leave it out of propagators / OTEL_PROPAGATORS)",
    )


def _export_timeout(config: Config) -> float:
    """One export, retries included, never outlasts the exit budget (nor 10 s, OTel's default)."""
    return max(1.0, min(10.0, config.shutdown_timeout))


def _traces_url(endpoint: str | None, traces_endpoint: str | None = None) -> str:
    """The OTLP/HTTP traces URL, as the OTLP exporter spec says.

    A signal-specific ``traces_endpoint`` (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is
    the URL, used as it is. A base ``endpoint`` gets ``/v1/traces`` appended
    (``http://c:4318`` -> ``http://c:4318/v1/traces``; ``http://c/otlp/`` ->
    ``http://c/otlp/v1/traces``), unless it already ends in ``/v1/traces``.
    """
    field, url = (
        ("otlp_traces_endpoint", traces_endpoint)
        if traces_endpoint
        else ("otlp_endpoint", endpoint or "http://localhost:4318")
    )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            field, f"{field} must be an http:// or https:// URL for OTLP over HTTP, got {url!r}"
        )
    if traces_endpoint or parts.path.rstrip("/").endswith("/v1/traces"):
        return url
    return url.rstrip("/") + "/v1/traces"


def _build_exporter(config: Config) -> _GuardedExporter:
    timeout = _export_timeout(config)
    if config.traces_exporter == "console":
        # sys.stdout now, not the SDK's default argument (bound when it was imported)
        return _GuardedExporter(
            ConsoleSpanExporter(out=sys.stdout), "console", rebuild_after_fork=False
        )
    if config.otlp_protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )
        except ImportError as exc:
            raise ConfigError(
                "otlp_protocol",
                "otlp_protocol='grpc' needs opentelemetry-exporter-otlp-proto-grpc: "
                f"pip install opentelemetry-exporter-otlp-proto-grpc ({exc})",
            ) from None
        target = config.otlp_traces_endpoint or config.otlp_endpoint or "http://localhost:4317"

        def grpc_exporter() -> SpanExporter:
            return GrpcExporter(endpoint=target, timeout=timeout)

        return _GuardedExporter(grpc_exporter, target, rebuild_after_fork=True)
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )
    except ImportError as exc:
        raise ConfigError(
            "traces_exporter",
            "traces_exporter='otlp' needs opentelemetry-exporter-otlp-proto-http: "
            f"pip install 'observekit[otel]' ({exc})",
        ) from None
    url = _traces_url(config.otlp_endpoint, config.otlp_traces_endpoint)
    exporter_class = _fast_http_exporter(HttpExporter)

    def http_exporter() -> SpanExporter:
        session = _lean_session(url)
        exporter: SpanExporter = exporter_class(endpoint=url, timeout=timeout, session=session)
        if session is not None:
            _ca_bundle_once(session)
        return exporter

    return _GuardedExporter(http_exporter, url, rebuild_after_fork=True)


_CA_BUNDLE_ENV = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def _lean_session(url: str) -> Any:
    """A ``requests`` session for the exporter that reads the environment once, or None.

    A default session re-reads the proxy variables (a pass over all of
    ``os.environ``) and looks for a ``.netrc`` file on every post: about a tenth
    of the export thread's work per span. This one has the proxies for ``url``
    resolved now (``HTTP(S)_PROXY``, ``NO_PROXY``) and ``trust_env`` off; the
    CA bundle is set by :func:`_ca_bundle_once`. None, so that the SDK makes its
    usual session, when the environment asks for what only a per-request read
    gives: a ``.netrc`` file, or a session from a credential provider
    (``OTEL_PYTHON_EXPORTER_OTLP_*CREDENTIAL_PROVIDER``).
    """
    import requests
    from requests.utils import get_environ_proxies, get_netrc_auth

    environ = os.environ
    if environ.get("NETRC") or any(
        name.startswith("OTEL_PYTHON_EXPORTER_OTLP_") and name.endswith("CREDENTIAL_PROVIDER")
        for name in environ
    ):
        return None
    try:
        if get_netrc_auth(url) is not None:
            return None
        session = requests.Session()
        session.trust_env = False
        session.proxies.update(get_environ_proxies(url))
    except Exception:
        _log.warning("could not prepare the OTLP exporter's session; using the default")
        return None
    return session


def _ca_bundle_once(session: Any) -> None:
    """The CA bundle a ``trust_env`` session takes from the environment on every post.

    Set after the SDK's transport has set ``session.verify`` (``True``, or the file
    of ``OTEL_EXPORTER_OTLP_CERTIFICATE``, which wins, as it does in ``requests``).
    """
    if session.verify is True:
        environ = os.environ
        session.verify = next((environ[n] for n in _CA_BUNDLE_ENV if environ.get(n)), True)


def otlp_http_exporter(endpoint: str, **kwargs: Any) -> SpanExporter:
    """OpenTelemetry's OTLP/HTTP span exporter, serializing with observekit's encoder.

    ``endpoint`` is the full traces URL (``http://collector:4318/v1/traces``);
    ``kwargs`` go to ``opentelemetry.exporter.otlp.proto.http.trace_exporter.
    OTLPSpanExporter`` (headers, timeout, compression, session, ...). This is the
    exporter :func:`configure` builds for ``traces_exporter="otlp"``; use it with
    a TracerProvider of your own to export at the same cost.
    """
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    exporter: SpanExporter = _fast_http_exporter(OTLPSpanExporter)(endpoint=endpoint, **kwargs)
    return exporter


def _fast_http_exporter(base: type[Any]) -> type[Any]:
    """The SDK's OTLP/HTTP exporter, serializing with :mod:`observekit._otlp`.

    Everything but the encoding is the SDK's: endpoint, headers, TLS,
    compression, timeout, retries. The encoder writes the wire format directly
    at about a third of the SDK's cost per span (``bench/span_cost.py``); where
    the installed SDK has no ``_client`` to hand bytes to (before 1.4x), or the
    encoder fails, the SDK's own ``export`` runs instead.
    """

    class FastOTLPSpanExporter(base):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._observekit_encoder = _otlp._Encoder()

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            client = getattr(self, "_client", None)
            if client is None or getattr(self, "_shutdown", False):
                return super().export(spans)  # type: ignore[no-any-return]
            try:
                data = self._observekit_encoder.encode(spans)
            except Exception:
                _log.exception("encoding %d spans failed; using the SDK's encoder", len(spans))
                return super().export(spans)  # type: ignore[no-any-return]
            result = client.export(data)
            return SpanExportResult.SUCCESS if result.success else SpanExportResult.FAILURE

    return FastOTLPSpanExporter


class _GuardedExporter(SpanExporter):
    """Wraps the real exporter: counts what it delivers, never raises, and is fork-aware.

    Built from a factory, the inner exporter is made by the first export in each
    process: the OTLP exporters hold a connection pool (HTTP) or a channel (gRPC),
    neither of which may be shared with a forked child. With ``gunicorn
    --preload`` nothing is exported before the fork, so nothing is built before it.
    """

    def __init__(
        self,
        inner: SpanExporter | Callable[[], SpanExporter],
        description: str,
        *,
        rebuild_after_fork: bool,
    ) -> None:
        if isinstance(inner, SpanExporter):
            self._factory: Callable[[], SpanExporter] | None = None
            self._inner: SpanExporter | None = inner
        else:
            self._factory = inner
            self._inner = None
        self.description = description
        self._rebuild_after_fork = rebuild_after_fork
        self._pid = os.getpid()
        self._closed = False
        self._lock = threading.Lock()
        self.failed = 0
        self.exported = 0
        self.in_flight = 0
        self._failed_reported = 0
        self._every = Every(_WARN_EVERY)
        self._errors = Every(_WARN_EVERY)

    def _current(self) -> SpanExporter:
        pid = os.getpid()
        inner = self._inner
        if self._factory is not None and (
            inner is None or (self._rebuild_after_fork and pid != self._pid)
        ):
            # In a forked child the parent's exporter is left alone, not shut down:
            # its sockets belong to the parent.
            inner = self._inner = self._factory()
        self._pid = pid
        if inner is None:  # unreachable: without a factory there is always an exporter
            raise RuntimeError("no span exporter")
        return inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._closed:
            return SpanExportResult.FAILURE
        count = len(spans)
        self.in_flight = count
        owned: list[ReadableSpan] | None = None
        if self._factory is not None:
            # A failed OTLP export leaves requests' exception in a reference cycle whose
            # traceback reaches, through f_back, every frame of this call: until the
            # next full collection those frames would keep the whole batch alive (a
            # sawtooth of +15 MB per worker in bench/collector_down.py). Our own
            # exporter gets a copy that is emptied after the call, and this frame lets
            # go of the caller's list. Someone else's exporter may keep the sequence.
            owned = list(spans)
            del spans
        try:
            result = self._current().export(spans if owned is None else owned)
        except Exception:
            if self._errors.ready() is not None:  # e.g. a factory that cannot build it
                _log.exception("exporting %d spans to %s raised", count, self.description)
            result = SpanExportResult.FAILURE
        finally:
            self.in_flight = 0
            if owned is not None:
                owned.clear()
        with self._lock:
            if result is SpanExportResult.SUCCESS:
                self.exported += count
                return result
            self.failed += count
        held = self._every.ready()
        if held is not None:
            with self._lock:
                new, self._failed_reported = self.failed - self._failed_reported, self.failed
            _log.warning(
                "could not export %d spans to %s since the last warning (%d in all); "
                "is the collector up?",
                new,
                self.description,
                self.failed,
                extra={"observekit.spans_failed": self.failed, "process.pid": os.getpid()},
            )
        return result

    def report_failures(self) -> None:
        """Log the failures not reported yet (at shutdown: the warnings are rate-limited)."""
        with self._lock:
            new, self._failed_reported = self.failed - self._failed_reported, self.failed
        if new:
            _log.warning(
                "could not export %d spans to %s since the last warning (%d in all)",
                new,
                self.description,
                self.failed,
                extra={"observekit.spans_failed": self.failed, "process.pid": os.getpid()},
            )

    def abort(self) -> None:
        """Stop now: interrupts the exporter's retry back-off and closes its connections."""
        self.shutdown()

    def shutdown(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            inner = self._inner if self._pid == os.getpid() else None
        if inner is not None:
            try:
                inner.shutdown()
            except Exception:
                _log.exception("shutting down the span exporter (%s) failed", self.description)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        inner = self._inner
        if inner is None:
            return True
        try:
            return bool(inner.force_flush(timeout_millis))
        except Exception:
            _log.exception("flushing the span exporter (%s) failed", self.description)
            return False

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._every = Every(_WARN_EVERY)
        self._errors = Every(_WARN_EVERY)
        self.failed = self.exported = self._failed_reported = 0


# -- the batch processor -------------------------------------------------------------


class BoundedBatchSpanProcessor(BatchSpanProcessor):
    """The SDK's ``BatchSpanProcessor``, with counts, warnings and a bounded shutdown.

    - A span that finds the queue full is dropped (the newest, not the oldest as
      the SDK does, which spares the request thread the SDK's per-drop log record);
      :attr:`dropped_spans` counts them, and a WARNING on ``observekit.tracing``
      says how many at most once a minute.
    - :meth:`shutdown` and :meth:`force_flush` return within their timeout (default
      ``shutdown_timeout``) even when the exporter hangs or retries: the flush runs
      in a daemon thread that is given up on when time is out.
    - After ``os.fork()`` the SDK starts a new export thread in the child (its
      ``register_at_fork`` hook); this class resets its counts there too.
    """

    def __init__(
        self,
        exporter: SpanExporter,
        *,
        max_queue_size: int = 2048,
        max_export_batch_size: int = 512,
        schedule_delay: float = 5.0,
        shutdown_timeout: float = 5.0,
    ) -> None:
        guarded = (
            exporter
            if isinstance(exporter, _GuardedExporter)
            else _GuardedExporter(exporter, type(exporter).__name__, rebuild_after_fork=False)
        )
        super().__init__(
            guarded,
            max_queue_size=max_queue_size,
            schedule_delay_millis=schedule_delay * 1000.0,
            max_export_batch_size=max_export_batch_size,
            export_timeout_millis=shutdown_timeout * 1000.0,
        )
        self._guarded = guarded
        self.shutdown_timeout = shutdown_timeout
        self._max_queue_size = max_queue_size
        # The SDK's queue (a bounded deque, cleared in place after a fork): reading its
        # length is how a full queue is seen. A test pins that it is still there.
        batch = getattr(self, "_batch_processor", None)
        self._queue: Any = getattr(batch, "_queue", None)
        self._emit: Callable[[ReadableSpan], None] = (
            batch.emit if batch is not None else super().on_end
        )
        # Light spans skip on_end and emit's call: _enqueue does what emit does, when
        # the SDK's emit is still the one it copies (see _inline_emit).
        self._batch: Any = batch if _inline_emit(batch, self._queue) else None
        self._stopped = False
        self._drop_lock = threading.Lock()
        self.dropped_spans = 0
        self._dropped_reported = 0
        self._every = Every(_WARN_EVERY)
        if hasattr(os, "register_at_fork"):
            weak = weakref.WeakMethod(self._after_fork_in_child)

            def after_in_child() -> None:
                method = weak()
                if method is not None:
                    method()

            os.register_at_fork(after_in_child=after_in_child)

    @property
    def failed_spans(self) -> int:
        """Spans handed to the exporter that it could not deliver."""
        return self._guarded.failed

    @property
    def exported_spans(self) -> int:
        """Spans the exporter delivered."""
        return self._guarded.exported

    @property
    def queued_spans(self) -> int:
        """Spans waiting in the queue now."""
        return len(self._queue) if self._queue is not None else 0

    @property
    def is_shut_down(self) -> bool:
        """True once :meth:`shutdown` was called."""
        return self._stopped

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None or not context.trace_flags.sampled:
            return
        queue = self._queue
        if self._stopped or (queue is not None and len(queue) >= self._max_queue_size):
            self._dropped()
            return
        self._emit(span)

    def _enqueue(self, span: ReadableSpan) -> None:
        """``on_end`` for a sampled span of observekit's own (a light span): the SDK's
        ``emit`` inlined, its fork check (``_pid``: a new export thread in a forked
        child) and shutdown check included, by way of ``emit`` itself when either fires."""
        batch = self._batch
        if batch is None:
            self.on_end(span)
            return
        queue = self._queue
        if self._stopped or len(queue) >= self._max_queue_size:
            self._dropped()
            return
        # _pid: the core's fork-kept process ID (os.getpid() is a system call per span).
        if batch._shutdown or batch._pid != _pid[0]:
            batch.emit(span)
            return
        queue.appendleft(span)
        if len(queue) >= batch._max_export_batch_size and not batch._worker_awaken.is_set():
            batch._worker_awaken.set()

    def _dropped(self) -> None:
        with self._drop_lock:
            self.dropped_spans += 1
            if self._stopped:
                return
        if self._every.ready() is None:
            return
        with self._drop_lock:
            new, self._dropped_reported = (
                self.dropped_spans - self._dropped_reported,
                self.dropped_spans,
            )
        _log.warning(
            "span queue full (%d spans): dropped %d spans since the last warning (%d in all); "
            "the collector at %s is slow or unreachable",
            self._max_queue_size,
            new,
            self.dropped_spans,
            self._guarded.description,
            extra={"observekit.spans_dropped": self.dropped_spans, "process.pid": os.getpid()},
        )

    def shutdown(self, timeout: float | None = None) -> bool:  # type: ignore[override]
        """Export what is queued and stop, within ``timeout`` seconds (default
        ``shutdown_timeout``). Returns True when everything was exported in time."""
        with self._drop_lock:
            if self._stopped:
                return True
            self._stopped = True
        budget = self.shutdown_timeout if timeout is None else timeout
        finished = _bounded(super().shutdown, budget, "observekit-span-shutdown")
        if not finished:
            lost = self.queued_spans + self._guarded.in_flight
            self._guarded.abort()  # interrupts a retry back-off in the export thread
            _log.warning(
                "span export did not finish within %.1f s; given up on %d spans "
                "(is the collector at %s reachable?)",
                budget,
                lost,
                self._guarded.description,
                extra={"observekit.spans_lost": lost, "process.pid": os.getpid()},
            )
        self._guarded.report_failures()
        unreported = self.dropped_spans - self._dropped_reported
        if unreported:
            self._dropped_reported = self.dropped_spans
            _log.warning(
                "%d spans were dropped (queue full) since the last warning (%d in all)",
                unreported,
                self.dropped_spans,
                extra={"observekit.spans_dropped": self.dropped_spans, "process.pid": os.getpid()},
            )
        return finished and self.queued_spans == 0

    def force_flush(self, timeout_millis: int | None = None) -> bool:
        """Export what is queued, waiting at most ``timeout_millis`` (default 30 000)."""
        if self._stopped:
            return False
        timeout = 30.0 if timeout_millis is None else timeout_millis / 1000.0
        result: list[bool] = []
        flush = super().force_flush
        finished = _bounded(
            lambda: result.append(flush(timeout_millis)), timeout, "observekit-span-flush"
        )
        return finished and result == [True]

    def _after_fork_in_child(self) -> None:
        self._drop_lock = threading.Lock()
        self._every = Every(_WARN_EVERY)
        self.dropped_spans = self._dropped_reported = 0
        self._guarded._after_fork_in_child()


_EMIT_NAMES: Final = frozenset(
    {
        "_shutdown",
        "_logger",
        "info",
        "_exporting",
        "_metrics",
        "drop_items",
        "_pid",
        "os",
        "getpid",
        "_bsp_reset_once",
        "do_once",
        "_at_fork_reinit",
        "len",
        "_queue",
        "_max_queue_size",
        "warning",
        "appendleft",
        "_max_export_batch_size",
        "_worker_awaken",
        "is_set",
        "set",
    }
)
"""The names the SDK's ``BatchProcessor.emit`` uses (as of SDK 1.45): a change
means it does something :meth:`BoundedBatchSpanProcessor._enqueue` does not copy."""


def _inline_emit(batch: object, queue: object) -> bool:
    """Whether ``_enqueue`` may stand in for ``batch.emit``: the SDK's own BatchProcessor,
    its emit unchanged (the names it uses), and the fields _enqueue reads present."""
    try:
        from opentelemetry.sdk._shared_internal import BatchProcessor
    except ImportError:
        return False
    emit = getattr(type(batch), "emit", None)
    code = getattr(emit, "__code__", None)
    return (
        type(batch) is BatchProcessor
        and code is not None
        and frozenset(code.co_names) == _EMIT_NAMES
        and queue is not None
        and getattr(batch, "_queue", None) is queue
        and isinstance(getattr(batch, "_pid", None), int)
        and isinstance(getattr(batch, "_shutdown", None), bool)
        and isinstance(getattr(batch, "_max_export_batch_size", None), int)
        and isinstance(getattr(batch, "_worker_awaken", None), threading.Event)
    )


def _bounded(function: Callable[[], object], timeout: float, name: str) -> bool:
    """Run ``function`` in a daemon thread; True when it returned within ``timeout`` seconds."""
    done = threading.Event()

    def run() -> None:
        try:
            function()
        except Exception:
            _log.exception("%s failed", name)
        finally:
            done.set()

    try:
        threading.Thread(target=run, name=name, daemon=True).start()
    except RuntimeError:  # no new threads this late in interpreter shutdown
        run()
    return done.wait(max(0.0, timeout))


# -- server spans --------------------------------------------------------------------


class _LightSink:
    """What a light span needs from the provider observekit configured, read once."""

    __slots__ = (
        "id_generator",
        "limits",
        "parent_based_on",
        "processor",
        "provider",
        "random_ids",
        "sampler",
        "scope",
    )

    def __init__(self, provider: TracerProvider, processor: BoundedBatchSpanProcessor | None):
        self.sampler = provider.sampler
        self.parent_based_on = _is_parent_based_always_on(self.sampler)
        self.id_generator = provider.id_generator
        # The SDK's default generator is getrandbits, retried on zero: called here
        # directly, without its two method calls per span.
        self.random_ids = type(self.id_generator) is RandomIdGenerator
        # The resource is read when a span ends: the SDK renews it in a forked child.
        self.provider = provider
        self.processor = processor
        self.limits = SpanLimits()
        self.scope = InstrumentationScope(_SCOPE, _SCOPE_VERSION)

    def start(
        self,
        name: str,
        parent: Context | None,
        attributes: dict[str, Any],
        kind: SpanKind = SpanKind.SERVER,
    ) -> trace.Span:
        """A span of ``kind`` under ``parent`` (``None``: the current context)."""
        # _ROOT (no incoming traceparent: most requests) holds no span; nothing to look up.
        parent_context = (
            _INVALID_CONTEXT if parent is _ROOT else _get_current_span(parent).get_span_context()
        )
        random_ids = self.random_ids
        if parent_context.is_valid:
            trace_id = parent_context.trace_id
            parent_or_none: trace.SpanContext | None = parent_context
        else:
            trace_id = _getrandbits(128) if random_ids else 0
            if not trace_id:
                trace_id = self.id_generator.generate_trace_id()
            parent_or_none = None
        span_id = _getrandbits(64) if random_ids else 0
        if not span_id:
            span_id = self.id_generator.generate_span_id()
        if self.parent_based_on:
            # The default sampler's decision, without its call: sample a root, follow a
            # parent; keep the parent's trace state; the attributes are ours, unchanged.
            if parent_or_none is None:
                sampled, trace_state = True, None
            else:
                sampled = parent_context.trace_flags.sampled
                trace_state = parent_context.trace_state
            if _otlp._tuple_context:
                # What SpanContext.__new__ builds, without its keyword call: a third of
                # a span's start. The layout is the one _otlp's import-time probe checked.
                context = _new_tuple(
                    trace.SpanContext,
                    (
                        trace_id,
                        span_id,
                        False,
                        _SAMPLED if sampled else _NOT_SAMPLED,
                        _DEFAULT_TRACE_STATE if trace_state is None else trace_state,
                        0 < trace_id <= _MAX_TRACE_ID and 0 < span_id <= _MAX_SPAN_ID,
                    ),
                )
            else:
                context = trace.SpanContext(
                    trace_id,
                    span_id,
                    is_remote=False,
                    trace_flags=_SAMPLED if sampled else _NOT_SAMPLED,
                    trace_state=trace_state,
                )
            if not sampled:
                return trace.NonRecordingSpan(context)
            return _LightSpan(self, name, context, parent_or_none, attributes, kind)
        result = self.sampler.should_sample(parent, trace_id, name, kind, attributes, None)
        decision = result.decision
        sampled = decision is _sampling.Decision.RECORD_AND_SAMPLE
        context = trace.SpanContext(
            trace_id,
            span_id,
            is_remote=False,
            trace_flags=_SAMPLED if sampled else _NOT_SAMPLED,
            trace_state=result.trace_state,
        )
        if not sampled and decision is not _sampling.Decision.RECORD_ONLY:
            return trace.NonRecordingSpan(context)
        return _LightSpan(
            self, name, context, parent_or_none, dict(result.attributes), kind, sampled
        )


def _is_parent_based_always_on(sampler: object) -> bool:
    """Whether ``sampler`` is exactly the SDK's default, ``ParentBased(ALWAYS_ON)``."""
    return (
        type(sampler) is _sampling.ParentBased
        and getattr(sampler, "_root", None) is _sampling.ALWAYS_ON
        and getattr(sampler, "_remote_parent_sampled", None) is _sampling.ALWAYS_ON
        and getattr(sampler, "_local_parent_sampled", None) is _sampling.ALWAYS_ON
        and getattr(sampler, "_remote_parent_not_sampled", None) is _sampling.ALWAYS_OFF
        and getattr(sampler, "_local_parent_not_sampled", None) is _sampling.ALWAYS_OFF
    )


def _light_sink_for(provider: object) -> tuple[_LightSink, Any, Any] | None:
    """A light-span sink for ``provider`` if :func:`configure` built it and it still holds
    only the processor it was given: ``(sink, multi processor, processors)``. Before each
    span, check ``multi._span_processors is processors`` (a processor added later
    replaces that tuple; spans then go through the SDK)."""
    multi = getattr(provider, "_active_span_processor", None)
    if isinstance(provider, TracerProvider) and provider in _own_providers and multi is not None:
        processors = getattr(multi, "_span_processors", None)
        mine = _processor_of.get(provider)
        if isinstance(processors, tuple) and processors == (() if mine is None else (mine,)):
            return _LightSink(provider, mine), multi, processors
    return None


class _LightSpan(trace.Span, ReadableSpan):
    """A SERVER or CLIENT span made without the SDK's ``Span`` machinery, and handed,
    itself, to the batch processor when it ends: it is its own ``ReadableSpan``.

    Used only with a provider :func:`configure` built (its processors are
    known). It is a complete ``opentelemetry.trace.Span`` for application code:
    attributes a caller sets go through the SDK's ``BoundedAttributes`` (cleaning
    and limits), events and links are bounded by the SDK's ``SpanLimits``, and
    status follows the SDK's rules. What it skips is per-request work observekit
    does not need for the attributes it sets itself, which are already clean.

    It holds its data in the fields the SDK's ``ReadableSpan`` properties read
    (``_name``, ``_attributes``, ...), so ``.attributes``, ``.events``,
    ``.to_json()`` and the rest answer as the SDK's copy of an ended span would; no
    copy is made. Once ended it takes no change (the exporter reads it from another
    thread), and :mod:`observekit._otlp` reads those fields directly.
    """

    __slots__ = (
        "_attributes",
        "_context",
        "_end_time",
        "_events",
        "_export",
        "_instrumentation_info",
        "_instrumentation_scope",
        "_kind",
        "_links",
        "_lock",
        "_name",
        "_parent",
        "_resource",
        "_sink",
        "_start_time",
        "_status",
    )

    def __init__(
        self,
        sink: _LightSink,
        name: str,
        context: trace.SpanContext,
        parent: trace.SpanContext | None,
        attributes: dict[str, Any],
        kind: SpanKind = SpanKind.SERVER,
        sampled: bool = True,
    ) -> None:
        self._sink = sink
        # The processor that gets the span when it ends (None: not sampled, or none).
        self._export = sink.processor if sampled else None
        self._kind = kind
        self._name = name
        self._context: trace.SpanContext = context
        self._parent = parent
        self._attributes: dict[str, Any] | BoundedAttributes = attributes
        self._events: Sequence[Event] = ()  # a BoundedList from the first event on
        self._links: Sequence[trace.Link] = ()
        self._status = _UNSET
        self._end_time: int | None = None
        # Read at start: the SDK renews the provider's resource in a forked child.
        self._resource = sink.provider.resource
        self._instrumentation_scope = sink.scope
        self._instrumentation_info = None
        self._lock = threading.Lock()
        self._start_time = time.time_ns()

    def get_span_context(self) -> trace.SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._end_time is None

    def _user_attributes(self) -> BoundedAttributes:
        attributes = self._attributes
        if not isinstance(attributes, BoundedAttributes):
            limits = self._sink.limits
            attributes = self._attributes = BoundedAttributes(
                limits.max_span_attributes,
                attributes,
                immutable=False,
                max_value_len=limits.max_span_attribute_length,
            )
        return attributes

    def set_attribute(self, key: str, value: Any) -> None:
        with self._lock:
            if self._end_time is None:
                self._user_attributes()[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        with self._lock:
            if self._end_time is None:
                bounded = self._user_attributes()
                for key, value in attributes.items():
                    bounded[key] = value

    def _set_clean(self, key: str, value: str | int) -> None:
        """An attribute observekit made (a str or int): nothing to clean in a plain dict.

        Called only by the code that ends the span, before it does (no lock needed
        against end(); an ended span, which the exporter may be reading, is left alone).
        """
        if self._end_time is None:
            self._attributes[key] = value

    def add_event(
        self, name: str, attributes: Mapping[str, Any] | None = None, timestamp: int | None = None
    ) -> None:
        limits = self._sink.limits
        event = Event(
            name,
            BoundedAttributes(
                limits.max_event_attributes,
                attributes,
                immutable=True,
                max_value_len=limits.max_attribute_length,
            ),
            timestamp,
        )
        with self._lock:
            if self._end_time is not None:
                return
            events = self._events
            if not isinstance(events, BoundedList):
                events = self._events = BoundedList(limits.max_events)
            events.append(event)

    def add_link(self, context: trace.SpanContext, attributes: Any = None) -> None:
        if not context.is_valid:
            return
        link = trace.Link(context, attributes)
        with self._lock:
            if self._end_time is not None:
                return
            links = self._links
            if not isinstance(links, BoundedList):
                links = self._links = BoundedList(self._sink.limits.max_links)
            links.append(link)

    def update_name(self, name: str) -> None:
        with self._lock:
            if self._end_time is None:
                self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # The SDK's rules: OK is final, UNSET is ignored; and nothing once ended.
        if not isinstance(status, Status):
            if status is StatusCode.UNSET:
                return
            status = Status(status, description)
        elif status.status_code is StatusCode.UNSET:
            return
        with self._lock:
            if self._end_time is None and self._status.status_code is not StatusCode.OK:
                self._status = status

    def record_exception(
        self,
        exception: BaseException,
        attributes: Mapping[str, Any] | None = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        cls = type(exception)
        module = cls.__module__
        recorded: dict[str, Any] = {
            "exception.type": f"{module}.{cls.__qualname__}"
            if module and module != "builtins"
            else cls.__qualname__,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            recorded.update(attributes)
        self.add_event("exception", recorded, timestamp)

    def end(self, end_time: int | None = None) -> None:
        with self._lock:
            if self._end_time is not None:
                return
            self._end_time = end_time if end_time is not None else time.time_ns()
        processor = self._export
        if processor is not None:
            processor._enqueue(self)


_otlp.read_directly(_LightSpan)

# Distinct span heads kept per process: method and Host come from the client.
_HEADS_LIMIT = 256


class _Handle:
    __slots__ = ("active", "context", "label", "route", "span", "trace_id")

    def __init__(self, span: trace.Span, context: Context, label: str, route: str | None) -> None:
        self.span = span
        self.context = context
        self.label = label
        self.route = route
        self.trace_id: str | None = None
        # The context with the span current, made on first activation and reused: a
        # request is entered more than once (the app, each chunk, close()).
        self.active: Context | None = None


def _head(
    key: tuple[str, str, str | None, int | None, str | None],
) -> tuple[str, dict[str, str | int]]:
    """A span's name label and the attributes that depend only on (method, scheme,
    server.address, server.port, protocol version)."""
    method, scheme, server_address, server_port, protocol_version = key
    if method in _KNOWN_METHODS:
        label = method
        attributes: dict[str, str | int] = {_METHOD: method}
    else:
        upper = method.upper()
        label = upper if upper in _KNOWN_METHODS else "HTTP"
        attributes = {_METHOD: upper if upper in _KNOWN_METHODS else "_OTHER"}
        attributes[_METHOD_ORIGINAL] = method
    attributes[_URL_SCHEME] = scheme
    if server_address:
        attributes[_SERVER_ADDRESS] = server_address
    if server_port is not None:
        attributes[_SERVER_PORT] = server_port
    if protocol_version:
        attributes[_PROTOCOL_VERSION] = protocol_version
    return label, attributes


class ServerSpans:
    """One SERVER span per request, with the stable HTTP semantic-convention attributes.

    What the core calls for every request when tracing is on; no method raises
    (an internal failure is logged at most once a minute on ``observekit.tracing``).
    ``provider`` ``None``: the global one (including one set after this is built).
    """

    def __init__(self, config: Config, provider: trace.TracerProvider | None = None) -> None:
        source = provider if provider is not None else trace.get_tracer_provider()
        self._tracer = source.get_tracer(_SCOPE, _SCOPE_VERSION)
        # A provider configure() built, still holding only the processor it was given:
        # spans are made light (see _LightSpan). Anything else gets the SDK's spans.
        self._light: _LightSink | None = None
        self._processors: Any = None
        self._verified: Any = None
        found = _light_sink_for(source)
        if found is not None:
            self._light, self._processors, self._verified = found
        propagator = _build_propagator(config.propagators)
        self._extract = propagator.extract
        self.header_names: tuple[str, ...] = tuple(sorted(n.lower() for n in propagator.fields))
        """Lowercase request headers the propagators read; ``start`` needs only these."""
        self._errors = Every(_WARN_EVERY)
        # (method, scheme, server.address, server.port, protocol version) -> (label, the
        # attributes those give): worked out once, copied for each request's span.
        self._heads: dict[
            tuple[str, str, str | None, int | None, str | None],
            tuple[str, dict[str, str | int]],
        ] = {}

    def start(
        self,
        method: str,
        path: str,
        scheme: str,
        headers: Mapping[str, str],
        *,
        client: str | None,
        server_address: str | None,
        server_port: int | None,
        user_agent: str | None,
        protocol_version: str | None,
        query: str | None,
        route: str | None,
    ) -> _Handle | None:
        """Start the request's span (continuing an incoming ``traceparent``); returns its handle."""
        try:
            label, constant = remembered(
                self._heads,
                (method, scheme, server_address, server_port, protocol_version),
                _head,
                _HEADS_LIMIT,
            )
            attributes = constant.copy()
            attributes[_URL_PATH] = path
            if route:
                attributes[_ROUTE] = route
            if query:
                attributes[_URL_QUERY] = _redact(query)
            if client:
                attributes[_CLIENT] = client
            if user_agent:
                attributes[_USER_AGENT] = user_agent
            parent = _ROOT
            for name in self.header_names:
                if name in headers:
                    parent = self._extract(headers, _ROOT)
                    break
            name = f"{label} {route}" if route else label
            light = self._light
            if light is not None and self._processors._span_processors is self._verified:
                span = light.start(name, parent, attributes)
            else:
                span = self._tracer.start_span(name, parent, _SERVER, attributes)
            return _Handle(span, parent, label, route)
        except Exception:
            self._internal_error("start")
            return None

    def activate(self, handle: _Handle | None) -> object:
        """Make the span current in OpenTelemetry's context; returns the token to deactivate."""
        if handle is None:
            return None
        try:
            active = handle.active
            if active is None:
                active = handle.active = set_span_in_context(handle.span, handle.context)
            return _attach(active)
        except Exception:
            self._internal_error("activate")
            return None

    def deactivate(self, token: object) -> None:
        """Restore the context ``activate`` replaced; a token from another context is ignored."""
        if token is None:
            return
        try:
            if isinstance(token, contextvars.Token):
                token.var.reset(token)
            else:
                otel_context.detach(token)  # type: ignore[arg-type]
        except (ValueError, RuntimeError):
            pass  # made in another context, or already used: nothing to restore here
        except Exception:
            self._internal_error("deactivate")

    def finish(
        self,
        handle: _Handle | None,
        *,
        status: int | None,
        route: str | None,
        error: BaseException | None,
        error_type: str | None,
    ) -> None:
        """End the span: final name and route, status code, error status and exception."""
        if handle is None:
            return
        span = handle.span
        if not span.is_recording():
            return
        try:
            # One set_attribute per value: cheaper than set_attributes, which runs the
            # SDK's mapping checks before cleaning each value anyway.
            # A light span takes observekit's own (clean) values without the SDK's checks.
            set_attribute = span._set_clean if type(span) is _LightSpan else span.set_attribute
            if route and route != handle.route:
                span.update_name(f"{handle.label} {route}")
                set_attribute(_ROUTE, route)
            if status is not None:
                set_attribute(_STATUS, status)
            if error is not None:
                span.record_exception(error, escaped=True)
                set_attribute(_ERROR_TYPE, error_type or _qualified_name(type(error)))
                span.set_status(Status(StatusCode.ERROR, _describe(error)))
            elif error_type or (status is not None and status >= 500):
                set_attribute(_ERROR_TYPE, error_type or str(status))
                span.set_status(_ERROR)
        except Exception:
            self._internal_error("finish")
        try:
            span.end()
        except Exception:
            self._internal_error("finish")

    def trace_id(self, handle: _Handle | None) -> str | None:
        """The span's trace ID as 32 hex digits; None when it is not sampled (not exported)."""
        if handle is None:
            return None
        cached = handle.trace_id
        if cached is not None:
            return cached or None
        try:
            context = handle.span.get_span_context()
            if context.is_valid and context.trace_flags & 1:
                ids = _prime_ids(context)
                handle.trace_id = ids[0]
            else:
                handle.trace_id = ""
        except Exception:
            self._internal_error("trace_id")
            return None
        return handle.trace_id or None

    def ids(self, handle: _Handle | None) -> tuple[str, str] | None:
        """The span's ``(trace_id, span_id)`` as hex, as :func:`current_ids` gives them
        while it is current; None when it is not sampled."""
        if handle is None:
            return None
        try:
            return _ids_of(handle.span.get_span_context())
        except Exception:
            self._internal_error("ids")
            return None

    def _internal_error(self, where: str) -> None:
        held = self._errors.ready()
        if held is not None:
            _log.exception(
                "observekit tracing failed in ServerSpans.%s (%d more since the last report); "
                "the request goes on",
                where,
                held,
            )


def _redact(query: str) -> str:
    if not any(hint in query for hint in _REDACT_HINTS):
        return query
    parts = []
    for part in query.split("&"):
        key, sep, _ = part.partition("=")
        parts.append(f"{key}=REDACTED" if sep and key in _REDACT_PARAMS else part)
    return "&".join(parts)


def _qualified_name(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module in (None, "builtins") else f"{module}.{cls.__qualname__}"


def _describe(error: BaseException) -> str:
    try:
        return f"{type(error).__name__}: {error}"
    except Exception:
        return type(error).__name__


# -- trace IDs for log lines -----------------------------------------------------------

_last_ids: tuple[object, tuple[str, str]] | None = None


def current_ids() -> tuple[str, str] | None:
    """The current span's ``(trace_id, span_id)`` as hex, or None (no span, or not sampled).

    Reads OpenTelemetry's context, so any span counts: observekit's server spans,
    task spans, or the application's own. Cheap: the log formatter calls it per line.
    """
    return _ids_of(_get_current_span().get_span_context())


def _ids_of(context: trace.SpanContext) -> tuple[str, str] | None:
    last = _last_ids
    if last is not None and last[0] is context:
        return last[1]
    if not (context.trace_flags & 1) or not context.is_valid:
        return None
    return _prime_ids(context)


def _prime_ids(context: trace.SpanContext) -> tuple[str, str]:
    """A valid, sampled context's IDs as hex, kept for :func:`current_ids`'s next call."""
    global _last_ids
    # to_bytes().hex(): half the instructions of format(..., "032x"), the same digits.
    ids = (context.trace_id.to_bytes(16, "big").hex(), context.span_id.to_bytes(8, "big").hex())
    _last_ids = (context, ids)
    return ids


# -- task spans --------------------------------------------------------------------------


class _TaskSpan:
    """A span around one task run: current inside, exceptions recorded, never raising itself."""

    __slots__ = ("_name", "_span", "_token")

    def __init__(self, name: str) -> None:
        self._name = name
        self._span: trace.Span | None = None
        self._token: object = None

    def __enter__(self) -> trace.Span:
        try:
            self._span = _task_tracer().start_span(self._name, kind=_INTERNAL)
            self._token = _attach(set_span_in_context(self._span))
            return self._span
        except Exception:
            _log.exception("starting the span for task %r failed; the task goes on", self._name)
            return trace.INVALID_SPAN

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span, token = self._span, self._token
        self._span = self._token = None
        if isinstance(token, contextvars.Token):
            with contextlib.suppress(ValueError, RuntimeError):  # another context: nothing to do
                token.var.reset(token)
        if span is None:
            return
        try:
            if exc is not None and span.is_recording():
                span.record_exception(exc, escaped=True)
                span.set_attribute(_ERROR_TYPE, _qualified_name(type(exc)))
                span.set_status(Status(StatusCode.ERROR, _describe(exc)))
            span.end()
        except Exception:
            _log.exception("ending the span for task %r failed", self._name)


_task_tracers: list[tuple[trace.TracerProvider, trace.Tracer]] = []


def _task_tracer() -> trace.Tracer:
    """The global provider's tracer, looked up again only when the global provider changed."""
    provider = trace.get_tracer_provider()
    cached = _task_tracers[0] if _task_tracers else None
    if cached is not None and cached[0] is provider:
        return cached[1]
    tracer = provider.get_tracer(_SCOPE, _SCOPE_VERSION)
    if not isinstance(provider, trace.ProxyTracerProvider):
        _task_tracers[:] = [(provider, tracer)]
    return tracer


def task_span(name: str) -> _TaskSpan:
    """A context manager: an INTERNAL span named ``name``, current inside, exception recorded.

    The hook ``observekit.track_task`` calls (set by :func:`configure`); usable on
    its own, in sync and async code. The exception itself always propagates.
    """
    return _TaskSpan(name)
