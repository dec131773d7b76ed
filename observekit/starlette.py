"""Starlette / FastAPI: the route template from Starlette's routing, and its 500 handler.

The adapter is the ASGI middleware itself::

    from observekit.asgi import ObservabilityMiddleware

    app.add_middleware(ObservabilityMiddleware, config=observekit.Config.from_env())

After the application ran, the middleware finds the route Starlette matched in
``scope["route"]`` and asks this module for its template: ``/items/{item_id}``,
with the paths of every ``Mount`` and mounted sub-application on the way
composed in front (``/api/v1/items/{item_id}``). The templates are worked out
once per application from its route tree (and again when a route shows up that
was added later), so a request costs one dictionary look-up.

When the application raised and a ``500``/``Exception`` handler is registered
(``app.add_exception_handler(Exception, ...)``, FastAPI's
``@app.exception_handler(Exception)``), the middleware renders that handler's
response itself, so it carries the request ID; Starlette's own error middleware,
which sits outside every ``add_middleware`` middleware, then sees the response
is already sent and only re-raises.
"""

from __future__ import annotations

import threading
from typing import Any

try:
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.routing import Host, Mount, compile_path
except ImportError:  # pragma: no cover - depends on the environment
    raise ImportError(
        'observekit.starlette needs Starlette: pip install "observekit[starlette]"'
    ) from None

from ._types import Receive, Scope, Send

__all__ = ["render_error_handler", "route_template"]

_MOUNT_SUFFIX = "/{path}"


class _Table:
    """Route object (by identity) -> its full template, for one top-level router."""

    __slots__ = ("_keep", "ambiguous", "router", "templates")

    def __init__(self, router: Any) -> None:
        self.router = router  # kept alive: the ids below must stay its routes'
        self.templates: dict[int, str] = {}
        self.ambiguous: dict[int, list[tuple[Any, str]]] = {}
        seen: dict[int, list[str]] = {}
        keep: list[Any] = []
        _walk(getattr(router, "routes", ()), "", seen, keep, 0)
        for key, templates in seen.items():
            unique = list(dict.fromkeys(templates))
            if len(unique) == 1:
                self.templates[key] = unique[0]
            else:
                # One Route object under two mounts: tell them apart by the path.
                self.ambiguous[key] = [(compile_path(t)[0], t) for t in unique]
        self._keep = keep


def _walk(
    routes: Any, prefix: str, seen: dict[int, list[str]], keep: list[Any], depth: int
) -> None:
    if depth > 32:  # a mount cycle; real route trees are a few levels deep
        return
    for route in routes:
        keep.append(route)
        if isinstance(route, Host):
            _walk(route.routes, prefix, seen, keep, depth + 1)
            continue
        path_format = getattr(route, "path_format", None)
        if not isinstance(path_format, str):
            continue
        seen.setdefault(id(route), []).append(prefix + path_format)
        if isinstance(route, Mount):
            inner = (
                path_format[: -len(_MOUNT_SUFFIX)] if path_format.endswith(_MOUNT_SUFFIX) else ""
            )
            _walk(route.routes, prefix + inner, seen, keep, depth + 1)


_tables: dict[int, _Table] = {}
_lock = threading.Lock()


def _table(router: Any, *, rebuild: bool = False) -> _Table:
    table = _tables.get(id(router))
    if table is None or table.router is not router or rebuild:
        with _lock:
            table = _Table(router)
            _tables[id(router)] = table
    return table


def route_template(scope: Scope) -> str | None:
    """The full template of the route Starlette matched for ``scope``, or None.

    None when nothing matched (a 404, a slash redirect): the request is counted
    as ``unmatched``. A route the tree walk cannot reach (inside a mounted app
    that hides its routes behind a middleware) gives its own template alone.
    """
    route = scope.get("route")
    router = scope.get("router")
    if route is None or router is None:
        return None
    key = id(route)
    table = _table(router)
    template = table.templates.get(key)
    if template is not None:
        return template
    candidates = table.ambiguous.get(key)
    if candidates is None:
        table = _table(router, rebuild=True)  # a route added after the first request
        template = table.templates.get(key)
        if template is not None:
            return template
        candidates = table.ambiguous.get(key)
        if candidates is None:
            own = getattr(route, "path_format", None)
            own = own if isinstance(own, str) else None
            if own is not None:
                table.templates[key] = own
                table._keep.append(route)
            return own
    path: str = scope.get("path", "")
    root: str = scope.get("app_root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    for regex, template in candidates:
        if regex.match(path):
            return template
    return candidates[0][1]


async def render_error_handler(scope: Scope, receive: Receive, send: Send, exc: Exception) -> bool:
    """Send the response of the Starlette app's ``500``/``Exception`` handler for ``exc``.

    False (nothing sent) when ``scope`` has no Starlette app with such a handler,
    or the app is in debug mode (Starlette's debug page is then what answers).
    """
    app = scope.get("app")
    handlers = getattr(app, "exception_handlers", None)
    if not isinstance(handlers, dict) or getattr(app, "debug", False):
        return False
    handler = handlers.get(500) or handlers.get(Exception)
    if handler is None:
        return False
    request = Request(scope)
    if _is_async(handler):
        response = await handler(request, exc)
    else:
        response = await run_in_threadpool(handler, request, exc)
    if response is None:
        return False
    await response(scope, receive, send)
    return True


def _is_async(handler: Any) -> bool:
    import inspect

    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - a callable object's async __call__
    )
