"""aiohttp: one middleware for ``web.Application(middlewares=[...])``.

::

    import observekit.aiohttp

    config = observekit.Config.from_env()
    app = web.Application(middlewares=[observekit.aiohttp.middleware(config=config)])

The route template is the matched resource's canonical path
(``/items/{item_id}``); requests no route matched are ``unmatched``. Raised
``web.HTTPException`` responses (404, redirects) carry the request ID like any
other. An unhandled exception is logged once with its traceback and the request
ID, counted, and answered with a 500 that carries the ID (aiohttp's own
handler, which would log it again without the ID, does not see it);
cancellation (the client left) is re-raised.

Limitation: a ``StreamResponse`` that the handler prepares itself sends its
headers before the middleware sees it, so it carries no ``X-Request-ID``
header (its log lines and access line do carry the ID).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

try:
    from aiohttp import web
except ImportError:  # pragma: no cover - depends on the environment
    raise ImportError(
        'observekit.aiohttp needs aiohttp: pip install "observekit[aiohttp]"'
    ) from None

from ._config import Config
from ._core import ERROR_BODY, Exchange, Observer, RequestInfo

__all__ = ["middleware"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def middleware(*, config: Config | None = None, tracer_provider: Any = None) -> Any:
    """An aiohttp middleware for ``config`` (default ``Config()``); build it once per app."""
    observer = Observer(Config() if config is None else config, tracer_provider=tracer_provider)
    names = observer.header_names
    header = observer.response_header

    def begin(request: web.Request) -> Exchange | None:
        try:
            request_headers = request.headers
            headers = {}
            for name in names:
                value = request_headers.get(name)
                if value is not None:
                    headers[name] = value
            info = RequestInfo(
                request.method,
                request.path,
                headers,
                scheme=request.scheme,
                client=request.remote,
            )
            if observer.wants_details:
                info.server_address = request.host.rpartition(":")[0] or request.host
                info.protocol_version = f"{request.version.major}.{request.version.minor}"
                info.query = request.query_string or None
            return observer.begin(info)
        except Exception:
            observer.internal_error("starting the request failed")
            return None

    def respond(exchange: Exchange, request: web.Request, response: web.StreamResponse) -> None:
        try:
            resource = request.match_info.route.resource
            if resource is not None:
                exchange.route = resource.canonical
            if not response.prepared:
                response.headers[header] = exchange.request_id
            length = response.content_length
            exchange.response_started(
                response.status,
                response.headers.get("Content-Type"),
                None if length is None else str(length),
            )
        except Exception:
            observer.internal_error("reading the aiohttp response failed")

    @web.middleware
    async def observekit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        exchange = begin(request)
        if exchange is None:
            return await handler(request)
        token = exchange.enter()
        try:
            try:
                response = await handler(request)
            except web.HTTPException as raised:  # a response raised as an exception
                respond(exchange, request, raised)
                raise
            except Exception as exc:
                exchange.fail(exc)
                response = web.Response(
                    status=500, body=ERROR_BODY, content_type="text/plain", charset="utf-8"
                )
            except BaseException as exc:
                exchange.fail(exc)
                raise
            respond(exchange, request, response)
            return response
        finally:
            exchange.finish()
            exchange.exit(token)

    return observekit_middleware
