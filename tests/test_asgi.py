"""The ASGI middleware, in-process: raw scope dicts under asyncio, Starlette's TestClient and httpx.

Raw tests call the middleware with hand-built ``scope`` dicts and their own
``receive``/``send``, so every message the server would see is on record.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient  # uses httpx2, from the dev extra
from starlette.websockets import WebSocket

import observekit
from observekit import get_request_id, is_valid_request_id
from observekit._core import ERROR_BODY
from observekit.asgi import ObservabilityMiddleware

from .hostile import HOSTILE, Hostile
from .util import app_errors, strict_json_lines

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[dict[str, Any], Receive, Send], Awaitable[None]]

RID = "req-0123456789abcdef"
TEXT = (b"content-type", b"text/plain")


class BoomError(Exception):
    """The application's own failure; tests check it arrives as the same object."""


# -- a raw ASGI driver -----------------------------------------------------------


def http_scope(
    request_id: str | bytes | None = RID, *, path: str = "/", headers: Any = ()
) -> dict[str, Any]:
    """An HTTP scope, optionally carrying ``x-request-id``."""
    raw = [(b"host", b"testserver"), (b"user-agent", b"pytest"), *headers]
    if request_id is not None:
        value = request_id if isinstance(request_id, bytes) else request_id.encode("latin-1")
        raw.append((b"x-request-id", value))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


def ws_scope(request_id: str | None = RID) -> dict[str, Any]:
    scope = http_scope(request_id, path="/ws")
    scope.update(type="websocket", scheme="ws", subprotocols=[])
    del scope["method"]
    return scope


def make_receive(messages: Iterable[Message]) -> Receive:
    """Hands out ``messages``, then blocks as a connected client would."""
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return receive


async def call(
    app: ASGIApp,
    scope: dict[str, Any],
    *,
    incoming: Iterable[Message] = ({"type": "http.request", "body": b"", "more_body": False},),
    on_send: Callable[[Message], None] | None = None,
) -> list[Message]:
    """Run one connection; return copies of every message the server was sent."""
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(dict(message))
        if on_send is not None:
            on_send(message)

    await app(scope, make_receive(incoming), send)
    return sent


def run(app: ASGIApp, scope: dict[str, Any], **kwargs: Any) -> list[Message]:
    return asyncio.run(call(app, scope, **kwargs))


def header_values(message: Message, name: bytes) -> list[bytes]:
    return [v for k, v in message.get("headers", ()) if k.lower() == name]


def starts(messages: list[Message]) -> list[Message]:
    return [m for m in messages if m["type"] == "http.response.start"]


def bodies(messages: list[Message]) -> list[bytes]:
    return [m.get("body", b"") for m in messages if m["type"] == "http.response.body"]


def plain(body: bytes = b"ok", status: int = 200, headers: Any = (TEXT,)) -> ASGIApp:
    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": status, "headers": list(headers)})
        await send({"type": "http.response.body", "body": body})

    return app


# -- lifespan and other scopes ---------------------------------------------------


@pytest.mark.parametrize(
    "scope",
    [
        pytest.param({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, id="lifespan"),
        pytest.param({"type": "unknown-extension"}, id="unknown-type"),
    ],
)
def test_non_http_scopes_pass_through_untouched(config, logs, scope):
    """lifespan (and any unknown scope) reaches the app with the very same scope, receive and send."""
    seen: list[tuple[Any, Any, Any, str | None]] = []

    async def app(s: dict[str, Any], r: Receive, se: Send) -> None:
        seen.append((s, r, se, get_request_id()))

    async def receive() -> Message:
        raise AssertionError("not called")

    async def send(message: Message) -> None:
        raise AssertionError("not called")

    snapshot = dict(scope)
    asyncio.run(ObservabilityMiddleware(app, config=config)(scope, receive, send))

    [(s, r, se, rid)] = seen
    assert s is scope
    assert r is receive
    assert se is send
    assert scope == snapshot
    assert rid is None
    assert [line for line in logs.lines() if line["logger"].startswith("observekit")] == []


# -- http: streaming ------------------------------------------------------------


def test_response_streams_chunk_by_chunk(config, logs):
    """Each body chunk reaches the server before the app produces the next; the access line comes last."""
    events: list[str] = []

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [TEXT]})
        for i in range(3):
            events.append(f"produce {i}")
            await send({"type": "http.response.body", "body": b"x" * (i + 1), "more_body": i < 2})

    def on_send(message: Message) -> None:
        if message["type"] == "http.response.body":
            events.append(f"sent {len(message['body'])}")
            assert logs.access() == []

    messages = run(ObservabilityMiddleware(app, config=config), http_scope(), on_send=on_send)

    assert events == ["produce 0", "sent 1", "produce 1", "sent 2", "produce 2", "sent 3"]
    assert bodies(messages) == [b"x", b"xx", b"xxx"]
    [start] = starts(messages)
    assert header_values(start, b"x-request-id") == [RID.encode()]
    [access] = logs.access()
    assert access["http.response.body.size"] == 6
    assert access["request_id"] == RID


