"""uvicorn: JSON logs (its access lines included) and running an ASGI app with no code change.

::

    python -m observekit.uvicorn myapp:app --host 0.0.0.0 --port 8000   # any uvicorn option

runs ``myapp:app`` under uvicorn wrapped in :class:`observekit.asgi.ObservabilityMiddleware`
(``Config.from_env()``), with :data:`LOG_CONFIG` as uvicorn's ``log_config``
unless ``--log-config`` is given. In your own code::

    uvicorn.run(app, log_config=observekit.uvicorn.LOG_CONFIG)

:data:`LOG_CONFIG` sends uvicorn's loggers (``uvicorn.error`` and
``uvicorn.access``) and the root to JSON lines on stdout. uvicorn writes its
access line when the response starts, from inside the request, so behind the
middleware it carries the request ID. observekit's own access line (with the
duration and route) follows when the request ends; drop uvicorn's with
``--no-access-log`` if one access line per request is what you want.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

try:
    import click
    from uvicorn.importer import import_from_string
except ImportError:  # pragma: no cover - depends on the environment
    raise ImportError(
        'observekit.uvicorn needs uvicorn: pip install "observekit[uvicorn]"'
    ) from None

from ._config import Config
from .asgi import ObservabilityMiddleware
from .logging import dict_config

__all__ = ["LOG_CONFIG", "main", "wrap"]

APP_ENV = "OBSERVEKIT_APP"

LOG_CONFIG: dict[str, Any] = dict_config()
"""uvicorn's ``log_config``: JSON lines on stdout for uvicorn's loggers and the root."""
LOG_CONFIG["loggers"] = {
    name: {"level": "INFO", "handlers": [], "propagate": True}
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
}


def wrap() -> ObservabilityMiddleware:
    """App factory (``uvicorn --factory observekit.uvicorn:wrap``): wraps ``$OBSERVEKIT_APP``."""
    target = os.environ.get(APP_ENV)
    if not target:
        raise RuntimeError(f"set {APP_ENV}=module:attribute to the ASGI app to run")
    return ObservabilityMiddleware(import_from_string(target), config=Config.from_env())


def main(argv: list[str] | None = None) -> None:
    """``python -m observekit.uvicorn APP [uvicorn options]``."""
    command: click.Command = importlib.import_module("uvicorn.main").main
    args = list(sys.argv[1:] if argv is None else argv)
    with command.make_context("python -m observekit.uvicorn", args) as ctx:
        params = dict(ctx.params)
        os.environ[APP_ENV] = params["app"]  # read again by each worker process
        params["app"] = "observekit.uvicorn:wrap"
        params["factory"] = True
        if params.get("log_config") is None:
            params["log_config"] = LOG_CONFIG
        if command.callback is None:  # pragma: no cover - uvicorn's command always has one
            raise RuntimeError("uvicorn's command line has no callback")
        ctx.invoke(command.callback, **params)


if __name__ == "__main__":
    main()
