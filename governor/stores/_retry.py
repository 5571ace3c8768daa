"""Store writes that must happen once the store answers again.

Some writes cannot be dropped when the store is down: giving back a
concurrency slot, undoing a hold whose reserve timed out on the client. A
:class:`Retrier` keeps them, each under a key, and one daemon thread tries
them again every ``interval_s`` until each succeeds; the thread stops when
nothing is left. Every write it keeps must be idempotent.

A forked child starts with an empty retrier and starts its own thread when it
keeps a write: the writes kept at the fork are the parent's, and the parent
retries them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final

from governor._errors import StoreUnavailable
from governor._forks import start_over_in_children

__all__ = ["Retrier"]

logger = logging.getLogger(__name__)

_MIN_INTERVAL_S: Final = 0.05


class Retrier:
    """Retries idempotent store writes in a daemon thread until they succeed."""

    def __init__(self, name: str, interval_s: float = 1.0) -> None:
        """Make an empty retrier; ``name`` names its thread and its log lines."""
        self.name = name
        self.interval_s = max(interval_s, _MIN_INTERVAL_S)
        self._lock = threading.Condition()
        self._wake = threading.Event()
        self._writes: dict[str, Callable[[], object]] = {}
        self._thread: threading.Thread | None = None
        start_over_in_children(self)

    @property
    def pending(self) -> int:
        """How many writes wait for the store."""
        with self._lock:
            return len(self._writes)

    def add(self, key: str, write: Callable[[], object]) -> None:
        """Keep ``write`` (replacing one under the same key) until it succeeds."""
        with self._lock:
            self._writes[key] = write
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"governor-{self.name}", daemon=True
                )
                self._thread.start()

    def drain(self, timeout_s: float) -> int:
        """Try the kept writes now; wait up to ``timeout_s``; return those left."""
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        with self._lock:
            while self._writes:
                left = deadline - time.monotonic()
                if left <= 0 or not self._lock.wait(left):
                    break
            return len(self._writes)

    def _forget_parent(self) -> None:
        """In a forked child: drop the parent's writes, thread and locks.

        The parent's thread does not exist here, and a lock it held at the
        fork would stay held for good.
        """
        self._lock = threading.Condition()
        self._wake = threading.Event()
        self._writes = {}
        self._thread = None

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            with self._lock:
                if not self._writes:
                    self._thread = None
                    return
                batch = list(self._writes.items())
            self._try(batch)

    def _try(self, batch: list[tuple[str, Callable[[], object]]]) -> None:
        for key, write in batch:
            try:
                write()
            except StoreUnavailable:
                return  # still down: the next round tries again
            except Exception:
                logger.warning(
                    "dropped a %s write that failed with an unexpected error",
                    self.name,
                    exc_info=True,
                )
            with self._lock:
                if self._writes.get(key) is write:
                    del self._writes[key]
                self._lock.notify_all()