def test_starlette_streaming_response_is_not_buffered(config, logs):
    """A 3-chunk StreamingResponse arrives as 3 body messages, each sent before the next is made."""
    events: list[str] = []

    async def chunks() -> Any:
        for i in range(3):
            events.append(f"produce {i}")
            yield f"chunk{i}".encode()

    def on_send(message: Message) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            events.append(f"sent {message['body'].decode()}")
            assert logs.access() == []

    app = StreamingResponse(chunks(), media_type="text/plain")
    messages = run(ObservabilityMiddleware(app, config=config), http_scope(), on_send=on_send)

    assert events == [
        "produce 0",
        "sent chunk0",
        "produce 1",
        "sent chunk1",
        "produce 2",
        "sent chunk2",
    ]
    assert [b for b in bodies(messages) if b] == [b"chunk0", b"chunk1", b"chunk2"]
    [start] = starts(messages)
    assert header_values(start, b"x-request-id") == [RID.encode()]
    [access] = logs.access()
    assert access["http.response.body.size"] == len(b"chunk0chunk1chunk2")


async def _stream_endpoint(request: Request) -> StreamingResponse:
    async def chunks() -> Any:
        for i in range(3):
            yield f"chunk{i}".encode()

    return StreamingResponse(
        chunks(), media_type="text/plain", headers={"X-Seen-ID": get_request_id() or ""}
    )


async def _ws_endpoint(websocket: WebSocket) -> None:
    rid = get_request_id()
    await websocket.accept()
    await websocket.send_text(rid or "")
    await websocket.close()


def _starlette_app() -> Starlette:
    return Starlette(
        routes=[Route("/stream", _stream_endpoint), WebSocketRoute("/ws", _ws_endpoint)]
    )


def test_testclient_streams_with_one_request_id(config, logs):
    """Through TestClient (lifespan included): the body, one X-Request-ID, the app saw the same ID."""
    with TestClient(ObservabilityMiddleware(_starlette_app(), config=config)) as client:
        response = client.get("/stream", headers={"X-Request-ID": RID})
    assert response.content == b"chunk0chunk1chunk2"
    assert response.headers.get_list("x-request-id") == [RID]
    assert response.headers["x-seen-id"] == RID
    [access] = logs.access()
    assert access["http.response.body.size"] == 18
    assert access["http.response.status_code"] == 200


@pytest.mark.parametrize(
    ("incoming", "echoed"),
    [
        pytest.param(RID, True, id="valid-id-echoed"),
        pytest.param(None, False, id="no-id-generated"),
        pytest.param("bad id", False, id="invalid-id-replaced"),
    ],
)
def test_httpx_asgi_transport_round_trip(config, logs, incoming, echoed):
    """Through httpx.ASGITransport: one valid X-Request-ID, the incoming one only when valid."""

    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(
            app=ObservabilityMiddleware(_starlette_app(), config=config)
        )
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            headers = {} if incoming is None else {"X-Request-ID": incoming}
            return await client.get("/stream", headers=headers)

    response = asyncio.run(main())
    [rid] = response.headers.get_list("x-request-id")
    assert is_valid_request_id(rid)
    assert (rid == incoming) is echoed
    assert response.headers["x-seen-id"] == rid
    assert response.content == b"chunk0chunk1chunk2"
    assert logs.access()[0]["request_id"] == rid


