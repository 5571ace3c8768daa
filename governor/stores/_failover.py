"""What a ledger does when its store cannot be reached: fail closed or open.

:class:`FailoverLedger` wraps a primary ledger (normally
:class:`~governor.stores.RedisLedger`) whose steps raise
:class:`~governor.StoreUnavailable` when the store is down or too slow.

* ``mode="closed"`` (the default): a reservation that cannot reach the store
  is refused with :class:`~governor.StoreUnavailable`, whose message says how
  to bring the store back or switch to ``"open"``.
* ``mode="open"``: the call is admitted under a local shadow budget, an
  in-process :class:`~governor.stores.MemoryLedger` holding the same lines and
  limits. The shadow starts empty, so while the store is down each process
  may spend up to each line's full limit again: open trades exactness for
  availability, on purpose.

In both modes a settle that cannot reach the store is queued, never lost and
never raised to the caller (the call already happened): when the store
answers again, queued settles, including every settle made under the shadow,
are written to it before anything else. Settles are idempotent per hold id,
so replaying them is safe. While degraded the store is probed at most once
per ``probe_interval_s``; other calls take the degraded path at once instead
of waiting on timeouts.

Each degraded decision calls ``on_degraded(event)`` with one of the ``EVENT_*``
names (for a span event and a metric), and each change of state logs a
WARNING.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from governor._errors import StoreUnavailable
from governor.stores._base import AsyncLedger, Balance, Ledger, Line, Refusal
from governor.stores._memory import MemoryLedger

__all__ = [
    "EVENT_FAIL_CLOSED",
    "EVENT_FAIL_OPEN",
    "EVENT_RECONCILED",
    "EVENT_SETTLE_QUEUED",
    "DualLedger",
    "FailoverLedger",
]

logger = logging.getLogger(__name__)

EVENT_FAIL_CLOSED: Final = "store.fail_closed"
"""A reservation was refused because the store is unreachable (closed mode)."""
EVENT_FAIL_OPEN: Final = "store.fail_open"
"""A reservation was decided by the local shadow budget (open mode)."""
EVENT_SETTLE_QUEUED: Final = "store.settle_queued"
"""A settle could not reach the store and waits for it."""
EVENT_RECONCILED: Final = "store.reconciled"
"""The store answers again and every queued settle was written to it."""


class DualLedger(Ledger, AsyncLedger, Protocol):
    """A ledger with both the sync and the async steps."""


@dataclass(frozen=True, slots=True)
class _Settle:
    hold_id: str
    keys: tuple[str, ...]
    nanos: int
    tokens: int


class FailoverLedger:
    """A ledger that keeps deciding, by rule, when its store is down.

    Thread-safe and asyncio-safe if the primary is. Implements
    :class:`~governor.stores.Ledger` and :class:`~governor.stores.AsyncLedger`.
    """

    def __init__(
        self,
        primary: DualLedger,
        *,
        mode: Literal["closed", "open"] = "closed",
        on_degraded: Callable[[str], None] | None = None,
        probe_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Wrap ``primary``.

        Args:
            primary: the store-backed ledger.
            mode: ``"closed"`` refuses calls while the store is down;
                ``"open"`` admits them under a local shadow budget.
            on_degraded: called with an ``EVENT_*`` name for every degraded
                decision; exceptions it raises are logged and dropped.
            probe_interval_s: how often, while degraded, one call tries the
                store again.
            clock: monotonic seconds (tests inject one).
        """
        self.primary = primary
        self.mode = mode
        self.shadow = MemoryLedger()
        self._on_degraded = on_degraded
        self._probe_interval_s = probe_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._degraded = False
        self._next_probe = 0.0
        self._shadow_holds: set[str] = set()
        self._pending: dict[str, _Settle] = {}

    @property
    def degraded(self) -> bool:
        """True while the store is considered unreachable."""
        return self._degraded

    @property
    def pending_settles(self) -> int:
        """How many settles wait for the store."""
        with self._lock:
            return len(self._pending)

    # -- sync ------------------------------------------------------------

    def reserve(
        self,
        hold_id: str,
        lines: Sequence[Line],
        nanos: int,
        tokens: int,
        ttl_s: float,
    ) -> Refusal | None:
        """Reserve in the store, or decide by the failure mode when it is down."""
        if self._try_primary():
            try:
                refusal = self.primary.reserve(hold_id, lines, nanos, tokens, ttl_s)
            except StoreUnavailable as exc:
                self._fail(exc)
            else:
                self._ok()
                return refusal
        return self._degraded_reserve(hold_id, lines, nanos, tokens, ttl_s)

    def settle(
        self, hold_id: str, keys: Sequence[str], nanos: int, tokens: int
    ) -> None:
        """Charge the spend in the store, or queue it until the store is back."""
        entry = self._settle_locally(hold_id, keys, nanos, tokens)
        if not self._try_primary():
            self._queue(entry)
            return
        try:
            self.primary.settle(hold_id, keys, nanos, tokens)
        except StoreUnavailable as exc:
            self._fail(exc)
            self._queue(entry)
        else:
            self._ok()

    def release(self, hold_id: str) -> None:
        """Drop the hold; when the store is down its lease expires instead."""
        if self._shadow_release(hold_id) or not self._try_primary():
            return
        try:
            self.primary.release(hold_id)
        except StoreUnavailable as exc:
            self._fail(exc)
        else:
            self._ok()

    def renew(self, hold_id: str, ttl_s: float) -> bool:
        """Extend a hold's lease; True when it still lives (or is a shadow's)."""
        renew = getattr(self.primary, "renew", None)
        with self._lock:
            in_shadow = hold_id in self._shadow_holds
        if in_shadow or renew is None or not self._try_primary():
            return True
        try:
            alive = bool(renew(hold_id, ttl_s))
        except StoreUnavailable as exc:
            self._fail(exc)
            return True
        self._ok()
        return alive

    def balance(self, key: str) -> Balance | None:
        """Return the store's balance, or the shadow's in open mode when down."""
        if self._try_primary():
            try:
                found = self.primary.balance(key)
            except StoreUnavailable as exc:
                self._fail(exc)
            else:
                self._ok()
                return found
        if self.mode == "closed":
            raise self._closed_error()
        return self.shadow.balance(key)

    # -- async -----------------------------------------------------------

    async def areserve(
        self,
        hold_id: str,
        lines: Sequence[Line],
        nanos: int,
        tokens: int,
        ttl_s: float,
    ) -> Refusal | None:
        """Async form of :meth:`reserve`."""
        if await self._atry_primary():
            try:
                refusal = await self.primary.areserve(
                    hold_id, lines, nanos, tokens, ttl_s
                )
            except StoreUnavailable as exc:
                self._fail(exc)
            else:
                self._ok()
                return refusal
        return self._degraded_reserve(hold_id, lines, nanos, tokens, ttl_s)

    async def asettle(
        self, hold_id: str, keys: Sequence[str], nanos: int, tokens: int
    ) -> None:
        """Async form of :meth:`settle`."""
        entry = self._settle_locally(hold_id, keys, nanos, tokens)
        if not await self._atry_primary():
            self._queue(entry)
            return
        try:
            await self.primary.asettle(hold_id, keys, nanos, tokens)
        except StoreUnavailable as exc:
            self._fail(exc)
            self._queue(entry)
        else:
            self._ok()

    async def arelease(self, hold_id: str) -> None:
        """Async form of :meth:`release`."""
        if self._shadow_release(hold_id) or not await self._atry_primary():
            return
        try:
            await self.primary.arelease(hold_id)
        except StoreUnavailable as exc:
            self._fail(exc)
        else:
            self._ok()

    async def arenew(self, hold_id: str, ttl_s: float) -> bool:
        """Async form of :meth:`renew`."""
        arenew = getattr(self.primary, "arenew", None)
        with self._lock:
            in_shadow = hold_id in self._shadow_holds
        if in_shadow or arenew is None or not await self._atry_primary():
            return True
        try:
            alive = bool(await arenew(hold_id, ttl_s))
        except StoreUnavailable as exc:
            self._fail(exc)
            return True
        self._ok()
        return alive

    async def abalance(self, key: str) -> Balance | None:
        """Async form of :meth:`balance`."""
        if await self._atry_primary():
            try:
                found = await self.primary.abalance(key)
            except StoreUnavailable as exc:
                self._fail(exc)
            else:
                self._ok()
                return found
        if self.mode == "closed":
            raise self._closed_error()
        return self.shadow.balance(key)

    # -- state -----------------------------------------------------------

    def _try_primary(self) -> bool:
        """Say whether to use the store now, writing queued settles first."""
        if not self._claim_probe():
            return False
        with self._flush_lock:
            while (entry := self._next_pending()) is not None:
                try:
                    self.primary.settle(
                        entry.hold_id, entry.keys, entry.nanos, entry.tokens
                    )
                except StoreUnavailable as exc:
                    self._fail(exc)
                    return False
                self._done_pending(entry)
        return True

    async def _atry_primary(self) -> bool:
        if not self._claim_probe():
            return False
        # The flush lock is a thread lock: take it without blocking the loop.
        if not self._flush_lock.acquire(blocking=False):
            return not self._degraded
        try:
            while (entry := self._next_pending()) is not None:
                try:
                    await self.primary.asettle(
                        entry.hold_id, entry.keys, entry.nanos, entry.tokens
                    )
                except StoreUnavailable as exc:
                    self._fail(exc)
                    return False
                self._done_pending(entry)
        finally:
            self._flush_lock.release()
        return True

    def _claim_probe(self) -> bool:
        if not self._degraded and not self._pending:
            return True  # the common case, without the lock
        with self._lock:
            if not self._degraded and not self._pending:
                return True
            now = self._clock()
            if self._degraded and now < self._next_probe:
                return False
            self._next_probe = now + self._probe_interval_s
            return True

    def _next_pending(self) -> _Settle | None:
        with self._lock:
            return next(iter(self._pending.values()), None)

    def _done_pending(self, entry: _Settle) -> None:
        with self._lock:
            self._pending.pop(entry.hold_id, None)

    def _fail(self, exc: StoreUnavailable) -> None:
        with self._lock:
            entering = not self._degraded
            self._degraded = True
            self._next_probe = self._clock() + self._probe_interval_s
        if not entering:
            return
        if self.mode == "open":
            # The error's advice is to fail open, which this already does.
            logger.warning(
                "budget store unavailable, failing open until it answers: %s. "
                "Calls are admitted against a local copy of each budget in this "
                "process, and their spend is written to the store once it "
                "answers. Check that the store is running and reachable (URL, "
                "password, TLS).",
                exc.cause or exc,
            )
        else:
            logger.warning(
                "budget store unavailable, failing closed until it answers: %s",
                exc,
            )

    def _ok(self) -> None:
        if not self._degraded:
            return
        with self._lock:
            recovered = self._degraded and not self._pending
            if recovered:
                self._degraded = False
        if recovered:
            # Everything the shadow settled is in the store now; the next
            # outage starts from a fresh shadow.
            self.shadow = MemoryLedger()
            logger.warning("budget store answers again; queued settles written")
            self._emit(EVENT_RECONCILED)

    def _degraded_reserve(
        self,
        hold_id: str,
        lines: Sequence[Line],
        nanos: int,
        tokens: int,
        ttl_s: float,
    ) -> Refusal | None:
        if self.mode == "closed":
            self._emit(EVENT_FAIL_CLOSED)
            raise self._closed_error()
        self._emit(EVENT_FAIL_OPEN)
        refusal = self.shadow.reserve(hold_id, lines, nanos, tokens, ttl_s)
        if refusal is None:
            with self._lock:
                self._shadow_holds.add(hold_id)
        return refusal

    def _settle_locally(
        self, hold_id: str, keys: Sequence[str], nanos: int, tokens: int
    ) -> _Settle:
        """Charge the shadow when it held the call or the store is down (open)."""
        with self._lock:
            in_shadow = _pop(self._shadow_holds, hold_id)
        if in_shadow or (self.mode == "open" and self._degraded):
            self.shadow.settle(hold_id, keys, nanos, tokens)
        return _Settle(hold_id, tuple(keys), nanos, tokens)

    def _shadow_release(self, hold_id: str) -> bool:
        with self._lock:
            in_shadow = _pop(self._shadow_holds, hold_id)
        if in_shadow:
            self.shadow.release(hold_id)
        return in_shadow

    def _queue(self, entry: _Settle) -> None:
        with self._lock:
            self._pending[entry.hold_id] = entry
        self._emit(EVENT_SETTLE_QUEUED)

    def _closed_error(self) -> StoreUnavailable:
        return StoreUnavailable(
            "the budget store is unreachable and the policy fails closed, so "
            "the call was refused before it was sent. Bring the store back "
            "(check the Redis URL, password and network), or set "
            "Policy(failure_mode='open') to admit calls under a local shadow "
            "budget while it is down."
        )

    def _emit(self, event: str) -> None:
        if self._on_degraded is None:
            return
        try:
            self._on_degraded(event)
        except Exception:
            logger.exception("on_degraded hook failed for event %s", event)


def _pop(holds: set[str], hold_id: str) -> bool:
    """Remove ``hold_id`` from ``holds``; True if it was there."""
    if hold_id in holds:
        holds.discard(hold_id)
        return True
    return False
