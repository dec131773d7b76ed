"""Per-process tables of values worked out from a request's few distinct inputs."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

__all__ = ["remembered"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def remembered(table: dict[K, V], key: K, build: Callable[[K], V], limit: int) -> V:
    """``build(key)``, kept in ``table`` for the next request with the same ``key``.

    For values that depend on a handful of inputs per process (a status line, the Host
    header): a look-up instead of parsing on each request. The table stops growing at
    ``limit`` entries, because such inputs come from clients; an unhashable key (a
    server that passes a list) is built each time and not kept.
    """
    try:
        found = table.get(key)
    except TypeError:
        return build(key)
    if found is None:
        found = build(key)
        if len(table) < limit:
            table[key] = found
    return found
