"""The Starlette app of the e2e tests (uvicorn): ``add_middleware``, a mount, a sub-app, a 500 handler."""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

import observekit
from observekit.asgi import ObservabilityMiddleware

log = logging.getLogger("e2e.app")
config = observekit.Config.from_env(service_name="e2e-starlette")
observekit.logging.configure(config)


def _probe(request: Request) -> str | None:
    return request.headers.get("user-agent")


async def index(request: Request) -> Response:
    log.info("index", extra={"probe": _probe(request)})
    return JSONResponse({"request_id": observekit.get_request_id()})


async def item(request: Request) -> Response:
    log.info("item", extra={"probe": _probe(request)})
    return JSONResponse(dict(request.path_params))


async def boom(request: Request) -> Response:
    log.info("about to fail", extra={"probe": _probe(request)})
    raise ValueError("boom from the endpoint")


async def teapot(request: Request) -> Response:
    raise HTTPException(status_code=418, detail="short and stout")


async def on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return PlainTextResponse(f"handled {exc.status_code}", status_code=exc.status_code)


async def on_error(request: Request, exc: Exception) -> Response:
    return PlainTextResponse("the app's own 500 page", status_code=500)


sub_app = Starlette(routes=[Route("/things/{thing_id:int}", item)])

app = Starlette(
    routes=[
        Route("/", index),
        Route("/healthz", index),
        Route("/items/{item_id}", item),
        Route("/boom", boom),
        Route("/teapot", teapot),
        Mount(
            "/api/{version}", routes=[Route("/items/{item_id}", item), Mount("/sub", app=sub_app)]
        ),
    ],
    exception_handlers={HTTPException: on_http_exception, Exception: on_error},
)
app.add_middleware(ObservabilityMiddleware, config=config)
