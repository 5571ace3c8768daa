"""Spend records written off the call path, in batches, by one worker thread.

A SQLite insert costs more than the governor's whole per-call budget, so the
engine only enqueues each record; a daemon thread drains the queue into the
store. A store failure never reaches a model call: while the store fails,
records wait in a bounded buffer in memory and the writer retries with
backoff, logging one warning when the outage starts and one line when it ends.

Retrying relies on the store writing a batch idempotently by ``call_id``: the
SQLite and Redis stores keep the first record of a call id, and the JSONL store
appends a batch whole or not at all. A batch whose write failed part way, or
whose reply was lost, is therefore sent again without doubling any record.

A recorder made before ``os.fork()`` (a preloaded web server, a prefork task
queue, ``multiprocessing`` with ``fork``) starts a writer of its own in the
child, with an empty queue: the records queued at the fork are the parent's,
and the parent writes them. The child opens its own handle on a SQLite or
JSONL store on its first write, since a SQLite connection must not be used
across a fork; a Redis store's client makes new connections by itself.
"""

from __future__ import annotations

import itertools
import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from governor._forks import finish_before_forks, start_over_in_children

if TYPE_CHECKING:
    from governor.spend import SpendRecord, SpendStore
    from governor.spend._redis import WriteFailure

__all__ = ["SpendRecorder"]

logger = logging.getLogger(__name__)

_BATCH = 256
# How long close(timeout) still waits for the writer to stop once the
# timeout has passed; the writer only needs it to finish a write in flight.
_STOP_GRACE_S = 1.0
_REASON_CHARS = 300


class _Marker:
    """Queued by flush and close; answered once every record queued before
    it has had a write attempt (or, with ``attempt`` off, has been buffered)."""

    __slots__ = ("attempt", "done", "stop", "unwritten")

    def __init__(self, *, stop: bool, attempt: bool) -> None:
        self.stop = stop
        self.attempt = attempt
        self.done = threading.Event()
        self.unwritten = 0


