"""Circuit breakers and dependency-side fault injection on hooked httpx/requests calls.

Switched on through :class:`observekit.Config` (``breakers_enabled``, ``breaker_*``;
``faults_enabled`` with ``side="client"`` rules) and applied by the hooks of
:mod:`observekit.propagation` to every call they see::

    config = Config(breakers_enabled=True, breaker_failure_threshold=5,
                    breaker_open_seconds=30.0, breaker_half_open_probes=1)
    client = observekit.propagation.httpx.instrument_client(httpx.Client(), config=config)

Per call, in this order:

1. The breaker of ``host:port`` (when the host is one of ``breaker_hosts``, or
   all hosts) gives a permit, or the call fails fast: the hook raises a
   :class:`~observekit.resilience.CircuitOpenError` that is also the client's own
   connection error (``httpx.TransportError``, ``requests.ConnectionError``), so
   code catching ``httpx.HTTPError`` / ``requests.RequestException`` handles it
   too. It is recorded as a client call with ``error.type`` ``circuit_open``
   (metric, span, DEBUG line); the host is never contacted.
2. A matching client-side :class:`~observekit.resilience.FaultRule` is applied:
   the latency is slept (it counts toward the call's duration; when it is longer
   than the call's read timeout, the call sleeps that timeout and then times out,
   as a slow dependency would make it); ``timeout=True`` raises the client's own
   timeout (``httpx.ReadTimeout``, ``requests.exceptions.ReadTimeout``); a
   ``status`` returns a synthetic response with that status without calling the
   host. The fault is written as ``fault.injected`` on the span and the DEBUG
   line and counted as ``observekit.faults.injected`` (``fault.side=client``).
3. The outcome is reported to the breaker when the response headers arrive:
   transport errors, timeouts and 5xx statuses are failures.

No lock is held across the call; taking a permit never waits, so the same
objects serve threads and asyncio tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from typing import Any
from urllib.parse import urlsplit

from .._config import Config
from .breaker import BreakerRegistry, CircuitOpenError, Permit
from .faults import Fault, FaultRules

__all__ = ["CIRCUIT_OPEN", "FAULT_HEADER", "OutgoingResilience", "resilience_for"]

CIRCUIT_OPEN = "circuit_open"
"""The ``error.type`` of a call refused by an open breaker."""
FAULT_HEADER = "X-Observekit-Fault"
"""Set on a synthetic (fault-injected) response: the rule that made it."""
_FAULT_ATTR = "fault.injected"


def resilience_for(config: Config, metrics: Any = None) -> OutgoingResilience | None:
    """The resilience of the outgoing calls ``config`` asks for, or None (nothing to do)."""
    wants_faults = config.faults_enabled and any(r.side == "client" for r in config.fault_rules)
    if not config.breakers_enabled and not wants_faults:
        return None
    breakers = None
    if config.breakers_enabled:
        breakers = BreakerRegistry(
            failure_threshold=config.breaker_failure_threshold,
            failure_ratio=config.breaker_failure_ratio,
            window=config.breaker_window,
            open_for=config.breaker_open_seconds,
            half_open_probes=config.breaker_half_open_probes,
            metrics=metrics,
        )
    faults = None
    if wants_faults:
        faults = FaultRules(
            config.fault_rules,
            enabled=True,
            kill_file=config.faults_kill_file,
            metrics=metrics,
        )
    return OutgoingResilience(breakers=breakers, faults=faults, hosts=config.breaker_hosts)


class OutgoingResilience:
    """Breakers (a :class:`BreakerRegistry`) and client-side :class:`FaultRules` for the hooks.

    ``hosts``: host patterns (names, ``*.domain``, ``*``) that get a breaker;
    empty: every host.
    """

    def __init__(
        self,
        *,
        breakers: BreakerRegistry | None = None,
        faults: FaultRules | None = None,
        hosts: tuple[str, ...] = (),
    ) -> None:
        self.breakers = breakers
        self.faults = faults
        self._hosts = tuple(h.lower() for h in hosts)
        self._guarded: dict[str, bool] = {}

    def breaker_states(self) -> dict[str, str]:
        """``host:port`` -> ``closed`` / ``open`` / ``half_open``."""
        return self.breakers.states() if self.breakers is not None else {}

    # -- shared steps --------------------------------------------------------------------

    def _permit(self, call: Any, error_class: type[CircuitOpenError]) -> Permit | None:
        breakers = self.breakers
        if breakers is None or not self._guards(call.host):
            return None
        try:
            return breakers.guard(f"{call.host}:{call.port}")
        except CircuitOpenError as exc:
            refused = error_class(exc.name, exc.state, exc.retry_after)
            call.error = refused
            call.error_type = CIRCUIT_OPEN
            call.finish()
            raise refused from None

    def _guards(self, host: str) -> bool:
        found = self._guarded.get(host)
        if found is None:
            found = not self._hosts or _matches(host.lower().rstrip("."), self._hosts)
            if len(self._guarded) < 4096:
                self._guarded[host] = found
        return found

    def _fault(self, call: Any, method: str, path: str, headers: Any) -> Fault | None:
        faults = self.faults
        if faults is None:
            return None
        fault = faults.decide(
            side="client", method=method, path=path, headers=headers, host=call.host
        )
        if fault is not None:
            described = fault.describe()
            call.fault = described
            span = call.span
            if span is not None:
                with contextlib.suppress(Exception):  # a broken span never breaks the call
                    span.set_attribute(_FAULT_ATTR, described)
        return fault

    # -- httpx ---------------------------------------------------------------------------

    def httpx_send(self, send: Any, request: Any, call: Any) -> Any:
        """``send(request)`` (a sync httpx transport) under the breaker and fault rules."""
        httpx = _httpx()
        permit = self._permit(call, httpx.CircuitOpenError)
        try:
            fault = self._fault(call, request.method, request.url.path, request.headers)
            if fault is None:
                response = send(request)
            else:
                limit = _httpx_read_timeout(request)
                if limit is not None and fault.latency > limit:
                    time.sleep(limit)
                    raise httpx.ReadTimeout(f"injected timeout ({fault.rule})", request=request)
                fault.sleep()
                response = self._httpx_fault(httpx, fault, request) or send(request)
        except BaseException as exc:
            _report_error(permit, exc)
            raise
        _report_status(permit, response.status_code)
        return response

    async def httpx_asend(self, send: Any, request: Any, call: Any) -> Any:
        """``await send(request)`` (an async httpx transport) under breaker and fault rules."""
        httpx = _httpx()
        permit = self._permit(call, httpx.CircuitOpenError)
        try:
            fault = self._fault(call, request.method, request.url.path, request.headers)
            if fault is None:
                response = await send(request)
            else:
                limit = _httpx_read_timeout(request)
                if limit is not None and fault.latency > limit:
                    await asyncio.sleep(limit)
                    raise httpx.ReadTimeout(f"injected timeout ({fault.rule})", request=request)
                await fault.asleep()
                response = self._httpx_fault(httpx, fault, request) or await send(request)
        except BaseException as exc:
            _report_error(permit, exc)
            raise
        _report_status(permit, response.status_code)
        return response

    @staticmethod
    def _httpx_fault(httpx: Any, fault: Fault, request: Any) -> Any:
        if fault.timeout:
            raise httpx.module.ReadTimeout(f"injected timeout ({fault.rule})", request=request)
        if fault.status is None:
            return None
        return httpx.module.Response(
            fault.status,
            headers={"Content-Type": "text/plain", FAULT_HEADER: fault.rule},
            content=f"injected fault ({fault.rule})".encode(),
            request=request,
        )

    # -- requests ------------------------------------------------------------------------

    def requests_send(
        self, send: Any, request: Any, args: tuple[Any, ...], kwargs: dict[str, Any], call: Any
    ) -> Any:
        """``send(request, *args, **kwargs)`` (a requests adapter) under breaker and faults."""
        req = _requests()
        permit = self._permit(call, req.CircuitOpenError)
        try:
            fault = self._fault(
                call, request.method or "GET", urlsplit(request.url or "").path, request.headers
            )
            if fault is None:
                response = send(request, *args, **kwargs)
            else:
                limit = _requests_read_timeout(args, kwargs)
                if limit is not None and fault.latency > limit:
                    time.sleep(limit)
                    raise req.ReadTimeout(f"injected timeout ({fault.rule})", request=request)
                fault.sleep()
                if fault.timeout:
                    raise req.ReadTimeout(f"injected timeout ({fault.rule})", request=request)
                if fault.status is not None:
                    response = _requests_response(req.module, fault, request)
                else:
                    response = send(request, *args, **kwargs)
        except BaseException as exc:
            _report_error(permit, exc)
            raise
        _report_status(permit, response.status_code or 0)
        return response


def _report_error(permit: Permit | None, exc: BaseException) -> None:
    if permit is not None:
        # Cancellation and KeyboardInterrupt say nothing about the dependency.
        if isinstance(exc, Exception):
            permit.failure()
        else:
            permit.success()


def _report_status(permit: Permit | None, status: int) -> None:
    if permit is not None:
        if status >= 500:
            permit.failure()
        else:
            permit.success()


def _matches(host: str, patterns: tuple[str, ...]) -> bool:
    for pattern in patterns:
        if pattern == "*" or pattern == host:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False


# -- client specifics, built on first use ------------------------------------------------


class _Client:
    """One client library's module, its open-circuit error and its read-timeout error."""

    def __init__(self, module: Any, base: type[Exception], timeout: Any) -> None:
        self.module = module
        self.ReadTimeout = timeout
        self.CircuitOpenError: type[CircuitOpenError] = type(
            "CircuitOpenError",
            (CircuitOpenError, base),
            {
                "__module__": __name__,
                "__doc__": f"CircuitOpenError that is also a {base.__module__}.{base.__name__}.",
            },
        )


