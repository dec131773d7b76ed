"""JSON log lines: fields, context, exceptions, access lines, sampling and safety."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import logging.handlers
import math
import os
import queue
import random
import re
import threading
import time
from datetime import datetime, timezone
from typing import Any

import pytest

import observekit
from observekit import Config
from observekit import _core as core
from observekit.logging import ContextFilter, JsonFormatter
from observekit.wsgi import ObservabilityMiddleware

from .conftest import LogCapture
from .util import call

RFC3339_UTC_US = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def strict_json(line: str) -> dict[str, Any]:
    def reject(name: str) -> Any:
        raise ValueError(f"non-standard JSON constant {name}")

    parsed = json.loads(line, parse_constant=reject)
    assert isinstance(parsed, dict)
    return parsed


def ok_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    logging.getLogger("app").info("handling", extra={"order": 42})
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


def test_configure_writes_json_lines_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    """configure() sends the root logger to stdout, one JSON object per line with the standard fields."""
    observekit.logging.configure(
        Config(
            service_name="shop", service_version="3.1", environment="prod", deployment_id="rel-9"
        )
    )
    before = time.time()
    logging.getLogger("app.orders").warning("low stock %s", "sku-1", extra={"sku": "sku-1"})
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1
    line = strict_json(out[0])
    assert list(line)[:4] == ["timestamp", "level", "logger", "message"]
    assert RFC3339_UTC_US.fullmatch(line["timestamp"])
    stamp = datetime.strptime(line["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=timezone.utc
    )
    assert abs(stamp.timestamp() - before) < 5
    assert line["level"] == "WARNING"
    assert line["logger"] == "app.orders"
    assert line["message"] == "low stock sku-1"
    assert line["sku"] == "sku-1"
    assert line["service.name"] == "shop"
    assert line["service.version"] == "3.1"
    assert line["deployment.environment"] == "prod"
    assert line["deployment.id"] == "rel-9"
    assert "request_id" not in line


def test_configure_is_idempotent_and_replaces_root_handlers() -> None:
    """Calling configure() twice leaves one handler; other root handlers are replaced by default."""
    other = logging.StreamHandler(io.StringIO())
    logging.getLogger().addHandler(other)
    stream = io.StringIO()
    observekit.logging.configure(Config(), stream=stream)
    observekit.logging.configure(Config(), stream=stream)
    assert logging.getLogger().handlers[-1].stream is stream  # type: ignore[attr-defined]
    assert len(logging.getLogger().handlers) == 1
    logging.getLogger("x").warning("once")
    assert len(stream.getvalue().splitlines()) == 1


def test_request_lines_carry_id_and_outside_lines_do_not(logs: LogCapture, config: Config) -> None:
    """Lines inside a request carry its ID; lines after it carry none (no stale ID)."""
    app = ObservabilityMiddleware(ok_app, config=config)
    call(app, headers={"X-Request-ID": "req-1"})
    logging.getLogger("app").info("after")
    app_lines = logs.by_logger("app")
    assert app_lines[0]["request_id"] == "req-1"
    assert app_lines[0]["order"] == 42
    assert "request_id" not in app_lines[1]


def test_bind_and_extra_are_merged(logs: LogCapture, config: Config) -> None:
    """bind() fields reach every later line of the request, the access line included; extra= wins on a clash."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        logging.getLogger("app").info("before bind")
        observekit.bind(user_id="u-7", tenant="acme")
        logging.getLogger("app").info("after bind", extra={"tenant": "override"})
        start_response("204 No Content", [])
        return []

    call(ObservabilityMiddleware(app, config=config))
    before, after = logs.by_logger("app")
    assert "user_id" not in before
    assert after["user_id"] == "u-7"
    assert after["tenant"] == "override"
    (access,) = logs.access()
    assert access["user_id"] == "u-7"
    assert access["tenant"] == "acme"


def test_exception_adds_traceback(logs: LogCapture) -> None:
    """logger.exception() adds the type, message and formatted traceback."""
    with observekit.request_context(request_id="job-1"):
        try:
            raise KeyError("missing")
        except KeyError:
            logging.getLogger("app").exception("failed")
    (line,) = logs.lines()
    assert line["exception.type"] == "KeyError"
    assert line["exception.message"] == "'missing'"
    assert line["exception.stacktrace"].startswith("Traceback (most recent call last):")
    assert 'raise KeyError("missing")' in line["exception.stacktrace"]
    assert line["request_id"] == "job-1"


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    __str__ = __repr__