# -- http: the response header --------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(b"x-request-id", id="lower-case"),
        pytest.param(b"X-Request-ID", id="mixed-case"),
    ],
)
def test_app_set_request_id_header_is_replaced(config, logs, name):
    """A response whose app set X-Request-ID carries exactly one, ours; the app's list is untouched."""
    headers = [TEXT, (name, b"from-the-app"), (b"x-other", b"1")]
    snapshot = list(headers)

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    [start, _] = run(ObservabilityMiddleware(app, config=config), http_scope())

    assert header_values(start, b"x-request-id") == [RID.encode()]
    assert [h for h in start["headers"] if h[0].lower() != b"x-request-id"] == [
        TEXT,
        (b"x-other", b"1"),
    ]
    assert headers == snapshot


# -- http: exceptions -------------------------------------------------------------


def test_exception_before_start_sends_500_then_reraises(config, logs):
    """An app failing before http.response.start yields a 500 with X-Request-ID, then its own exception."""
    boom = BoomError("no response yet")

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        raise boom

    messages: list[Message] = []

    async def main() -> None:
        async def send(message: Message) -> None:
            messages.append(dict(message))

        await ObservabilityMiddleware(app, config=config)(http_scope(), make_receive([]), send)

    with pytest.raises(BoomError) as caught:
        asyncio.run(main())

    assert caught.value is boom
    [start] = starts(messages)
    assert start["status"] == 500
    assert header_values(start, b"x-request-id") == [RID.encode()]
    assert b"".join(bodies(messages)) == ERROR_BODY
    [error] = app_errors(logs)
    assert error["exception.type"] == f"{__name__}.BoomError"
    assert error["request_id"] == RID
    assert "Traceback" in error["exception.stacktrace"]
    [access] = logs.access()
    assert access["http.response.status_code"] == 500
    assert access["level"] == "ERROR"
    assert access["error.type"] == f"{__name__}.BoomError"


def test_exception_after_start_reraises_without_a_second_start(config, logs):
    """An app failing mid-body has its exception re-raised and no second http.response.start sent."""
    boom = BoomError("mid-body")

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [TEXT]})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise boom

    messages: list[Message] = []

    async def main() -> None:
        async def send(message: Message) -> None:
            messages.append(dict(message))

        await ObservabilityMiddleware(app, config=config)(http_scope(), make_receive([]), send)

    with pytest.raises(BoomError) as caught:
        asyncio.run(main())

    assert caught.value is boom
    assert [m["type"] for m in messages] == ["http.response.start", "http.response.body"]
    assert messages[0]["status"] == 200
    assert len(app_errors(logs)) == 1
    [access] = logs.access()
    assert access["http.response.status_code"] == 200
    assert access["level"] == "ERROR"
    assert access["error.type"] == f"{__name__}.BoomError"
    assert access["http.response.body.size"] == len(b"partial")


@pytest.mark.parametrize(
    "raise_server_exceptions",
    [pytest.param(True, id="raising-client"), pytest.param(False, id="non-raising-client")],
)
def test_testclient_sees_500_or_the_original_exception(config, logs, raise_server_exceptions):
    """Through TestClient the app's exception is re-raised as itself, or answered 500 with one ID."""
    boom = BoomError("through testclient")

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        raise boom

    client = TestClient(
        ObservabilityMiddleware(app, config=config), raise_server_exceptions=raise_server_exceptions
    )
    if raise_server_exceptions:
        with pytest.raises(BoomError) as caught:
            client.get("/", headers={"X-Request-ID": RID})
        assert caught.value is boom
    else:
        response = client.get("/", headers={"X-Request-ID": RID})
        assert response.status_code == 500
        assert response.content == ERROR_BODY
        assert response.headers.get_list("x-request-id") == [RID]
    assert len(app_errors(logs)) == 1