class SpendRecorder:
    """Queues spend records; a background thread writes them to a store and
    feeds them to observers (the anomaly monitor), off the call path.

    Observers see each record once, when the writer takes it from the queue,
    whether or not the store is up. When a write fails, the records wait in
    memory and are retried after ``retry_initial_s``, the wait doubling (with
    jitter) up to ``retry_max_s``. At most ``max_buffered`` records wait; beyond
    that the oldest are dropped and counted in :attr:`dropped`. The outage is
    logged once as a warning (the store, the error, how many records wait),
    its end once as info, and the number of records dropped once per outage.

    Args:
        store: where records go; None feeds the observers only.
        observers: called with each record; their errors are logged.
        max_queue: records waiting for the writer thread; a record submitted
            beyond it is dropped and counted.
        max_buffered: records kept for retrying while the store fails (a
            record takes about 0.7 KB of memory).
        retry_initial_s: wait before the first retry.
        retry_max_s: the longest wait between retries.
    """

    def __init__(
        self,
        store: SpendStore | None,
        *,
        observers: Sequence[Callable[[SpendRecord], object]] = (),
        max_queue: int = 100_000,
        max_buffered: int = 100_000,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
    ) -> None:
        if max_queue < 1 or max_buffered < 1:
            raise ValueError(
                "max_queue and max_buffered must be at least 1, got "
                f"{max_queue} and {max_buffered}"
            )
        if not 0 < retry_initial_s <= retry_max_s:
            raise ValueError(
                "retry waits must satisfy 0 < retry_initial_s <= retry_max_s, got "
                f"{retry_initial_s} and {retry_max_s}"
            )
        self.store = store
        self.observers = list(observers)
        self.max_buffered = max_buffered
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._where = _describe(store)
        self._half_queue = max_queue // 2
        self._closed = False
        # The stores as the parent processes opened them, kept after a fork
        # so that their connections are never closed (nor used) in the child.
        self._parent_stores: list[SpendStore] = []
        self._reopen = False
        # Held around each write: a fork waits for it (finish_before_forks).
        self._fork_lock = threading.Lock()
        self._start(max_queue)
        start_over_in_children(self)
        finish_before_forks(self)

    def _start(self, max_queue: int) -> None:
        """Start from an empty queue and buffer, with a new writer thread."""
        self.written = 0
        self._queue: queue.Queue[SpendRecord | _Marker] = queue.Queue(max_queue)
        self._pending: deque[SpendRecord] = deque()
        self._lock = threading.Lock()
        self._queue_dropped = 0
        self._queue_full_warned = False
        self._buffer_dropped = 0
        # The outage, kept by the writer thread alone.
        self._down_since: float | None = None
        self._backoff_s = self._retry_initial_s
        self._retry_at = 0.0
        self._outage_written = 0
        self._outage_dropped = 0
        # The last failed write's cause and advice, until a write succeeds.
        self._failure: WriteFailure | None = None
        self._thread = threading.Thread(
            target=self._run, name="governor-spend-writer", daemon=True
        )
        self._thread.start()

    def _forget_parent(self) -> None:
        """In a forked child: a writer of its own, with nothing of the parent's.

        The parent's writer does not exist here and a lock it held at the
        fork would stay held for good; the records queued at the fork are the
        parent's to write. A closed recorder stays closed.
        """
        if self._closed:
            return
        if self.store is not None:
            self._parent_stores.append(self.store)
            self._reopen = True
        self._start(self._queue.maxsize)

    @property
    def where(self) -> str:
        """The store as logs name it: its URL (password hidden) or its path."""
        return self._where

    @property
    def dropped(self) -> int:
        """Records lost: submitted to a full queue, or pushed out of the buffer."""
        return self._queue_dropped + self._buffer_dropped

    @property
    def unwritten(self) -> int:
        """Records submitted and not yet written: queued, or waiting for the store."""
        with self._queue.mutex:
            queued = sum(not isinstance(item, _Marker) for item in self._queue.queue)
        with self._lock:
            return queued + len(self._pending)

    def submit(self, record: SpendRecord) -> None:
        """Enqueue a record; when the queue is full it is counted and dropped."""
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._queue_dropped += 1
            if not self._queue_full_warned:
                self._queue_full_warned = True
                logger.warning(
                    "spend queue full (%d records wait for the writer); new spend "
                    "records are dropped until it catches up (%d dropped so far)",
                    self._queue.maxsize,
                    self._queue_dropped,
                )

    def flush(self, timeout: float | None = None) -> int:
        """Write what is queued; return how many records are still unwritten.

        Blocks until every record submitted so far has had a write attempt,
        made at once even while the writer waits to retry. With ``timeout``,
        keeps retrying until every record is written or ``timeout`` seconds
        have passed. Records left unwritten stay in memory and are retried;
        a warning says how many.
        """
        if self._closed:
            return self.unwritten
        unwritten = self._flush(timeout)
        if unwritten:
            logger.warning(
                "spend flush: %d spend records are not written to %s yet; they "
                "stay in memory and are retried",
                unwritten,
                self._where,
            )
        return unwritten

    def close(self, timeout: float | None = None) -> int:
        """Write what is queued and stop the writer; return how many records are lost.

        Without ``timeout``, makes one last write attempt and waits for it.
        With ``timeout``, retries as :meth:`flush` does for up to ``timeout``
        seconds. Records still unwritten are lost, with a warning saying how
        many. A second close returns 0.
        """
        if self._closed:
            return 0
        self._closed = True
        attempt = True
        if timeout is not None:
            # Once the time is up, stop without one more attempt.
            attempt = self._flush(timeout) == 0
        marker = _Marker(stop=True, attempt=attempt)
        deadline = None if timeout is None else time.monotonic() + _STOP_GRACE_S
        if (
            self._thread.is_alive()
            and self._send(marker, deadline)
            and marker.done.wait(_left(deadline))
        ):
            self._thread.join(_left(deadline))
            return marker.unwritten
        unwritten = self.unwritten
        if unwritten:
            logger.warning(
                "spend writer did not stop in time; %d spend records not written "
                "to %s are lost",
                unwritten,
                self._where,
            )
        return unwritten

    def _flush(self, timeout: float | None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            marker = _Marker(stop=False, attempt=True)
            if not (
                self._thread.is_alive()
                and self._send(marker, deadline)
                and marker.done.wait(_left(deadline))
            ):
                return self.unwritten
            if marker.unwritten == 0 or deadline is None:
                return marker.unwritten
            pause = min(self._retry_initial_s, deadline - time.monotonic())
            if pause <= 0:
                return marker.unwritten
            time.sleep(pause)

    def _send(self, marker: _Marker, deadline: float | None) -> bool:
        try:
            self._queue.put(marker, timeout=_left(deadline))
        except queue.Full:
            return False
        return True

    # -- the writer thread -----------------------------------------------

    def _run(self) -> None:
        while True:
            items = self._take()
            records = [item for item in items if not isinstance(item, _Marker)]
            markers = [item for item in items if isinstance(item, _Marker)]
            self._observe(records)
            self._buffer(records)
            stop = next((marker for marker in markers if marker.stop), None)
            if stop is not None:
                attempt = stop.attempt
            else:
                attempt = any(m.attempt for m in markers) or self._retry_due()
            if self._pending and attempt:
                self._write_pending()
            if self._queue_full_warned and self._queue.qsize() <= self._half_queue:
                self._queue_full_warned = False  # warn again if it fills again
            if stop is not None:
                self._stop(stop, markers)
                return
            for marker in markers:
                marker.unwritten = len(self._pending)
                marker.done.set()

    def _take(self) -> list[SpendRecord | _Marker]:
        """Wait for queued items, or until the next retry is due (then [])."""
        timeout = None
        if self._pending and self._down_since is not None:
            timeout = max(0.0, self._retry_at - time.monotonic())
        try:
            items = [self._queue.get(timeout=timeout)]
        except queue.Empty:
            return []
        while len(items) < _BATCH:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return items

    def _observe(self, records: list[SpendRecord]) -> None:
        for observer in self.observers:
            for record in records:
                try:
                    observer(record)
                except Exception:
                    logger.warning("a spend observer failed", exc_info=True)

    def _buffer(self, records: list[SpendRecord]) -> None:
        if self.store is None or not records:
            return
        with self._lock:
            self._pending.extend(records)
        if self._down_since is not None:
            self._trim()

    def _trim(self) -> None:
        """Drop the oldest waiting records beyond ``max_buffered``."""
        with self._lock:
            excess = len(self._pending) - self.max_buffered
            for _ in range(excess):
                self._pending.popleft()
        if excess > 0:
            self._buffer_dropped += excess
            self._outage_dropped += excess

    def _retry_due(self) -> bool:
        return self._down_since is None or time.monotonic() >= self._retry_at

    def _write_pending(self) -> None:
        store = self.store
        if store is None:
            return
        while self._pending:
            with self._lock:
                batch = list(itertools.islice(self._pending, _BATCH))
            try:
                with self._fork_lock:
                    if self._reopen:
                        store = self.store = _reopened(store)
                        self._reopen = False
                    store.record_many(batch)
            except Exception as exc:
                self._failed(exc)
                return
            with self._lock:
                for _ in batch:
                    self._pending.popleft()
            self.written += len(batch)
            self._outage_written += len(batch)
        if self._down_since is not None:
            self._recovered()
        self._outage_written = 0

    def _failed(self, exc: Exception) -> None:
        now = time.monotonic()
        failure = _failure(self.store, exc)
        first = self._down_since is None
        if first:
            self._down_since = now
            self._backoff_s = self._retry_initial_s
            self._outage_written = 0
            self._trim()
        else:
            self._backoff_s = min(self._backoff_s * 2, self._retry_max_s)
        if failure is not None and failure.refused and failure != self._failure:
            self._warn_refused(exc, failure)
        elif first:
            logger.warning(
                "spend store %s is unreachable (%s); %d spend records wait in "
                "memory (at most %d are kept, the oldest dropped beyond that) and "
                "are retried with backoff%s",
                self._where,
                _reason(exc),
                len(self._pending),
                self.max_buffered,
                f". {failure.advice}" if failure and failure.advice else "",
            )
        self._failure = failure
        logger.debug("spend store %s: write failed", self._where, exc_info=exc)
        self._retry_at = now + self._backoff_s * random.uniform(0.5, 1.0)

    def _warn_refused(self, exc: Exception, failure: WriteFailure) -> None:
        """Say once that the store refuses the writes, why, and what to fix."""
        logger.warning(
            "spend store %s %s (%s). %s. Retrying cannot help until that is "
            "fixed: %d spend records wait in memory (at most %d are kept) and "
            "are retried with backoff, and are lost at close if the store still "
            "refuses them",
            self._where,
            failure.refused,
            _reason(exc),
            failure.advice,
            len(self._pending),
            self.max_buffered,
        )

    def _recovered(self) -> None:
        assert self._down_since is not None
        logger.info(
            "spend store %s is reachable again after %.1f s; wrote the %d spend "
            "records that waited",
            self._where,
            time.monotonic() - self._down_since,
            self._outage_written,
        )
        self._report_dropped()
        self._down_since = None
        self._failure = None

    def _report_dropped(self) -> None:
        if self._outage_dropped:
            logger.warning(
                "%d spend records were dropped, the oldest first, while spend "
                "store %s was unreachable (more than %d waited)",
                self._outage_dropped,
                self._where,
                self.max_buffered,
            )
            self._outage_dropped = 0

    def _stop(self, marker: _Marker, markers: list[_Marker]) -> None:
        # Records submitted while closing are lost too; flushes still waiting
        # are answered, so that none blocks for good.
        late = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Marker):
                markers.append(item)
            else:
                late += 1
        unwritten = len(self._pending) + late
        if unwritten:
            logger.warning(
                "spend recorder closed: %d spend records could not be written to "
                "%s and are lost%s",
                unwritten,
                self._where,
                _lost_because(self._failure),
            )
        self._report_dropped()
        for waiting in (*markers, marker):
            waiting.unwritten = unwritten
            waiting.done.set()


