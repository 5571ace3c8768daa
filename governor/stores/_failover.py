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

The store counts as down when it does not answer and when it refuses a step
(out of memory, read-only, no permission): both raise StoreUnavailable.

In both modes a settle that cannot reach the store is queued, never raised to
the caller (the call already happened), and so is the release of a hold that
may be in the store: that of a reserve that timed out on the client (the
server may still run it), of a cancelled settle, of a release that failed.
Queued steps are written before anything else once the store answers: by the
next call, or by a daemon thread that tries every ``probe_interval_s`` while
any wait, so they reach the store even if the process makes no further call.
Each step stays queued until the store took it and is sent by one writer at
a time; a step that a coroutine is sending is not waited for, so a sync step
on the coroutine's event loop never blocks on it.
:meth:`FailoverLedger.drain` (called by ``Governor.close``) waits a bounded
time for them. Settles and releases are idempotent per hold id, so replaying
them is safe. While degraded the store is probed at most once per
``probe_interval_s``; other calls take the degraded path at once instead of
waiting on timeouts. Queued steps live in the process: if it exits before the
store answers, they are lost (``drain`` logs how many and how much).

A forked child starts with no queued step and an empty shadow, and starts
its own drain thread when it queues a step: the steps queued at the fork are
the parent's, and the parent writes them. Whether the store was down carries
over, so a child does not wait on timeouts to find out again.

Each degraded decision calls ``on_degraded(event)`` with one of the ``EVENT_*``
names (for a span event and a metric), and each change of state logs a
WARNING.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from governor._errors import StoreUnavailable
from governor._forks import start_over_in_children
from governor.stores._base import AsyncLedger, Balance, Ledger, Line, Refusal
from governor.stores._memory import MemoryLedger

