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


_PARSERS: dict[str, Callable[[str], Any]] = {
    "request_id_headers": _parse_list,
    "access_log": _parse_bool,
    "access_log_exclude_paths": _parse_list,
    "access_log_sample_ratio": _parse_float,
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