@functools.cache
def _httpx() -> _Client:
    import httpx

    return _Client(httpx, httpx.TransportError, httpx.ReadTimeout)


@functools.cache
def _requests() -> _Client:
    import requests

    return _Client(requests, requests.exceptions.ConnectionError, requests.exceptions.ReadTimeout)


def _httpx_read_timeout(request: Any) -> float | None:
    timeout = request.extensions.get("timeout")
    if isinstance(timeout, dict):
        read = timeout.get("read")
        if isinstance(read, int | float):
            return float(read)
    return None


def _requests_read_timeout(args: tuple[Any, ...], kwargs: dict[str, Any]) -> float | None:
    # HTTPAdapter.send(request, stream=False, timeout=None, ...)
    timeout = kwargs["timeout"] if "timeout" in kwargs else (args[1] if len(args) > 1 else None)
    if isinstance(timeout, tuple) and len(timeout) == 2:
        timeout = timeout[1]
    if isinstance(timeout, int | float) and not isinstance(timeout, bool):
        return float(timeout)
    return None


def _requests_response(requests: Any, fault: Fault, request: Any) -> Any:
    from http import HTTPStatus

    from requests.structures import CaseInsensitiveDict

    status = fault.status or 500
    response = requests.Response()
    response.status_code = status
    try:
        response.reason = HTTPStatus(status).phrase
    except ValueError:
        response.reason = "Injected Fault"
    response.headers = CaseInsensitiveDict({"Content-Type": "text/plain", FAULT_HEADER: fault.rule})
    response._content = f"injected fault ({fault.rule})".encode()
    response.encoding = "utf-8"
    response.url = request.url
    response.request = request
    return response
