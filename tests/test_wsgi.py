"""The WSGI middleware, in-process, against PEP 3333.

Most tests drive the middleware with a tiny gateway (:class:`Server`) that
follows the PEP's rules for ``start_response``, sends headers with the first
non-empty chunk and always calls ``close()``. A few go through werkzeug's test
``Client`` and ``wsgiref.validate``/werkzeug ``LintMiddleware`` on both sides.
"""

from __future__ import annotations

import inspect
import io
import json
import logging
import sys
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any
from wsgiref.util import FileWrapper, setup_testing_defaults
from wsgiref.validate import validator

import pytest
from werkzeug.middleware.lint import LintMiddleware
from werkzeug.test import Client

import observekit
from observekit import _core as core
from observekit import get_request_id, is_valid_request_id
from observekit._core import ERROR_BODY, Exchange
from observekit.logging import LineHandler
from observekit.wsgi import ObservabilityMiddleware

from .hostile import HOSTILE, Hostile
from .util import app_errors, strict_json_lines
from .util import call as plain_call

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

RID = "req-0123456789abcdef"
TEXT = [("Content-Type", "text/plain")]


class BoomError(Exception):
    """The application's own failure; tests check it arrives as the same object."""


# -- a minimal PEP 3333 gateway ------------------------------------------------


def make_environ(request_id: str | None = RID, **extra: Any) -> Environ:
    """A complete WSGI environ (``wsgiref`` defaults), optionally carrying ``X-Request-ID``."""
    environ: Environ = {"QUERY_STRING": "", "REMOTE_ADDR": "127.0.0.1"}
    if request_id is not None:
        environ["HTTP_X_REQUEST_ID"] = request_id
    environ.update(extra)
    setup_testing_defaults(environ)
    return environ


