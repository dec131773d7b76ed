"""Resilience: health endpoints, load shedding, rate limiting, circuit breakers, faults.

The server-side parts are switched on through :class:`observekit.Config` and run by
the middleware (health first, then shedding, rate limiting and fault injection,
before the app). The breakers and dependency-side fault rules are standalone
objects the outgoing-call hooks wrap around each call. This package imports no
third-party library; the Redis backend lives in
:mod:`observekit.resilience.ratelimit_redis` (``pip install 'observekit[redis]'``).
"""

from __future__ import annotations

from .breaker import BreakerRegistry, CircuitBreaker, CircuitOpenError, Permit
from .faults import Fault, FaultRule, FaultRules, parse_rules
from .health import Answer, Check, Health, dbapi_check, redis_check
from .ratelimit import Decision, MemoryRateLimiter, RateLimit, client_address, gcra
from .shedding import Shedder

__all__ = [
    "Answer",
    "BreakerRegistry",
    "Check",
    "CircuitBreaker",
    "CircuitOpenError",
    "Decision",
    "Fault",
    "FaultRule",
    "FaultRules",
    "Health",
    "MemoryRateLimiter",
    "Permit",
    "RateLimit",
    "Shedder",
    "client_address",
    "dbapi_check",
    "gcra",
    "parse_rules",
    "redis_check",
]
