"""Spend records written off the call path, in batches, by one worker thread.

A SQLite insert costs more than the governor's whole per-call budget, so the
engine only enqueues each record; a daemon thread drains the queue into the
store. A store failure is logged and never reaches a model call.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from governor.spend import SpendRecord, SpendStore

__all__ = ["SpendRecorder"]

logger = logging.getLogger(__name__)

_BATCH = 256
_STOP = None


class SpendRecorder:
    """Queues spend records; a background thread writes them to a store and
    feeds them to observers (the anomaly monitor), off the call path."""

    def __init__(
        self,
        store: SpendStore | None,
        *,
        observers: Sequence[Callable[[SpendRecord], object]] = (),
        max_queue: int = 100_000,
    ) -> None:
        self.store = store
        self.observers = list(observers)
        self._queue: queue.Queue[SpendRecord | None] = queue.Queue(max_queue)
        self._thread = threading.Thread(
            target=self._drain, name="governor-spend-writer", daemon=True
        )
        self._thread.start()
        self.dropped = 0

    def submit(self, record: SpendRecord) -> None:
        """Enqueue a record; when the queue is full it is counted and dropped."""
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            logger.warning("spend queue full; dropped a record of %s", record.task_id)

    def flush(self) -> None:
        """Block until every record submitted so far is written."""
        self._queue.join()

    def close(self) -> None:
        """Write what is queued and stop the worker."""
        self._queue.put(_STOP)
        self._thread.join()

    def _drain(self) -> None:
        while True:
            first = self._queue.get()
            batch = [first]
            while len(batch) < _BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            records = [r for r in batch if r is not None]
            self._write(records)
            for _ in batch:
                self._queue.task_done()
            if len(records) != len(batch):
                return

    def _write(self, records: list[SpendRecord]) -> None:
        if not records:
            return
        if self.store is not None:
            try:
                self.store.record_many(records)
            except Exception:
                logger.warning(
                    "could not write %d spend records", len(records), exc_info=True
                )
        for observer in self.observers:
            for record in records:
                try:
                    observer(record)
                except Exception:
                    logger.warning("a spend observer failed", exc_info=True)
