"""Request IDs: validate an incoming value, generate a new one, explain a rejection."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator

__all__ = ["MAX_LENGTH", "generate_request_id", "is_valid_request_id", "rejection_reason"]

MAX_LENGTH = 128
_VALID = re.compile(r"[A-Za-z0-9\-._:+=/@]{1,128}")
_match = _VALID.fullmatch


def is_valid_request_id(value: str) -> bool:
    """The default validator: 1 to 128 characters of letters, digits and ``-._:+=/@``."""
    return _match(value) is not None


# IDs drawn per read of the OS's CSPRNG: a getrandom() system call per 64 requests
# instead of one per request (in-process ~160 ns an ID instead of ~510; more is saved
# where system calls are dear, as under gVisor).
_POOL = 64
_ids: Iterator[str] = iter(())
# Free-threaded builds give no promise that two threads' next() on one list iterator
# return different items; they draw each ID alone.
_pooled = getattr(sys, "_is_gil_enabled", lambda: True)()


def generate_request_id() -> str:
    """The default generator: 32 random lowercase hex digits.

    The same shape as a W3C trace ID, from the OS's CSPRNG (unguessable, unlike the
    ``random`` module), read 64 IDs at a time. Threads never get the same ID (a list
    iterator hands each item out once), and a forked child starts a pool of its own.
    """
    rid = next(_ids, None)
    return _refill() if rid is None else rid


def _refill() -> str:
    """A new pool; returns its first ID. Two threads that both find the pool empty each
    make one (from different random bytes), so neither waits on the other."""
    global _ids
    if not _pooled:
        return os.urandom(16).hex()
    ids = iter(os.urandom(16 * _POOL).hex(" ", 16).split())
    first = next(ids)  # before other threads can see the pool
    _ids = ids
    return first


def _forget_pool() -> None:
    global _ids
    _ids = iter(())


# Without this a forked worker would hand out the parent's remaining IDs, and so
# would each of its siblings.
if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_forget_pool)


def rejection_reason(value: str) -> str:
    """Why the default validator rejected ``value``, without repeating any of it."""
    if not value:
        return "empty"
    if len(value) > MAX_LENGTH:
        return f"longer than {MAX_LENGTH} characters ({len(value)})"
    return "contains characters other than letters, digits and -._:+=/@"
