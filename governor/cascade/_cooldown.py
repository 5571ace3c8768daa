"""An in-process register of models that failed recently and rest a while."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["CooldownRegistry"]


class CooldownRegistry:
    """Which models are cooling down, and until when.

    One registry is meant to be shared by every cascade run of a process, so
    a model that keeps failing is skipped by the next runs too. It is
    thread-safe; the clock is injectable so tests never wait.

    Args:
        clock: a monotonic clock in seconds.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def cool(self, model: str, seconds: float) -> None:
        """Rest ``model`` for ``seconds``; a longer rest already set is kept."""
        if seconds <= 0:
            return
        until = self._clock() + seconds
        with self._lock:
            self._until[model] = max(until, self._until.get(model, until))

    def remaining_s(self, model: str) -> float:
        """Return the seconds ``model`` still rests; 0.0 when it is available."""
        with self._lock:
            until = self._until.get(model)
            if until is None:
                return 0.0
            left = until - self._clock()
            if left <= 0:
                del self._until[model]
                return 0.0
            return left

    def clear(self, model: str | None = None) -> None:
        """End the rest of ``model``, or of every model when None."""
        with self._lock:
            if model is None:
                self._until.clear()
            else:
                self._until.pop(model, None)
