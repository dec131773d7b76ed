"""The access line's direct path: written straight to the one JSON handler, same bytes as logging.

Under pytest the root logger also carries pytest's own capture handlers, which
keep every other test on the ``logging.handle()`` path; these tests take them
off (``Setup.only``) so that observekit's handler is the only one, as after ``configure()`` in
a service.
"""

from __future__ import annotations

import io
import json
import logging
import random
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import observekit
from observekit import Config
from observekit import _core as core
from observekit._access import AccessValues, duration_text
from observekit._access import fields as access_fields
from observekit._context import RequestContext, current, enter, leave
from observekit.logging import JsonFormatter, LineHandler, use_trace_ids
from observekit.wsgi import ObservabilityMiddleware

from .util import call

ACCESS = "observekit.access"


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    observekit.bind(tenant="acme", order=42)
    status = "500 Boom" if environ["PATH_INFO"] == "/fail" else "200 OK"
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


class Setup:
    """observekit's handler alone on the root logger, and a count of records built."""

    def __init__(self, handler: LineHandler, stream: io.StringIO) -> None:
        self.handler = handler
        self.stream = stream
        self.records = 0

    def only(self) -> None:
        """Take pytest's capture handlers (added around the test body) off the root logger."""
        logging.getLogger().handlers[:] = [self.handler]

    def lines(self) -> list[str]:
        return [ln for ln in self.stream.getvalue().splitlines() if f'"logger": "{ACCESS}"' in ln]


