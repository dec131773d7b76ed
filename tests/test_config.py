"""Config: validation at construction, and the environment giving the same result as code."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

import observekit
from observekit import Config, ConfigError
from observekit import _config as config_module
from observekit.asgi import ObservabilityMiddleware as AsgiMiddleware
from observekit.wsgi import ObservabilityMiddleware as WsgiMiddleware


def test_defaults() -> None:
    """A default Config reads X-Request-ID then X-Correlation-ID and writes access lines."""
    config = Config()
    assert config.request_id_headers == ("X-Request-ID", "X-Correlation-ID")
    assert config.response_header == "X-Request-ID"
    assert config.access_log is True
    assert config.access_log_sample_ratio == 1.0
    assert config.service_name == "unknown_service"


@pytest.mark.parametrize(
    ("kwargs", "field", "allowed"),
    [
        pytest.param(
            {"access_log_sample_ratio": 2}, "access_log_sample_ratio", "0.0 to 1.0", id="ratio-high"
        ),
        pytest.param(
            {"access_log_sample_ratio": "x"},
            "access_log_sample_ratio",
            "0.0 to 1.0",
            id="ratio-str",
        ),
        pytest.param(
            {"log_level": "LOUD"}, "log_level", "CRITICAL, ERROR, WARNING, INFO, DEBUG", id="level"
        ),
        pytest.param(
            {"request_id_headers": "X-Request-ID"},
            "request_id_headers",
            "sequence of strings",
            id="headers-str",
        ),
        pytest.param(
            {"request_id_headers": ["X Request"]},
            "request_id_headers",
            "HTTP header names",
            id="header-space",
        ),
        pytest.param(
            {"response_header": ""}, "response_header", "HTTP header names", id="response-empty"
        ),
        pytest.param({"service_name": ""}, "service_name", "non-empty string", id="service-empty"),
        pytest.param({"access_log": "yes"}, "access_log", "True or False", id="access-str"),
        pytest.param(
            {"request_id_validator": 3}, "request_id_validator", "callable", id="validator"
        ),
        pytest.param(
            {"request_id_generator": "uuid"}, "request_id_generator", "callable", id="generator"
        ),
        pytest.param(
            {"access_log_exclude_paths": ["healthz"]},
            "access_log_exclude_paths",
            "start with '/'",
            id="path",
        ),
    ],
)
def test_bad_value_names_field_and_allowed_values(
    kwargs: dict[str, Any], field: str, allowed: str
) -> None:
    """A bad value fails at construction, naming the field and what it allows."""
    with pytest.raises(ConfigError) as info:
        Config(**kwargs)
    assert info.value.field == field
    assert field in str(info.value)
    assert allowed in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("middleware", [WsgiMiddleware, AsgiMiddleware], ids=["wsgi", "asgi"])
def test_middleware_rejects_non_config(middleware: Any) -> None:
    """Passing something that is not a Config fails when the middleware is built."""
    with pytest.raises(TypeError, match=r"observekit\.Config"):
        middleware(lambda *a: None, config={"service_name": "x"})


def test_keyword_only() -> None:
    """Config takes keyword arguments only, so call sites stay readable."""
    with pytest.raises(TypeError):
        Config("svc")  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "kwargs"),
    [
        pytest.param({"OTEL_SERVICE_NAME": "shop"}, {"service_name": "shop"}, id="service"),
        pytest.param(
            {
                "OBSERVEKIT_SERVICE_VERSION": "1.4",
                "OBSERVEKIT_ENVIRONMENT": "prod",
                "OBSERVEKIT_DEPLOYMENT_ID": "d-7",
            },
            {"service_version": "1.4", "environment": "prod", "deployment_id": "d-7"},
            id="version-env",
        ),
        pytest.param(
            {
                "OBSERVEKIT_REQUEST_ID_HEADERS": "X-Trace, X-Amzn-Trace-Id",
                "OBSERVEKIT_RESPONSE_HEADER": "X-Trace",
            },
            {"request_id_headers": ("X-Trace", "X-Amzn-Trace-Id"), "response_header": "X-Trace"},
            id="headers",
        ),
        pytest.param(
            {
                "OBSERVEKIT_ACCESS_LOG": "off",
                "OBSERVEKIT_ACCESS_LOG_EXCLUDE_PATHS": "/ping,/metrics",
                "OBSERVEKIT_ACCESS_LOG_SAMPLE_RATIO": "0.25",
                "OBSERVEKIT_LOG_REQUEST_RECEIVED": "yes",
                "OBSERVEKIT_LOG_LEVEL": "debug",
            },
            {
                "access_log": False,
                "access_log_exclude_paths": ("/ping", "/metrics"),
                "access_log_sample_ratio": 0.25,
                "log_request_received": True,
                "log_level": "DEBUG",
            },
            id="access",
        ),
        pytest.param(
            {
                "OTEL_RESOURCE_ATTRIBUTES": "service.name=cart,service.version=9.1,deployment.environment=stage%20eu"
            },
            {"service_name": "cart", "service_version": "9.1", "environment": "stage eu"},
            id="otel-resource",
        ),
    ],
)
def test_env_equals_code(env: dict[str, str], kwargs: dict[str, Any]) -> None:
    """The same values from the environment or from code give an equal Config."""
    assert Config.from_env(env) == Config(**kwargs)


def test_otel_service_name_beats_resource_attribute() -> None:
    """OTEL_SERVICE_NAME wins over service.name in OTEL_RESOURCE_ATTRIBUTES, as in OpenTelemetry."""
    env = {"OTEL_SERVICE_NAME": "a", "OTEL_RESOURCE_ATTRIBUTES": "service.name=b"}
    assert Config.from_env(env).service_name == "a"


def test_overrides_beat_env() -> None:
    """Keyword overrides given to from_env win over the environment."""
    assert Config.from_env({"OTEL_SERVICE_NAME": "a"}, service_name="b").service_name == "b"


@pytest.mark.parametrize(
    ("var", "value", "allowed"),
    [
        pytest.param("OBSERVEKIT_ACCESS_LOG_SAMPLE_RATIO", "abc", "0.0 to 1.0", id="ratio-nan"),
        pytest.param("OBSERVEKIT_ACCESS_LOG_SAMPLE_RATIO", "1.5", "0.0 to 1.0", id="ratio-range"),
        pytest.param("OBSERVEKIT_ACCESS_LOG", "maybe", "true", id="bool"),
        pytest.param("OBSERVEKIT_LOG_LEVEL", "LOUD", "DEBUG", id="level"),
        pytest.param("OBSERVEKIT_REQUEST_ID_HEADERS", "X Bad", "header names", id="header"),
    ],
)
def test_bad_env_value_names_variable(var: str, value: str, allowed: str) -> None:
    """A bad environment value fails naming the variable, its value and what it allows."""
    with pytest.raises(ConfigError) as info:
        Config.from_env({var: value})
    assert var in str(info.value)
    assert allowed in str(info.value)


def test_from_env_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit mapping, from_env reads os.environ."""
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-os")
    assert Config.from_env().service_name == "from-os"


