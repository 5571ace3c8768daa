"""Concurrency slots a model call holds while in flight (Fanout caps).

A call takes, in a fixed order, its task's slot (``max_inflight_calls``) and
one slot per capped scope (``scope_caps``), and gives all of them back when it
is settled. Scope slots live in Redis when the ledger does, so the cap holds
across processes; otherwise they are per process. The semaphore module loads
redis-py, so it is imported only when a cap is set.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from governor._task import Task
    from governor.stores import Ledger, Semaphore

__all__ = ["Held", "SlotKeeper"]


@dataclass(slots=True)
class Held:
    """Slots one call holds, and how long it waited for them."""

    slots: list[tuple[Semaphore, str]]
    wait_s: float


_NONE = Held([], 0.0)


class SlotKeeper:
    """Hands out task and scope slots for one governor."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._lock = threading.Lock()
        self._scopes: dict[str, Semaphore] = {}

    def acquire(self, task: Task) -> Held:
        """Take every slot the call needs, or raise SlotUnavailable."""
        semaphores = self._semaphores(task)
        if not semaphores:
            return _NONE
        timeout = _timeout(task)
        start = time.monotonic()
        held: list[tuple[Semaphore, str]] = []
        try:
            for semaphore in semaphores:
                held.append((semaphore, semaphore.acquire(timeout)))
        except BaseException:
            release(Held(held, 0.0))
            raise
        return Held(held, time.monotonic() - start)

    async def aacquire(self, task: Task) -> Held:
        """Async form of :meth:`acquire`; waits without blocking the loop."""
        semaphores = self._semaphores(task)
        if not semaphores:
            return _NONE
        timeout = _timeout(task)
        start = time.monotonic()
        held: list[tuple[Semaphore, str]] = []
        try:
            for semaphore in semaphores:
                held.append((semaphore, await semaphore.aacquire(timeout)))
        except BaseException:
            await arelease(Held(held, 0.0))
            raise
        return Held(held, time.monotonic() - start)

    def _semaphores(self, task: Task) -> list[Semaphore]:
        fanout = task.policy.fanout
        if fanout.max_inflight_calls is None and not fanout.scope_caps:
            return []
        from governor.stores._semaphore import LocalSemaphore

        chosen: list[Semaphore] = []
        if fanout.max_inflight_calls is not None:
            slots = task.extras.get("slots")
            if slots is None:
                slots = task.extras.setdefault(
                    "slots",
                    LocalSemaphore(fanout.max_inflight_calls, key=f"task:{task.id}"),
                )
            chosen.append(slots)
        for scope, limit in sorted(fanout.scope_caps.items()):
            value = task.scope_values.get(scope)
            if value is not None:
                chosen.append(self._scope(f"{scope}:{value}", limit, task))
        return chosen

    def _scope(self, key: str, limit: int, task: Task) -> Semaphore:
        with self._lock:
            semaphore = self._scopes.get(key)
            if semaphore is None:
                semaphore = self._scopes[key] = self._make(key, limit, task)
            return semaphore

    def _make(self, key: str, limit: int, task: Task) -> Semaphore:
        from governor.stores._semaphore import LocalSemaphore

        redis_ledger: Any = getattr(self._ledger, "primary", self._ledger)
        if hasattr(redis_ledger, "semaphore"):
            lease = task.policy.hold_ttl_s
            made: Semaphore = redis_ledger.semaphore(f"slots:{key}", limit, lease)
            return made
        return LocalSemaphore(limit, key=key)


def release(held: Held) -> None:
    """Give back every slot, last taken first."""
    for semaphore, token in reversed(held.slots):
        semaphore.release(token)


async def arelease(held: Held) -> None:
    """Async form of :func:`release`."""
    for semaphore, token in reversed(held.slots):
        await semaphore.arelease(token)


def _timeout(task: Task) -> float:
    fanout = task.policy.fanout
    return 0.0 if fanout.on_cap == "refuse" else fanout.wait_timeout_s
