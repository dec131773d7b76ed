"""Views that log a ``probe`` line (the request's User-Agent) so tests find their lines."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse

import observekit

log = logging.getLogger("e2e.app")
CHUNKS = 3


def _probe(request: HttpRequest) -> str | None:
    return request.headers.get("User-Agent")


def index(request: HttpRequest) -> HttpResponse:
    log.info("index", extra={"probe": _probe(request)})
    return JsonResponse({"request_id": observekit.get_request_id()})


def item(request: HttpRequest, item_id: int) -> HttpResponse:
    log.info("item", extra={"probe": _probe(request), "item_id": item_id})
    return JsonResponse({"item_id": item_id, "request_id": observekit.get_request_id()})


async def async_view(request: HttpRequest, name: str) -> HttpResponse:
    await asyncio.sleep(0)
    log.info("async view", extra={"probe": _probe(request)})
    return JsonResponse({"name": name, "request_id": observekit.get_request_id()})


def boom(request: HttpRequest) -> HttpResponse:
    log.info("about to fail", extra={"probe": _probe(request)})
    raise ValueError("boom from the view")


def stream(request: HttpRequest) -> HttpResponse:
    probe = _probe(request)

    def chunks() -> Iterator[bytes]:
        for n in range(CHUNKS):
            log.info("chunk", extra={"probe": probe, "chunk": n})
            yield f"{observekit.get_request_id()}\n".encode()

    return StreamingHttpResponse(chunks(), content_type="text/plain")


def astream(request: HttpRequest) -> HttpResponse:
    probe = _probe(request)

    async def chunks() -> AsyncIterator[bytes]:
        for n in range(CHUNKS):
            await asyncio.sleep(0)
            log.info("chunk", extra={"probe": probe, "chunk": n})
            yield f"{observekit.get_request_id()}\n".encode()

    return StreamingHttpResponse(chunks(), content_type="text/plain")