class Server:
    """A gateway that enforces PEP 3333's ``start_response`` rules and records what it got.

    Headers count as sent with the first non-empty chunk; a later
    ``start_response`` then must carry ``exc_info`` and gets it re-raised.
    ``run`` always calls ``close()``, as a real server does.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[str, str]], Any]] = []
        self.headers_sent = False
        self.chunks: list[bytes] = []

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], object]:
        if exc_info is not None:
            if self.headers_sent:
                raise exc_info[1].with_traceback(exc_info[2])
        elif self.calls:
            raise AssertionError("start_response called again without exc_info")
        self.calls.append((status, headers, exc_info))
        return self._send

    def _send(self, chunk: bytes) -> None:
        assert self.calls, "body before start_response"
        assert type(chunk) is bytes
        if chunk:
            self.headers_sent = True
        self.chunks.append(chunk)

    @property
    def status(self) -> str:
        return self.calls[-1][0]

    @property
    def headers(self) -> list[tuple[str, str]]:
        return self.calls[-1][1]

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def run(
        self, app: WSGIApp, environ: Environ | None = None, *, stop_after: int | None = None
    ) -> Any:
        """Call ``app``, send its body (or only ``stop_after`` chunks), then ``close()`` it."""
        result = app(make_environ() if environ is None else environ, self.start_response)
        try:
            for count, chunk in enumerate(result, 1):
                self._send(chunk)
                if stop_after is not None and count >= stop_after:
                    break  # the client went away
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return result


def values(headers: Iterable[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name.lower()]


def without(headers: Iterable[tuple[str, str]], name: str) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k.lower() != name.lower()]


class CountingBody:
    """A response iterable that counts ``close()`` calls (OTel's ``test_wsgi_middleware.Response``).

    Records the request ID it sees on every chunk and in ``close()``; raises
    ``exc`` instead of the chunk at index ``raise_at``.
    """

    def __init__(
        self, chunks: list[bytes], *, raise_at: int | None = None, exc: BaseException | None = None
    ) -> None:
        self.chunks = chunks
        self.raise_at = raise_at
        self.exc = exc
        self.position = 0
        self.close_calls = 0
        self.ids_seen: list[str | None] = []
        self.ids_at_close: list[str | None] = []

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        index = self.position
        self.position += 1
        self.ids_seen.append(get_request_id())
        if index == self.raise_at:
            assert self.exc is not None
            raise self.exc
        if index >= len(self.chunks):
            raise StopIteration
        return self.chunks[index]

    def close(self) -> None:
        self.close_calls += 1
        self.ids_at_close.append(get_request_id())


def returning(body: Iterable[bytes], status: str = "200 OK", headers: Any = None) -> WSGIApp:
    """An app that starts a response and returns ``body``."""

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response(status, list(TEXT if headers is None else headers))
        return body

    return app


# -- close() -------------------------------------------------------------------


def test_close_called_once_after_the_body_is_drained(config, logs):
    """The app iterable's close() runs exactly once, and the access line only when it does."""
    body = CountingBody([b"ab", b"cde"])
    middleware = ObservabilityMiddleware(returning(body), config=config)
    server = Server()

    result = middleware(make_environ(), server.start_response)
    assert list(result) == [b"ab", b"cde"]
    assert body.close_calls == 0
    assert logs.access() == []  # the request is not over until close()

    result.close()
    result.close()  # a second close from a sloppy server is harmless

    assert body.close_calls == 1
    [access] = logs.access()
    assert access["level"] == "INFO"
    assert access["request_id"] == RID
    assert access["http.response.status_code"] == 200
    assert access["http.response.body.size"] == 5


def test_close_called_once_when_the_body_raises_midway(config, logs):
    """An exception mid-body propagates from iteration, is logged once, and close() still runs once."""
    boom = BoomError("disk went away")
    body = CountingBody([b"first", b"second"], raise_at=1, exc=boom)
    server = Server()

    with pytest.raises(BoomError) as caught:
        server.run(ObservabilityMiddleware(returning(body), config=config))

    assert caught.value is boom
    assert body.close_calls == 1
    assert server.body == b"first"
    assert server.status == "200 OK"  # headers were out: no 500 can replace them
    [error] = app_errors(logs)
    assert error["request_id"] == RID
    assert error["exception.type"] == f"{__name__}.BoomError"
    assert "disk went away" in error["exception.stacktrace"]
    assert "Traceback" in error["exception.stacktrace"]
    [access] = logs.access()
    assert access["level"] == "ERROR"
    assert access["error.type"] == f"{__name__}.BoomError"
    assert access["http.response.status_code"] == 200
    assert access["request_id"] == RID


@pytest.mark.parametrize(
    ("stop_after", "sent"),
    [
        pytest.param(1, b"one", id="after-first-chunk"),
        pytest.param(0, b"", id="before-first-chunk"),
    ],
)
def test_close_called_once_when_the_client_disconnects(config, logs, stop_after, sent):
    """A server that stops iterating early and calls close() closes the app once and logs the request."""
    body = CountingBody([b"one", b"two", b"three"])
    middleware = ObservabilityMiddleware(returning(body), config=config)
    server = Server()

    result = middleware(make_environ(), server.start_response)
    for count, chunk in enumerate(result, 1) if stop_after else ():
        server._send(chunk)
        if count >= stop_after:
            break
    result.close()

    assert body.close_calls == 1
    assert server.body == sent
    [access] = logs.access()
    assert access["http.response.status_code"] == 200
    assert access["request_id"] == RID
    assert logs.by_logger("observekit") == []


def test_close_of_a_generator_closed_before_its_first_chunk(config, logs):
    """A generator body the server closes unstarted is closed all the same, and the request logged."""
    made: list[Generator[bytes, None, None]] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", list(TEXT))

        def body() -> Generator[bytes, None, None]:
            yield b"never"

        made.append(body())
        return made[0]

    result = ObservabilityMiddleware(app, config=config)(make_environ(), Server().start_response)
    assert inspect.getgeneratorstate(made[0]) == inspect.GEN_CREATED
    result.close()

    assert inspect.getgeneratorstate(made[0]) == inspect.GEN_CLOSED
    [access] = logs.access()
    assert access["request_id"] == RID


# -- start_response and exc_info -----------------------------------------------


def test_exc_info_passes_through_start_response(config, logs):
    """A second start_response with exc_info reaches the server with the very same tuple."""
    passed: list[Any] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", list(TEXT))
        try:
            raise BoomError("render failed")
        except BoomError:
            exc_info = sys.exc_info()
            passed.append(exc_info)
            start_response("500 Internal Server Error", list(TEXT), exc_info)
        return [b"sorry"]

    server = Server()
    server.run(ObservabilityMiddleware(app, config=config))

    assert [call[0] for call in server.calls] == ["200 OK", "500 Internal Server Error"]
    assert server.calls[0][2] is None
    assert server.calls[1][2] is passed[0]
    assert values(server.headers, "X-Request-ID") == [RID]
    assert server.body == b"sorry"
    assert logs.access()[0]["http.response.status_code"] == 500


def test_exc_info_after_headers_sent_reraises_from_iteration(config, logs):
    """When headers are out, the server's re-raise of exc_info propagates unchanged from the body."""
    boom = BoomError("late failure")

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", list(TEXT))
        yield b"partial"
        try:
            raise boom
        except BoomError:
            start_response("500 Internal Server Error", list(TEXT), sys.exc_info())
        yield b"unreachable"

    server = Server()
    with pytest.raises(BoomError) as caught:
        server.run(ObservabilityMiddleware(app, config=config))

    assert caught.value is boom
    assert server.body == b"partial"
    assert len(server.calls) == 1
    assert len(app_errors(logs)) == 1
    [access] = logs.access()
    assert access["level"] == "ERROR"
    assert access["error.type"] == f"{__name__}.BoomError"


# -- wsgi.file_wrapper ---------------------------------------------------------


class TrackedFile(io.BytesIO):
    """A file that counts close() calls."""

    close_calls = 0

    def close(self) -> None:
        self.close_calls += 1
        super().close()


def test_file_wrapper_response_passes_through(config, logs):
    """The server gets its own FileWrapper back; close() closes the file once and writes the access line."""
    content = b"0123456789"
    handle = TrackedFile(content)
    returned: list[Any] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [*TEXT, ("Content-Length", str(len(content)))])
        wrapped = environ["wsgi.file_wrapper"](handle, 4)
        returned.append(wrapped)
        return wrapped

    environ = make_environ(**{"wsgi.file_wrapper": FileWrapper})
    server = Server()
    result = ObservabilityMiddleware(app, config=config)(environ, server.start_response)

    assert result is returned[0]
    assert isinstance(result, FileWrapper)
    assert b"".join(result) == content
    assert logs.access() == []
    assert handle.close_calls == 0

    result.close()
    result.close()

    assert handle.close_calls == 1
    assert handle.closed
    [access] = logs.access()
    assert access["request_id"] == RID
    assert access["http.response.body.size"] == len(content)
    assert values(server.headers, "X-Request-ID") == [RID]