@pytest.fixture
def alone(config: Config, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    stream = io.StringIO()
    handler = observekit.logging.configure(config, stream=stream, level="DEBUG")
    root = logging.getLogger()
    kept = list(root.handlers)
    setup = Setup(handler, stream)
    original = core._RecordMaker.__call__

    def counting(self: core._RecordMaker, *args: Any) -> logging.LogRecord:
        setup.records += 1
        return original(self, *args)

    monkeypatch.setattr(core._RecordMaker, "__call__", counting)
    use_trace_ids(lambda: ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"))
    try:
        yield setup
    finally:
        use_trace_ids(None)
        root.handlers[:] = kept


def _without_timing(line: str) -> list[tuple[str, Any]]:
    """The line's fields in order, minus the two that differ between any two requests."""
    return [(k, v) for k, v in json.loads(line).items() if k not in {"timestamp", "duration_ms"}]


@pytest.mark.parametrize(
    "path", [pytest.param("/ok", id="info"), pytest.param("/fail", id="error")]
)
def test_direct_line_equals_the_logging_path_line(alone: Setup, config: Config, path: str) -> None:
    """With only observekit's handler the line is written without a LogRecord, and it is
    the very line the logging path writes: same fields, values and order."""
    alone.only()
    mw = ObservabilityMiddleware(app, config=config)
    call(mw, path, headers={"X-Request-ID": "same-id", "User-Agent": "t/1"})
    assert alone.records == 0  # the direct path built no record
    alone.handler.addFilter(lambda record: True)  # any filter: logging.handle() must run it
    call(mw, path, headers={"X-Request-ID": "same-id", "User-Agent": "t/1"})
    assert alone.records == 1
    direct, logged = alone.lines()
    assert _without_timing(direct) == _without_timing(logged)
    fields = dict(_without_timing(direct))
    assert fields["request_id"] == "same-id"
    assert fields["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert fields["tenant"] == "acme"
    assert fields["level"] == ("ERROR" if path == "/fail" else "INFO")
    assert fields["service.name"] == "test-svc"


def _timeless(line: str) -> str:
    """The line as written, minus the two values that differ between two requests."""
    line = re.sub(r'"timestamp": "[^"]*"', '"timestamp": ""', line)
    return re.sub(r'"duration_ms": [0-9.e-]+', '"duration_ms": 0', line)


def plain_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """No bind(): the line is written by ``format_access``'s template, not the fallback."""
    path = environ["PATH_INFO"]
    headers = [("Content-Length", "2")]
    if path.startswith("/typed"):
        headers.append(("Content-Type", 'text/plain; name="x\\y"'))
    start_response("503 Busy" if path.endswith("/down") else "200 OK", headers)
    return [b"ok"]


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        pytest.param("/", {}, id="minimal"),
        pytest.param(
            "/typed/caf\u00e9",
            {"Content-Type": "application/json", "Content-Length": "0", "User-Agent": 'q"\\ \t'},
            id="all-headers-escapes",
        ),
        pytest.param("/x/down", {"Content-Length": "\u00b2", "User-Agent": "\u00fc"}, id="error"),
    ],
)
@pytest.mark.parametrize("ascii_only", [True, False], ids=["ascii", "utf8"])
def test_the_access_template_writes_the_logging_path_line(
    alone: Setup,
    config: Config,
    path: str,
    headers: dict[str, str],
    ascii_only: bool,
) -> None:
    """The f-string template (no bind() fields) writes byte for byte the line the
    logging path's JSON encoder writes, whatever must be escaped, for either
    ``json_ensure_ascii``; a superscript digit in Content-Length is no size."""
    alone.handler.setFormatter(JsonFormatter(config=config, json_ensure_ascii=ascii_only))
    alone.only()
    fallbacks: list[str] = []
    fallback = JsonFormatter._access_fallback
    JsonFormatter._access_fallback = lambda self, *args: fallbacks.append("used") or ""  # type: ignore[method-assign]
    mw = ObservabilityMiddleware(plain_app, config=config)
    request_headers = {"X-Request-ID": "rid-7", **headers}
    try:
        call(mw, path, headers=request_headers)
    finally:
        JsonFormatter._access_fallback = fallback  # type: ignore[method-assign]
    assert alone.records == 0
    assert fallbacks == []
    alone.handler.addFilter(lambda record: True)
    call(mw, path, headers=request_headers)
    assert alone.records == 1
    direct, logged = alone.lines()
    assert _timeless(direct) == _timeless(logged)
    line = json.loads(direct)
    assert line["request_id"] == "rid-7"
    assert line["url.path"].startswith(path[:6])
    assert ("http.request.body.size" in line) == (headers.get("Content-Length") == "0")
    if ascii_only:
        assert direct.isascii()
    elif path != "/":
        assert not direct.isascii()


def test_format_access_equals_format_fields_for_random_values(config: Config) -> None:
    """Random strings (quotes, control characters, non-ASCII, surrogates), sizes, absent
    fields and bind() fields: the template and the encoder agree on every line."""
    rng = random.Random(7)
    alphabet = 'ab/"\\\n\t\x00\x1f\u00e9\u2028\U0001f600\ud800 '

    def text() -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))

    def maybe(make: Callable[[], Any]) -> Any:
        return make() if rng.random() < 0.5 else None

    for ascii_only in (True, False):
        formatter = JsonFormatter(config=config, json_ensure_ascii=ascii_only)
        for _ in range(300):
            values: AccessValues = (
                text(),
                text(),
                text(),
                maybe(text),
                rng.randrange(100, 600),
                rng.randrange(0, rng.choice([10, 10**4, 10**7, 10**12, 10**15])),
                maybe(text),
                maybe(lambda: rng.randrange(0, 1 << 40)),
                maybe(text),
                rng.randrange(0, 1 << 20),
                maybe(text),
                maybe(text),
                maybe(text),
                maybe(text),
            )
            level = rng.choice([logging.INFO, logging.ERROR])
            message = text()
            # bind() fields, some named like a line's own (kept as extra.<name> or dropped).
            names = [text(), "url.path", "http.route", "request_id", "service.name"]
            bound = {
                rng.choice(names): rng.choice([text(), 7, None, [1], object()]) for _ in range(3)
            }
            token = enter(RequestContext(text(), bound)) if rng.random() < 0.8 else None
            try:
                expected = formatter.format_fields(
                    1.7e9, logging.getLevelName(level), ACCESS, message, access_fields(values)
                )
                ctx = current()
                assert (
                    formatter.format_access(1.7e9, level, ACCESS, message, values, ctx, False)
                    == expected
                )
            finally:
                if token is not None:
                    leave(token)


