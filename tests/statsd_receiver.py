"""A real statsd daemon stand-in: a UDP socket on 127.0.0.1 that parses what it receives.

Every datagram is kept whole (its size is what ``statsd_max_packet`` bounds) and
split into lines, each parsed as the statsd / DogStatsD line protocol::

    <name>:<value>|<type>[|@<sample rate>][|#<tag>,<tag>...][|c:<container>][|T<ts>]

A thread reads the socket until :meth:`StatsdReceiver.close`. Tests poll with
:meth:`StatsdReceiver.wait_for` (a deadline, no fixed sleeps).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType


@dataclass(frozen=True)
class Metric:
    """One statsd line."""

    name: str
    value: str
    """As sent (``12.5``, ``+1``, ``-3``; several ``:``-joined values for DogStatsD 1.1)."""
    type: str
    rate: float | None = None
    tags: tuple[str, ...] | None = None
    """DogStatsD tags in order, ``None`` when the line has no ``|#`` field."""
    extra: tuple[str, ...] = ()
    """Other ``|`` fields (container ID, timestamp), unparsed."""
    raw: str = ""

    @property
    def number(self) -> float:
        return float(self.value)

    @property
    def tag_dict(self) -> dict[str, str]:
        """Tags as a dict (``key:value``; a bare tag maps to ``""``)."""
        out: dict[str, str] = {}
        for tag in self.tags or ():
            key, _, value = tag.partition(":")
            out[key] = value
        return out


class ParseError(ValueError):
    pass


def parse_line(line: str) -> Metric:
    """Parse one statsd line; raise :class:`ParseError` if it is not one."""
    fields = line.split("|")
    if len(fields) < 2:
        raise ParseError(f"no type field: {line!r}")
    name, sep, value = fields[0].partition(":")
    if not sep or not name or not value:
        raise ParseError(f"not name:value: {line!r}")
    mtype = fields[1]
    if mtype not in {"c", "g", "ms", "h", "s", "d"}:
        raise ParseError(f"unknown type {mtype!r}: {line!r}")
    rate: float | None = None
    tags: tuple[str, ...] | None = None
    extra: list[str] = []
    for item in fields[2:]:
        if item.startswith("@") and rate is None and tags is None:
            rate = float(item[1:])
        elif item.startswith("#") and tags is None:
            tags = tuple(item[1:].split(",")) if item[1:] else ()
        elif item:
            extra.append(item)
        else:
            raise ParseError(f"empty field: {line!r}")
    return Metric(name, value, mtype, rate, tags, tuple(extra), line)


@dataclass
class Datagram:
    data: bytes
    sender: tuple[str, int]
    received: float
    metrics: list[Metric] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """Lines that did not parse (a test of hostile input asserts this stays empty)."""

    @property
    def size(self) -> int:
        return len(self.data)


class StatsdReceiver:
    """Listens on 127.0.0.1 (a free port unless ``port`` is given) until closed."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # Big buffer: a burst from a test must not be dropped by the kernel.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.bind((host, port))
        self.sock.settimeout(0.05)
        self.host = host
        self.port: int = self.sock.getsockname()[1]
        self._lock = threading.Lock()
        self._datagrams: list[Datagram] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="statsd-receiver", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        """``host:port``, as gunicorn's ``--statsd-host`` takes it."""
        return f"{self.host}:{self.port}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, sender = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            datagram = Datagram(data, sender, time.monotonic())
            for line in data.decode("utf-8", "replace").split("\n"):
                try:
                    datagram.metrics.append(parse_line(line))
                except (ParseError, ValueError) as exc:
                    datagram.errors.append(str(exc))
            with self._lock:
                self._datagrams.append(datagram)

    # -- reading ---------------------------------------------------------------------

    @property
    def datagrams(self) -> list[Datagram]:
        with self._lock:
            return list(self._datagrams)

    def metrics(self, name: str | None = None) -> list[Metric]:
        """Every line received (with ``name``: only that metric), in arrival order."""
        return [
            metric
            for datagram in self.datagrams
            for metric in datagram.metrics
            if name is None or metric.name == name
        ]

    def names(self) -> set[str]:
        return {metric.name for metric in self.metrics()}

    def errors(self) -> list[str]:
        return [error for datagram in self.datagrams for error in datagram.errors]

    def clear(self) -> None:
        with self._lock:
            self._datagrams.clear()

    def wait_for(
        self,
        predicate: Callable[[StatsdReceiver], object],
        timeout: float = 5.0,
        what: str = "the expected metrics",
    ) -> None:
        """Poll ``predicate(self)`` until it is true; fail with what arrived after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                got = "\n".join(d.data.decode("utf-8", "replace") for d in self.datagrams[-20:])
                raise AssertionError(f"no {what} within {timeout} s; last datagrams:\n{got}")
            time.sleep(0.005)

    def wait_for_count(self, count: int, timeout: float = 5.0) -> list[Datagram]:
        """Wait until at least ``count`` datagrams arrived; return them all."""
        self.wait_for(lambda r: len(r.datagrams) >= count, timeout, f"{count} datagrams")
        return self.datagrams

    def quiet(self, seconds: float = 0.2) -> list[Datagram]:
        """Datagrams after nothing new arrived for ``seconds`` (to assert that no more come)."""
        last = -1
        while True:
            now = len(self.datagrams)
            if now == last:
                return self.datagrams
            last = now
            time.sleep(seconds)

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.sock.close()

    def __enter__(self) -> StatsdReceiver:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[Metric]:
        return iter(self.metrics())
