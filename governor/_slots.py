"""Concurrency slots a model call holds while in flight (Fanout caps).

A call takes, in a fixed order, the slot of every task above its own that
caps its calls (``max_inflight_calls``, outermost first: a sub-task's calls
count against its parent's cap), its task's slot, and one slot per capped
scope (``scope_caps``), and gives all of them back when it is settled. The
calls of one scope value share one semaphore, whatever their tasks' policies
say; each call is admitted under the limit its own task's policy sets for
that scope. Scope slots live in Redis when the ledger does, so the cap holds
across processes; otherwise they are per process. The semaphore module loads
redis-py, so it is imported only when a cap is set.

A governor keeps the scope semaphores it has used most recently, about
``_SCOPES_KEPT`` of them: a Redis semaphore is a handle on state kept in
Redis, so forgetting one loses nothing; an in-process one is forgotten only
while no slot of it is taken and nobody waits for one.

A Redis slot follows the ledger's failure mode: when Redis cannot be reached
(or refuses), ``"closed"`` refuses the call with StoreUnavailable and
``"open"`` admits it without that cap. Giving slots back never raises a
store error, and a cancellation cannot cut it short: a release that cannot
reach Redis is retried in the background and the slot's lease ends in any
case.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from governor._errors import StoreUnavailable
from governor._forks import start_over_in_children

if TYPE_CHECKING:
    from governor._task import Task
    from governor.stores import FailoverLedger, Ledger, Semaphore

__all__ = ["Held", "SlotKeeper"]

logger = logging.getLogger(__name__)

# Scope semaphores a governor keeps between calls (most recently used first);
# it looks through them to forget some once it holds twice as many.
_SCOPES_KEPT: Final = 2048

# Releases running in tasks of their own, held until they finish: the event
# loop keeps only weak references to tasks.
_RELEASING: set[asyncio.Future[None]] = set()


def releasing_on(loop: asyncio.AbstractEventLoop) -> list[asyncio.Future[None]]:
    """The slot releases still running on ``loop``."""
    return [f for f in _RELEASING if not f.done() and f.get_loop() is loop]


@dataclass(slots=True)
class Held:
    """Slots one call holds, and how long it waited for them."""

    slots: list[tuple[Semaphore, str]]
    wait_s: float


_NONE = Held([], 0.0)


@dataclass(frozen=True, slots=True)
class _Need:
    """One slot a call needs: a task's own semaphore, or a scope's by key
    with the limit its task's policy sets (None: the semaphore's own)."""

    semaphore: Semaphore | None
    key: str = ""
    limit: int | None = None


class SlotKeeper:
    """Hands out task and scope slots for one governor."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._lock = threading.Lock()
        self._scopes: OrderedDict[str, Semaphore] = OrderedDict()
        self._forget_at = 2 * _SCOPES_KEPT
        start_over_in_children(self)

    def _forget_parent(self) -> None:
        """In a forked child: a lock of its own (its semaphores start over
        themselves, or are shared through Redis)."""
        self._lock = threading.Lock()

    def acquire(self, task: Task, values: Mapping[str, str] | None = None) -> Held:
        """Take every slot the call needs, or raise SlotUnavailable.

        ``values`` are the scope values the call is charged to when they are
        not its task's (a call naming its own team or environment): its
        scope caps are those values' slots. A call whose task was stopped
        while it waited (its run is ending, or its loop guard stopped it) is
        refused, unsent, as soon as it takes a slot: with the error the
        ending run makes, or the task's LoopDetected; its slots go back.
        """
        needs = self._needs(task, values)
        if not needs:
            return _NONE
        task.starting()
        timeout = _timeout(task)
        start = time.monotonic()
        held: list[tuple[Semaphore, str]] = []
        try:
            for need in needs:
                taken = self._take_need(need, task, timeout)
                if taken is not None:
                    held.append(taken)
                _refuse_if_stopped(task)
        except BaseException:
            release(Held(held, 0.0))
            raise
        return Held(held, time.monotonic() - start)

    async def aacquire(
        self, task: Task, values: Mapping[str, str] | None = None
    ) -> Held:
        """Async form of :meth:`acquire`; waits without blocking the loop."""
        needs = self._needs(task, values)
        if not needs:
            return _NONE
        task.starting()
        timeout = _timeout(task)
        start = time.monotonic()
        held: list[tuple[Semaphore, str]] = []
        try:
            for need in needs:
                taken = await self._atake_need(need, task, timeout)
                if taken is not None:
                    held.append(taken)
                _refuse_if_stopped(task)
        except BaseException:
            await arelease(Held(held, 0.0))
            raise
        return Held(held, time.monotonic() - start)

    def _take_need(
        self, need: _Need, task: Task, timeout: float
    ) -> tuple[Semaphore, str] | None:
        """Take one slot; None when the failure mode skips its cap."""
        while True:
            semaphore = self._semaphore(need, task)
            token = self._take(semaphore, timeout, need.limit)
            if token is None:
                return None
            if self._kept(need, semaphore):
                return semaphore, token
            semaphore.release(token)

    async def _atake_need(
        self, need: _Need, task: Task, timeout: float
    ) -> tuple[Semaphore, str] | None:
        """Async form of :meth:`_take_need`."""
        while True:
            semaphore = self._semaphore(need, task)
            token = await self._atake(semaphore, timeout, need.limit)
            if token is None:
                return None
            if self._kept(need, semaphore):
                return semaphore, token
            semaphore.release(token)  # a local one: its release never waits

    def _semaphore(self, need: _Need, task: Task) -> Semaphore:
        if need.semaphore is not None:
            return need.semaphore
        assert need.limit is not None
        return self._scope(need.key, need.limit, task)

    def _kept(self, need: _Need, semaphore: Semaphore) -> bool:
        """False for a scope semaphore forgotten after it was looked up.

        Only an idle local semaphore is forgotten, so a slot taken on it
        since then must be taken again on the one its key names now, or
        two semaphores would cap the same scope.
        """
        if need.semaphore is not None or not _is_local(semaphore):
            return True
        with self._lock:
            return self._scopes.get(need.key) is semaphore

    def _take(
        self, semaphore: Semaphore, timeout: float, limit: int | None = None
    ) -> str | None:
        """A slot's token, taken under ``limit`` (None: the semaphore's own),
        or None when the failure mode skips its cap."""
        failover = self._failover(semaphore)
        if failover is None:
            return semaphore.acquire(timeout, limit=limit)
        if not failover.try_store():
            _skipped(failover, semaphore, None)
            return None
        try:
            token = semaphore.acquire(timeout, limit=limit)
        except StoreUnavailable as exc:
            _skipped(failover, semaphore, exc)
            return None
        failover.store_answered()
        return token

    async def _atake(
        self, semaphore: Semaphore, timeout: float, limit: int | None = None
    ) -> str | None:
        """Async form of :meth:`_take`."""
        failover = self._failover(semaphore)
        if failover is None:
            return await semaphore.aacquire(timeout, limit=limit)
        if not failover.try_store():
            _skipped(failover, semaphore, None)
            return None
        try:
            token = await semaphore.aacquire(timeout, limit=limit)
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

    def _needs(
        self, task: Task, values: Mapping[str, str] | None = None
    ) -> list[_Need]:
        """The slots a call of ``task`` takes, in the order it takes them."""
        needs = [_Need(semaphore) for semaphore in _task_slots(task)]
        charged = task.scope_values if values is None else values
        for scope, limit in sorted(task.policy.fanout.scope_caps.items()):
            value = charged.get(scope)
            if value is not None:
                needs.append(_Need(None, f"{scope}:{value}", limit))
        return needs

    def _scope(self, key: str, limit: int, task: Task) -> Semaphore:
        with self._lock:
            semaphore = self._scopes.get(key)
            if semaphore is not None:
                self._scopes.move_to_end(key)
                return semaphore
            semaphore = self._scopes[key] = self._make(key, limit, task)
            if len(self._scopes) > self._forget_at:
                self._forget_locked()
            return semaphore

    def _forget_locked(self) -> None:
        """Forget the least recently used semaphores that can go.

        Down to ``_SCOPES_KEPT`` where it can, never the one just made;
        when busy local semaphores keep more, the next look waits until
        twice as many are kept, so looking stays cheap per call.
        """
        surplus = len(self._scopes) - _SCOPES_KEPT
        for key in list(self._scopes)[:-1]:
            if surplus <= 0:
                break
            if _forgettable(self._scopes[key]):
                del self._scopes[key]
                surplus -= 1
        self._forget_at = 2 * max(_SCOPES_KEPT, len(self._scopes))

    def _make(self, key: str, limit: int, task: Task) -> Semaphore:
        from governor.stores._semaphore import LocalSemaphore

        redis_ledger: Any = getattr(self._ledger, "primary", self._ledger)
        if hasattr(redis_ledger, "semaphore"):
            lease = task.policy.hold_ttl_s
            made: Semaphore = redis_ledger.semaphore(f"slots:{key}", limit, lease)
            return made
        return LocalSemaphore(limit, key=key)


