"""A small HTTP/1.1 load generator: N keep-alive connections for T seconds, to 127.0.0.1 only.

Run as its own process by `bench/servers.py` so the load comes from outside the
server; prints one JSON object: completed responses by class, errors, seconds.
It honours ``Connection: close`` (gunicorn's sync workers) by reconnecting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time


async def _worker(
    port: int, path: str, deadline: float, stats: dict[str, int], reconnect_every: int
) -> None:
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: observekit-bench\r\n"
    request, last = f"{head}\r\n".encode(), f"{head}Connection: close\r\n\r\n".encode()
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    sent = 0
    while time.monotonic() < deadline:
        try:
            if writer is None or reader is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            sent += 1
            # Asking for a close every so often spreads the load over every worker process.
            writer.write(last if reconnect_every and sent % reconnect_every == 0 else request)
            status_line = await reader.readline()
            if not status_line:
                raise ConnectionResetError("closed")
            status = int(status_line.split()[1])
            length = 0
            close = False
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            if length:
                await reader.readexactly(length)
            stats["2xx" if 200 <= status < 300 else "other"] += 1
            if close:
                writer.close()
                writer = reader = None
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            stats["errors"] += 1
            if writer is not None:
                writer.close()
            writer = reader = None
            await asyncio.sleep(0.001)
    if writer is not None:
        writer.close()


async def _run(
    port: int, path: str, seconds: float, connections: int, reconnect_every: int
) -> dict[str, float]:
    stats = {"2xx": 0, "other": 0, "errors": 0}
    start = time.monotonic()
    deadline = start + seconds
    await asyncio.gather(
        *(_worker(port, path, deadline, stats, reconnect_every) for _ in range(connections))
    )
    return {**stats, "seconds": time.monotonic() - start}


def run_load(
    port: int,
    *,
    path: str = "/",
    seconds: float = 5.0,
    connections: int = 8,
    reconnect_every: int = 0,
) -> dict[str, float]:
    """Load 127.0.0.1:``port`` for ``seconds``; counts of 2xx, other statuses and errors."""
    return asyncio.run(_run(port, path, seconds, connections, reconnect_every))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--reconnect-every", type=int, default=0, help="0: keep connections")
    args = parser.parse_args()
    result = run_load(
        args.port,
        path=args.path,
        seconds=args.seconds,
        connections=args.connections,
        reconnect_every=args.reconnect_every,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
