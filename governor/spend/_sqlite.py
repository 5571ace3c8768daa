"""Spend records in an embedded SQLite file (the default store)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from governor._errors import decimal_text
from governor.spend._record import USAGE_PART_FIELDS, SpendDataError, SpendRecord
from governor.spend._store import (
    TAG_PREFIX,
    Filters,
    check_bounds,
    check_filters,
    matches,
)
from governor.spend._time import from_us, to_us

__all__ = ["SQLiteSpendStore"]

# Version 2 added the org column, version 3 the usage part columns (cache
# writes, reasoning, audio); older files gain them when opened.
_SCHEMA_VERSION = 3
_COLUMNS = (
    "ts_us",
    "task_id",
    "call_id",
    "model",
    "provider",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    *USAGE_PART_FIELDS,
    "cost_usd",
    "cost_estimated",
    "cache_hit",
    "saved_usd",
    "outcome",
    "stop_reason",
    "latency_s",
    "team",
    "feature",
    "environment",
    "user",
    "session",
    "org",
    "tags",
)
# Money is TEXT holding the exact Decimal: SQL never sums it, Python does.
_DDL = """
CREATE TABLE IF NOT EXISTS spend (
    id INTEGER PRIMARY KEY,
    ts_us INTEGER NOT NULL,
    task_id TEXT NOT NULL,
    call_id TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    provider TEXT,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cache_read_tokens INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0,
    audio_input_tokens INTEGER NOT NULL DEFAULT 0,
    audio_output_tokens INTEGER NOT NULL DEFAULT 0,
    audio_cache_read_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd TEXT NOT NULL,
    cost_estimated INTEGER NOT NULL,
    cache_hit INTEGER NOT NULL,
    saved_usd TEXT NOT NULL,
    outcome TEXT NOT NULL,
    stop_reason TEXT,
    latency_s REAL NOT NULL,
    team TEXT,
    feature TEXT,
    environment TEXT,
    user TEXT,
    session TEXT,
    org TEXT,
    tags TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS spend_ts ON spend (ts_us);
"""
# Columns added after version 1, with their types, in the order they are
# appended to an older file's table. Each is nullable or has a default, so the
# rows already there keep their values and read the new column as unset or 0.
_ADDED_COLUMNS = (
    *((name, "INTEGER NOT NULL DEFAULT 0") for name in USAGE_PART_FIELDS),
    ("org", "TEXT"),
)
_INSERT = (
    f"INSERT OR IGNORE INTO spend ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _COLUMNS)})"
)
_BATCH_ROWS = 500
_SETUP_RETRY_S = 0.02


def _row(rec: SpendRecord) -> tuple[Any, ...]:
    return (
        to_us(rec.ts),
        rec.task_id,
        rec.call_id,
        rec.model,
        rec.provider,
        rec.input_tokens,
        rec.output_tokens,
        rec.cache_read_tokens,
        *(getattr(rec, name) for name in USAGE_PART_FIELDS),
        decimal_text(rec.cost_usd),
        int(rec.cost_estimated),
        int(rec.cache_hit),
        decimal_text(rec.saved_usd),
        rec.outcome,
        rec.stop_reason,
        rec.latency_s,
        rec.team,
        rec.feature,
        rec.environment,
        rec.user,
        rec.session,
        rec.org,
        json.dumps(dict(rec.tags), sort_keys=True),
    )


def _money(row: sqlite3.Row, column: str) -> Decimal:
    try:
        return Decimal(row[column])
    except (TypeError, ArithmeticError):
        raise ValueError(
            f"{column} must be a decimal amount such as '0.00036', got {row[column]!r}"
        ) from None


def _record(row: sqlite3.Row) -> SpendRecord:
    return SpendRecord(
        ts=from_us(row["ts_us"]),
        task_id=row["task_id"],
        call_id=row["call_id"],
        model=row["model"],
        provider=row["provider"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        cache_read_tokens=row["cache_read_tokens"],
        **{name: row[name] for name in USAGE_PART_FIELDS},
        cost_usd=_money(row, "cost_usd"),
        cost_estimated=bool(row["cost_estimated"]),
        cache_hit=bool(row["cache_hit"]),
        saved_usd=_money(row, "saved_usd"),
        outcome=row["outcome"],
        stop_reason=row["stop_reason"],
        latency_s=row["latency_s"],
        team=row["team"],
        feature=row["feature"],
        environment=row["environment"],
        user=row["user"],
        session=row["session"],
        org=row["org"],
        tags=json.loads(row["tags"]),
    )


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Bring a spend table made by an older schema up to date, keeping its rows.

    Each column added since version 1 is nullable or has a default, so
    ``ALTER TABLE ... ADD COLUMN`` fills it with NULL or 0 for the rows
    already there; no row is rewritten or dropped.
    """
    for name, kind in _ADDED_COLUMNS:
        if name in _columns(conn):
            continue
        try:
            conn.execute(f'ALTER TABLE spend ADD COLUMN "{name}" {kind}')
        except sqlite3.OperationalError:
            # Another process opening the same old file may have added it first.
            if name not in _columns(conn):
                raise


def _columns(conn: sqlite3.Connection) -> set[str]:
    """The names of the spend table's columns."""
    return {row["name"] for row in conn.execute("PRAGMA table_info(spend)")}


class SQLiteSpendStore:
    """Spend records in one SQLite file, in WAL mode.

    Commits do not wait for the disk (``synchronous=NORMAL``): a power loss
    may drop the last records, never corrupt the file.

    Thread-safe: writes share one connection behind a lock; each query reads
    through its own connection, so a long report does not block recording.
    Several processes may write the same file (SQLite locks it; writers wait
    up to ``busy_timeout_s``). A ``call_id`` recorded twice keeps the first.

    Args:
        path: the database file; missing parent folders are created.
        busy_timeout_s: how long a write waits for another process's lock.
    """

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._conn = self._connect()
        deadline = time.monotonic() + busy_timeout_s
        while True:
            try:
                self._set_up()
                return
            except sqlite3.OperationalError as exc:
                # Switching a new file to WAL does not wait on SQLite's busy
                # handler: several processes creating one file can collide.
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(_SETUP_RETRY_S)

    def _set_up(self) -> None:
        with self._lock, self._conn:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(_DDL)
            _add_missing_columns(self._conn)
            self._conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self._timeout_s, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row
        # WAL with synchronous=NORMAL never corrupts the file; an OS crash may
        # lose the last commits, which spend history can afford: a commit
        # costs about 30 us instead of 240 us with an fsync each.
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def record(self, rec: SpendRecord) -> None:
        """Store one record."""
        self.record_many((rec,))

    def record_many(self, recs: Iterable[SpendRecord]) -> None:
        """Store several records in one transaction."""
        rows = [_row(rec) for rec in recs]
        with self._lock, self._conn:
            self._conn.executemany(_INSERT, rows)

    def query(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        filters: Filters | None = None,
    ) -> Iterator[SpendRecord]:
        """Yield matching records in time order; see :class:`SpendStore`.

        Raises:
            SpendDataError: a stored record is not valid (the message names it).
        """
        check_bounds(since, until)
        wanted = check_filters(filters)
        sql, params = self._select(since, until, wanted)
        tag_filters = {k: v for k, v in wanted.items() if k.startswith(TAG_PREFIX)}
        return self._rows(sql, params, tag_filters)

    @staticmethod
    def _select(
        since: datetime | None,
        until: datetime | None,
        wanted: dict[str, str | None],
    ) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if since is not None:
            clauses.append("ts_us >= ?")
            params.append(to_us(since))
        if until is not None:
            clauses.append("ts_us < ?")
            params.append(to_us(until))
        for key, value in wanted.items():
            if key.startswith(TAG_PREFIX):
                continue
            # Column names come from FILTER_FIELDS (checked), never from input.
            if value is None:  # unset, as a report groups it: null or blank
                clauses.append(f'("{key}" IS NULL OR trim("{key}") = \'\')')
            else:
                clauses.append(f'"{key}" = ?')
                params.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        return f"SELECT * FROM spend{where} ORDER BY ts_us, id", params

    def _rows(
        self, sql: str, params: list[Any], tag_filters: dict[str, str | None]
    ) -> Iterator[SpendRecord]:
        conn = self._connect()
        try:
            cursor = conn.execute(sql, params)
            while batch := cursor.fetchmany(_BATCH_ROWS):
                for row in batch:
                    rec = self._parse(row)
                    if matches(rec, tag_filters):
                        yield rec
        finally:
            conn.close()

    def _parse(self, row: sqlite3.Row) -> SpendRecord:
        try:
            return _record(row)
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise SpendDataError(
                f"{self.path}: spend row {row['id']} (call {row['call_id']!r}): {exc}"
            ) from exc

    def close(self) -> None:
        """Close the write connection."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SQLiteSpendStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
