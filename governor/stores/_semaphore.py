"""Concurrency caps: at most N model calls in flight per scope.

Two semaphores with one interface (:class:`Semaphore`):

* :class:`LocalSemaphore` caps calls within one process. Threads and asyncio
  tasks may share one instance: waiters queue first come, first served, and
  a freed slot is handed straight to the next waiter, thread or coroutine.
* :class:`RedisSemaphore` caps calls across every process and host sharing a
  Redis. A slot is a member of a sorted set scored by its lease deadline (from
  the server's clock); an acquire drops expired members first, so a crashed
  worker's slot comes back when its lease ends. Waiters poll with a growing,
  jittered back-off (no fairness between hosts). Renew the lease of a long
  call with :meth:`RedisSemaphore.renew`.

Use :meth:`Semaphore.slot` / :meth:`Semaphore.aslot`: the slot is released on
every exit path (success, error, timeout, cancellation); the lease covers a
crash.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
)
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

from governor._errors import ConfigError, SlotUnavailable, StoreUnavailable
from governor._forks import start_over_in_children
from governor._task import new_id
from governor.stores._redis import DEFAULT_REDIS_URL, RedisConfig, RedisConnections

__all__ = ["LocalSemaphore", "RedisSemaphore", "Semaphore", "SlotUnavailable"]

logger = logging.getLogger(__name__)

_POLL_FIRST_S: Final = 0.002
_POLL_MAX_S: Final = 0.05


@runtime_checkable
class Semaphore(Protocol):
    """A counting semaphore whose slots are named by tokens.

    ``timeout_s=None`` waits for ever, ``0`` tries once; both acquire forms
    raise :class:`SlotUnavailable` when no slot came free in time. Releasing
    an unknown or already released token does nothing.
    """

    key: str
    limit: int

    def acquire(
        self, timeout_s: float | None = None, *, limit: int | None = None
    ) -> str:
        """Take a slot and return its token.

        ``limit`` caps this acquire alone (None: the semaphore's ``limit``):
        it is granted only while fewer slots than that are taken.
        """
        ...

    def release(self, token: str) -> None:
        """Give the slot back."""
        ...

    def renew(self, token: str) -> bool:
        """Extend the slot's lease; False if the slot is gone."""
        ...

    async def aacquire(
        self, timeout_s: float | None = None, *, limit: int | None = None
    ) -> str:
        """Async form of :meth:`acquire`."""
        ...

    async def arelease(self, token: str) -> None:
        """Async form of :meth:`release`."""
        ...

    async def arenew(self, token: str) -> bool:
        """Async form of :meth:`renew`."""
        ...

    def in_use(self) -> int:
        """Return how many slots are taken now."""
        ...

    def slot(self, timeout_s: float | None = None) -> AbstractContextManager[str]:
        """Hold a slot for the ``with`` block."""
        ...

    def aslot(self, timeout_s: float | None = None) -> AbstractAsyncContextManager[str]:
        """Hold a slot for the ``async with`` block."""
        ...


class _SlotMixin:
    """``slot`` and ``aslot`` built on the acquire and release methods."""

    limit: int

    def _cap(self, limit: int | None) -> int:
        """The limit one acquire is granted under: its own, else the
        semaphore's."""
        if limit is None:
            return self.limit
        if limit < 1:
            raise ConfigError(
                f"an acquire needs a limit of at least 1 slot, got {limit}; "
                "pass None for the semaphore's own limit"
            )
        return limit

    def acquire(
        self, timeout_s: float | None = None, *, limit: int | None = None
    ) -> str:
        raise NotImplementedError

    def release(self, token: str) -> None:
        raise NotImplementedError

    async def aacquire(
        self, timeout_s: float | None = None, *, limit: int | None = None
    ) -> str:
        raise NotImplementedError

    async def arelease(self, token: str) -> None:
        raise NotImplementedError

    @contextmanager
    def slot(self, timeout_s: float | None = None) -> Iterator[str]:
        """Hold a slot for the ``with`` block, whatever way it ends."""
        token = self.acquire(timeout_s)
        try:
            yield token
        finally:
            self.release(token)

    @asynccontextmanager
    async def aslot(self, timeout_s: float | None = None) -> AsyncIterator[str]:
        """Hold a slot for the ``async with`` block, cancellation included."""
        token = await self.aacquire(timeout_s)
        try:
            yield token
        finally:
            # Shielded, so a cancellation arriving now cannot skip the release.
            await asyncio.shield(self.arelease(token))


@dataclass(eq=False, slots=True)
class _Waiter:
    event: threading.Event | None = None
    future: asyncio.Future[None] | None = None
    loop: asyncio.AbstractEventLoop | None = None
    token: str | None = None
    limit: int = 1


class LocalSemaphore(_SlotMixin):
    """An in-process semaphore shared safely by threads and asyncio tasks.

    A sync :meth:`acquire` blocks its thread: do not call it on an event
    loop's thread, use :meth:`aacquire` there. Its slots are per process: a
    child forked from the process starts with every slot free.
    """

    def __init__(self, limit: int, *, key: str = "local") -> None:
        """Make a semaphore of ``limit`` slots; ``key`` names it in errors."""
        if limit < 1:
            raise ConfigError(f"a semaphore needs at least 1 slot, got {limit}")
        self.key = key
        self.limit = limit
        self._lock = threading.Lock()
        self._holders: set[str] = set()
        self._waiters: deque[_Waiter] = deque()
        self._widest = 0  # at least every waiting acquire's limit
        start_over_in_children(self)

    def _forget_parent(self) -> None:
        """In a forked child: every slot free, a lock of its own.

        The slots held and waited for at the fork are the parent's calls,
        which end in the parent; kept, they would stay taken in the child
        for good. A slot the forking thread held is released as a no-op.
        """
        self._lock = threading.Lock()
        self._holders = set()
        self._waiters = deque()
        self._widest = 0

    def in_use(self) -> int:
        """Return how many slots are taken now."""
        with self._lock:
            return len(self._holders)

    def acquire(
        self, timeout_s: float | None = None, *, limit: int | None = None
    ) -> str:
        """Take a slot, waiting up to ``timeout_s``; return its token.

        ``limit`` caps this acquire alone (None: the semaphore's ``limit``):
        it is granted while fewer slots than that are taken, first come,
        first served among the waiters that can be granted.
        """
        cap = self._cap(limit)
        with self._lock:
            if self._free_locked(cap):
                return self._grant_locked()
            if timeout_s is not None and timeout_s <= 0:
                raise SlotUnavailable(self.key, cap, timeout_s)
            waiter = _Waiter(event=threading.Event(), limit=cap)
            self._queue_locked(waiter)
        assert waiter.event is not None
        try:
            waiter.event.wait(timeout_s)
        except BaseException:
            self._settle_waiter(waiter, keep=False)
            raise
        token = self._settle_waiter(waiter, keep=True)
        if token is None:
            raise SlotUnavailable(self.key, cap, timeout_s, blocking_loop=_on_a_loop())
        return token

    async def aacquire(
        self, timeout_s: float | None = None, *, limit: int | None = None
    ) -> str:
        """Take a slot without blocking the event loop; return its token.

        ``limit`` is as in :meth:`acquire`.
        """
        cap = self._cap(limit)
        with self._lock:
            if self._free_locked(cap):
                return self._grant_locked()
            if timeout_s is not None and timeout_s <= 0:
                raise SlotUnavailable(self.key, cap, timeout_s)
            loop = asyncio.get_running_loop()
            waiter = _Waiter(future=loop.create_future(), loop=loop, limit=cap)
            self._queue_locked(waiter)
        assert waiter.future is not None
        try:
            await asyncio.wait_for(waiter.future, timeout_s)
        except TimeoutError:
            token = self._settle_waiter(waiter, keep=True)
            if token is None:
                raise SlotUnavailable(self.key, cap, timeout_s) from None
            return token
        except BaseException:
            # Cancelled: a slot handed over meanwhile goes to the next waiter.
            self._settle_waiter(waiter, keep=False)
            raise
        assert waiter.token is not None
        return waiter.token

    def release(self, token: str) -> None:
        """Give the slot back and hand it to the next waiter, if any."""
        with self._lock:
            if token not in self._holders:
                return
            self._holders.discard(token)
            self._hand_on_locked()

    async def arelease(self, token: str) -> None:
        """Async form of :meth:`release` (it never waits)."""
        self.release(token)

    def idle(self) -> bool:
        """Return True when no slot is taken and nobody waits for one."""
        with self._lock:
            return not self._holders and not self._waiters

    def renew(self, token: str) -> bool:
        """Return whether the slot is held: in-process slots need no lease."""
        with self._lock:
            return token in self._holders

    async def arenew(self, token: str) -> bool:
        """Async form of :meth:`renew`."""
        return self.renew(token)

    def _free_locked(self, cap: int) -> bool:
        """Whether an acquire under ``cap`` may take a slot now.

        Every waiter that a freed slot could serve was handed one, so those
        still waiting cannot be served now: a newcomer that can goes first.
        """
        return len(self._holders) < cap

    def _grant_locked(self) -> str:
        token = new_id()
        self._holders.add(token)
        return token

    def _settle_waiter(self, waiter: _Waiter, *, keep: bool) -> str | None:
        """Stop waiting: return the granted token if kept, else pass it on."""
        with self._lock:
            if waiter.token is None:
                self._waiters.remove(waiter)
                return None
            if keep:
                return waiter.token
            self._holders.discard(waiter.token)
            self._hand_on_locked()
            return None

    def _queue_locked(self, waiter: _Waiter) -> None:
        self._waiters.append(waiter)
        self._widest = max(self._widest, waiter.limit)

    def _hand_on_locked(self) -> None:
        """Grant free slots to the waiters, in order, each under its limit.

        Stops once no waiter's limit (``_widest`` bounds them) leaves room.
        """
        passed: list[_Waiter] = []
        while self._waiters and len(self._holders) < self._widest:
            waiter = self._waiters.popleft()
            if len(self._holders) < waiter.limit:
                self._wake_locked(waiter)
            else:
                passed.append(waiter)
        self._waiters.extendleft(reversed(passed))
        if not self._waiters:
            self._widest = 0

    def _wake_locked(self, waiter: _Waiter) -> None:
        waiter.token = self._grant_locked()
        if waiter.event is not None:
            waiter.event.set()
            return
        assert waiter.loop is not None
        assert waiter.future is not None
        try:
            waiter.loop.call_soon_threadsafe(_wake, waiter.future)
        except RuntimeError:
            # Its loop is closed: nobody will take the slot.
            self._holders.discard(waiter.token)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class RedisSemaphore(_SlotMixin):
    """A semaphore whose slots are leases in Redis, shared by every process.

    Thread-safe and usable from any event loop. An acquire that cannot reach
    Redis raises :class:`~governor.StoreUnavailable` after bounded retries; a
    release that cannot (and the undo of a failed acquire, which may still
    run on the server) is retried in the background until Redis answers.
    """

    def __init__(
        self,
        key: str,
        limit: int,
        lease_s: float,
        *,
        config: RedisConfig | str = DEFAULT_REDIS_URL,
        prefix: str = "governor:",
        connections: RedisConnections | None = None,
    ) -> None:
        """Make a handle on the semaphore ``key``; nothing connects yet.

        Args:
            key: what the cap is on, e.g. ``"team:search"``.
            limit: slots, unless an acquire names its own ``limit``; every
                handle on the same key counts the same slots.
            lease_s: how long a slot outlives a worker that died holding it;
                it must outlast the call, or be renewed.
            config: a :class:`~governor.stores.RedisConfig` or a URL.
            prefix: put before the Redis key; must not contain braces.
            connections: pools to share with a ledger
                (``RedisLedger.connections``).
        """
        if limit < 1 or lease_s <= 0:
            raise ConfigError(
                f"a semaphore needs limit >= 1 and lease_s > 0, got {limit} "
                f"and {lease_s}"
            )
        if "{" in prefix or "}" in prefix:
            raise ConfigError(f"prefix {prefix!r} must be free of braces")
        if isinstance(config, str):
            config = RedisConfig(url=config)
        self.key = key
        self.limit = limit
        self.lease_s = lease_s
        # The key is its own hash tag: each semaphore lives in one slot and
        # different semaphores spread over a cluster.
        self.redis_key = f"{prefix}{{sem:{key}}}"
        self._conn = connections or RedisConnections(config)
        self._lease_ms = max(1, round(lease_s * 1000))
        self._warned = False

    @property
    def connections(self) -> RedisConnections:
        """The pools this semaphore uses."""
        return self._conn

    def in_use(self) -> int:
        """Return how many live slots are taken now."""
        script = self._conn.script(_COUNT_LUA)
        return int(self._conn.call(lambda: script([self.redis_key]), "count"))

    def try_acquire(self) -> str | None:
        """Take a slot if one is free now; return its token or None."""
        token = new_id()
        return token if self._take(token, self.limit) else None

    def acquire(
        self, timeout_s: float | None = None, *, limit: int | None = None
    ) -> str:
        """Take a slot, polling up to ``timeout_s``; return its token.

        ``limit`` caps this acquire alone (None: the semaphore's ``limit``):
        it is granted while fewer live slots than that are taken, by any
        handle on the key.
        """
        cap = self._cap(limit)
        token = new_id()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        pause = _POLL_FIRST_S
        while not self._take(token, cap):
            left = _left(deadline)
            if left is not None and left <= 0:
                raise SlotUnavailable(
                    self.key, cap, timeout_s, blocking_loop=_on_a_loop()
                )
            time.sleep(_pause(pause, left))
            pause = min(pause * 2, _POLL_MAX_S)
        return token

    async def aacquire(
        self, timeout_s: float | None = None, *, limit: int | None = None
    ) -> str:
        """Async form of :meth:`acquire`."""
        cap = self._cap(limit)
        token = new_id()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        pause = _POLL_FIRST_S
        try:
            while not await self._atake(token, cap):
                left = _left(deadline)
                if left is not None and left <= 0:
                    raise SlotUnavailable(self.key, cap, timeout_s)
                await asyncio.sleep(_pause(pause, left))
                pause = min(pause * 2, _POLL_MAX_S)
        except asyncio.CancelledError:
            # The take may have run on the server before the cancel landed.
            await asyncio.shield(self.arelease(token))
            raise
        return token

    def release(self, token: str) -> None:
        """Give the slot back (idempotent); never raises StoreUnavailable.

        When Redis cannot take the release, it is retried in the background
        until Redis answers (``connections.retries``); the slot's lease
        frees it in the end in any case. A release interrupted on its way
        (KeyboardInterrupt, a green-thread timeout) is queued the same way
        before the interruption goes on.
        """
        try:
            self._release(token)
        except StoreUnavailable as exc:
            self._release_later(token, exc)
        except BaseException as exc:
            self._cut_off(token, exc)
            raise

    async def arelease(self, token: str) -> None:
        """Async form of :meth:`release`.

        A release cancelled on its way may not have reached Redis: it is
        queued for the background retries, then the cancellation goes on.
        Shield the call (``asyncio.shield``) to have it finish at once.
        """
        script = self._conn.ascript(_RELEASE_LUA)
        try:
            await self._conn.acall(lambda: script([self.redis_key], [token]), "release")
        except StoreUnavailable as exc:
            self._release_later(token, exc)
        except BaseException as exc:
            self._cut_off(token, exc)
            raise

    def _release(self, token: str) -> None:
        script = self._conn.script(_RELEASE_LUA)
        self._conn.call(lambda: script([self.redis_key], [token]), "release")

    def _queue_release(self, token: str) -> None:
        """Have the background retries give the slot back (idempotent)."""
        self._conn.retries.add(
            f"slot:{self.redis_key}:{token}", lambda: self._release(token)
        )

    def _cut_off(self, token: str, exc: BaseException) -> None:
        """Queue a release that a cancellation or interruption cut off."""
        if isinstance(exc, Exception):
            return  # a plain error: the caller logs it
        self._queue_release(token)
        logger.debug(
            "giving back a slot of the cap on %r was cut off (%s); it is "
            "given back in the background",
            self.key,
            type(exc).__name__,
        )

    def _release_later(
        self, token: str, exc: StoreUnavailable, *, warn: bool = True
    ) -> None:
        """Queue a release that could not reach Redis; warn once an outage."""
        self._queue_release(token)
        if not warn:
            return
        log = logger.debug if self._warned else logger.warning
        self._warned = True
        log(
            "could not give back a slot of the cap on %r (%s); it is given "
            "back once Redis answers, at the latest when its lease ends in "
            "%s s",
            self.key,
            exc.cause or exc,
            self.lease_s,
        )

    def renew(self, token: str) -> bool:
        """Make the slot's lease end ``lease_s`` from now; False if it is gone."""
        script = self._conn.script(_RENEW_LUA)
        args: list[str | int] = [token, self._lease_ms]
        return bool(self._conn.call(lambda: script([self.redis_key], args), "renew"))

    async def arenew(self, token: str) -> bool:
        """Async form of :meth:`renew`."""
        script = self._conn.ascript(_RENEW_LUA)
        args: list[str | int] = [token, self._lease_ms]
        reply = await self._conn.acall(lambda: script([self.redis_key], args), "renew")
        return bool(reply)

    def _take(self, token: str, limit: int) -> bool:
        """Try for a slot once; a failed try is undone once Redis answers."""
        script = self._conn.script(_ACQUIRE_LUA)
        args: list[str | int] = [token, limit, self._lease_ms]
        try:
            reply = self._conn.call(lambda: script([self.redis_key], args), "acquire")
        except StoreUnavailable as exc:
            # A timed-out try may still run on the server: give its slot back.
            self._release_later(token, exc, warn=False)
            raise
        self._warned = False
        return bool(reply)

    async def _atake(self, token: str, limit: int) -> bool:
        script = self._conn.ascript(_ACQUIRE_LUA)
        args: list[str | int] = [token, limit, self._lease_ms]
        try:
            reply = await self._conn.acall(
                lambda: script([self.redis_key], args), "acquire"
            )
        except StoreUnavailable as exc:
            self._release_later(token, exc, warn=False)
            raise
        self._warned = False
        return bool(reply)


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def _pause(pause: float, left: float | None) -> float:
    jittered = pause * random.uniform(0.5, 1.5)
    return jittered if left is None else max(0.0, min(jittered, left))


_NOW_LUA: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
"""

# KEYS: slots.  ARGV: token, limit, lease_ms.  Returns 1 when the slot is held.
_ACQUIRE_LUA: Final = (
    _NOW_LUA
    + """
local lease = tonumber(ARGV[3])
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not held and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
if redis.call('PTTL', KEYS[1]) < lease then
  redis.call('PEXPIRE', KEYS[1], lease)
end
return 1
"""
)

# KEYS: slots.  ARGV: token, lease_ms.  Returns 1 when a live slot was renewed.
_RENEW_LUA: Final = (
    _NOW_LUA
    + """
local lease = tonumber(ARGV[2])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', now + lease, ARGV[1])
if redis.call('PTTL', KEYS[1]) < lease then
  redis.call('PEXPIRE', KEYS[1], lease)
end
return 1
"""
)

# KEYS: slots.  ARGV: token.
_RELEASE_LUA: Final = "return redis.call('ZREM', KEYS[1], ARGV[1])"

# KEYS: slots.  Returns the number of live slots.
_COUNT_LUA: Final = _NOW_LUA + "return redis.call('ZCARD', KEYS[1])"


def _on_a_loop() -> bool:
    """Whether this thread runs an event loop (a blocking wait here stalls it)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