def _refuse_if_stopped(task: Task) -> None:
    """Raise if the task's run is ending or its loop guard stopped it.

    A call queued for a slot passed the task's checks before it waited; the
    task may have been stopped since (a node failed its sync graph run, or
    a loop was found in another call's output or prompt), and a stopped
    task sends no more calls. Checked after each slot taken, so a call
    refused at its first slot does not go on to wait for the next.
    """
    if task.ending is not None:
        raise task.ending()
    watch = task.extras.get("loop_watch")
    if watch is not None:
        watch.raise_if_stopped()


def _skipped(
    failover: FailoverLedger, semaphore: Semaphore, exc: StoreUnavailable | None
) -> None:
    """Admit without the cap (open mode) or raise the refusal (closed mode)."""
    error = failover.store_down(semaphore.key.removeprefix("slots:"), exc)
    if error is not None:
        raise error from exc


def release(held: Held) -> None:
    """Give back every slot, last taken first; never raises a store error.

    An interruption (KeyboardInterrupt) on one slot does not keep the others
    taken: it goes on once every slot is given back.
    """
    cut_off: BaseException | None = None
    for semaphore, token in reversed(held.slots):
        try:
            semaphore.release(token)
        except Exception as exc:
            _release_failed(semaphore, exc)
        except BaseException as exc:
            cut_off = cut_off or exc
    if cut_off is not None:
        raise cut_off


