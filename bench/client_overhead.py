#!/usr/bin/env python
"""Per-call overhead of the outgoing-call hooks: observekit next to OpenTelemetry's httpx and
requests instrumentations, in ONE process and ONE interleaved run.

Stacks, per client (httpx sync, requests):

``bare``           the client alone
``observekit``     ``observekit.propagation`` hooks: X-Request-ID, traceparent (baggage too
                   when there is any), a CLIENT span, ``http.client.request.duration`` and
                   the request/error counters (OpenTelemetry metrics backend), the DEBUG
                   line check (logger at INFO, so not written)
``opentelemetry``  opentelemetry-instrumentation-httpx ``instrument_client`` /
                   opentelemetry-instrumentation-requests ``RequestsInstrumentor``: traceparent
                   + baggage, a CLIENT span, the duration histogram

Both use the same SDK TracerProvider, the one ``observekit.tracing.configure()``
builds (what an observekit user gets; set as the global one, with its global
tracecontext + baggage propagators; parent-based always-on sampler, its bounded
batch processor, a null exporter), and the same SDK MeterProvider (in-memory
reader). On that provider observekit makes light client spans; OpenTelemetry's
instrumentations make the SDK's spans on it as on any provider. Every call runs
inside a request context and a current parent span, as in a web app. The peer
is in-process (an httpx transport / a requests adapter answering ``200 ok``
without a socket), so the figures are the hooks' own CPU cost, not network
noise. Every round runs every stack ``--calls`` times in a shuffled order; a
stack's figure is the median per-call time over rounds; "added" is that minus
``bare``. Before measuring, each stack is checked to really send its headers
and record its span.

    .venv/bin/python bench/client_overhead.py            # ~30 s
    .venv/bin/python bench/client_overhead.py --quick    # a few seconds (CI)
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import logging
import platform
import random
import statistics
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import httpx
import requests
from opentelemetry import trace
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from requests.adapters import HTTPAdapter
from urllib3.response import HTTPResponse

import observekit
import observekit.tracing
from observekit.metrics.otel import OtelMetrics
from observekit.propagation import httpx as ok_httpx
from observekit.propagation import requests as ok_requests

URL = "http://service2.internal:8000/items/42"


class _NullExporter(SpanExporter):
    def __init__(self) -> None:
        self.count = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.count += len(spans)
        return SpanExportResult.SUCCESS


class _Body(httpx.SyncByteStream):
    """A streamed body, as a network transport returns (not bytes already in memory)."""

    def __iter__(self) -> Any:
        yield b"ok"


class _Transport(httpx.BaseTransport):
    """An in-process peer: answers 200 "ok" and remembers the last request's headers."""

    def __init__(self) -> None:
        self.last: httpx.Headers | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.last = request.headers
        return httpx.Response(
            200, stream=_Body(), headers={"Content-Type": "text/plain", "Content-Length": "2"}
        )


class _Adapter(HTTPAdapter):
    """An in-process peer for requests: a real urllib3 response over a BytesIO body."""

    def __init__(self) -> None:
        super().__init__()
        self.last: Any = None

    def send(self, request: Any, *args: Any, **kwargs: Any) -> requests.Response:
        self.last = request.headers
        raw = HTTPResponse(
            body=io.BytesIO(b"ok"),
            headers={"Content-Type": "text/plain", "Content-Length": "2"},
            status=200,
            preload_content=False,
            decode_content=False,
        )
        return self.build_response(request, raw)