# -- the request context -------------------------------------------------------


@pytest.mark.parametrize(
    "stop_after",
    [pytest.param(None, id="body-drained"), pytest.param(1, id="client-disconnects")],
)
def test_request_context_lasts_until_close(config, logs, stop_after):
    """Every chunk and the body's finally/close() see the request's ID; outside the request there is none."""
    seen: list[tuple[str, str | None]] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        seen.append(("app", get_request_id()))
        start_response("200 OK", list(TEXT))

        def body() -> Iterator[bytes]:
            try:
                for i in range(3):
                    seen.append((f"chunk{i}", get_request_id()))
                    yield b"x"
            finally:
                seen.append(("finally", get_request_id()))

        return body()

    assert get_request_id() is None
    Server().run(ObservabilityMiddleware(app, config=config), stop_after=stop_after)
    assert get_request_id() is None

    expected = ["app", "chunk0"] + (["chunk1", "chunk2"] if stop_after is None else [])
    assert [where for where, _ in seen] == [*expected, "finally"]
    assert {rid for _, rid in seen} == {RID}


def test_request_context_in_close_of_an_iterable(config, logs):
    """A class-based body sees the request's ID in __next__ and in close()."""
    body = CountingBody([b"a", b"b"])
    Server().run(ObservabilityMiddleware(returning(body), config=config))
    assert body.ids_seen == [RID, RID, RID]  # two chunks and the StopIteration call
    assert body.ids_at_close == [RID]
    assert get_request_id() is None


