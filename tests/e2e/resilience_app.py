"""The WSGI app the resilience end-to-end tests serve with gunicorn; configured from OBSERVEKIT_*.

Routes: ``/`` answers at once; ``/slow`` takes 0.5 s. Every response, the middleware's
own 429s and 503s included, carries ``X-Worker-PID``. ``/healthz`` and ``/readyz`` are answered by the middleware.
"""

from __future__ import annotations

import os
import time
from typing import Any

import observekit
from observekit.wsgi import ObservabilityMiddleware

CONFIG = observekit.Config.from_env()
observekit.logging.configure(CONFIG)


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    if environ.get("PATH_INFO") == "/slow":
        time.sleep(0.5)
    body = b"ok\n"
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/plain"),
            ("Content-Length", str(len(body))),
        ],
    )
    return [body]


_observed = ObservabilityMiddleware(_app, config=CONFIG)


def app(environ: dict[str, Any], start_response: Any) -> Any:
    """Outside the middleware, so answers the guards give carry the worker's PID too."""

    def with_pid(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
        return start_response(status, [*headers, ("X-Worker-PID", str(os.getpid()))], *exc_info)

    return _observed(environ, with_pid)
