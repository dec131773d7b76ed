"""The ASGI application the end-to-end tests serve with uvicorn.

Importing this module points the root logger at stdout (JSON lines) and wraps
a small raw ASGI app in observekit's ASGI middleware. The routes are the same
as in ``wsgi_app`` (see its docstring, also for the ``probe`` field); the
handlers yield to the event loop between their log lines so that concurrent
requests interleave.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import time
from typing import Any

import observekit
from observekit.asgi import ObservabilityMiddleware

CONFIG = observekit.Config(service_name="e2e-asgi", service_version="e2e", environment="e2e")
observekit.logging.configure(CONFIG)

STREAM_CHUNKS = 3
log = logging.getLogger("e2e.app")

Send = Any
Receive = Any


def _start(
    status: int, content_type: str, extra: list[tuple[bytes, bytes]] | None = None
) -> dict[str, Any]:
    headers = [
        (b"content-type", content_type.encode()),
        (b"x-worker-pid", str(os.getpid()).encode()),
        *(extra or []),
    ]
    return {"type": "http.response.start", "status": status, "headers": headers}


async def _send_json(send: Send, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send(_start(200, "application/json", [(b"content-length", str(len(data)).encode())]))
    await send({"type": "http.response.body", "body": data})


async def _send_text(
    send: Send, status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(_start(status, "text/plain", extra))
    await send({"type": "http.response.body", "body": text.encode()})


def _thread_work(seen: str | None, probe: str | None) -> str | None:
    rid = observekit.get_request_id()
    log.info("thread start", extra={"seen_header": seen, "probe": probe, "thread_request_id": rid})
    time.sleep(0.001)
    rid = observekit.get_request_id()
    log.info("thread end", extra={"seen_header": seen, "probe": probe, "thread_request_id": rid})
    return rid


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    """The first value of a request header, as the app sees it (latin-1, like WSGI)."""
    return next((v.decode("latin-1") for k, v in scope["headers"] if k == name), None)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def routes(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    seen = _header(scope, b"x-request-id")
    probe = _header(scope, b"user-agent")
    path = scope["path"]
    if path == "/":
        log.info("handler start", extra={"seen_header": seen, "probe": probe})
        await asyncio.sleep(0.001)
        log.info("handler end", extra={"seen_header": seen, "probe": probe})
        await _send_json(send, {"request_id": observekit.get_request_id()})
    elif path == "/quiet":
        log.info("quiet handler", extra={"probe": probe})
        await _send_json(send, {"request_id": observekit.get_request_id()})
    elif path == "/thread":
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        thread_rid = await loop.run_in_executor(None, context.run, _thread_work, seen, probe)
        await _send_json(
            send, {"request_id": observekit.get_request_id(), "thread_request_id": thread_rid}
        )
    elif path == "/stream":
        await send(_start(200, "text/plain"))
        for i in range(STREAM_CHUNKS):
            log.info("stream chunk", extra={"seen_header": seen, "probe": probe, "chunk": i})
            await asyncio.sleep(0)
            chunk = f"{i}:{observekit.get_request_id()}\n".encode()
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/boom":
        log.info("about to fail", extra={"seen_header": seen, "probe": probe})
        raise RuntimeError("boom")
    elif path == "/own-header":
        await _send_text(send, 200, "own header\n", [(b"x-request-id", b"set-by-the-app")])
    elif path == "/healthz":
        await _send_text(send, 200, "ok\n")
    else:
        await _send_text(send, 404, "not found\n")


app = ObservabilityMiddleware(routes, config=CONFIG)