async def arelease(held: Held) -> None:
    """Async form of :func:`release`; a cancellation cannot cut it short.

    Local slots go back at once (their release never waits). Slots kept in a
    store go back in a task of their own, which a cancellation of the caller
    does not reach (anyio and Starlette cancel again at every await of a
    cancelled scope): the caller stops waiting and the releases finish all
    the same.
    """
    if not held.slots:
        return
    local = [slot for slot in held.slots if _is_local(slot[0])]
    release(Held(local, 0.0))
    stored = [slot for slot in held.slots if not _is_local(slot[0])]
    if not stored:
        return
    work = asyncio.ensure_future(_release_each(Held(stored, 0.0)))
    _RELEASING.add(work)
    work.add_done_callback(_RELEASING.discard)
    await asyncio.shield(work)


async def _release_each(held: Held) -> None:
    """Give back every slot, last taken first, even past a cancellation.

    The task running this is cancelled only when its loop closes: a store
    semaphore then queues its own release, and the rest go back first.
    """
    cut_off: BaseException | None = None
    for semaphore, token in reversed(held.slots):
        try:
            await semaphore.arelease(token)
        except Exception as exc:
            _release_failed(semaphore, exc)
        except BaseException as exc:
            cut_off = cut_off or exc
    if cut_off is not None:
        raise cut_off


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


def _task_slots(task: Task) -> list[Semaphore]:
    """The in-flight slots of the task and of every task above it.

    Outermost first, so calls of one task tree take them in one order.
    """
    chain: list[Semaphore] = []
    node: Task | None = task
    while node is not None:
        limit = node.policy.fanout.max_inflight_calls
        if limit is not None:
            chain.append(_task_semaphore(node, limit))
        node = node.parent
    chain.reverse()
    return chain


def _task_semaphore(task: Task, limit: int) -> Semaphore:
    slots: Semaphore | None = task.extras.get("slots")
    if slots is None:
        from governor.stores._semaphore import LocalSemaphore

        made = LocalSemaphore(limit, key=f"task:{task.id}")
        slots = task.extras.setdefault("slots", made)
    return slots


def _is_local(semaphore: Semaphore) -> bool:
    from governor.stores._semaphore import LocalSemaphore

    return isinstance(semaphore, LocalSemaphore)


def _forgettable(semaphore: Semaphore) -> bool:
    """A Redis handle always; a local semaphore only when idle."""
    from governor.stores._semaphore import LocalSemaphore

    return not isinstance(semaphore, LocalSemaphore) or semaphore.idle()
