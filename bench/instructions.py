"""CPU instructions per request, counted by valgrind's callgrind: a steady figure where
timings on a shared machine move by ±20%.

Each stack of ``bench/server_apps.py`` (``BENCH_STACK``) is driven in-process with a
gunicorn-like environ, once for ``--small`` and once for ``--large`` requests, under
``valgrind --tool=callgrind --separate-threads=yes`` with ``PYTHONHASHSEED=0``. The
difference divided by ``large - small`` is the cost of one request, with start-up and
imports cancelled out. The request thread (the main thread) and the other threads (the
span export thread, the statsd flush) are reported apart. The statsd and OTLP sinks run
in a separate process, so their work is not counted.

Under a real gunicorn worker the stack costs the same instructions per request as here;
it runs them at a lower IPC (cold caches between requests), so this shows what a change
saves, not the requests/s it gives: ``bench/servers.py`` measures that.

    .venv/bin/python bench/instructions.py --stacks bare,observekit,observekit-spans
    .venv/bin/python bench/instructions.py --cache-sim --stacks bare,observekit-ids,observekit

``--cache-sim`` counts what the instructions cost under a real server instead: with
callgrind's cache model (a core's 32 KB L1s and a 1 MB last level) and the caches
made cold before each request, the last-level misses per request, for code and for
data. A request's code that nothing else on the server runs (a float formatted, a
format spec parsed) misses on every request; this shows it, where instruction counts
do not. Needs valgrind. Each stack takes about a minute (three with ``--cache-sim``).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import io
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _environ() -> dict[str, Any]:
    """What gunicorn's sync worker hands the app for ``GET /`` from a plain HTTP client."""
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "RAW_URI": "/",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "54321",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_USER_AGENT": "loadgen/1.0",
        "HTTP_ACCEPT": "*/*",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
        "gunicorn.socket": None,
    }


def wsgi_request() -> Callable[[], None]:
    """One ``GET /`` through ``bench.server_apps``'s WSGI app (``BENCH_STACK``), the body
    drained and closed as a gunicorn sync worker does; shared by the in-process benches."""
    sys.path.insert(0, _ROOT)
    from bench.server_apps import wsgi_app

    base = _environ()

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        return None

    def request() -> None:
        body = wsgi_app(dict(base), start_response)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()

    return request