def _stacks(tracer_provider: TracerProvider, meter_provider: MeterProvider) -> dict[str, Any]:
    config = observekit.Config(service_name="bench")
    metrics = OtelMetrics(meter_provider=meter_provider, service_name="bench")
    hooks: dict[str, Any] = {
        "config": config,
        "tracer_provider": tracer_provider,
        "metrics": metrics,
    }
    stacks: dict[str, Any] = {}

    peer = _Transport()
    stacks["httpx bare"] = (httpx.Client(transport=peer), peer, None)
    peer = _Transport()
    client = ok_httpx.instrument_client(httpx.Client(transport=peer), **hooks)
    stacks["httpx observekit"] = (client, peer, None)
    peer = _Transport()
    client = httpx.Client(transport=peer)
    HTTPXClientInstrumentor.instrument_client(
        client, tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    stacks["httpx opentelemetry"] = (client, peer, None)

    for name in ("bare", "observekit", "opentelemetry"):
        session = requests.Session()
        adapter = _Adapter()
        session.mount("http://", adapter)
        if name == "observekit":
            ok_requests.instrument_session(session, **hooks)
        # RequestsInstrumentor patches Session.send for every session: it is switched
        # on only around its own stack's calls (outside the timed loop).
        toggle = None
        if name == "opentelemetry":
            instrumentor = RequestsInstrumentor()

            def toggle(on: bool, instrumentor: RequestsInstrumentor = instrumentor) -> None:
                if on:
                    instrumentor.instrument(
                        tracer_provider=tracer_provider, meter_provider=meter_provider
                    )
                else:
                    instrumentor.uninstrument()

        stacks[f"requests {name}"] = (session, adapter, toggle)
    return stacks


def _run(client: Any, calls: int) -> float:
    """Seconds per call, for ``calls`` GETs (body read), inside a context and a parent span."""
    get = client.get
    tracer = trace.get_tracer("bench")
    with observekit.request_context(), tracer.start_as_current_span("parent"):
        start = time.perf_counter()
        for _ in range(calls):
            get(URL).content  # noqa: B018 - read the body: the span ends there
        return (time.perf_counter() - start) / calls


def _check(stacks: dict[str, Any], exporter: _NullExporter, provider: TracerProvider) -> None:
    """Each stack does its job: headers sent (or not, for bare) and a span recorded."""
    for name, (client, peer, toggle) in stacks.items():
        if toggle:
            toggle(True)
        try:
            before = exporter.count
            _run(client, 1)
            provider.force_flush()
        finally:
            if toggle:
                toggle(False)
        sent = {k.lower() for k in peer.last}
        want = "bare" not in name
        if ("traceparent" in sent) != want:
            raise SystemExit(f"{name}: traceparent sent={('traceparent' in sent)}, want {want}")
        if "observekit" in name and "x-request-id" not in sent:
            raise SystemExit(f"{name}: no X-Request-ID sent")
        spans = exporter.count - before
        # the parent span, plus one client span when instrumented
        if spans != (2 if want else 1):
            raise SystemExit(f"{name}: {spans} spans exported, want {2 if want else 1}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="5 rounds of 200 calls")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.calls = 5, 200
    logging.getLogger().setLevel(logging.INFO)

    exporter = _NullExporter()
    provider = observekit.tracing.configure(
        observekit.Config(service_name="bench"), exporter=exporter, max_queue_size=100_000
    )
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    stacks = _stacks(provider, meter_provider)
    _check(stacks, exporter, provider)

    names = list(stacks)
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm-up
        client, _, toggle = stacks[name]
        if toggle:
            toggle(True)
        _run(client, min(200, args.calls))
        if toggle:
            toggle(False)
    for _ in range(args.rounds):
        random.shuffle(names)
        for name in names:
            client, _, toggle = stacks[name]
            if toggle:
                toggle(True)
            gc.collect()
            times[name].append(_run(client, args.calls))
            if toggle:
                toggle(False)

    median = {name: statistics.median(values) * 1e6 for name, values in times.items()}
    print(
        f"client overhead, {args.rounds} rounds x {args.calls} calls, median µs per call "
        f"(Python {platform.python_version()}, httpx {httpx.__version__}, "
        f"requests {requests.__version__}, "
        f"opentelemetry-sdk {metadata.version('opentelemetry-sdk')})"
    )
    results: dict[str, Any] = {}
    failed = False
    for client_name in ("httpx", "requests"):
        bare = median[f"{client_name} bare"]
        ours = median[f"{client_name} observekit"] - bare
        theirs = median[f"{client_name} opentelemetry"] - bare
        ratio = ours / theirs if theirs > 0 else float("inf")
        print(f"  {client_name:<9} bare {bare:7.1f}")
        print(f"  {client_name:<9} + observekit     {ours:6.1f} µs added")
        print(f"  {client_name:<9} + opentelemetry  {theirs:6.1f} µs added")
        print(f"  {client_name:<9} ratio observekit / opentelemetry = {ratio:.2f} (target <= 0.5)")
        results[client_name] = {
            "bare_us": bare,
            "observekit_added_us": ours,
            "opentelemetry_added_us": theirs,
            "ratio": ratio,
        }
        failed = failed or ratio > 0.5
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    provider.shutdown()
    if failed and not args.quick:
        print("ratio above 0.5", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
