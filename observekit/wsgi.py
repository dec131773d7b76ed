"""WSGI middleware (PEP 3333): request IDs, context and the access line for any WSGI app.

::

    from observekit.wsgi import ObservabilityMiddleware
    app = ObservabilityMiddleware(app, config=observekit.Config(service_name="shop"))

A request ends when the server calls ``close()`` on the response iterable, not
when the application returns; the request context is re-entered for every
chunk and for ``close()``, so streamed bodies log with the request's ID.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import Any

from ._config import Config
from ._core import ERROR_BODY, Exchange, Observer, RequestInfo
from ._memo import remembered
from ._types import OptExcInfo, StartResponse, WSGIApp, WSGIEnviron

__all__ = ["ObservabilityMiddleware"]

_ERROR_STATUS = "500 Internal Server Error"
# CGI names: these two arrive without the HTTP_ prefix.
_CGI_KEYS = {"content-type": "CONTENT_TYPE", "content-length": "CONTENT_LENGTH"}


class ObservabilityMiddleware:
    """Wrap a WSGI application with request IDs, context and JSON access lines.

    :param app: the WSGI application.
    :param config: a :class:`observekit.Config`; default ``Config()``.
    :param tracer_provider: an OpenTelemetry ``TracerProvider`` for the server spans
        (traced even when ``config.traces_exporter`` is ``"none"``); default: the one
        ``observekit.tracing.configure()`` sets up from ``config``, or the global one.
    """

    def __init__(
        self, app: WSGIApp, *, config: Config | None = None, tracer_provider: Any = None
    ) -> None:
        self.app = app
        self.config = Config() if config is None else config
        self.observer = Observer(self.config, tracer_provider=tracer_provider)
        self._environ_keys = tuple(
            (name, _CGI_KEYS.get(name) or "HTTP_" + name.upper().replace("-", "_"))
            for name in self.observer.header_names
        )

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        observer = self.observer
        if environ.get("PATH_INFO") in observer.health_paths:
            return self._health(environ, start_response)
        try:
            headers = {}
            for name, key in self._environ_keys:
                value = environ.get(key)
                if value is not None:
                    headers[name] = value
            path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
            if not path.isascii():
                # PEP 3333 hands over raw bytes as latin-1; the URL path is UTF-8.
                path = path.encode("latin-1").decode("utf-8", "replace")
            info = RequestInfo(
                environ.get("REQUEST_METHOD", "GET"),
                path,
                headers,
                scheme=environ.get("wsgi.url_scheme", "http"),
                client=environ.get("REMOTE_ADDR"),
            )
            if observer.wants_details:
                _add_details(info, environ)
            exchange = observer.begin(info)
        except Exception:
            observer.internal_error("starting the request failed")
            body: Iterable[bytes] = self.app(environ, start_response)
            return body

        response = _Response(exchange, start_response)
        token = exchange.enter()
        try:
            if observer.guards is not None:
                answer = exchange.guard()
                if answer is not None:
                    return response.answer(answer)
            result = self.app(environ, response.start_response)
        except BaseException as exc:
            exchange.fail(exc)
            if not isinstance(exc, Exception) or not response.replace_with_error(exc):
                exchange.finish()
                raise
            return response
        finally:
            exchange.exit(token)
        wrapper = environ.get("wsgi.file_wrapper")
        if wrapper is not None and _is_instance(result, wrapper):
            return _pass_file_through(result, exchange, response)
        response.body = result
        if type(result) in (list, tuple):
            # No application code runs while a list is iterated: no context to enter.
            response.plain = True
        return response

    def _health(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        """Answer a health probe: no access line, metrics or span; never shed or limited."""
        observer = self.observer
        try:
            answer = observer.health.answer(environ["PATH_INFO"])
            headers = {}
            for name, key in self._environ_keys[: len(observer.request_id_headers)]:
                value = environ.get(key)
                if value is not None:
                    headers[name] = value
            rid = observer.choose_request_id(headers)[0]
        except Exception:
            observer.internal_error("answering a health probe failed")
            body: Iterable[bytes] = self.app(environ, start_response)
            return body
        start_response(
            status_line(answer.status), [*answer.headers, (observer.response_header, rid)]
        )
        return [answer.body]


def status_line(status: int) -> str:
    """``"503 Service Unavailable"`` for 503."""
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


# (Host header, SERVER_NAME, SERVER_PORT, SERVER_PROTOCOL) -> (server.address,
# server.port, protocol version): a handful per process, worked out once each.
# Bounded: Host is the client's.
_details: dict[tuple[Any, Any, Any, Any], tuple[str | None, int | None, str | None]] = {}
_DETAILS_LIMIT = 256


def _add_details(info: RequestInfo, environ: WSGIEnviron) -> None:
    """Server address, port, protocol and query, for the span (semantic conventions)."""
    key = (
        info.headers.get("host"),
        environ.get("SERVER_NAME"),
        environ.get("SERVER_PORT"),
        environ.get("SERVER_PROTOCOL"),
    )
    info.server_address, info.server_port, info.protocol_version = remembered(
        _details, key, _server_details, _DETAILS_LIMIT
    )
    info.query = environ.get("QUERY_STRING") or None


def _server_details(
    key: tuple[str | None, str | None, str | None, str | None],
) -> tuple[str | None, int | None, str | None]:
    host, name, port, protocol = key
    host = host or name
    if host and host[-1] != "]" and ":" in host:  # "name:port", but not a bare "[v6]"
        host, _, port = host.rpartition(":")
    number = int(port) if port and port.isascii() and port.isdigit() else None
    return host or None, number, (protocol or "").partition("/")[2] or None


# status line -> its code: an application passes a few constant status lines, whose
# hashes Python keeps, so this is a look-up instead of parsing digits on each request.
_status_codes: dict[str, int] = {}
_STATUS_LIMIT = 64


def _status_code(status: str) -> int:
    return int(status[:3])


def _is_instance(obj: object, cls: object) -> bool:
    # uWSGI's file_wrapper is a function, not a class.
    return isinstance(cls, type) and isinstance(obj, cls)


def _pass_file_through(result: Any, exchange: Exchange, response: _Response) -> Iterable[bytes]:
    """Return the server's own file wrapper (so it can sendfile) with ``close`` hooked."""
    original_close: Callable[[], object] | None = getattr(result, "close", None)
    closed = False

    def close() -> None:
        nonlocal closed
        if closed:
            return
        closed = True
        token = exchange.enter()
        try:
            if original_close is not None:
                original_close()
        finally:
            exchange.finish()
            exchange.exit(token)

    try:
        result.close = close
    except AttributeError:  # a slotted wrapper: give up sendfile rather than the access line
        response.body = result
        return response
    file_response: Iterable[bytes] = result
    return file_response


