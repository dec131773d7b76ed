"""A gunicorn config module: ``gunicorn -c python:observekit.gunicorn myapp:app``.

Or, in your own ``gunicorn.conf.py``: ``from observekit.gunicorn import *``
(then set anything else you need below it). What it sets:

- ``logconfig_dict``: JSON lines on stdout for gunicorn's error log
  (``gunicorn.error``: boot, worker and timeout lines), the root logger and your
  app. gunicorn's own access log is switched off: gunicorn writes it after the
  request has ended, when the request's context (and so its ID) is gone.
  observekit's access line, written by the middleware, is the access line.
- ``post_worker_init``: with ``OBSERVEKIT_WRAP=1`` in the environment, the
  worker's WSGI callable is wrapped in :class:`observekit.wsgi.ObservabilityMiddleware`
  (configured by ``Config.from_env()``): no change to the app's code. The
  middleware, its statsd socket and its OpenTelemetry exporter are built in each
  worker after the fork, never shared with the master.
- ``post_fork``: nothing to undo for observekit's own state, which is rebuilt in
  the child by ``os.register_at_fork`` hooks (the span export thread, the metric
  locks); it is left for your hooks (define your own after the import).
- ``statsd_host``, ``statsd_prefix``, ``dogstatsd_tags``: when ``STATSD_HOST`` is
  set, gunicorn sends its own metrics (``gunicorn.requests``, ``gunicorn.workers``,
  ...) to the same daemon as observekit's, tagged with ``service.name``.
"""

from __future__ import annotations

import os
from typing import Any

try:
    import gunicorn  # noqa: F401 - fail early, naming the extra
except ImportError:  # pragma: no cover - depends on the environment
    raise ImportError(
        'observekit.gunicorn needs gunicorn: pip install "observekit[gunicorn]"'
    ) from None

from ._config import Config
from .logging import dict_config

__all__ = [
    "accesslog",
    "dogstatsd_tags",
    "logconfig_dict",
    "post_worker_init",
    "statsd_host",
    "statsd_prefix",
]

_TRUE = {"1", "true", "yes", "on"}


def _logconfig() -> dict[str, Any]:
    config = dict_config()
    # gunicorn merges this over its defaults key by key: give its loggers our handler.
    config["loggers"] = {
        "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
        "gunicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False},
    }
    return config


logconfig_dict = _logconfig()
accesslog = None

statsd_host: str | None = None
statsd_prefix = ""
dogstatsd_tags = ""
if os.environ.get("STATSD_HOST"):
    statsd_host = f"{os.environ['STATSD_HOST']}:{os.environ.get('STATSD_PORT', '8125')}"
    statsd_prefix = os.environ.get("STATSD_PREFIX", "")
    dogstatsd_tags = f"service.name:{Config.from_env().service_name}"


def post_worker_init(worker: Any) -> None:
    """With ``OBSERVEKIT_WRAP=1``: wrap the worker's WSGI app in the observekit middleware."""
    if os.environ.get("OBSERVEKIT_WRAP", "").strip().lower() not in _TRUE:
        return
    from .wsgi import ObservabilityMiddleware

    worker.wsgi = ObservabilityMiddleware(worker.wsgi, config=Config.from_env())
