"""Spend records as a JSONL trace file, one JSON object per line."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path

from governor.spend._record import SpendDataError, SpendRecord
from governor.spend._store import (
    Filters,
    check_bounds,
    check_filters,
    in_range,
    matches,
)

__all__ = ["JsonlSpendStore"]


class JsonlSpendStore:
    """Spend records appended to a JSONL file (the trace format of ``docs/reports.md``).

    Writes append whole lines under a lock, so one process's threads never
    interleave; other processes should write their own files. Unlike the
    SQLite and Redis stores, a repeated ``call_id`` is appended again. A query
    reads the whole file and yields the records sorted by time.

    Args:
        path: the file; missing parent folders are created on first write.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def record(self, rec: SpendRecord) -> None:
        """Append one record."""
        self.record_many((rec,))

    def record_many(self, recs: Iterable[SpendRecord]) -> None:
        """Append several records with one write."""
        text = "".join(
            json.dumps(rec.to_json_dict(), separators=(",", ":")) + "\n" for rec in recs
        )
        if not text:
            return
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(text)

    def query(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        filters: Filters | None = None,
    ) -> Iterator[SpendRecord]:
        """Yield matching records in time order; see :class:`SpendStore`.

        Raises:
            SpendDataError: a line is not a valid record (the message names it).
        """
        check_bounds(since, until)
        wanted = check_filters(filters)
        found = [
            rec
            for rec in self._read()
            if in_range(rec, since, until) and matches(rec, wanted)
        ]
        found.sort(key=lambda rec: rec.ts)
        return iter(found)

    def _read(self) -> Iterator[SpendRecord]:
        if not self.path.exists():
            return
        with self.path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    yield SpendRecord.from_json_dict(json.loads(line))
                except (ValueError, SpendDataError) as exc:
                    raise SpendDataError(f"{self.path}:{number}: {exc}") from exc

    def close(self) -> None:
        """Nothing to release; present for symmetry with the other stores."""

    def __enter__(self) -> JsonlSpendStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
