"""µs per request in-process, with the CPU caches cold before each request, as under a
real server.

Under gunicorn's sync workers the full stack costs about 4 times its in-process
µs (and the same CPU instructions): between two requests the server's own code and the
kernel's network path evict the middleware's code and data from the caches. This
bench gives that effect in-process: before each request it writes one byte in every
64 of a buffer larger than the caches (``--thrash-mb``, default 8), outside the timed
region, then times the request alone. Each stack of ``bench/server_apps.py`` runs in
its own process (``BENCH_STACK``), with the statsd and OTLP sinks of
``bench/instructions.py`` in another, for ``--rounds`` rounds of ``--requests``
requests, warm and cold; the figure is the median round.

    .venv/bin/python bench/cold_cache.py --stacks bare,observekit-ids,observekit

A change that cuts the cold figure cuts the server's CPU per request; one that only
cuts instructions may not. Timings still move with the machine's load: compare stacks
of one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.instructions import sinks, stack_env, wsgi_request


def _measure(requests: int, rounds: int, thrash_mb: int) -> tuple[float, float]:
    request = wsgi_request()
    buffer = memoryview(bytearray(thrash_mb << 20))
    ones = b"\x01" * (len(buffer) // 64)
    clock = time.perf_counter

    def run(cold: bool) -> float:
        total = 0.0
        for _ in range(requests):
            if cold:
                buffer[::64] = ones  # every cache line of the buffer, in C
            began = clock()
            request()
            total += clock() - began
        return total / requests * 1e6

    run(False)
    warm, cold = [], []
    for _ in range(rounds):
        warm.append(run(False))
        cold.append(run(True))
    return statistics.median(warm), statistics.median(cold)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stacks", default="bare,observekit")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--thrash-mb", type=int, default=8)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        warm, cold = _measure(args.requests, args.rounds, args.thrash_mb)
        print(f"{warm} {cold}", file=sys.stderr)  # stdout carries the access lines
        return 0
    with sinks() as (port, endpoint):
        print("| stack | warm µs/request | cold µs/request | cold, added to bare |")
        print("|---|---:|---:|---:|")
        bare: float | None = None
        for stack in args.stacks.split(","):
            env = stack_env(stack, "wsgi", port, endpoint)
            out = subprocess.run(
                [
                    sys.executable,
                    os.path.abspath(__file__),
                    "--measure",
                    "--requests",
                    str(args.requests),
                    "--rounds",
                    str(args.rounds),
                    "--thrash-mb",
                    str(args.thrash_mb),
                ],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            ).stderr
            warm, cold = map(float, out.split()[-2:])
            if stack == "bare":
                bare = cold
            added = "" if bare is None else f"+{cold - bare:.1f}"
            print(f"| {stack} | {warm:.1f} | {cold:.1f} | {added} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
