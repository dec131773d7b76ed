"""OTLP trace encoding: SDK spans to an ``ExportTraceServiceRequest``, as protobuf bytes.

The SDK's encoder builds a protobuf message object for every span, attribute
and value before serializing them; on this machine class that is ~31 µs of the
export thread per span, more than the span itself costs the request (see
``bench/span_cost.py``), and under a busy gunicorn worker it is CPU taken from
requests. This module writes the same wire format directly, reusing the bytes
of attribute pairs that repeat (method, scheme, host, port, status, ...).

The output decodes to a message equal to the SDK's ``encode_spans`` for the
same spans (``tests/test_otlp.py`` checks this field by field, through
opentelemetry-proto), so any collector reads it as it reads the SDK's.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.trace import SpanKind, StatusCode

__all__ = ["encode_spans"]

_pack_q = struct.Struct("<Q").pack
_pack_d = struct.Struct("<d").pack
_pack_i = struct.Struct("<I").pack
_SMALL = [bytes((n,)) for n in range(128)]

# SpanFlags: the flags field says whether the parent was remote (OTLP 1.1).
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
# The kind field, per API SpanKind: the API's enum starts at INTERNAL=0, OTLP's at UNSPECIFIED.
_KIND = {kind: b"\x30" + _SMALL[kind.value + 1] for kind in SpanKind}
# The status code field (absent for UNSET, 0).
_KIND_SERVER = _KIND[SpanKind.SERVER]
_STATUS_CODE = {code: b"\x18" + _SMALL[code.value] if code.value else b"" for code in StatusCode}
_CACHE_LIMIT = 4096


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, body: bytes) -> bytes:
    """A length-delimited field: tag, length, body."""
    n = len(body)
    return tag + (_SMALL[n] if n < 0x80 else _varint(n)) + body


def _text(tag: bytes, value: str) -> bytes:
    return _field(tag, value.encode("utf-8", "replace"))


class _UnencodableError(Exception):
    """A value the OTLP data model cannot hold; the SDK skips such an attribute."""


def _any_value(value: Any) -> bytes:
    """An ``AnyValue`` body (oneof members are written even when they are zero)."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _text(b"\x0a", value)
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise _UnencodableError(f"{value} does not fit in int64")
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return b"\x21" + _pack_d(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join([_field(b"\x0a", _any_value(v)) for v in value]))
    if isinstance(value, Mapping):
        return _field(
            b"\x32", b"".join([_field(b"\x0a", _key_value(str(k), v)) for k, v in value.items()])
        )
    raise _UnencodableError(f"invalid type {type(value).__name__}")


def _key_value(key: str, value: Any) -> bytes:
    """A ``KeyValue`` body."""
    body = _field(b"\x12", _any_value(value))
    return _text(b"\x0a", key) + body if key else body


