"""observekit: make a Python web service failure ready.

Request IDs, JSON logs and (in later releases) metrics, traces and resilience
guards, as WSGI/ASGI middleware with thin framework adapters::

    import observekit
    from observekit.wsgi import ObservabilityMiddleware

    observekit.logging.configure()
    app = ObservabilityMiddleware(app, config=observekit.Config.from_env())

The framework adapters and the middleware live in their own modules
(``observekit.wsgi``, ``observekit.asgi``); importing this package imports no
framework, HTTP client or OpenTelemetry SDK.
"""

from __future__ import annotations

from . import logging
from ._config import Config
from ._context import RequestContext, bind, get_request_id, request_context
from ._exceptions import ConfigError, ObservekitError
from ._requestid import generate_request_id, is_valid_request_id
from ._tasks import report_queue_size, track_task

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "ObservekitError",
    "RequestContext",
    "__version__",
    "bind",
    "generate_request_id",
    "get_request_id",
    "is_valid_request_id",
    "logging",
    "report_queue_size",
    "request_context",
    "track_task",
]
