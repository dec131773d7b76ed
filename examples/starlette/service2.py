"""service2: a Starlette app behind observekit that reads from a database (the demo's back service).

``/`` runs one ``SELECT`` inside a CLIENT span. The database is a SQLite file in a
temporary directory unless ``SERVICE2_DATABASE_URL`` names another one:
``postgresql://user@host:5432/db`` (needs ``psycopg``) or
``mysql://user@host:3306/db`` (MariaDB/MySQL, needs ``pymysql``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from opentelemetry import trace
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import observekit
import observekit.logging
import observekit.tracing
from observekit.asgi import ObservabilityMiddleware

config = observekit.Config.from_env(service_name="service2", environment="demo")
observekit.logging.configure(config)
# Export spans every 0.2 s (the SDK's default is 5 s) so a demo shows them at once.
observekit.tracing.configure(config, schedule_delay=0.2)
log = logging.getLogger("service2")
tracer = trace.get_tracer("service2")

TABLE = "observekit_demo_items"  # its own name: a database given by URL keeps its tables
QUERY = f"SELECT id, name FROM {TABLE} ORDER BY id"  # noqa: S608 - a constant
ITEMS = [(1, "keyboard"), (2, "mouse"), (3, "monitor")]


def _connector() -> tuple[str, dict[str, Any], Callable[[], Any]]:
    """(db.system, span attributes, connect) for ``SERVICE2_DATABASE_URL`` or SQLite."""
    url = os.environ.get("SERVICE2_DATABASE_URL", "")
    if not url:
        path = os.path.join(tempfile.mkdtemp(prefix="service2-"), "items.sqlite3")
        return "sqlite", {"db.name": path}, lambda: sqlite3.connect(path)
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    attributes = {
        "db.name": name,
        "server.address": parts.hostname or "",
        "server.port": parts.port or 0,
    }
    if parts.scheme.startswith("postgres"):
        import psycopg  # optional: pip install psycopg

        return "postgresql", attributes, lambda: psycopg.connect(url)
    if parts.scheme in {"mysql", "mariadb"}:
        import pymysql  # optional: pip install pymysql

        return (
            "mysql",
            attributes,
            lambda: pymysql.connect(
                host=parts.hostname or "127.0.0.1",
                port=parts.port or 3306,
                user=unquote(parts.username or "root"),
                password=unquote(parts.password or ""),
                database=name,
            ),
        )
    raise SystemExit(f"SERVICE2_DATABASE_URL: unsupported scheme {parts.scheme!r}")


DB_SYSTEM, DB_ATTRIBUTES, connect = _connector()


def _seed() -> None:
    with contextlib.closing(connect()) as db:
        cursor = db.cursor()
        cursor.execute(f"DROP TABLE IF EXISTS {TABLE}")
        cursor.execute(f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, name VARCHAR(50))")
        mark = "?" if DB_SYSTEM == "sqlite" else "%s"
        insert = f"INSERT INTO {TABLE} (id, name) VALUES ({mark}, {mark})"  # noqa: S608 - constants
        for item in ITEMS:
            cursor.execute(insert, item)
        db.commit()


def index(request: Request) -> JSONResponse:
    # A sync endpoint runs in Starlette's thread pool, with the request's context.
    with (
        tracer.start_as_current_span(
            "SELECT",
            kind=trace.SpanKind.CLIENT,
            attributes={"db.system": DB_SYSTEM, "db.statement": QUERY, **DB_ATTRIBUTES},
        ),
        contextlib.closing(connect()) as db,
    ):
        cursor = db.cursor()
        cursor.execute(QUERY)
        rows = cursor.fetchall()
    log.info("items loaded", extra={"db.system": DB_SYSTEM, "rows": len(rows)})
    return JSONResponse({"items": [{"id": r[0], "name": r[1]} for r in rows]})


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    _seed()
    yield
    # uvicorn runs no exit handlers on SIGTERM: flush the spans here.
    await observekit.tracing.ashutdown()


app = Starlette(routes=[Route("/", index)], lifespan=lifespan)
app.add_middleware(ObservabilityMiddleware, config=config)
