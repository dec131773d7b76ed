"""ASGI middleware: request IDs, context and the access line for any ASGI app.

::

    from observekit.asgi import ObservabilityMiddleware
    app = ObservabilityMiddleware(app, config=observekit.Config(service_name="shop"))
    # or, in Starlette / FastAPI:
    app.add_middleware(ObservabilityMiddleware, config=...)

Pure ASGI (no ``BaseHTTPMiddleware``): the body streams through chunk by
chunk, the request ends when the application returns, and per-request state
lives in ``__call__``'s locals. ``http`` is instrumented; a ``websocket``
connection gets a request ID in its context and on its ``websocket.accept``;
``lifespan`` and anything else pass through untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._config import Config
from ._context import RequestContext, _current, leave
from ._core import ERROR_BODY, Exchange, Observer, RequestInfo
from ._memo import remembered
from ._types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ObservabilityMiddleware"]


class ObservabilityMiddleware:
    """Wrap an ASGI application with request IDs, context and JSON access lines.

    :param app: the ASGI application.
    :param config: a :class:`observekit.Config`; default ``Config()``.
    :param tracer_provider: an OpenTelemetry ``TracerProvider`` for the server spans
        (traced even when ``config.traces_exporter`` is ``"none"``); default: the one
        ``observekit.tracing.configure()`` sets up from ``config``, or the global one.
    """

    def __init__(
        self, app: ASGIApp, *, config: Config | None = None, tracer_provider: Any = None
    ) -> None:
        self.app = app
        self.config = Config() if config is None else config
        self.observer = Observer(self.config, tracer_provider=tracer_provider)
        self._wanted = {name.encode("latin-1"): name for name in self.observer.header_names}
        self._header = self.observer.response_header_lower.encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Both HTTP paths are inline: another coroutine per request costs ~0.35 us.
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await self._websocket(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        observer = self.observer
        if scope["path"] in observer.health_paths:
            await self._health(scope, send)
            return
        header = self._header

        if observer.ids_only:
            # Request IDs and nothing per request to record: no Exchange, no body counting.
            try:
                found: dict[str, str] | None = None
                wanted = self._wanted
                for key, value in scope["headers"]:
                    if key in wanted:
                        found = found or {}
                        found.setdefault(wanted[key], value.decode("latin-1"))
                context = (
                    RequestContext(observer.new_id())
                    if found is None
                    else observer.context_for(found)
                )
                id_header = (header, context.request_id.encode("latin-1"))
            except Exception:
                observer.internal_error("starting the request failed")
                await self.app(scope, receive, send)
                return
            started = False

            async def send_with_id(message: Message) -> None:
                nonlocal started
                if message["type"] == "http.response.start":
                    started = True
                    try:
                        headers = message.get("headers") or ()
                        for name, _ in headers:
                            # ASGI asks for lowercase names; lower() only same-length ones.
                            if len(name) == header_size and name.lower() == header:
                                headers = [h for h in headers if h[0].lower() != header]
                                break
                        message["headers"] = [*headers, id_header]
                    except Exception:
                        observer.internal_error("adding the request-ID header failed")
                await send(message)

            header_size = len(header)
            token = _current.set(context)
            try:
                await self.app(scope, receive, send_with_id)
            except Exception as exc:
                observer.log_exception(exc, scope["method"], scope["path"])
                if not started:
                    await _send_error(send, id_header)
                raise
            finally:
                try:
                    _current.reset(token)
                except ValueError:  # a server ran us in a copied context: set back by hand
                    leave(token)
            return

        try:
            client = scope.get("client")
            info = RequestInfo(
                scope["method"],
                scope["path"],
                self._headers(scope),
                scheme=scope.get("scheme", "http"),
                client=client[0] if client else None,
            )
            if observer.wants_details:
                _add_details(info, scope)
            exchange = observer.begin(info)
            full_id_header = (header, exchange.request_id.encode("latin-1"))
        except Exception:
            observer.internal_error("starting the request failed")
            await self.app(scope, receive, send)
            return

        async def send_counting(message: Message) -> None:
            message_type = message["type"]
            if message_type == "http.response.body":
                exchange.response_bytes += len(message.get("body", b""))
            elif message_type == "http.response.start":
                _response_started(exchange, message, header, full_id_header)
            await send(message)

        token = exchange.enter()
        try:
            if observer.guards is not None:
                answer = await exchange.aguard()
                if answer is not None:
                    await _send_answer(send_counting, answer)
                    return
            await self.app(scope, receive, send_counting)
        except BaseException as exc:
            exchange.fail(exc)
            if (
                exchange.status is None
                and isinstance(exc, Exception)
                and not (
                    "app" in scope and await _app_error_handler(scope, receive, send_counting, exc)
                )
                and exchange.status is None
            ):
                exchange.response_started(500, _ERROR_TYPE, str(len(ERROR_BODY)))
                if await _send_error(send, full_id_header):
                    exchange.response_bytes += len(ERROR_BODY)
            raise
        finally:
            if "route" in scope and exchange.route is None:  # Starlette routed it
                exchange.route = _starlette_route(exchange, scope)
            exchange.finish()
            exchange.exit(token)

    def _headers(self, scope: Scope) -> dict[str, str]:
        wanted = self._wanted
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:
            name = wanted.get(key)
            if name is not None and name not in headers:
                headers[name] = value.decode("latin-1")
        return headers

    async def _health(self, scope: Scope, send: Send) -> None:
        """Answer a health probe: no access line, metrics or span; never shed or limited."""
        observer = self.observer
        try:
            answer = await observer.health.aanswer(scope["path"])
            rid = observer.choose_request_id(self._headers(scope))[0]
        except Exception:
            observer.internal_error("answering a health probe failed")
            answer, rid = None, ""
        if answer is None:
            from .resilience.health import Answer

            answer = Answer.json(500, {"status": "error"})
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers]
        headers.append((self._header, rid.encode("latin-1")))
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            context = self.observer.context_for(self._headers(scope))
        except Exception:
            self.observer.internal_error("starting the websocket connection failed")
            context = None
        if context is None:
            await self.app(scope, receive, send)
            return
        id_header = (self._header, context.request_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            # The accept, or the HTTP response that denies the connection.
            if message["type"] in ("websocket.accept", "websocket.http.response.start"):
                headers = [
                    (k, v) for k, v in message.get("headers") or () if k.lower() != id_header[0]
                ]
                headers.append(id_header)
                message["headers"] = headers
            await send(message)

        token = _current.set(context)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            leave(token)


def _response_started(
    exchange: Exchange, message: Message, header: bytes, id_header: tuple[bytes, bytes]
) -> None:
    try:
        headers = message.get("headers") or ()
        content_type = content_length = None
        duplicate = False
        for name, value in headers:
            lower = name.lower()
            if lower == b"content-type":
                content_type = value.decode("latin-1")
            elif lower == b"content-length":
                content_length = value.decode("latin-1")
            elif lower == header:
                duplicate = True
        if duplicate:
            headers = [h for h in headers if h[0].lower() != header]
        message["headers"] = [*headers, id_header]
        exchange.response_started(message["status"], content_type, content_length)
    except Exception:
        exchange.observer.internal_error("reading the response headers failed")


# (Host header, scope["server"], http_version) -> (server.address, server.port, version):
# a handful of values per process, worked out once each. Bounded: Host is the client's.
_details: dict[tuple[Any, Any, Any], tuple[str | None, int | None, str | None]] = {}
_DETAILS_LIMIT = 256


def _add_details(info: RequestInfo, scope: Scope) -> None:
    """Server address, port, protocol and query, for the span (semantic conventions)."""
    key = (info.headers.get("host"), scope.get("server"), scope.get("http_version"))
    info.server_address, info.server_port, info.protocol_version = remembered(
        _details, key, _server_details, _DETAILS_LIMIT
    )
    query = scope.get("query_string")
    info.query = query.decode("latin-1") if query else None


def _server_details(
    key: tuple[str | None, Any, str | None],
) -> tuple[str | None, int | None, str | None]:
    host, server, version = key
    port: int | None = server[1] if server and len(server) > 1 else None
    if host and host[-1] != "]" and ":" in host:  # "name:port", but not a bare "[v6]"
        host, _, raw_port = host.rpartition(":")
        port = int(raw_port) if raw_port.isascii() and raw_port.isdigit() else port
    elif not host and server:
        host = server[0]
    return host or None, port, version


async def _send_answer(send: Send, answer: Any) -> None:
    """Send a guard's short answer (shed, rate limited, injected fault) instead of the app's."""
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers]
    try:
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})
    except OSError:  # the client is gone; the exchange still finishes
        pass


async def _send_error(send: Send, id_header: tuple[bytes, bytes]) -> bool:
    """Answer 500 with the request ID when the app raised before starting a response."""
    try:
        await send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [
                    (b"content-type", _ERROR_TYPE.encode()),
                    (b"content-length", str(len(ERROR_BODY)).encode()),
                    id_header,
                ],
            }
        )
        await send({"type": "http.response.body", "body": ERROR_BODY})
    except Exception:  # the client is gone; the app's exception is what gets raised
        return False
    return True


_ERROR_TYPE = "text/plain; charset=utf-8"


# -- Starlette / FastAPI (observekit.starlette, imported only when Starlette is in use) --


_route_template: Callable[[Scope], str | None] | None = None


def _starlette_route(exchange: Exchange, scope: Scope) -> str | None:
    """The template of the route Starlette matched (it sets ``scope["route"]``)."""
    global _route_template
    try:
        if _route_template is None:  # imported on the first routed request, not per request
            from .starlette import route_template

            _route_template = route_template
        return _route_template(scope)
    except Exception:
        exchange.observer.internal_error("reading Starlette's route template failed")
        return None


async def _app_error_handler(scope: Scope, receive: Receive, send: Send, exc: Exception) -> bool:
    """Render a Starlette app's own 500 handler through ``send`` (so it carries the ID)."""
    if not hasattr(scope["app"], "exception_handlers"):
        return False
    try:
        from .starlette import render_error_handler

        return await render_error_handler(scope, receive, send, exc)
    except Exception:
        # The handler itself failed: observekit's plain 500 answers instead.
        return False
