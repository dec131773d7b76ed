"""Ways the world around observekit can be broken, shared by the WSGI and ASGI robustness tests.

Each ``Hostile`` installs a broken logging piece, makes the app log something
that cannot be serialized, or configures a broken hook; the tests then check
that the response is exactly what the bare app gives.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import Any

import pytest

import observekit


def _spare(record: logging.LogRecord) -> bool:
    # asyncio logs "Using selector" while asyncio.run builds the loop, before
    # any request; a handler that fails on it would only break the test driver.
    return record.name == "asyncio"


class RaisingEmit(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if not _spare(record):
            raise RuntimeError("emit is broken")


class RaisingHandle(logging.Handler):
    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        if _spare(record):
            return True
        raise RuntimeError("handle is broken")


class RaisingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if _spare(record):
            return ""
        raise RuntimeError("format is broken")


class UnguardedHandler(logging.Handler):
    """A handler that formats without the try/except StreamHandler has."""

    def emit(self, record: logging.LogRecord) -> None:
        self.format(record)


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    __str__ = __repr__


def _circular() -> dict[str, Any]:
    circ: dict[str, Any] = {}
    circ["self"] = circ
    return circ


def _add_root_handler(handler: logging.Handler) -> Callable[[], None]:
    return lambda: logging.getLogger().addHandler(handler)


def _with_formatter(handler: logging.Handler) -> logging.Handler:
    handler.setFormatter(RaisingFormatter())
    return handler


def _raise() -> Any:
    raise RuntimeError("hook is broken")


def _detach_pytest_capture() -> None:
    # pytest's own capture handler re-raises formatting errors (its handleError
    # raises); the point here is what observekit's handler does with them.
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler).__module__.startswith("_pytest"):
            root.removeHandler(handler)


def _log_unserializable() -> None:
    logging.getLogger().info(
        "x", extra={"obj": object(), "circ": _circular(), "nan": float("nan"), "inf": float("inf")}
    )


def _log_unprintable() -> None:
    logging.getLogger("app").warning("y", extra={"bad": Unprintable(), "circ": _circular()})


def _log_bad_format_args() -> None:
    logging.getLogger("app").info("%d items", "not-a-number")


def _bind_unserializable() -> None:
    observekit.bind(nan=float("nan"), circ=_circular(), obj=object())


class Hostile:
    """One way the world around observekit can be broken."""

    def __init__(
        self,
        *,
        install: Callable[[], None] | None = None,
        app_does: Callable[[], None] | None = None,
        incoming: str = "not a valid id",
        internal: bool = False,
        **config: Any,
    ) -> None:
        self.install = install
        self.app_does = app_does
        self.incoming = incoming
        self.internal = internal
        self.config = config


HOSTILE = [
    pytest.param(
        Hostile(install=_add_root_handler(RaisingEmit()), internal=True), id="handler-emit-raises"
    ),
    pytest.param(
        Hostile(install=_add_root_handler(RaisingHandle()), internal=True),
        id="handler-handle-raises",
    ),
    pytest.param(
        Hostile(install=_add_root_handler(_with_formatter(UnguardedHandler())), internal=True),
        id="formatter-raises-unguarded-handler",
    ),
    pytest.param(
        Hostile(install=_add_root_handler(_with_formatter(logging.StreamHandler(io.StringIO())))),
        id="formatter-raises-stream-handler",
    ),
    pytest.param(Hostile(app_does=_log_unserializable), id="extra-object-circular-nan"),
    pytest.param(Hostile(app_does=_log_unprintable), id="extra-unprintable"),
    pytest.param(
        Hostile(install=_detach_pytest_capture, app_does=_log_bad_format_args), id="bad-format-args"
    ),
    pytest.param(Hostile(app_does=_bind_unserializable), id="bind-unserializable"),
    pytest.param(Hostile(request_id_generator=_raise, internal=True), id="generator-raises"),
    pytest.param(
        Hostile(request_id_generator=lambda: 42, internal=True), id="generator-returns-int"
    ),
    pytest.param(
        Hostile(request_id_generator=lambda: None, internal=True), id="generator-returns-none"
    ),
    pytest.param(
        Hostile(request_id_generator=lambda: "", internal=True), id="generator-returns-empty"
    ),
    pytest.param(
        Hostile(request_id_generator=lambda: "a\r\nb", internal=True), id="generator-returns-crlf"
    ),
    pytest.param(
        Hostile(request_id_validator=lambda value: _raise(), incoming="looks-valid", internal=True),
        id="validator-raises",
    ),
]
