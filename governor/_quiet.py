"""At most one warning a while for each kind of recurring failure.

A store that is down fails every call that touches it; a WARNING for each
would bury the logs (and the one line that matters) under thousands. The
first failure of a kind is worth a warning, the next ones only a count,
given with the next warning once the quiet time has passed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["Quiet"]


class Quiet:
    """Say when a warning of each kind is due: at most once per ``every_s``."""

    def __init__(
        self, every_s: float = 60.0, clock: Callable[[], float] | None = None
    ) -> None:
        self.every_s = every_s
        self._clock = clock  # None: time.monotonic, looked up at each use
        self._next: dict[str, float] = {}
        self._skipped: dict[str, int] = {}
        self._lock = threading.Lock()

    def due(self, kind: str) -> int | None:
        """None while ``kind`` is quiet (this one is counted); else how many
        were counted since its last warning, and the quiet time starts again.
        """
        now = self._clock() if self._clock is not None else time.monotonic()
        with self._lock:
            if now < self._next.get(kind, -float("inf")):
                self._skipped[kind] = self._skipped.get(kind, 0) + 1
                return None
            self._next[kind] = now + self.every_s
            return self._skipped.pop(kind, 0)
