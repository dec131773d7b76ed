"""The two tiny services of the chaos experiment (see README.md and run.py).

``service2`` (WSGI, run by gunicorn): ``GET /work`` answers after 50 ms.
``service1`` (ASGI, run by uvicorn): ``GET /`` calls service2's ``/work`` through an
instrumented ``httpx.AsyncClient`` with a 200 ms timeout; a breaker and the fault
rules come from the environment (``OBSERVEKIT_BREAKER*``, ``OBSERVEKIT_FAULT*``).
It answers 200 with service2's body, 504 when service2 timed out, 503 when the
breaker refused the call, 502 on any other transport error.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import httpx

import observekit
import observekit.asgi
import observekit.logging
import observekit.wsgi
from observekit.propagation.httpx import instrument_client
from observekit.resilience import CircuitOpenError

config = observekit.Config.from_env()
observekit.logging.configure(config)
logging.getLogger("observekit.client").setLevel(logging.DEBUG)  # one line per outgoing call


def _service2(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    time.sleep(0.05)
    body = json.dumps({"pid": os.getpid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


service2 = observekit.wsgi.ObservabilityMiddleware(_service2, config=config)

_client: httpx.AsyncClient | None = None


async def _service1(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _client
    if _client is None:  # built in the worker, on its event loop
        _client = instrument_client(httpx.AsyncClient(timeout=0.2), config=config)
    try:
        response = await _client.get(os.environ["SERVICE2_URL"] + "/work")
        status, body = response.status_code, response.content
    except CircuitOpenError as exc:
        status, body = 503, json.dumps({"error": str(exc)}).encode()
    except httpx.TimeoutException:
        status, body = 504, b'{"error": "service2 timed out"}'
    except httpx.HTTPError as exc:
        status, body = 502, json.dumps({"error": type(exc).__name__}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


service1 = observekit.asgi.ObservabilityMiddleware(_service1, config=config)
