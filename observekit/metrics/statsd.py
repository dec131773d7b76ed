"""statsd / DogStatsD over UDP: one datagram per request or fewer, no DNS on the request path.

Wire format (``statsd_tags="dogstatsd"``, the default), one datagram per request::

    myapp.http.server.request.duration:12.345678|ms|#http.request.method:GET,http.route:/users/{id},http.response.status_code:200,service.name:shop,service.version:1.2.3,deployment.environment:prod
    myapp.http.server.requests:1|c|#http.request.method:GET,http.route:/users/{id},...

plus ``myapp.http.server.exceptions:1|c|#...,error.type:ValueError`` when the
request raised, and an ``http.server.active_requests`` line when that gauge
changed since it was last reported (see below). Lines are joined with ``\\n``;
when they do not fit in ``statsd_max_packet`` bytes they are split over
several datagrams, and a single line that cannot fit is dropped and counted.

Under load, datagrams are packed: one that comes less than
``statsd_flush_interval`` seconds (Config default 0.05; the constructor's
``flush_interval`` default 0) after the previous send joins a
packet of up to ``statsd_max_packet`` bytes. The request thread sends a packet
when it is full, or with its own lines once the interval has passed; when
traffic stops, a background thread that looks every 0.5 s sends what is left.
Under gunicorn a send every few requests costs less than waking that thread,
which then contends for the GIL on each of the worker's system calls. A request
after a quiet spell is sent immediately. ``statsd_flush_interval=0`` sends every
request's datagram at once. Held lines are sent by ``flush()``, ``close()`` and at exit.

Tag values keep only ``A-Za-z0-9_-./{}<>~*``; anything else (``|``, ``#``, ``,``,
``:``, ``@``, spaces, newlines, non-ASCII) becomes ``_`` and values are cut at
150 characters, so no label can inject a line, a field or a tag. Metric names
keep ``A-Za-z0-9_.-``.

``statsd_tags="none"`` (plain statsd, Graphite-style daemons): labels are folded
into the name, in a fixed order, each sanitized to ``A-Za-z0-9_-``::

    <prefix>.http.server.request.duration.<method>.<route>.<status>   timer, ms
    <prefix>.http.server.requests.<method>.<route>.<status>           counter
    <prefix>.http.server.exceptions.<method>.<route>.<status>.<error_type>
    <prefix>.http.server.active_requests.<method>                      gauge deltas
    <prefix>.task.duration.<task>.<outcome>   task.completed.<task>.<outcome>[.<error_type>]
    <prefix>.task.active.<task>               <prefix>.<gauge name>.<value>...  (keys sorted)
    <prefix>.http.client.request.duration.<method>.<address>.<port>.<status>   timer, ms
    <prefix>.http.client.requests.<method>.<address>.<port>.<status>           counter
    <prefix>.http.client.errors.<method>.<address>.<port>.<status>.<error_type>

where ``<route>`` is the template without its outer slashes, ``/`` as ``_`` and
``{}<>`` dropped (``/users/{id}`` -> ``users_id``, ``/`` -> ``root``), and dots
in ``<error_type>`` become ``_``. Constant labels (service, version,
environment) are not folded in: put the service in ``statsd_prefix``.

Active requests and tasks, under many processes (gunicorn workers):
each process counts its in-flight requests per method and reports the *change*
since its last report, never a per-request datagram of its own. The change rides
on the next request's datagram, and a background thread reports it at least
once a second, so a request stuck for minutes shows up within a second.

* plain statsd: the change goes as a gauge delta (``+2|g`` / ``-1|g``), which the
  daemon sums across processes into one gauge.
* DogStatsD has no gauge deltas (dd-agent#2104: a ``+1|g`` *sets* the gauge to
  1), so each process sends its own absolute count, tagged ``process.pid``
  (repeated every 10 s while non-zero); sum by service to get the total.

Both are approximate the way a sampled gauge is: a request shorter than the
report interval that starts and ends between two reports moves nothing. With
deltas, a process killed mid-request leaves its +N behind (gunicorn timeouts).

Surroundings: the host name is resolved in a background thread (never at
import, in the constructor, or on the request path), again every
``statsd_dns_ttl`` seconds (``0``: never again), preferring IPv4 like the ``statsd``
package. Until a
first address is known, metrics are dropped and counted; when a later
resolution fails, the last good address is kept; a first resolution that fails
is retried every 5 s (or the TTL, if shorter). The socket is non-blocking and
``connect()``-ed, so the kernel reports ICMP "port unreachable" as
ConnectionRefusedError on a later send: every send error is swallowed and
counted, and a WARNING goes to ``observekit.metrics`` at most once a minute.

Fork safety: after ``os.fork()`` (gunicorn workers, ``--preload`` or not) each
child opens its own socket to the already resolved address, starts with zero
in-flight counts and starts its own background thread on first use. A preload
master that records no metrics itself runs no thread across the fork. (Sharing
the inherited socket would work too, since each ``send`` of a UDP datagram is
atomic, but a re-``connect()`` after a DNS change in one process would then move
every process's socket.)

The ``statsd`` package formats the lines that are not on the request path (task
metrics, gauges, the active-requests reports: its ``timing``/``incr``/``gauge``,
prefix and gauge-sign rules); the per-request lines use templates built once
per (method, route, status) in exactly its format (``%0.6f|ms``, ``1|c``),
because calling it three times per request costs more than the send.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import re
import socket
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .._every import Every
from . import (
    ACTIVE_REQUESTS,
    CLIENT_ERRORS,
    CLIENT_REQUEST_DURATION,
    CLIENT_REQUESTS,
    ENVIRONMENT,
    ERROR_TYPE,
    EXCEPTIONS,
    METHOD,
    REQUEST_DURATION,
    REQUESTS,
    ROUTE,
    SERVER_ADDRESS,
    SERVER_PORT,
    SERVICE_NAME,
    SERVICE_VERSION,
    STATUS,
    TASK_ACTIVE,
    TASK_COMPLETED,
    TASK_DURATION,
    TASK_NAME,
    TASK_OUTCOME,
    _forget,
)

try:
    from statsd.client.base import StatsClientBase  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "observekit's statsd metrics need the statsd package: pip install 'observekit[statsd]'"
    ) from None

if TYPE_CHECKING:
    from .._config import Config

__all__ = ["Resolver", "StatsdMetrics"]

log = logging.getLogger("observekit.metrics")

Resolver = Callable[[str, int], tuple[int, tuple[Any, ...]]]
"""``(host, port) -> (address family, socket address)``; may block (it runs in a thread)."""

OVERFLOW = "overflow"
_MAX_VALUE = 150  # characters kept of a tag value or name part
_RETRY_UNRESOLVED = 5.0  # seconds between attempts while no address was ever found
_HEARTBEAT = 10.0  # DogStatsD: absolute in-flight counts re-sent this often while non-zero
_WARN_EVERY = 60.0
_NOT_TAG = re.compile(r"[^A-Za-z0-9_\-./{}<>~*]")
_NOT_NAME = re.compile(r"[^A-Za-z0-9_\-.]")
_NOT_PART = re.compile(r"[^A-Za-z0-9_\-]")
_NOT_KEY = re.compile(r"[^A-Za-z0-9_\-./]")


def tag_value(value: object) -> str:
    """A DogStatsD tag value that cannot break out of its tag: see the module docstring."""
    return _NOT_TAG.sub("_", str(value)[:_MAX_VALUE]) or "_"


def name_part(value: object, *, route: bool = False) -> str:
    """One label folded into a plain statsd name (``/users/{id}`` -> ``users_id``)."""
    text = str(value)[:_MAX_VALUE]
    if route:
        text = text.strip("/")
        for char in "{}<>":
            text = text.replace(char, "")
        if not text:
            return "root"
        text = text.replace("/", "_")
    return _NOT_PART.sub("_", text) or "_"


def metric_name(value: object) -> str:
    return _NOT_NAME.sub("_", str(value)[:_MAX_VALUE]).strip(".") or "_"


def _getaddrinfo(host: str, port: int) -> tuple[int, tuple[Any, ...]]:
    """The default resolver: IPv4 first (as the statsd package does), else IPv6."""
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    family, _type, _proto, _name, addr = infos[0]
    return int(family), tuple(addr)


def _ip_literal(host: str, port: int) -> tuple[int, tuple[Any, ...]] | None:
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    for family, addr in (
        (socket.AF_INET, (bare, port)),
        (socket.AF_INET6, (bare, port, 0, 0)),
    ):
        try:
            socket.inet_pton(family, bare)
        except (OSError, ValueError):
            continue
        return int(family), addr
    return None


class _Lines(StatsClientBase):  # type: ignore[misc]
    """The statsd package's formatting (prefix, ``name:value|type``, gauge signs) into a list.

    ``suffix`` (DogStatsD tags) is appended to each line; we do the sending.
    """

    def __init__(self, prefix: str | None, suffix: str) -> None:
        self._prefix = prefix
        self.suffix = suffix
        self.lines: list[str] = []

    def _after(self, data: str | None) -> None:
        if data:
            self.lines.append(data + self.suffix)

    def pipeline(self) -> _Lines:  # statsd's gauge() sends "0|g" + "-n|g" through a pipeline
        return self

    def __enter__(self) -> _Lines:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def close(self) -> None:
        return None

    def encode(self) -> list[bytes]:
        return [line.encode() for line in self.lines]


class _InFlight:
    """In-flight counts per label value, and the value each was last reported at."""

    __slots__ = ("_cap", "_counts", "_lock", "_reported", "label", "name")

    def __init__(self, name: str, label: str, cap: int) -> None:
        self.name = name
        self.label = label
        self._cap = cap
        self._counts: dict[str, int] = {}
        self._reported: dict[str, int] = {}
        self._lock = threading.Lock()

    def _slot(self, key: str) -> str:
        if key in self._counts or len(self._counts) < self._cap:
            return key
        return OVERFLOW

    def up(self, key: str) -> None:
        counts = self._counts
        with self._lock:
            if key in counts:  # every request but a method's first: no _slot() call
                counts[key] += 1
            else:
                key = self._slot(key)
                counts[key] = counts.get(key, 0) + 1

    def down(self, key: str) -> tuple[str, int, int] | None:
        """Count one finished; ``(key, now, last reported)`` when the gauge needs a report."""
        counts = self._counts
        with self._lock:
            if key not in counts:
                key = self._slot(key)
            now = counts.get(key, 0) - 1
            counts[key] = now
            before = self._reported.get(key, 0)
            if now == before:
                return None
            self._reported[key] = now
        return key, now, before

    def changes(self, heartbeat: bool) -> list[tuple[str, int, int]]:
        """Every ``(key, now, last reported)`` that changed (with ``heartbeat``: or is non-zero)."""
        out = []
        with self._lock:
            for key, now in self._counts.items():
                before = self._reported.get(key, 0)
                if now != before or (heartbeat and now != 0):
                    self._reported[key] = now
                    out.append((key, now, before))
        return out

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._counts = {}
        self._reported = {}


_monotonic = time.monotonic
# How often the background thread looks for lines held back when traffic stopped.
_TAIL_CHECK = 0.5


_instances: weakref.WeakSet[StatsdMetrics] = weakref.WeakSet()


class StatsdMetrics:
    """The statsd / DogStatsD backend (see the module docstring for the wire format).

    Usually built by :func:`observekit.metrics.metrics_for` from a Config. The
    constructor never blocks and never raises for network reasons: the address
    is found in a background thread. ``resolver`` replaces the DNS look-up
    (tests use it to move a name to another address).
    """

    reads_context = False  # see observekit.metrics.Metrics

    def __init__(
        self,
        host: str,
        port: int = 8125,
        *,
        prefix: str = "",
        tags: str = "dogstatsd",
        max_packet: int = 1432,
        dns_ttl: float = 60.0,
        service_name: str = "unknown_service",
        service_version: str = "unknown",
        environment: str | None = None,
        max_keys: int = 20_000,
        resolver: Resolver | None = None,
        report_interval: float = 1.0,
        flush_interval: float = 0.0,
    ) -> None:
        if not isinstance(host, str) or not host:
            raise ValueError(f"host must be a non-empty string, got {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"port must be 1-65535, got {port!r}")
        if tags not in ("dogstatsd", "none"):
            raise ValueError(f"tags must be 'dogstatsd' or 'none', got {tags!r}")
        if isinstance(max_packet, bool) or not isinstance(max_packet, int) or max_packet < 64:
            raise ValueError(f"max_packet must be a whole number >= 64, got {max_packet!r}")
        if dns_ttl < 0 or report_interval <= 0 or not 0 <= flush_interval <= 10:
            raise ValueError(
                "dns_ttl must be >= 0, report_interval > 0 and flush_interval 0-10 seconds"
            )
        self.host = host
        self.port = port
        self.dogstatsd = tags == "dogstatsd"
        self.max_packet = max_packet
        self._ttl = float(dns_ttl)
        self._interval = float(report_interval)
        # Datagrams that come less than flush_interval after the last send are packed
        # together (up to max_packet): under load one datagram carries several requests'
        # lines, and the kernel's per-datagram work is paid once for them. A request
        # after a quiet spell is still sent at once.
        self._flush_interval = float(flush_interval)
        self._pending = bytearray()
        self._pending_lock = threading.Lock()
        self._last_send = -math.inf
        self._resolver: Resolver = resolver or _getaddrinfo
        self._max_keys = max_keys
        clean_prefix = metric_name(prefix) if prefix.strip(".") else ""
        self._lib_prefix: str | None = clean_prefix or None  # what statsd's client prepends
        self._prefix = f"{clean_prefix}." if clean_prefix else ""
        self._const = (
            f"{SERVICE_NAME}:{tag_value(service_name)},"
            f"{SERVICE_VERSION}:{tag_value(service_version)},"
            f"{ENVIRONMENT}:{tag_value(environment or 'unknown')}"
        )
        self._templates: dict[tuple[str, str, int], bytes] = {}
        self._exception_lines: dict[tuple[str, str, int, str], bytes] = {}
        self._gauge_heads: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[str, str]] = {}
        self._client_templates: dict[tuple[str, str, int, int], tuple[bytes, str, str]] = {}
        self._http_active = _InFlight(ACTIVE_REQUESTS, METHOD, 32)
        self._task_active = _InFlight(TASK_ACTIVE, TASK_NAME, 256)
        # Counters (plain ints: exact with one thread, close enough under several).
        self.sent = 0
        self.dropped = 0
        self.send_errors = 0
        self.resolve_failures = 0
        self.oversize = 0
        self.internal_errors = 0
        self._last_error: str | None = None
        self._lock = threading.Lock()
        self._warnings = Every(_WARN_EVERY)
        self._sock: socket.socket | None = None
        self._family: int | None = None
        self._addr: tuple[Any, ...] | None = None
        self._retired: list[socket.socket] = []
        self._connected = threading.Event()
        self._closed = False
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._resolving = False
        self._literal = _ip_literal(host, port)
        self._next_resolve = math.inf
        _instances.add(self)
        if self._literal is not None:
            try:
                self._connect(*self._literal)
            except OSError as exc:  # e.g. an IPv6 address without IPv6 routes
                self._send_failed(exc)
                self._next_resolve = time.monotonic() + _RETRY_UNRESOLVED
        else:
            self._next_resolve = 0.0
            self._spawn(self._resolve, "observekit-statsd-resolve")

    @classmethod
    def from_config(cls, config: Config) -> StatsdMetrics:
        """Built from the ``statsd_*`` fields, the service labels and ``max_routes``."""
        assert config.statsd_host is not None
        return cls(
            config.statsd_host,
            config.statsd_port,
            prefix=config.statsd_prefix,
            tags=config.statsd_tags,
            max_packet=config.statsd_max_packet,
            dns_ttl=config.statsd_dns_ttl,
            flush_interval=config.statsd_flush_interval,
            service_name=config.service_name,
            service_version=config.resolved_service_version(),
            environment=config.environment,
            # routes (+ unmatched, overflow) x ~10 methods x a handful of statuses each
            max_keys=min(50_000, (config.max_routes + 2) * 64),
        )

    def __repr__(self) -> str:
        mode = "dogstatsd" if self.dogstatsd else "plain"
        return f"StatsdMetrics({self.host!r}, {self.port}, {mode}, address={self._addr!r})"

    # -- the Metrics interface -------------------------------------------------

    def request_started(self, method: str) -> None:
        try:
            if self._ticker is None:
                self._start_ticker()
            self._http_active.up(method)
        except Exception:
            self._internal_error()

    def request_finished(
        self, method: str, route: str, status: int, duration_s: float, error_type: str | None
    ) -> None:
        try:
            template = self._templates.get((method, route, status))
            if template is None:
                template = self._request_template(method, route, status)
            data = template % (duration_s * 1000.0)
            if error_type is not None:
                data += self._exception_line(method, route, status, error_type)
            change = self._http_active.down(method)
            if change is not None:
                data += b"\n" + b"\n".join(self._active_lines(self._http_active, [change]))
            if len(data) <= self.max_packet:
                self._send(data)
            else:
                self._send_lines(data.split(b"\n"))
        except Exception:
            self._internal_error()

    def client_request_finished(
        self,
        method: str,
        server_address: str,
        server_port: int,
        status: int,
        duration_s: float,
        error_type: str | None,
    ) -> None:
        try:
            key = (method, server_address, server_port, status)
            found = self._client_templates.get(key)
            if found is None:
                found = self._client_template(*key)
            template, folded, tags = found
            data = template % (duration_s * 1000.0)
            if error_type is not None:
                if self.dogstatsd:
                    line = f"{CLIENT_ERRORS}{folded}:1|c{tags},{ERROR_TYPE}:{tag_value(error_type)}"
                else:
                    part = name_part(error_type.replace(".", "_"))
                    line = f"{CLIENT_ERRORS}{folded}.{part}:1|c"
                data += f"\n{self._prefix}{line}".encode()
            if len(data) <= self.max_packet:
                self._send(data)
            else:
                self._send_lines(data.split(b"\n"))
        except Exception:
            self._internal_error()

    def _client_template(
        self, method: str, address: str, port: int, status: int
    ) -> tuple[bytes, str, str]:
        if self.dogstatsd:
            folded = ""
            tags = (
                f"|#{METHOD}:{tag_value(method)},{SERVER_ADDRESS}:{tag_value(address)},"
                f"{SERVER_PORT}:{port},{STATUS}:{tag_value(status)},{self._const}"
            )
        else:
            folded = f".{name_part(method)}.{name_part(address)}.{port}.{name_part(status)}"
            tags = ""
        p = self._prefix
        escaped = tags.replace("%", "%%")
        text = (
            f"{p}{CLIENT_REQUEST_DURATION}{folded}:%.6f|ms{escaped}\n"
            f"{p}{CLIENT_REQUESTS}{folded}:1|c{escaped}"
        )
        value = (text.encode(), folded, tags)
        if len(self._client_templates) < self._max_keys:
            self._client_templates[(method, address, port, status)] = value
        return value

    def task_started(self, name: str) -> None:
        try:
            if self._ticker is None:
                self._start_ticker()
            self._task_active.up(name)
        except Exception:
            self._internal_error()

    def task_finished(self, name: str, duration_s: float, error_type: str | None) -> None:
        try:
            outcome = "success" if error_type is None else "failure"
            if self.dogstatsd:
                base = f"|#{TASK_NAME}:{tag_value(name)},{TASK_OUTCOME}:{outcome}"
                lines = _Lines(self._lib_prefix, f"{base},{self._const}")
                lines.timing(TASK_DURATION, duration_s * 1000.0)
                if error_type is not None:
                    lines.suffix = f"{base},{ERROR_TYPE}:{tag_value(error_type)},{self._const}"
                lines.incr(TASK_COMPLETED)
            else:
                lines = _Lines(self._lib_prefix, "")
                task = name_part(name)
                lines.timing(f"{TASK_DURATION}.{task}.{outcome}", duration_s * 1000.0)
                completed = f"{TASK_COMPLETED}.{task}.{outcome}"
                if error_type is not None:
                    completed += "." + name_part(error_type.replace(".", "_"))
                lines.incr(completed)
            out = lines.encode()
            change = self._task_active.down(name)
            if change is not None:
                out += self._active_lines(self._task_active, [change])
            self._send_lines(out)
        except Exception:
            self._internal_error()

    def gauge(self, name: str, value: float, attributes: Mapping[str, str] | None = None) -> None:
        try:
            if isinstance(value, bool) or not isinstance(value, int | float):
                value = float(value)
            if not math.isfinite(value):
                return
            key = (name, tuple(sorted(attributes.items())) if attributes else ())
            head = self._gauge_heads.get(key)
            if head is None:
                head = self._gauge_head(*key)
            lines = _Lines(self._lib_prefix, head[1])
            if self._ticker is None:
                self._start_ticker()
            lines.gauge(head[0], value)
            self._send_lines(lines.encode())
        except Exception:
            self._internal_error()

    def count(self, name: str, attributes: Mapping[str, str] | None = None, value: int = 1) -> None:
        try:
            key = (name, tuple(sorted(attributes.items())) if attributes else ())
            head = self._gauge_heads.get(key)
            if head is None:
                head = self._gauge_head(*key)
            lines = _Lines(self._lib_prefix, head[1])
            lines.incr(head[0], int(value))
            self._send_lines(lines.encode())
        except Exception:
            self._internal_error()

    def flush(self, timeout: float = 1.0) -> None:
        """Report in-flight changes and send every datagram held back for packing, now."""
        try:
            self._report(heartbeat=False)
            self._flush_pending()
        except Exception:
            self._internal_error()

    def close(self) -> None:
        """Report the last in-flight counts, stop the thread, close the socket. Idempotent."""
        if self._closed:
            return
        self.flush(0.0)
        with self._lock:
            self._closed = True
            sockets = [*self._retired, *([self._sock] if self._sock is not None else [])]
            self._sock, self._retired = None, []
            ticker = self._ticker
        self._stop.set()
        if ticker is not None and ticker is not threading.current_thread() and ticker.is_alive():
            ticker.join(timeout=1.0)
        for sock in sockets:
            sock.close()
        _instances.discard(self)
        _forget(self)

    # -- inspection ------------------------------------------------------------------

    @property
    def address(self) -> tuple[Any, ...] | None:
        """The socket address metrics go to now, or ``None`` before the first resolution."""
        return self._addr

    def ready(self, timeout: float = 0.0) -> bool:
        """Whether an address is known, waiting up to ``timeout`` seconds for one."""
        return self._connected.wait(timeout)

    def stats(self) -> dict[str, int]:
        """Datagrams sent and dropped, and the errors behind the drops."""
        return {
            "sent": self.sent,
            "dropped": self.dropped,
            "send_errors": self.send_errors,
            "resolve_failures": self.resolve_failures,
            "oversize": self.oversize,
            "internal_errors": self.internal_errors,
        }

    # -- per-key templates --------------------------------------------------------------

    def _labels(self, method: str, route: str, status: int) -> tuple[str, str]:
        """(name suffix, tag suffix) for one (method, route, status)."""
        if self.dogstatsd:
            tags = (
                f"|#{METHOD}:{tag_value(method)},{ROUTE}:{tag_value(route)},"
                f"{STATUS}:{tag_value(status)},{self._const}"
            )
            return "", tags
        return f".{name_part(method)}.{name_part(route, route=True)}.{name_part(status)}", ""

    def _request_template(self, method: str, route: str, status: int) -> bytes:
        folded, tags = self._labels(method, route, status)
        p = self._prefix
        text = (
            f"{p}{REQUEST_DURATION}{folded}:%.6f|ms{tags.replace('%', '%%')}\n"
            f"{p}{REQUESTS}{folded}:1|c{tags.replace('%', '%%')}"
        )
        template = text.encode()
        if len(self._templates) < self._max_keys:
            self._templates[(method, route, status)] = template
        return template

    def _exception_line(self, method: str, route: str, status: int, error_type: str) -> bytes:
        key = (method, route, status, error_type)
        line = self._exception_lines.get(key)
        if line is None:
            folded, tags = self._labels(method, route, status)
            if self.dogstatsd:
                tags = f"{tags},{ERROR_TYPE}:{tag_value(error_type)}"
            else:
                folded += "." + name_part(error_type.replace(".", "_"))
            line = f"\n{self._prefix}{EXCEPTIONS}{folded}:1|c{tags}".encode()
            if len(self._exception_lines) < self._max_keys:
                self._exception_lines[key] = line
        return line

    def _gauge_head(self, name: str, attributes: tuple[tuple[str, str], ...]) -> tuple[str, str]:
        stat = metric_name(name)
        if self.dogstatsd:
            tags = "".join(
                f"{_NOT_KEY.sub('_', str(k)[:_MAX_VALUE]) or '_'}:{tag_value(v)},"
                for k, v in attributes
            )
            head = (stat, f"|#{tags}{self._const}")
        else:
            head = (stat + "".join("." + name_part(v) for _k, v in attributes), "")
        if len(self._gauge_heads) < self._max_keys:
            self._gauge_heads[(name, attributes)] = head
        return head

    def _active_lines(
        self, inflight: _InFlight, changes: list[tuple[str, int, int]]
    ) -> list[bytes]:
        """Lines for in-flight changes: deltas for statsd, absolute per-process for DogStatsD."""
        out: list[bytes] = []
        for key, now, before in changes:
            if self.dogstatsd:
                lines = _Lines(
                    self._lib_prefix,
                    f"|#{inflight.label}:{tag_value(key)},{self._const},process.pid:{os.getpid()}",
                )
                lines.gauge(inflight.name, now)
            else:
                lines = _Lines(self._lib_prefix, "")
                lines.gauge(f"{inflight.name}.{name_part(key)}", now - before, delta=True)
            out += lines.encode()
        return out

    def _report(self, heartbeat: bool) -> None:
        lines: list[bytes] = []
        for inflight in (self._http_active, self._task_active):
            changes = inflight.changes(heartbeat and self.dogstatsd)
            if changes:
                lines += self._active_lines(inflight, changes)
        if lines:
            self._send_lines(lines)

    # -- sending ------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        """Send now after a quiet spell, else add to the packet being packed.

        Under load the request thread itself sends each packet as it fills, and what is
        held once ``flush_interval`` has passed: a system call every few requests costs
        less than waking the background thread, which contends for the GIL with the
        request thread on each of its own system calls. The background thread sends
        what is left when traffic stops.
        """
        interval = self._flush_interval
        if interval:
            now = _monotonic()
            if now - self._last_send < interval:
                self._hold(data)
                return
            if self._pending:
                self._hold(data)
                self._flush_pending()
                return
            self._last_send = now
        self._send_now(data)

    def _hold(self, data: bytes) -> None:
        full = None
        with self._pending_lock:
            pending = self._pending
            if pending and len(pending) + 1 + len(data) > self.max_packet:
                full = bytes(pending)
                pending.clear()
            if pending:
                pending += b"\n"
            pending += data
        if full is not None:
            self._send_now(full)
        if self._ticker is None:
            self._start_ticker()

    def _flush_pending(self) -> None:
        with self._pending_lock:
            if not self._pending:
                return
            data = bytes(self._pending)
            self._pending.clear()
        self._last_send = _monotonic()
        self._send_now(data)

    def _send_now(self, data: bytes) -> None:
        sock = self._sock
        if sock is None:
            self.dropped += 1
            return
        try:
            sock.send(data)
        except OSError as exc:
            self.dropped += 1
            self._send_failed(exc)
        else:
            self.sent += 1

    def _send_lines(self, lines: list[bytes]) -> None:
        """Pack lines into as few datagrams as fit in ``max_packet``; drop lines that never fit."""
        limit = self.max_packet
        packet = b""
        for line in lines:
            if len(line) > limit:
                self.oversize += 1
                self.dropped += 1
                self._warn(
                    "a statsd line of %d bytes is over statsd_max_packet (%d) and was dropped",
                    len(line),
                    limit,
                )
                continue
            if not packet:
                packet = line
            elif len(packet) + 1 + len(line) <= limit:
                packet += b"\n" + line
            else:
                self._send(packet)
                packet = line
        if packet:
            self._send(packet)

    def _send_failed(self, exc: OSError) -> None:
        self.send_errors += 1
        self._last_error = f"{type(exc).__name__}: {exc}"
        self._warn(
            "sending metrics to statsd at %s:%s failed (%s); %d datagrams dropped so far",
            self.host,
            self.port,
            self._last_error,
            self.dropped,
        )

    def _warn(self, msg: str, *args: object) -> None:
        with contextlib.suppress(Exception):
            held = self._warnings.ready()
            if held is not None:
                log.warning(
                    msg, *args, extra={"metrics.dropped": self.dropped, "warnings_suppressed": held}
                )

    def _internal_error(self) -> None:
        self.internal_errors += 1
        with contextlib.suppress(Exception):
            if self._warnings.ready() is not None:
                log.warning("statsd metrics failed internally; the request goes on", exc_info=True)

    # -- address and background thread -------------------------------------------------------

    def _spawn(self, target: Callable[[], None], name: str) -> threading.Thread | None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        try:
            thread.start()
        except RuntimeError:  # can't start new thread (limits, interpreter shutdown)
            self._internal_error()
            return None
        return thread

    def _start_ticker(self) -> None:
        with self._lock:
            if self._ticker is not None or self._closed:
                return
            stop = self._stop
            thread = threading.Thread(
                target=self._tick, args=(stop,), name="observekit-statsd", daemon=True
            )
            self._ticker = thread  # set even if start fails: no retry on every request
        try:
            thread.start()
        except RuntimeError:
            self._internal_error()

    def _tick(self, stop: threading.Event) -> None:
        """The background thread: re-resolve when the TTL is up, report in-flight changes."""
        last_beat = time.monotonic()
        next_report = last_beat + self._interval
        while True:
            wait = self._interval
            try:
                now = time.monotonic()
                if now >= self._next_resolve:
                    self._resolve()
                    now = time.monotonic()
                if now >= next_report:
                    heartbeat = now - last_beat >= _HEARTBEAT
                    if heartbeat:
                        last_beat = now
                    self._report(heartbeat)
                    next_report = now + self._interval
                # Under load the request thread sends what it holds; this thread sends
                # it once traffic stops, waking only every _TAIL_CHECK seconds.
                if self._pending and now - self._last_send >= self._flush_interval:
                    self._flush_pending()
                wait = max(0.01, min(next_report, self._next_resolve) - time.monotonic())
                if self._flush_interval:
                    wait = min(wait, max(self._flush_interval, _TAIL_CHECK))
            except Exception:
                self._internal_error()
            if stop.wait(wait):
                return

    def _resolve(self) -> None:
        """Look the host up and point the socket at it. Runs only in background threads."""
        with self._lock:
            if self._resolving or self._closed:
                return
            self._resolving = True
            self._next_resolve = math.inf
        retry = self._ttl if self._ttl > 0 else math.inf
        try:
            family, addr = self._resolver(self.host, self.port)
            self._connect(family, addr)
        except Exception as exc:
            self.resolve_failures += 1
            if self._sock is None:  # never resolved: retry soon, metrics are being dropped
                retry = min(retry, _RETRY_UNRESOLVED)
            self._warn(
                "statsd host %r could not be resolved or connected (%s: %s); %s",
                self.host,
                type(exc).__name__,
                exc,
                "metrics are dropped until it is"
                if self._sock is None
                else f"still sending to {self._addr}",
            )
        finally:
            self._next_resolve = time.monotonic() + retry
            self._resolving = False

    def _connect(self, family: int, addr: tuple[Any, ...]) -> None:
        with self._lock:
            if self._closed:
                return
            sock = self._sock
            if sock is not None and family == self._family:
                if addr != self._addr:
                    sock.connect(addr)  # UDP: no packets, no wait; sends go there from now on
                    self._addr = addr
                return
            new = socket.socket(family, socket.SOCK_DGRAM)
            try:
                new.setblocking(False)
                new.connect(addr)
            except OSError:
                new.close()
                raise
            # A sender may still hold the old socket: close it one resolution later, not now.
            for old in self._retired:
                old.close()
            self._retired = [sock] if sock is not None else []
            self._sock, self._family, self._addr = new, family, addr
            self._connected.set()

    def _after_fork_in_child(self) -> None:
        was_resolving = self._resolving
        self._lock = threading.Lock()
        # Lines held for packing are the parent's to send, not this child's.
        self._pending_lock = threading.Lock()
        self._pending = bytearray()
        self._last_send = -math.inf
        self._warnings = Every(_WARN_EVERY)
        self._stop = threading.Event()
        self._ticker = None
        self._resolving = False
        self._http_active.after_fork()
        self._task_active.after_fork()
        if self._closed:
            return
        inherited, self._sock = self._sock, None
        family, addr = self._family, self._addr
        self._family = self._addr = None
        for old in self._retired:
            old.close()
        self._retired = []
        self._connected = threading.Event()
        if inherited is not None:
            inherited.close()  # the child's copy of the descriptor only
        target = (family, addr) if family is not None and addr is not None else self._literal
        connected = False
        if target is not None:
            with contextlib.suppress(OSError):
                self._connect(*target)
                connected = True
        if not connected or (self._literal is None and was_resolving):
            # No address here, or the parent's look-up did not finish: resolve in this
            # process's own thread, on first use.
            self._next_resolve = 0.0


def _after_fork_in_child() -> None:
    for instance in list(_instances):
        with contextlib.suppress(Exception):
            instance._after_fork_in_child()


def _close_all() -> None:
    """At exit: send the last in-flight counts (DogStatsD: this process's 0) and close."""
    for instance in list(_instances):
        with contextlib.suppress(Exception):
            instance.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all)
