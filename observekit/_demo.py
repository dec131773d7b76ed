"""What ``observekit demo`` needs besides its two services: the receivers and the report.

Both receivers run in the demo's own process on free ports of 127.0.0.1, so the demo
needs no daemon or collector. The OTLP receiver needs ``opentelemetry-proto`` (the
``otel`` extra).
"""

from __future__ import annotations

import contextlib
import gzip
import http.server
import socket
import threading
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

__all__ = ["Span", "SpanReceiver", "StatsdReceiver", "Timer", "red_table", "trace_tree"]


@dataclass(frozen=True)
class Timer:
    """One ``http.server.request.duration`` line: its labels and its value in ms."""

    service: str
    method: str
    route: str
    status: int
    ms: float


class StatsdReceiver:
    """A UDP socket on 127.0.0.1 that keeps the request-duration timers it receives."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self.port: int = self._sock.getsockname()[1]
        self._lock = threading.Lock()
        self._timers: list[Timer] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-statsd", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            for line in data.decode("utf-8", "replace").split("\n"):
                timer = _parse_timer(line)
                if timer is not None:
                    with self._lock:
                        self._timers.append(timer)

    @property
    def timers(self) -> list[Timer]:
        with self._lock:
            return list(self._timers)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._sock.close()


def _parse_timer(line: str) -> Timer | None:
    """``http.server.request.duration:12.3|ms|#k:v,...`` as a :class:`Timer`, else ``None``."""
    fields = line.split("|")
    name, _, value = fields[0].partition(":")
    if not name.endswith("http.server.request.duration") or len(fields) < 3:
        return None
    tags = dict(tag.partition(":")[::2] for tag in fields[2].lstrip("#").split(","))
    try:
        return Timer(
            service=tags.get("service.name", "?"),
            method=tags.get("http.request.method", "?"),
            route=tags.get("http.route", "?"),
            status=int(tags.get("http.response.status_code", "0")),
            ms=float(value),
        )
    except ValueError:
        return None


@dataclass(frozen=True)
class Span:
    """One span received over OTLP/HTTP."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str
    service: str
    start_ns: int
    end_ns: int

    @property
    def ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


_KINDS = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def _decode(body: bytes) -> list[Span]:
    request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
    spans: list[Span] = []
    for resource_spans in request.resource_spans:
        service = "?"
        for pair in resource_spans.resource.attributes:
            if pair.key == "service.name":
                service = pair.value.string_value
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    Span(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex() or None,
                        name=span.name,
                        kind=_KINDS.get(span.kind, "UNSPECIFIED"),
                        service=service,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                    )
                )
    return spans


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status = 200
        try:
            encoding = (self.headers.get("Content-Encoding") or "").lower()
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            if self.path != "/v1/traces":
                status = 404
            else:
                self.server.add(_decode(body))
        except Exception:  # a payload we cannot read: tell the exporter so
            status = 400
        answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the demo prints spans, not the receiver's access lines


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self._lock = threading.Lock()
        self.spans: list[Span] = []

    def add(self, spans: list[Span]) -> None:
        with self._lock:
            self.spans.extend(spans)


class SpanReceiver:
    """An OTLP/HTTP trace receiver (``POST /v1/traces``, protobuf) in a thread."""

    def __init__(self) -> None:
        self._server = _Server()
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="demo-otlp",
            daemon=True,
        )
        self._thread.start()

    @property
    def spans(self) -> list[Span]:
        with self._server._lock:
            return list(self._server.spans)

    def wait_for_trace(self, trace_id: str, count: int, timeout: float = 5.0) -> list[Span]:
        """The spans of ``trace_id`` once ``count`` arrived (or what came by ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            spans = [s for s in self.spans if s.trace_id == trace_id]
            if len(spans) >= count or time.monotonic() > deadline:
                return spans
            time.sleep(0.05)

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=2.0)
        with contextlib.suppress(OSError):
            self._server.server_close()


def trace_tree(spans: Iterable[Span]) -> list[str]:
    """The spans of one trace as an indented tree, children in start order, with durations."""
    spans = sorted(spans, key=lambda s: s.start_ns)
    if not spans:
        return []
    ids = {s.span_id for s in spans}
    children: dict[str | None, list[Span]] = {}
    for span in spans:
        parent = span.parent_id if span.parent_id in ids else None
        children.setdefault(parent, []).append(span)
    origin = spans[0].start_ns
    rows: list[tuple[str, Span]] = []

    def walk(parent: str | None, depth: int) -> None:
        for span in children.get(parent, []):
            rows.append(("  " * depth + span.name, span))
            walk(span.span_id, depth + 1)

    walk(None, 0)
    width = max(len(label) for label, _ in rows)
    return [
        f"{label:<{width}}  {span.service:<9} {span.kind:<7} "
        f"{'+' + format((span.start_ns - origin) / 1e6, '.2f'):>9} ms {span.ms:8.2f} ms"
        for label, span in rows
    ]


def _percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (what statsd daemons report as ``upper_<q>``)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def red_table(timers: Iterable[Timer]) -> list[str]:
    """Rate, errors (status >= 500) and duration percentiles per service, method and route."""
    groups: dict[tuple[str, str, str], list[Timer]] = {}
    for timer in timers:
        groups.setdefault((timer.service, timer.method, timer.route), []).append(timer)
    rows = [("service", "route", "count", "errors", "p50 ms", "p95 ms")]
    for (service, method, route), group in sorted(groups.items()):
        ms = [t.ms for t in group]
        rows.append(
            (
                service,
                f"{method} {route}",
                str(len(group)),
                str(sum(t.status >= 500 for t in group)),
                f"{_percentile(ms, 50):.2f}",
                f"{_percentile(ms, 95):.2f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    return [
        "  ".join(
            cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        )
        for row in rows
    ]
