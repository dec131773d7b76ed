"""The aiohttp app of the e2e tests, run by aiohttp's own runner (``python -m aiohttp.web``)."""

from __future__ import annotations

import logging

from aiohttp import web

import observekit
import observekit.aiohttp

log = logging.getLogger("e2e.app")


def _probe(request: web.Request) -> str | None:
    return request.headers.get("User-Agent")


async def index(request: web.Request) -> web.Response:
    log.info("index", extra={"probe": _probe(request)})
    return web.json_response({"request_id": observekit.get_request_id()})


async def item(request: web.Request) -> web.Response:
    log.info("item", extra={"probe": _probe(request)})
    return web.json_response({"item_id": request.match_info["item_id"]})


async def boom(request: web.Request) -> web.Response:
    log.info("about to fail", extra={"probe": _probe(request)})
    raise ValueError("boom from the handler")


async def missing(request: web.Request) -> web.Response:
    raise web.HTTPNotFound(text="no such thing")


def create_app(argv: list[str] | None = None) -> web.Application:
    """The app factory ``python -m aiohttp.web tests.e2e.aiohttp_app:create_app`` calls."""
    config = observekit.Config.from_env(service_name="e2e-aiohttp")
    observekit.logging.configure(config)
    app = web.Application(middlewares=[observekit.aiohttp.middleware(config=config)])
    app.router.add_get("/", index)
    app.router.add_get("/healthz", index)
    app.router.add_get("/items/{item_id}", item)
    app.router.add_get("/boom", boom)
    app.router.add_get("/gone/{what}", missing)
    return app
