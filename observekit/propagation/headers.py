"""What one outgoing call carries and records; shared by the httpx and requests hooks.

:class:`Outgoing` holds what is worked out once per Config (header name, host
rules, metrics backend, tracer, propagators); :meth:`Outgoing.begin` is called
once per outgoing HTTP request (one per redirect hop) and returns a :class:`Call`
with the headers to add and the span, metrics and log line still to finish.
Nothing here imports httpx or requests; OpenTelemetry is imported only once
tracing is on.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import ssl
import sys
import threading
import time
from typing import Any, Final

from .._config import Config
from .._context import _current
from .._every import Every
from .._requestid import generate_request_id

__all__ = [
    "Call",
    "Outgoing",
    "clean_url",
    "error_type_of",
    "log_url",
    "outgoing_for",
    "split_url",
]

LOGGER: Final = "observekit.client"
"""The logger of the one DEBUG line per outgoing call."""
OVERFLOW: Final = "overflow"

_METHOD: Final = "http.request.method"
_METHOD_ORIGINAL: Final = "http.request.method_original"
_SERVER_ADDRESS: Final = "server.address"
_SERVER_PORT: Final = "server.port"
_URL_FULL: Final = "url.full"
_STATUS: Final = "http.response.status_code"
_ERROR_TYPE: Final = "error.type"
_RESEND: Final = "http.request.resend_count"
_KNOWN_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY"}
)
_DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# Query parameters whose values semantic conventions say to redact in url.full.
_REDACT_PARAMS: Final = frozenset({"AWSAccessKeyId", "Signature", "sig", "X-Goog-Signature"})
_REDACT_HINTS: Final = ("sig", "Signature", "AWSAccessKeyId")
_MAX_DECISIONS: Final = 4096
_DEBUG: Final = logging.DEBUG
_perf_counter = time.perf_counter
_log = logging.getLogger("observekit")
_FROM_CONFIG: Any = object()


class _Tracing:
    """The tracer and propagators, built once tracing is on (imports OpenTelemetry).

    On a provider :func:`observekit.tracing.configure` built (and still holding only
    its own processor), client spans are light ones, as server spans are (see
    ``observekit.tracing._LightSpan``). With the default propagators (``tracecontext``,
    optionally ``baggage``), ``traceparent``/``tracestate`` are written straight from
    the span context, and the propagators run only when there is baggage to send.
    """

    __slots__ = (
        "baggage",
        "direct",
        "error",
        "inject",
        "kind",
        "last_trace",
        "light",
        "light_span",
        "processors",
        "set_span_in_context",
        "start_span",
        "status",
        "verified",
    )

    def __init__(self, config: Config, provider: Any) -> None:
        from opentelemetry import baggage, trace
        from opentelemetry import context as otel_context
        from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

        from ..tracing import _build_propagator, _light_sink_for, _LightSpan

        source = provider if provider is not None else trace.get_tracer_provider()
        from .. import __version__

        self.start_span = source.get_tracer("observekit", __version__).start_span
        self.inject = _build_propagator(config.propagators).inject
        self.set_span_in_context = set_span_in_context
        self.kind = SpanKind.CLIENT
        self.error = Status(StatusCode.ERROR)
        self.status = Status
        self.light: Any = None
        self.processors: Any = None
        self.verified: Any = None
        self.light_span: Any = _LightSpan
        found = _light_sink_for(source)
        if found is not None:
            self.light, self.processors, self.verified = found
        names = tuple(dict.fromkeys(config.propagators))
        self.direct = names in (("tracecontext",), ("tracecontext", "baggage"))
        """Write traceparent straight from the span context (no other propagator to run)."""
        self.baggage: Any = None
        """Whether the current context holds baggage (``None``: no baggage propagator)."""
        if "baggage" in names:
            key = getattr(baggage, "_BAGGAGE_KEY", None)
            # The API's get_all() wraps the same dict in a mapping proxy; only its
            # emptiness matters here.
            self.baggage = (
                baggage.get_all if key is None else lambda: otel_context.get_current().get(key)
            )
        self.last_trace: tuple[int, str] = (0, "")
        """The last trace ID and its ``traceparent`` prefix."""

    def headers(self, span: Any, headers: list[tuple[str, str]]) -> None:
        """Add the trace headers for ``span`` (a child of the current context) to ``headers``."""
        if self.direct and (self.baggage is None or not self.baggage()):
            context = span.get_span_context()
            if context.is_valid:
                trace_id = context.trace_id
                last = self.last_trace
                if last[0] != trace_id:  # every call of one request shares the trace ID
                    last = self.last_trace = (trace_id, f"00-{trace_id:032x}-")
                headers.append(
                    ("traceparent", f"{last[1]}{context.span_id:016x}-{context.trace_flags:02x}")
                )
                if context.trace_state:
                    headers.append(("tracestate", context.trace_state.to_header()))
            return
        carrier: dict[str, str] = {}
        self.inject(carrier, self.set_span_in_context(span))
        headers.extend(carrier.items())


class Outgoing:
    """Per-config state for outgoing calls, built once and shared by every hooked client.

    ``tracer_provider``: ``None`` uses the global one once one is set (by
    :func:`observekit.tracing.configure` or the application's own OpenTelemetry
    set-up); until then calls get no span and no trace headers. ``metrics``: a
    backend, or the default, :func:`observekit.metrics.metrics_for` of ``config``.
    """

    def __init__(
        self, config: Config, *, tracer_provider: Any = None, metrics: Any = _FROM_CONFIG
    ) -> None:
        if not isinstance(config, Config):
            raise TypeError(f"config must be an observekit.Config, got {type(config).__name__}")
        self.config = config
        self.header = config.outgoing_request_id_header
        """The request-ID header name, as configured."""
        self._allowed = config.outgoing_allowed_hosts
        self._denied = config.outgoing_denied_hosts
        self._decisions: dict[str, bool] = {}
        self._generate = config.outgoing_generate_request_id
        self._generator = config.request_id_generator
        if metrics is _FROM_CONFIG:
            from ..metrics import metrics_for

            metrics = metrics_for(config)
        self.metrics = metrics
        self._max_hosts = config.outgoing_max_hosts
        self._hosts: set[str] = set()
        self._lock = threading.Lock()
        self._provider = tracer_provider
        self._tracing: _Tracing | None = None
        self.logger = logging.getLogger(LOGGER)
        self._errors = Every(10.0)
        self.internal_errors = 0
        """Failures inside observekit absorbed on the way (the calls went on)."""
        if tracer_provider is not None or config.traces_exporter != "none":
            from .. import tracing

            if tracer_provider is None and not tracing.is_configured():
                tracing.configure(config)
            self._tracing = _Tracing(config, tracer_provider)
        # -- outgoing resilience: breakers and client-side faults (None: nothing per call) --
        from ..resilience.outgoing import resilience_for

        self.resilience = resilience_for(config, metrics)

    # -- per call ------------------------------------------------------------------------

    def tracing(self) -> _Tracing | None:
        """The tracer, once tracing is on; a global provider set later is picked up."""
        found = self._tracing
        if found is not None:
            return found
        trace = sys.modules.get("opentelemetry.trace")
        if trace is None or isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            return None
        try:
            found = self._tracing = _Tracing(self.config, None)
        except Exception:
            self.internal_error("setting up client spans failed")
            return None
        return found

    def begin(
        self, method: str, scheme: str, host: str, port: int | None, url: object, resend: int = 0
    ) -> Call:
        """Start one outgoing request (one hop); ``url`` is ``str()``-ed only when needed.

        The returned call's ``headers`` are what to add where the caller set none.
        """
        call = Call(self, method, host, port if port is not None else _DEFAULT_PORTS.get(scheme, 0))
        ctx = _current.get()
        if ctx is not None:
            rid: str | None = ctx.request_id
        elif self._generate:
            rid = self._new_id()
        else:
            rid = None
        call.request_id = rid
        decision = self._decisions.get(host)
        if decision is None:
            decision = self._decide(host)
        headers = call.headers
        if rid is not None and decision:
            headers.append((self.header, rid))
        tracing = self._tracing or self.tracing()
        if tracing is not None:
            call.url = url
            try:
                attributes: dict[str, Any] = {
                    _METHOD: call.label,
                    _SERVER_ADDRESS: host,
                    _SERVER_PORT: call.port,
                    _URL_FULL: clean_url(str(url)),
                }
                if call.label != method:
                    attributes[_METHOD_ORIGINAL] = method
                if resend:
                    attributes[_RESEND] = resend
                label = call.label
                name = "HTTP" if label == "_OTHER" else label
                light = tracing.light
                if light is not None and tracing.processors._span_processors is tracing.verified:
                    span = light.start(name, None, attributes, tracing.kind)
                else:
                    span = tracing.start_span(name, None, tracing.kind, attributes)
                call.span = span
                if decision:
                    tracing.headers(span, headers)
            except Exception:
                self.internal_error("starting the client span failed")
        elif self.logger.isEnabledFor(_DEBUG):
            call.url = url
        return call

    def sends_to(self, host: str) -> bool:
        """Whether calls to ``host`` carry the request ID and trace headers."""
        decision = self._decisions.get(host)
        return self._decide(host) if decision is None else decision

    def _decide(self, host: str) -> bool:
        name = host.lower().rstrip(".")
        if name.startswith("[") and name.endswith("]"):
            name = name[1:-1]
        decision = not _matches(name, self._denied) and (
            not self._allowed or _matches(name, self._allowed)
        )
        if len(self._decisions) < _MAX_DECISIONS:
            self._decisions[host] = decision
        return decision

    def _new_id(self) -> str:
        if self._generator is not None:
            try:
                value = self._generator()
                if isinstance(value, str) and value:
                    return value
            except Exception:
                self.internal_error("request_id_generator failed")
        return generate_request_id()

    def host_label(self, host: str) -> str:
        """``host``, or ``overflow`` beyond ``outgoing_max_hosts`` distinct ones."""
        seen = self._hosts
        if host in seen:
            return host
        with self._lock:
            if host in seen:
                return host
            if len(seen) >= self._max_hosts:
                return OVERFLOW
            seen.add(host)
        return host

    def internal_error(self, what: str) -> None:
        """Count a failure inside observekit; log it at most once per 10 seconds."""
        self.internal_errors += 1
        held = self._errors.ready()
        if held is None:
            return
        with contextlib.suppress(Exception):  # logging itself broke: nothing more to say
            _log.warning(
                "observekit internal error: %s; the outgoing call goes on",
                what,
                exc_info=True,
                extra={"observekit.errors_suppressed": held},
            )


class Call:
    """One outgoing request (one hop) in flight. :meth:`finish` runs once."""

    __slots__ = (
        "_outgoing",
        "done",
        "error",
        "error_type",
        "fault",
        "headers",
        "host",
        "label",
        "method",
        "port",
        "request_id",
        "span",
        "start",
        "status",
        "url",
    )

    def __init__(self, outgoing: Outgoing, method: str, host: str, port: int) -> None:
        self._outgoing = outgoing
        self.method = method
        if method in _KNOWN_METHODS:
            self.label = method
        else:
            upper = method.upper()
            self.label = upper if upper in _KNOWN_METHODS else "_OTHER"
        self.host = host
        self.port = port
        self.headers: list[tuple[str, str]] = []
        """(name, value) pairs to add to the request where the caller set none."""
        self.request_id: str | None = None
        self.span: Any = None
        self.url: object = None
        self.status = 0
        self.error: BaseException | None = None
        self.error_type: str | None = None
        self.done = False
        self.fault: str | None = None  # resilience: the injected fault, described
        self.start = _perf_counter()

    def fail(self, exc: BaseException) -> None:
        """The transport (or the body read) raised ``exc``: finish with its ``error.type``."""
        if self.done:
            return
        try:
            self.error = exc
            self.error_type = error_type_of(exc)
        except Exception:
            self.error_type = "_OTHER"
        self.finish()

    def finish(self) -> None:
        """The response body was read or closed (or the call failed): record everything."""
        if self.done:
            return
        self.done = True
        duration = _perf_counter() - self.start
        outgoing = self._outgoing
        status = self.status
        error_type = self.error_type
        if error_type is None and status >= 400:
            error_type = str(status)
        metrics = outgoing.metrics
        if metrics is not None:
            try:
                host = self.host
                if host not in outgoing._hosts:  # host_label's own first test, without its call
                    host = outgoing.host_label(host)
                metrics.client_request_finished(
                    self.label,
                    host,
                    self.port,
                    status,
                    duration,
                    error_type,
                )
            except Exception:
                outgoing.internal_error("recording client metrics failed")
        span = self.span
        if span is not None:
            try:
                tracing = outgoing._tracing
                # A light span takes observekit's own (clean) values without the SDK's checks.
                set_attribute = (
                    span._set_clean
                    if tracing is not None and type(span) is tracing.light_span
                    else span.set_attribute
                )
                if status:
                    set_attribute(_STATUS, status)
                if error_type is not None:
                    set_attribute(_ERROR_TYPE, error_type)
                    error = self.error
                    if error is not None and tracing is not None:
                        span.record_exception(error)
                        span.set_status(tracing.status(tracing.error.status_code, _describe(error)))
                    elif tracing is not None:
                        span.set_status(tracing.error)
                span.end()
            except Exception:
                outgoing.internal_error("ending the client span failed")
        logger = outgoing.logger
        if logger.isEnabledFor(_DEBUG):
            try:
                self._log(logger, status, duration, error_type)
            except Exception:
                outgoing.internal_error("writing the client log line failed")

    def _log(
        self, logger: logging.Logger, status: int, duration: float, error_type: str | None
    ) -> None:
        url = log_url(str(self.url))
        fields: dict[str, Any] = {
            _METHOD: self.label,
            _URL_FULL: url,
            _SERVER_ADDRESS: self.host,
            _SERVER_PORT: self.port,
            _STATUS: status,
            "duration_ms": round(duration * 1000.0, 3),
        }
        if error_type is not None:
            fields[_ERROR_TYPE] = error_type
        if self.request_id is not None:
            fields["request_id"] = self.request_id
        if self.fault is not None:
            fields["fault.injected"] = self.fault
        logger.debug("%s %s %s", self.method, url, status if status else error_type, extra=fields)


# -- URLs --------------------------------------------------------------------------------


_PREFIX: Final = re.compile(r"[^:/?#]*://[^/?#]*")
"""An absolute URL's scheme and authority: all that :func:`split_url` reads."""
_MAX_PREFIXES: Final = 1024
_prefixes: dict[str, tuple[str, str, int | None]] = {}


