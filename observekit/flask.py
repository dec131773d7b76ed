"""Flask: the extension convention, over observekit's WSGI middleware.

::

    from observekit.flask import Observekit

    app = Flask(__name__)
    Observekit(app)  # or: ext = Observekit(); ext.init_app(app)

``init_app`` wraps ``app.wsgi_app`` with :class:`observekit.wsgi.ObservabilityMiddleware`
(so the request spans the whole WSGI call, body and ``close()`` included) and
connects two Flask signals for this app: ``request_started`` supplies the route
template from ``request.url_rule`` (``/items/<int:item_id>`` is reported as
``/items/{item_id}``), and ``got_request_exception`` hands an exception Flask
turns into a 500 to observekit, which logs it once with its traceback and counts
it (Flask's own "Exception on ..." record of it is then dropped as a duplicate).

The :class:`observekit.Config` is ``config=`` if given, else
``Config.from_env(**app.config["OBSERVEKIT"])`` (a dict of Config's keywords),
else ``Config.from_env()``.
"""

from __future__ import annotations

from typing import Any

try:
    from flask import Flask, got_request_exception, request, request_started
except ImportError:  # pragma: no cover - depends on the environment
    raise ImportError('observekit.flask needs Flask: pip install "observekit[flask]"') from None

from ._adapters import angle_template, skip_logged_exceptions
from ._config import Config
from ._core import current_exchange
from ._exceptions import ConfigError
from .wsgi import ObservabilityMiddleware

__all__ = ["Observekit"]


class Observekit:
    """The Flask extension: ``Observekit(app)`` or ``Observekit().init_app(app)``.

    :param app: the Flask application (or call :meth:`init_app` later).
    :param config: a :class:`observekit.Config`; default from ``app.config["OBSERVEKIT"]``
        and the environment.
    :param tracer_provider: an OpenTelemetry ``TracerProvider`` for the server spans.
    """

    def __init__(
        self, app: Flask | None = None, *, config: Config | None = None, tracer_provider: Any = None
    ) -> None:
        if config is not None and not isinstance(config, Config):
            raise TypeError(f"config must be an observekit.Config, got {type(config).__name__}")
        self.config = config
        self.tracer_provider = tracer_provider
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Wrap ``app.wsgi_app`` and connect this app's signals (once per app)."""
        if "observekit" in app.extensions:
            return
        config = self.config or _config_from(app.config.get("OBSERVEKIT"))
        app.wsgi_app = ObservabilityMiddleware(  # type: ignore[method-assign,assignment]
            app.wsgi_app, config=config, tracer_provider=self.tracer_provider
        )
        app.extensions["observekit"] = self
        request_started.connect(_on_request_started, app, weak=False)
        got_request_exception.connect(_on_exception, app, weak=False)
        skip_logged_exceptions(app.logger)


def _config_from(value: Any) -> Config:
    if value is None:
        return Config.from_env()
    if isinstance(value, Config):
        return value
    if not isinstance(value, dict):
        raise ConfigError("OBSERVEKIT", "app.config['OBSERVEKIT'] must be a dict or a Config")
    try:
        return Config.from_env(**value)
    except TypeError as exc:
        raise ConfigError("OBSERVEKIT", f"app.config['OBSERVEKIT']: {exc}") from None


def _on_request_started(sender: Flask, **extra: Any) -> None:
    exchange = current_exchange()
    if exchange is None:
        return
    try:
        rule = request.url_rule
        if rule is not None:
            exchange.route = angle_template(rule.rule)
    except Exception:
        exchange.observer.internal_error("reading Flask's url_rule failed")


def _on_exception(sender: Flask, exception: BaseException | None = None, **extra: Any) -> None:
    exchange = current_exchange()
    if exchange is not None and isinstance(exception, Exception):
        exchange.fail(exception)
