"""Load shedding: at most ``max_in_flight`` requests per process, the rest answered 503 at once.

A service past its capacity gets slower for everyone; answering the excess
``503`` with ``Retry-After`` right away keeps the admitted requests fast and
tells clients (and load balancers) to come back. An optional short queue
(``queue_size`` waiters, each for at most ``queue_wait`` seconds) absorbs
brief spikes: a released slot passes straight to the oldest waiter, so the
in-flight count never exceeds the maximum.

One :class:`Shedder` is shared by the threads of a WSGI worker and by the
tasks of an ASGI event loop; the lock is held only to count, never while
waiting.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Any

__all__ = ["SHED", "Shedder"]

SHED = "observekit.requests.shed"
"""Counter of requests answered 503 by load shedding, labelled ``shed.reason``
(``overloaded``: no slot and no queue room; ``queue_timeout``: waited too long)."""


class _Waiter:
    __slots__ = ("event", "future", "granted", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.granted = False
        self.loop = loop
        self.event: threading.Event | None = None if loop else threading.Event()
        self.future: asyncio.Future[None] | None = loop.create_future() if loop else None

    def wake(self) -> None:
        if self.event is not None:
            self.event.set()
        elif self.loop is not None and self.future is not None:
            future = self.future
            self.loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Shedder:
    """Counts requests in flight and admits at most ``max_in_flight`` of them."""

    def __init__(self, max_in_flight: int, *, queue_size: int = 0, queue_wait: float = 0.0) -> None:
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int):
            raise TypeError(f"max_in_flight must be an int, got {max_in_flight!r}")
        if max_in_flight < 1 or queue_size < 0 or queue_wait < 0:
            raise ValueError("max_in_flight must be >= 1, queue_size and queue_wait >= 0")
        self.max_in_flight = max_in_flight
        self.queue_size = queue_size if queue_wait > 0 else 0
        self.queue_wait = float(queue_wait)
        self.in_flight = 0
        self._waiters: deque[_Waiter] = deque()
        self._lock = threading.Lock()

    def _enter(self, loop: Any) -> bool | _Waiter:
        """Under the lock: True (admitted), False (shed) or a waiter to wait on."""
        if self.in_flight < self.max_in_flight and not self._waiters:
            self.in_flight += 1
            return True
        if len(self._waiters) >= self.queue_size:
            return False
        waiter = _Waiter(loop)
        self._waiters.append(waiter)
        return waiter

    def _give_up(self, waiter: _Waiter) -> bool:
        """Stop waiting; True if a slot was handed over meanwhile (and is now ours)."""
        with self._lock:
            if waiter.granted:
                return True
            self._waiters.remove(waiter)
            return False

    def acquire(self) -> str | None:
        """Take a slot, waiting in the queue if there is room; None, or why it was refused."""
        with self._lock:
            got = self._enter(None)
        if got is True:
            return None
        if got is False:
            return "overloaded"
        assert got.event is not None
        got.event.wait(self.queue_wait)
        return None if self._give_up(got) else "queue_timeout"

    async def aacquire(self) -> str | None:
        """:meth:`acquire` for a coroutine: waits in the queue without blocking the loop."""
        with self._lock:
            got = self._enter(asyncio.get_running_loop())
        if got is True:
            return None
        if got is False:
            return "overloaded"
        assert got.future is not None
        try:
            await asyncio.wait_for(asyncio.shield(got.future), self.queue_wait)
        except asyncio.TimeoutError:
            pass
        except BaseException:  # cancelled while queued: hand back a slot we may have got
            if self._give_up(got):
                self.release()
            raise
        return None if self._give_up(got) else "queue_timeout"

    def release(self) -> None:
        """Give a slot back: to the oldest waiter, else to the pool."""
        with self._lock:
            if self._waiters:
                waiter = self._waiters.popleft()
                waiter.granted = True  # the slot passes on; in_flight is unchanged
                waiter.wake()
                return
            self.in_flight -= 1
