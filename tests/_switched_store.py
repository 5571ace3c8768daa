"""A memory ledger standing in for a budget store that a test switches off."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from governor._errors import StoreUnavailable
from governor.stores import Balance, Line, MemoryLedger, Refusal


class SwitchedStore(MemoryLedger):
    """A memory ledger that raises StoreUnavailable while ``down``.

    ``calls`` counts the store operations tried; ``stall_s`` delays async
    settles (a store that hangs).
    """

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.calls = 0
        self.stall_s = 0.0

    def _gate(self) -> None:
        self.calls += 1
        if self.down:
            raise StoreUnavailable("store switched off by the test")

    def reserve(
        self,
        hold_id: str,
        lines: Sequence[Line],
        nanos: int,
        tokens: int,
        ttl_s: float,
    ) -> Refusal | None:
        self._gate()
        return super().reserve(hold_id, lines, nanos, tokens, ttl_s)

    def settle(
        self, hold_id: str, keys: Sequence[str], nanos: int, tokens: int
    ) -> None:
        self._gate()
        super().settle(hold_id, keys, nanos, tokens)

    async def asettle(
        self, hold_id: str, keys: Sequence[str], nanos: int, tokens: int
    ) -> None:
        await asyncio.sleep(self.stall_s)
        self.settle(hold_id, keys, nanos, tokens)

    def release(self, hold_id: str) -> None:
        self._gate()
        super().release(hold_id)

    def balance(self, key: str) -> Balance | None:
        self._gate()
        return super().balance(key)
