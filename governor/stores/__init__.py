"""Budget stores: the ledger interface and its implementations.

The Redis store and the semaphores load redis-py on first use, so importing
this package stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from governor.stores._base import AsyncLedger, Balance, Ledger, Line, Refusal
from governor.stores._failover import (
    EVENT_FAIL_CLOSED,
    EVENT_FAIL_OPEN,
    EVENT_RECONCILED,
    EVENT_SETTLE_QUEUED,
    DualLedger,
    FailoverLedger,
)
from governor.stores._memory import MemoryLedger

if TYPE_CHECKING:
    from governor.stores._redis import (
        PoolExhausted,
        RedisConfig,
        RedisConnections,
        RedisLedger,
    )
    from governor.stores._semaphore import (
        LocalSemaphore,
        RedisSemaphore,
        Semaphore,
        SlotUnavailable,
    )

__all__ = [
    "EVENT_FAIL_CLOSED",
    "EVENT_FAIL_OPEN",
    "EVENT_RECONCILED",
    "EVENT_SETTLE_QUEUED",
    "AsyncLedger",
    "Balance",
    "DualLedger",
    "FailoverLedger",
    "Ledger",
    "Line",
    "LocalSemaphore",
    "MemoryLedger",
    "PoolExhausted",
    "RedisConfig",
    "RedisConnections",
    "RedisLedger",
    "RedisSemaphore",
    "Refusal",
    "Semaphore",
    "SlotUnavailable",
]

_LAZY = {
    "PoolExhausted": "_redis",
    "RedisConfig": "_redis",
    "RedisConnections": "_redis",
    "RedisLedger": "_redis",
    "LocalSemaphore": "_semaphore",
    "RedisSemaphore": "_semaphore",
    "Semaphore": "_semaphore",
    "SlotUnavailable": "_semaphore",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'governor.stores' has no attribute {name!r}")
    return getattr(importlib.import_module(f"governor.stores.{module}"), name)