class _Encoder:
    """Holds the caches one exporter reuses from batch to batch."""

    def __init__(self) -> None:
        # field tag -> (key, type, value) -> the tagged, framed KeyValue; type keeps True
        # apart from 1.
        self._pairs: dict[bytes, dict[tuple[str, type, Any], bytes]] = {}
        # id(resource or scope) -> (the object, kept so its id is not reused; its bytes)
        self._framed: dict[int, tuple[Any, bytes]] = {}

    def attributes(self, tag: bytes, attributes: Mapping[str, Any] | None) -> list[bytes]:
        if not attributes:
            return []
        pairs = self._pairs.get(tag)
        if pairs is None:
            pairs = self._pairs[tag] = {}
        out = []
        for key, value in attributes.items():
            kind = type(value)
            if kind is str or kind is int or kind is float or kind is bool:
                cache_key = (key, kind, value)
                framed = pairs.get(cache_key)
                if framed is None:
                    try:
                        framed = _field(tag, _key_value(key, value))
                    except _UnencodableError:
                        continue
                    if len(pairs) >= _CACHE_LIMIT:
                        pairs.clear()
                    pairs[cache_key] = framed
                out.append(framed)
            else:
                try:
                    out.append(_field(tag, _key_value(key, value)))
                except (_UnencodableError, TypeError, ValueError):
                    continue
        return out

    def _once(self, obj: Any, build: Any) -> bytes:
        held = self._framed.get(id(obj))
        if held is not None and held[0] is obj:
            return held[1]
        data: bytes = build(obj)
        if len(self._framed) >= 64:
            self._framed.clear()
        self._framed[id(obj)] = (obj, data)
        return data

    def _resource(self, resource: Any) -> bytes:
        return b"".join(self.attributes(b"\x0a", resource.attributes))

    def _scope(self, scope: Any) -> bytes:
        if scope is None:
            return b""
        parts = []
        if scope.name:
            parts.append(_text(b"\x0a", scope.name))
        if scope.version:
            parts.append(_text(b"\x12", scope.version))
        parts += self.attributes(b"\x1a", scope.attributes)
        return b"".join(parts)

    def span(self, span: Any) -> bytes:
        context = span.context
        parts = [
            b"\x0a\x10" + context.trace_id.to_bytes(16, "big"),
            b"\x12\x08" + context.span_id.to_bytes(8, "big"),
        ]
        state = context.trace_state
        if state:
            text = ",".join([f"{k}={v}" for k, v in state.items()])
            if text:
                parts.append(_text(b"\x1a", text))
        parent = span.parent
        flags = _HAS_IS_REMOTE
        if parent is not None:
            parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
            if parent.is_remote:
                flags |= _IS_REMOTE
        if span.name:
            parts.append(_text(b"\x2a", span.name))
        kind = span.kind
        parts.append(_KIND_SERVER if kind is SpanKind.SERVER else _KIND[kind])  # Enum hash is slow
        start, end = span.start_time, span.end_time
        if start:
            parts.append(b"\x39" + _pack_q(start))
        if end:
            parts.append(b"\x41" + _pack_q(end))
        parts += self.attributes(b"\x4a", span.attributes)
        dropped = span.dropped_attributes
        if dropped:
            parts.append(b"\x50" + _varint(dropped))
        for event in span.events:
            parts.append(_field(b"\x5a", self._event(event)))
        dropped = span.dropped_events
        if dropped:
            parts.append(b"\x60" + _varint(dropped))
        for link in span.links:
            parts.append(_field(b"\x6a", self._link(link)))
        dropped = span.dropped_links
        if dropped:
            parts.append(b"\x70" + _varint(dropped))
        status = span.status
        if status is not None:
            body = b""
            if status.description:
                body = _text(b"\x12", status.description)
            code = status.status_code
            if code is not StatusCode.UNSET:
                body += _STATUS_CODE[code]
            parts.append(_field(b"\x7a", body))
        parts.append(b"\x85\x01" + _pack_i(flags))
        return b"".join(parts)

    def _event(self, event: Any) -> bytes:
        parts = []
        if event.timestamp:
            parts.append(b"\x09" + _pack_q(event.timestamp))
        if event.name:
            parts.append(_text(b"\x12", event.name))
        parts += self.attributes(b"\x1a", event.attributes)
        if event.dropped_attributes:
            parts.append(b"\x20" + _varint(event.dropped_attributes))
        return b"".join(parts)

    def _link(self, link: Any) -> bytes:
        context = link.context
        flags = _HAS_IS_REMOTE | (_IS_REMOTE if context.is_remote else 0)
        parts = [
            b"\x0a\x10" + context.trace_id.to_bytes(16, "big"),
            b"\x12\x08" + context.span_id.to_bytes(8, "big"),
        ]
        parts += self.attributes(b"\x22", link.attributes)
        if link.dropped_attributes:
            parts.append(b"\x28" + _varint(link.dropped_attributes))
        parts.append(b"\x35" + _pack_i(flags))
        return b"".join(parts)

    def encode(self, spans: Sequence[Any]) -> bytes:
        """An ``ExportTraceServiceRequest``: spans grouped by resource, then by scope."""
        groups: dict[int, tuple[Any, dict[int, tuple[Any, list[bytes]]]]] = {}
        span_bytes = self.span
        for span in spans:
            resource = span.resource
            scope = span.instrumentation_scope or None
            by_scope = groups.get(id(resource))
            if by_scope is None:
                by_scope = groups[id(resource)] = (resource, {})
            entry = by_scope[1].get(id(scope))
            if entry is None:
                entry = by_scope[1][id(scope)] = (scope, [])
            entry[1].append(_field(b"\x12", span_bytes(span)))
        out = []
        for resource, scopes in groups.values():
            body = [_field(b"\x0a", self._once(resource, self._resource))]
            for scope, encoded in scopes.values():
                scope_body = [_field(b"\x0a", self._once(scope, self._scope)), *encoded]
                schema = getattr(scope, "schema_url", None)
                if schema:
                    scope_body.append(_text(b"\x1a", schema))
                body.append(_field(b"\x12", b"".join(scope_body)))
            if resource.schema_url:
                body.append(_text(b"\x1a", resource.schema_url))
            out.append(_field(b"\x0a", b"".join(body)))
        return b"".join(out)


def encode_spans(spans: Sequence[Any]) -> bytes:
    """Serialize finished SDK spans (``ReadableSpan``) as an OTLP trace export request."""
    return _Encoder().encode(spans)