def split_url(url: str) -> tuple[str, str, int | None]:
    """``(scheme, host, port)`` of an absolute URL, without parsing more than the authority.

    Remembered per scheme + authority (a few per service), so a call costs a regex
    match and a dict look-up instead of parsing.
    """
    match = _PREFIX.match(url)
    if match is None:  # no "scheme://" (or an odd one): parsed every time
        return _split(url)
    prefix = match.group()
    found = _prefixes.get(prefix)
    if found is None:
        found = _split(prefix)
        if len(_prefixes) < _MAX_PREFIXES:
            _prefixes[prefix] = found
    return found


def _split(url: str) -> tuple[str, str, int | None]:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "", "", None
    end = len(rest)
    for char in "/?#":
        found = rest.find(char, 0, end)
        if found != -1:
            end = found
    authority = rest[:end].rpartition("@")[2]
    port: int | None = None
    if authority.startswith("["):  # IPv6 literal
        close = authority.find("]")
        host = authority[1:close]
        tail = authority[close + 1 :]
        if tail.startswith(":") and tail[1:].isdigit():
            port = int(tail[1:])
    else:
        host, colon, number = authority.partition(":")
        if colon and number.isdigit():
            port = int(number)
    return scheme.lower(), host.lower(), port


def _userinfo_span(url: str) -> tuple[int, int] | None:
    """(start, end) of the ``user:password@`` part of an absolute URL, if any."""
    start = url.find("://")
    if start == -1:
        return None
    start += 3
    end = len(url)
    for char in "/?#":
        found = url.find(char, start, end)
        if found != -1:
            end = found
    at = url.rfind("@", start, end)
    return None if at == -1 else (start, at + 1)