# -- websocket -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("incoming", "echoed"),
    [
        pytest.param(RID, True, id="valid-id"),
        pytest.param(None, False, id="no-id"),
        pytest.param("bad\tid", False, id="invalid-id"),
    ],
)
def test_websocket_gets_a_request_id(config, logs, incoming, echoed):
    """A websocket app sees the request ID in context, and websocket.accept carries it once."""
    seen: list[str | None] = []
    accept_headers = [(b"x-request-id", b"from-the-app"), (b"x-app", b"1")]
    snapshot = list(accept_headers)

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "websocket.connect"
        seen.append(get_request_id())
        await send({"type": "websocket.accept", "headers": accept_headers})
        seen.append(get_request_id())
        await send({"type": "websocket.close", "code": 1000})

    messages = run(
        ObservabilityMiddleware(app, config=config),
        ws_scope(incoming),
        incoming=[{"type": "websocket.connect"}],
    )

    rid = seen[0]
    assert rid is not None
    assert is_valid_request_id(rid)
    assert seen == [rid, rid]
    assert (rid == incoming) is echoed
    accept, close = messages
    assert accept["type"] == "websocket.accept"
    assert header_values(accept, b"x-request-id") == [rid.encode()]
    assert header_values(accept, b"x-app") == [b"1"]
    assert close["type"] == "websocket.close"
    assert accept_headers == snapshot
    assert get_request_id() is None
    assert logs.access() == []  # no access line for a websocket


def test_websocket_through_testclient(config, logs):
    """Through TestClient: the ws endpoint's get_request_id() is the incoming ID, echoed on accept."""
    with (
        TestClient(ObservabilityMiddleware(_starlette_app(), config=config)) as client,
        client.websocket_connect("/ws", headers={"X-Request-ID": RID}) as ws,
    ):
        assert ws.receive_text() == RID
        assert header_values({"headers": ws.extra_headers}, b"x-request-id") == [RID.encode()]


def test_websocket_rejection_warning_carries_the_new_id(config, logs):
    """The WARNING about a rejected websocket ID is logged with the ID the connection got."""
    seen: list[str | None] = []

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        seen.append(get_request_id())
        await send({"type": "websocket.close", "code": 1000})

    run(ObservabilityMiddleware(app, config=config), ws_scope("bad id"), incoming=[])
    [warning] = [line for line in logs.lines() if line["level"] == "WARNING"]
    assert warning.get("request_id") == seen[0]


# -- per-request state and context isolation ---------------------------------------


def test_no_per_request_state_on_the_middleware(config, logs):
    """vars(middleware) is the same before and after 100 concurrent requests, each seeing its own ID."""
    seen: dict[str, str | None] = {}

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        sent = dict(scope["headers"])[b"x-request-id"].decode()
        await asyncio.sleep(0)
        seen[sent] = get_request_id()
        await send({"type": "http.response.start", "status": 200, "headers": [TEXT]})
        await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": sent.encode()})

    middleware = ObservabilityMiddleware(app, config=config)
    before = dict(vars(middleware))
    observer_before = dict(vars(middleware.observer))
    ids = [f"req-{i:03d}" for i in range(100)]

    async def main() -> list[list[Message]]:
        return await asyncio.gather(*(call(middleware, http_scope(rid)) for rid in ids))

    results = asyncio.run(main())

    assert vars(middleware) == before
    assert all(vars(middleware)[key] is value for key, value in before.items())
    assert vars(middleware.observer) == observer_before
    assert seen == {rid: rid for rid in ids}
    for rid, messages in zip(ids, results, strict=True):
        assert header_values(starts(messages)[0], b"x-request-id") == [rid.encode()]
        assert bodies(messages) == [rid.encode()]


def test_context_isolation_under_asyncio(config, logs):
    """500 interleaved requests: every log line carries the ID its own request sent."""
    log = logging.getLogger("app")

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        sent = dict(scope["headers"])[b"x-request-id"].decode()
        log.info("before", extra={"sent_id": sent})
        await asyncio.sleep(0)
        log.info("after", extra={"sent_id": sent})
        await send({"type": "http.response.start", "status": 200, "headers": [TEXT]})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = ObservabilityMiddleware(app, config=config)
    ids = [f"iso-{i:04d}" for i in range(500)]

    async def main() -> None:
        await asyncio.gather(*(call(middleware, http_scope(rid)) for rid in ids))

    asyncio.run(main())

    app_lines = logs.by_logger("app")
    assert len(app_lines) == 1000
    assert all(line["request_id"] == line["sent_id"] for line in app_lines)
    assert sorted(line["request_id"] for line in logs.access()) == ids
    assert get_request_id() is None


