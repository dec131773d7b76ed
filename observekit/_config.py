"""One configuration object for every adapter, built in code or from the environment."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._exceptions import ConfigError

__all__ = ["Config"]

_LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
# RFC 9110 token characters: what a header field name may contain.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True, kw_only=True)
class Config:
    """Everything observekit can be told, validated when it is built.

    Build it in code (``Config(service_name="checkout")``) or from the
    environment (``Config.from_env()``); the same values give an equal object.
    An invalid value raises :class:`~observekit.ConfigError` naming the field
    and what it allows.
    """

    service_name: str = "unknown_service"
    """``service.name`` on every log line. Env: ``OTEL_SERVICE_NAME``."""

    service_version: str | None = None
    """``service.version``. ``None``: the git commit of the running checkout, else ``"unknown"``."""

    environment: str | None = None
    """``deployment.environment``. ``None`` writes ``"unknown"``."""

    deployment_id: str | None = None
    """``deployment.id``, written only when set (a release or rollout ID)."""

    request_id_headers: tuple[str, ...] = ("X-Request-ID", "X-Correlation-ID")
    """Incoming headers searched in order; the first valid value becomes the request ID."""

    response_header: str = "X-Request-ID"
    """The response header that echoes the request ID, exactly once per response."""

    request_id_validator: Callable[[str], bool] | None = None
    """Accepts or rejects an incoming ID. ``None``: 1-128 of ``A-Za-z0-9-._:+=/@``."""

    request_id_generator: Callable[[], str] | None = None
    """Makes a new ID. ``None``: 32 random lowercase hex digits (a valid W3C trace ID)."""

    access_log: bool = True
    """Write one access-log line per request (logger ``observekit.access``)."""

    access_log_exclude_paths: tuple[str, ...] = ("/healthz", "/readyz")
    """Exact paths that get no access line."""

    access_log_sample_ratio: float = 1.0
    """Share of successful access lines kept; 5xx and exceptions are always kept."""

    log_request_received: bool = False
    """Also write a DEBUG "request received" line when a request begins."""

    log_level: str = "INFO"
    """Root level set by :func:`observekit.logging.configure`."""

    # -- metrics ------------------------------------------------------------------

    metrics: str = "auto"
    """Metrics backend: ``statsd``, ``otel``, ``memory``, ``none``, or ``auto`` (statsd
    when ``statsd_host`` is set, else none)."""

    statsd_host: str | None = None
    """statsd / DogStatsD daemon host. Env: ``STATSD_HOST``."""

    statsd_port: int = 8125
    """statsd daemon UDP port. Env: ``STATSD_PORT``."""

    statsd_prefix: str = ""
    """Prefix of every statsd metric name (``myapp`` gives ``myapp.http.server...``)."""

    statsd_tags: str = "dogstatsd"
    """``dogstatsd``: labels as ``|#key:value`` tags; ``none``: labels folded into names."""

    statsd_max_packet: int = 1432
    """Largest UDP payload sent, in bytes (1432 fits any Ethernet path with room to spare)."""

    statsd_dns_ttl: float = 60.0
    """Seconds before the statsd host name is resolved again (a changed IP is picked up)."""

    statsd_flush_interval: float = 0.05
    """Under load, seconds of datagrams packed together before the next request sends them
    (``0``: send each at once); a full packet goes at once, and when traffic stops the rest
    is sent within about half a second. A request after a quiet spell is sent at once."""

    max_routes: int = 200
    """Distinct route labels kept per process; others are counted as ``overflow``."""

    route_resolver: Callable[[Any], str | None] | None = None
    """Called with the :class:`RequestInfo` when no framework reported a route template;
    returns a route label or ``None`` (``unmatched``)."""

    # -- traces ---------------------------------------------------------------------

    traces_exporter: str = "none"
    """``otlp``, ``console`` or ``none``. From the environment: ``OTEL_TRACES_EXPORTER``,
    else ``otlp`` when an OTLP endpoint is set."""

    otlp_endpoint: str | None = None
    """OTLP collector base URL (``http://collector:4318``), or a gRPC target."""

    otlp_traces_endpoint: str | None = None
    """The traces URL itself (``http://collector:4318/custom/traces``), used as it is,
    without ``/v1/traces`` added; wins over ``otlp_endpoint`` for traces, as the OTLP
    exporter spec's signal-specific endpoint does."""

    otlp_protocol: str = "http/protobuf"
    """``http/protobuf`` or ``grpc``."""

    traces_sampler: str = "parentbased_always_on"
    """An ``OTEL_TRACES_SAMPLER`` name."""

    traces_sampler_arg: float | None = None
    """The ratio for the ``*traceidratio`` samplers (0.0 to 1.0)."""

    propagators: tuple[str, ...] = ("tracecontext", "baggage")
    """``OTEL_PROPAGATORS`` names used for incoming and outgoing context."""

    resource_attributes: tuple[tuple[str, str], ...] = ()
    """Extra OpenTelemetry resource attributes (from ``OTEL_RESOURCE_ATTRIBUTES``)."""

    shutdown_timeout: float = 5.0
    """Seconds that flushing traces and metrics at exit may take, collector or not."""

    # -- outgoing calls -------------------------------------------------------------

    outgoing_request_id_header: str = "X-Request-ID"
    """The header that carries the request ID on outgoing httpx/requests calls."""

    outgoing_allowed_hosts: tuple[str, ...] = ()
    """Hosts that get the request ID and trace headers (``api.example.com``,
    ``*.internal``, ``10.0.0.7``); empty: every host not denied."""

    outgoing_denied_hosts: tuple[str, ...] = ()
    """Hosts that never get them, even when allowed (same patterns)."""

    outgoing_generate_request_id: bool = False
    """Outside any request or task, give each outgoing call a new request ID."""

    outgoing_max_hosts: int = 100
    """Distinct ``server.address`` labels on client metrics; others are ``overflow``."""

    # -- resilience ---------------------------------------------------------------------

    health_path: str | None = "/healthz"
    """Liveness endpoint answered by the middleware (``None``: off); touches no dependency."""

    readiness_path: str | None = "/readyz"
    """Readiness endpoint answered by the middleware (``None``: off); runs the checks."""

    readiness_checks: tuple[Any, ...] = ()
    """Code only: callables (sync or async) or :class:`observekit.resilience.Check` objects."""

    readiness_timeout: float = 1.0
    """Seconds each readiness check may take unless its Check says otherwise."""

    max_in_flight: int | None = None
    """Requests in flight per process before the excess is answered 503 (``None``: no limit)."""

    shed_queue_size: int = 0
    """Requests that may wait for a slot when ``max_in_flight`` is reached."""

    shed_queue_wait: float = 0.0
    """Seconds a queued request waits for a slot before it is answered 503."""

    shed_retry_after: int = 1
    """``Retry-After`` seconds on a shed request's 503."""

    rate_limit: str | None = None
    """Global rate limit per key, such as ``"100/minute"`` or ``"20/10s"`` (``None``: off)."""

    rate_limit_burst: int | None = None
    """Requests a key may send at once; ``None``: the limit's count."""

    rate_limit_routes: tuple[tuple[str, str], ...] = ()
    """Per-path limits, ``(glob, spec)`` pairs, first match wins, before the global one.
    Env: ``/api/*=10/second,/login=5/minute``."""

    rate_limit_key: str | Callable[[Any], str | None] = "client"
    """Who is limited: ``client`` (address), ``header:<Name>`` (falls back to the address
    when absent), or a callable taking the RequestInfo (``None``: not limited)."""

    trusted_proxies: int = 0
    """Proxies in front whose ``X-Forwarded-For`` entries are believed (never more)."""

    rate_limit_backend: str = "memory"
    """``memory`` (per process) or ``redis`` (shared by every instance)."""

    rate_limit_max_keys: int = 100_000
    """Keys the memory backend keeps (least recently used are evicted)."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    """The Redis for shared rate limits."""

    redis_connect_timeout: float = 0.1
    """Seconds to connect to Redis."""

    redis_timeout: float = 0.1
    """Seconds a Redis command may take."""

    rate_limit_fail_mode: str = "open"
    """When Redis cannot decide: ``open`` (let the request through) or ``closed`` (503)."""

    faults_enabled: bool = False
    """Fault injection is off unless this is True."""

    fault_rules: tuple[Any, ...] = ()
    """:class:`observekit.resilience.FaultRule` objects. Env: ``OBSERVEKIT_FAULT_RULES``
    (see :func:`observekit.resilience.parse_rules`)."""

    faults_kill_file: str | None = None
    """While this file exists no fault is injected (looked at once a second)."""

    # -- outgoing resilience ------------------------------------------------------------

    breakers_enabled: bool = False
    """A circuit breaker per host:port on calls through the httpx/requests hooks."""

    breaker_failure_threshold: int = 5
    """Consecutive failures (transport errors, timeouts, 5xx) that open a breaker."""

    breaker_failure_ratio: float | None = None
    """Open instead when this share of calls failed within ``breaker_window`` seconds."""

    breaker_window: float = 10.0
    """Seconds of calls the failure ratio looks at (at least 10 calls in it)."""

    breaker_open_seconds: float = 30.0
    """Seconds an open breaker fails fast before admitting probe calls."""

    breaker_half_open_probes: int = 1
    """Probe calls a half-open breaker admits; all succeeding closes it."""

    breaker_hosts: tuple[str, ...] = ()
    """Hosts that get a breaker (names, ``*.domain``, ``*``); empty: every host."""

    def __post_init__(self) -> None:
        _require_str("service_name", self.service_name, allow_empty=False)
        for name in ("service_version", "environment", "deployment_id"):
            value = getattr(self, name)
            if value is not None:
                _require_str(name, value, allow_empty=False)
        headers = _as_tuple("request_id_headers", self.request_id_headers)
        for header in headers:
            _require_header_name("request_id_headers", header)
        object.__setattr__(self, "request_id_headers", headers)
        _require_header_name("response_header", self.response_header)
        for name in ("request_id_validator", "request_id_generator"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise ConfigError(name, f"{name} must be a callable or None, got {value!r}")
        for name in ("access_log", "log_request_received"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    name, f"{name} must be True or False, got {getattr(self, name)!r}"
                )
        paths = _as_tuple("access_log_exclude_paths", self.access_log_exclude_paths)
        for path in paths:
            if not path.startswith("/"):
                raise ConfigError(
                    "access_log_exclude_paths",
                    f"access_log_exclude_paths entries must start with '/', got {path!r}",
                )
        object.__setattr__(self, "access_log_exclude_paths", paths)
        ratio = self.access_log_sample_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0.0 <= ratio <= 1.0:
            raise ConfigError(
                "access_log_sample_ratio",
                f"access_log_sample_ratio must be a number from 0.0 to 1.0, got {ratio!r}",
            )
        object.__setattr__(self, "access_log_sample_ratio", float(ratio))
        level = self.log_level.upper() if isinstance(self.log_level, str) else self.log_level
        if level not in _LOG_LEVELS:
            raise ConfigError(
                "log_level",
                f"log_level must be one of {', '.join(_LOG_LEVELS)}, got {self.log_level!r}",
            )
        object.__setattr__(self, "log_level", level)
        _require_choice("metrics", self.metrics, _METRICS)
        if self.statsd_host is not None:
            _require_str("statsd_host", self.statsd_host, allow_empty=False)
        _require_int("statsd_port", self.statsd_port, 1, 65535)
        if not isinstance(self.statsd_prefix, str) or any(
            c in self.statsd_prefix for c in ":|@#\n "
        ):
            raise ConfigError(
                "statsd_prefix",
                f"statsd_prefix must be a string without ':|@# ' or newlines, "
                f"got {self.statsd_prefix!r}",
            )
        _require_choice("statsd_tags", self.statsd_tags, ("dogstatsd", "none"))
        _require_int("statsd_max_packet", self.statsd_max_packet, 64, 65507)
        _require_number("statsd_dns_ttl", self.statsd_dns_ttl, 0.0, None)
        _require_number("statsd_flush_interval", self.statsd_flush_interval, 0.0, 10.0)
        _require_int("max_routes", self.max_routes, 1, 100_000)
        if self.route_resolver is not None and not callable(self.route_resolver):
            raise ConfigError(
                "route_resolver",
                f"route_resolver must be a callable or None, got {self.route_resolver!r}",
            )
        _require_choice("traces_exporter", self.traces_exporter, _EXPORTERS)
        if self.otlp_endpoint is not None:
            _require_str("otlp_endpoint", self.otlp_endpoint, allow_empty=False)
        if self.otlp_traces_endpoint is not None:
            _require_str("otlp_traces_endpoint", self.otlp_traces_endpoint, allow_empty=False)
        _require_choice("otlp_protocol", self.otlp_protocol, _PROTOCOLS)
        _require_choice("traces_sampler", self.traces_sampler, _SAMPLERS)
        if self.traces_sampler_arg is not None:
            _require_number("traces_sampler_arg", self.traces_sampler_arg, 0.0, 1.0)
        propagators = _as_tuple("propagators", self.propagators)
        for name in propagators:
            _require_choice("propagators", name, _PROPAGATORS)
        object.__setattr__(self, "propagators", propagators)
        attributes = tuple(self.resource_attributes)
        if not all(
            isinstance(kv, tuple) and len(kv) == 2 and all(isinstance(x, str) for x in kv)
            for kv in attributes
        ):
            raise ConfigError(
                "resource_attributes",
                "resource_attributes must be (key, value) pairs of strings, "
                f"got {self.resource_attributes!r}",
            )
        object.__setattr__(self, "resource_attributes", attributes)
        _require_number("shutdown_timeout", self.shutdown_timeout, 0.0, 300.0)
        _require_header_name("outgoing_request_id_header", self.outgoing_request_id_header)
        for name in ("outgoing_allowed_hosts", "outgoing_denied_hosts"):
            hosts = tuple(_host_pattern(name, h) for h in _as_tuple(name, getattr(self, name)))
            object.__setattr__(self, name, hosts)
        if not isinstance(self.outgoing_generate_request_id, bool):
            raise ConfigError(
                "outgoing_generate_request_id",
                "outgoing_generate_request_id must be True or False, "
                f"got {self.outgoing_generate_request_id!r}",
            )
        _require_int("outgoing_max_hosts", self.outgoing_max_hosts, 1, 100_000)
        _check_resilience(self)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Build a Config from environment variables; ``overrides`` win over them.

        Reads ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES`` (``service.name``,
        ``service.version``, ``deployment.environment``) and ``OBSERVEKIT_*``;
        see the README's configuration table. ``environ`` defaults to ``os.environ``.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        resource = _parse_resource_attributes(env.get("OTEL_RESOURCE_ATTRIBUTES", ""))
        if "service.name" in resource:
            values["service_name"] = resource["service.name"]
        if "service.version" in resource:
            values["service_version"] = resource["service.version"]
        for key in ("deployment.environment.name", "deployment.environment"):
            if key in resource:
                values["environment"] = resource[key]
        known = {"service.name", "service.version", "deployment.environment"}
        extra = tuple((k, v) for k, v in resource.items() if k not in known)
        if extra:
            values["resource_attributes"] = extra
        # OpenTelemetry's own default exporter is otlp: an endpoint alone turns traces on.
        for endpoint_var in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
            if env.get(endpoint_var):
                values["traces_exporter"] = "otlp"
        if env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"):
            values["otlp_protocol"] = env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"]
        for f in dataclasses.fields(cls):
            var = _ENV_NAMES.get(f.name)
            if var is None or var not in env:
                continue
            raw = env[var]
            try:
                values[f.name] = _PARSERS.get(f.name, _parse_str)(raw)
            except ValueError as exc:
                raise ConfigError(f.name, f"{var}={raw!r} is invalid: {exc}") from None
        values.update(overrides)
        try:
            return cls(**values)
        except ConfigError as exc:
            var = _ENV_NAMES.get(exc.field)
            if exc.field in overrides or var is None or var not in env:
                raise
            raise ConfigError(exc.field, f"{var}={env[var]!r} is invalid: {exc}") from None

    def resolved_service_version(self) -> str:
        """The version written as ``service.version``: set, or the git commit, or ``"unknown"``."""
        if self.service_version is not None:
            return self.service_version
        return _git_commit(Path.cwd()) or "unknown"


_ENV_NAMES = {
    "service_name": "OTEL_SERVICE_NAME",
    "service_version": "OBSERVEKIT_SERVICE_VERSION",
    "environment": "OBSERVEKIT_ENVIRONMENT",
    "deployment_id": "OBSERVEKIT_DEPLOYMENT_ID",
    "request_id_headers": "OBSERVEKIT_REQUEST_ID_HEADERS",
    "response_header": "OBSERVEKIT_RESPONSE_HEADER",
    "access_log": "OBSERVEKIT_ACCESS_LOG",
    "access_log_exclude_paths": "OBSERVEKIT_ACCESS_LOG_EXCLUDE_PATHS",
    "access_log_sample_ratio": "OBSERVEKIT_ACCESS_LOG_SAMPLE_RATIO",
    "log_request_received": "OBSERVEKIT_LOG_REQUEST_RECEIVED",
    "log_level": "OBSERVEKIT_LOG_LEVEL",
    "metrics": "OBSERVEKIT_METRICS",
    "statsd_host": "STATSD_HOST",
    "statsd_port": "STATSD_PORT",
    "statsd_prefix": "STATSD_PREFIX",
    "statsd_tags": "OBSERVEKIT_STATSD_TAGS",
    "statsd_max_packet": "OBSERVEKIT_STATSD_MAX_PACKET",
    "statsd_dns_ttl": "OBSERVEKIT_STATSD_DNS_TTL",
    "statsd_flush_interval": "OBSERVEKIT_STATSD_FLUSH_INTERVAL",
    "max_routes": "OBSERVEKIT_MAX_ROUTES",
    "traces_exporter": "OTEL_TRACES_EXPORTER",
    "otlp_endpoint": "OTEL_EXPORTER_OTLP_ENDPOINT",
    "otlp_traces_endpoint": "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "otlp_protocol": "OTEL_EXPORTER_OTLP_PROTOCOL",
    "traces_sampler": "OTEL_TRACES_SAMPLER",
    "traces_sampler_arg": "OTEL_TRACES_SAMPLER_ARG",
    "propagators": "OTEL_PROPAGATORS",
    "shutdown_timeout": "OBSERVEKIT_SHUTDOWN_TIMEOUT",
    "outgoing_request_id_header": "OBSERVEKIT_OUTGOING_REQUEST_ID_HEADER",
    "outgoing_allowed_hosts": "OBSERVEKIT_OUTGOING_ALLOWED_HOSTS",
    "outgoing_denied_hosts": "OBSERVEKIT_OUTGOING_DENIED_HOSTS",
    "outgoing_generate_request_id": "OBSERVEKIT_OUTGOING_GENERATE_REQUEST_ID",
    "outgoing_max_hosts": "OBSERVEKIT_OUTGOING_MAX_HOSTS",
    "health_path": "OBSERVEKIT_HEALTH_PATH",
    "readiness_path": "OBSERVEKIT_READINESS_PATH",
    "readiness_timeout": "OBSERVEKIT_READINESS_TIMEOUT",
    "max_in_flight": "OBSERVEKIT_MAX_IN_FLIGHT",
    "shed_queue_size": "OBSERVEKIT_SHED_QUEUE_SIZE",
    "shed_queue_wait": "OBSERVEKIT_SHED_QUEUE_WAIT",
    "shed_retry_after": "OBSERVEKIT_SHED_RETRY_AFTER",
    "rate_limit": "OBSERVEKIT_RATE_LIMIT",
    "rate_limit_burst": "OBSERVEKIT_RATE_LIMIT_BURST",
    "rate_limit_routes": "OBSERVEKIT_RATE_LIMIT_ROUTES",
    "rate_limit_key": "OBSERVEKIT_RATE_LIMIT_KEY",
    "trusted_proxies": "OBSERVEKIT_TRUSTED_PROXIES",
    "rate_limit_backend": "OBSERVEKIT_RATE_LIMIT_BACKEND",
    "rate_limit_max_keys": "OBSERVEKIT_RATE_LIMIT_MAX_KEYS",
    "redis_url": "OBSERVEKIT_REDIS_URL",
    "redis_connect_timeout": "OBSERVEKIT_REDIS_CONNECT_TIMEOUT",
    "redis_timeout": "OBSERVEKIT_REDIS_TIMEOUT",
    "rate_limit_fail_mode": "OBSERVEKIT_RATE_LIMIT_FAIL_MODE",
    "faults_enabled": "OBSERVEKIT_FAULTS_ENABLED",
    "fault_rules": "OBSERVEKIT_FAULT_RULES",
    "faults_kill_file": "OBSERVEKIT_FAULTS_KILL_FILE",
    "breakers_enabled": "OBSERVEKIT_BREAKERS_ENABLED",
    "breaker_failure_threshold": "OBSERVEKIT_BREAKER_FAILURE_THRESHOLD",
    "breaker_failure_ratio": "OBSERVEKIT_BREAKER_FAILURE_RATIO",
    "breaker_window": "OBSERVEKIT_BREAKER_WINDOW",
    "breaker_open_seconds": "OBSERVEKIT_BREAKER_OPEN_SECONDS",
    "breaker_half_open_probes": "OBSERVEKIT_BREAKER_HALF_OPEN_PROBES",
    "breaker_hosts": "OBSERVEKIT_BREAKER_HOSTS",
}
"""Field -> environment variable. Callables (validator, generator) have none."""


def _parse_str(raw: str) -> str:
    return raw


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("allowed values are 1/true/yes/on or 0/false/no/off")


def _parse_list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _parse_float(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError("allowed values are numbers from 0.0 to 1.0") from None


def _parse_int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("allowed values are whole numbers") from None


def _parse_number(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError("allowed values are numbers") from None


_PARSERS: dict[str, Callable[[str], Any]] = {
    "statsd_port": _parse_int,
    "statsd_max_packet": _parse_int,
    "statsd_dns_ttl": _parse_number,
    "statsd_flush_interval": _parse_number,
    "max_routes": _parse_int,
    "traces_sampler_arg": _parse_number,
    "propagators": _parse_list,
    "shutdown_timeout": _parse_number,
    "request_id_headers": _parse_list,
    "access_log": _parse_bool,
    "access_log_exclude_paths": _parse_list,
    "access_log_sample_ratio": _parse_float,
    "metrics": str.lower,
    "statsd_tags": str.lower,
    "traces_exporter": str.lower,
    "traces_sampler": str.lower,
    "log_request_received": _parse_bool,
    "outgoing_allowed_hosts": _parse_list,
    "outgoing_denied_hosts": _parse_list,
    "outgoing_generate_request_id": _parse_bool,
    "outgoing_max_hosts": _parse_int,
    "health_path": lambda raw: raw.strip() or None,
    "readiness_path": lambda raw: raw.strip() or None,
    "readiness_timeout": _parse_number,
    "max_in_flight": lambda raw: _parse_int(raw) if raw.strip() else None,
    "shed_queue_size": _parse_int,
    "shed_queue_wait": _parse_number,
    "shed_retry_after": _parse_int,
    "rate_limit": lambda raw: raw.strip() or None,
    "rate_limit_burst": lambda raw: _parse_int(raw) if raw.strip() else None,
    "rate_limit_routes": lambda raw: _parse_pairs(raw),
    "trusted_proxies": _parse_int,
    "rate_limit_backend": str.lower,
    "rate_limit_max_keys": _parse_int,
    "redis_connect_timeout": _parse_number,
    "redis_timeout": _parse_number,
    "rate_limit_fail_mode": str.lower,
    "faults_enabled": _parse_bool,
    "fault_rules": lambda raw: _parse_fault_rules(raw),
    "faults_kill_file": lambda raw: raw.strip() or None,
    "breakers_enabled": _parse_bool,
    "breaker_failure_threshold": _parse_int,
    "breaker_failure_ratio": lambda raw: _parse_number(raw) if raw.strip() else None,
    "breaker_window": _parse_number,
    "breaker_open_seconds": _parse_number,
    "breaker_half_open_probes": _parse_int,
    "breaker_hosts": _parse_list,
}


def _parse_pairs(raw: str) -> tuple[tuple[str, str], ...]:
    """``glob=spec,glob=spec`` (a spec holds no ``=`` or ``,``)."""
    pairs = []
    for item in _parse_list(raw):
        glob, sep, spec = item.rpartition("=")
        if not sep or not glob.strip():
            raise ValueError("expected path=limit pairs such as /api/*=10/second")
        pairs.append((glob.strip(), spec.strip()))
    return tuple(pairs)


def _parse_fault_rules(raw: str) -> tuple[Any, ...]:
    from .resilience.faults import parse_rules

    return parse_rules(raw)


def _check_resilience(config: Config) -> None:
    """Validate the ``# -- resilience --`` fields (normalising tuples in place)."""
    health = [p for p in (config.health_path, config.readiness_path) if p is not None]
    for name, path in (
        ("health_path", config.health_path),
        ("readiness_path", config.readiness_path),
    ):
        if path is not None and (not isinstance(path, str) or not path.startswith("/")):
            raise ConfigError(name, f"{name} must start with '/' or be None, got {path!r}")
    if len(set(health)) != len(health):
        raise ConfigError("readiness_path", "readiness_path must differ from health_path")
    checks = _as_any_tuple("readiness_checks", config.readiness_checks)
    if checks:  # resilience modules are imported only when a feature needs them
        from .resilience.health import as_check

        try:
            names = [as_check(c, 1.0).name for c in checks]
        except (TypeError, ValueError) as exc:
            raise ConfigError("readiness_checks", str(exc)) from None
        if len(set(names)) != len(names):
            raise ConfigError(
                "readiness_checks", f"readiness check names must be unique, got {names}"
            )
    object.__setattr__(config, "readiness_checks", checks)
    _require_number("readiness_timeout", config.readiness_timeout, 0.001, 60.0)
    if config.max_in_flight is not None:
        _require_int("max_in_flight", config.max_in_flight, 1, 1_000_000)
    _require_int("shed_queue_size", config.shed_queue_size, 0, 1_000_000)
    _require_number("shed_queue_wait", config.shed_queue_wait, 0.0, 60.0)
    _require_int("shed_retry_after", config.shed_retry_after, 0, 86400)
    routes = _as_any_tuple("rate_limit_routes", config.rate_limit_routes)
    specs = [("rate_limit", config.rate_limit)] if config.rate_limit is not None else []
    for pair in routes:
        if not (
            isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(x, str) for x in pair)
        ):
            raise ConfigError(
                "rate_limit_routes", f"rate_limit_routes must be (glob, spec) pairs, got {pair!r}"
            )
        specs.append(("rate_limit_routes", pair[1]))
    object.__setattr__(config, "rate_limit_routes", routes)
    for field, spec in specs:
        from .resilience.ratelimit import RateLimit

        try:
            RateLimit.parse(spec)
        except ValueError as exc:
            raise ConfigError(field, str(exc)) from None
    if config.rate_limit_burst is not None:
        _require_int("rate_limit_burst", config.rate_limit_burst, 1, 10_000_000)
    key = config.rate_limit_key
    if not callable(key) and not (
        key == "client"
        or (
            isinstance(key, str)
            and key.startswith("header:")
            and _HEADER_NAME.fullmatch(key[7:].strip())
        )
    ):
        raise ConfigError(
            "rate_limit_key",
            f"rate_limit_key must be 'client', 'header:<Name>' or a callable, got {key!r}",
        )
    _require_int("trusted_proxies", config.trusted_proxies, 0, 32)
    _require_choice("rate_limit_backend", config.rate_limit_backend, ("memory", "redis"))
    _require_int("rate_limit_max_keys", config.rate_limit_max_keys, 1, 100_000_000)
    _require_str("redis_url", config.redis_url, allow_empty=False)
    _require_number("redis_connect_timeout", config.redis_connect_timeout, 0.001, 60.0)
    _require_number("redis_timeout", config.redis_timeout, 0.001, 60.0)
    _require_choice("rate_limit_fail_mode", config.rate_limit_fail_mode, ("open", "closed"))
    if not isinstance(config.faults_enabled, bool):
        raise ConfigError(
            "faults_enabled", f"faults_enabled must be True or False, got {config.faults_enabled!r}"
        )
    rules = _as_any_tuple("fault_rules", config.fault_rules)
    for rule in rules:
        from .resilience.faults import FaultRule

        if not isinstance(rule, FaultRule):
            raise ConfigError(
                "fault_rules",
                f"fault_rules must be observekit.resilience.FaultRule objects, got {rule!r}",
            )
    object.__setattr__(config, "fault_rules", rules)
    if config.faults_kill_file is not None:
        _require_str("faults_kill_file", config.faults_kill_file, allow_empty=False)
    _check_outgoing_resilience(config)