def clean_url(url: str) -> str:
    """``url.full`` for a span: credentials as ``REDACTED:REDACTED``, signature params redacted."""
    userinfo = _userinfo_span(url) if "@" in url else None
    if userinfo is not None:
        url = f"{url[: userinfo[0]]}REDACTED:REDACTED@{url[userinfo[1] :]}"
    if "?" in url and any(hint in url for hint in _REDACT_HINTS):
        base, _, query = url.partition("?")
        query, hash_, fragment = query.partition("#")
        parts = []
        for part in query.split("&"):
            key, sep, _value = part.partition("=")
            parts.append(f"{key}=REDACTED" if sep and key in _REDACT_PARAMS else part)
        url = f"{base}?{'&'.join(parts)}{hash_}{fragment}"
    return url


def log_url(url: str) -> str:
    """The URL for a log line: no credentials, no fragment, every query value ``REDACTED``."""
    userinfo = _userinfo_span(url) if "@" in url else None
    if userinfo is not None:
        url = url[: userinfo[0]] + url[userinfo[1] :]
    url = url.partition("#")[0]
    base, sep, query = url.partition("?")
    if not sep:
        return base
    keys = [part.partition("=")[0] for part in query.split("&") if part]
    return f"{base}?{'&'.join(f'{key}=REDACTED' for key in keys)}"