def test_unserializable_values_never_break_a_line(logs: LogCapture) -> None:
    """Objects, cycles, NaN and unprintable values are written safely; every line is strict JSON."""
    cycle: dict[str, Any] = {}
    cycle["self"] = cycle
    log = logging.getLogger("app")
    log.info("obj", extra={"obj": object(), "when": datetime(2026, 1, 2, tzinfo=timezone.utc)})
    log.info("cycle", extra={"cycle": cycle})
    log.info("nan", extra={"nan": float("nan"), "inf": float("inf")})
    log.info("bad", extra={"bad": Unprintable()})
    lines = [strict_json(raw) for raw in logs.text.splitlines()]
    assert len(lines) == 4
    assert lines[0]["obj"].startswith("<object object")
    assert lines[0]["when"] == "2026-01-02T00:00:00+00:00"
    assert "cycle" in lines[1]
    assert lines[2]["nan"] == "nan"
    assert lines[3]["bad"] == "__could_not_encode__"  # python-json-logger's own fallback


def test_record_that_cannot_be_formatted_becomes_a_line_saying_so() -> None:
    """A record whose message cannot be built still gives one strict-JSON line, not an exception."""
    record = logging.LogRecord("app", logging.INFO, "", 0, "value %s", (Unprintable(),), None)
    line = strict_json(JsonFormatter(config=Config(service_name="f")).format(record))
    assert line["message"] == "log record could not be formatted"
    assert line["log.logger"] == "app"
    assert line["service.name"] == "f"


def test_reserved_names_in_extra_do_not_replace_core_fields(logs: LogCapture) -> None:
    """extra={'level': ...} is kept as extra.level, not written over the line's level."""
    logging.getLogger("app").info("m", extra={"level": "fake", "timestamp": 1})
    (line,) = logs.lines()
    assert line["level"] == "INFO"
    assert line["extra.level"] == "fake"
    assert line["extra.timestamp"] == 1


def test_dict_config_formatter_and_filter_for_text_logs() -> None:
    """dictConfig can use the JSON formatter, and the filter gives %(request_id)s to text formats."""
    json_stream, text_stream = io.StringIO(), io.StringIO()
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "filters": {"ctx": {"()": "observekit.logging.ContextFilter"}},
            "formatters": {
                "json": {
                    "()": "observekit.logging.JsonFormatter",
                    "config": Config(service_name="dc"),
                },
                "text": {"format": "%(levelname)s [%(request_id)s] %(message)s"},
            },
            "handlers": {
                "json": {
                    "class": "logging.StreamHandler",
                    "stream": json_stream,
                    "formatter": "json",
                    "filters": ["ctx"],
                },
                "text": {
                    "class": "logging.StreamHandler",
                    "stream": text_stream,
                    "formatter": "text",
                    "filters": ["ctx"],
                },
            },
            "root": {"handlers": ["json", "text"], "level": "INFO"},
        }
    )
    with observekit.request_context(request_id="dc-1"):
        logging.getLogger("app").info("inside")
    logging.getLogger("app").info("outside")
    inside, outside = (strict_json(x) for x in json_stream.getvalue().splitlines())
    assert inside["request_id"] == "dc-1"
    assert inside["service.name"] == "dc"
    assert "request_id" not in outside
    assert text_stream.getvalue().splitlines() == ["INFO [dc-1] inside", "INFO [-] outside"]


def test_dict_config_helper(capsys: pytest.CaptureFixture[str]) -> None:
    """dict_config() is a ready dictConfig dict equivalent to configure()."""
    logging.config.dictConfig(observekit.logging.dict_config(Config(service_name="helper")))
    with observekit.request_context(request_id="h-1"):
        logging.getLogger("app").info("hi")
    line = strict_json(capsys.readouterr().out.strip())
    assert line["request_id"] == "h-1"
    assert line["service.name"] == "helper"


