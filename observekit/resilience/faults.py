"""Fault injection for chaos experiments: added latency, error statuses, timeouts.

Rules match requests (server side) or outgoing calls (dependency side) and,
with a probability, inject a fault::

    FaultRule(probability=0.1, latency=0.3, paths=("/api/*",))          # 10 %: +300 ms
    FaultRule(status=503, header=("X-Chaos-Key", "s3cret"))             # only when asked
    FaultRule(side="client", hosts=("service2",), latency=(0.2, 0.4))   # a slow dependency
    FaultRule(side="client", hosts=("service2",), timeout=True, probability=0.05)

Nothing is injected unless faults are explicitly enabled (``Config.faults_enabled``
or ``OBSERVEKIT_FAULTS_ENABLED=1``). Two kill switches turn every rule off at
once, each looked at no more than once a second: the environment variable
``OBSERVEKIT_FAULTS_KILL`` set to a true value, and a file (``faults_kill_file``)
that exists. Health endpoints are never fault-injected (they are answered
before any rule is looked at).

:meth:`FaultRules.decide` is the one decision both sides make; the server
guard and the outgoing-call hooks then apply the :class:`Fault` it returns.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fnmatch import translate
from typing import Any

__all__ = ["INJECTED", "KILL_ENV", "Fault", "FaultRule", "FaultRules", "parse_rules"]

INJECTED = "observekit.faults.injected"
"""Counter of injected faults, labelled ``fault.type``, ``fault.side`` and ``fault.rule``."""
KILL_ENV = "OBSERVEKIT_FAULTS_KILL"

Latency = float | tuple[float, float] | Callable[[], float] | None
_SIDES = ("server", "client")


@dataclass(frozen=True, kw_only=True)
class FaultRule:
    """One fault and the requests or calls it applies to.

    :param probability: share of matching requests that get the fault (0 to 1).
    :param latency: seconds added: a number, a ``(low, high)`` uniform range, or a
        callable returning seconds (any distribution, e.g.
        ``lambda: random.expovariate(1 / 0.2)``).
    :param status: answer with this status instead of calling the app (server)
        or the dependency (client).
    :param timeout: client side: the call fails as a timeout (after ``latency``).
    :param paths: URL path patterns (``fnmatch`` globs: ``/api/*``); empty: all.
    :param routes: route templates (``/users/{id}``) matched when the framework
        reports one before the guards run; empty: all.
    :param methods: request methods; empty: all.
    :param header: ``(name, value)``: only requests carrying exactly this header
        value (compared in constant time, so it can be a shared secret).
    :param hosts: client side: dependency host names; empty: all.
    :param side: ``server`` (requests to this service) or ``client`` (calls out).
    :param name: the ``fault.rule`` label; default ``rule<N>`` by position.
    """

    probability: float = 1.0
    latency: Latency = None
    status: int | None = None
    timeout: bool = False
    paths: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    header: tuple[str, str] | None = None
    hosts: tuple[str, ...] = ()
    side: str = "server"
    name: str | None = None

    def __post_init__(self) -> None:
        p = self.probability
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
            raise ValueError(f"probability must be a number from 0.0 to 1.0, got {p!r}")
        lat = self.latency
        if isinstance(lat, tuple):
            if len(lat) != 2 or not all(_is_seconds(x) for x in lat) or lat[0] > lat[1]:
                raise ValueError(f"latency range must be (low, high) seconds, got {lat!r}")
        elif lat is not None and not callable(lat) and not _is_seconds(lat):
            raise ValueError(
                f"latency must be seconds, a (low, high) range or a callable, got {lat!r}"
            )
        if self.status is not None and (
            isinstance(self.status, bool)
            or not isinstance(self.status, int)
            or not 100 <= self.status <= 599
        ):
            raise ValueError(f"status must be an HTTP status 100-599, got {self.status!r}")
        if self.side not in _SIDES:
            raise ValueError(f"side must be 'server' or 'client', got {self.side!r}")
        if self.timeout and self.side != "client":
            raise ValueError("timeout=True applies to side='client' rules only")
        if lat is None and self.status is None and not self.timeout:
            raise ValueError("a fault rule needs latency, status or timeout")
        for field in ("paths", "routes", "methods", "hosts"):
            value = getattr(self, field)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{field} must be a tuple of strings, got {value!r}")
            object.__setattr__(self, field, tuple(value))
        object.__setattr__(self, "methods", tuple(m.upper() for m in self.methods))
        object.__setattr__(self, "hosts", tuple(h.lower() for h in self.hosts))
        if self.header is not None and (
            len(self.header) != 2 or not all(isinstance(x, str) and x for x in self.header)
        ):
            raise ValueError(f"header must be a (name, value) pair, got {self.header!r}")


def _is_seconds(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value <= 3600.0


@dataclass(frozen=True)
class Fault:
    """What to inject into one request or call (see :meth:`FaultRules.decide`)."""

    rule: str
    latency: float
    status: int | None
    timeout: bool
    side: str

    @property
    def kind(self) -> str:
        """The ``fault.type`` label: ``latency``, ``error``, ``timeout``, or joined with ``+``."""
        parts = []
        if self.latency > 0:
            parts.append("latency")
        if self.status is not None:
            parts.append("error")
        if self.timeout:
            parts.append("timeout")
        return "+".join(parts) or "none"

    def describe(self) -> str:
        """The value written as ``fault.injected`` on the access line and the span."""
        out = self.kind
        if self.latency > 0:
            out += f" {self.latency * 1000:.0f}ms"
        if self.status is not None:
            out += f" {self.status}"
        return f"{out} ({self.rule})"

    def sleep(self) -> None:
        """Apply the latency in a thread."""
        if self.latency > 0:
            time.sleep(self.latency)

    async def asleep(self) -> None:
        """Apply the latency in a coroutine (never blocks the event loop)."""
        if self.latency > 0:
            import asyncio

            await asyncio.sleep(self.latency)


class _Compiled:
    __slots__ = ("header", "hosts", "latency", "methods", "name", "paths", "routes", "rule")

    def __init__(self, rule: FaultRule, index: int) -> None:
        self.rule = rule
        self.name = rule.name or f"rule{index}"
        self.paths = re.compile("|".join(translate(p) for p in rule.paths)) if rule.paths else None
        self.routes = frozenset(rule.routes)
        self.methods = frozenset(rule.methods)
        self.hosts = frozenset(rule.hosts)
        self.header = (rule.header[0].lower(), rule.header[1].encode()) if rule.header else None
        lat = rule.latency
        if lat is None:
            self.latency: Callable[[], float] = _zero
        elif isinstance(lat, tuple):
            low, high = float(lat[0]), float(lat[1])
            self.latency = lambda: random.uniform(low, high)
        elif callable(lat):
            self.latency = lat
        else:
            fixed = float(lat)
            self.latency = lambda: fixed


def _zero() -> float:
    return 0.0


class FaultRules:
    """The configured rules, the on/off switches, and the decision per request or call.

    :param rules: :class:`FaultRule` objects, looked at in order (first match wins).
    :param enabled: nothing is ever injected unless this is True.
    :param kill_file: a path; while it exists, nothing is injected.
    :param kill_env: an environment variable; while it is true, nothing is injected.
    :param metrics: a metrics backend; each fault decided is counted there as
        ``observekit.faults.injected`` (default: :func:`observekit.metrics.get_default`).
    """

    def __init__(
        self,
        rules: Iterable[FaultRule],
        *,
        enabled: bool = False,
        kill_file: str | None = None,
        kill_env: str = KILL_ENV,
        random_source: Callable[[], float] = random.random,
        metrics: Any = None,
    ) -> None:
        rules = tuple(rules)
        for rule in rules:
            if not isinstance(rule, FaultRule):
                raise TypeError(f"fault rules must be FaultRule objects, got {rule!r}")
        self.enabled = bool(enabled)
        self.kill_file = kill_file
        self.kill_env = kill_env
        self._random = random_source
        self._metrics = metrics
        compiled = [_Compiled(rule, i) for i, rule in enumerate(rules)]
        self._server = tuple(c for c in compiled if c.rule.side == "server")
        self._client = tuple(c for c in compiled if c.rule.side == "client")
        self.header_names: tuple[str, ...] = tuple(
            dict.fromkeys(c.header[0] for c in compiled if c.header is not None)
        )
        """Lowercase request headers the rules read."""
        self._lock = threading.Lock()
        self._checked_at = -1e9
        self._killed = False

    @property
    def has_server_rules(self) -> bool:
        return self.enabled and bool(self._server)

    def active(self) -> bool:
        """Enabled, and neither kill switch on (each re-read at most once a second)."""
        if not self.enabled:
            return False
        now = time.monotonic()
        if now - self._checked_at < 1.0:
            return not self._killed
        with self._lock:
            if now - self._checked_at >= 1.0:
                killed = os.environ.get(self.kill_env, "").strip().lower() in (
                    "1",
                    "true",
                    "yes",
                    "on",
                )
                if not killed and self.kill_file is not None:
                    killed = os.path.exists(self.kill_file)
                self._killed = killed
                self._checked_at = now
            return not self._killed

    def decide(
        self,
        *,
        side: str,
        method: str,
        path: str,
        headers: Mapping[str, str],
        host: str | None = None,
        route: str | None = None,
    ) -> Fault | None:
        """The fault for this request (``side="server"``) or call (``"client"``), or None.

        ``headers`` maps lowercase names to values (at least :attr:`header_names`).
        Never raises for odd input; a failing latency callable counts as no latency.
        """
        rules = self._server if side == "server" else self._client
        if not rules or not self.active():
            return None
        host_l = host.lower() if host else None
        for c in rules:
            if c.methods and method not in c.methods:
                continue
            if c.paths is not None and not c.paths.match(path):
                continue
            if c.routes and route not in c.routes:
                continue
            if c.hosts and host_l not in c.hosts:
                continue
            if c.header is not None:
                value = headers.get(c.header[0])
                if value is None or not hmac.compare_digest(
                    value.encode("utf-8", "replace"), c.header[1]
                ):
                    continue
            rule = c.rule
            if rule.probability < 1.0 and self._random() >= rule.probability:
                return None  # the first matching rule decides, injected or not
            try:
                latency = max(0.0, min(float(c.latency()), 3600.0))
            except Exception:
                latency = 0.0
            fault = Fault(c.name, latency, rule.status, rule.timeout, side)
            self._count(fault)
            return fault
        return None

    def _count(self, fault: Fault) -> None:
        metrics = self._metrics
        if metrics is None:
            from ..metrics import get_default

            metrics = get_default()
        if metrics is not None:
            with contextlib.suppress(Exception):
                metrics.count(
                    INJECTED,
                    {"fault.type": fault.kind, "fault.side": fault.side, "fault.rule": fault.rule},
                )


def parse_rules(raw: str) -> tuple[FaultRule, ...]:
    """Rules from ``OBSERVEKIT_FAULT_RULES``: ``;``-separated rules of ``,``-separated ``k=v``.

    Keys: ``p`` (probability), ``latency`` (seconds, or ``low..high``), ``status``,
    ``timeout`` (1), ``path`` / ``route`` / ``method`` / ``host`` (repeatable, or
    ``|``-separated), ``header`` (``Name:value``), ``side``, ``name``. Example:
    ``p=0.1,latency=0.3,path=/api/*;side=client,host=service2,latency=0.3``.
    """
    rules = []
    for chunk in raw.split(";"):
        if not chunk.strip():
            continue
        kwargs: dict[str, Any] = {}
        lists: dict[str, list[str]] = {"paths": [], "routes": [], "methods": [], "hosts": []}
        for item in chunk.split(","):
            key, sep, value = item.partition("=")
            key, value = key.strip().lower(), value.strip()
            if not sep or not key:
                raise ValueError(f"expected key=value, got {item.strip()!r}")
            if key in ("p", "probability"):
                kwargs["probability"] = float(value)
            elif key == "latency":
                low, dots, high = value.partition("..")
                kwargs["latency"] = (float(low), float(high)) if dots else float(value)
            elif key == "status":
                kwargs["status"] = int(value)
            elif key == "timeout":
                kwargs["timeout"] = value.lower() in ("1", "true", "yes", "on")
            elif key in ("path", "route", "method", "host"):
                lists[key + "s"].extend(v for v in value.split("|") if v)
            elif key == "header":
                name, colon, secret = value.partition(":")
                if not colon:
                    raise ValueError(f"header must be Name:value, got {value!r}")
                kwargs["header"] = (name.strip(), secret.strip())
            elif key in ("side", "name"):
                kwargs[key] = value
            else:
                raise ValueError(f"unknown fault rule key {key!r}")
        for field, values in lists.items():
            if values:
                kwargs[field] = tuple(values)
        rules.append(FaultRule(**kwargs))
    return tuple(rules)
