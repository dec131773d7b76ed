"""The resilience settings: environment and code give equal Configs; bad values name the field."""

from __future__ import annotations

from typing import Any

import pytest

from observekit import Config, ConfigError


@pytest.mark.parametrize(
    ("env", "kwargs"),
    [
        pytest.param(
            {
                "OBSERVEKIT_HEALTH_PATH": "/live",
                "OBSERVEKIT_READINESS_PATH": "/ready",
                "OBSERVEKIT_READINESS_TIMEOUT": "0.5",
            },
            {"health_path": "/live", "readiness_path": "/ready", "readiness_timeout": 0.5},
            id="health",
        ),
        pytest.param(
            {
                "OBSERVEKIT_MAX_IN_FLIGHT": "64",
                "OBSERVEKIT_SHED_QUEUE_SIZE": "16",
                "OBSERVEKIT_SHED_QUEUE_WAIT": "0.25",
                "OBSERVEKIT_SHED_RETRY_AFTER": "3",
            },
            {
                "max_in_flight": 64,
                "shed_queue_size": 16,
                "shed_queue_wait": 0.25,
                "shed_retry_after": 3,
            },
            id="shedding",
        ),
        pytest.param(
            {
                "OBSERVEKIT_RATE_LIMIT": "100/minute",
                "OBSERVEKIT_RATE_LIMIT_BURST": "20",
                "OBSERVEKIT_RATE_LIMIT_ROUTES": "/api/*=10/second, /login=5/minute",
                "OBSERVEKIT_RATE_LIMIT_KEY": "header:X-API-Key",
                "OBSERVEKIT_TRUSTED_PROXIES": "1",
                "OBSERVEKIT_RATE_LIMIT_BACKEND": "redis",
                "OBSERVEKIT_REDIS_URL": "redis://cache:6379/1",
                "OBSERVEKIT_REDIS_CONNECT_TIMEOUT": "0.05",
                "OBSERVEKIT_REDIS_TIMEOUT": "0.2",
                "OBSERVEKIT_RATE_LIMIT_FAIL_MODE": "CLOSED",
            },
            {
                "rate_limit": "100/minute",
                "rate_limit_burst": 20,
                "rate_limit_routes": (("/api/*", "10/second"), ("/login", "5/minute")),
                "rate_limit_key": "header:X-API-Key",
                "trusted_proxies": 1,
                "rate_limit_backend": "redis",
                "redis_url": "redis://cache:6379/1",
                "redis_connect_timeout": 0.05,
                "redis_timeout": 0.2,
                "rate_limit_fail_mode": "closed",
            },
            id="rate-limit",
        ),
        pytest.param(
            {"OBSERVEKIT_FAULTS_ENABLED": "true", "OBSERVEKIT_FAULTS_KILL_FILE": "/run/chaos.off"},
            {"faults_enabled": True, "faults_kill_file": "/run/chaos.off"},
            id="faults",
        ),
    ],
)
def test_resilience_env_equals_code(env: dict[str, str], kwargs: dict[str, Any]) -> None:
    """The same resilience values from the environment or from code give an equal Config."""
    assert Config.from_env(env) == Config(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"max_in_flight": 0}, "max_in_flight", id="in-flight"),
        pytest.param({"rate_limit": "lots"}, "rate_limit", id="spec"),
        pytest.param({"rate_limit_routes": (("/x", "1/eon"),)}, "rate_limit_routes", id="route"),
        pytest.param({"rate_limit_key": "cookie:x"}, "rate_limit_key", id="key"),
        pytest.param({"trusted_proxies": -1}, "trusted_proxies", id="proxies"),
        pytest.param({"rate_limit_backend": "memcached"}, "rate_limit_backend", id="backend"),
        pytest.param({"rate_limit_fail_mode": "maybe"}, "rate_limit_fail_mode", id="fail-mode"),
        pytest.param({"fault_rules": ({"status": 500},)}, "fault_rules", id="rules"),
        pytest.param({"faults_enabled": "yes"}, "faults_enabled", id="enabled"),
        pytest.param({"readiness_path": "/healthz"}, "readiness_path", id="same-paths"),
    ],
)
def test_bad_resilience_values(kwargs: dict[str, Any], field: str) -> None:
    """A bad resilience value raises ConfigError naming its field."""
    with pytest.raises(ConfigError) as info:
        Config(**kwargs)
    assert info.value.field == field


def test_bad_env_rate_limit_names_variable() -> None:
    """A bad OBSERVEKIT_RATE_LIMIT fails naming the variable and the expected form."""
    with pytest.raises(ConfigError) as info:
        Config.from_env({"OBSERVEKIT_RATE_LIMIT": "many"})
    assert "OBSERVEKIT_RATE_LIMIT" in str(info.value)
    assert "100/minute" in str(info.value)
