"""An in-process ledger: one lock, plain integers, exact and fast.

It holds within one process, across threads and asyncio tasks. Budgets that
must hold across processes or hosts need the Redis store. In-memory budgets
are per process: a child forked from the process (a preloaded web server's
workers, a prefork task queue) starts from a copy of the spend at the fork and
counts its own spend from then on, unseen by the parent and its siblings.

Lines expire as Redis keys do: ``Line.ttl_s`` after their last change, once
no hold is on them. A long-running process therefore keeps only the lines
still in use (the current periods, recent tasks), not one per task ever run.

Rolling windows (a line with a ``window_s`` attribute, see
:class:`governor.budgets.RollingLine`) roll as in the Redis store: the spend
is kept in ``ROLLING_BUCKETS`` (60) sub-buckets of the window, and a charge
leaves the window once its whole sub-bucket is older than the window, so it
counts for between ``window_s`` and ``window_s * 61/60`` seconds, never less.
Holds count in full until settled or lapsed. Such a line lives at least
``window_s * 61/60`` after its last change. Other lines carry no buckets and
pay nothing for them.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, NoReturn

from governor._errors import ConfigError
from governor._forks import start_over_in_children
from governor.stores._base import Balance, Line, Refusal

__all__ = ["MemoryLedger"]

_SETTLED_MEMORY = 100_000
# Expired lines are swept at most this often (seconds of the ledger's clock);
# a line read after its expiry reads as gone at once.
_SWEEP_EVERY_S = 60.0
# Sub-buckets per rolling window, as in the Redis store (and
# governor.budgets.ROLLING_BUCKETS, which the stores do not import).
_BUCKETS = 60
# A line a settle makes again after it vanished (its hold lapsed and the line
# expired, or it was never reserved) lives this long, as in the Redis store;
# the next reserve on it restores its own lease, limits and window.
_ORPHAN_TTL_S = 86400.0
_Unit = Literal["usd", "tokens"]


@dataclass(slots=True)
class _Counters:
    limit_nanos: int | None = None
    limit_tokens: int | None = None
    spent_nanos: int = 0
    spent_tokens: int = 0
    reserved_nanos: int = 0
    reserved_tokens: int = 0
    ttl_s: float | None = None
    expires_at: float | None = None
    # Rolling windows only (buckets is None on other lines): the window, a
    # sub-bucket's width, and the spend per sub-bucket as [index, nanos,
    # tokens], oldest first; spent_nanos and spent_tokens are their sums.
    window_s: float = 0.0
    width_s: float = 0.0
    buckets: deque[list[int]] | None = None

    def set_window(self, window_s: float | None, now: float) -> None:
        """Roll the line over ``window_s`` from now on (None: stop rolling).

        Spend the line already has (it was made without its window, or with
        another) goes in the current sub-bucket: it counts a whole window
        from now, so none is forgotten early.
        """
        if window_s is None:
            self.window_s = 0.0
            self.buckets = None
            return
        if not window_s > 0 or math.isinf(window_s):
            raise ConfigError(
                f"a rolling line needs window_s > 0 seconds (finite), got "
                f"{window_s!r}; pass a positive window or a plain Line"
            )
        self.window_s = window_s
        self.width_s = window_s / _BUCKETS
        self.buckets = deque()
        if self.spent_nanos or self.spent_tokens:
            index = int(now // self.width_s)
            self.buckets.append([index, self.spent_nanos, self.spent_tokens])

    def roll(self, buckets: deque[list[int]], now: float) -> None:
        """Drop the sub-buckets whose whole span is older than the window."""
        # A bucket spans [index, index + 1) widths; it has left the window
        # when the window's start lies at or past its end.
        first_kept = (now - self.window_s) // self.width_s
        while buckets and buckets[0][0] < first_kept:
            _, nanos, tokens = buckets.popleft()
            self.spent_nanos -= nanos
            self.spent_tokens -= tokens

    def charge(
        self, buckets: deque[list[int]], now: float, nanos: int, tokens: int
    ) -> None:
        """Put spend in the current sub-bucket (spent_* already include it)."""
        index = int(now // self.width_s)
        if buckets and buckets[-1][0] >= index:
            # The current bucket, or a later one if the clock stepped back:
            # later buckets leave later, so nothing is forgotten early.
            newest = buckets[-1]
            newest[1] += nanos
            newest[2] += tokens
        else:
            buckets.append([index, nanos, tokens])

    def touch(self, now: float) -> None:
        """Start the line's lifetime again after a change."""
        self.expires_at = None if self.ttl_s is None else now + self.ttl_s

    def expired(self, now: float) -> bool:
        """Past its lifetime and held by no call."""
        return (
            self.expires_at is not None
            and self.expires_at <= now
            and not self.reserved_nanos
            and not self.reserved_tokens
        )

    def snapshot(self, key: str) -> Balance:
        return Balance(
            key,
            self.limit_nanos,
            self.limit_tokens,
            self.spent_nanos,
            self.spent_tokens,
            self.reserved_nanos,
            self.reserved_tokens,
        )


