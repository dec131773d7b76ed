"""Django: request IDs, JSON logs, metrics and traces from one ``MIDDLEWARE`` line.

::

    # settings.py
    import observekit.django

    MIDDLEWARE = ["observekit.django.ObservabilityMiddleware", ...]  # first
    OBSERVEKIT = {"service_name": "orders", "metrics": "statsd"}  # Config's keywords
    LOGGING = observekit.django.LOGGING

One class serves both modes by Django's rules (``sync_capable`` and
``async_capable``): under WSGI (gunicorn) ``__call__`` runs the request, under
ASGI (uvicorn) ``__acall__`` does; each sets and resets the request context in
its own ``try/finally``. The route template is ``request.resolver_match.route``
with a leading slash (``/items/<int:item_id>``). An exception Django turns into a
500 is logged once, with its traceback and the request ID, and counted (Django's
own "Internal Server Error" record of that same exception is dropped as a
duplicate). A streaming response keeps the request context for every chunk and
ends the request when Django closes it.

``settings.OBSERVEKIT`` takes the same keys as :class:`observekit.Config` and is
read as ``Config.from_env(**settings.OBSERVEKIT)``: the settings win, and the
standard variables (``OTEL_SERVICE_NAME``, ``STATSD_HOST``, ...) fill in what
they leave out. It may also be a ``Config``, used as it is.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

try:
    from asgiref.sync import iscoroutinefunction, markcoroutinefunction
    from django.conf import settings
    from django.core.signals import got_request_exception
    from django.http import FileResponse
except ImportError:  # pragma: no cover - depends on the environment
    raise ImportError('observekit.django needs Django: pip install "observekit[django]"') from None

from ._adapters import angle_template, skip_logged_exceptions
from ._config import Config
from ._core import Exchange, Observer, RequestInfo, current_exchange
from ._exceptions import ConfigError
from .logging import dict_config
from .wsgi import _CGI_KEYS, _add_details

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponseBase

__all__ = ["LOGGING", "ObservabilityMiddleware", "config_from_settings", "logging_config"]

_FIELDS = frozenset(f.name for f in dataclasses.fields(Config))


def logging_config(observekit_settings: dict[str, Any] | Config | None = None) -> dict[str, Any]:
    """A ready ``settings.LOGGING``: JSON lines on stdout, Django's loggers included.

    ``LOGGING = observekit.django.logging_config(OBSERVEKIT)`` gives the lines the
    service fields of your ``OBSERVEKIT`` settings (without it: the environment's).
    The ``django`` logger's default handlers (plain text on the console when
    ``DEBUG``, e-mail to ``ADMINS``) are replaced: its records go to the root's
    JSON handler. Add ``mail_admins`` back under ``["loggers"]`` if you want it.
    """
    config = None if observekit_settings is None else _config_from(observekit_settings)
    result = dict_config(config)
    result["loggers"] = {"django": {"handlers": [], "level": "INFO", "propagate": True}}
    return result


LOGGING: dict[str, Any] = logging_config()
"""``logging_config()``: service fields from the environment."""


def config_from_settings() -> Config:
    """The :class:`observekit.Config` that ``settings.OBSERVEKIT`` describes.

    :raises ConfigError: for a key that is not a ``Config`` field, or a bad value.
    """
    return _config_from(getattr(settings, "OBSERVEKIT", None))


def _config_from(value: Any) -> Config:
    if value is None:
        return Config.from_env()
    if isinstance(value, Config):
        return value
    if not isinstance(value, dict):
        raise ConfigError(
            "OBSERVEKIT",
            f"settings.OBSERVEKIT must be a dict of Config keywords or a Config, "
            f"got {type(value).__name__}",
        )
    unknown = sorted(set(value) - _FIELDS)
    if unknown:
        raise ConfigError(
            unknown[0],
            f"settings.OBSERVEKIT has unknown key(s) {', '.join(map(repr, unknown))}; "
            f"the keys are Config's: {', '.join(sorted(_FIELDS))}",
        )
    return Config.from_env(**value)


class ObservabilityMiddleware:
    """Django middleware: put it first in ``MIDDLEWARE``. Sync and async capable."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)
        self.observer = Observer(config_from_settings())
        self._meta_keys = tuple(
            (name, _CGI_KEYS.get(name) or "HTTP_" + name.upper().replace("-", "_"))
            for name in self.observer.header_names
        )
        _install_duplicate_filter()

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        exchange = self._begin(request)
        if exchange is None:
            return self.get_response(request)
        token = exchange.enter()
        try:
            try:
                response = self.get_response(request)
            except BaseException as exc:
                exchange.fail(exc)
                exchange.finish()
                raise
            self._respond(exchange, request, response)
            return response
        finally:
            exchange.exit(token)

    async def __acall__(self, request: HttpRequest) -> Any:
        """The async twin of ``__call__`` (Django calls it when the stack is async)."""
        exchange = self._begin(request)
        get_response: Callable[[HttpRequest], Awaitable[Any]] = self.get_response
        if exchange is None:
            return await get_response(request)
        token = exchange.enter()
        try:
            try:
                response = await get_response(request)
            except BaseException as exc:
                exchange.fail(exc)
                exchange.finish()
                raise
            self._respond(exchange, request, response)
            return response
        finally:
            exchange.exit(token)

    def _begin(self, request: HttpRequest) -> Exchange | None:
        observer = self.observer
        try:
            meta = request.META
            headers = {}
            for name, key in self._meta_keys:
                value = meta.get(key)
                if value is not None:
                    headers[name] = value
            info = RequestInfo(
                request.method or "GET",
                request.path,
                headers,
                scheme=request.scheme or "http",
                client=meta.get("REMOTE_ADDR"),
            )
            if observer.wants_details:
                _add_details(info, meta)
            return observer.begin(info)
        except Exception:
            observer.internal_error("starting the request failed")
            return None

    def _respond(
        self, exchange: Exchange, request: HttpRequest, response: HttpResponseBase
    ) -> None:
        """Route, status and the ID header; then finish now, or when a stream is closed."""
        observer = self.observer
        try:
            match = getattr(request, "resolver_match", None)
            route = getattr(match, "route", None)
            if isinstance(route, str):
                exchange.route = angle_template(route)
            response[observer.response_header] = exchange.request_id
            exchange.response_started(
                response.status_code, response.get("Content-Type"), response.get("Content-Length")
            )
            if not response.streaming:
                exchange.response_bytes = len(response.content)
            elif isinstance(response, FileResponse) and response.file_to_stream is not None:
                # No application code runs while a file is read; keep Django's sendfile path.
                response._resource_closers.append(_Closer(exchange))
                return
            elif response.is_async:
                stream: Any = _AsyncStream(exchange, response.streaming_content)
                response.streaming_content = stream
                return
            else:
                stream = _SyncStream(exchange, response.streaming_content)
                response.streaming_content = stream
                return
        except Exception:
            observer.internal_error("reading the Django response failed")
        exchange.finish()


