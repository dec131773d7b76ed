#!/usr/bin/env python
"""What one server span costs observekit.tracing.ServerSpans, in-process, in µs.

    .venv/bin/python bench/span_cost.py            # 9 rounds x 20 000 spans per case
    .venv/bin/python bench/span_cost.py --quick

Times start + activate + deactivate + finish (the calls the core makes per request)
with a real SDK TracerProvider built by ``observekit.tracing.configure`` and its
batch processor around an exporter that discards, next to the same SDK calls made
by hand (``raw-sdk``) and the SDK's floor (a span with no attributes). Cases:
sampled or not (``always_off``), with or without an incoming ``traceparent``.
GC stays on; the queue is flushed before each round. Interleaved rounds, median.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable, Sequence

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, set_span_in_context

import observekit
from observekit import tracing

TRACEPARENT = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


class Discard(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def cases() -> dict[str, tuple[Callable[[], None], Callable[[], object]]]:
    out: dict[str, tuple[Callable[[], None], Callable[[], object]]] = {}
    for sampler in ("parentbased_always_on", "always_off"):
        config = observekit.Config(service_name="bench", traces_sampler=sampler)
        provider = tracing.configure(config, exporter=Discard(), set_global=False)
        spans = tracing.ServerSpans(config, provider)
        for label, headers in (("", {}), (" +traceparent", TRACEPARENT)):

            def one(spans: tracing.ServerSpans = spans, headers: dict[str, str] = headers) -> None:
                handle = spans.start(
                    "GET",
                    "/items/42",
                    "http",
                    headers,
                    client="127.0.0.1",
                    server_address="localhost",
                    server_port=8000,
                    user_agent="bench/1.0",
                    protocol_version="1.1",
                    query=None,
                    route="/items/{id}",
                )
                token = spans.activate(handle)
                spans.deactivate(token)
                spans.finish(handle, status=200, route="/items/{id}", error=None, error_type=None)

            name = ("sampled" if sampler.endswith("on") else "unsampled") + label
            out[f"ServerSpans {name}"] = (one, lambda p=provider: p.force_flush())
    config = observekit.Config(service_name="bench")
    provider = tracing.configure(config, exporter=Discard(), set_global=False)
    tracer = provider.get_tracer("observekit")
    root = Context()
    attributes = {
        "http.request.method": "GET",
        "url.path": "/items/42",
        "url.scheme": "http",
        "http.route": "/items/{id}",
        "server.address": "localhost",
        "server.port": 8000,
        "client.address": "127.0.0.1",
        "user_agent.original": "bench/1.0",
        "network.protocol.version": "1.1",
    }

    def raw() -> None:
        span = tracer.start_span("GET /items/{id}", root, SpanKind.SERVER, dict(attributes))
        token = otel_context.attach(set_span_in_context(span, root))
        otel_context.detach(token)
        span.set_attribute("http.response.status_code", 200)
        span.end()

    def floor() -> None:
        tracer.start_span("GET", root, SpanKind.SERVER).end()

    out["raw-sdk sampled (same work by hand)"] = (raw, provider.force_flush)
    out["sdk floor (no attributes, no context)"] = (floor, provider.force_flush)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--spans", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rounds, n = (3, 3000) if args.quick else (args.rounds, args.spans)
    table = cases()
    samples: dict[str, list[float]] = {name: [] for name in table}
    for one, flush in table.values():
        for _ in range(1000):
            one()
        flush()
    for _ in range(rounds):
        for name, (one, flush) in table.items():
            flush()
            gc.collect()
            started = time.perf_counter_ns()
            for _ in range(n):
                one()
            samples[name].append((time.perf_counter_ns() - started) / n / 1000)
    tracing.shutdown()
    print(f"{rounds} rounds x {n} spans, median µs per span (GC on)\n")
    print("| case | µs |\n|---|---:|")
    for name, values in samples.items():
        print(f"| {name} | {statistics.median(values):.2f} |")


if __name__ == "__main__":
    main()