class _Response:
    """The response iterable handed to the server; the request ends in ``close()``.

    ``start_response`` adds the request-ID header; ``__next__`` runs each chunk
    of the application's body inside the request context; ``close()`` closes
    the application's iterable exactly once and then finishes the exchange.
    """

    __slots__ = (
        "_closed",
        "_exchange",
        "_iterator",
        "_pending",
        "_start_response",
        "body",
        "plain",
    )

    def __init__(self, exchange: Exchange, start_response: StartResponse) -> None:
        self._exchange = exchange
        self._start_response = start_response
        self.body: Iterable[bytes] = ()
        self._iterator: Iterator[bytes] | None = None
        self._pending: BaseException | None = None
        self._closed = False
        self.plain = False

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: OptExcInfo | None = None,
    ) -> Callable[[bytes], object]:
        exchange = self._exchange
        try:
            rid_name = exchange.observer.response_header_lower
            content_type = content_length = None
            duplicate = False
            for name, value in headers:
                lower = name.lower()
                if lower == "content-type":
                    content_type = value
                elif lower == "content-length":
                    content_length = value
                elif lower == rid_name:
                    duplicate = True
            if duplicate:
                headers = [h for h in headers if h[0].lower() != rid_name]
            headers = [*headers, (exchange.observer.response_header, exchange.request_id)]
            code = remembered(_status_codes, status, _status_code, _STATUS_LIMIT)
            exchange.response_started(code, content_type, content_length)
        except Exception:
            exchange.observer.internal_error("reading the response headers failed")
        return self._start_response(status, headers, exc_info)

    def answer(self, answer: Any) -> _Response:
        """Send a guard's short answer (shed, rate limited, injected fault) instead of the app's."""
        self.start_response(status_line(answer.status), list(answer.headers))
        self.body = (answer.body,)
        self.plain = True
        return self

    def replace_with_error(self, exc: Exception) -> bool:
        """Answer 500 (with the request ID) in place of a response not yet sent.

        The application's exception is raised again right after the 500 body,
        so the server still sees it. False when the headers are already out.
        """
        exchange = self._exchange
        try:
            self._start_response(
                _ERROR_STATUS,
                [
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("Content-Length", str(len(ERROR_BODY))),
                    (exchange.observer.response_header, exchange.request_id),
                ],
                (type(exc), exc, exc.__traceback__),
            )
        except BaseException:
            return False  # PEP 3333: the server re-raises when headers were already sent
        exchange.response_started(500, "text/plain; charset=utf-8", str(len(ERROR_BODY)))
        self._iterator = iter((ERROR_BODY,))
        self._pending = exc
        return True

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        exchange = self._exchange
        if self.plain:
            iterator = self._iterator
            if iterator is None:
                iterator = self._iterator = iter(self.body)
            chunk = next(iterator)
            exchange.response_bytes += len(chunk)
            return chunk
        pending: BaseException | None = None
        token = exchange.enter()
        try:
            iterator = self._iterator
            if iterator is None:
                iterator = self._iterator = iter(self.body)
            chunk = next(iterator)
        except StopIteration:
            pending, self._pending = self._pending, None
            if pending is None:
                raise
            chunk = b""
        except Exception as exc:
            exchange.fail(exc)
            if exchange.response_bytes == 0 and self.replace_with_error(exc):
                return self.__next__()
            raise
        finally:
            exchange.exit(token)
        if pending is not None:
            # The 500 body is out: now raise the app's exception for the server, outside
            # any except block so that its own __context__ chain is left as it was.
            raise pending
        exchange.response_bytes += len(chunk)
        return chunk

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        exchange = self._exchange
        close = getattr(self.body, "close", None)
        if close is None and exchange.observer.detached_finish:
            exchange.finish()  # no application code left to run: no context to enter
            return
        token = exchange.enter()
        try:
            if close is not None:
                close()
        except Exception as exc:
            exchange.fail(exc)
            raise
        finally:
            exchange.finish()
            exchange.exit(token)
