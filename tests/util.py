"""Small in-process drivers for WSGI apps (the e2e tests use real servers)."""

from __future__ import annotations

import json
from typing import Any
from wsgiref.util import setup_testing_defaults


def environ(path: str = "/", headers: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    env: dict[str, Any] = {"PATH_INFO": path}
    for name, value in (headers or {}).items():
        key = name.upper().replace("-", "_")
        env[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key] = value
    env.update(extra)
    setup_testing_defaults(env)
    return env


class Result:
    def __init__(self) -> None:
        self.status = ""
        self.headers: list[tuple[str, str]] = []
        self.exc_info: Any = None
        self.body = b""

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def call(app: Any, path: str = "/", headers: dict[str, str] | None = None, **extra: Any) -> Result:
    """Run one request the way a PEP 3333 server does: iterate the body, then close()."""
    result = Result()

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        result.status, result.headers, result.exc_info = status, list(headers), exc_info
        return lambda data: None

    body = app(environ(path, headers, **extra), start_response)
    try:
        result.body = b"".join(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return result


def app_errors(logs: Any) -> list[dict[str, Any]]:
    """The ERROR lines of the ``observekit`` logger (the application-exception lines)."""
    return [
        line for line in logs.lines() if line["logger"] == "observekit" and line["level"] == "ERROR"
    ]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def strict_json_lines(text: str) -> list[dict[str, Any]]:
    """Every line as strict JSON (no NaN/Infinity); fails on anything else."""
    out = []
    for raw in text.splitlines():
        parsed = json.loads(raw, parse_constant=_reject_constant)
        assert isinstance(parsed, dict), raw
        out.append(parsed)
    return out
