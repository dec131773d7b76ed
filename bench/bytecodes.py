"""Python bytecodes per request, by function: where a stack's per-request work goes.

``instructions.py`` says how many CPU instructions a request costs; this says which
functions they are spent in. It drives one ``bench/server_apps.py`` stack in-process
(WSGI with a gunicorn-like environ, or ASGI with a uvicorn-like scope), warms it up,
then counts every bytecode the next ``--requests`` requests execute, per function, with
``sys.settrace`` opcode events. A bytecode is not a fixed cost (a call or a C function
behind it costs more), but the counts are exact and repeatable, and a function's share
of them is a fair first guide to its share of the time. The statsd and OTLP sinks run in
another process; the span export thread is not counted (``--export`` counts the OTLP
encoding of the queued spans instead, in this thread).

    .venv/bin/python bench/bytecodes.py                         # WSGI, full stack
    .venv/bin/python bench/bytecodes.py --kind asgi --top 40
    .venv/bin/python bench/bytecodes.py --stack observekit-access
    .venv/bin/python bench/bytecodes.py --export                # per span, export side
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import subprocess
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.instructions import sinks, stack_env, wsgi_request

_SCOPE = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.3"},
    "http_version": "1.1",
    "server": ("127.0.0.1", 8000),
    "client": ("127.0.0.1", 54321),
    "scheme": "http",
    "method": "GET",
    "root_path": "",
    "path": "/",
    "raw_path": b"/",
    "query_string": b"",
    "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"loadgen/1.0"), (b"accept", b"*/*")],
}


def _one_request(kind: str) -> Callable[[], None]:
    """A function that sends one ``GET /`` through the stack and drains the response."""
    if kind == "wsgi":
        return wsgi_request()
    from bench.server_apps import asgi_app

    loop = asyncio.new_event_loop()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    def asgi() -> None:
        loop.run_until_complete(asgi_app(dict(_SCOPE), receive, send))

    return asgi


def _counting(counts: collections.Counter[str]) -> Callable[..., Any]:
    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        if event == "opcode":
            code = frame.f_code
            where = f"{os.path.basename(code.co_filename)}:{code.co_firstlineno}"
            counts[f"{where} {code.co_name}"] += 1
        return trace

    return trace


def _measure(kind: str, requests: int, export: bool) -> tuple[collections.Counter[str], int]:
    one = _one_request(kind)
    for _ in range(200):  # caches, templates, first-use paths
        one()
    counts: collections.Counter[str] = collections.Counter()
    if not export:
        sys.settrace(_counting(counts))
        try:
            for _ in range(requests):
                one()
        finally:
            sys.settrace(None)
        return counts, requests
    from opentelemetry import trace

    provider: Any = trace.get_tracer_provider()
    provider.force_flush()
    batch = provider._active_span_processor._span_processors[0]._batch
    for _ in range(requests):
        one()
    spans = list(batch._queue)[::-1]  # the queue takes new spans on the left
    batch._queue.clear()
    sys.settrace(_counting(counts))
    try:
        batch._exporter.export(spans)
    finally:
        sys.settrace(None)
    return counts, len(spans)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stack", default="observekit")
    parser.add_argument("--kind", choices=("wsgi", "asgi"), default="wsgi")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument(
        "--export", action="store_true", help="count the OTLP export of the spans instead"
    )
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.export and args.requests > 500:
        parser.error("--export needs --requests <= 500 (the batch processor exports at 512)")
    if args.measure:
        counts, per = _measure(args.kind, args.requests, args.export)
        total = sum(counts.values())
        unit = "span" if args.export else "request"
        print(
            f"{args.stack} ({args.kind}): {total / per:.0f} bytecodes per {unit}", file=sys.stderr
        )
        for where, count in counts.most_common(args.top):
            print(f"{count / per:8.1f}  {where}", file=sys.stderr)
        return 0
    with sinks() as (port, endpoint):
        env = stack_env(args.stack, args.kind, port, endpoint)
        began = time.monotonic()
        subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--measure", *sys.argv[1:]],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,  # the access lines
        )
        print(f"({time.monotonic() - began:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
