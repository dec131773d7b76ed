"""The guards the core runs between ``begin`` and the app: shedding, rate limit, faults.

Built once per middleware from the Config (:func:`build_guards`); ``None``
when none is configured, so an unguarded request costs one ``is None`` check.
Health endpoints are not here: the boundaries answer them before ``begin``.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable
from fnmatch import translate
from typing import TYPE_CHECKING, Any

from .._every import Every
from .faults import FaultRules
from .health import Answer
from .ratelimit import (
    RATE_LIMITED,
    Decision,
    MemoryRateLimiter,
    RateLimit,
    client_address,
    rate_limit_headers,
)
from .shedding import SHED, Shedder

if TYPE_CHECKING:
    from .._config import Config
    from .._core import Exchange, Observer

__all__ = ["BACKEND_ERRORS", "Guards", "build_guards"]

BACKEND_ERRORS = "observekit.ratelimit.backend_errors"
"""Counter of rate-limit decisions the backend (Redis) could not make, labelled
``ratelimit.fail_mode`` (``open``: let through; ``closed``: answered 503)."""

log = logging.getLogger("observekit.ratelimit")


def build_guards(config: Config, observer: Observer) -> Guards | None:
    """The guards ``config`` asks for, or None when it asks for none."""
    wants_faults = config.faults_enabled and any(r.side == "server" for r in config.fault_rules)
    if config.max_in_flight is None and not _has_rate_limits(config) and not wants_faults:
        return None
    return Guards(config, observer)


def _has_rate_limits(config: Config) -> bool:
    return config.rate_limit is not None or bool(config.rate_limit_routes)


class _Limit:
    __slots__ = ("label", "pattern", "rate")

    def __init__(self, pattern: str | None, spec: str, burst: int | None) -> None:
        self.label = pattern or "global"
        self.pattern = re.compile(translate(pattern)) if pattern else None
        self.rate = RateLimit.parse(spec, burst)


class Guards:
    """Shedding, rate limiting and server-side faults, in that order."""

    def __init__(self, config: Config, observer: Observer) -> None:
        self.observer = observer
        self.shedder = (
            Shedder(
                config.max_in_flight,
                queue_size=config.shed_queue_size,
                queue_wait=config.shed_queue_wait,
            )
            if config.max_in_flight is not None
            else None
        )
        self._shed_headers = [("Retry-After", str(config.shed_retry_after))]
        limits = [_Limit(p, s, config.rate_limit_burst) for p, s in config.rate_limit_routes]
        if config.rate_limit is not None:
            limits.append(_Limit(None, config.rate_limit, config.rate_limit_burst))
        self.limits = tuple(limits)
        self.fail_closed = config.rate_limit_fail_mode == "closed"
        self._backend_kind = config.rate_limit_backend
        self._config = config
        self._limiter: Any = None
        self._alimiter: Any = None
        if self.limits and self._backend_kind == "memory":
            self._limiter = self._alimiter = MemoryRateLimiter(max_keys=config.rate_limit_max_keys)
        elif self.limits:
            from . import ratelimit_redis  # ImportError names the [redis] extra

            self._redis = ratelimit_redis
        self._trusted = config.trusted_proxies
        key = config.rate_limit_key
        self._key_func: Callable[[Any], Any] | None = key if callable(key) else None
        self._key_header = (
            key.partition(":")[2].strip().lower()
            if isinstance(key, str) and key.startswith("header:")
            else None
        )
        self.faults = (
            FaultRules(
                config.fault_rules,
                enabled=config.faults_enabled,
                kill_file=config.faults_kill_file,
                metrics=observer.metrics,
            )
            if config.faults_enabled and config.fault_rules
            else None
        )
        names: list[str] = []
        if self.limits:
            if self._trusted:
                names.append("x-forwarded-for")
            if self._key_header:
                names.append(self._key_header)
        if self.faults is not None:
            names.extend(self.faults.header_names)
        self.header_names = tuple(names)
        self._backend_errors = Every(10.0)

    # -- the sync path (WSGI) ------------------------------------------------------

    def check(self, exchange: Exchange) -> Answer | None:
        """Run the guards for one request in a thread; an answer replaces the app."""
        shedder = self.shedder
        if shedder is not None:
            refused = shedder.acquire()
            if refused is not None:
                return self._shed(refused)
            exchange.release = shedder.release
        if self.limits:
            found = self._limit_for(exchange)
            if found is not None:
                limit, key = found
                if self._limiter is None:
                    self._limiter = self._redis_limiter(sync=True)
                try:
                    decision = self._limiter.hit(key, limit.rate)
                except Exception as exc:
                    answer = self._backend_failed(exc)
                    if answer is not None:
                        return answer
                else:
                    if not decision.allowed:
                        return self._limited(limit, decision)
        faults = self.faults
        if faults is not None:
            fault = self._fault(exchange)
            if fault is not None:
                fault.sleep()
                if fault.status is not None:
                    return _fault_answer(fault)
        return None

    # -- the async path (ASGI) -----------------------------------------------------

    async def acheck(self, exchange: Exchange) -> Answer | None:
        """Run the guards for one request in a coroutine; nothing blocks the loop."""
        shedder = self.shedder
        if shedder is not None:
            refused = await shedder.aacquire()
            if refused is not None:
                return self._shed(refused)
            exchange.release = shedder.release
        if self.limits:
            found = self._limit_for(exchange)
            if found is not None:
                limit, key = found
                if self._alimiter is None:
                    self._alimiter = self._redis_limiter(sync=False)
                try:
                    decision = await self._alimiter.ahit(key, limit.rate)
                except Exception as exc:
                    answer = self._backend_failed(exc)
                    if answer is not None:
                        return answer
                else:
                    if not decision.allowed:
                        return self._limited(limit, decision)
        faults = self.faults
        if faults is not None:
            fault = self._fault(exchange)
            if fault is not None:
                await fault.asleep()
                if fault.status is not None:
                    return _fault_answer(fault)
        return None

    # -- pieces ----------------------------------------------------------------------

    def _redis_limiter(self, *, sync: bool) -> Any:
        c = self._config
        cls = self._redis.RedisRateLimiter if sync else self._redis.AsyncRedisRateLimiter
        return cls(
            c.redis_url,
            prefix=f"observekit:rl:{c.service_name}:",
            connect_timeout=c.redis_connect_timeout,
            timeout=c.redis_timeout,
        )

    def _count(self, name: str, attributes: dict[str, str]) -> None:
        metrics = self.observer.metrics
        if metrics is not None:
            with contextlib.suppress(Exception):
                metrics.count(name, attributes)  # type: ignore[attr-defined]

    def _shed(self, reason: str) -> Answer:
        self._count(SHED, {"shed.reason": reason})
        return Answer.json(
            503, {"error": "overloaded", "reason": reason}, headers=self._shed_headers
        )

    def _limit_for(self, exchange: Exchange) -> tuple[_Limit, str] | None:
        info = exchange.info
        for limit in self.limits:
            if limit.pattern is None or limit.pattern.match(info.path):
                break
        else:
            return None
        if self._key_func is not None:
            try:
                who = self._key_func(info)
            except Exception:
                self.observer.internal_error("rate_limit_key raised")
                return None
            if who is None:
                return None
            who = f"k:{who}"
        else:
            who = None
            if self._key_header is not None:
                value = info.headers.get(self._key_header)
                if value:
                    who = f"h:{value}"
            if who is None:
                who = f"ip:{client_address(info.client, info.headers, self._trusted) or '-'}"
        return limit, f"{limit.label}|{who}"

    def _limited(self, limit: _Limit, decision: Decision) -> Answer:
        self._count(RATE_LIMITED, {"ratelimit.limit": limit.label})
        headers = rate_limit_headers(decision)
        return Answer.json(
            429, {"error": "rate limited", "retry_after": int(headers[-1][1])}, headers=headers
        )

    def _backend_failed(self, exc: Exception) -> Answer | None:
        mode = "closed" if self.fail_closed else "open"
        self._count(BACKEND_ERRORS, {"ratelimit.fail_mode": mode})
        held = self._backend_errors.ready()
        if held is not None:
            with contextlib.suppress(Exception):
                log.warning(
                    "rate limit backend failed (%s); failing %s",
                    exc,
                    mode,
                    extra={"ratelimit.fail_mode": mode, "ratelimit.errors_suppressed": held},
                )
        if not self.fail_closed:
            return None
        return Answer.json(
            503, {"error": "rate limiter unavailable"}, headers=[("Retry-After", "1")]
        )

    def _fault(self, exchange: Exchange) -> Any:
        faults = self.faults
        assert faults is not None
        info = exchange.info
        try:
            fault = faults.decide(
                side="server",
                method=info.method,
                path=info.path,
                headers=info.headers,
                route=info.route,
            )
        except Exception:
            self.observer.internal_error("deciding a fault failed")
            return None
        if fault is None:
            return None
        described = fault.describe()
        exchange.fault = described
        span = getattr(exchange.span, "span", None)
        if span is not None:
            with contextlib.suppress(Exception):
                span.set_attribute("fault.injected", described)
        return fault


def _fault_answer(fault: Any) -> Answer:
    return Answer.json(fault.status, {"error": "injected fault", "fault": fault.describe()})