def _drive(requests: int, thrash: bool) -> None:
    request = wsgi_request()
    if thrash:
        # Before each request, write one byte in every 64 of a buffer four times the
        # simulated last-level cache: the request then starts with cold caches, as under
        # a real server, where other processes run between two requests of a worker.
        view = memoryview(bytearray(4 * _LL_BYTES))
        ones = b"\x01" * (len(view) // 64)
        for _ in range(requests):
            view[::64] = ones
            request()
    else:
        for _ in range(requests):
            request()
    # Let the export thread send what is queued, inside the counted run for both sizes.
    time.sleep(1.5)
    from opentelemetry import trace

    flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if flush is not None:
        flush()


@contextlib.contextmanager
def sinks() -> Iterator[tuple[int, str]]:
    """The bench's statsd and OTLP sinks in a process of their own: (statsd port, OTLP URL)."""
    code = (
        f"import sys; sys.path.insert(0, {_ROOT!r})\n"
        "from bench.servers import _Sinks\n"
        "s = _Sinks(); print(s.statsd_port, s.otlp_endpoint, flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        port, endpoint = proc.stdout.readline().split()
        yield int(port), endpoint
    finally:
        proc.stdin.close()  # the sinks' process ends when its stdin does
        proc.wait(5)


def stack_env(stack: str, kind: str, port: int, endpoint: str) -> dict[str, str]:
    """The environment for a process that builds ``bench.server_apps``'s ``stack``, its
    metrics and spans going to the sinks ``sinks()`` gave."""
    return dict(
        os.environ,
        BENCH_STACK=stack,
        BENCH_KIND=kind,
        BENCH_STATSD_PORT=str(port),
        BENCH_OTLP_ENDPOINT=endpoint,
    )


# The simulated caches for --cache-sim: a core's L1s, and its L2 as the last level (the
# shared L3 holds what other processes evict from it; a miss here is a trip to it).
_LL_BYTES = 1 << 20
_CACHES = ["--I1=32768,8,64", "--D1=32768,8,64", f"--LL={_LL_BYTES},16,64"]


def _count(
    stack: str, requests: int, port: int, endpoint: str, cache_sim: bool = False
) -> dict[int, dict[str, int]]:
    """callgrind's events (``Ir``; with ``cache_sim`` also ``ILmr``, ``DLmr``, ...) per
    thread number (1 is the main thread) for one run."""
    with tempfile.TemporaryDirectory() as out:
        env = dict(stack_env(stack, "wsgi", port, endpoint), PYTHONHASHSEED="0")
        simulate = ["--cache-sim=yes", *_CACHES] if cache_sim else []
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--separate-threads=yes",
                *simulate,
                f"--callgrind-out-file={out}/cg.out",
                sys.executable,
                os.path.abspath(__file__),
                "--drive",
                str(requests),
                *(["--thrash"] if cache_sim else []),
            ],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        counts: dict[int, dict[str, int]] = {}
        for path in glob.glob(f"{out}/cg.out*"):
            match = re.search(r"-(\d+)$", path)
            thread = int(match.group(1)) if match else 1
            events: list[str] = []
            with open(path) as f:
                for line in f:
                    if line.startswith("events:"):
                        events = line.split()[1:]
                    elif line.startswith(("summary:", "totals:")):
                        counts[thread] = dict(zip(events, map(int, line.split()[1:]), strict=False))
                        break
        return counts


def _per_request(
    small: dict[int, dict[str, int]],
    large: dict[int, dict[str, int]],
    n: int,
    event: str,
    thread: int | None = None,
) -> float:
    """``event`` per request between two runs: one thread's, or all threads' (None)."""

    def total(counts: dict[int, dict[str, int]]) -> int:
        return sum(c.get(event, 0) for t, c in counts.items() if thread is None or t == thread)

    return (total(large) - total(small)) / n


def _cache_table(stacks: list[str], args: argparse.Namespace, port: int, endpoint: str) -> None:
    print("| stack | instructions | last-level misses: code | data | misses, added to bare |")
    print("|---|---:|---:|---:|---:|")
    bare: tuple[float, float, float] | None = None
    for stack in stacks:
        small = _count(stack, args.small, port, endpoint, cache_sim=True)
        large = _count(stack, args.large, port, endpoint, cache_sim=True)
        n = args.large - args.small
        instructions = _per_request(small, large, n, "Ir")
        code = _per_request(small, large, n, "ILmr")
        data = _per_request(small, large, n, "DLmr") + _per_request(small, large, n, "DLmw")
        if stack == "bare":
            bare = (instructions, code, data)
        # The thrash's own work (a miss per 64 bytes written) is in every stack's figures,
        # bare's too: each is given as added to bare's when bare was run first.
        if bare is None:
            print(f"| {stack} | {instructions / 1000:.0f}k | {code:.0f} | {data:.0f} | |")
        else:
            print(
                f"| {stack} | +{(instructions - bare[0]) / 1000:.0f}k | +{code - bare[1]:.0f} "
                f"| +{data - bare[2]:.0f} | +{code + data - bare[1] - bare[2]:.0f} |",
                flush=True,
            )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stacks", default="bare,observekit")
    parser.add_argument("--small", type=int, default=300)
    parser.add_argument("--large", type=int, default=1300)
    parser.add_argument(
        "--cache-sim",
        action="store_true",
        help="count simulated last-level cache misses per request, caches cold before each",
    )
    parser.add_argument("--drive", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--thrash", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive is not None:
        _drive(args.drive, args.thrash)
        return 0
    if args.cache_sim:
        if args.small == 300 and args.large == 1300:  # the simulation is ~10x slower
            args.small, args.large = 100, 400
        with sinks() as (port, endpoint):
            _cache_table(args.stacks.split(","), args, port, endpoint)
        return 0
    with sinks() as (port, endpoint):
        print("| stack | request thread | other threads | total | vs bare |")
        print("|---|---:|---:|---:|---:|")
        bare_total: float | None = None
        for stack in args.stacks.split(","):
            small = _count(stack, args.small, port, endpoint)
            large = _count(stack, args.large, port, endpoint)
            n = args.large - args.small
            main_thread = _per_request(small, large, n, "Ir", thread=1)
            others = _per_request(small, large, n, "Ir") - main_thread
            total = main_thread + others
            if stack == "bare":
                bare_total = total
            added = "" if bare_total is None else f"+{(total - bare_total) / 1000:.0f}k"
            print(
                f"| {stack} | {main_thread / 1000:.0f}k | {others / 1000:.0f}k "
                f"| {total / 1000:.0f}k | {added} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