def _reopened(store: SpendStore) -> SpendStore:
    """A forked child's own handle on a file store; other stores as they are.

    SQLite forbids using a connection across a fork, and a lock the parent's
    writer held at the fork would stay held; a Redis client resets its pool
    when it sees a new process id. A store of another kind is used as given.
    """
    from governor.spend._jsonl import JsonlSpendStore
    from governor.spend._sqlite import SQLiteSpendStore

    if type(store) is SQLiteSpendStore:
        return SQLiteSpendStore(store.path, busy_timeout_s=store._timeout_s)
    if type(store) is JsonlSpendStore:
        return JsonlSpendStore(store.path)
    return store


def _failure(store: SpendStore | None, exc: Exception) -> WriteFailure | None:
    """Why a write failed: a refusal (credentials, ACL rules) or an outage.

    Only a Redis store tells the two apart; a failure of any other store
    counts as an outage, with no advice (None).
    """
    from governor.spend._redis import RedisSpendStore, write_failure

    if isinstance(store, RedisSpendStore):
        return write_failure(exc, store.url)
    return None


def _lost_because(failure: WriteFailure | None) -> str:
    """The cause and fix of the last failed write, for the records-lost line."""
    if failure is None or failure.advice is None:
        return ""
    if failure.refused is None:
        return f". {failure.advice}"
    return f": the store {failure.refused}. {failure.advice}"


def _left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (never negative), or None for no deadline."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _reason(exc: Exception) -> str:
    """The error on one line, shortened: logs get no traceback per failure."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    if len(text) > _REASON_CHARS:
        return text[: _REASON_CHARS - 3] + "..."
    return text


def _describe(store: object) -> str:
    """Name the store for logs: its URL (password hidden), else its path."""
    if store is None:  # records only observed (the anomaly monitor's)
        return "the anomaly monitor (no spend store)"
    url = getattr(store, "url", None)
    if isinstance(url, str):
        from governor.stores._redis import redact_url

        return redact_url(url)
    path = getattr(store, "path", None)
    if path is not None:
        return str(path)
    return type(store).__name__
