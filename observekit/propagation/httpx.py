"""httpx: request ID and trace context on outgoing calls, a client span, metrics, a log line.

Needs the ``httpx`` extra (``pip install 'observekit[httpx]'``). Wraps a client's
transports (and mounts); nothing is patched unless :func:`instrument` is called::

    import httpx
    import observekit.propagation.httpx as ok_httpx

    client = ok_httpx.instrument_client(httpx.Client())          # or httpx.AsyncClient()
    client = httpx.Client(transport=ok_httpx.ObservekitTransport(httpx.HTTPTransport()))
    ok_httpx.instrument()   # every Client/AsyncClient built from now on, and httpx.get & co.

Each hop of a redirect chain goes through the transport: each gets its own client
span (same trace, same parent) and the same request ID. Headers added on one hop
are taken off the next before it gets its own (they would otherwise be copied
along by httpx, and could follow a redirect to a denied host); a header the
caller set is kept on every hop.

The span, the duration metric and the DEBUG line end when the response body has
been read or the response closed (``with client.stream(...)`` included), or when
the transport raises; a body never read nor closed never ends them.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Any

from .._config import Config
from .headers import _FROM_CONFIG, Call, Outgoing, outgoing_for

try:
    import httpx
except ImportError:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "observekit.propagation.httpx needs httpx: pip install 'observekit[httpx]'"
    ) from None

__all__ = [
    "AsyncObservekitTransport",
    "ObservekitTransport",
    "instrument",
    "instrument_client",
    "uninstrument",
]

_MARK = "observekit.sent"


class _Sent:
    """What observekit added to the previous hop of one request (kept in its extensions)."""

    __slots__ = ("headers", "hops")

    def __init__(self) -> None:
        self.headers: list[tuple[str, str]] = []
        self.hops = 0


def _begin(outgoing: Outgoing, request: httpx.Request) -> Call:
    extensions = request.extensions
    sent = extensions.get(_MARK)
    headers = request.headers
    if sent is None:
        sent = _Sent()
        # A new dict: the one given may be the caller's. httpx hands it on to redirects.
        request.extensions = {**extensions, _MARK: sent}
    else:
        # A redirect: httpx copied the previous hop's headers, ours included.
        for name, value in sent.headers:
            if headers.get(name) == value:
                del headers[name]
    resend = sent.hops
    sent.hops = resend + 1
    url = request.url
    call = outgoing.begin(request.method, url.scheme, url.host, url.port, url, resend)
    added = []
    for name, value in call.headers:
        if name not in headers:
            headers[name] = value
            added.append((name, value))
    sent.headers = added
    return call


class _SyncStream(httpx.SyncByteStream):
    """The response body: finishes the call when it is closed or read to its end."""

    def __init__(self, stream: httpx.SyncByteStream, call: Call) -> None:
        self._stream = stream
        self._call = call

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._stream
        except GeneratorExit:
            raise
        except BaseException as exc:
            self._call.fail(exc)
            raise
        self._call.finish()

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._call.finish()


class _AsyncStream(httpx.AsyncByteStream):
    """The async response body: finishes the call when it is closed or read to its end."""

    def __init__(self, stream: httpx.AsyncByteStream, call: Call) -> None:
        self._stream = stream
        self._call = call

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except GeneratorExit:
            raise
        except BaseException as exc:
            self._call.fail(exc)
            raise
        self._call.finish()

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._call.finish()


class ObservekitTransport(httpx.BaseTransport):
    """Wraps a sync transport (default ``httpx.HTTPTransport()``); see the module docstring.

    ``config`` defaults to ``Config.from_env()`` (read once per process);
    ``tracer_provider`` to the global one; ``metrics`` to the Config's backend.
    """

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        *,
        config: Config | None = None,
        tracer_provider: Any = None,
        metrics: Any = _FROM_CONFIG,
    ) -> None:
        if transport is not None and not isinstance(transport, httpx.BaseTransport):
            raise TypeError(f"transport must be an httpx.BaseTransport, got {transport!r}")
        self.transport = transport if transport is not None else httpx.HTTPTransport()
        self.outgoing = outgoing_for(config, tracer_provider=tracer_provider, metrics=metrics)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        outgoing = self.outgoing
        try:
            call = _begin(outgoing, request)
        except Exception:
            outgoing.internal_error("preparing the outgoing request failed")
            return self.transport.handle_request(request)
        try:
            if outgoing.resilience is None:
                response = self.transport.handle_request(request)
            else:  # breakers, client-side faults: observekit.resilience.outgoing
                response = outgoing.resilience.httpx_send(
                    self.transport.handle_request, request, call
                )
        except BaseException as exc:
            call.fail(exc)
            raise
        try:
            call.status = response.status_code
            if isinstance(response.stream, httpx.ByteStream):
                call.finish()  # the body is already in memory (an in-process transport)
            else:
                response.stream = _SyncStream(response.stream, call)  # type: ignore[arg-type]
        except Exception:
            outgoing.internal_error("watching the response failed")
            call.finish()
        return response

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> ObservekitTransport:
        self.transport.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        self.transport.__exit__(exc_type, exc_value, traceback)


class AsyncObservekitTransport(httpx.AsyncBaseTransport):
    """Wraps an async transport (default ``httpx.AsyncHTTPTransport()``); as
    :class:`ObservekitTransport`."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        config: Config | None = None,
        tracer_provider: Any = None,
        metrics: Any = _FROM_CONFIG,
    ) -> None:
        if transport is not None and not isinstance(transport, httpx.AsyncBaseTransport):
            raise TypeError(f"transport must be an httpx.AsyncBaseTransport, got {transport!r}")
        self.transport = transport if transport is not None else httpx.AsyncHTTPTransport()
        self.outgoing = outgoing_for(config, tracer_provider=tracer_provider, metrics=metrics)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        outgoing = self.outgoing
        try:
            call = _begin(outgoing, request)
        except Exception:
            outgoing.internal_error("preparing the outgoing request failed")
            return await self.transport.handle_async_request(request)
        try:
            if outgoing.resilience is None:
                response = await self.transport.handle_async_request(request)
            else:  # breakers, client-side faults: observekit.resilience.outgoing
                response = await outgoing.resilience.httpx_asend(
                    self.transport.handle_async_request, request, call
                )
        except BaseException as exc:
            call.fail(exc)
            raise
        try:
            call.status = response.status_code
            if isinstance(response.stream, httpx.ByteStream):
                call.finish()  # the body is already in memory (an in-process transport)
            else:
                response.stream = _AsyncStream(response.stream, call)  # type: ignore[arg-type]
        except Exception:
            outgoing.internal_error("watching the response failed")
            call.finish()
        return response

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def __aenter__(self) -> AsyncObservekitTransport:
        await self.transport.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.transport.__aexit__(exc_type, exc_value, traceback)


