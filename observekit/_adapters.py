"""Small pieces the framework adapters share (no framework imported here)."""

from __future__ import annotations

import functools
import logging
import re

from ._core import current_exchange

__all__ = ["SkipLoggedException", "angle_template"]

_PARAMETER = re.compile(r"<(?:[^<>:]+:)?([^<>:]+)>")


@functools.lru_cache(maxsize=1024)
def angle_template(route: str) -> str:
    """``items/<int:item_id>`` -> ``/items/{item_id}``: one template syntax for every framework.

    Django's and Flask's converters would otherwise put ``:`` into metric labels.
    Regular-expression routes (Django's ``re_path``, starting with ``^``) are kept.
    """
    if route.startswith("^"):
        return route
    return "/" + _PARAMETER.sub(r"{\1}", route.lstrip("/"))


class SkipLoggedException(logging.Filter):
    """Drops a framework's own record of the exception observekit already logged.

    Frameworks that turn an exception into a 500 log it themselves (Django's
    ``django.request``, Flask's ``app.logger``) right after the signal on which
    observekit logged it; only that exact exception of the current request is dropped.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc_info = record.exc_info
        if not exc_info:
            return True
        exchange = current_exchange()
        return exchange is None or exchange.error is None or exc_info[1] is not exchange.error


def skip_logged_exceptions(logger: logging.Logger) -> None:
    """Add one :class:`SkipLoggedException` to ``logger`` (once)."""
    if not any(isinstance(f, SkipLoggedException) for f in logger.filters):
        logger.addFilter(SkipLoggedException())
