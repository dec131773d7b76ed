"""Rate limiting with GCRA (the generic cell rate algorithm), in process memory.

A limit ``"100/minute"`` means a sustained rate of 100 requests per minute
(one every ``T = 0.6 s``, the *emission interval*) with a burst of up to 100
at once (``burst`` defaults to the limit). GCRA keeps one number per key, the
*theoretical arrival time* (TAT): when the key would be back to empty had it
been used at exactly the sustained rate. A request at ``now`` is allowed when
``max(TAT, now) + T - burst * T <= now``; then ``TAT = max(TAT, now) + T``.
That is a token bucket without a refill loop: exact at any request rate, O(1)
time and one float of memory per key, and in Redis one key updated atomically
by one short Lua script (see :mod:`observekit.resilience.ratelimit_redis`).

From a fresh key, at most ``burst`` requests pass at once and then one per
``T``: in any span of ``d`` seconds from a cold start, at most
``burst + floor(d / T)`` are allowed.

:class:`MemoryRateLimiter` is per process (each worker counts on its own);
its memory is bounded by evicting the least recently used key beyond
``max_keys``. It is safe under threads and asyncio: a decision is a few
arithmetic operations under a lock, never an ``await``.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = [
    "RATE_LIMITED",
    "Decision",
    "MemoryRateLimiter",
    "RateLimit",
    "client_address",
    "gcra",
]

RATE_LIMITED = "observekit.requests.rate_limited"
"""Counter of requests answered 429, labelled ``ratelimit.limit`` (the pattern or ``global``)."""

_UNITS = {"s": 1.0, "second": 1.0, "m": 60.0, "minute": 60.0, "h": 3600.0, "hour": 3600.0}
_UNITS["d"] = _UNITS["day"] = 86400.0
_SPEC = re.compile(r"\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*([a-z]+?)s?\s*", re.IGNORECASE)


@dataclass(frozen=True)
class RateLimit:
    """``limit`` requests per ``period`` seconds, with bursts of up to ``burst``."""

    limit: int
    period: float
    burst: int

    @classmethod
    def parse(cls, spec: str, burst: int | None = None) -> RateLimit:
        """``"100/minute"``, ``"10/second"``, ``"5000/hour"``, ``"1/day"``, ``"20/10s"``."""
        m = _SPEC.fullmatch(spec) if isinstance(spec, str) else None
        unit = m.group(3).lower() if m else ""
        if m is None or unit not in _UNITS:
            raise ValueError(
                f"a rate limit looks like '100/minute' or '20/10s' "
                f"(units second, minute, hour, day), got {spec!r}"
            )
        limit = int(m.group(1))
        period = float(m.group(2) or 1.0) * _UNITS[unit]
        if limit < 1 or period <= 0:
            raise ValueError(f"a rate limit needs at least 1 request per period, got {spec!r}")
        return cls(limit, period, limit if burst is None else burst)

    def __post_init__(self) -> None:
        if self.limit < 1 or self.burst < 1 or self.period <= 0:
            raise ValueError("limit and burst must be >= 1 and period > 0")

    @property
    def interval(self) -> float:
        """The emission interval ``T``: seconds per request at the sustained rate."""
        return self.period / self.limit


class Decision(NamedTuple):
    """One rate-limit decision, with what the response headers say."""

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    """Seconds until the key is back to a full burst (``RateLimit-Reset``)."""
    retry_after: float
    """Seconds until a request would be allowed (0 when allowed; ``Retry-After``)."""


def gcra(tat: float, now: float, rate: RateLimit) -> tuple[Decision, float]:
    """Decide one request at ``now`` for a key whose TAT is ``tat``; returns the new TAT."""
    interval = rate.interval
    base = tat if tat > now else now
    new_tat = base + interval
    allow_at = new_tat - rate.burst * interval
    if allow_at - now > 1e-9:  # a tolerance for float sums of the interval
        return Decision(False, rate.limit, 0, base - now, allow_at - now), tat
    remaining = max(0, int((now - allow_at) / interval + 1e-6))
    return Decision(True, rate.limit, remaining, new_tat - now, 0.0), new_tat


class MemoryRateLimiter:
    """GCRA per key in this process; at most ``max_keys`` keys (LRU eviction)."""

    def __init__(
        self, *, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ValueError(f"max_keys must be a whole number >= 1, got {max_keys!r}")
        self.max_keys = max_keys
        self._clock = clock
        self._tats: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._tats)

    def hit(self, key: str, rate: RateLimit) -> Decision:
        """Count one request for ``key`` and say whether it is allowed."""
        tats = self._tats
        with self._lock:
            now = self._clock()
            tat = tats.get(key)
            if tat is None:
                tat = now
            else:
                tats.move_to_end(key)
            decision, new_tat = gcra(tat, now, rate)
            if new_tat <= now:
                tats.pop(key, None)  # back to empty: nothing worth keeping
            else:
                tats[key] = new_tat
                if len(tats) > self.max_keys:
                    tats.popitem(last=False)
            return decision

    async def ahit(self, key: str, rate: RateLimit) -> Decision:
        """:meth:`hit` for async callers (it never waits on I/O)."""
        return self.hit(key, rate)


def client_address(
    client: str | None, headers: Mapping[str, str], trusted_proxies: int
) -> str | None:
    """The client's address, trusting exactly ``trusted_proxies`` hops of ``X-Forwarded-For``.

    Each trusted proxy appends the address it received the request from, so
    with ``n`` trusted proxies the client is the ``n``-th entry from the right.
    Entries further left were written by the client itself and are never
    believed. With fewer entries than ``n`` (a request that bypassed the
    proxies), the connection's own address is used.
    """
    if trusted_proxies <= 0:
        return client
    raw = headers.get("x-forwarded-for")
    if not raw:
        return client
    hops = [h.strip() for h in raw.split(",")]
    if len(hops) < trusted_proxies:
        return client
    return hops[-trusted_proxies] or client


def rate_limit_headers(decision: Decision) -> list[tuple[str, str]]:
    """``RateLimit-Limit``, ``-Remaining``, ``-Reset`` (IETF draft), and ``Retry-After`` on 429."""
    headers = [
        ("RateLimit-Limit", str(decision.limit)),
        ("RateLimit-Remaining", str(decision.remaining)),
        ("RateLimit-Reset", str(math.ceil(decision.reset_after))),
    ]
    if not decision.allowed:
        headers.append(("Retry-After", str(max(1, math.ceil(decision.retry_after)))))
    return headers


KeyFunc = Callable[[Any], str | None]