def _check_outgoing_resilience(config: Config) -> None:
    """Validate the ``# -- outgoing resilience --`` fields."""
    if not isinstance(config.breakers_enabled, bool):
        raise ConfigError(
            "breakers_enabled",
            f"breakers_enabled must be True or False, got {config.breakers_enabled!r}",
        )
    _require_int("breaker_failure_threshold", config.breaker_failure_threshold, 1, 1_000_000)
    if config.breaker_failure_ratio is not None:
        _require_number("breaker_failure_ratio", config.breaker_failure_ratio, 0.001, 1.0)
    _require_number("breaker_window", config.breaker_window, 0.01, 86400.0)
    _require_number("breaker_open_seconds", config.breaker_open_seconds, 0.0, 86400.0)
    _require_int("breaker_half_open_probes", config.breaker_half_open_probes, 1, 10_000)
    hosts = _as_tuple("breaker_hosts", config.breaker_hosts)
    object.__setattr__(config, "breaker_hosts", tuple(h.lower() for h in hosts))


def _as_any_tuple(name: str, value: object) -> tuple[Any, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ConfigError(name, f"{name} must be a sequence, got {value!r}")
    return tuple(value)


def _parse_resource_attributes(raw: str) -> dict[str, str]:
    """``OTEL_RESOURCE_ATTRIBUTES``: comma-separated ``key=value``, values percent-encoded."""
    from urllib.parse import unquote

    out: dict[str, str] = {}
    for item in raw.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            out[key.strip()] = unquote(value.strip())
    return out


_METRICS = ("auto", "statsd", "otel", "memory", "none")
_EXPORTERS = ("otlp", "console", "none")
_PROTOCOLS = ("http/protobuf", "grpc")
_SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
_PROPAGATORS = ("tracecontext", "baggage", "b3", "b3multi", "jaeger", "xray", "none")


def _require_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(name, f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def _require_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(
            name, f"{name} must be a whole number from {low} to {high}, got {value!r}"
        )


def _require_number(name: str, value: object, low: float, high: float | None) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok and (value < low or (high is not None and value > high)):  # type: ignore[operator]
        ok = False
    if not ok:
        upper = f" to {high}" if high is not None else " or more"
        raise ConfigError(name, f"{name} must be a number from {low}{upper}, got {value!r}")


def _require_str(name: str, value: object, *, allow_empty: bool) -> None:
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise ConfigError(name, f"{name} must be a non-empty string, got {value!r}")


def _require_header_name(name: str, value: object) -> None:
    if not isinstance(value, str) or not _HEADER_NAME.fullmatch(value):
        raise ConfigError(
            name,
            f"{name} must be HTTP header names (letters, digits and !#$%&'*+-.^_`|~), "
            f"got {value!r}",
        )


_HOST_PATTERN = re.compile(r"(\*|(\*\.)?[A-Za-z0-9_\-.:]+)")


def _host_pattern(name: str, value: str) -> str:
    """A host name, IP address, ``*.suffix`` or ``*``; lowercase, IPv6 brackets dropped."""
    host = value.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not _HOST_PATTERN.fullmatch(host) or host.strip(".") == "" or host == "*.":
        raise ConfigError(
            name,
            f"{name} entries must be host names or IP addresses, optionally '*.' + a domain "
            f"(no scheme, port or path), got {value!r}",
        )
    return host


def _as_tuple(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ConfigError(name, f"{name} must be a sequence of strings, got {value!r}")
    items = tuple(value)
    if not all(isinstance(item, str) for item in items):
        raise ConfigError(name, f"{name} must be a sequence of strings, got {value!r}")
    return items


_git_cache: dict[Path, str | None] = {}


def _git_commit(start: Path) -> str | None:
    """The commit checked out at or above ``start``, read from ``.git`` without running git."""
    if start in _git_cache:
        return _git_cache[start]
    commit = None
    for directory in (start, *start.parents):
        git = directory / ".git"
        try:
            if git.is_file():  # a worktree or submodule: "gitdir: <path>"
                target = git.read_text().partition("gitdir:")[2].strip()
                git = (directory / target).resolve()
            if not git.is_dir():
                continue
            head = (git / "HEAD").read_text().strip()
            if head.startswith("ref:"):
                ref = head[4:].strip()
                common = git
                if (git / "commondir").is_file():
                    common = (git / (git / "commondir").read_text().strip()).resolve()
                for base in (git, common):
                    if (base / ref).is_file():
                        commit = (base / ref).read_text().strip()
                        break
                else:
                    packed = common / "packed-refs"
                    if packed.is_file():
                        for line in packed.read_text().splitlines():
                            sha, _, name = line.partition(" ")
                            if name == ref:
                                commit = sha
                                break
            else:
                commit = head
        except OSError:
            commit = None
        break
    if commit is not None and not re.fullmatch(r"[0-9a-f]{40}([0-9a-f]{24})?", commit):
        commit = None
    result = commit[:12] if commit else None
    _git_cache[start] = result
    return result
