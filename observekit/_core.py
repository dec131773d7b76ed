"""The one request lifecycle every adapter drives: begin -> (app) -> response_started -> finish.

Adapters translate their framework's request into a :class:`RequestInfo`, call
:meth:`Observer.begin`, enter the returned :class:`Exchange`'s context around
every piece of application code, report the response status and headers, and
call :meth:`Exchange.finish` once the body is done. Everything that logs,
validates or times lives here, and none of it may raise into the application.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

from ._access import AccessValues
from ._access import fields as access_fields
from ._config import Config
from ._context import RequestContext, _current, leave
from ._every import Every
from ._exceptions import ConfigError
from ._requestid import generate_request_id, is_valid_request_id, rejection_reason

__all__ = ["Exchange", "Observer", "RequestInfo", "current_exchange"]

ACCESS_LOGGER = "observekit.access"
LOGGER = "observekit"
ERROR_BODY = b"Internal Server Error\n"

_perf_counter = time.perf_counter
_random = random.random
_INFO = logging.INFO
_ERROR = logging.ERROR


# Set by observekit.logging: writes an access line straight to the one JSON handler it
# would reach and returns True, or returns False when logging.handle() must do it.
# ctx is the request's context; the ids are the server span's (trace_id, span_id), None
# without a sampled one, or False when there is no server span (read the current span).
_direct_writer: list[
    Callable[
        [
            logging.Logger,
            int,
            str,
            AccessValues,
            RequestContext | None,
            tuple[str, str] | Literal[False] | None,
        ],
        bool,
    ]
    | None
] = [None]


class _RecordMaker:
    """Builds the access logger's records from a template, without ``LogRecord.__init__``.

    The stock constructor spends most of its time on what is constant for a
    line observekit writes (source path, module, process name); copying those
    from a template halves the cost. The result is an ordinary ``LogRecord``
    with every standard attribute, which any handler or formatter accepts. It
    does not go through ``logging.setLogRecordFactory``.
    """

    _DYNAMIC = ("created", "msecs", "relativeCreated", "thread", "threadName", "process")

    def __init__(self, name: str) -> None:
        self._templates = {
            level: self._template(name, level) for level in (logging.DEBUG, _INFO, _ERROR)
        }
        self._start: float = getattr(logging, "_startTime", time.time())
        # Python 3.12 records carry the asyncio task's name; it differs per record.
        self._tasks = "taskName" in self._templates[_INFO]

    def _template(self, name: str, level: int) -> dict[str, Any]:
        attrs = dict(logging.LogRecord(name, level, "", 0, "", (), None).__dict__)
        for key in self._DYNAMIC:
            attrs.pop(key, None)
        return attrs

    def __call__(self, level: int, msg: str, fields: dict[str, Any]) -> logging.LogRecord:
        """A new record carrying ``fields`` as attributes, as ``extra=`` would."""
        record = _new_record(logging.LogRecord)
        attrs = record.__dict__
        attrs.update(self._templates[level])
        now = time.time()
        attrs["created"] = now
        attrs["msecs"] = int((now - int(now)) * 1000) + 0.0
        attrs["relativeCreated"] = (now - self._start) * 1000
        attrs["thread"] = _get_ident()
        attrs["threadName"] = _current_thread().name if logging.logThreads else None
        attrs["process"] = _pid[0] if logging.logProcesses else None
        if self._tasks:
            attrs["taskName"] = _task_name()
        attrs["msg"] = msg
        attrs.update(fields)
        # For observekit's formatter: these are all the extra fields, unless something
        # (a filter) adds attributes later, which the attribute count then shows.
        attrs["_observekit_fields"] = fields
        attrs["_observekit_size"] = len(attrs) + 1
        return record


# This process's ID without a system call: one fork hook for the process (not one per
# middleware, which would keep each alive). The span queue reads it too.
_pid = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))


def _task_name() -> str | None:
    if not getattr(logging, "logAsyncioTasks", False):
        return None
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return None
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running event loop
        return None
    return None if task is None else task.get_name()


_new_record = object.__new__
_get_ident = threading.get_ident
_current_thread = threading.current_thread


def qualified_name(cls: type) -> str:
    """``error.type`` for an exception class: its qualified name, with the module unless builtin."""
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


class RequestInfo:
    """The framework-neutral view of a request that the core needs.

    ``headers`` maps lowercase names to values and needs to hold only the names
    in :attr:`Observer.header_names`. Of a repeated header, ASGI passes the first
    value; a WSGI server has already joined them with commas, and a comma is not
    allowed in a request ID, so the joined value is rejected.
    """

    __slots__ = (
        "client",
        "headers",
        "method",
        "path",
        "protocol_version",
        "query",
        "route",
        "scheme",
        "server_address",
        "server_port",
    )

    def __init__(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        *,
        scheme: str = "http",
        client: str | None = None,
        route: str | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.scheme = scheme
        self.client = client
        self.route = route
        # Filled by adapters only when Observer.wants_details (a span needs them).
        self.server_address: str | None = None
        self.server_port: int | None = None
        self.protocol_version: str | None = None
        self.query: str | None = None


class Metrics(Protocol):
    """What the core calls on a metrics backend (see :mod:`observekit.metrics`)."""

    def request_started(self, method: str) -> None: ...

    def request_finished(
        self, method: str, route: str, status: int, duration_s: float, error_type: str | None
    ) -> None: ...


class Spans(Protocol):
    """What the core calls to trace requests (see :class:`observekit.tracing.ServerSpans`)."""

    header_names: tuple[str, ...]

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
    ) -> Any: ...

    def activate(self, handle: Any) -> Any: ...

    def deactivate(self, token: Any) -> None: ...

    def finish(
        self,
        handle: Any,
        *,
        status: int | None,
        route: str | None,
        error: BaseException | None,
        error_type: str | None,
    ) -> None: ...

    def trace_id(self, handle: Any) -> str | None: ...

    def ids(self, handle: Any) -> tuple[str, str] | None: ...


# Request methods kept as labels; anything else is "_OTHER", as OpenTelemetry's
# semantic conventions say, so a scanner's made-up methods add no label values.
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY"}
)
UNMATCHED = "unmatched"
OVERFLOW = "overflow"


class RouteLabels:
    """Caps the distinct route labels one process reports; later newcomers are ``overflow``."""

    __slots__ = ("_lock", "_seen", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, route: str) -> str:
        if route in self._seen:
            return route
        with self._lock:
            if route in self._seen:
                return route
            if len(self._seen) >= self.limit:
                return OVERFLOW
            self._seen.add(route)
            return route


class Observer:
    """Per-application state, worked out once from a :class:`Config`.

    One instance serves every request of one middleware; it holds no
    per-request state.
    """

    def __init__(self, config: Config, *, tracer_provider: Any = None) -> None:
        if not isinstance(config, Config):
            raise TypeError(f"config must be an observekit.Config, got {type(config).__name__}")
        self.config = config
        self.request_id_headers = tuple(h.lower() for h in config.request_id_headers)
        self._header_display = {h.lower(): h for h in config.request_id_headers}
        self.response_header = config.response_header
        self.response_header_lower = config.response_header.lower()
        self._custom_validator = config.request_id_validator is not None
        self._validate = config.request_id_validator or is_valid_request_id
        self._custom_generator = config.request_id_generator is not None
        self._generate = config.request_id_generator or generate_request_id
        self.new_id: Callable[[], str] = (
            self._custom_new_id if self._custom_generator else generate_request_id
        )
        """A new request ID: the configured generator's, or the default's when it fails."""
        self.access_log = config.access_log
        self.metrics: Metrics | None = _build_metrics(config)
        self.spans: Spans | None = _build_spans(config, tracer_provider)
        self.wants_details = self.spans is not None
        # -- resilience: health is answered by the boundaries before begin(); the
        # guards (shedding, rate limit, faults) run between begin() and the app.
        self.health: Any = _build_health(config)
        self.health_paths: frozenset[str] = (
            self.health.paths if self.health is not None else frozenset()
        )
        """Paths the boundaries answer with :attr:`health` before :meth:`begin`."""
        self.guards: Any = _build_guards(config, self)
        """``None`` or the guards :meth:`Exchange.guard` runs before the app."""
        """Adapters fill RequestInfo's server, protocol and query details (spans use them)."""
        self.ids_only = (
            not config.access_log
            and not config.log_request_received
            and self.metrics is None
            and self.spans is None
            and self.guards is None
        )
        """Only request IDs are wanted: adapters may skip the Exchange entirely."""
        self._resolve_route = config.route_resolver
        self.detached_finish = self._resolve_route is None and (
            self.metrics is None or not getattr(self.metrics, "reads_context", True)
        )
        """:meth:`Exchange.finish` runs no user code and reads no context (a route resolver
        does; OpenTelemetry metrics read the span for exemplars): adapters with no
        application code left to run may call it without entering the request context."""
        self.route_label = RouteLabels(config.max_routes)
        self._excluded = frozenset(config.access_log_exclude_paths)
        self._sample_all = config.access_log_sample_ratio >= 1.0
        self._sample_ratio = config.access_log_sample_ratio
        self._log_received = config.log_request_received
        names = list(self.request_id_headers)
        if self.access_log:
            names += ["content-type", "content-length", "user-agent"]
        if self.spans is not None:
            names += ["user-agent", "host", *self.spans.header_names]
        if self.guards is not None:
            names += self.guards.header_names
        self.header_names: tuple[str, ...] = tuple(dict.fromkeys(names))
        """Lowercase request headers the core reads; adapters supply at least these."""
        self.access_logger = logging.getLogger(ACCESS_LOGGER)
        self.make_record = _RecordMaker(ACCESS_LOGGER)
        self.logger = logging.getLogger(LOGGER)
        self._rejections = Every(10.0)
        self._internal = Every(10.0)
        self.internal_errors = 0
        """How many failures inside observekit (or its user hooks) were absorbed."""

    # -- request IDs ---------------------------------------------------------

    def choose_request_id(
        self, headers: Mapping[str, str], span: Any = None
    ) -> tuple[str, tuple[str, str] | None]:
        """The request ID for these headers, and (header, reason) when a value was rejected."""
        rejected: tuple[str, str] | None = None
        for name in self.request_id_headers:
            raw = headers.get(name)
            if raw is None:
                continue
            if self._accepts(raw):
                return raw, None
            if rejected is None:
                rejected = (self._header_display[name], self._reason(raw))
        if span is not None and not self._custom_generator and self.spans is not None:
            try:
                trace_id = self.spans.trace_id(span)
            except Exception:
                trace_id = None
            if trace_id:
                return trace_id, rejected
        return self.new_id(), rejected

    def _accepts(self, raw: str) -> bool:
        if not self._custom_validator:
            return self._validate(raw)
        try:
            ok = bool(self._validate(raw))
        except Exception:
            self.internal_error("request_id_validator raised")
            return False
        # A custom validator may accept anything; a header value may not hold
        # control characters, so those are refused regardless.
        return ok and raw.isascii() and raw.isprintable()

    def _reason(self, raw: str) -> str:
        if not self._custom_validator:
            return rejection_reason(raw)
        if not (raw.isascii() and raw.isprintable()):
            return "contains control or non-ASCII characters"
        return "rejected by request_id_validator"

    def _custom_new_id(self) -> str:
        try:
            rid = self._generate()
            if isinstance(rid, str) and rid and rid.isascii() and rid.isprintable():
                return rid
            self.internal_error("request_id_generator returned an unusable value", exc=False)
        except Exception:
            self.internal_error("request_id_generator raised")
        return generate_request_id()

    # -- lifecycle -----------------------------------------------------------

    def begin(self, info: RequestInfo) -> Exchange:
        """Start one request: its span, ID and context, and the in-flight count.

        Nothing is entered yet. Without a valid incoming ID, a traced request's
        ID is its trace ID (unless a custom generator is configured), so one ID
        finds the request's log lines and its trace.
        """
        span = None
        spans = self.spans
        if spans is not None:
            headers = info.headers
            try:
                span = spans.start(
                    info.method,
                    info.path,
                    info.scheme,
                    headers,
                    client=info.client,
                    server_address=info.server_address,
                    server_port=info.server_port,
                    user_agent=headers.get("user-agent"),
                    protocol_version=info.protocol_version,
                    query=info.query,
                    route=info.route,
                )
            except Exception:
                self.internal_error("starting the server span failed")
        rid, rejected = self.choose_request_id(info.headers, span)
        if self.metrics is not None:
            try:
                self.metrics.request_started(self.method_label(info.method))
            except Exception:
                self.internal_error("counting an active request failed")
        context = _ExchangeContext(rid)
        exchange = context.exchange = Exchange(self, info, context, rejected, span)
        return exchange

    def method_label(self, method: str) -> str:
        """The request method as a label: a known method, else ``_OTHER``."""
        return method if method in KNOWN_METHODS else "_OTHER"

    def resolve_route(self, info: RequestInfo, route: str | None) -> str | None:
        """The route template: the framework's, else the configured resolver's, else None."""
        if route is not None or self._resolve_route is None:
            return route
        try:
            resolved = self._resolve_route(info)
        except Exception:
            self.internal_error("route_resolver raised")
            return None
        return resolved if isinstance(resolved, str) and resolved else None

    def context_for(self, headers: Mapping[str, str]) -> RequestContext:
        """A context for a connection that is not an HTTP request (a websocket)."""
        rid, rejected = self.choose_request_id(headers)
        context = RequestContext(rid)
        if rejected is not None:
            token = _current.set(context)
            try:
                self.warn_rejected(rejected, rid)
            finally:
                leave(token)
        return context

    def warn_rejected(self, rejected: tuple[str, str], new_id: str) -> None:
        """WARNING about an unusable incoming ID: header and reason, never the value."""
        held = self._rejections.ready()
        if held is None:
            return
        header, reason = rejected
        try:
            self.logger.warning(
                "rejected request ID from %s: %s; using %s",
                header,
                reason,
                new_id,
                extra={
                    "request_id.header": header,
                    "request_id.rejection": reason,
                    "request_id.rejections_suppressed": held,
                },
            )
        except Exception:
            self.internal_error("logging a rejected request ID failed")

    def log_exception(
        self, exc: Exception, method: str, path: str, error_type: str | None = None
    ) -> str:
        """Log an application's exception once at ERROR with its traceback; return error.type.

        Call it with the request's context current, so the line carries its ID.
        """
        cls = type(exc)
        if error_type is None:
            error_type = qualified_name(cls)
        try:
            self.logger.error(
                "unhandled exception in %s %s",
                method,
                path,
                exc_info=(cls, exc, exc.__traceback__),
                extra={"http.request.method": method, "url.path": path, "error.type": error_type},
            )
        except Exception:
            self.internal_error("logging an application exception failed")
        return error_type

    def internal_error(self, what: str, *, exc: bool = True) -> None:
        """Count a failure inside observekit and log it at most once per 10 seconds."""
        self.internal_errors += 1
        held = self._internal.ready()
        if held is None:
            return
        # If logging itself is what broke, nothing more can be said.
        with contextlib.suppress(Exception):
            self.logger.warning(
                "observekit internal error: %s; the request goes on",
                what,
                exc_info=exc,
                extra={"observekit.errors_suppressed": held},
            )