@dataclass(slots=True)
class _Hold:
    keys: tuple[str, ...]
    nanos: int
    tokens: int
    deadline: float


@dataclass(slots=True)
class _State:
    lines: dict[str, _Counters] = field(default_factory=dict)
    holds: dict[str, _Hold] = field(default_factory=dict)
    # Oldest first; an OrderedDict drops its oldest in constant time, where
    # a dict's first key is found by scanning the slots of deleted ones.
    settled: OrderedDict[str, None] = field(default_factory=OrderedDict)


class MemoryLedger:
    """A thread-safe in-memory :class:`~governor.stores.Ledger`.

    The async methods run the same code inline: each step is a few dictionary
    operations under a lock and never waits on I/O.

    Rolling lines (:class:`governor.budgets.RollingLine`) roll by ``clock``,
    in 60 sub-buckets of their window, as in the Redis store.

    Budgets are per process. In a child forked from the process the ledger
    keeps the limits and the spend as they were at the fork, but not the
    parent's holds: those calls are in flight in the parent and settle there.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._state = _State()
        self._clock = clock
        self._next_sweep = clock() + _SWEEP_EVERY_S
        # No hold lapses before this (the earliest deadline set since the
        # last look), so holds are looked through only from then on.
        self._next_lapse = float("inf")
        start_over_in_children(self)

    def _forget_parent(self) -> None:
        """In a forked child: a lock of its own, and none of the parent's holds.

        A lock a parent thread held at the fork would stay held for good. The
        holds are the parent's calls in flight, which settle in the parent:
        the child drops them and the room they reserved (which also undoes a
        reserve the fork cut short). The spend so far stays.
        """
        self._lock = threading.Lock()
        self._state.holds.clear()
        for entry in self._state.lines.values():
            entry.reserved_nanos = 0
            entry.reserved_tokens = 0

    def reserve(
        self,
        hold_id: str,
        lines: Sequence[Line],
        nanos: int,
        tokens: int,
        ttl_s: float,
    ) -> Refusal | None:
        """Hold the amounts on every line, or refuse on all of them."""
        if nanos < 0 or tokens < 0:
            _refuse_amounts(nanos, tokens)
        with self._lock:
            now = self._clock()
            self._reap(now)
            state = self._state
            if hold_id in state.holds or hold_id in state.settled:
                return None  # a retried reserve holds once, as in Redis
            counters = [self._counters(line, now) for line in lines]
            for entry in counters:
                if _lacks_room(entry, nanos, tokens):
                    return _refusal(lines, counters, nanos, tokens)
            for entry in counters:
                entry.reserved_nanos += nanos
                entry.reserved_tokens += tokens
                entry.touch(now)
            keys = tuple([line.key for line in lines])
            deadline = now + ttl_s
            state.holds[hold_id] = _Hold(keys, nanos, tokens, deadline)
            self._next_lapse = min(self._next_lapse, deadline)
            return None

    def settle(
        self, hold_id: str, keys: Sequence[str], nanos: int, tokens: int
    ) -> None:
        """Charge the actual spend and drop the hold; a repeat is a no-op."""
        if nanos < 0 or tokens < 0:
            _refuse_amounts(nanos, tokens)
        with self._lock:
            if hold_id in self._state.settled:
                return
            self._drop_hold(hold_id)
            now = self._clock()
            lines = self._state.lines
            for key in keys:
                entry = lines.get(key)
                if entry is None:
                    # Gone (its hold lapsed and it expired) or never reserved:
                    # made again with a lease, so that it does not live for
                    # ever; the next reserve restores its lease and window.
                    entry = lines[key] = _Counters(ttl_s=_ORPHAN_TTL_S)
                entry.spent_nanos += nanos
                entry.spent_tokens += tokens
                buckets = entry.buckets
                if buckets is not None:
                    entry.roll(buckets, now)
                    entry.charge(buckets, now, nanos, tokens)
                entry.touch(now)
            self._remember_settled(hold_id)

    def renew(self, hold_id: str, ttl_s: float) -> bool:
        """Extend a live hold's lease to ``ttl_s`` from now; False if it is gone."""
        with self._lock:
            hold = self._state.holds.get(hold_id)
            if hold is None:
                return False
            hold.deadline = self._clock() + ttl_s
            self._next_lapse = min(self._next_lapse, hold.deadline)
            return True

    async def arenew(self, hold_id: str, ttl_s: float) -> bool:
        """Async form of :meth:`renew`."""
        return self.renew(hold_id, ttl_s)

    def release(self, hold_id: str) -> None:
        """Drop the hold without spend."""
        with self._lock:
            self._drop_hold(hold_id)

    def balance(self, key: str) -> Balance | None:
        """Return the line's balance, or None if never seen (or expired)."""
        with self._lock:
            now = self._clock()
            self._reap(now)
            entry = self._state.lines.get(key)
            if entry is None:
                return None
            if entry.expired(now):
                del self._state.lines[key]
                return None
            if entry.buckets is not None:
                entry.roll(entry.buckets, now)
            return entry.snapshot(key)

    def keys(self) -> list[str]:
        """Return every live line key the ledger holds, sorted."""
        with self._lock:
            now = self._clock()
            self._reap(now)
            self._sweep(now)
            return sorted(self._state.lines)

    def reset(self, key: str) -> None:
        """Forget a line's spend (holds on it stay until settled or expired)."""
        with self._lock:
            entry = self._state.lines.get(key)
            if entry is not None:
                entry.spent_nanos = 0
                entry.spent_tokens = 0
                if entry.buckets is not None:
                    entry.buckets.clear()

    async def areserve(
        self,
        hold_id: str,
        lines: Sequence[Line],
        nanos: int,
        tokens: int,
        ttl_s: float,
    ) -> Refusal | None:
        """Async form of :meth:`reserve`."""
        return self.reserve(hold_id, lines, nanos, tokens, ttl_s)

    async def asettle(
        self, hold_id: str, keys: Sequence[str], nanos: int, tokens: int
    ) -> None:
        """Async form of :meth:`settle`."""
        self.settle(hold_id, keys, nanos, tokens)

    async def arelease(self, hold_id: str) -> None:
        """Async form of :meth:`release`."""
        self.release(hold_id)

    async def abalance(self, key: str) -> Balance | None:
        """Async form of :meth:`balance`."""
        return self.balance(key)

    async def akeys(self) -> list[str]:
        """Async form of :meth:`keys`."""
        return self.keys()

    async def areset(self, key: str) -> None:
        """Async form of :meth:`reset`."""
        self.reset(key)

    def ping(self) -> bool:
        """Return True: the ledger lives in this process (as the Redis one's)."""
        return True

    def close(self) -> None:
        """Nothing to close; here so either ledger can be closed alike."""

    async def aclose(self) -> None:
        """Async form of :meth:`close`."""

    def _counters(self, line: Line, now: float) -> _Counters:
        entry = self._state.lines.get(line.key)
        if entry is not None and entry.expired(now):
            entry = None  # its period is over: start it again from zero
        if entry is None:
            entry = self._state.lines[line.key] = _Counters()
        entry.limit_nanos = line.limit_nanos
        entry.limit_tokens = line.limit_tokens
        entry.ttl_s = line.ttl_s
        window_s: float | None = getattr(line, "window_s", None)
        if window_s is not None or entry.buckets is not None:
            self._roll_line(entry, window_s, now)
        return entry

    @staticmethod
    def _roll_line(entry: _Counters, window_s: float | None, now: float) -> None:
        """Bring a rolling line (or one that was) up to date for a reserve."""
        if window_s != (None if entry.buckets is None else entry.window_s):
            entry.set_window(window_s, now)
        buckets = entry.buckets
        if buckets is None or window_s is None:
            return
        entry.roll(buckets, now)
        # It lives until its last charge has left the window, whatever ttl
        # the line brought, so that no spend is forgotten early.
        least = window_s * (_BUCKETS + 1) / _BUCKETS
        if entry.ttl_s is not None and entry.ttl_s < least:
            entry.ttl_s = least

    def _drop_hold(self, hold_id: str) -> None:
        hold = self._state.holds.pop(hold_id, None)
        if hold is None:
            return
        for key in hold.keys:
            entry = self._state.lines[key]
            entry.reserved_nanos -= hold.nanos
            entry.reserved_tokens -= hold.tokens

    def _reap(self, now: float) -> None:
        if now >= self._next_lapse:
            self._drop_lapsed(now)
        if now >= self._next_sweep:
            self._sweep(now)

    def _drop_lapsed(self, now: float) -> None:
        """Drop the holds whose lease has run out; note when the next one may."""
        holds = self._state.holds
        for hold_id in [h for h, hold in holds.items() if hold.deadline <= now]:
            self._drop_hold(hold_id)
        self._next_lapse = min(
            (hold.deadline for hold in holds.values()), default=float("inf")
        )

    def _sweep(self, now: float) -> None:
        """Forget the lines past their lifetime that no call holds."""
        lines = self._state.lines
        for key in [k for k, entry in lines.items() if entry.expired(now)]:
            del lines[key]
        self._next_sweep = now + _SWEEP_EVERY_S

    def _remember_settled(self, hold_id: str) -> None:
        settled = self._state.settled
        settled[hold_id] = None
        if len(settled) > _SETTLED_MEMORY:
            settled.popitem(last=False)


