"""Concurrency slots a model call holds while in flight (Fanout caps).

A call takes, in a fixed order, its task's slot (``max_inflight_calls``) and
one slot per capped scope (``scope_caps``), and gives all of them back when it
is settled. Scope slots live in Redis when the ledger does, so the cap holds
across processes; otherwise they are per process. The semaphore module loads
redis-py, so it is imported only when a cap is set.

A Redis slot follows the ledger's failure mode: when Redis cannot be reached
(or refuses), ``"closed"`` refuses the call with StoreUnavailable and
``"open"`` admits it without that cap. Giving slots back never raises: a
release that cannot reach Redis is retried in the background and the slot's
lease ends in any case.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from governor._errors import StoreUnavailable

if TYPE_CHECKING:
    from governor._task import Task
    from governor.stores import FailoverLedger, Ledger, Semaphore

__all__ = ["Held", "SlotKeeper"]

logger = logging.getLogger(__name__)


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
                token = self._take(semaphore, timeout)
                if token is not None:
                    held.append((semaphore, token))
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
                token = await self._atake(semaphore, timeout)
                if token is not None:
                    held.append((semaphore, token))
        except BaseException:
            await arelease(Held(held, 0.0))
            raise
        return Held(held, time.monotonic() - start)

    def _take(self, semaphore: Semaphore, timeout: float) -> str | None:
        """A slot's token, or None when the failure mode skips its cap."""
        failover = self._failover(semaphore)
        if failover is None:
            return semaphore.acquire(timeout)
        if not failover.try_store():
            _skipped(failover, semaphore, None)
            return None
        try:
            token = semaphore.acquire(timeout)
        except StoreUnavailable as exc:
            _skipped(failover, semaphore, exc)
            return None
        failover.store_answered()
        return token

    async def _atake(self, semaphore: Semaphore, timeout: float) -> str | None:
        """Async form of :meth:`_take`."""
        failover = self._failover(semaphore)
        if failover is None:
            return await semaphore.aacquire(timeout)
        if not failover.try_store():
            _skipped(failover, semaphore, None)
            return None
        try:
            token = await semaphore.aacquire(timeout)
        except StoreUnavailable as exc:
            _skipped(failover, semaphore, exc)
            return None
        failover.store_answered()
        return token

    def _failover(self, semaphore: Semaphore) -> FailoverLedger | None:
        """The failure mode a slot kept in the store follows, if any."""
        from governor.stores import FailoverLedger
        from governor.stores._semaphore import LocalSemaphore

        if isinstance(semaphore, LocalSemaphore):
            return None
        ledger = self._ledger
        return ledger if isinstance(ledger, FailoverLedger) else None

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


def _skipped(
    failover: FailoverLedger, semaphore: Semaphore, exc: StoreUnavailable | None
) -> None:
    """Admit without the cap (open mode) or raise the refusal (closed mode)."""
    error = failover.store_down(semaphore.key.removeprefix("slots:"), exc)
    if error is not None:
        raise error from exc


def release(held: Held) -> None:
    """Give back every slot, last taken first; never raises."""
    for semaphore, token in reversed(held.slots):
        try:
            semaphore.release(token)
        except Exception as exc:
            _release_failed(semaphore, exc)


async def arelease(held: Held) -> None:
    """Async form of :func:`release`."""
    for semaphore, token in reversed(held.slots):
        try:
            await semaphore.arelease(token)
        except Exception as exc:
            _release_failed(semaphore, exc)


def _release_failed(semaphore: Semaphore, exc: Exception) -> None:
    logger.warning(
        "could not give back a slot of the cap on %r; it stays taken until "
        "its lease (Policy.hold_ttl_s) ends",
        semaphore.key,
        exc_info=exc,
    )


def _timeout(task: Task) -> float:
    fanout = task.policy.fanout
    return 0.0 if fanout.on_cap == "refuse" else fanout.wait_timeout_s
