"""Property tests: hostile request-ID header values never leak, valid ones round-trip.

Every invalid value carries the marker ``ZQXJ`` next to at least one character
the default validator refuses (CR, LF, quotes, backslash, NUL, other controls,
non-ASCII) or is too long (up to 10 KB), so a leak anywhere shows up as the
marker in a response header or a log line. WSGI gets ``str`` values the way a
server decodes them (latin-1); ASGI gets raw ``bytes``.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import string
from collections.abc import Iterator
from typing import Any
from wsgiref.util import setup_testing_defaults

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import observekit
from observekit import is_valid_request_id
from observekit.asgi import ObservabilityMiddleware as ASGIMiddleware
from observekit.wsgi import ObservabilityMiddleware as WSGIMiddleware

MARKER = "ZQXJ"
ALLOWED = string.ascii_letters + string.digits + "-._:+=/@"
HEADERS = ("X-Request-ID", "X-Correlation-ID")
CONFIG = observekit.Config(service_name="fuzz-svc", service_version="0", log_request_received=True)
# The ASGI middleware has a separate, leaner path when only request IDs are wanted.
IDS_ONLY = observekit.Config(service_name="fuzz-svc", service_version="0", access_log=False)

FUZZ = settings(
    max_examples=500,
    deadline=None,
    # The log capture is built inside each example; the function-scoped
    # autouse fixture only restores logging once the whole test is over.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- strategies ---------------------------------------------------------------

_latin1 = st.characters(min_codepoint=0, max_codepoint=0xFF)
_notable = [
    "\r",
    "\n",
    "\r\n",
    '"',
    "\\",
    "\x00",
    "\t",
    " ",
    "\x0b",
    "\x1b",
    "\x7f",
    "\x85",
    "\xa0",
    "\xe9",
    "\xff",
    ",",
    ";",
    "'",
    "<",
    "%0d%0a",
    "{",
    "}",
]
_bad_char = st.one_of(
    st.sampled_from(_notable),
    _latin1.filter(lambda c: c not in ALLOWED),
)


def _with_marker(prefix: str, bad: str, suffix: str) -> str:
    return prefix + MARKER + bad + suffix


_invalid_short = st.builds(
    _with_marker, st.text(_latin1, max_size=24), _bad_char, st.text(_latin1, max_size=24)
)
_too_long = st.builds(
    lambda fill, extra: MARKER + fill * (125 + extra),
    st.sampled_from(ALLOWED),
    st.integers(min_value=0, max_value=10_240 - 125),
)
_ten_kb = st.builds(
    lambda bad, at: (MARKER + "a" * 10_240)[:at] + bad + (MARKER + "a" * 10_240)[at:],
    _bad_char,
    st.integers(min_value=4, max_value=10_244),
)

INVALID_STR = st.one_of(_invalid_short, _too_long, _ten_kb)
"""Invalid request-ID values as a WSGI server hands them over (latin-1 ``str``)."""

_bad_bytes = st.one_of(
    _bad_char.map(lambda c: c.encode("latin-1")),
    st.sampled_from([b"\xc3\xa9", b"\xe2\x80\xa8", b"\xf0\x9f\x92\xa5", b"\xff\xfe", b"\x00"]),
)
INVALID_BYTES = st.one_of(
    INVALID_STR.map(lambda value: value.encode("latin-1")),
    st.builds(
        lambda a, bad, b: a + MARKER.encode() + bad + b,
        st.binary(max_size=24),
        _bad_bytes,
        st.binary(max_size=24),
    ),
)
"""Invalid request-ID values as raw ASGI header bytes."""

VALID = st.text(alphabet=ALLOWED, min_size=1, max_size=128)
LONGEST_VALID = "v" * 128


# -- drivers and checks ---------------------------------------------------------


def capture() -> io.StringIO:
    """A fresh JSON log stream on the root logger, at DEBUG."""
    stream = io.StringIO()
    observekit.logging.configure(CONFIG, stream=stream, level="DEBUG")
    return stream


def _wsgi_app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    logging.getLogger("app").info("in app")
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"ok"


def run_wsgi(headers: dict[str, str], config: observekit.Config = CONFIG) -> list[tuple[str, str]]:
    """One request through the WSGI middleware; the response headers."""
    environ: dict[str, Any] = {"QUERY_STRING": "", "HTTP_USER_AGENT": "fuzz"}
    for name, value in headers.items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    setup_testing_defaults(environ)
    got: list[list[tuple[str, str]]] = []

    def start_response(
        status: str, response_headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Any:
        got.append(response_headers)
        return lambda data: None

    result = WSGIMiddleware(_wsgi_app, config=config)(environ, start_response)
    try:
        assert b"".join(result) == b"ok"
    finally:
        result.close()
    [response_headers] = got
    return response_headers


async def _asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    logging.getLogger("app").info("in app")
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"ok"})


def run_asgi(
    headers: list[tuple[bytes, bytes]], config: observekit.Config = CONFIG
) -> list[tuple[bytes, bytes]]:
    """One request through the ASGI middleware; the response headers."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"user-agent", b"fuzz"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(ASGIMiddleware(_asgi_app, config=config)(scope, receive, send))
    [start] = [m for m in sent if m["type"] == "http.response.start"]
    assert b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body") == b"ok"
    return list(start["headers"])


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def strict_lines(text: str) -> list[dict[str, Any]]:
    """Every line as strict JSON (no NaN/Infinity), each an object."""
    lines = []
    for raw in text.splitlines():
        try:
            parsed = json.loads(raw, parse_constant=_reject_constant)
        except ValueError as exc:
            raise AssertionError(f"not strict JSON: {raw!r} in {text!r}") from exc
        assert isinstance(parsed, dict), raw
        lines.append(parsed)
    return lines


