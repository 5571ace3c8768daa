"""A spend store that keeps its records in a list, for tests that read them."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any

from governor.spend import SpendRecord


class ListSpendStore:
    """Keeps every record it is given, in order; ``records`` reads them."""

    def __init__(self) -> None:
        self.records: list[SpendRecord] = []
        self._lock = threading.Lock()

    def record(self, rec: SpendRecord) -> None:
        with self._lock:
            self.records.append(rec)

    def record_many(self, recs: Iterable[SpendRecord]) -> None:
        with self._lock:
            self.records.extend(recs)

    def query(self, *args: Any, **kwargs: Any) -> Iterator[SpendRecord]:
        return iter(list(self.records))
