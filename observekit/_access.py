"""The access line's fields, in one place for both ways a line is written.

``fields`` gives them as the ``extra=`` dict of a ``LogRecord`` (the logging path,
any handler and formatter). ``json_fields`` writes the same fields, in the same
order, straight into observekit's JSON line: the direct path, taken when the line
goes to observekit's one handler. It is an f-string with the keys already in it,
which costs a third of what ``json``'s C encoder spends on the same dict, whose
cost is mostly in escaping the keys again on every line.
``tests/test_access_direct.py`` checks that the two paths write the same line.

The values come from the core: ``str`` (or None when absent), ``status``, the
sizes and ``duration_us`` ``int``. The duration is written in milliseconds with
three decimals, as ``float.__repr__`` writes ``duration_us / 1000`` (the logging
path's value), but from the integer: formatting a float (and ``round()``, which
formats and parses one) runs a large part of the interpreter's C code that
nothing else on a request runs, which costs more than its instructions under a
real server, where that code is out of the CPU's caches on every request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_ROUTE = ', "http.route": '
_REQUEST_TYPE = ', "http.request.header.content-type": '
_REQUEST_SIZE = ', "http.request.body.size": '
_RESPONSE_TYPE = ', "http.response.header.content-type": '
_CLIENT = ', "client.address": '
_USER_AGENT = ', "user_agent.original": '
_ERROR_TYPE = ', "error.type": '
_FAULT = ', "fault.injected": '

# "000" to "999": the digits of a number below 1000, written without a format spec.
DIGITS3 = tuple(f"{n:03d}" for n in range(1000))
# What float.__repr__ writes after the integer part of n / 1000: ".0", ".001", ".01", ".068".
_FRACTION = tuple(f".{n:03d}".rstrip("0") if n else ".0" for n in range(1000))
# Below this many µs, "q.rrr" has at most 13 significant digits: the shortest text
# that reads back as the float us / 1000, which is what repr() writes.
_EXACT_US = 10**12


def duration_text(us: int) -> str:
    """``repr(us / 1000)``: the milliseconds of ``us`` microseconds, as JSON writes them."""
    if 0 <= us < _EXACT_US:
        return str(us // 1000) + _FRACTION[us % 1000]
    return float.__repr__(us / 1000)


# What one access line says about its request, beyond the message, in this order:
# method, path, scheme, route, status, duration_us, request content-type, request body
# size, response content-type, response body size, client address, user agent,
# error.type, fault.injected. A plain tuple: the core builds one per request, and a
# NamedTuple's constructor costs as much as writing the fields.
AccessValues = tuple[
    str,
    str,
    str,
    "str | None",
    int,
    int,
    "str | None",
    "int | None",
    "str | None",
    int,
    "str | None",
    "str | None",
    "str | None",
    "str | None",
]


def fields(v: AccessValues) -> dict[str, Any]:
    """The line's fields as an ``extra=`` dict, in the order the line writes them."""
    (
        method,
        path,
        scheme,
        route,
        status,
        duration_us,
        request_type,
        request_size,
        response_type,
        response_size,
        client,
        user_agent,
        error_type,
        fault,
    ) = v
    out: dict[str, Any] = {
        "http.request.method": method,
        "url.path": path,
        "url.scheme": scheme,
    }
    if route is not None:
        out["http.route"] = route
    out["http.response.status_code"] = status
    out["duration_ms"] = duration_us / 1000
    if request_type is not None:
        out["http.request.header.content-type"] = request_type
    if request_size is not None:
        out["http.request.body.size"] = request_size
    if response_type is not None:
        out["http.response.header.content-type"] = response_type
    out["http.response.body.size"] = response_size
    if client is not None:
        out["client.address"] = client
    if user_agent is not None:
        out["user_agent.original"] = user_agent
    if error_type is not None:
        out["error.type"] = error_type
    if fault is not None:
        out["fault.injected"] = fault
    return out


def json_fields(escape: Callable[[str], str], v: AccessValues) -> str:
    """``fields(v)`` as JSON members, each after ``", "``; strings through ``escape``
    (``json``'s ``encode_basestring_ascii`` or ``encode_basestring``)."""
    (
        method,
        path,
        scheme,
        route,
        status,
        duration_us,
        request_type,
        request_size,
        response_type,
        response_size,
        client,
        user_agent,
        error_type,
        fault,
    ) = v
    return (
        f', "http.request.method": {escape(method)}, "url.path": {escape(path)}'
        f', "url.scheme": {escape(scheme)}'
        f"{'' if route is None else _ROUTE + escape(route)}"
        f', "http.response.status_code": {int.__repr__(status)}'
        f', "duration_ms": {duration_text(duration_us)}'
        f"{'' if request_type is None else _REQUEST_TYPE + escape(request_type)}"
        f"{'' if request_size is None else _REQUEST_SIZE + int.__repr__(request_size)}"
        f"{'' if response_type is None else _RESPONSE_TYPE + escape(response_type)}"
        f', "http.response.body.size": {int.__repr__(response_size)}'
        f"{'' if client is None else _CLIENT + escape(client)}"
        f"{'' if user_agent is None else _USER_AGENT + escape(user_agent)}"
        f"{'' if error_type is None else _ERROR_TYPE + escape(error_type)}"
        f"{'' if fault is None else _FAULT + escape(fault)}"
    )
