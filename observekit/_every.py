"""A rate limit for log lines that could otherwise flood: one per interval, the rest counted."""

from __future__ import annotations

import threading
import time

__all__ = ["Every"]


class Every:
    """Lets one event through per ``seconds``, counting the ones it held back."""

    __slots__ = ("_lock", "_next", "seconds", "suppressed")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._next = 0.0
        self.suppressed = 0
        self._lock = threading.Lock()

    def ready(self) -> int | None:
        """``None`` when held back, else how many were held back since the last one."""
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                self.suppressed += 1
                return None
            self._next = now + self.seconds
            held, self.suppressed = self.suppressed, 0
            return held
