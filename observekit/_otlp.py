"""OTLP trace encoding: SDK spans to an ``ExportTraceServiceRequest``, as protobuf bytes.

The SDK's encoder builds a protobuf message object for every span, attribute
and value before serializing them; on this machine class that is ~31 µs of the
export thread per span, more than the span itself costs the request (see
``bench/span_cost.py``), and under a busy gunicorn worker it is CPU taken from
requests. This module writes the same wire format directly:

- IDs, times, flags and status go out as precomputed bytes or one ``struct`` call;
- the bytes of attribute pairs that repeat (method, scheme, host, port, status, ...)
  are reused, and so are those of whole attribute sets that repeat (all values str
  or int), a cache that pauses itself while sets keep missing (high cardinality);
- span classes registered with :func:`read_directly` (observekit's own light spans)
  are read by field, not through ``ReadableSpan``'s properties, and a
  ``SpanContext`` by index, when an import-time probe finds the installed API lays
  it out as expected (:data:`_tuple_context`).

The output decodes to a message equal to the SDK's ``encode_spans`` for the
same spans (``tests/test_otlp.py`` checks this field by field, through
opentelemetry-proto), so any collector reads it as it reads the SDK's.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final

from opentelemetry.trace import (
    DEFAULT_TRACE_STATE,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    TraceState,
)

__all__ = ["encode_spans", "read_directly"]

_pack_q = struct.Struct("<Q").pack
_pack_d = struct.Struct("<d").pack
_pack_i = struct.Struct("<I").pack
# trace_id (field 1: tag, length 16, two big-endian halves) and span_id (field 2: tag,
# length 8, big-endian) in one call; the second adds parent_span_id (field 4).
_pack_ids = struct.Struct(">2sQQ2sQ").pack
_pack_ids_parent = struct.Struct(">2sQQ2sQ2sQ").pack
# start_time_unix_nano and end_time_unix_nano (fields 7 and 8, fixed64): tag, value, twice.
_pack_times = struct.Struct("<BQBQ").pack
# A tag and a two-byte varint length (128 to 16383 bytes: most spans).
_pack_prefix = struct.Struct("BBB").pack
_SMALL = [bytes((n,)) for n in range(128)]
_SMALL_12 = [bytes((0x12, n)) for n in range(128)]  # a span's tag and a short length
_MASK64: Final = (1 << 64) - 1
_TRACE_ID: Final = b"\x0a\x10"
_SPAN_ID: Final = b"\x12\x08"
_PARENT_ID: Final = b"\x22\x08"

# SpanFlags: the flags field says whether the parent was remote (OTLP 1.1).
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200
_FLAGS_LOCAL: Final = b"\x85\x01" + _pack_i(_HAS_IS_REMOTE)
_FLAGS_REMOTE: Final = b"\x85\x01" + _pack_i(_HAS_IS_REMOTE | _IS_REMOTE)
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
# The kind field, per API SpanKind: the API's enum starts at INTERNAL=0, OTLP's at UNSPECIFIED.
_KIND = {kind: b"\x30" + _SMALL[kind.value + 1] for kind in SpanKind}
_SERVER: Final = SpanKind.SERVER
_KIND_SERVER = _KIND[_SERVER]
# The status code field (absent for UNSET, 0).
_STATUS_CODE = {code: b"\x18" + _SMALL[code.value] if code.value else b"" for code in StatusCode}
_UNSET: Final = StatusCode.UNSET
_ERROR: Final = StatusCode.ERROR
# The whole status field (15) of a status without description, by code.
_STATUS_UNSET: Final = b"\x7a\x00"
_STATUS_ERROR: Final = b"\x7a\x02" + _STATUS_CODE[StatusCode.ERROR]
_STATUS_OK: Final = b"\x7a\x02" + _STATUS_CODE[StatusCode.OK]
_CACHE_LIMIT = 4096
_NAME_LIMIT = 1024
# Whole attribute sets: at most this many kept; after _SET_MISSES misses in a row the
# next _SET_PAUSE sets skip the cache (high-cardinality values: nothing to reuse).
_SET_LIMIT = 512
_SET_MISSES = 8
_SET_PAUSE = 1024
_SET_TYPES: Final = frozenset({str, int})

_direct: set[type] = set()


def read_directly(cls: type) -> type:
    """Have the encoder read ``cls``'s instances (exactly that class) by field.

    For ``ReadableSpan`` subclasses that hold the SDK's private fields with the
    values its properties would return: ``_name``, ``_context``, ``_parent``,
    ``_kind``, ``_start_time``, ``_end_time``, ``_status``, ``_resource``,
    ``_instrumentation_scope``, ``_attributes`` (a dict, a ``BoundedAttributes`` or
    None) and ``_events``/``_links`` (a tuple or a ``BoundedList``). Returns ``cls``.
    """
    _direct.add(cls)
    return cls


def _probe_tuple_context() -> bool:
    """Whether a ``SpanContext`` unpacks as ``(trace_id, span_id, is_remote,
    trace_flags, trace_state, is_valid)``, as the API's properties read it."""
    try:
        flags = TraceFlags(1)
        state = TraceState([("k", "v")])
        context = SpanContext(0x0102, 0x0304, False, flags, state)
        if type(context).__iter__ is not tuple.__iter__:
            return False
        trace_id, span_id, is_remote, trace_flags, trace_state, is_valid = context
        return (
            isinstance(context, tuple)
            and trace_id == context.trace_id == 0x0102
            and span_id == context.span_id == 0x0304
            and is_remote is context.is_remote is False
            and trace_flags is context.trace_flags is flags
            and trace_state is context.trace_state is state
            and is_valid is context.is_valid is True
        )
    except Exception:
        return False


