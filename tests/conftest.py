"""Shared fixtures: a captured JSON log stream, and logging restored after every test."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

import observekit
from observekit import _context


class LogCapture:
    """The JSON lines observekit's formatter wrote during a test."""

    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self) -> list[dict[str, Any]]:
        """Every line, parsed; fails the test if any line is not one JSON object."""
        out = []
        for raw in self.text.splitlines():
            parsed = json.loads(raw)
            assert isinstance(parsed, dict), raw
            out.append(parsed)
        return out

    def by_logger(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line["logger"] == name]

    def access(self) -> list[dict[str, Any]]:
        return self.by_logger("observekit.access")

    def clear(self) -> None:
        self.stream.seek(0)
        self.stream.truncate()


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Leave the logging tree and the request context as each test found them."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    loggers = {
        name: (lg.level, lg.propagate, list(lg.handlers), lg.disabled, list(lg.filters))
        for name, lg in logging.Logger.manager.loggerDict.items()
        if isinstance(lg, logging.Logger)
    }
    token = _context._current.set(None)
    yield
    _context._current.reset(token)
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lg in logging.Logger.manager.loggerDict.items():
        if name not in loggers and isinstance(lg, logging.Logger):
            # Made during the test: back to a new logger's state for the next test.
            loggers[name] = (logging.NOTSET, True, [], False, [])
    for name, (lvl, propagate, hs, disabled, filters) in loggers.items():
        lg = logging.getLogger(name)
        lg.setLevel(lvl)
        lg.propagate = propagate
        lg.handlers[:] = hs
        lg.disabled = disabled
        lg.filters[:] = filters


@pytest.fixture
def config() -> observekit.Config:
    return observekit.Config(service_name="test-svc", service_version="1.2.3", environment="test")


@pytest.fixture
def logs(config: observekit.Config) -> LogCapture:
    """Root logger -> observekit JSON formatter -> an in-memory stream, at DEBUG."""
    stream = io.StringIO()
    observekit.logging.configure(config, stream=stream, level="DEBUG")
    return LogCapture(stream)
