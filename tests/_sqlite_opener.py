"""A worker that opens a new SQLite spend store, for the multi-process test.

Kept apart from the test module so that a fork-server child imports only
the spend store, not the test module's imports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from governor.spend._sqlite import SQLiteSpendStore


def open_new_store(path: Path, barrier: Any, results: Any) -> None:
    """Wait for the others, open the store (creating it), report how it went."""
    barrier.wait()
    try:
        SQLiteSpendStore(path).close()
        results.put("ok")
    except Exception as exc:  # reported to the parent, which asserts
        results.put(repr(exc))