def _wrap(transport: Any, outgoing: Outgoing) -> Any:
    if transport is None or isinstance(transport, ObservekitTransport | AsyncObservekitTransport):
        return transport
    if isinstance(transport, httpx.AsyncBaseTransport):
        wrapped: Any = AsyncObservekitTransport.__new__(AsyncObservekitTransport)
    elif isinstance(transport, httpx.BaseTransport):
        wrapped = ObservekitTransport.__new__(ObservekitTransport)
    else:
        return transport
    wrapped.transport = transport
    wrapped.outgoing = outgoing
    return wrapped


def _instrument(client: httpx.Client | httpx.AsyncClient, outgoing: Outgoing) -> None:
    # httpx has no public way to replace a built client's transports: these two
    # attributes are where Client.__init__ puts them (as OpenTelemetry's
    # instrument_client also relies on).
    client._transport = _wrap(client._transport, outgoing)
    client._mounts = {
        pattern: _wrap(transport, outgoing) for pattern, transport in client._mounts.items()
    }


def instrument_client(
    client: httpx.Client | httpx.AsyncClient,
    *,
    config: Config | None = None,
    tracer_provider: Any = None,
    metrics: Any = _FROM_CONFIG,
) -> Any:
    """Wrap ``client``'s transport and mounted transports; returns ``client``.

    Idempotent. ``config`` defaults to ``Config.from_env()`` (read once per process).
    """
    if not isinstance(client, httpx.Client | httpx.AsyncClient):
        raise TypeError(f"client must be an httpx.Client or httpx.AsyncClient, got {client!r}")
    _instrument(client, outgoing_for(config, tracer_provider=tracer_provider, metrics=metrics))
    return client


_originals: dict[type, Any] = {}


def instrument(
    *, config: Config | None = None, tracer_provider: Any = None, metrics: Any = _FROM_CONFIG
) -> None:
    """Opt in globally: every ``httpx.Client``/``AsyncClient`` built from now on is hooked,
    so module-level calls (``httpx.get``, which builds a Client per call) are too.

    Patches only the two classes' ``__init__``; clients built before stay as they are
    (use :func:`instrument_client`). Calling it again does nothing; :func:`uninstrument`
    undoes it.
    """
    outgoing = outgoing_for(config, tracer_provider=tracer_provider, metrics=metrics)
    for cls in (httpx.Client, httpx.AsyncClient):
        if cls in _originals:
            continue
        original = cls.__init__

        @functools.wraps(original)
        def __init__(  # noqa: N807 - it replaces __init__
            self: Any, *args: Any, __original: Any = original, **kwargs: Any
        ) -> None:
            __original(self, *args, **kwargs)
            try:
                _instrument(self, outgoing)
            except Exception:
                outgoing.internal_error("hooking a new httpx client failed")

        _originals[cls] = original
        setattr(cls, "__init__", __init__)  # noqa: B010 - mypy forbids assigning a method


def uninstrument() -> None:
    """Undo :func:`instrument` (clients built meanwhile stay hooked)."""
    while _originals:
        cls, original = _originals.popitem()
        setattr(cls, "__init__", original)  # noqa: B010