class _Closer:
    """Ends the exchange when Django closes the response (its ``_resource_closers``)."""

    __slots__ = ("_exchange",)

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange

    def __call__(self) -> None:
        exchange = self._exchange
        token = exchange.enter()
        try:
            exchange.finish()
        finally:
            exchange.exit(token)


class _SyncStream:
    """``streaming_content`` for a sync iterator: each chunk in the context; ``close`` ends it."""

    __slots__ = ("_closer", "_exchange", "_iterator")

    def __init__(self, exchange: Exchange, content: Iterator[bytes]) -> None:
        self._exchange = exchange
        self._iterator = content
        self._closer = _Closer(exchange)

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        exchange = self._exchange
        token = exchange.enter()
        try:
            chunk = next(self._iterator)
        except StopIteration:
            raise
        except Exception as exc:
            exchange.fail(exc)
            raise
        finally:
            exchange.exit(token)
        exchange.response_bytes += len(chunk)
        return chunk

    def close(self) -> None:
        """Called by ``HttpResponseBase.close()`` after the app's own closers."""
        self._closer()


class _AsyncStream:
    """``streaming_content`` for an async iterator (``is_async`` stays True)."""

    __slots__ = ("_closer", "_exchange", "_iterator")

    def __init__(self, exchange: Exchange, content: AsyncIterator[bytes]) -> None:
        self._exchange = exchange
        self._iterator = content
        self._closer = _Closer(exchange)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        exchange = self._exchange
        token = exchange.enter()
        try:
            chunk = await self._iterator.__anext__()
        except StopAsyncIteration:
            raise
        except Exception as exc:
            exchange.fail(exc)
            raise
        finally:
            exchange.exit(token)
        exchange.response_bytes += len(chunk)
        return chunk

    def close(self) -> None:
        """Called by ``HttpResponseBase.close()``; Django calls it for async streams too."""
        self._closer()


# -- exceptions Django turns into a 500 -----------------------------------------


def _on_exception(sender: Any, request: Any = None, **kwargs: Any) -> None:
    """``got_request_exception``: the view raised; Django is about to render a 500."""
    exchange = current_exchange()
    exc = sys.exc_info()[1]
    if exchange is not None and isinstance(exc, Exception):
        exchange.fail(exc)


got_request_exception.connect(_on_exception, dispatch_uid="observekit.django")


def _install_duplicate_filter() -> None:
    skip_logged_exceptions(logging.getLogger("django.request"))
