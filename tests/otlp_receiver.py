"""Real OTLP receivers on 127.0.0.1 for the tracing tests, and two kinds of dead collector.

- :class:`OTLPReceiver`: OTLP/HTTP. ``POST /v1/traces`` with a protobuf
  ``ExportTraceServiceRequest`` (plain, gzip or deflate), answered ``200`` with an
  ``ExportTraceServiceResponse``; every span is kept as a plain dict.
- :class:`GrpcReceiver`: the same over OTLP/gRPC (``TraceService/Export``).
- :class:`HangingReceiver`: accepts connections and never answers.
- :func:`closed_port`: a port nothing listens on (connections are refused).

Each is a context manager; leaving it closes every socket and thread it opened.
Run as a script, the HTTP receiver serves until interrupted and prints a line per span.
"""

from __future__ import annotations

import contextlib
import gzip
import http.server
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from concurrent import futures
from typing import Any

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1 import trace_pb2

Span = dict[str, Any]

_KINDS = {
    trace_pb2.Span.SPAN_KIND_UNSPECIFIED: "UNSPECIFIED",
    trace_pb2.Span.SPAN_KIND_INTERNAL: "INTERNAL",
    trace_pb2.Span.SPAN_KIND_SERVER: "SERVER",
    trace_pb2.Span.SPAN_KIND_CLIENT: "CLIENT",
    trace_pb2.Span.SPAN_KIND_PRODUCER: "PRODUCER",
    trace_pb2.Span.SPAN_KIND_CONSUMER: "CONSUMER",
}
_STATUS = {
    trace_pb2.Status.STATUS_CODE_UNSET: "UNSET",
    trace_pb2.Status.STATUS_CODE_OK: "OK",
    trace_pb2.Status.STATUS_CODE_ERROR: "ERROR",
}


def closed_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound once, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind)


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def decode(request: trace_service_pb2.ExportTraceServiceRequest) -> list[Span]:
    """Every span of an export request, flattened into a dict."""
    out: list[Span] = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.append(
                    {
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex() or None,
                        "name": span.name,
                        "kind": _KINDS.get(span.kind, str(span.kind)),
                        "attributes": _attributes(span.attributes),
                        "status": {
                            "code": _STATUS.get(span.status.code, str(span.status.code)),
                            "message": span.status.message,
                        },
                        "events": [
                            {"name": e.name, "attributes": _attributes(e.attributes)}
                            for e in span.events
                        ],
                        "resource": resource,
                        "scope": scope_spans.scope.name,
                        "start_ns": span.start_time_unix_nano,
                        "end_ns": span.end_time_unix_nano,
                    }
                )
    return out


class _Collected:
    """Spans received so far, shared with the server threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[Span] = []
        self.requests: list[dict[str, str]] = []
        """The headers of every export request, in arrival order."""

    def add(self, spans: list[Span], headers: dict[str, str]) -> None:
        with self._lock:
            self._spans.extend(spans)
            self.requests.append(headers)

    @property
    def spans(self) -> list[Span]:
        with self._lock:
            return list(self._spans)

    def wait_for(
        self, predicate: Callable[[list[Span]], bool], timeout: float = 10.0
    ) -> list[Span]:
        """Poll until ``predicate(spans)`` holds; raise AssertionError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                names = [s["name"] for s in spans]
                raise AssertionError(f"no matching spans within {timeout} s; got {names!r}")
            time.sleep(0.01)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        target = self.path
        if target.startswith("http://"):  # absolute form: sent to this receiver as a proxy
            self.server.proxied.append(target)
            target = "/" + target.split("/", 3)[3]
        if target != self.server.path:
            self._answer(404, b"", "text/plain")
            return
        encoding = (self.headers.get("Content-Encoding") or "").lower()
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        except Exception:  # a broken payload is the exporter's bug: tell it so
            self._answer(400, b"bad payload", "text/plain")
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.collected.add(decode(request), headers)
        response = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self._answer(200, response, "application/x-protobuf")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the tests read spans, not access lines

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, collected: _Collected, path: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.collected = collected
        self.path = path
        self.proxied: list[str] = []
        """URLs of requests that came in as to a proxy (``POST http://host/path``)."""
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    def track(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        """End the kept-alive connections, so their handler threads return."""
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class OTLPReceiver(_Collected):
    """An OTLP/HTTP trace receiver in a thread, on a free port of 127.0.0.1.

    It answers POSTs to ``path`` only (other paths get 404, as a collector does).
    It also takes them as an HTTP proxy would (``POST http://collector/v1/traces``),
    and lists those URLs in :attr:`proxied`.
    """

    def __init__(self, path: str = "/v1/traces") -> None:
        super().__init__()
        self._server = _Server(self, path)
        self.port = int(self._server.server_address[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"
        """The base URL (``OTEL_EXPORTER_OTLP_ENDPOINT``)."""
        self.traces_url = f"{self.endpoint}{path}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="otlp-receiver",
            daemon=True,
        )

    @property
    def proxied(self) -> list[str]:
        """URLs of the posts that came in as to an HTTP proxy."""
        return self._server.proxied

    def __enter__(self) -> OTLPReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(5.0)
        self._server.close_connections()
        self._server.server_close()


class GrpcReceiver(_Collected):
    """An OTLP/gRPC trace receiver (``grpc.server``) on a free port of 127.0.0.1."""

    def __init__(self) -> None:
        import grpc  # type: ignore[import-untyped]
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        super().__init__()
        collected = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(  # noqa: N802 (the generated name)
                self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
            ) -> trace_service_pb2.ExportTraceServiceResponse:
                metadata = {k: str(v) for k, v in context.invocation_metadata()}
                collected.add(decode(request), metadata)
                return trace_service_pb2.ExportTraceServiceResponse()

        self._pool = futures.ThreadPoolExecutor(max_workers=4)
        self._server = grpc.server(self._pool)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            Service(), self._server
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> GrpcReceiver:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None).wait(5.0)
        self._pool.shutdown(wait=True)


class HangingReceiver:
    """Accepts TCP connections on 127.0.0.1 and never answers (a wedged collector)."""

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.05)
        self.port = int(self._listener.getsockname()[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="hanging-receiver", daemon=True)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(connection)  # read nothing, answer nothing
            self.accepted += 1

    def __enter__(self) -> HangingReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)
        for connection in self._held:
            connection.close()
        self._listener.close()


if __name__ == "__main__":
    with OTLPReceiver() as receiver:
        print(f"OTLP/HTTP receiver on {receiver.endpoint}", flush=True)
        seen = 0
        try:
            while True:
                spans = receiver.spans
                for span in spans[seen:]:
                    print(span["trace_id"], span["name"], span["attributes"], flush=True)
                seen = len(spans)
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
