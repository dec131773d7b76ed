"""JSON log lines on stdout, carrying the request ID, built on python-json-logger.

Three ways in:

* ``observekit.logging.configure()`` points the root logger at stdout, one JSON
  object per line.
* ``JsonFormatter`` and ``ContextFilter`` for your own ``logging.config.dictConfig``
  (``{"()": "observekit.logging.JsonFormatter"}``), or the whole dict from
  :func:`dict_config`.
* Any other formatter can use ``%(request_id)s`` once ``ContextFilter`` is on its handler.

A line looks like::

    {"timestamp": "2026-11-25T07:11:00.123456Z", "level": "INFO", "logger": "app",
     "message": "charged card", "request_id": "4bf92f35...", "order": 42,
     "service.name": "checkout", "service.version": "1f3c9a2b7d10",
     "deployment.environment": "prod"}
"""

from __future__ import annotations

import json
import json.encoder
import logging
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from json.encoder import encode_basestring, encode_basestring_ascii
from typing import IO, Any, Literal

from pythonjsonlogger.json import JsonEncoder
from pythonjsonlogger.json import JsonFormatter as _BaseJsonFormatter

from . import _core
from ._access import DIGITS3, AccessValues, json_fields
from ._access import fields as access_fields
from ._config import Config
from ._context import RequestContext, current
from ._core import qualified_name

__all__ = [
    "ContextFilter",
    "JsonFormatter",
    "LineHandler",
    "configure",
    "dict_config",
    "use_trace_ids",
]

_MISSING: Any = object()
_REQUEST_ID = ', "request_id": '
_TRACE_ID = ', "trace_id": '
_SPAN_ID = ', "span_id": '

# Set by observekit.tracing once OpenTelemetry is in use: returns the current span's
# (trace_id, span_id) as hex, or None. A list so the hot path reads one cell.
_trace_source: list[Callable[[], tuple[str, str] | None] | None] = [None]


def use_trace_ids(source: Callable[[], tuple[str, str] | None] | None) -> None:
    """Have every line carry ``trace_id`` and ``span_id`` from ``source`` (None: stop).

    :func:`observekit.tracing.configure` calls this; it is public for other tracers.
    """
    _trace_source[0] = source


# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "request_id",
    "taskName",
}
_CORE_KEYS = frozenset(
    {"timestamp", "level", "logger", "message", "request_id", "trace_id", "span_id"}
)


def _timestamp_formatter() -> Callable[[float], str]:
    """RFC 3339 UTC with microseconds; the seconds part is formatted once per second."""
    cache: list[Any] = [-1, ""]

    def rfc3339(created: float) -> str:
        sec = int(created)
        usec = int((created - sec) * 1_000_000)
        if usec > 999_999:  # a float just under the next second can round up to it
            usec = 999_999
        cached_sec, prefix = cache
        if sec != cached_sec:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec))
            cache[:] = [sec, prefix]
        # Table look-ups, not a format spec: see observekit._access on cold C code.
        return f"{prefix}{DIGITS3[usec // 1000]}{DIGITS3[usec % 1000]}Z"

    return rfc3339


_rfc3339 = _timestamp_formatter()


