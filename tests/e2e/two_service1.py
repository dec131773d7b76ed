"""service1 of the two-service end-to-end test: WSGI under gunicorn, calling service2.

Served by ``tests/e2e/test_two_services.py``. Three routes call service2's
``/work`` through observekit's client hooks: ``/requests`` (a hooked
``requests.Session``), ``/httpx`` (a hooked ``httpx.Client``) and
``/httpx-async`` (a hooked ``httpx.AsyncClient`` under ``asyncio.run`` inside
the WSGI handler: the request context follows into the task); ``/fan-out``
makes 100 concurrent async calls under ``asyncio.gather``, each inside its own
``request_context("<request ID>-<i>")``, and answers the pairs (ID set, ID
service2 saw). Each logs an app
line before and after the call and answers service2's JSON under ``service2``,
with its own request ID and trace ID. The caller's ``User-Agent`` is logged as
``probe`` and forwarded as service2's ``User-Agent``, so the test can find every
line of one request in both services without trusting ``request_id``. The
client's DEBUG line (logger ``observekit.client``) is on.

Environment: ``TWO_E2E_ENDPOINT`` (OTLP/HTTP base URL), ``TWO_E2E_SERVICE2``
(service2's base URL).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

import httpx
import requests
from opentelemetry import trace

import observekit
import observekit.logging
import observekit.propagation.httpx as ok_httpx
import observekit.propagation.requests as ok_requests
import observekit.tracing
from observekit.wsgi import ObservabilityMiddleware

CONFIG = observekit.Config(
    service_name="e2e-service1",
    service_version="e2e",
    environment="e2e",
    traces_exporter="otlp",
    otlp_endpoint=os.environ["TWO_E2E_ENDPOINT"],
    route_resolver=lambda info: info.path if info.path in _ROUTES else None,
)
observekit.logging.configure(CONFIG)
observekit.tracing.configure(CONFIG, schedule_delay=0.1)
logging.getLogger("observekit.client").setLevel(logging.DEBUG)
log = logging.getLogger("e2e.service1")
SERVICE2 = os.environ["TWO_E2E_SERVICE2"] + "/work"
_session = ok_requests.instrument_session(requests.Session(), config=CONFIG)
_client = ok_httpx.instrument_client(httpx.Client(timeout=10.0), config=CONFIG)
StartResponse = Callable[..., Any]


def _with_requests(headers: dict[str, str]) -> Any:
    response = _session.get(SERVICE2, headers=headers, timeout=10.0)
    response.raise_for_status()
    return response.json()


def _with_httpx(headers: dict[str, str]) -> Any:
    response = _client.get(SERVICE2, headers=headers)
    response.raise_for_status()
    return response.json()


def _with_httpx_async(headers: dict[str, str]) -> Any:
    async def call() -> Any:
        # A client per event loop: asyncio.run gives each request its own loop.
        async with ok_httpx.instrument_client(
            httpx.AsyncClient(timeout=10.0), config=CONFIG
        ) as client:
            response = await client.get(SERVICE2, headers=headers)
            response.raise_for_status()
            return response.json()

    return asyncio.run(call())


def _fan_out(headers: dict[str, str]) -> Any:
    """100 concurrent calls under asyncio.gather, each in its own request context."""
    parent = observekit.get_request_id()

    async def run() -> list[list[str]]:
        async with ok_httpx.instrument_client(
            httpx.AsyncClient(timeout=20.0), config=CONFIG
        ) as client:

            async def one(i: int) -> list[str]:
                with observekit.request_context(f"{parent}-{i}"):
                    await asyncio.sleep(0)
                    response = await client.get(SERVICE2, headers=headers)
                    response.raise_for_status()
                    return [f"{parent}-{i}", response.json()["request_id"]]

            return list(await asyncio.gather(*(one(i) for i in range(FAN_OUT))))

    return asyncio.run(run())


FAN_OUT = 100
_ROUTES: dict[str, Callable[[dict[str, str]], Any]] = {
    "/requests": _with_requests,
    "/httpx": _with_httpx,
    "/httpx-async": _with_httpx_async,
    "/fan-out": _fan_out,
}


def _app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    call = _ROUTES.get(environ.get("PATH_INFO", ""))
    if call is None:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok\n"]
    probe = environ.get("HTTP_USER_AGENT", "")
    log.info("service1 calls service2", extra={"probe": probe})
    answer = call({"User-Agent": probe})
    log.info("service1 got service2's answer", extra={"probe": probe})
    context = trace.get_current_span().get_span_context()
    body = json.dumps(
        {
            "request_id": observekit.get_request_id(),
            "trace_id": format(context.trace_id, "032x"),
            "service2": answer,
        }
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


app = ObservabilityMiddleware(_app, config=CONFIG)