def strings_in(value: Any) -> Iterator[str]:
    """Every string (keys included) anywhere in a decoded JSON value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


def one_request_id(headers: list[tuple[str, str]]) -> str:
    [rid] = [v for k, v in headers if k.lower() == "x-request-id"]
    assert is_valid_request_id(rid)
    return rid


def check_rejected(
    text: str, rid: str, header: str, fallback: str | None, header_texts: list[str]
) -> None:
    """The shared assertions for an invalid value sent in ``header``."""
    assert MARKER not in text
    lines = strict_lines(text)
    for line in lines:
        for value in strings_in(line):
            assert MARKER not in value
    for value in header_texts:
        assert MARKER not in value
    if fallback is not None:
        assert rid == fallback
    # Every line of the request (the app's, and the access line when there is one) has the ID.
    [app_line] = [line for line in lines if line["logger"] == "app"]
    assert app_line["request_id"] == rid
    for access in [line for line in lines if line["logger"] == "observekit.access"]:
        assert access["request_id"] == rid
    warnings = [line for line in lines if line["level"] == "WARNING"]
    # A valid value in the other header is used without a word about this one.
    assert len(warnings) == (1 if fallback is None else 0)
    for warning in warnings:
        assert warning["request_id.header"].lower() == header.lower()
        assert warning["request_id"] == rid


def _other(header: str) -> str:
    return HEADERS[1] if header == HEADERS[0] else HEADERS[0]


# -- WSGI -------------------------------------------------------------------------


@FUZZ
@given(
    value=INVALID_STR,
    header=st.sampled_from(HEADERS),
    fallback=st.none() | VALID,
    config=st.sampled_from([CONFIG, IDS_ONLY]),
)
@example(value=MARKER + "\r\nX-Injected: 1", header="X-Request-ID", fallback=None, config=CONFIG)
@example(value=MARKER + "a" * 125, header="X-Request-ID", fallback=None, config=IDS_ONLY)
def test_wsgi_invalid_request_ids_never_leak(value, header, fallback, config):
    """An invalid incoming ID (WSGI) appears in no response header and no log line."""
    assert not is_valid_request_id(value)
    stream = capture()
    headers = {header: value}
    if fallback is not None:
        headers[_other(header)] = fallback

    response_headers = run_wsgi(headers, config)

    rid = one_request_id(response_headers)
    texts = [text for pair in response_headers for text in pair]
    check_rejected(stream.getvalue(), rid, header, fallback, texts)


@FUZZ
@given(value=VALID, header=st.sampled_from(HEADERS), config=st.sampled_from([CONFIG, IDS_ONLY]))
@example(value=LONGEST_VALID, header="X-Request-ID", config=CONFIG)
@example(value="-", header="X-Correlation-ID", config=IDS_ONLY)
def test_wsgi_valid_request_ids_are_echoed_unchanged(value, header, config):
    """A valid incoming ID (WSGI) is the response's X-Request-ID and every line's request_id."""
    stream = capture()
    rid = one_request_id(run_wsgi({header: value}, config))
    assert rid == value
    lines = strict_lines(stream.getvalue())
    request_lines = [line for line in lines if line["logger"] in ("app", "observekit.access")]
    assert request_lines
    assert all(line["request_id"] == value for line in request_lines)
    assert not [line for line in lines if line["level"] == "WARNING"]


# -- ASGI -------------------------------------------------------------------------


@FUZZ
@given(
    value=INVALID_BYTES,
    header=st.sampled_from(HEADERS),
    fallback=st.none() | VALID,
    config=st.sampled_from([CONFIG, IDS_ONLY]),
)
@example(
    value=MARKER.encode() + b"\r\nx-injected: 1",
    header="X-Request-ID",
    fallback=None,
    config=CONFIG,
)
@example(
    value=MARKER.encode() + "\u00e9".encode(),
    header="X-Correlation-ID",
    fallback=None,
    config=IDS_ONLY,
)
def test_asgi_invalid_request_ids_never_leak(value, header, fallback, config):
    """An invalid incoming ID (ASGI bytes) appears in no response header and no log line."""
    assert not is_valid_request_id(value.decode("latin-1"))
    stream = capture()
    headers = [(header.lower().encode(), value)]
    if fallback is not None:
        headers.append((_other(header).lower().encode(), fallback.encode()))

    response_headers = run_asgi(headers, config)

    decoded = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response_headers]
    rid = one_request_id(decoded)
    texts = [text for pair in decoded for text in pair]
    check_rejected(stream.getvalue(), rid, header, fallback, texts)


@FUZZ
@given(value=VALID, header=st.sampled_from(HEADERS), config=st.sampled_from([CONFIG, IDS_ONLY]))
@example(value=LONGEST_VALID, header="X-Request-ID", config=IDS_ONLY)
def test_asgi_valid_request_ids_are_echoed_unchanged(value, header, config):
    """A valid incoming ID (ASGI) is the response's X-Request-ID and every line's request_id."""
    stream = capture()
    response_headers = run_asgi([(header.lower().encode(), value.encode())], config)
    decoded = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response_headers]
    assert one_request_id(decoded) == value
    lines = strict_lines(stream.getvalue())
    request_lines = [line for line in lines if line["logger"] in ("app", "observekit.access")]
    assert request_lines
    assert all(line["request_id"] == value for line in request_lines)
    assert not [line for line in lines if line["level"] == "WARNING"]
