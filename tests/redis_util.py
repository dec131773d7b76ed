"""The real Redis on 127.0.0.1:6379 for tests, and stand-ins for a Redis that is down or slow.

Without Redis the Redis tests skip with the reason, except where
``OBSERVEKIT_REQUIRE_REDIS=1`` (``.ci/run`` sets it after starting Redis):
there a missing Redis fails them, so CI never passes by skipping.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import pytest

REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The real Redis; skip (or fail, under OBSERVEKIT_REQUIRE_REDIS=1) when it is not there."""
    if not redis_reachable():
        reason = "Redis is not answering on 127.0.0.1:6379 (start redis-server)"
        if os.environ.get("OBSERVEKIT_REQUIRE_REDIS") == "1":
            pytest.fail(reason + "; OBSERVEKIT_REQUIRE_REDIS=1 forbids skipping")
        pytest.skip(reason)
    return REDIS_URL


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def blackhole_port() -> Iterator[int]:
    """A server that accepts connections and never answers (a hung Redis)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(128)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            held.append(conn)  # kept open, never read, never answered

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()