def test_request_context_replaces_and_restores_an_outer_context(config, logs):
    """A context left over from elsewhere is shadowed during the request and back after close()."""
    body = CountingBody([b"a"])
    with observekit.request_context("stale-outer-id"):
        Server().run(ObservabilityMiddleware(returning(body), config=config))
        assert get_request_id() == "stale-outer-id"
    assert body.ids_seen[0] == RID
    assert body.ids_at_close == [RID]


def test_a_list_body_finishes_without_entering_the_context_again(config, logs, monkeypatch):
    """A list body runs no application code in close(): finish() runs without entering the
    context, and what it logs still carries the request's ID (here: an internal error)."""
    entered: list[str | None] = []
    enter = Exchange.enter

    def counting_enter(self: Exchange) -> Any:
        entered.append(get_request_id())
        return enter(self)

    def broken_writer(*args: Any) -> bool:
        raise RuntimeError("the access line writer broke")

    # pytest's capture handlers on the root would send the line the logging way.
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [h for h in root.handlers if type(h) is LineHandler])
    monkeypatch.setattr(Exchange, "enter", counting_enter)
    middleware = ObservabilityMiddleware(returning([b"hello"]), config=config)
    Server().run(middleware)
    assert entered == [None]  # around the app only
    [access] = logs.access()
    assert access["request_id"] == RID

    writer = core._direct_writer[0]
    core._direct_writer[0] = broken_writer
    try:
        Server().run(middleware)
    finally:
        core._direct_writer[0] = writer
    [warning] = [line for line in logs.lines() if "internal error" in line["message"]]
    assert warning["request_id"] == RID
    assert middleware.observer.internal_errors == 1


def test_a_route_resolver_runs_inside_the_request_context(config, logs):
    """A route_resolver is user code: finish() runs it with the request's context entered."""
    seen: list[str | None] = []

    def resolver(info: Any) -> str:
        seen.append(get_request_id())
        return "/things/{id}"

    config = observekit.Config(service_name="test-svc", route_resolver=resolver)
    middleware = ObservabilityMiddleware(returning([b"hello"]), config=config)
    assert not middleware.observer.detached_finish
    Server().run(middleware)
    assert seen == [RID]
    assert logs.access()[0]["http.route"] == "/things/{id}"


# -- wsgiref.validate on both sides ---------------------------------------------


def _plain_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [*TEXT, ("Content-Length", "5")])
    return [b"hello"]


def _generator_app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", list(TEXT))
    yield b"hel"
    yield b"lo"


def _raising_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    raise BoomError("before start_response")


@pytest.mark.parametrize(
    ("app", "raises"),
    [
        pytest.param(_plain_app, False, id="list-body"),
        pytest.param(_generator_app, False, id="generator-body"),
        pytest.param(_raising_app, True, id="raises-before-start_response"),
    ],
)
def test_passes_wsgiref_validator_on_both_sides(config, logs, app, raises):
    """validator(middleware(validator(app))) raises no assertion and no WSGIWarning."""
    wrapped = validator(ObservabilityMiddleware(validator(app), config=config))
    server = Server()
    if raises:
        with pytest.raises(BoomError):
            server.run(wrapped)
        assert server.status.startswith("500 ")
        assert server.body == ERROR_BODY
    else:
        server.run(wrapped)
        assert server.status == "200 OK"
        assert server.body == b"hello"
    assert values(server.headers, "X-Request-ID") == [RID]
    assert len(logs.access()) == 1