def _git(repo: Path, *args: str) -> str:
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        "HOME": str(repo),
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(
        ["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.mark.parametrize("packed", [False, True], ids=["loose-ref", "packed-ref"])
def test_service_version_defaults_to_git_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, packed: bool
) -> None:
    """Without a configured version, service.version is the checked-out commit of the working directory."""
    _git(tmp_path, "init", "-q", "-b", "main")
    (tmp_path / "f").write_text("x")
    _git(tmp_path, "add", "f")
    _git(tmp_path, "commit", "-q", "-m", "one")
    if packed:
        _git(tmp_path, "pack-refs", "--all")
    sha = _git(tmp_path, "rev-parse", "HEAD")
    sub = tmp_path / "src"
    sub.mkdir()
    monkeypatch.chdir(sub)
    monkeypatch.setattr(config_module, "_git_cache", {})
    assert Config().resolved_service_version() == sha[:12]
    assert Config(service_version="2.0").resolved_service_version() == "2.0"


def test_service_version_unknown_outside_git(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside any checkout, service.version is "unknown"."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(config_module, "_git_cache", {})
    assert Config().resolved_service_version() == "unknown"


def test_config_is_immutable() -> None:
    """A Config cannot be changed after it is built (it is shared by every request)."""
    config = Config()
    with pytest.raises(AttributeError):
        config.service_name = "x"  # type: ignore[misc]
    assert observekit.Config is Config


@pytest.mark.parametrize(
    ("kwargs", "field", "allowed"),
    [
        pytest.param(
            {"metrics": "prometheus"}, "metrics", "auto, statsd, otel, memory, none", id="metrics"
        ),
        pytest.param({"statsd_port": 0}, "statsd_port", "1 to 65535", id="port"),
        pytest.param({"statsd_port": "8125"}, "statsd_port", "whole number", id="port-str"),
        pytest.param({"statsd_tags": "influx"}, "statsd_tags", "dogstatsd, none", id="tags"),
        pytest.param({"statsd_prefix": "a:b"}, "statsd_prefix", "without", id="prefix"),
        pytest.param({"statsd_max_packet": 10}, "statsd_max_packet", "64 to 65507", id="packet"),
        pytest.param({"max_routes": 0}, "max_routes", "1 to 100000", id="routes"),
        pytest.param(
            {"traces_exporter": "jaeger"}, "traces_exporter", "otlp, console, none", id="exporter"
        ),
        pytest.param(
            {"otlp_protocol": "http/json"}, "otlp_protocol", "http/protobuf, grpc", id="protocol"
        ),
        pytest.param(
            {"traces_sampler": "sometimes"}, "traces_sampler", "parentbased_always_on", id="sampler"
        ),
        pytest.param(
            {"traces_sampler_arg": 1.5}, "traces_sampler_arg", "0.0 to 1.0", id="sampler-arg"
        ),
        pytest.param(
            {"propagators": ("w3c",)}, "propagators", "tracecontext, baggage", id="propagator"
        ),
        pytest.param({"shutdown_timeout": -1}, "shutdown_timeout", "0.0 to 300.0", id="timeout"),
    ],
)
def test_bad_signal_settings_name_field_and_allowed_values(
    kwargs: dict[str, Any], field: str, allowed: str
) -> None:
    """Metrics and tracing settings fail at construction, naming the field and what it allows."""
    with pytest.raises(ConfigError) as info:
        Config(**kwargs)
    assert info.value.field == field
    assert allowed in str(info.value)


@pytest.mark.parametrize(
    ("env", "kwargs"),
    [
        pytest.param(
            {
                "STATSD_HOST": "statsd.local",
                "STATSD_PORT": "9125",
                "STATSD_PREFIX": "shop",
                "OBSERVEKIT_METRICS": "STATSD",
            },
            {
                "statsd_host": "statsd.local",
                "statsd_port": 9125,
                "statsd_prefix": "shop",
                "metrics": "statsd",
            },
            id="statsd",
        ),
        pytest.param(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"},
            {"otlp_endpoint": "http://collector:4318", "traces_exporter": "otlp"},
            id="endpoint-turns-otlp-on",
        ),
        pytest.param(
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/in"},
            {"otlp_traces_endpoint": "http://c:4318/in", "traces_exporter": "otlp"},
            id="traces-endpoint-turns-otlp-on",
        ),
        pytest.param(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"},
            {"otlp_endpoint": "http://c:4318", "traces_exporter": "none"},
            id="explicit-exporter-wins",
        ),
        pytest.param(
            {
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "0.1",
                "OTEL_PROPAGATORS": "tracecontext",
            },
            {
                "traces_sampler": "parentbased_traceidratio",
                "traces_sampler_arg": 0.1,
                "propagators": ("tracecontext",),
            },
            id="sampler",
        ),
        pytest.param(
            {"OTEL_RESOURCE_ATTRIBUTES": "service.name=s,k8s.pod.name=web-1,team=pay"},
            {
                "service_name": "s",
                "resource_attributes": (("k8s.pod.name", "web-1"), ("team", "pay")),
            },
            id="resource",
        ),
    ],
)
def test_signal_env_equals_code(env: dict[str, str], kwargs: dict[str, Any]) -> None:
    """Metrics and tracing settings from the standard variables equal the same values in code."""
    assert Config.from_env(env) == Config(**kwargs)
