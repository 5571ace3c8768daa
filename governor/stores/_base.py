"""The ledger interface every budget store implements.

A ledger keeps, per budget line, a limit, the settled spend and the amount held
by calls in flight, in integer nano-dollars and in tokens. Three steps, each
atomic over every line it names:

* ``reserve``: hold an amount on every line, or on none when any line lacks
  room (the refusal names a line short by its spend alone when there is
  one, else the first line that lacked room);
* ``settle``: replace a hold by the actual spend; idempotent per hold id;
* ``release``: drop a hold without spend.

Holds are leases: a hold not settled or released within its ``ttl_s`` expires
and its room returns, so a crashed worker cannot pin a budget forever.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

__all__ = ["AsyncLedger", "Balance", "Ledger", "Line", "Refusal"]


@dataclass(frozen=True, slots=True)
class Line:
    """One budget to check: a key such as ``"task:ab12"`` and its limits.

    A limit of None means that unit is not limited on this line; spend is
    still recorded against it.
    """

    key: str
    limit_nanos: int | None = None
    limit_tokens: int | None = None
    ttl_s: float | None = None
    """How long the line's counters live after their last change (periods)."""


@dataclass(frozen=True, slots=True)
class Balance:
    """A line's state at one moment."""

    key: str
    limit_nanos: int | None
    limit_tokens: int | None
    spent_nanos: int
    spent_tokens: int
    reserved_nanos: int
    reserved_tokens: int

    @property
    def left_nanos(self) -> int | None:
        """Room left in nano-dollars, or None when unlimited."""
        if self.limit_nanos is None:
            return None
        return self.limit_nanos - self.spent_nanos - self.reserved_nanos

    @property
    def left_tokens(self) -> int | None:
        """Room left in tokens, or None when unlimited."""
        if self.limit_tokens is None:
            return None
        return self.limit_tokens - self.spent_tokens - self.reserved_tokens


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a reservation was refused: the line and unit that lacked room."""

    unit: Literal["usd", "tokens"]
    balance: Balance
    holds_lapse_s: float | None = None
    """Seconds until the latest hold on the line lapses unless renewed (what
    a stopped worker holds comes back by then); None when the store does
    not know."""


@runtime_checkable
class Ledger(Protocol):
    """A synchronous budget store. Implementations must be thread-safe."""

    def reserve(
        self,
        hold_id: str,
        lines: Sequence[Line],
        nanos: int,
        tokens: int,
        ttl_s: float,
    ) -> Refusal | None:
        """Hold ``nanos`` and ``tokens`` on every line, or refuse on all."""
        ...

    def settle(
        self, hold_id: str, keys: Sequence[str], nanos: int, tokens: int
    ) -> None:
        """Record the actual spend on ``keys`` and drop the hold, once per id."""
        ...

    def release(self, hold_id: str) -> None:
        """Drop the hold without recording spend."""
        ...

    def balance(self, key: str) -> Balance | None:
        """Return a line's balance, or None if the store has never seen it."""
        ...


@runtime_checkable
class AsyncLedger(Protocol):
    """The asyncio form of :class:`Ledger`, with the same meaning per method."""

    async def areserve(
        self,
        hold_id: str,
        lines: Sequence[Line],
        nanos: int,
        tokens: int,
        ttl_s: float,
    ) -> Refusal | None:
        """Hold ``nanos`` and ``tokens`` on every line, or refuse on all."""
        ...

    async def asettle(
        self, hold_id: str, keys: Sequence[str], nanos: int, tokens: int
    ) -> None:
        """Record the actual spend on ``keys`` and drop the hold, once per id."""
        ...

    async def arelease(self, hold_id: str) -> None:
        """Drop the hold without recording spend."""
        ...

    async def abalance(self, key: str) -> Balance | None:
        """Return a line's balance, or None if the store has never seen it."""
        ...
