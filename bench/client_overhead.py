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
noise. Before measuring, each stack is checked to really send its headers and
record its span.

How it is measured, so that a noisy shared machine cannot print a wildly wrong
ratio: every round runs every stack ``--calls`` times in a shuffled order, after
``gc.collect()`` and a span flush (outside the timed region, the same for every
stack, so that no stack pays for another's spans); a sample ends with a flush of
its own spans, timed (each stack pays for exporting its own spans); each sample
is timed by the wall clock (``perf_counter_ns``) and by the process's CPU clock
(``process_time_ns``: the export thread's work included, and a burst of another
process on the machine not). A stack's "added" is the median over rounds of
its sample minus the same round's ``bare`` sample (paired: a slow stretch of the
machine moves both). The ratio is observekit's added over OpenTelemetry's; the
range printed next to it is its 90% bootstrap interval over rounds (resampling
whole rounds), which says how far another run may land.

    .venv/bin/python bench/client_overhead.py            # ~45 s
    .venv/bin/python bench/client_overhead.py --quick    # ~5 s (CI)
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
STACKS = ("bare", "observekit", "opentelemetry")
CLOCKS = ("wall", "cpu")
# Many short rounds rather than a few long ones: a burst of another process on a
# shared machine then spoils a few samples (which the medians ignore) instead of
# every sample a little.
DEFAULT_ROUNDS = 60
DEFAULT_CALLS = 400
QUICK_ROUNDS = 15
QUICK_CALLS = 100
BOOTSTRAP = 2000
perf_counter_ns = time.perf_counter_ns
process_time_ns = time.process_time_ns


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

    for name in STACKS:
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


def _run(client: Any, calls: int, flush: Any = None) -> tuple[float, float]:
    """µs per call (wall clock, process CPU clock) for ``calls`` GETs (body read), inside a
    request context and a parent span; ``flush`` (timed too) exports the sample's spans."""
    get = client.get
    tracer = trace.get_tracer("bench")
    wall, cpu = perf_counter_ns(), process_time_ns()
    with observekit.request_context(), tracer.start_as_current_span("parent"):
        for _ in range(calls):
            get(URL).content  # noqa: B018 - read the body: the span ends there
    if flush is not None:
        flush()
    cpu, wall = process_time_ns() - cpu, perf_counter_ns() - wall
    return wall / calls / 1000.0, cpu / calls / 1000.0


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


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _ratio(ours: list[float], theirs: list[float]) -> float:
    """Median added by observekit over median added by OpenTelemetry (paired samples)."""
    denominator = statistics.median(theirs)
    return statistics.median(ours) / denominator if denominator > 0 else float("inf")


def _interval(ours: list[float], theirs: list[float], seed: int) -> tuple[float, float]:
    """90% bootstrap interval of :func:`_ratio`, resampling whole rounds."""
    rng = random.Random(seed)
    rounds = len(ours)
    ratios = []
    for _ in range(BOOTSTRAP):
        picked = [rng.randrange(rounds) for _ in range(rounds)]
        ratios.append(_ratio([ours[i] for i in picked], [theirs[i] for i in picked]))
    return _quantile(ratios, 0.05), _quantile(ratios, 0.95)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--calls", type=int, default=DEFAULT_CALLS, help="per stack per round")
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_ROUNDS} rounds of {QUICK_CALLS} calls"
    )
    parser.add_argument(
        "--clock",
        choices=CLOCKS,
        default="wall",
        help="clock of the headline figures and the 0.5 check (the other is printed too)",
    )
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.calls = QUICK_ROUNDS, QUICK_CALLS
    if args.rounds < 3:
        parser.error("--rounds must be at least 3")
    logging.getLogger().setLevel(logging.INFO)

    exporter = _NullExporter()
    provider = observekit.tracing.configure(
        observekit.Config(service_name="bench"), exporter=exporter, max_queue_size=100_000
    )
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    stacks = _stacks(provider, meter_provider)
    _check(stacks, exporter, provider)

    names = list(stacks)
    samples: dict[str, dict[str, list[float]]] = {
        clock: {name: [] for name in names} for clock in CLOCKS
    }
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
            provider.force_flush()  # no stack pays for another's queued spans...
            gc.collect()
            wall, cpu = _run(client, args.calls, provider.force_flush)  # ...each for its own
            if toggle:
                toggle(False)
            samples["wall"][name].append(wall)
            samples["cpu"][name].append(cpu)

    print(
        f"client overhead, {args.rounds} rounds x {args.calls} calls, µs per call: median over "
        f"rounds, added = paired with the same round's bare "
        f"(Python {platform.python_version()}, httpx {httpx.__version__}, "
        f"requests {requests.__version__}, "
        f"opentelemetry-sdk {metadata.version('opentelemetry-sdk')})"
    )
    results: dict[str, Any] = {"rounds": args.rounds, "calls": args.calls, "clock": args.clock}
    failed = False
    for client_name in ("httpx", "requests"):
        figures: dict[str, dict[str, Any]] = {}
        for clock in CLOCKS:
            times = samples[clock]
            bare = times[f"{client_name} bare"]
            ours = [a - b for a, b in zip(times[f"{client_name} observekit"], bare, strict=True)]
            theirs = [
                a - b for a, b in zip(times[f"{client_name} opentelemetry"], bare, strict=True)
            ]
            low, high = _interval(ours, theirs, seed=len(client_name))
            figures[clock] = {
                "bare_us": statistics.median(bare),
                "observekit_added_us": statistics.median(ours),
                "observekit_added_iqr_us": (_quantile(ours, 0.25), _quantile(ours, 0.75)),
                "opentelemetry_added_us": statistics.median(theirs),
                "opentelemetry_added_iqr_us": (_quantile(theirs, 0.25), _quantile(theirs, 0.75)),
                "ratio": _ratio(ours, theirs),
                "ratio_90pct": (low, high),
            }
        main_figures = figures[args.clock]
        other_clock = next(clock for clock in CLOCKS if clock != args.clock)
        other = figures[other_clock]
        print(f"  {client_name:<9} bare {main_figures['bare_us']:7.1f}")
        for stack in ("observekit", "opentelemetry"):
            q1, q3 = main_figures[f"{stack}_added_iqr_us"]
            print(
                f"  {client_name:<9} + {stack:<14} {main_figures[f'{stack}_added_us']:6.1f} µs "
                f"added (IQR {q1:.1f}-{q3:.1f})"
            )
        low, high = main_figures["ratio_90pct"]
        print(
            f"  {client_name:<9} ratio observekit / opentelemetry = {main_figures['ratio']:.2f} "
            f"(90% interval {low:.2f}-{high:.2f}; {other_clock} clock "
            f"{other['ratio']:.2f}) (target <= 0.5)"
        )
        results[client_name] = figures
        results[client_name]["samples_us"] = {
            clock: {stack: samples[clock][f"{client_name} {stack}"] for stack in STACKS}
            for clock in CLOCKS
        }
        failed = failed or main_figures["ratio"] > 0.5
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