def test_request_context_replaces_and_restores_an_outer_context(config, logs):
    """A context left over in the caller is shadowed during the request and restored after it."""
    seen: list[str | None] = []

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        seen.append(get_request_id())
        await plain()(scope, receive, send)

    async def main() -> str | None:
        await call(ObservabilityMiddleware(app, config=config), http_scope())
        return get_request_id()

    with observekit.request_context("stale-outer-id"):
        after = asyncio.run(main())
    assert seen == [RID]
    assert after == "stale-outer-id"


# -- robustness: nothing inside observekit raises into the app ---------------------


def _hostile_app(hostile: Hostile) -> ASGIApp:
    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if hostile.app_does is not None:
            hostile.app_does()
        await send(
            {
                "type": "http.response.start",
                "status": 201,
                "headers": [TEXT, (b"x-app", b"yes"), (b"content-length", b"9")],
            }
        )
        await send({"type": "http.response.body", "body": b"stream", "more_body": True})
        if hostile.app_does is not None:
            hostile.app_does()
        await send({"type": "http.response.body", "body": b"ed!"})

    return app


def _without_id(messages: list[Message]) -> list[Message]:
    out = []
    for message in messages:
        message = dict(message)
        if "headers" in message:
            message["headers"] = [
                (k, v) for k, v in message["headers"] if k.lower() != b"x-request-id"
            ]
        out.append(message)
    return out


@pytest.mark.parametrize("hostile", HOSTILE)
def test_broken_surroundings_never_change_the_response(logs, hostile):
    """With broken handlers, formatters, hooks or log values the messages are what the bare app sends."""
    if hostile.install is not None:
        hostile.install()
    overrides = {"log_request_received": True, **hostile.config}
    middleware = ObservabilityMiddleware(
        _hostile_app(hostile), config=observekit.Config(service_name="test-svc", **overrides)
    )

    bare = run(_hostile_app(hostile), http_scope(hostile.incoming))
    wrapped = run(middleware, http_scope(hostile.incoming))

    assert _without_id(wrapped) == bare
    [rid] = header_values(starts(wrapped)[0], b"x-request-id")
    assert is_valid_request_id(rid.decode())
    assert rid != hostile.incoming.encode()
    assert b"".join(bodies(wrapped)) == b"streamed!"
    assert strict_json_lines(logs.text)
    received, access = logs.access()  # log_request_received=True adds a DEBUG line
    assert (received["level"], access["level"]) == ("DEBUG", "INFO")
    assert received["request_id"] == access["request_id"] == rid.decode()
    assert (middleware.observer.internal_errors > 0) is hostile.internal


@pytest.mark.parametrize("hostile", HOSTILE)
def test_broken_surroundings_never_break_a_websocket(logs, hostile):
    """The same broken surroundings leave a websocket exchange as the bare app has it, ID aside."""
    if hostile.install is not None:
        hostile.install()
    middleware = ObservabilityMiddleware(
        _ws_echo, config=observekit.Config(service_name="test-svc", **hostile.config)
    )
    incoming = [{"type": "websocket.connect"}, {"type": "websocket.receive", "text": "hi"}]

    bare = run(_ws_echo, ws_scope(hostile.incoming), incoming=incoming)
    wrapped = run(middleware, ws_scope(hostile.incoming), incoming=incoming)

    assert _without_id(wrapped) == bare
    [rid] = header_values(wrapped[0], b"x-request-id")
    assert is_valid_request_id(rid.decode())
    assert strict_json_lines(logs.text)


