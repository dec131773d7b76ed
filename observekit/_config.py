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
        _require_int("max_routes", self.max_routes, 1, 100_000)
        if self.route_resolver is not None and not callable(self.route_resolver):
            raise ConfigError(
                "route_resolver",
                f"route_resolver must be a callable or None, got {self.route_resolver!r}",
            )
        _require_choice("traces_exporter", self.traces_exporter, _EXPORTERS)
        if self.otlp_endpoint is not None:
            _require_str("otlp_endpoint", self.otlp_endpoint, allow_empty=False)
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
                values["otlp_endpoint"] = env[endpoint_var]
                values["traces_exporter"] = "otlp"
                break
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
    "max_routes": "OBSERVEKIT_MAX_ROUTES",
    "traces_exporter": "OTEL_TRACES_EXPORTER",
    "otlp_endpoint": "OTEL_EXPORTER_OTLP_ENDPOINT",
    "otlp_protocol": "OTEL_EXPORTER_OTLP_PROTOCOL",
    "traces_sampler": "OTEL_TRACES_SAMPLER",
    "traces_sampler_arg": "OTEL_TRACES_SAMPLER_ARG",
    "propagators": "OTEL_PROPAGATORS",
    "shutdown_timeout": "OBSERVEKIT_SHUTDOWN_TIMEOUT",
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
}


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