def _second_handler(setup: Setup) -> None:
    logging.getLogger().addHandler(logging.StreamHandler(setup.stream))


def _logger_filter(setup: Setup) -> None:
    logging.getLogger(ACCESS).addFilter(lambda record: True)


def _subclass(setup: Setup) -> None:
    class Mine(LineHandler):
        pass

    mine = Mine(setup.stream)
    mine.setFormatter(setup.handler.formatter)
    logging.getLogger().handlers[:] = [mine]


def _other_formatter(setup: Setup) -> None:
    class Mine(JsonFormatter):
        pass

    setup.handler.setFormatter(Mine(config=Config(service_name="test-svc")))


def _own_handler_not_propagating(setup: Setup) -> None:
    access = logging.getLogger(ACCESS)
    own = logging.StreamHandler(setup.stream)
    own.setFormatter(setup.handler.formatter)
    access.addHandler(own)
    access.propagate = False


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(_second_handler, id="second-handler"),
        pytest.param(_logger_filter, id="filter-on-logger"),
        pytest.param(_subclass, id="handler-subclass"),
        pytest.param(_other_formatter, id="formatter-subclass"),
        pytest.param(_own_handler_not_propagating, id="own-handler-no-propagation"),
    ],
)
def test_anything_else_goes_through_logging(
    alone: Setup, config: Config, change: Callable[[Setup], None]
) -> None:
    """Any set-up but our one handler gets the ordinary logging path, so every handler,
    filter and subclass sees the record it expects."""
    alone.only()
    change(alone)
    call(ObservabilityMiddleware(app, config=config), "/ok", headers={"X-Request-ID": "r-1"})
    assert alone.records == 1
    assert alone.lines()
    assert all(json.loads(ln)["request_id"] == "r-1" for ln in alone.lines())


def test_handler_level_above_the_line_writes_nothing(alone: Setup, config: Config) -> None:
    """A handler set above INFO drops INFO access lines and still gets ERROR ones."""
    alone.only()
    alone.handler.setLevel(logging.WARNING)
    mw = ObservabilityMiddleware(app, config=config)
    call(mw, "/ok")
    assert alone.lines() == []
    call(mw, "/fail")
    assert [json.loads(ln)["level"] for ln in alone.lines()] == ["ERROR"]


class BrokenStream(io.StringIO):
    def write(self, s: str) -> int:
        raise OSError("disk full")


def test_a_failing_stream_is_reported_like_logging_does_and_the_request_goes_on(
    alone: Setup, config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    """A write that fails goes to Handler.handleError (logging's "--- Logging error ---"),
    never to the client."""
    alone.only()
    alone.handler.setStream(BrokenStream())
    result = call(ObservabilityMiddleware(app, config=config), "/ok")
    assert alone.records == 0  # on the direct path
    assert result.status == "200 OK"
    assert result.body == b"hello"
    err = capsys.readouterr().err
    assert "--- Logging error ---" in err
    assert "OSError: disk full" in err


@pytest.mark.parametrize(
    "us", [0, 1, 10, 100, 999, 1000, 1001, 68_000, 12_345_678, 10**12 - 1, 10**12, 10**15 + 7]
)
def test_duration_text_is_the_float_repr(us: int) -> None:
    """Written from the integer, the milliseconds read as the logging path's float writes them."""
    assert duration_text(us) == repr(us / 1000)


def test_duration_text_agrees_with_repr_on_random_values() -> None:
    """Every magnitude up to the integer fallback and past it."""
    rng = random.Random(11)
    for _ in range(20_000):
        us = rng.randrange(0, 10 ** rng.randrange(1, 16))
        assert duration_text(us) == repr(us / 1000), us
