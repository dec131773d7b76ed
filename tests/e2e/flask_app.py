"""The Flask app of the e2e tests (gunicorn): ``Observekit(app)``, a blueprint, a failing view."""

from __future__ import annotations

import logging

from flask import Blueprint, Flask, Response, jsonify, request, stream_with_context

import observekit
from observekit.flask import Observekit

log = logging.getLogger("e2e.app")
observekit.logging.configure(observekit.Config(service_name="e2e-flask"))

app = Flask(__name__)
app.config["OBSERVEKIT"] = {"service_name": "e2e-flask"}
api = Blueprint("api", __name__, url_prefix="/api")


def _probe() -> str | None:
    return request.headers.get("User-Agent")


@app.get("/")
def index() -> Response:
    log.info("index", extra={"probe": _probe()})
    return jsonify(request_id=observekit.get_request_id())


@api.get("/items/<int:item_id>")
def item(item_id: int) -> Response:
    log.info("item", extra={"probe": _probe(), "item_id": item_id})
    return jsonify(item_id=item_id)


@app.get("/boom")
def boom() -> Response:
    log.info("about to fail", extra={"probe": _probe()})
    raise ValueError("boom from the view")


@app.get("/stream")
def stream() -> Response:
    probe = _probe()

    def chunks():  # type: ignore[no-untyped-def]
        for n in range(3):
            log.info("chunk", extra={"probe": probe, "chunk": n})
            yield f"{observekit.get_request_id()}\n"

    return Response(stream_with_context(chunks()), mimetype="text/plain")


app.register_blueprint(api)
Observekit(app)