def test_passes_werkzeug_lint_on_both_sides(config, logs):
    """LintMiddleware around and inside the middleware, via werkzeug's Client, warns about nothing."""
    body = CountingBody([b"hel", b"lo"])
    app = LintMiddleware(ObservabilityMiddleware(LintMiddleware(returning(body)), config=config))
    response = Client(app).get("/", headers={"X-Request-ID": RID})
    assert response.get_data() == b"hello"
    response.close()
    assert body.close_calls == 1
    assert response.headers.getlist("X-Request-ID") == [RID]


# -- unhandled exceptions ------------------------------------------------------


def _raise_before_start(boom: BoomError) -> WSGIApp:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        raise boom

    return app


def _raise_after_start(boom: BoomError) -> WSGIApp:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [*TEXT, ("X-Request-ID", "app-set")])
        raise boom

    return app


def _raise_on_first_chunk(boom: BoomError) -> WSGIApp:
    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", list(TEXT))
        raise boom
        yield b""  # pragma: no cover - makes this a generator

    return app


@pytest.mark.parametrize(
    "make_app",
    [
        pytest.param(_raise_before_start, id="before-start_response"),
        pytest.param(_raise_after_start, id="after-start_response"),
        pytest.param(_raise_on_first_chunk, id="on-first-chunk"),
    ],
)
def test_unhandled_exception_before_the_response_becomes_500_then_reraises(config, logs, make_app):
    """The server gets a 500 with one X-Request-ID and exc_info, the error body, then the same exception."""
    boom = BoomError("no response yet")
    server = Server()

    with pytest.raises(BoomError) as caught:
        server.run(ObservabilityMiddleware(make_app(boom), config=config))

    assert caught.value is boom
    status, headers, exc_info = server.calls[-1]
    assert status.startswith("500 ")
    assert values(headers, "X-Request-ID") == [RID]
    assert exc_info is not None
    assert exc_info[1] is boom
    assert server.body == ERROR_BODY
    assert values(headers, "Content-Length") == [str(len(ERROR_BODY))]
    [error] = app_errors(logs)
    assert error["exception.type"] == f"{__name__}.BoomError"
    assert error["request_id"] == RID
    [access] = logs.access()
    assert access["http.response.status_code"] == 500
    assert access["level"] == "ERROR"
    assert access["error.type"] == f"{__name__}.BoomError"


def test_reraised_exception_keeps_its_context_chain(config, logs):
    """The re-raised exception still carries the exception it was raised while handling."""

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        try:
            raise KeyError("original cause")
        except KeyError:
            raise BoomError("while handling")  # noqa: B904 - the implicit chain is the point

    with pytest.raises(BoomError) as caught:
        Server().run(ObservabilityMiddleware(app, config=config))

    assert isinstance(caught.value.__context__, KeyError)
    assert caught.value.__suppress_context__ is False


def test_werkzeug_client_sees_the_original_exception(config, logs):
    """werkzeug's Client (whose start_response re-raises exc_info) gets the app's own exception."""
    boom = BoomError("through werkzeug")
    with pytest.raises(BoomError) as caught:
        Client(ObservabilityMiddleware(_raise_before_start(boom), config=config)).get("/")
    assert caught.value is boom
    assert len(app_errors(logs)) == 1
    [access] = logs.access()
    assert access["http.response.status_code"] == 500


# -- the response header -------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [pytest.param("X-Request-ID", id="same-case"), pytest.param("x-request-id", id="lower-case")],
)
def test_app_set_request_id_header_is_replaced(config, logs, name):
    """A response whose app set X-Request-ID carries exactly one, ours."""
    server = Server()
    server.run(
        ObservabilityMiddleware(
            returning([b"ok"], headers=[*TEXT, (name, "from-the-app")]), config=config
        )
    )
    assert values(server.headers, "X-Request-ID") == [RID]
    assert without(server.headers, "X-Request-ID") == TEXT


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([*TEXT, ("X-Other", "1")], id="without-id"),
        pytest.param([*TEXT, ("X-Request-ID", "from-the-app"), ("X-Other", "1")], id="with-own-id"),
    ],
)
def test_app_headers_list_is_not_mutated(config, logs, headers):
    """The very list the app passes to start_response is left exactly as it was."""
    snapshot = list(headers)
    passed: list[list[tuple[str, str]]] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        passed.append(headers)
        start_response("200 OK", headers)
        return [b"ok"]

    server = Server()
    server.run(ObservabilityMiddleware(app, config=config))

    assert passed[0] is headers
    assert headers == snapshot
    assert values(server.headers, "X-Request-ID") == [RID]


