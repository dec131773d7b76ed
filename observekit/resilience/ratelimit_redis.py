"""GCRA rate limits shared by many instances, in Redis: one atomic round trip per request.

The decision is one Lua script (sent once, then run by its SHA with
``EVALSHA``): it reads the key's TAT, decides with Redis's own clock (``TIME``,
so every instance agrees on "now" whatever its own clock says), and writes the
new TAT with an expiry of exactly the time until the key would be empty again,
so every key expires. :class:`RedisRateLimiter` uses sync redis-py (for WSGI
workers); :class:`AsyncRedisRateLimiter` uses ``redis.asyncio`` (for ASGI, no
blocking call on the event loop).

Connect and command timeouts are short and retries are off, so a Redis that is
down or slow adds at most about ``connect_timeout + timeout`` to a request; a
failure raises :class:`RateLimitBackendError` and the caller applies its fail
mode. After a failure, Redis is left alone for ``retry_interval`` seconds
(decisions go straight to the fail mode) so an outage does not add that
latency to every request.
"""

from __future__ import annotations

import time
from typing import Any

try:
    import redis
    import redis.asyncio as aioredis
    from redis.backoff import NoBackoff
except ImportError:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "the Redis rate-limit backend needs redis-py: pip install 'observekit[redis]'"
    ) from None

from .ratelimit import Decision, RateLimit

__all__ = ["AsyncRedisRateLimiter", "RateLimitBackendError", "RedisRateLimiter"]

# KEYS[1]: the key; ARGV[1]: emission interval (us); ARGV[2]: burst.
# Returns {allowed, remaining, reset_after_us, retry_after_us}.
GCRA_SCRIPT = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if now < allow_at then
  return {0, 0, tat - now, allow_at - now}
end
local ttl_ms = math.ceil((new_tat - now) / 1000)
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', ttl_ms)
return {1, math.floor((now - allow_at) / interval), new_tat - now, 0}
"""


class RateLimitBackendError(Exception):
    """Redis could not decide (down, slow, refused); the caller applies its fail mode."""


def _decision(reply: Any, rate: RateLimit) -> Decision:
    allowed, remaining, reset_us, retry_us = (int(x) for x in reply)
    return Decision(bool(allowed), rate.limit, remaining, reset_us / 1e6, retry_us / 1e6)


def _args(rate: RateLimit) -> list[int]:
    return [max(1, round(rate.interval * 1e6)), rate.burst]


class _Backoff:
    __slots__ = ("interval", "until")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.until = 0.0

    def check(self) -> None:
        if self.until and time.monotonic() < self.until:
            raise RateLimitBackendError("redis failed recently; not asking it yet")

    def failed(self) -> None:
        self.until = time.monotonic() + self.interval


class RedisRateLimiter:
    """GCRA in Redis through sync redis-py.

    :param url: ``redis://host:port/db`` (or ``rediss://``, with a password).
    :param prefix: prepended to every key.
    :param connect_timeout: seconds to connect.
    :param timeout: seconds a command may take.
    :param retry_interval: seconds Redis is not asked after a failure.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "observekit:rl:",
        connect_timeout: float = 0.1,
        timeout: float = 0.1,
        retry_interval: float = 1.0,
        client: Any = None,
    ) -> None:
        self.prefix = prefix
        self._client = client or redis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout,
            socket_timeout=timeout,
            retry=redis.retry.Retry(NoBackoff(), 0),
            retry_on_timeout=False,
        )
        self._script = self._client.register_script(GCRA_SCRIPT)
        self._backoff = _Backoff(retry_interval)

    def hit(self, key: str, rate: RateLimit) -> Decision:
        """Count one request for ``key``; :class:`RateLimitBackendError` when Redis fails."""
        self._backoff.check()
        try:
            reply = self._script(keys=[self.prefix + key], args=_args(rate))
        except Exception as exc:  # redis errors, OSError, timeouts alike
            self._backoff.failed()
            raise RateLimitBackendError(f"{type(exc).__name__}: {exc}") from exc
        return _decision(reply, rate)

    def close(self) -> None:
        self._client.close()


class AsyncRedisRateLimiter:
    """GCRA in Redis through ``redis.asyncio`` (same parameters as :class:`RedisRateLimiter`).

    A ``redis.asyncio`` connection belongs to the event loop it was made on;
    one client is kept per loop (a server runs one loop per worker process).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "observekit:rl:",
        connect_timeout: float = 0.1,
        timeout: float = 0.1,
        retry_interval: float = 1.0,
    ) -> None:
        self.prefix = prefix
        self._url = url
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._clients: dict[int, tuple[Any, Any, Any]] = {}
        self._backoff = _Backoff(retry_interval)

    def _for_loop(self) -> Any:
        import asyncio

        loop = asyncio.get_running_loop()
        found = self._clients.get(id(loop))
        if found is None or found[0]() is not loop:
            import weakref

            client = aioredis.Redis.from_url(
                self._url,
                socket_connect_timeout=self._connect_timeout,
                socket_timeout=self._timeout,
                retry=aioredis.retry.Retry(NoBackoff(), 0),
                retry_on_timeout=False,
            )
            found = (weakref.ref(loop), client, client.register_script(GCRA_SCRIPT))
            self._clients[id(loop)] = found
        return found[2]

    async def ahit(self, key: str, rate: RateLimit) -> Decision:
        """Count one request for ``key``; :class:`RateLimitBackendError` when Redis fails."""
        self._backoff.check()
        try:
            script = self._for_loop()
            reply = await script(keys=[self.prefix + key], args=_args(rate))
        except Exception as exc:
            self._backoff.failed()
            raise RateLimitBackendError(f"{type(exc).__name__}: {exc}") from exc
        return _decision(reply, rate)

    async def aclose(self) -> None:
        for _loop, client, _script in list(self._clients.values()):
            await client.aclose()
        self._clients.clear()
