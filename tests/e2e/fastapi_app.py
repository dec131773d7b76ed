"""The FastAPI app of the e2e tests (uvicorn): ``add_middleware``, a router, a mount, handlers.

FastAPI's own ``HTTPException`` and validation (422) handlers stay in place; a
custom exception has its ``@app.exception_handler``; ``/boom`` raises with no
500 handler registered, so observekit's plain 500 answers.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

import observekit
from observekit.asgi import ObservabilityMiddleware

log = logging.getLogger("e2e.app")
config = observekit.Config.from_env(service_name="e2e-fastapi")
observekit.logging.configure(config)


class OutOfStockError(Exception):
    """The app's own exception, answered by its own handler with a 409."""

    def __init__(self, item_id: int) -> None:
        super().__init__(f"item {item_id} is out of stock")
        self.item_id = item_id


def _probe(request: Request) -> str | None:
    return request.headers.get("user-agent")


app = FastAPI()
users = APIRouter(prefix="/api/v1/users")
sub_app = FastAPI()


@app.exception_handler(OutOfStockError)
async def on_out_of_stock(request: Request, exc: OutOfStockError) -> JSONResponse:
    return JSONResponse({"error": "out_of_stock", "item_id": exc.item_id}, status_code=409)


@app.get("/")
async def index(request: Request) -> dict[str, str | None]:
    log.info("index", extra={"probe": _probe(request)})
    return {"request_id": observekit.get_request_id()}


@app.get("/items/{item_id}")
async def item(item_id: int, request: Request) -> dict[str, int]:
    log.info("item", extra={"probe": _probe(request)})
    return {"item_id": item_id}


@app.get("/missing/{item_id}")
async def missing(item_id: int) -> dict[str, int]:
    raise HTTPException(status_code=404, detail=f"item {item_id} not found")


@app.get("/reserve/{item_id}")
async def reserve(item_id: int) -> dict[str, int]:
    raise OutOfStockError(item_id)


@app.get("/search")
async def search(limit: int) -> dict[str, int]:
    return {"limit": limit}


@app.get("/boom")
def boom(request: Request) -> dict[str, str]:
    # A sync endpoint: FastAPI runs it in its thread pool, the context goes along.
    log.info("about to fail", extra={"probe": _probe(request)})
    raise ValueError("boom from the endpoint")


@users.get("/{user_id}")
async def user(user_id: int, request: Request) -> dict[str, int]:
    log.info("user", extra={"probe": _probe(request)})
    return {"user_id": user_id}


@sub_app.get("/things/{thing_id}")
async def thing(thing_id: int, request: Request) -> dict[str, int]:
    log.info("thing", extra={"probe": _probe(request)})
    return {"thing_id": thing_id}


app.include_router(users)
app.mount("/sub", sub_app)
app.add_middleware(ObservabilityMiddleware, config=config)