@pytest.mark.parametrize(
    ("incoming", "echoed"),
    [
        pytest.param(RID, True, id="valid-id-echoed"),
        pytest.param(None, False, id="no-id-generated"),
        pytest.param("has space", False, id="invalid-id-replaced"),
    ],
)
def test_werkzeug_client_round_trip(config, logs, incoming, echoed):
    """Through werkzeug's Client: one valid X-Request-ID, the incoming one only when valid."""
    body = CountingBody([b"ok"])
    headers = {} if incoming is None else {"X-Request-ID": incoming}
    response = Client(ObservabilityMiddleware(returning(body), config=config)).get(
        "/", headers=headers
    )
    assert response.get_data() == b"ok"
    response.close()

    [rid] = response.headers.getlist("X-Request-ID")
    assert is_valid_request_id(rid)
    assert (rid == incoming) is echoed
    assert body.close_calls == 1
    [access] = logs.access()
    assert access["request_id"] == rid
    warnings = [line for line in logs.by_logger("observekit") if line["level"] == "WARNING"]
    assert len(warnings) == (1 if incoming == "has space" else 0)
    assert all("has space" not in json.dumps(line) for line in logs.lines())


# -- robustness: nothing inside observekit raises into the app -----------------


def _hostile_app(hostile: Hostile) -> WSGIApp:
    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        if hostile.app_does is not None:
            hostile.app_does()
        start_response("201 Created", [*TEXT, ("X-App", "yes"), ("Content-Length", "9")])
        yield b"stream"
        if hostile.app_does is not None:
            hostile.app_does()
        yield b"ed!"

    return app


@pytest.mark.parametrize("hostile", HOSTILE)
def test_broken_surroundings_never_change_the_response(config, logs, hostile):
    """With broken handlers, formatters, hooks or log values the response is what the bare app sends."""
    if hostile.install is not None:
        hostile.install()
    environ = {"HTTP_USER_AGENT": "pytest", "HTTP_X_REQUEST_ID": hostile.incoming}
    overrides = {"log_request_received": True, **hostile.config}
    middleware = ObservabilityMiddleware(
        _hostile_app(hostile), config=observekit.Config(service_name="test-svc", **overrides)
    )

    bare, wrapped = Server(), Server()
    bare.run(_hostile_app(hostile), make_environ(**environ))
    wrapped.run(middleware, make_environ(**environ))

    assert wrapped.status == bare.status == "201 Created"
    assert without(wrapped.headers, "X-Request-ID") == bare.headers
    [rid] = values(wrapped.headers, "X-Request-ID")
    assert is_valid_request_id(rid)
    assert rid != hostile.incoming
    assert wrapped.body == bare.body == b"streamed!"
    assert strict_json_lines(logs.text)
    received, access = logs.access()  # log_request_received=True adds a DEBUG line
    assert (received["level"], access["level"]) == ("DEBUG", "INFO")
    assert received["request_id"] == access["request_id"] == rid
    assert (middleware.observer.internal_errors > 0) is hostile.internal


def test_comma_joined_request_id_is_rejected(logs):
    """Repeated X-Request-ID lines reach WSGI joined by a comma: invalid, so a new ID is generated."""

    def app(environ, start_response):
        start_response("200 OK", [])
        return [b""]

    result = plain_call(ObservabilityMiddleware(app), headers={"X-Request-ID": "first-1, second-2"})
    (rid,) = result.header_values("X-Request-ID")
    assert is_valid_request_id(rid)
    assert "first-1" not in logs.text
    assert "second-2" not in logs.text