def test_filter_captures_context_for_queue_handlers() -> None:
    """With the filter on a QueueHandler, a line formatted later on another thread keeps its request ID."""
    q: queue.Queue[logging.LogRecord] = queue.Queue()
    queue_handler = logging.handlers.QueueHandler(q)
    queue_handler.addFilter(ContextFilter())
    stream = io.StringIO()
    sink = logging.StreamHandler(stream)
    sink.setFormatter(JsonFormatter(config=Config()))
    listener = logging.handlers.QueueListener(q, sink)
    log = logging.getLogger("queued")
    log.addHandler(queue_handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    listener.start()
    try:
        with observekit.request_context(request_id="q-1"):
            log.info("via queue")
    finally:
        listener.stop()
    assert strict_json(stream.getvalue())["request_id"] == "q-1"


# -- the access line -----------------------------------------------------------


def test_access_line_fields(logs: LogCapture, config: Config) -> None:
    """One access line per request with method, path, status, duration, sizes, types, client, agent, ID."""
    app = ObservabilityMiddleware(ok_app, config=config)
    call(
        app,
        "/orders/7",
        headers={
            "X-Request-ID": "acc-1",
            "User-Agent": "curl/8.5",
            "Content-Type": "application/json",
            "Content-Length": "12",
        },
        REQUEST_METHOD="POST",
        REMOTE_ADDR="10.1.2.3",
    )
    (line,) = logs.access()
    assert line["level"] == "INFO"
    assert line["message"] == "POST /orders/7 200"
    expected = {
        "request_id": "acc-1",
        "http.request.method": "POST",
        "url.path": "/orders/7",
        "url.scheme": "http",
        "http.response.status_code": 200,
        "http.request.header.content-type": "application/json",
        "http.request.body.size": 12,
        "http.response.header.content-type": "text/plain",
        "http.response.body.size": 5,
        "client.address": "10.1.2.3",
        "user_agent.original": "curl/8.5",
    }
    assert {k: line[k] for k in expected} == expected
    assert isinstance(line["duration_ms"], float)
    assert 0 <= line["duration_ms"] < 5000


def test_access_line_is_error_from_500(logs: LogCapture, config: Config) -> None:
    """Responses from 500 up give an ERROR access line; below, INFO."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        status = environ["PATH_INFO"].strip("/")
        start_response(f"{status} X", [])
        return [b""]

    mw = ObservabilityMiddleware(app, config=config)
    for status in ("404", "499", "500", "503"):
        call(mw, f"/{status}")
    levels = [(line["http.response.status_code"], line["level"]) for line in logs.access()]
    assert levels == [(404, "INFO"), (499, "INFO"), (500, "ERROR"), (503, "ERROR")]


def test_excluded_paths_get_no_access_line(logs: LogCapture) -> None:
    """Requests to excluded paths (default /healthz, /readyz) write no access line."""
    mw = ObservabilityMiddleware(
        ok_app, config=Config(access_log_exclude_paths=("/healthz", "/ping"))
    )
    for path in ("/healthz", "/ping", "/orders"):
        call(mw, path)
    assert [line["url.path"] for line in logs.access()] == ["/orders"]


def test_sampling_keeps_failures(logs: LogCapture) -> None:
    """With sampling at 0, successful access lines are dropped but 5xx and exceptions are kept."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/boom":
            raise RuntimeError("boom")
        start_response("503 Unavailable" if environ["PATH_INFO"] == "/down" else "200 OK", [])
        return [b""]

    mw = ObservabilityMiddleware(app, config=Config(access_log_sample_ratio=0.0))
    call(mw, "/ok")
    call(mw, "/down")
    with pytest.raises(RuntimeError):
        call(mw, "/boom")
    assert [line["url.path"] for line in logs.access()] == ["/down", "/boom"]


def test_sampling_ratio_is_honoured(logs: LogCapture) -> None:
    """At ratio 0.3 over 2,000 requests, the kept share is within the 99.9% binomial interval."""
    mw = ObservabilityMiddleware(ok_app, config=Config(access_log_sample_ratio=0.3))
    logging.getLogger("app").setLevel(logging.WARNING)
    n = 2000
    for _ in range(n):
        call(mw)
    kept = len(logs.access())
    sigma = (n * 0.3 * 0.7) ** 0.5
    assert abs(kept - n * 0.3) < 3.3 * sigma


def test_request_received_line_at_debug(logs: LogCapture) -> None:
    """log_request_received adds a DEBUG line when the request begins, before the app's lines."""
    mw = ObservabilityMiddleware(ok_app, config=Config(log_request_received=True))
    call(mw, "/x", headers={"X-Request-ID": "rr-1"})
    lines = logs.lines()
    assert [(x["logger"], x["level"]) for x in lines] == [
        ("observekit.access", "DEBUG"),
        ("app", "INFO"),
        ("observekit.access", "INFO"),
    ]
    assert lines[0]["message"] == "GET /x received"
    assert lines[0]["request_id"] == "rr-1"


def test_no_record_built_when_access_logger_is_disabled(
    logs: LogCapture, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A level that drops access lines means no access record is even built."""
    built: list[int] = []
    original = core._RecordMaker.__call__

    def spy(
        self: core._RecordMaker, level: int, msg: str, fields: dict[str, Any]
    ) -> logging.LogRecord:
        built.append(level)
        return original(self, level, msg, fields)

    monkeypatch.setattr(core._RecordMaker, "__call__", spy)
    app = ObservabilityMiddleware(ok_app, config=config)
    call(app)
    assert built == [logging.INFO]  # the spy sees records while the logger is enabled
    logging.getLogger("observekit.access").setLevel(logging.WARNING)
    call(app)
    assert built == [logging.INFO]
    assert len(logs.access()) == 1


def test_access_record_is_a_complete_log_record(logs: LogCapture, config: Config) -> None:
    """Access records carry every standard LogRecord attribute, so stock formatters can use them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s %(name)s %(levelname)s %(levelno)s %(pathname)s %(filename)s %(module)s "
            "%(lineno)d %(funcName)s %(created)f %(msecs)d %(relativeCreated)d %(thread)d "
            "%(threadName)s %(process)d %(processName)s %(message)s %(url.path)s"
        )
    )
    logging.getLogger("observekit.access").addHandler(handler)
    call(ObservabilityMiddleware(ok_app, config=config), "/p")
    text = stream.getvalue()
    assert " observekit.access INFO 20 " in text
    assert text.rstrip().endswith("GET /p 200 /p")
    assert f" {os.getpid()} " in text
    assert threading.current_thread().name in text


