"""The request context: one ContextVar holding the current request's ID and bound fields."""

from __future__ import annotations

import logging
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any

from ._every import Every
from ._requestid import generate_request_id, is_valid_request_id, rejection_reason

__all__ = ["RequestContext", "bind", "current", "get_request_id", "request_context"]


class RequestContext:
    """The state of one request (or task): its ID and the fields bound to it.

    ``fields`` belongs to the request, not to a context copy: a value bound in a
    worker thread that runs with a copied context shows on the request's access
    line too.
    """

    __slots__ = ("fields", "request_id")

    def __init__(self, request_id: str, fields: dict[str, Any] | None = None) -> None:
        self.request_id = request_id
        self.fields: dict[str, Any] = {} if fields is None else fields

    def __repr__(self) -> str:
        return f"RequestContext(request_id={self.request_id!r}, fields={self.fields!r})"


_current: ContextVar[RequestContext | None] = ContextVar("observekit_request", default=None)
_rejections = Every(10.0)  # invalid IDs given to request_context: one WARNING per 10 s
current = _current.get


def enter(ctx: RequestContext) -> Token[RequestContext | None]:
    """Make ``ctx`` current; give the token to :func:`leave` in the same frame."""
    return _current.set(ctx)


def leave(token: Token[RequestContext | None]) -> None:
    """Undo :func:`enter`. A token from another context (a framework that copied it) is ignored."""
    try:
        _current.reset(token)
    except ValueError:
        _current.set(token.old_value if token.old_value is not Token.MISSING else None)


def get_request_id() -> str | None:
    """The current request's (or task's) ID, or ``None`` outside any."""
    ctx = _current.get()
    return None if ctx is None else ctx.request_id


def bind(**fields: Any) -> None:
    """Add ``fields`` to every later log line of the current request or task.

    Outside any request or :func:`request_context` there is nothing to bind to,
    and the call does nothing (so library code may call it unconditionally).
    """
    ctx = _current.get()
    if ctx is not None:
        ctx.fields.update(fields)


class request_context:  # noqa: N801 - used like a function: ``with request_context():``
    """Give work that is not an HTTP request (a worker task, a CLI job) a request context.

    ``request_id`` defaults to a new ID; an invalid one is replaced by a new ID and
    a WARNING names the reason (never the value), at most once per 10 seconds.
    ``fields`` are bound as by :func:`bind`. Works with ``with`` in sync and async
    code; each ``with`` gets its own context, restored when the block ends.
    """

    __slots__ = ("_ctx", "_token")

    def __init__(self, request_id: str | None = None, **fields: Any) -> None:
        if request_id is None:
            request_id = generate_request_id()
        elif not isinstance(request_id, str) or not is_valid_request_id(request_id):
            new_id = generate_request_id()
            reason = (
                f"not a string ({type(request_id).__name__})"
                if not isinstance(request_id, str)
                else rejection_reason(request_id)
            )
            held = _rejections.ready()
            if held is not None:
                logging.getLogger("observekit").warning(
                    "request_context got an invalid request_id (%s); using %s instead",
                    reason,
                    new_id,
                    extra={
                        "request_id": new_id,
                        "request_id.rejection": reason,
                        "request_id.rejections_suppressed": held,
                    },
                )
            request_id = new_id
        self._ctx = RequestContext(request_id, dict(fields))
        self._token: Token[RequestContext | None] | None = None

    @property
    def request_id(self) -> str:
        """The ID of this context."""
        return self._ctx.request_id

    def __enter__(self) -> request_context:
        self._token = _current.set(self._ctx)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            leave(self._token)
            self._token = None