# -- errors ------------------------------------------------------------------------------


def error_type_of(exc: BaseException) -> str:
    """A short, stable ``error.type`` for a failed call.

    ``timeout``, ``connection_refused``, ``connection_reset``, ``name_resolution``
    (DNS), ``tls``, ``connection_error`` (any other failure to connect), else the
    exception's qualified class name. httpx, requests and urllib3 wrap the socket
    error; its cause chain is searched.
    """
    seen = 0
    current: BaseException | None = exc
    connect = False
    while current is not None and seen < 8:
        if isinstance(current, TimeoutError) or "Timeout" in type(current).__name__:
            return "timeout"
        if isinstance(current, ConnectionRefusedError):
            return "connection_refused"
        if isinstance(current, ConnectionResetError):
            return "connection_reset"
        if isinstance(current, socket.gaierror):
            return "name_resolution"
        if isinstance(current, ssl.SSLError):
            return "tls"
        if "Connect" in type(current).__name__:
            connect = True
        if "Name or service not known" in str(current) or "nodename nor servname" in str(current):
            return "name_resolution"
        current = current.__cause__ or current.__context__
        seen += 1
    if connect:
        return "connection_error"
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _describe(error: BaseException) -> str:
    try:
        return f"{type(error).__name__}: {error}"
    except Exception:
        return type(error).__name__


