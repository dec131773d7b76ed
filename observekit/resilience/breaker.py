"""Circuit breakers for calls to dependencies: closed, open, half-open; one per host.

::

    breakers = BreakerRegistry(failure_threshold=5, open_for=30.0, half_open_probes=1)

    with breakers.guard("api.example.com") as permit:   # raises CircuitOpenError when open
        response = client.get("https://api.example.com/items")
        if response.status_code >= 500:
            permit.failure()                              # a 5xx counts, an exception always does

    async with breakers.guard("api.example.com"):        # the same permit works with async with
        await async_client.get(...)

A permit is taken under a short lock and reported under the same lock; no lock
is held while the call itself runs, so threads and asyncio tasks never wait on
each other. Each state change is logged (logger ``observekit.breaker``) and
counted (``observekit.breaker.transitions``, labelled ``server.address``,
``breaker.from``, ``breaker.to``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from types import TracebackType
from typing import Any

from .._exceptions import ObservekitError

__all__ = [
    "CLOSED",
    "HALF_OPEN",
    "OPEN",
    "TRANSITIONS",
    "BreakerRegistry",
    "CircuitBreaker",
    "CircuitOpenError",
    "Permit",
]

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"
TRANSITIONS = "observekit.breaker.transitions"
"""Counter of state changes, labelled ``server.address``, ``breaker.from``, ``breaker.to``."""

log = logging.getLogger("observekit.breaker")


class CircuitOpenError(ObservekitError):
    """The breaker for ``name`` refuses the call without trying it (fail fast).

    ``state`` is ``open`` or ``half_open`` (its probe calls are all taken);
    ``retry_after`` is the number of seconds until it next admits a probe
    (0.0 while half-open).
    """

    def __init__(self, name: str, state: str, retry_after: float) -> None:
        self.name = name
        self.state = state
        self.retry_after = retry_after
        if state == OPEN:
            msg = f"circuit {name!r} is open: failing fast (next probe in {retry_after:.1f} s)"
        else:
            msg = f"circuit {name!r} is half-open and its probe calls are taken: failing fast"
        super().__init__(msg)


class Permit:
    """Leave to make one call; report its outcome exactly once.

    As a (sync or async) context manager, leaving with an exception that
    ``counts`` reports a failure, otherwise a success, unless :meth:`failure`
    or :meth:`success` was called already.
    """

    __slots__ = ("_breaker", "_generation", "done")

    def __init__(self, breaker: CircuitBreaker, generation: int) -> None:
        self._breaker = breaker
        self._generation = generation
        self.done = False

    def success(self) -> None:
        """The call worked."""
        if not self.done:
            self.done = True
            self._breaker._record(self._generation, ok=True)

    def failure(self) -> None:
        """The call failed (an error status, a timeout, a refused connection)."""
        if not self.done:
            self.done = True
            self._breaker._record(self._generation, ok=False)

    def __enter__(self) -> Permit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.success()
        elif isinstance(exc, Exception) and self._breaker.counts(exc):
            self.failure()
        else:
            self.success()

    async def __aenter__(self) -> Permit:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


OnChange = Callable[[str, str, str], None]


class CircuitBreaker:
    """One breaker (usually per host; see :class:`BreakerRegistry`).

    :param name: what it guards, used in errors, logs and metric labels.
    :param failure_threshold: consecutive failures that open it (when
        ``failure_ratio`` is None).
    :param failure_ratio: open when this share of calls failed within the last
        ``window`` seconds (with at least ``min_calls`` calls in it).
    :param open_for: seconds it stays open before admitting probes.
    :param half_open_probes: how many probe calls half-open admits; all of them
        succeeding closes it, any failure opens it again.
    :param counts: which exceptions are failures; default: every ``Exception``.
        Cancellation and ``KeyboardInterrupt`` never are (not the dependency's fault).
    :param on_change: called with ``(name, old, new)`` after each state change.
    """

    def __init__(
        self,
        name: str = "default",
        *,
        failure_threshold: int = 5,
        failure_ratio: float | None = None,
        window: float = 10.0,
        min_calls: int = 10,
        open_for: float = 30.0,
        half_open_probes: int = 1,
        counts: Callable[[BaseException], bool] | None = None,
        on_change: OnChange | None = None,
        metrics: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(failure_threshold, bool) or not isinstance(failure_threshold, int):
            raise TypeError(f"failure_threshold must be an int, got {failure_threshold!r}")
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        if failure_ratio is not None and not 0.0 < failure_ratio <= 1.0:
            raise ValueError(f"failure_ratio must be in (0, 1], got {failure_ratio!r}")
        if window <= 0 or open_for < 0:
            raise ValueError("window must be > 0 and open_for >= 0")
        if isinstance(min_calls, bool) or not isinstance(min_calls, int) or min_calls < 1:
            raise ValueError(f"min_calls must be a whole number >= 1, got {min_calls!r}")
        if (
            isinstance(half_open_probes, bool)
            or not isinstance(half_open_probes, int)
            or half_open_probes < 1
        ):
            raise ValueError(
                f"half_open_probes must be a whole number >= 1, got {half_open_probes!r}"
            )
        self.name = name
        self.failure_threshold = failure_threshold
        self.failure_ratio = failure_ratio
        self.window = float(window)
        self.min_calls = min_calls
        self.open_for = float(open_for)
        self.half_open_probes = half_open_probes
        self.counts: Callable[[BaseException], bool] = counts or _is_exception
        self._on_change = on_change
        self._metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._generation = 0
        self._consecutive = 0
        # Ratio mode: 10 buckets of window/10 seconds each, [start, calls, failures].
        self._bucket_len = self.window / 10.0
        self._buckets: list[list[float]] = []
        self._opened_at = 0.0
        self._probes_taken = 0
        self._probes_ok = 0

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open`` (open turns half-open when a call asks)."""
        with self._lock:
            if self._state == OPEN and self._clock() - self._opened_at >= self.open_for:
                return HALF_OPEN
            return self._state

    def acquire(self) -> Permit:
        """A permit for one call, or :class:`CircuitOpenError` when the call must fail fast."""
        change = None
        with self._lock:
            state = self._state
            if state == CLOSED:
                return Permit(self, self._generation)
            now = self._clock()
            if state == OPEN:
                waited = now - self._opened_at
                if waited < self.open_for:
                    raise CircuitOpenError(self.name, OPEN, self.open_for - waited)
                change = self._move(HALF_OPEN, now)
            elif now - self._opened_at >= max(self.open_for, 1.0) * 2 + self.window:
                # Probes that never reported (a permit dropped without an outcome) must
                # not hold the breaker half-open forever: start a fresh round of probes.
                self._move(HALF_OPEN, now)
            if self._probes_taken >= self.half_open_probes:
                permit = None
            else:
                self._probes_taken += 1
                permit = Permit(self, self._generation)
        if change is not None:
            self._announce(*change)
        if permit is None:
            raise CircuitOpenError(self.name, HALF_OPEN, 0.0)
        return permit

    guard = acquire
    """``with breaker.guard() as permit:`` (or ``async with``): the same as :meth:`acquire`."""

    def _record(self, generation: int, *, ok: bool) -> None:
        change = None
        with self._lock:
            if generation != self._generation:
                return  # a call admitted before the last state change: it says nothing now
            now = self._clock()
            state = self._state
            if state == HALF_OPEN:
                if not ok:
                    change = self._move(OPEN, now)
                else:
                    self._probes_ok += 1
                    if self._probes_ok >= self.half_open_probes:
                        change = self._move(CLOSED, now)
            elif state == CLOSED:
                if self.failure_ratio is None:
                    self._consecutive = 0 if ok else self._consecutive + 1
                    if self._consecutive >= self.failure_threshold:
                        change = self._move(OPEN, now)
                elif self._add_to_window(now, ok):
                    change = self._move(OPEN, now)
        if change is not None:
            self._announce(*change)

    def _add_to_window(self, now: float, ok: bool) -> bool:
        """Count one call in the sliding window; True when the failure ratio is reached."""
        buckets = self._buckets
        horizon = now - self.window
        while buckets and buckets[0][0] <= horizon:
            buckets.pop(0)
        if not buckets or now - buckets[-1][0] >= self._bucket_len:
            buckets.append([now, 0, 0])
        last = buckets[-1]
        last[1] += 1
        if not ok:
            last[2] += 1
        calls = sum(b[1] for b in buckets)
        failures = sum(b[2] for b in buckets)
        assert self.failure_ratio is not None
        return calls >= self.min_calls and failures >= self.failure_ratio * calls

    def _move(self, new: str, now: float) -> tuple[str, str]:
        """Change state under the lock; returns (old, new) to announce after it is released."""
        old = self._state
        self._state = new
        self._generation += 1
        self._consecutive = 0
        self._buckets = []
        self._probes_taken = 0
        self._probes_ok = 0
        if new in (OPEN, HALF_OPEN):
            self._opened_at = now
        return old, new

    def _announce(self, old: str, new: str) -> None:
        if old == new:
            return
        with contextlib.suppress(Exception):
            level = logging.WARNING if new == OPEN else logging.INFO
            log.log(
                level,
                "circuit %s: %s -> %s",
                self.name,
                old,
                new,
                extra={"server.address": self.name, "breaker.from": old, "breaker.to": new},
            )
        metrics = self._metrics
        if metrics is None:
            from ..metrics import get_default

            metrics = get_default()
        if metrics is not None:
            with contextlib.suppress(Exception):
                metrics.count(
                    TRANSITIONS,
                    {"server.address": self.name, "breaker.from": old, "breaker.to": new},
                )
        if self._on_change is not None:
            with contextlib.suppress(Exception):
                self._on_change(self.name, old, new)


def _is_exception(exc: BaseException) -> bool:
    return isinstance(exc, Exception)


class BreakerRegistry:
    """One :class:`CircuitBreaker` per host, made on first use with the same settings.

    ``guard(host)`` is what an outgoing-call hook wraps around each call. At
    most ``max_hosts`` breakers are kept; beyond that the oldest
    closed one is forgotten (an open one is kept: it is protecting something).
    The keyword arguments are :class:`CircuitBreaker`'s.
    """

    def __init__(self, *, max_hosts: int = 1000, **settings: Any) -> None:
        if isinstance(max_hosts, bool) or not isinstance(max_hosts, int) or max_hosts < 1:
            raise ValueError(f"max_hosts must be a whole number >= 1, got {max_hosts!r}")
        settings.pop("name", None)
        CircuitBreaker("probe", **settings)  # validate once, here, not on first use
        self._settings = settings
        self.max_hosts = max_hosts
        self._breakers: OrderedDict[str, CircuitBreaker] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, host: str) -> CircuitBreaker:
        """The breaker for ``host`` (made now if it is new)."""
        breakers = self._breakers
        found = breakers.get(host)
        if found is not None:
            return found
        with self._lock:
            found = breakers.get(host)
            if found is None:
                found = breakers[host] = CircuitBreaker(host, **self._settings)
                if len(breakers) > self.max_hosts:
                    for name, breaker in list(breakers.items()):
                        if breaker._state == CLOSED and name != host:
                            del breakers[name]
                            break
            else:
                breakers.move_to_end(host)
            return found

    def guard(self, host: str) -> Permit:
        """A permit for one call to ``host``; raises :class:`CircuitOpenError` to fail fast."""
        return self.get(host).acquire()

    aguard = guard
    """The same as :meth:`guard`: taking a permit never waits, so it is safe in async code."""

    def states(self) -> dict[str, str]:
        """Host -> state, for every breaker kept."""
        with self._lock:
            breakers = list(self._breakers.values())
        return {b.name: b.state for b in breakers}