def _lacks_room(entry: _Counters, nanos: int, tokens: int) -> bool:
    used_nanos = entry.spent_nanos + entry.reserved_nanos
    if entry.limit_nanos is not None and used_nanos + nanos > entry.limit_nanos:
        return True
    used_tokens = entry.spent_tokens + entry.reserved_tokens
    return entry.limit_tokens is not None and used_tokens + tokens > entry.limit_tokens


def _refusal(
    lines: Sequence[Line], counters: Sequence[_Counters], nanos: int, tokens: int
) -> Refusal | None:
    """The refusal of a reserve that some line lacks room for.

    It names a line and unit that lack room by their spend alone when there
    is one (waiting for the calls in flight cannot cure it), else the first
    that lacks room; so the refusal's figures tell whether every line would
    fit once the calls in flight settle.
    """
    first: Refusal | None = None
    for line, entry in zip(lines, counters, strict=True):
        units: tuple[tuple[_Unit, int | None, int, int, int], ...] = (
            ("usd", entry.limit_nanos, entry.spent_nanos, entry.reserved_nanos, nanos),
            (
                "tokens",
                entry.limit_tokens,
                entry.spent_tokens,
                entry.reserved_tokens,
                tokens,
            ),
        )
        for unit, limit, spent, reserved, amount in units:
            if limit is None or spent + reserved + amount <= limit:
                continue
            refusal = Refusal(unit, entry.snapshot(line.key))
            if spent + amount > limit:
                return refusal
            first = first or refusal
    return first


def _refuse_amounts(nanos: int, tokens: int) -> NoReturn:
    """Amounts are never negative (as the Redis store also refuses)."""
    raise ConfigError(
        f"amounts must be whole numbers of at least 0, got nanos={nanos} "
        f"tokens={tokens}"
    )