__all__ = [
    "EVENT_CAP_OPEN",
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
EVENT_CAP_OPEN: Final = "store.cap_fail_open"
"""A fan-out cap kept in the store was skipped because it is down (open mode)."""

_MIN_DRAIN_S: Final = 0.05
_SAME_FAILURE_S: Final = 0.05
"""A store marked down less than this before its last failure: one failure."""


_STORE_ADVICE: Final = (
    "Check that the store is running and reachable (URL, password, TLS)"
)


class DualLedger(Ledger, AsyncLedger, Protocol):
    """A ledger with both the sync and the async steps."""


@dataclass(frozen=True, slots=True)
class _Step:
    """A step queued for the store: a settle, or a release when ``keys`` is None."""

    hold_id: str
    keys: tuple[str, ...] | None
    nanos: int = 0
    tokens: int = 0


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
        self._lock = threading.Condition()
        self._writing: set[str] = set()  # hold ids whose queued step is on the wire
        self._degraded = False
        self._next_probe = 0.0
        self._shadow_holds: set[str] = set()
        self._pending: dict[str, _Step] = {}
        self._written = 0
        self._last_error: StoreUnavailable | None = None
        self._last_failed_at = 0.0  # clock time of the last failure
        self._down_since = 0.0  # clock time the store was marked down
        self._wake = threading.Event()
        self._drainer: threading.Thread | None = None
        start_over_in_children(self)

    @property
    def degraded(self) -> bool:
        """True while the store is considered unreachable."""
        return self._degraded

    @property
    def pending_settles(self) -> int:
        """How many settles wait for the store."""
        with self._lock:
            return sum(e.keys is not None for e in self._pending.values())

    @property
    def pending_releases(self) -> int:
        """How many releases of holds that may be in the store wait for it."""
        with self._lock:
            return sum(e.keys is None for e in self._pending.values())

    @property
    def pending_nanos(self) -> int:
        """The spend, in nano-dollars, of the settles that wait for the store."""
        with self._lock:
            return sum(e.nanos for e in self._pending.values() if e.keys)

    def drain(self, timeout_s: float) -> int:
        """Write the queued steps now; wait up to ``timeout_s`` seconds.

        The writing is done by the background thread, so a store that hangs
        cannot hold the caller past ``timeout_s``. Returns how many steps
        still wait (0 when all reached the store).
        """
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        with self._lock:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0 or not self._lock.wait(left):
                    break
            return len(self._pending)

    def _forget_parent(self) -> None:
        """In a forked child: drop the parent's queued steps, thread and locks.

        The parent's drain thread does not exist here, a lock one of its
        threads held at the fork would stay held for good, and the shadow's
        holds and spend are the parent's calls.
        """
        self._lock = threading.Condition()
        self._writing = set()
        self._pending = {}
        self._written = 0
        self._shadow_holds = set()
        self.shadow = MemoryLedger()
        self._wake = threading.Event()
        self._drainer = None

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
        failure: StoreUnavailable | None = None
        if self._claim_probe() and (failure := self._flush()) is None:
            try:
                refusal = self.primary.reserve(hold_id, lines, nanos, tokens, ttl_s)
            except StoreUnavailable as exc:
                self._reserve_failed(hold_id, exc)
                failure = exc
            else:
                self._ok()
                return refusal
        return self._degraded_reserve(hold_id, lines, nanos, tokens, ttl_s, failure)

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
        """Drop the hold; when the store is down, queue the release for it."""
        if self._shadow_release(hold_id):
            return
        if not self._try_primary():
            self._queue(_Step(hold_id, None))
            return
        try:
            self.primary.release(hold_id)
        except StoreUnavailable as exc:
            self._fail(exc)
            self._queue(_Step(hold_id, None))
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
        failure: StoreUnavailable | None = None
        if self._claim_probe() and (failure := self._flush()) is None:
            try:
                found = self.primary.balance(key)
            except StoreUnavailable as exc:
                self._fail(exc)
                failure = exc
            else:
                self._ok()
                return found
        if self.mode == "closed":
            raise self._balance_refused(failure)
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
        failure: StoreUnavailable | None = None
        if self._claim_probe() and (failure := await self._aflush()) is None:
            try:
                refusal = await self.primary.areserve(
                    hold_id, lines, nanos, tokens, ttl_s
                )
            except StoreUnavailable as exc:
                self._reserve_failed(hold_id, exc)
                failure = exc
            else:
                self._ok()
                return refusal
        return self._degraded_reserve(hold_id, lines, nanos, tokens, ttl_s, failure)

    async def asettle(
        self, hold_id: str, keys: Sequence[str], nanos: int, tokens: int
    ) -> None:
        """Async form of :meth:`settle`."""
        entry = self._settle_locally(hold_id, keys, nanos, tokens)
        try:
            if not await self._atry_primary():
                self._queue(entry)
                return
            await self.primary.asettle(hold_id, keys, nanos, tokens)
        except StoreUnavailable as exc:
            self._fail(exc)
            self._queue(entry)
        except asyncio.CancelledError:
            # Cut off while writing the queue (this settle never ran) or this
            # settle (it may have run): queue it (it is idempotent) so the
            # call is charged exactly once either way.
            self._queue(entry, event=False)
            raise
        else:
            self._ok()

    async def arelease(self, hold_id: str) -> None:
        """Async form of :meth:`release`."""
        if self._shadow_release(hold_id):
            return
        try:
            if not await self._atry_primary():
                self._queue(_Step(hold_id, None))
                return
            await self.primary.arelease(hold_id)
        except StoreUnavailable as exc:
            self._fail(exc)
            self._queue(_Step(hold_id, None))
        except asyncio.CancelledError:
            self._queue(_Step(hold_id, None))
            raise
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
        failure: StoreUnavailable | None = None
        if self._claim_probe() and (failure := await self._aflush()) is None:
            try:
                found = await self.primary.abalance(key)
            except StoreUnavailable as exc:
                self._fail(exc)
                failure = exc
            else:
                self._ok()
                return found
        if self.mode == "closed":
            raise self._balance_refused(failure)
        return self.shadow.balance(key)

    # -- state -----------------------------------------------------------

    def _try_primary(self) -> bool:
        """Say whether to use the store now, writing queued steps first."""
        return self._claim_probe() and self._flush() is None

    def _flush(self) -> StoreUnavailable | None:
        """Write the queued steps in order; the store's error when it failed.

        A step another flusher (the drain thread, another caller, a
        coroutine) is writing is skipped: it stays queued until written. So
        a caller never waits on another's write to a slow store; its own
        attempts bound its wait, as documented.
        """
        while (entry := self._claim_pending()) is not None:
            try:
                self._write(entry)
            except StoreUnavailable as exc:
                self._unclaim(entry)
                self._fail(exc)
                return exc
            except BaseException:
                self._unclaim(entry)
                raise
            self._done_pending(entry)
        return None

    def _write(self, entry: _Step) -> None:
        if entry.keys is None:
            self.primary.release(entry.hold_id)
        else:
            self.primary.settle(entry.hold_id, entry.keys, entry.nanos, entry.tokens)

    async def _atry_primary(self) -> bool:
        """Async form of :meth:`_try_primary`; holds no thread lock across await."""
        return self._claim_probe() and await self._aflush() is None

    async def _aflush(self) -> StoreUnavailable | None:
        """Async form of :meth:`_flush`.

        Each queued step is claimed while it is written and stays queued
        until the store took it: a cancellation or a failure leaves it for
        the next flusher, and no two flushers write the same step at once.
        """
        while (entry := self._claim_pending()) is not None:
            try:
                await self._awrite(entry)
            except StoreUnavailable as exc:
                self._unclaim(entry)
                self._fail(exc)
                return exc
            except BaseException:
                self._unclaim(entry)
                raise
            self._done_pending(entry)
        return None

    async def _awrite(self, entry: _Step) -> None:
        if entry.keys is None:
            await self.primary.arelease(entry.hold_id)
        else:
            await self.primary.asettle(
                entry.hold_id, entry.keys, entry.nanos, entry.tokens
            )

    def _drain_loop(self) -> None:
        """Write queued steps every probe interval until none is left."""
        while True:
            self._wake.wait(max(self._probe_interval_s, _MIN_DRAIN_S))
            self._wake.clear()
            with self._lock:
                if not self._pending:
                    self._drainer = None
                    return
            try:
                if self._flush() is None:
                    self._ok()
            except Exception:  # a broken store must not kill the thread
                logger.exception("writing queued budget steps failed")

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

    def _claim_pending(self) -> _Step | None:
        """Take the first queued step that no flusher is writing, and mark it.

        One step per hold id is on the wire at a time, so a settle queued
        over a release being written follows it, in order.
        """
        with self._lock:
            for entry in self._pending.values():
                if entry.hold_id not in self._writing:
                    self._writing.add(entry.hold_id)
                    return entry
            return None

    def _unclaim(self, entry: _Step) -> None:
        """A write that failed or was cut off: the step stays queued."""
        with self._lock:
            self._writing.discard(entry.hold_id)

    def _done_pending(self, entry: _Step) -> None:
        with self._lock:
            self._writing.discard(entry.hold_id)
            # A settle queued meanwhile under the same id replaced a release:
            # it is written next.
            if self._pending.get(entry.hold_id) is entry:
                del self._pending[entry.hold_id]
            if entry.keys is not None and self._degraded:
                self._written += 1
            self._lock.notify_all()

    def _reserve_failed(self, hold_id: str, exc: StoreUnavailable) -> None:
        """The reserve may still run on the server: undo it once it answers."""
        self._fail(exc)
        self._queue(_Step(hold_id, None), event=False)

    def _fail(self, exc: StoreUnavailable) -> None:
        with self._lock:
            entering = not self._degraded
            now = self._clock()
            self._degraded = True
            self._next_probe = now + self._probe_interval_s
            self._last_error = exc
            self._last_failed_at = now
            if entering:
                self._down_since = now
        if not entering:
            return
        if self.mode == "open":
            # The error's advice ends in failing open, which this already
            # does: only what to change on the store is repeated.
            logger.warning(
                "budget store unavailable, failing open until it answers: %s. "
                "Calls are admitted against a local copy of each budget in this "
                "process, fan-out caps kept in the store are not applied, and "
                "their spend is written to the store once it answers. %s.",
                exc.cause or exc,
                exc.advice or _STORE_ADVICE,
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
                written, self._written = self._written, 0
        if recovered:
            # Everything the shadow settled is in the store now; the next
            # outage starts from a fresh shadow.
            self.shadow = MemoryLedger()
            if written:
                logger.warning(
                    "budget store answers again; %d queued settle(s) written",
                    written,
                )
            else:
                logger.warning("budget store answers again")
            self._emit(EVENT_RECONCILED)

    def _degraded_reserve(
        self,
        hold_id: str,
        lines: Sequence[Line],
        nanos: int,
        tokens: int,
        ttl_s: float,
        failure: StoreUnavailable | None,
    ) -> Refusal | None:
        if self.mode == "closed":
            self._emit(EVENT_FAIL_CLOSED)
            raise self._closed_error(
                "reserve", "reserve", failure, "the call was refused before it was sent"
            )
        self._emit(EVENT_FAIL_OPEN)
        refusal = self.shadow.reserve(hold_id, lines, nanos, tokens, ttl_s)
        if refusal is None:
            with self._lock:
                self._shadow_holds.add(hold_id)
        return refusal

    def _settle_locally(
        self, hold_id: str, keys: Sequence[str], nanos: int, tokens: int
    ) -> _Step:
        """Charge the shadow when it held the call or the store is down (open)."""
        with self._lock:
            in_shadow = _pop(self._shadow_holds, hold_id)
        if in_shadow or (self.mode == "open" and self._degraded):
            self.shadow.settle(hold_id, keys, nanos, tokens)
        return _Step(hold_id, tuple(keys), nanos, tokens)

    def _shadow_release(self, hold_id: str) -> bool:
        with self._lock:
            in_shadow = _pop(self._shadow_holds, hold_id)
        if in_shadow:
            self.shadow.release(hold_id)
        return in_shadow

    def _queue(self, entry: _Step, *, event: bool = True) -> None:
        """Keep a step for the store and make sure the drain thread runs."""
        with self._lock:
            if entry.keys is None and entry.hold_id in self._pending:
                return  # a settle of the hold is queued: it drops the hold
            self._pending[entry.hold_id] = entry
            if self._drainer is None:
                self._drainer = threading.Thread(
                    target=self._drain_loop, name="governor-settles", daemon=True
                )
                self._drainer.start()
        if event and entry.keys is not None:
            self._emit(EVENT_SETTLE_QUEUED)

    def _balance_refused(self, failure: StoreUnavailable | None) -> StoreUnavailable:
        return self._closed_error(
            "balance read", "balance", failure, "the budget left cannot be read"
        )

    def _closed_error(
        self,
        refused: str,
        step: str,
        failure: StoreUnavailable | None,
        outcome: str,
        what: str = "budget store",
        open_does: str = "admit calls under a local shadow budget",
    ) -> StoreUnavailable:
        """The refusal of fail-closed: what was refused, why, and the remedy.

        Args:
            refused: what was refused, e.g. ``"reserve"``.
            step: the store's step it needed (``"reserve"``, ``"acquire"``),
                to tell its own failure from that of a queued step written
                before it.
            failure: the store's error met by this step (its own, or that of
                a queued step it wrote first); None when it did not try the
                store because it is down and the next probe is not due.
            outcome: what the refusal means for the caller.
            what: the store, as the message names it.
            open_does: what ``failure_mode='open'`` would do instead.
        """
        with self._lock:
            last = failure or self._last_error
            now = self._clock()
            down_for = now - self._down_since
            ago = now - self._last_failed_at
        if last is None:
            why = f"the {what} is unavailable"
        else:
            cause = last.cause or str(last).rstrip(".")
            failed, reason = _split_cause(cause)
            if failure is not None and failed in (None, step):
                why = f"the {what} is unavailable ({cause})"
            elif failure is not None:
                why = (
                    f"the {what} is unavailable (writing the {failed} queued "
                    f"while it was down failed just now: {reason})"
                )
            else:
                a_step = f"a {failed}" if failed else "a step"
                if down_for - ago < _SAME_FAILURE_S:
                    since = f"since {a_step} failed {ago:.1f} s ago ({reason})"
                else:
                    since = (
                        f"for {down_for:.1f} s; the last try, {a_step} {ago:.1f} s "
                        f"ago, failed ({reason})"
                    )
                why = (
                    f"the {what} has been unavailable {since}; it is tried again "
                    f"at most once every {self._probe_interval_s:g} s, so this "
                    f"{refused} did not try it"
                )
        advice = (last.advice if last is not None else None) or (
            "Bring the store back (check the Redis URL, password and network)"
        )
        error = StoreUnavailable(
            f"{refused} refused: {why}. The policy fails closed, so {outcome}. "
            f"{advice}, or set Policy(failure_mode='open') to {open_does} while "
            "it is down."
        )
        error.cause = last.cause if last is not None else None
        error.advice = advice
        return error

    # -- fan-out caps kept in the store ----------------------------------

    def try_store(self) -> bool:
        """Whether a step outside the ledger (a cap's slot) should use the store.

        False while degraded between probes: decide by :meth:`store_down`.
        """
        return self._claim_probe()

    def store_answered(self) -> None:
        """A step outside the ledger reached the store."""
        self._ok()

    def store_down(
        self, cap: str, exc: StoreUnavailable | None
    ) -> StoreUnavailable | None:
        """Decide a cap's slot that cannot use the store.

        Returns the error to raise (closed mode), or None to admit the call
        without that cap (open mode); both emit an event.
        """
        if exc is not None:
            self._fail(exc)
        if self.mode == "closed":
            self._emit(EVENT_FAIL_CLOSED)
            return self._closed_error(
                "fan-out slot",
                "acquire",
                exc,
                "the call was refused before it was sent",
                f"Redis store holding the fan-out cap on {cap!r}",
                "admit calls without the cap",
            )
        self._emit(EVENT_CAP_OPEN)
        return None

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


def _split_cause(cause: str) -> tuple[str | None, str]:
    """``"settle failed: Timeout..."`` as the step and the reason, when so worded."""
    failed, sep, reason = cause.partition(" failed: ")
    if sep and failed and " " not in failed:
        return failed, reason
    return None, cause
