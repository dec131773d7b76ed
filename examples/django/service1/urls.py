"""service1's routes: ``/`` calls service2 (an instrumented httpx client), ``/fail`` raises."""

from __future__ import annotations

import logging

import httpx
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.urls import path

import observekit
import observekit.django
import observekit.propagation.httpx

log = logging.getLogger("service1")

# One client per process: the request ID and the trace context go on every call.
client = observekit.propagation.httpx.instrument_client(
    httpx.Client(timeout=5.0), config=observekit.django.config_from_settings()
)


def index(request: HttpRequest) -> JsonResponse:
    log.info("asking service2 for the items")
    response = client.get(f"{settings.SERVICE2_URL}/")
    response.raise_for_status()
    items = response.json()["items"]
    log.info("got the items", extra={"items": len(items)})
    return JsonResponse({"items": items, "request_id": observekit.get_request_id()})


def fail(request: HttpRequest) -> JsonResponse:
    log.info("charging the card")
    raise RuntimeError("payment provider timed out")


urlpatterns = [path("", index), path("fail", fail)]
