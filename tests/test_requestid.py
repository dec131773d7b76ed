"""The default request ID generator: shape, uniqueness across threads and forks, cost."""

from __future__ import annotations

import os
import re
import threading

import pytest

from observekit import _requestid
from observekit._requestid import generate_request_id

_HEX32 = re.compile(r"[0-9a-f]{32}")


def test_ids_are_32_lowercase_hex_digits_and_never_repeat() -> None:
    """Across many pools (64 IDs each) every ID is new and shaped like a W3C trace ID."""
    ids = [generate_request_id() for _ in range(5_000)]
    assert all(_HEX32.fullmatch(rid) for rid in ids)
    assert len(set(ids)) == len(ids)


def test_threads_never_get_the_same_id() -> None:
    """Eight threads drawing at once from the shared pool (and refilling it) share no ID."""
    per_thread = 4_000
    results: list[list[str]] = []
    start = threading.Barrier(8)

    def draw() -> None:
        start.wait()
        results.append([generate_request_id() for _ in range(per_thread)])

    threads = [threading.Thread(target=draw) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [rid for ids in results for rid in ids]
    assert len(everything) == 8 * per_thread
    assert len(set(everything)) == len(everything)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_repeat_the_parents_ids() -> None:
    """With IDs left in the parent's pool at fork time, the child draws different ones
    (gunicorn forks its workers from one parent: each must have IDs of its own)."""
    generate_request_id()  # a pool with 63 IDs left
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ten IDs, to the parent
        try:
            os.write(write, " ".join(generate_request_id() for _ in range(10)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split()
    os.waitpid(pid, 0)
    parent = [generate_request_id() for _ in range(10)]
    assert len(child) == 10
    assert not set(child) & set(parent)


def test_one_random_read_per_64_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """IDs come from the OS's CSPRNG, 64 per read: a system call every 64 requests."""
    reads: list[int] = []
    real = os.urandom

    def counting(size: int) -> bytes:
        reads.append(size)
        return real(size)

    monkeypatch.setattr(_requestid.os, "urandom", counting)
    monkeypatch.setattr(_requestid, "_ids", iter(()))
    ids = [generate_request_id() for _ in range(640)]
    assert len(set(ids)) == 640
    assert reads == [16 * 64] * 10