def _matches(host: str, patterns: tuple[str, ...]) -> bool:
    for pattern in patterns:
        if pattern == "*" or pattern == host:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False


# -- shared instances --------------------------------------------------------------------

_shared: dict[tuple[Any, ...], Outgoing] = {}
_shared_lock = threading.Lock()
_default_config: list[Config] = []


def outgoing_for(
    config: Config | None = None, *, tracer_provider: Any = None, metrics: Any = _FROM_CONFIG
) -> Outgoing:
    """The shared :class:`Outgoing` for ``config`` (default: ``Config.from_env()``, read once).

    Hooking many clients with an equal Config costs one set-up.
    """
    if config is None:
        with _shared_lock:
            if not _default_config:
                _default_config.append(Config.from_env())
            config = _default_config[0]
    elif not isinstance(config, Config):
        raise TypeError(f"config must be an observekit.Config, got {type(config).__name__}")
    key = (config, tracer_provider, metrics)
    with _shared_lock:
        found = _shared.get(key)
    if found is None:
        found = Outgoing(config, tracer_provider=tracer_provider, metrics=metrics)
        with _shared_lock:
            found = _shared.setdefault(key, found)
    return found


def _reset() -> None:
    """Forget the shared instances and the default config (for tests)."""
    with _shared_lock:
        _shared.clear()
        _default_config.clear()