def test_unhandled_exception_logged_once_then_reraised(logs: LogCapture, config: Config) -> None:
    """An app exception is logged once at ERROR with traceback and ID, re-raised unchanged, access line 500."""
    error = ValueError("bad input")

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise error

    with pytest.raises(ValueError, match="bad input") as info:
        call(ObservabilityMiddleware(app, config=config), headers={"X-Request-ID": "ex-1"})
    assert info.value is error
    errors = [x for x in logs.lines() if x["logger"] == "observekit"]
    assert len(errors) == 1
    assert errors[0]["level"] == "ERROR"
    assert errors[0]["request_id"] == "ex-1"
    assert errors[0]["exception.type"] == "ValueError"
    assert "raise error" in errors[0]["exception.stacktrace"]
    (access,) = logs.access()
    assert access["http.response.status_code"] == 500
    assert access["error.type"] == "ValueError"
    assert access["level"] == "ERROR"


# -- rejected IDs ----------------------------------------------------------------


def test_rejection_warned_at_most_every_10_seconds(
    logs: LogCapture, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Invalid IDs give one WARNING per 10 s with header, reason and new ID; the next counts those held back."""
    clock = [1000.0]
    monkeypatch.setattr(core.time, "monotonic", lambda: clock[0])
    mw = ObservabilityMiddleware(ok_app, config=config)
    bad = "x" * 129 + "SECRET"
    ids = [
        call(mw, headers={"X-Request-ID": bad}).header_values("X-Request-ID")[0] for _ in range(5)
    ]
    clock[0] += 10.0
    ids.append(call(mw, headers={"X-Request-ID": bad}).header_values("X-Request-ID")[0])
    warnings = [x for x in logs.lines() if x["level"] == "WARNING"]
    assert len(warnings) == 2
    assert warnings[0]["request_id"] == ids[0]
    assert warnings[0]["request_id.header"] == "X-Request-ID"
    assert warnings[0]["request_id.rejection"] == "longer than 128 characters (135)"
    assert ids[0] in warnings[0]["message"]
    assert warnings[1]["request_id"] == ids[5]
    assert warnings[1]["request_id.rejections_suppressed"] == 4
    assert "SECRET" not in logs.text


def test_filter_never_raises_and_never_drops(monkeypatch: pytest.MonkeyPatch) -> None:
    """ContextFilter keeps every record, even when reading the context fails."""

    def broken() -> None:
        raise RuntimeError("context is broken")

    monkeypatch.setattr(observekit.logging, "current", broken)
    record = logging.LogRecord("x", logging.INFO, "", 0, "m", (), None)
    assert ContextFilter().filter(record) is True
    assert "_observekit_ctx" not in record.__dict__  # it really took the failing path


def test_service_fields_cannot_be_overwritten_or_duplicated(logs: LogCapture) -> None:
    """extra= or bind() fields named like service fields are kept as extra.<name>: no duplicate keys."""
    with observekit.request_context(request_id="svc-1"):
        observekit.bind(**{"service.name": "bound"})
        logging.getLogger("app").info("m", extra={"deployment.environment": "extra"})
    raw = logs.text.strip()
    pairs = json.loads(raw, object_pairs_hook=lambda kv: kv)
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys))
    line = dict(pairs)
    assert line["service.name"] == "test-svc"
    assert line["extra.service.name"] == "bound"
    assert line["deployment.environment"] == "test"
    assert line["extra.deployment.environment"] == "extra"


def test_middlewares_are_not_kept_alive_by_observekit() -> None:
    """A middleware that is dropped is garbage collected (no per-instance fork hook or registry)."""
    import gc
    import weakref

    mw = ObservabilityMiddleware(ok_app)
    ref = weakref.ref(mw.observer)
    del mw
    gc.collect()
    assert ref() is None


def test_attributes_a_filter_adds_to_access_records_are_written(
    logs: LogCapture, config: Config
) -> None:
    """A handler filter that adds an attribute to an access record gets it into the JSON line."""

    def add_host(record: logging.LogRecord) -> bool:
        record.host = "web-1"
        return True

    (handler,) = [
        h for h in logging.getLogger().handlers if getattr(h, "stream", None) is logs.stream
    ]
    handler.addFilter(add_host)
    call(ObservabilityMiddleware(ok_app, config=config), "/h")
    (access,) = logs.access()
    assert access["host"] == "web-1"
    assert access["url.path"] == "/h"
    assert "_observekit_fields" not in access


def test_trace_ids_from_the_installed_source(logs: LogCapture) -> None:
    """With a trace-ID source installed, lines carry trace_id and span_id while it reports a span."""
    active: list[tuple[str, str] | None] = [None]
    observekit.logging.use_trace_ids(lambda: active[0])
    try:
        logging.getLogger("app").info("no span")
        active[0] = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
        logging.getLogger("app").info("in span")
    finally:
        observekit.logging.use_trace_ids(None)
    logging.getLogger("app").info("source removed")
    first, second, third = logs.lines()
    assert "trace_id" not in first
    assert (second["trace_id"], second["span_id"]) == active[0]
    assert list(second)[4:6] == ["trace_id", "span_id"]
    assert "trace_id" not in third


def test_broken_trace_id_source_never_breaks_a_line(logs: LogCapture) -> None:
    """A trace-ID source that raises leaves the line without trace fields, not without the line."""

    def broken() -> tuple[str, str] | None:
        raise RuntimeError("tracer is broken")

    observekit.logging.use_trace_ids(broken)
    try:
        logging.getLogger("app").info("still written")
    finally:
        observekit.logging.use_trace_ids(None)
    (line,) = logs.lines()
    assert line["message"] == "still written"
    assert "trace_id" not in line


def test_timestamps_match_datetime_to_the_microsecond() -> None:
    """The cached-second formatter writes what datetime writes (microseconds truncated),
    including a float just under the next second, which stays in its own second."""
    from observekit.logging import _rfc3339

    rng = random.Random(3)
    stamps = [1.7e9 + rng.random() * 1e6 for _ in range(2000)]
    stamps += [1_700_000_000.0, 1_700_000_000.999999, math.nextafter(1_700_000_001.0, 0.0)]
    for created in stamps:
        expected = datetime.fromtimestamp(int(created), timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        usec = min(int((created - int(created)) * 1_000_000), 999_999)
        assert _rfc3339(created) == f"{expected}.{usec:06d}Z"