class JsonFormatter(_BaseJsonFormatter):
    """One JSON object per record, with the request context and the service fields.

    A python-json-logger ``JsonFormatter`` (its encoder turns datetimes,
    exceptions, dataclasses, enums and bytes into JSON), with a fixed field
    layout: ``timestamp``, ``level``, ``logger``, ``message``, ``request_id``,
    the ``extra=`` and :func:`observekit.bind` fields, ``exception.*`` when the
    record carries one, then ``service.name``, ``service.version``,
    ``deployment.environment`` and ``deployment.id``. ``fmt`` is accepted for
    ``dictConfig`` compatibility and ignored.

    A value the encoder cannot serialize is written as its ``repr``; a record
    that still cannot be formatted becomes a line saying so, never an exception.
    """

    def __init__(
        self,
        *args: Any,
        config: Config | None = None,
        static_fields: Mapping[str, Any] | None = None,
        json_default: Callable[[Any], Any] | None = None,
        json_encoder: type[json.JSONEncoder] | None = None,
        json_ensure_ascii: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            *args,
            static_fields=dict(static_fields or {}),
            json_default=json_default,
            json_encoder=json_encoder,
            json_ensure_ascii=json_ensure_ascii,
            **kwargs,
        )
        if config is None:
            config = Config.from_env()
        self.config = config
        service: dict[str, Any] = {
            "service.name": config.service_name,
            "service.version": config.resolved_service_version(),
            "deployment.environment": config.environment or "unknown",
        }
        if config.deployment_id is not None:
            service["deployment.id"] = config.deployment_id
        service.update(self.static_fields)
        encoder_cls = json_encoder or JsonEncoder
        self._encoder = encoder_cls(
            ensure_ascii=json_ensure_ascii, allow_nan=False, default=json_default
        )
        self._iterencode = self._make_iterencode()
        # The string escaper the C encoder uses, for lines written without it (access
        # lines); None when this formatter's encoder is not the stock one.
        self._escape: Callable[[str], str] | None = (
            None
            if self._iterencode is None
            else encode_basestring_ascii
            if json_ensure_ascii
            else encode_basestring
        )
        self._heads: dict[tuple[int, str], str] = {}
        # Fixed fields are serialized once and appended to every line.
        self._suffix = ", " + self._encoder.encode(service)[1:]
        self._skip = _RECORD_ATTRS
        # Fields a line writes itself: an extra= or bind() field of the same name is
        # kept as "extra.<name>" rather than written twice or dropped.
        self._protected = _CORE_KEYS | frozenset(service)

    def _make_iterencode(self) -> Callable[[Any, int], list[str]] | None:
        """A reusable C encoder: ``JSONEncoder.encode`` builds a new one on every call."""
        enc = self._encoder
        # None on interpreters without the C accelerator (PyPy): fall back to encode().
        c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
        if c_make_encoder is None or type(enc).encode is not json.JSONEncoder.encode:
            return None
        escape = encode_basestring_ascii if enc.ensure_ascii else encode_basestring
        # markers=None: no shared cycle-tracking dict, so one encoder is safe across
        # threads; a cycle then ends in RecursionError, which format() handles.
        made: Callable[[Any, int], list[str]] = c_make_encoder(
            None, enc.default, escape, None, ": ", ", ", False, False, False
        )
        return made

    def _encode(self, data: dict[str, Any]) -> str:
        iterencode = self._iterencode
        if iterencode is None:
            return self._encoder.encode(data)[:-1] + self._suffix
        chunks = iterencode(data, 0)
        body = chunks[0] if len(chunks) == 1 else "".join(chunks)
        return body[:-1] + self._suffix

    def format(self, record: logging.LogRecord) -> str:
        try:
            return self._format(record)
        except Exception as exc:  # a formatter must not raise into the logging call
            return (
                self._encoder.encode(
                    {
                        "timestamp": _rfc3339(time.time()),
                        "level": "ERROR",
                        "logger": "observekit.logging",
                        "message": "log record could not be formatted",
                        "error.type": type(exc).__name__,
                        "log.logger": _safe_str(getattr(record, "name", None)),
                    }
                )[:-1]
                + self._suffix
            )

    def _format(self, record: logging.LogRecord) -> str:
        attrs = record.__dict__
        out: dict[str, Any] = {
            "timestamp": _rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        ctx: RequestContext | None = attrs.get("_observekit_ctx", _MISSING)
        if ctx is _MISSING:
            ctx = current()
        if ctx is not None:
            out["request_id"] = ctx.request_id
        else:
            rid = attrs.get("request_id")
            if rid is not None and rid != "-":
                out["request_id"] = rid
        ids = attrs.get("_observekit_trace", _MISSING)
        if ids is _MISSING:
            source = _trace_source[0]
            ids = None if source is None else _safe_call(source)
        if ids is not None:
            out["trace_id"], out["span_id"] = ids
        fields = attrs.get("_observekit_fields")
        if fields is not None and len(attrs) == attrs.get("_observekit_size"):
            out.update(fields)  # an observekit record nothing was added to: its own fields
        else:
            skip, protected = self._skip, self._protected
            for key, value in attrs.items():
                if key not in skip and key[0] != "_":
                    out[key if key not in protected else "extra." + key] = value
        if ctx is not None and ctx.fields:
            self._add_bound(out, ctx)
        if record.exc_info:
            exc = record.exc_info[1]
            if exc is not None:
                out["exception.type"] = qualified_name(type(exc))
                out["exception.message"] = _safe_str(exc)
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception.stacktrace"] = record.exc_text
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return self._line(out)

    def _add_bound(self, out: dict[str, Any], ctx: RequestContext) -> None:
        # bind() fields come after extra= and never replace a field of this call.
        protected = self._protected
        for key, value in ctx.fields.items():
            if key in protected:
                key = "extra." + key
            if key not in out:
                out[key] = value

    def _line(self, out: dict[str, Any]) -> str:
        try:
            line = self._encode(out)
        except (TypeError, ValueError, OverflowError, RecursionError):
            line = self._encode({key: self._safe_value(v) for key, v in out.items()})
        return self.prefix + line if self.prefix else line

    def format_fields(
        self,
        created: float,
        level: str,
        logger: str,
        message: str,
        fields: dict[str, Any],
        ctx: RequestContext | Literal[False] | None = False,
        ids: tuple[str, str] | Literal[False] | None = False,
    ) -> str:
        """The line :meth:`format` writes for a record of these values and ``extra=fields``.

        For observekit's own lines, which need no ``LogRecord`` when nothing but
        this formatter would see one. ``fields`` must not use the core keys.
        ``ctx`` (the request context) and ``ids`` (``(trace_id, span_id)``) are
        read from the current context when left ``False``.
        """
        out: dict[str, Any] = {
            "timestamp": _rfc3339(created),
            "level": level,
            "logger": logger,
            "message": message,
        }
        if ctx is False:
            ctx = current()
        if ctx is not None:
            out["request_id"] = ctx.request_id
        if ids is False:
            source = _trace_source[0]
            ids = None if source is None else _safe_call(source)
        if ids is not None:
            out["trace_id"], out["span_id"] = ids
        out.update(fields)
        if ctx is not None and ctx.fields:
            self._add_bound(out, ctx)
        return self._line(out)

    def format_access(
        self,
        created: float,
        levelno: int,
        logger: str,
        message: str,
        values: AccessValues,
        ctx: RequestContext | None,
        ids: tuple[str, str] | Literal[False] | None,
    ) -> str:
        """The line :meth:`format` writes for observekit's access record of ``values``.

        ``ctx`` is the request's context; ``ids`` its span's ``(trace_id, span_id)``,
        None without a sampled span, or ``False`` to read the current span's.
        Written without the JSON encoder's pass over a dict (see ``observekit._access``);
        anything unusual (another encoder, a value of an unexpected type, ``bind()``
        fields) goes through :meth:`format_fields`, which writes the same line.
        """
        if ids is False:
            source = _trace_source[0]
            ids = None if source is None else _safe_call(source)
        escape = self._escape
        if escape is None:
            return self._access_fallback(created, levelno, logger, message, values, ctx, ids)
        try:
            head = self._heads.get((levelno, logger))
            if head is None:
                head = self._head(levelno, logger, escape)
            line = (
                f'{{"timestamp": "{_rfc3339(created)}", {head}, "message": {escape(message)}'
                f"{'' if ctx is None else _REQUEST_ID + escape(ctx.request_id)}"
                f"{'' if ids is None else _TRACE_ID + escape(ids[0]) + _SPAN_ID + escape(ids[1])}"
                f"{json_fields(escape, values)}"
                f"{'' if ctx is None or not ctx.fields else self._bound_json(ctx.fields, values)}"
                f"{self._suffix}"
            )
        except Exception:
            return self._access_fallback(created, levelno, logger, message, values, ctx, ids)
        return self.prefix + line if self.prefix else line

    def _bound_json(self, bound: dict[str, Any], values: AccessValues) -> str:
        """``bind()`` fields as JSON members after ``", "``, as :meth:`_add_bound` adds them."""
        present = access_fields(values)
        protected = self._protected
        extra: dict[str, Any] = {}
        for key, value in bound.items():
            if key in protected:
                key = "extra." + key
            if key not in present and key not in extra:
                extra[key] = value
        if not extra:
            return ""
        assert self._iterencode is not None  # format_access runs only with the C encoder
        return ", " + "".join(self._iterencode(extra, 0))[1:-1]

    def _head(self, levelno: int, logger: str, escape: Callable[[str], str]) -> str:
        head = f'"level": {escape(logging.getLevelName(levelno))}, "logger": {escape(logger)}'
        if len(self._heads) < 64:  # a handful of (level, logger) pairs in practice
            self._heads[(levelno, logger)] = head
        return head

    def _access_fallback(
        self,
        created: float,
        levelno: int,
        logger: str,
        message: str,
        values: AccessValues,
        ctx: RequestContext | None,
        ids: tuple[str, str] | None,
    ) -> str:
        return self.format_fields(
            created, logging.getLevelName(levelno), logger, message, access_fields(values), ctx, ids
        )

    def _safe_value(self, value: Any) -> Any:
        try:
            self._encoder.encode(value)
        except Exception:
            return _safe_str(value, use_repr=True)
        return value

    def formatException(self, ei: Any) -> str:  # noqa: N802
        return "".join(traceback.format_exception(*ei)).rstrip("\n")


def _safe_call(source: Callable[[], tuple[str, str] | None]) -> tuple[str, str] | None:
    try:
        return source()
    except Exception:
        return None


def _safe_str(value: object, *, use_repr: bool = False) -> str:
    try:
        return repr(value) if use_repr else str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


class ContextFilter(logging.Filter):
    """Captures the request context on the record, on the thread that logs.

    Put it on a handler so that ``%(request_id)s`` works in plain-text formats
    and so that the context survives handlers that format later on another
    thread (``QueueHandler``). It never drops a record. Outside a request,
    ``request_id`` is ``"-"`` for text formats; the JSON formatter omits it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            attrs = record.__dict__
            if "_observekit_ctx" not in attrs:
                ctx = current()
                attrs["_observekit_ctx"] = ctx
                source = _trace_source[0]
                if source is not None:
                    attrs["_observekit_trace"] = _safe_call(source)
                if ctx is not None:
                    attrs["request_id"] = ctx.request_id
                elif "request_id" not in attrs:
                    attrs["request_id"] = "-"
        except Exception:  # a filter that raises would break the caller's log call
            return True
        return True


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A ``StreamHandler`` that writes each record as one line and flushes it.

    The same output as ``logging.StreamHandler``, with less work per line: it
    flushes under the lock ``handle()`` already holds instead of taking it again.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = self.stream
            stream.write(self.format(record) + "\n")
            stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def _write_direct(
    logger: logging.Logger,
    levelno: int,
    message: str,
    values: AccessValues,
    ctx: RequestContext | None,
    ids: tuple[str, str] | Literal[False] | None,
) -> bool:
    """Write an access line straight to the one handler it would reach; False if not.

    True only when ``logger.handle()`` would pass the record to exactly one
    handler, a :class:`LineHandler` with this module's :class:`JsonFormatter`
    and no filters anywhere on the way: then the line written is the one that
    path writes, without building a ``LogRecord`` or walking the handler chain
    for it, which is most of an access line's cost under a real server. Any other
    set-up (more handlers, filters, a subclass, a handler above the level) gets
    False and the caller logs the usual way. The caller has checked
    ``logger.isEnabledFor(levelno)``.
    """
    if logger.filters or logger.disabled or type(logger) is not logging.Logger:
        return False
    found: LineHandler | None = None
    node: logging.Logger | None = logger
    while node is not None:
        for handler in node.handlers:
            if (
                found is not None
                or type(handler) is not LineHandler
                or handler.filters
                or type(handler.formatter) is not JsonFormatter
                or levelno < handler.level
            ):
                return False
            found = handler
        node = node.parent if node.propagate else None
    if found is None:
        return False
    lock = found.lock
    if lock is None:
        return False
    formatter: JsonFormatter = found.formatter  # type: ignore[assignment]
    line = formatter.format_access(time.time(), levelno, logger.name, message, values, ctx, ids)
    with lock:  # what Handler.acquire() and release() do, without their two calls
        try:
            stream = found.stream
            stream.write(line + "\n")
            stream.flush()
        except RecursionError:
            raise
        except Exception:
            found.handleError(logger.makeRecord(logger.name, levelno, "", 0, message, (), None))
    return True


_core._direct_writer[0] = _write_direct

_HANDLER_MARK = "_observekit_configured"


def configure(
    config: Config | None = None,
    *,
    level: str | int | None = None,
    stream: IO[str] | None = None,
    replace: bool = True,
) -> LineHandler:
    """Send the root logger to stdout as one JSON object per line.

    ``config`` supplies the service fields and the level (default
    ``Config.from_env()``); ``level`` overrides it. With ``replace`` (the
    default) the root logger's existing handlers are removed, as
    ``logging.basicConfig(force=True)`` does, so nothing else writes to the
    same stream; calling it again replaces its own handler either way.
    Returns the handler it installed.
    """
    if config is None:
        config = Config.from_env()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if replace or getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
            if getattr(handler, _HANDLER_MARK, False):
                handler.close()
    handler = LineHandler(sys.stdout if stream is None else stream)
    # No ContextFilter needed: this handler formats on the logging thread, where
    # the formatter reads the context itself.
    handler.setFormatter(JsonFormatter(config=config))
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(level if level is not None else config.log_level)
    return handler


def dict_config(config: Config | None = None, *, level: str | None = None) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dict equivalent to :func:`configure`.

    For frameworks that take a logging dict (Django's ``LOGGING``, uvicorn's
    ``log_config``). The service fields come from ``config`` or, when it is
    ``None``, from the environment when the formatter is built.
    """
    formatter: dict[str, Any] = {"()": "observekit.logging.JsonFormatter"}
    if config is not None:
        formatter["config"] = config
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"observekit_context": {"()": "observekit.logging.ContextFilter"}},
        "formatters": {"observekit_json": formatter},
        "handlers": {
            "observekit_stdout": {
                "class": "observekit.logging.LineHandler",
                "stream": "ext://sys.stdout",
                "formatter": "observekit_json",
                "filters": ["observekit_context"],
            }
        },
        "root": {
            "handlers": ["observekit_stdout"],
            "level": level or (config.log_level if config is not None else "INFO"),
        },
    }
