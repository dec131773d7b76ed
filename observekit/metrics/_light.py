"""Recording into an SDK histogram without the SDK re-cleaning and re-hashing the attributes.

``Histogram.record(amount, attributes)`` in the OpenTelemetry SDK costs about
12 µs with 7 attributes, most of it on work that gives the same result on every
call for an attribute dict observekit built once and never changes: the
``Measurement`` cleans (copies) the dict, and every view match copies it again
and hashes it into its aggregation key. :class:`LightHistogram` keeps that key
with the dict and hands the measurement straight to the aggregations the SDK
made for it (about 3 µs); what is recorded is the same, exemplars included.

It takes this path only where it is known to be the SDK's own: an SDK
``_Histogram``, every view match of the SDK's own class with no
``attribute_keys`` filter and not reset on collection (delta temporality), an
enabled meter, a finite non-negative amount, and an aggregation the SDK has
already made for this attribute set. Anything else (the first point of a set,
a point past the cardinality limit, a reader added later until it is looked
at, an SDK whose internals differ) goes through ``Histogram.record`` as before.
Only this module and :mod:`observekit.metrics.otel` import ``opentelemetry``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

from opentelemetry import context as otel_context

_SDK: Any = None
"""The SDK's histogram class, when its internals are the ones this module knows."""
try:
    from opentelemetry.sdk.metrics._internal._view_instrument_match import (
        _hash_attributes,
        _ViewInstrumentMatch,
    )
    from opentelemetry.sdk.metrics._internal.instrument import _Histogram
    from opentelemetry.sdk.metrics._internal.measurement import Measurement

    _SDK = _Histogram
except ImportError:  # an SDK without these internals (or no SDK): the SDK's own path
    pass

__all__ = ["LightHistogram"]

_time_ns = time.time_ns
_get_current = otel_context.get_current
_INF = math.inf
_set = object.__setattr__


def _built(amount: float, now: int, histogram: Any, context: Any, attributes: Any) -> Any:
    # Built without attributes, which are set afterwards: the SDK would clean (copy)
    # them, and these are observekit's own, already clean, never changed.
    measurement = Measurement(amount, now, histogram, context, None)
    _set(measurement, "attributes", attributes)
    return measurement


def _filled(amount: float, now: int, histogram: Any, context: Any, attributes: Any) -> Any:
    # The same, its fields set at once (a frozen dataclass sets them one by one).
    measurement = _new(Measurement)
    _set(
        measurement,
        "__dict__",
        {
            "value": amount,
            "time_unix_nano": now,
            "instrument": histogram,
            "context": context,
            "attributes": attributes,
        },
    )
    return measurement


def _plain_fields() -> bool:
    """Whether ``Measurement`` is a dataclass of exactly these fields, kept in a ``__dict__``."""
    try:
        names = tuple(field.name for field in dataclasses.fields(Measurement))
    except TypeError:
        return False
    return "__slots__" not in vars(Measurement) and names == (
        "value",
        "time_unix_nano",
        "instrument",
        "context",
        "attributes",
    )


_new = object.__new__
_measurement = _filled if _SDK is not None and _plain_fields() else _built


class LightHistogram:
    """``record(amount, attributes, key)`` into ``histogram``, the SDK's way; see the module.

    ``key`` is :meth:`key` of the same ``attributes`` dict, worked out once by the
    caller and kept with it. The dict must not change afterwards.
    """

    __slots__ = ("_consumer", "_histogram", "_matches", "_on")

    def __init__(self, histogram: Any) -> None:
        self._histogram = histogram
        self._consumer: Any = None
        # (the consumer's reader-storage dict these were found for, view matches, filter)
        self._matches: tuple[Any, tuple[Any, ...], Any] | None = None
        self._on = False
        if _SDK is None or type(histogram) is not _SDK:
            return
        consumer = getattr(histogram, "_measurement_consumer", None)
        storages = getattr(consumer, "_reader_storages", None)
        config = getattr(consumer, "_sdk_config", None)
        if (
            isinstance(storages, dict)
            and getattr(config, "exemplar_filter", None) is not None
            and callable(getattr(histogram, "_is_enabled", None))
        ):
            self._consumer = consumer
            self._on = True

    @property
    def light(self) -> bool:
        """Whether points can skip ``Histogram.record`` (after the first of each attribute set)."""
        return self._on

    def key(self, attributes: dict[str, Any]) -> Any:
        """The SDK's aggregation key for ``attributes`` (``None``: always the SDK's path)."""
        if not self._on:
            return None
        try:
            return _hash_attributes(dict(attributes))
        except Exception:
            return None

    def record(self, amount: float, attributes: dict[str, Any], key: Any) -> None:
        histogram = self._histogram
        if key is None or not self._on or not 0.0 <= amount < _INF:
            histogram.record(amount, attributes)
            return
        if not histogram._is_enabled():  # the SDK's record would do nothing either
            return
        storages = self._consumer._reader_storages
        found = self._matches
        if found is None or found[0] is not storages:
            found = self._find(storages)
            if found is None:
                histogram.record(amount, attributes)
                return
        _, matches, should_sample = found
        aggregations = []
        for match in matches:
            aggregation = match._attributes_aggregation.get(key)
            if aggregation is None:  # the set's first point (or past the cardinality limit)
                histogram.record(amount, attributes)
                self._check(matches, key)
                return
            aggregations.append(aggregation)
        context = _get_current()
        now = _time_ns()
        measurement = _measurement(amount, now, histogram, context, attributes)
        sample = should_sample(amount, now, attributes, context)
        for aggregation in aggregations:
            aggregation.aggregate(measurement, sample)

    def _find(self, storages: dict[Any, Any]) -> tuple[Any, tuple[Any, ...], Any] | None:
        """The view matches of every reader (made now if the SDK has not yet), or None."""
        histogram = self._histogram
        try:
            matches: list[Any] = []
            for storage in list(storages.values()):
                for match in storage._get_or_init_view_instrument_match(histogram):
                    if (
                        type(match) is not _ViewInstrumentMatch
                        or match._view._attribute_keys is not None
                        or match._reset_on_collect is not False
                        or type(match._attributes_aggregation) is not dict
                    ):
                        return None
                    matches.append(match)
            should_sample = self._consumer._sdk_config.exemplar_filter.should_sample
        except Exception:
            self._on = False
            return None
        found = (storages, tuple(matches), should_sample)
        self._matches = found
        return found

    def _check(self, matches: tuple[Any, ...], key: Any) -> None:
        """After the SDK recorded a point: if it filed it under another key than ours, the
        SDK hashes differently from what this module knows, so stop trying."""
        try:
            for match in matches:
                aggregations = match._attributes_aggregation
                if key not in aggregations and len(aggregations) < match._cardinality_limit:
                    self._on = False
        except Exception:
            self._on = False