async def _ws_echo(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    await receive()
    await send({"type": "websocket.accept", "headers": [(b"x-app", b"yes")]})
    message = await receive()
    await send({"type": "websocket.send", "text": message["text"]})
    await send({"type": "websocket.close", "code": 1000})


def test_cancelled_request_is_499_not_an_error(config, logs):
    """A request cancelled before any response is logged as 499 at INFO with error.type, not as a 500."""

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await asyncio.Event().wait()  # never answers

    async def main() -> None:
        task = asyncio.ensure_future(
            call(ObservabilityMiddleware(app, config=config), http_scope())
        )
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    (access,) = logs.access()
    assert access["http.response.status_code"] == 499
    assert access["level"] == "INFO"
    assert access["error.type"] == "asyncio.exceptions.CancelledError"
    assert app_errors(logs) == []  # no "unhandled exception" line for a cancellation


def test_websocket_denial_response_carries_the_id(config, logs):
    """A websocket denied with an HTTP response (websocket.http.response.start) carries X-Request-ID."""

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.http.response.start", "status": 403, "headers": [TEXT]})
        await send({"type": "websocket.http.response.body", "body": b"no"})

    messages = run(
        ObservabilityMiddleware(app, config=config),
        ws_scope(),
        incoming=[{"type": "websocket.connect"}],
    )
    assert header_values(messages[0], b"x-request-id") == [RID.encode()]
    assert header_values(messages[0], b"content-type") == [b"text/plain"]


def test_sync_endpoint_and_sync_stream_in_threadpool_see_the_id(config, logs):
    """Starlette runs sync endpoints and sync body iterators in a threadpool; both see the request ID."""
    seen: list[str | None] = []

    def sync_endpoint(request: Request) -> StreamingResponse:
        seen.append(get_request_id())

        def chunks() -> Iterator[bytes]:
            for i in range(3):
                seen.append(get_request_id())
                logging.getLogger("app").info("chunk %d", i)
                yield b"x"

        return StreamingResponse(chunks(), media_type="text/plain")

    app = Starlette(routes=[Route("/sync", sync_endpoint)])
    with TestClient(ObservabilityMiddleware(app, config=config)) as client:
        response = client.get("/sync", headers={"X-Request-ID": RID})
    assert response.text == "xxx"
    assert seen == [RID] * 4
    assert [line["request_id"] for line in logs.by_logger("app")] == [RID] * 3
    (access,) = logs.access()
    assert access["request_id"] == RID
    assert access["http.response.body.size"] == 3


BOTH_PATHS = [
    pytest.param(observekit.Config(service_name="test-svc"), id="full"),
    pytest.param(observekit.Config(service_name="test-svc", access_log=False), id="ids-only"),
]


@pytest.mark.parametrize("cfg", BOTH_PATHS)
def test_both_paths_echo_replace_and_scope_the_id(logs, cfg):
    """Full and ids-only paths: ID in context and echoed once, app's own header replaced, context reset."""
    seen: list[str | None] = []

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        seen.append(get_request_id())
        logging.getLogger("app").info("inside")
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"X-Request-ID", b"app"), TEXT],
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})

    messages = run(ObservabilityMiddleware(app, config=cfg), http_scope(RID))
    assert seen == [RID]
    assert [v for k, v in starts(messages)[0]["headers"] if k.lower() == b"x-request-id"] == [
        RID.encode()
    ]
    assert header_values(starts(messages)[0], b"content-type") == [b"text/plain"]
    assert [line["request_id"] for line in logs.by_logger("app")] == [RID]
    assert get_request_id() is None
    assert len(logs.access()) == (1 if cfg.access_log else 0)


@pytest.mark.parametrize("cfg", BOTH_PATHS)
def test_both_paths_turn_an_early_exception_into_a_500_with_the_id(logs, cfg):
    """Full and ids-only paths: an exception before the response gives a 500 with the ID, one ERROR line, the same exception."""
    error = BoomError("early")

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        raise error

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    with pytest.raises(BoomError) as info:
        asyncio.run(
            ObservabilityMiddleware(app, config=cfg)(http_scope("gen-1"), make_receive([]), send)
        )
    assert info.value is error
    (start,) = starts(sent)
    assert start["status"] == 500
    assert header_values(start, b"x-request-id") == [b"gen-1"]
    assert bodies(sent) == [ERROR_BODY]
    (line,) = app_errors(logs)
    assert line["request_id"] == "gen-1"
    assert line["exception.type"].endswith("BoomError")


@pytest.mark.parametrize("cfg", BOTH_PATHS)
def test_both_paths_reraise_a_late_exception_without_a_second_start(logs, cfg):
    """Full and ids-only paths: an exception after the response started is re-raised; no second start."""

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [TEXT]})
        raise BoomError("late")

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    with pytest.raises(BoomError):
        asyncio.run(ObservabilityMiddleware(app, config=cfg)(http_scope(), make_receive([]), send))
    assert len(starts(sent)) == 1
    assert len(app_errors(logs)) == 1
