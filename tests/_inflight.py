"""Counting what runs at once: a stand-in provider, and a counter for blocks."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any


class InFlightProvider:
    """Offline litellm calls that count how many are in flight.

    Unless ``gate`` is open, each call waits for it, so a test holds calls
    in flight as long as it needs them there.
    """

    def __init__(self, *, gated: bool = False) -> None:
        self.now = 0
        self.peak = 0
        self.gate = asyncio.Event()
        self._lock = threading.Lock()
        if not gated:
            self.gate.set()

    async def acompletion(self, **kwargs: Any) -> Any:
        import litellm

        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(0.05)
            await self.gate.wait()
            return await litellm.acompletion(**kwargs)
        finally:
            with self._lock:
                self.now -= 1

    async def reach(self, count: int) -> None:
        """Return once ``count`` calls are in flight (hang guard: 10 s)."""

        async def poll() -> None:
            while self.now != count:
                await asyncio.sleep(0.005)

        await asyncio.wait_for(poll(), 10)


class Peak:
    """Counts how many blocks run at once, and the most that ever did."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Count the block as running while it runs."""
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            yield
        finally:
            with self._lock:
                self.now -= 1