_tuple_context: Final = _probe_tuple_context()
"""Read span contexts by index (see :func:`_probe_tuple_context`); a test pins it on."""


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


def _prefix(tag: int, n: int) -> bytes:
    """The tag and length of a length-delimited field of ``n`` bytes (tag below 0x80)."""
    if n < 0x80:
        return bytes((tag, n))
    if n < 0x4000:
        return _pack_prefix(tag, (n & 0x7F) | 0x80, n >> 7)
    return bytes((tag,)) + _varint(n)


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
    """Holds the caches one exporter reuses from batch to batch (one export thread)."""

    def __init__(self) -> None:
        # field tag -> (key, type, value) -> the tagged, framed KeyValue; type keeps True
        # apart from 1. Floats are not kept: 0.0 == -0.0, and they are cheap to encode.
        self._pairs: dict[bytes, dict[tuple[str, type, Any], bytes]] = {}
        # (*keys, *values, *their types) -> a span's framed attributes, joined (the
        # tuple's length tells the three apart); types keep True apart from 1, and only
        # sets of str and int values are kept (0.0 == -0.0 too).
        self._sets: dict[tuple[Any, ...], bytes] = {}
        self._set_misses = 0
        self._set_paused = 0
        self._names: dict[str, bytes] = {}
        # id(status) -> (the status, kept so its id is not reused; its bytes)
        self._statuses: dict[int, tuple[Any, bytes]] = {}
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
            if kind is str or kind is int or kind is bool:
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

    def _set_missed(self, key: tuple[Any, ...], attributes: dict[str, Any]) -> bytes:
        """A span's attributes (field 9) not in the set cache: encoded, kept when all
        values are str or int (``key``'s last third holds their types), and the cache
        paused after too many misses in a row."""
        data = b"".join(self.attributes(b"\x4a", attributes))
        sets = self._sets
        if _SET_TYPES.issuperset(key[len(key) // 3 * 2 :]):
            if len(sets) >= _SET_LIMIT:
                sets.clear()
            sets[key] = data
        misses = self._set_misses = self._set_misses + 1
        if misses >= _SET_MISSES:
            self._set_misses = 0
            self._set_paused = _SET_PAUSE
        return data

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

    def span(self, span: Any, direct: bool | None = None) -> bytes:
        """A ``Span`` message body (``direct``: read by field; None: as registered)."""
        if direct is None:
            direct = type(span) in _direct
        if direct:
            context = span._context
            parent = span._parent
            name = span._name
            kind = span._kind
            start, end = span._start_time, span._end_time
            attributes = span._attributes
            events = span._events
            links = span._links
            status = span._status
            if type(attributes) is dict or not attributes:
                dropped_attributes = 0
            else:
                dropped_attributes = getattr(attributes, "dropped", 0)
            dropped_events = getattr(events, "dropped", 0) if events else 0
            dropped_links = getattr(links, "dropped", 0) if links else 0
        else:
            context = span.context
            parent = span.parent
            name = span.name
            kind = span.kind
            start, end = span.start_time, span.end_time
            attributes = span.attributes
            events = span.events
            links = span.links
            status = span.status
            dropped_attributes = span.dropped_attributes
            dropped_events = span.dropped_events
            dropped_links = span.dropped_links
        if _tuple_context:
            trace_id, span_id, _, _, state, _ = context
        else:
            trace_id, span_id, state = context.trace_id, context.span_id, context.trace_state
        if state is DEFAULT_TRACE_STATE or not state:
            if parent is None:
                parts = [
                    _pack_ids(_TRACE_ID, trace_id >> 64, trace_id & _MASK64, _SPAN_ID, span_id)
                ]
                flags = _FLAGS_LOCAL
            else:
                parts = [
                    _pack_ids_parent(
                        _TRACE_ID,
                        trace_id >> 64,
                        trace_id & _MASK64,
                        _SPAN_ID,
                        span_id,
                        _PARENT_ID,
                        parent[1] if _tuple_context else parent.span_id,
                    )
                ]
                remote = parent[2] if _tuple_context else parent.is_remote
                flags = _FLAGS_REMOTE if remote else _FLAGS_LOCAL
        else:
            parts = [_pack_ids(_TRACE_ID, trace_id >> 64, trace_id & _MASK64, _SPAN_ID, span_id)]
            text = ",".join([f"{k}={v}" for k, v in state.items()])
            if text:
                parts.append(_text(b"\x1a", text))
            flags = _FLAGS_LOCAL
            if parent is not None:
                parts.append(_PARENT_ID + parent.span_id.to_bytes(8, "big"))
                if parent.is_remote:
                    flags = _FLAGS_REMOTE
        if name:
            encoded = self._names.get(name)
            if encoded is None:
                encoded = _text(b"\x2a", name)
                if len(self._names) >= _NAME_LIMIT:
                    self._names.clear()
                self._names[name] = encoded
            parts.append(encoded)
        parts.append(_KIND_SERVER if kind is _SERVER else _KIND[kind])  # Enum hash is slow
        if start and end:
            parts.append(_pack_times(0x39, start, 0x41, end))
        elif start:
            parts.append(b"\x39" + _pack_q(start))
        elif end:
            parts.append(b"\x41" + _pack_q(end))
        if attributes:
            if type(attributes) is not dict:
                parts += self.attributes(b"\x4a", attributes)
            elif self._set_paused:
                self._set_paused -= 1
                parts += self.attributes(b"\x4a", attributes)
            else:
                values = attributes.values()
                key = (*attributes, *values, *map(type, values))
                try:
                    found = self._sets.get(key)
                except TypeError:  # an unhashable value (a list): a set not to keep
                    found = None
                if found is None:
                    parts.append(self._set_missed(key, attributes))
                else:
                    self._set_misses = 0
                    parts.append(found)
        if dropped_attributes:
            parts.append(b"\x50" + _varint(dropped_attributes))
        if events:
            for event in events:
                parts.append(_field(b"\x5a", self._event(event)))
        if dropped_events:
            parts.append(b"\x60" + _varint(dropped_events))
        if links:
            for link in links:
                parts.append(_field(b"\x6a", self._link(link)))
        if dropped_links:
            parts.append(b"\x70" + _varint(dropped_links))
        if status is not None:
            held = self._statuses.get(id(status))
            if held is not None and held[0] is status:
                parts.append(held[1])
            else:
                parts.append(self._status(status))
        parts.append(flags)
        return b"".join(parts)

    def _status(self, status: Any) -> bytes:
        """The status field; kept by identity for a status without a description (the
        shared ones, such as observekit's UNSET and ERROR)."""
        code = status.status_code
        description = status.description
        if description:
            body = _text(b"\x12", description)
            if code is not _UNSET:
                body += _STATUS_CODE[code]
            return _field(b"\x7a", body)
        data = _STATUS_UNSET if code is _UNSET else _STATUS_ERROR if code is _ERROR else _STATUS_OK
        if len(self._statuses) >= 64:
            self._statuses.clear()
        self._statuses[id(status)] = (status, data)
        return data

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
        flags = _FLAGS_REMOTE if context.is_remote else _FLAGS_LOCAL
        trace_id = context.trace_id
        parts = [
            _pack_ids(_TRACE_ID, trace_id >> 64, trace_id & _MASK64, _SPAN_ID, context.span_id)
        ]
        parts += self.attributes(b"\x22", link.attributes)
        if link.dropped_attributes:
            parts.append(b"\x28" + _varint(link.dropped_attributes))
        parts.append(b"\x35" + flags[2:])
        return b"".join(parts)

    def encode(self, spans: Sequence[Any]) -> bytes:
        """An ``ExportTraceServiceRequest``: spans grouped by resource, then by scope."""
        groups: dict[int, tuple[Any, dict[int, tuple[Any, list[bytes]]]]] = {}
        span_bytes = self.span
        direct = _direct
        last_resource: Any = None
        last_scope: Any = None
        entry: list[bytes] = []
        for span in spans:
            is_direct = type(span) in direct
            if is_direct:
                resource = span._resource
                scope = span._instrumentation_scope
            else:
                resource = span.resource
                scope = span.instrumentation_scope or None
            if resource is not last_resource or scope is not last_scope or not groups:
                by_scope = groups.get(id(resource))
                if by_scope is None:
                    by_scope = groups[id(resource)] = (resource, {})
                found = by_scope[1].get(id(scope))
                if found is None:
                    found = by_scope[1][id(scope)] = (scope, [])
                entry = found[1]
                last_resource, last_scope = resource, scope
            body = span_bytes(span, is_direct)
            n = len(body)
            if n < 0x80:
                entry.append(_SMALL_12[n])
            elif n < 0x4000:
                entry.append(_pack_prefix(0x12, (n & 0x7F) | 0x80, n >> 7))
            else:
                entry.append(_prefix(0x12, n))
            entry.append(body)
        out = []
        for resource, scopes in groups.values():
            parts = [_field(b"\x0a", self._once(resource, self._resource))]
            for scope, encoded in scopes.values():
                scope_body = [_field(b"\x0a", self._once(scope, self._scope)), *encoded]
                schema = getattr(scope, "schema_url", None)
                if schema:
                    scope_body.append(_text(b"\x1a", schema))
                parts.append(_field(b"\x12", b"".join(scope_body)))
            if resource.schema_url:
                parts.append(_text(b"\x1a", resource.schema_url))
            out.append(_field(b"\x0a", b"".join(parts)))
        return b"".join(out)


def encode_spans(spans: Sequence[Any]) -> bytes:
    """Serialize finished SDK spans (``ReadableSpan``) as an OTLP trace export request."""
    return _Encoder().encode(spans)
