"""Spend history: one record per governed call, stores for it, and reports.

The engine records a :class:`SpendRecord` per call into a :class:`SpendStore`
(SQLite by default, Redis for fleets, or a JSONL trace file); ``governor
report`` reads it back. See ``docs/reports.md``.
"""

from governor.spend._aggregate import GROUPINGS, Group, SpendSummary, Totals, summarize
from governor.spend._jsonl import JsonlSpendStore
from governor.spend._open import (
    DEFAULT_SPEND_PATH,
    ENV_SPEND_DB,
    default_spend_target,
    open_store,
)
from governor.spend._record import OUTCOMES, Outcome, SpendDataError, SpendRecord
from governor.spend._redis import RedisSpendStore
from governor.spend._sqlite import SQLiteSpendStore
from governor.spend._store import FILTER_FIELDS, Filters, SpendStore

__all__ = [
    "DEFAULT_SPEND_PATH",
    "ENV_SPEND_DB",
    "FILTER_FIELDS",
    "GROUPINGS",
    "OUTCOMES",
    "Filters",
    "Group",
    "JsonlSpendStore",
    "Outcome",
    "RedisSpendStore",
    "SQLiteSpendStore",
    "SpendDataError",
    "SpendRecord",
    "SpendStore",
    "SpendSummary",
    "Totals",
    "default_spend_target",
    "open_store",
    "summarize",
]