def _build_metrics(config: Config) -> Metrics | None:
    choice = config.metrics
    if choice == "none" or (choice == "auto" and config.statsd_host is None):
        return None
    from .metrics import metrics_for  # only when metrics are wanted

    return metrics_for(config)


def _build_health(config: Config) -> Any:
    if config.health_path is None and config.readiness_path is None:
        return None
    from .resilience.health import Health

    return Health(
        liveness_path=config.health_path,
        readiness_path=config.readiness_path,
        checks=config.readiness_checks,
        timeout=config.readiness_timeout,
    )


def _build_guards(config: Config, observer: Observer) -> Any:
    wants = (
        config.max_in_flight is not None
        or config.rate_limit is not None
        or bool(config.rate_limit_routes)
        or (config.faults_enabled and bool(config.fault_rules))
    )
    if not wants:
        return None
    from .resilience.guards import build_guards

    return build_guards(config, observer)


def _build_spans(config: Config, provider: Any) -> Spans | None:
    tracing = sys.modules.get("observekit.tracing")
    configured = tracing is not None and tracing.is_configured()
    if config.traces_exporter == "none" and not configured and provider is None:
        return None
    try:
        from . import tracing as tracing_module
    except ImportError as exc:
        raise ConfigError(
            "traces_exporter",
            f"traces_exporter={config.traces_exporter!r} needs OpenTelemetry: "
            f"pip install 'observekit[otel]' ({exc})",
        ) from None
    if provider is None and not tracing_module.is_configured():
        tracing_module.configure(config)
    spans: Spans = tracing_module.ServerSpans(config, provider)
    # Lines written while any span is current carry its IDs, whoever owns the provider.
    from .logging import use_trace_ids

    use_trace_ids(tracing_module.current_ids)
    return spans


