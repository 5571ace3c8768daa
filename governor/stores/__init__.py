"""Budget stores: the ledger interface and its implementations."""

from governor.stores._base import AsyncLedger, Balance, Ledger, Line, Refusal
from governor.stores._memory import MemoryLedger

__all__ = ["AsyncLedger", "Balance", "Ledger", "Line", "MemoryLedger", "Refusal"]
