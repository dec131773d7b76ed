"""Outgoing calls carry the request: request ID and trace context through httpx and requests.

Each client module wraps the client's own transport layer, never the call sites::

    import httpx
    import observekit.propagation.httpx

    client = observekit.propagation.httpx.instrument_client(httpx.Client())

    import requests
    import observekit.propagation.requests

    session = observekit.propagation.requests.instrument_session(requests.Session())

``instrument()`` in either module is the opt-in global switch, for module-level
calls (``httpx.get``, ``requests.get``) and clients built anywhere.

Inside a request (the middleware's) or a task (:func:`observekit.request_context`),
every call made through an instrumented client

* carries the request ID (header ``Config.outgoing_request_id_header``, default
  ``X-Request-ID``) and, when tracing is on, what the configured OpenTelemetry
  propagators inject (``traceparent``, ``tracestate``, ``baggage``), to the
  hosts ``Config.outgoing_allowed_hosts`` / ``outgoing_denied_hosts`` let through;
  a header the caller set is never replaced;
* gets a CLIENT span (a child of the current span), ended when the response body
  has been read or the response closed, or on a transport error;
* is measured (``http.client.request.duration``, ``http.client.requests``,
  ``http.client.errors`` by ``error.type``) on the Config's metrics backend;
* writes one DEBUG line on logger ``observekit.client``.

The hooks take ``config=`` (default: :meth:`observekit.Config.from_env`, read once)
and ``tracer_provider=`` (default: the global one, once tracing is configured).

This package imports neither httpx nor requests; :mod:`observekit.propagation.httpx`
and :mod:`observekit.propagation.requests` each import their own client.
"""

from __future__ import annotations

__all__: list[str] = []