# -- adapter hook: the Exchange reachable from the request context --------------


class _ExchangeContext(RequestContext):
    """The context :meth:`Observer.begin` sets up: it also leads to its :class:`Exchange`."""

    __slots__ = ("exchange",)
    exchange: Exchange | None


def current_exchange() -> Exchange | None:
    """The :class:`Exchange` whose request context is current, until it finishes; else None.

    For adapters that learn something only inside the framework (Flask's URL rule,
    an exception the framework turns into a 500) while another layer owns the
    exchange (the WSGI middleware around ``app.wsgi_app``).
    """
    context = _current.get()
    return context.exchange if type(context) is _ExchangeContext else None


class Exchange:
    """One request on its way through the core. Created by :meth:`Observer.begin`."""

    __slots__ = (
        "_rejected",
        "cancelled",
        "context",
        "error",
        "error_type",
        "fault",
        "finished",
        "info",
        "observer",
        "release",
        "request_id",
        "response_bytes",
        "response_content_length",
        "response_content_type",
        "route",
        "span",
        "start",
        "status",
    )

    def __init__(
        self,
        observer: Observer,
        info: RequestInfo,
        context: RequestContext,
        rejected: tuple[str, str] | None,
        span: Any = None,
    ) -> None:
        self.observer = observer
        self.info = info
        self.context = context
        self.request_id = context.request_id
        self.route = info.route
        self.status: int | None = None
        self.response_content_type: str | None = None
        self.response_content_length: str | None = None
        self.response_bytes = 0
        self.error_type: str | None = None
        self.error: BaseException | None = None
        self.cancelled = False
        self.finished = False
        self._rejected = rejected
        self.span = span
        self.fault: str | None = None
        """What fault injection did to this request (its ``fault.injected`` field)."""
        self.release: Callable[[], None] | None = None
        """Called once at :meth:`finish`: gives back a load-shedding slot."""
        self.start = _perf_counter()
        if rejected is not None or observer._log_received:
            self._announce()

    def guard(self) -> Any:
        """Run the guards in this thread: ``None`` (go on to the app) or an Answer to send.

        Call it with the context entered. A failure inside a guard lets the request through.
        """
        guards = self.observer.guards
        if guards is None:
            return None
        try:
            return guards.check(self)
        except Exception:
            self.observer.internal_error("a request guard failed")
            return None

    async def aguard(self) -> Any:
        """:meth:`guard` for ASGI: waits (queue, Redis, latency) without blocking the loop."""
        guards = self.observer.guards
        if guards is None:
            return None
        try:
            return await guards.acheck(self)
        except Exception:
            self.observer.internal_error("a request guard failed")
            return None

    def enter(self) -> Any:
        """Make this request's context (and span) current; give the token to :meth:`exit`."""
        token = _current.set(self.context)
        if self.span is None:
            return token
        try:
            return (token, self.observer.spans.activate(self.span))  # type: ignore[union-attr]
        except Exception:
            self.observer.internal_error("activating the server span failed")
            return token

    def exit(self, token: Any) -> None:
        """Undo :meth:`enter`, in the same frame."""
        if type(token) is tuple:
            token, span_token = token
            try:
                self.observer.spans.deactivate(span_token)  # type: ignore[union-attr]
            except Exception:
                self.observer.internal_error("deactivating the server span failed")
        try:
            _current.reset(token)
        except ValueError:  # a token from a copied context: leave() sets the value back
            leave(token)

    def _announce(self) -> None:
        """The lines a request writes as it begins: a rejected ID, "received"."""
        token = self.enter()
        try:
            if self._rejected is not None:
                self.observer.warn_rejected(self._rejected, self.request_id)
            if self.observer._log_received:
                self._log_received()
        finally:
            self.exit(token)

    def _log_received(self) -> None:
        logger = self.observer.access_logger
        if not logger.isEnabledFor(logging.DEBUG):
            return
        info = self.info
        try:
            logger.debug(
                "%s %s received",
                info.method,
                info.path,
                extra={"http.request.method": info.method, "url.path": info.path},
            )
        except Exception:
            self.observer.internal_error("logging the received line failed")

    def response_started(
        self, status: int, content_type: str | None, content_length: str | None
    ) -> None:
        """The status line and headers are known (they may still be replaced by a 500)."""
        self.status = status
        self.response_content_type = content_type
        self.response_content_length = content_length

    def fail(self, exc: BaseException) -> None:
        """The application raised: log it once at ERROR with its traceback."""
        if self.error_type is not None:
            return
        self.error_type = qualified_name(type(exc))
        if not isinstance(exc, Exception):
            self.error = exc
            # Cancellation (the client left, the server shuts down), KeyboardInterrupt,
            # SystemExit: the request was abandoned, the application did not fail.
            self.cancelled = True
            return
        self.error = exc
        token = self.enter()
        try:
            self.observer.log_exception(exc, self.info.method, self.info.path, self.error_type)
        finally:
            self.exit(token)

    def finish(self) -> None:
        """The response is fully sent (or abandoned): record it on every signal. Idempotent.

        Call it with the request's context entered, or, when
        :attr:`Observer.detached_finish` says so, without: the lines it writes carry
        the request's IDs either way, and a WSGI body that was a list then finishes
        without the two context switches.
        """
        if self.finished:
            return
        self.finished = True
        if type(self.context) is _ExchangeContext:
            self.context.exchange = None  # no cycle left for the garbage collector
        observer = self.observer
        if self.release is not None:
            try:
                self.release()
            except Exception:
                self._internal_error("releasing a load-shedding slot failed")
        duration = _perf_counter() - self.start
        status = self.status
        if status is None:
            # 499: nginx's "client closed request", for a request abandoned before a response.
            status = 499 if self.cancelled else 500 if self.error_type is not None else 0
        route = observer.resolve_route(self.info, self.route)
        if observer.metrics is not None:
            try:
                observer.metrics.request_finished(
                    observer.method_label(self.info.method),
                    UNMATCHED if route is None else observer.route_label(route),
                    status,
                    duration,
                    None if self.cancelled else self.error_type,
                )
            except Exception:
                self._internal_error("recording request metrics failed")
        if observer.access_log:
            try:
                self._access_line(observer, status, route, duration)
            except Exception:
                self._internal_error("writing the access line failed")
        if self.span is not None:
            try:
                observer.spans.finish(  # type: ignore[union-attr]
                    self.span,
                    status=self.status,
                    route=route,
                    error=self.error,
                    error_type=self.error_type,
                )
            except Exception:
                self._internal_error("ending the server span failed")

    def _access_line(
        self, observer: Observer, status: int, route: str | None, duration: float
    ) -> None:
        info = self.info
        if info.path in observer._excluded:
            return
        failed = status >= 500 or (self.error_type is not None and not self.cancelled)
        if not failed and not observer._sample_all and _random() >= observer._sample_ratio:
            return
        level = _ERROR if failed else _INFO
        logger = observer.access_logger
        if not logger.isEnabledFor(level):
            return
        headers = info.headers
        request_size = headers.get("content-length")
        size = self.response_bytes
        if size == 0 and self.response_content_length is not None:
            length = self.response_content_length
            if length.isascii() and length.isdigit():
                size = int(length)
        values: AccessValues = (
            info.method,
            info.path,
            info.scheme,
            route,
            status,
            int(duration * 1_000_000.0 + 0.5),
            headers.get("content-type"),
            int(request_size)
            if request_size is not None and request_size.isascii() and request_size.isdigit()
            else None,
            self.response_content_type,
            size,
            info.client,
            headers.get("user-agent"),
            self.error_type,
            self.fault,
        )
        message = f"{info.method} {info.path} {status}"
        direct = _direct_writer[0]
        if direct is not None:
            span = self.span
            ids: tuple[str, str] | Literal[False] | None = False
            if span is not None:
                ids = observer.spans.ids(span)  # type: ignore[union-attr]
            if direct(logger, level, message, values, self.context, ids):
                return
        # Handlers and filters read the context: enter it, unless the caller has.
        token = None if _current.get() is self.context else self.enter()
        try:
            logger.handle(observer.make_record(level, message, access_fields(values)))
        finally:
            if token is not None:
                self.exit(token)

    def _internal_error(self, what: str) -> None:
        """:meth:`Observer.internal_error` with the request's context current (in ``except``)."""
        token = None if _current.get() is self.context else self.enter()
        try:
            self.observer.internal_error(what)
        finally:
            if token is not None:
                self.exit(token)
