"""Keep the leases of long calls alive while they run.

A call's budget hold and its fan-out slots are leases of ``hold_ttl_s``, so
that a dead worker's reservation comes back on its own. A live call that
runs longer than that (a long stream, a slow reasoning model) would lose its
hold mid-call and let other calls spend the same room. One daemon thread per
governor renews, every third of a lease, the holds and slots of the calls
still open. It holds the calls weakly: a call nobody references any more is
not kept alive by renewing it.

A forked child starts with no calls to renew and starts its own thread at its
first call: the calls open at the fork are the parent's, and the parent keeps
renewing them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, TypeAlias

from governor._forks import start_over_in_children

if TYPE_CHECKING:
    from governor._calls import Admission

__all__ = ["LeaseKeeper", "note_reader"]

# The asyncio task that made a call, held weakly; None outside one.
_TaskRef: TypeAlias = "weakref.ref[asyncio.Task[Any]] | None"

logger = logging.getLogger(__name__)

# Renew once a third of the lease has passed: two renewals can fail (a Redis
# blip) before the lease runs out.
_RENEW_FRACTION = 1 / 3
_MIN_WAKE_S = 0.05


class LeaseKeeper:
    """Renews the holds and slot leases of one governor's open calls."""

    def __init__(self, ledger: Any) -> None:
        self._ledger = ledger
        # Each open call, with the thread it was admitted on and the asyncio
        # task that made it (held weakly; None outside one).
        self._open: weakref.WeakKeyDictionary[Admission, tuple[int, _TaskRef]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_at = float("inf")
        self._warned = False
        start_over_in_children(self)

    def add(self, admission: Admission) -> None:
        """Watch an admitted call until :meth:`discard`."""
        every_s = admission.task.policy.hold_ttl_s * _RENEW_FRACTION
        with self._lock:
            self._open[admission] = (threading.get_ident(), _asyncio_task())
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="governor-leases", daemon=True
                )
                self._thread.start()
            elif admission.started_at + every_s < self._next_at:
                self._wake.set()  # a shorter lease than the thread waits for

    def discard(self, admission: Admission) -> None:
        """Stop watching a settled call; the thread ends once none is open."""
        with self._lock:
            self._open.pop(admission, None)
            if not self._open and self._thread is not None:
                # Woken now, not a third of a lease later: an idle thread
                # would hold the ledger (and its connections) that long.
                self._wake.set()

    def open_calls(
        self, *, other_than: int | None = None, but_task: object = None
    ) -> int:
        """How many admitted calls are not settled yet.

        With ``other_than``, only those admitted on other threads than that
        one, and, given ``but_task`` (an asyncio task), also that thread's
        calls whose own asyncio task is still running and is not that one:
        they go on while it waits. A stream counts by the task that read it
        last (see :func:`note_reader`); one its task returned and nobody has
        read yet may be held by the waiting task itself, so it is not
        counted.
        """
        with self._lock:
            if other_than is None:
                return len(self._open)
            return sum(
                1
                for admission, (thread, ref) in self._open.items()
                if thread != other_than
                or _runs_besides(admission.extras.get("reader", ref), but_task)
            )

    def _forget_parent(self) -> None:
        """In a forked child: drop the parent's calls, thread and locks.

        The parent's thread does not exist here, and a lock it held at the
        fork would stay held for good.
        """
        self._open = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = None
        self._next_at = float("inf")
        self._warned = False

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._open:
                    self._thread = None
                    return
                calls = list(self._open)
            now = time.monotonic()
            wake_s = self._renew_due(calls, now)
            del calls
            self._next_at = now + wake_s
            self._wake.wait(wake_s)
            self._wake.clear()

    def _renew_due(self, calls: list[Admission], now: float) -> float:
        """Renew what is due; return seconds until the next one is."""
        next_s = float("inf")
        for admission in calls:
            ttl_s = admission.task.policy.hold_ttl_s
            every_s = ttl_s * _RENEW_FRACTION
            last = admission.extras.get("renewed_at", admission.started_at)
            if now - last >= every_s and not admission.settled:
                self._renew(admission, ttl_s)
                admission.extras["renewed_at"] = last = now
            next_s = min(next_s, last + every_s - now)
        return max(next_s, _MIN_WAKE_S)

    def _renew(self, admission: Admission, ttl_s: float) -> None:
        try:
            renew = getattr(self._ledger, "renew", None)
            if renew is not None:
                renew(admission.call_id, ttl_s)
            for semaphore, token in admission.held.slots:
                renew_slot = getattr(semaphore, "renew", None)
                if renew_slot is not None:
                    renew_slot(token)
        except Exception:  # a store blip: the next round tries again
            if not self._warned:
                self._warned = True
                logger.warning(
                    "could not renew the lease of a long call; its hold "
                    "expires after hold_ttl_s unless a later renewal works",
                    exc_info=True,
                )


def _asyncio_task() -> weakref.ref[asyncio.Task[Any]] | None:
    """The asyncio task running here, held weakly, or None outside one."""
    if asyncio._get_running_loop() is None:  # a sync call: no exception cost
        return None
    task = asyncio.current_task()
    return None if task is None else weakref.ref(task)


def note_reader(admission: Admission) -> None:
    """Remember the asyncio task reading a call's stream now, which may not
    be the one that made the call."""
    task = asyncio.current_task()
    seen = admission.extras.get("reader")
    if task is not None and (seen is None or seen() is not task):
        admission.extras["reader"] = weakref.ref(task)


def _runs_besides(ref: weakref.ref[asyncio.Task[Any]] | None, other: object) -> bool:
    """Whether ``ref``'s task is still running and is not ``other``."""
    task = None if ref is None else ref()
    return task is not None and task is not other and not task.done()
