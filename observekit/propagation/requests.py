"""requests: request ID and trace context on outgoing calls, a client span, metrics, a log line.

Needs the ``requests`` extra (``pip install 'observekit[requests]'``). Wraps a
session's adapters; nothing is patched unless :func:`instrument` is called::

    import requests
    import observekit.propagation.requests as ok_requests

    session = ok_requests.instrument_session(requests.Session())
    ok_requests.instrument()   # every adapter's send, so requests.get & co. too

The adapter sends a copy of the prepared request with the headers added, so the
caller's request is never changed: each redirect hop (which requests builds
from the caller's request) gets its own client span and fresh trace headers,
and the same request ID inside a request or task. Retries happen inside
urllib3, under the adapter, and resend exactly the headers of their hop.
``response.request`` is the copy: it shows what was sent.

The span, the duration metric and the DEBUG line end when the body has been
read to its end (``requests.get`` reads it; with ``stream=True``, iterating or
``response.close()``), when the response is closed or garbage collected, or
when the adapter raises. urllib3 returns the connection to its pool at those
same moments (``release_conn``); observekit hooks that method, and ``read``,
``stream`` and ``close``, on the one urllib3 response of the call.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from .._config import Config
from .headers import _FROM_CONFIG, Call, Outgoing, outgoing_for, split_url

try:
    import requests
    from requests.adapters import BaseAdapter, HTTPAdapter
    from requests.models import PreparedRequest
    from requests.structures import CaseInsensitiveDict
except ImportError:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "observekit.propagation.requests needs requests: pip install 'observekit[requests]'"
    ) from None

__all__ = ["ObservekitAdapter", "instrument", "instrument_session", "uninstrument"]

_new_request = PreparedRequest.__new__
_new_headers = CaseInsensitiveDict.__new__
_lower: dict[str, str] = {}
"""Header names observekit adds (a handful per config), lowercased once."""


def _with_headers(headers: Any, added: list[tuple[str, str]]) -> Any:
    """A copy of ``headers`` with ``added`` where the caller set none.

    For requests' own ``CaseInsensitiveDict`` the copy is its store's copy (one C
    call) instead of ``copy()``, which lowercases and re-inserts every header.
    """
    if type(headers) is CaseInsensitiveDict:
        store = headers._store
        if type(store) is OrderedDict:
            copy = _new_headers(CaseInsensitiveDict)
            store = copy._store = store.copy()
            for name, value in added:
                key = _lower.get(name)
                if key is None:
                    key = name.lower()
                    if len(_lower) < 64:
                        _lower[name] = key
                if key not in store:
                    store[key] = (name, value)
            return copy
    copy = headers.copy()
    for name, value in added:
        if name not in copy:
            copy[name] = value
    return copy


class _Body:
    """Hooks on the urllib3 response of one call: finish when its body is done or closed.

    A failure while reading the body is recorded before urllib3's own clean-up
    (which releases the connection, the usual finish signal) is taken as the end.
    Once the call is finished the hooks are taken off the response again: they
    make a reference cycle (response -> hook -> response) that would otherwise
    leave every response to the cyclic garbage collector.
    """

    __slots__ = ("_close", "_raw", "_read", "_release", "_stream", "call", "reading")

    def __init__(self, raw: Any, call: Call) -> None:
        self.call = call
        self.reading = 0
        self._raw = raw
        self._read = raw.read
        self._stream = raw.stream
        self._release = raw.release_conn
        self._close = raw.close
        raw.__dict__.update(
            read=self.read, stream=self.stream, release_conn=self.release_conn, close=self.close
        )

    def read(self, *args: Any, **kwargs: Any) -> Any:
        self.reading += 1
        try:
            return self._read(*args, **kwargs)
        except BaseException as exc:
            self.call.fail(exc)
            self.finish()
            raise
        finally:
            self.reading -= 1

    def stream(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        self.reading += 1
        try:
            yield from self._stream(*args, **kwargs)
        except GeneratorExit:
            raise
        except BaseException as exc:
            self.call.fail(exc)
            self.finish()
            raise
        finally:
            self.reading -= 1
        self.finish()

    def release_conn(self) -> None:
        try:
            self._release()
        finally:
            if not self.reading:
                self.finish()

    def close(self) -> None:
        try:
            self._close()
        finally:
            self.finish()

    def finish(self) -> None:
        self.call.finish()
        raw = self._raw
        if raw is not None:
            self._raw = None
            # The response's own methods again (a hook running now keeps its reference).
            attributes = raw.__dict__
            for name in ("read", "stream", "release_conn", "close"):
                attributes.pop(name, None)


def _send(
    outgoing: Outgoing,
    send: Any,
    request: PreparedRequest,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> requests.Response:
    if getattr(request, "_observekit", False):  # hooked twice (session and global): once is enough
        return send(request, *args, **kwargs)  # type: ignore[no-any-return]
    try:
        url = request.url or ""
        scheme, host, port = split_url(url)
        call = outgoing.begin(request.method or "GET", scheme, host, port, url)
        sent = _new_request(PreparedRequest)
        attributes = sent.__dict__
        attributes.update(request.__dict__)
        attributes["headers"] = _with_headers(request.headers, call.headers)
        attributes["_observekit"] = True
    except Exception:
        outgoing.internal_error("preparing the outgoing request failed")
        return send(request, *args, **kwargs)  # type: ignore[no-any-return]
    try:
        if outgoing.resilience is None:
            response = send(sent, *args, **kwargs)
        else:  # breakers, client-side faults: observekit.resilience.outgoing
            response = outgoing.resilience.requests_send(send, sent, args, kwargs, call)
    except BaseException as exc:
        call.fail(exc)
        raise
    try:
        call.status = response.status_code or 0
        raw = response.raw
        if raw is None or not hasattr(raw, "release_conn"):
            call.finish()
        else:
            body = _Body(raw, call)
            if raw.closed:  # no body (HEAD, 204, 304): nothing will be read
                body.finish()
    except Exception:
        outgoing.internal_error("watching the response failed")
        call.finish()
    return response  # type: ignore[no-any-return]


class ObservekitAdapter(BaseAdapter):
    """Wraps a transport adapter (default ``HTTPAdapter()``); see the module docstring.

    Other attributes (``max_retries``, ``poolmanager``...) are the wrapped adapter's.
    ``config`` defaults to ``Config.from_env()`` (read once per process).
    """

    def __init__(
        self,
        adapter: BaseAdapter | None = None,
        *,
        config: Config | None = None,
        tracer_provider: Any = None,
        metrics: Any = _FROM_CONFIG,
    ) -> None:
        if adapter is not None and not isinstance(adapter, BaseAdapter):
            raise TypeError(f"adapter must be a requests BaseAdapter, got {adapter!r}")
        super().__init__()
        self.adapter = adapter if adapter is not None else HTTPAdapter()
        self.outgoing = outgoing_for(config, tracer_provider=tracer_provider, metrics=metrics)

    def send(self, request: PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        return _send(self.outgoing, self.adapter.send, request, args, kwargs)

    def close(self) -> None:
        self.adapter.close()

    def __getattr__(self, name: str) -> Any:
        if name == "adapter":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.adapter, name)


def instrument_session(
    session: requests.Session,
    *,
    config: Config | None = None,
    tracer_provider: Any = None,
    metrics: Any = _FROM_CONFIG,
) -> requests.Session:
    """Wrap every adapter mounted on ``session`` (in place, same prefixes); returns it.

    Idempotent. Adapters mounted later are not wrapped: mount an
    :class:`ObservekitAdapter` for those.
    """
    if not isinstance(session, requests.Session):
        raise TypeError(f"session must be a requests.Session, got {session!r}")
    outgoing = outgoing_for(config, tracer_provider=tracer_provider, metrics=metrics)
    for prefix, adapter in list(session.adapters.items()):
        if isinstance(adapter, ObservekitAdapter):
            continue
        wrapped = ObservekitAdapter.__new__(ObservekitAdapter)
        BaseAdapter.__init__(wrapped)
        wrapped.adapter = adapter
        wrapped.outgoing = outgoing
        session.adapters[prefix] = wrapped
    return session


_original_send: list[Any] = []


def instrument(
    *, config: Config | None = None, tracer_provider: Any = None, metrics: Any = _FROM_CONFIG
) -> None:
    """Opt in globally: ``HTTPAdapter.send`` is hooked, so every session, existing or
    new, and ``requests.get`` & co. are covered. Calling it again does nothing;
    :func:`uninstrument` undoes it.
    """
    if _original_send:
        return
    outgoing = outgoing_for(config, tracer_provider=tracer_provider, metrics=metrics)
    original = HTTPAdapter.send

    def send(self: HTTPAdapter, request: PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        return _send(outgoing, original.__get__(self), request, args, kwargs)

    send.__doc__ = original.__doc__
    _original_send.append(original)
    HTTPAdapter.send = send  # type: ignore[method-assign]


def uninstrument() -> None:
    """Undo :func:`instrument`."""
    if _original_send:
        HTTPAdapter.send = _original_send.pop()  # type: ignore[method-assign]
