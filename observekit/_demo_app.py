"""The demo service: a plain WSGI app behind observekit, served by ``observekit demo``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import observekit
from observekit.wsgi import ObservabilityMiddleware

config = observekit.Config.from_env(service_name="orders", environment="demo")
observekit.logging.configure(config)
log = logging.getLogger("orders")


def orders(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    if path == "/fail":
        log.info("charging card")
        raise RuntimeError("payment provider timed out")
    order_id = path.rstrip("/").rsplit("/", 1)[-1] or "0"
    observekit.bind(order_id=order_id)
    started = time.perf_counter()
    log.info("loading order", extra={"db.system": "sqlite"})
    body = f'{{"order": "{order_id}", "request_id": "{observekit.get_request_id()}"}}\n'.encode()
    log.info(
        "order loaded", extra={"db.duration_ms": round((time.perf_counter() - started) * 1000, 3)}
    )
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


app = ObservabilityMiddleware(orders, config=config)
