"""Spend records in an embedded SQLite file (the default store)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Iterable, Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from governor._errors import ConfigError, decimal_text
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
# writes, reasoning, audio); older files gain them when opened to write, and
# read them as unset when opened to read. A newer version is refused.
SCHEMA_VERSION = 3
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
# Columns added after version 1, with their types and the value an older
# file's rows read as, in the order they are appended to an older file's
# table. Each is nullable or has a default, so the rows already there keep
# their values and read the new column as unset or 0.
_ADDED_COLUMNS = (
    *((name, "INTEGER NOT NULL DEFAULT 0", "0") for name in USAGE_PART_FIELDS),
    ("org", "TEXT", "NULL"),
)
_REQUIRED_COLUMNS = frozenset(_COLUMNS) - {name for name, _, _ in _ADDED_COLUMNS}
_SPEND_TABLE = "SELECT 1 FROM sqlite_master WHERE type='table' AND name='spend'"
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


def _flag(row: sqlite3.Row, column: str) -> bool:
    """A flag column: 0 or 1 as the governor writes it, never text or 2."""
    value = row[column]
    if type(value) is int and value in (0, 1):
        return bool(value)
    raise ValueError(
        f"{column} must be 0 or 1 (false or true), got {_type_of(value)}{value!r}"
    )


def _type_of(value: object) -> str:
    """``the str `` before a column value's repr, nothing for NULL (None)."""
    return "" if value is None else f"the {type(value).__name__} "


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
        cost_estimated=_flag(row, "cost_estimated"),
        cache_hit=_flag(row, "cache_hit"),
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
    for name, kind, _ in _ADDED_COLUMNS:
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
    return {row[1] for row in conn.execute("PRAGMA table_info(spend)")}


def check_schema_version(path: Path, conn: sqlite3.Connection) -> None:
    """Refuse a file made by a newer schema than this release knows.

    Neither a reader nor a writer may use it: its columns may mean other
    things, and a writer would set its version back.

    Raises:
        ConfigError: the version is newer (the message says what to do).
    """
    found = conn.execute("PRAGMA user_version").fetchone()[0]
    if found <= SCHEMA_VERSION:
        return
    raise ConfigError(
        f"spend store {path} has schema version {found} (PRAGMA user_version), "
        f"newer than version {SCHEMA_VERSION}, the newest this release of "
        "llm-governor knows: a newer llm-governor wrote it. Upgrade "
        "llm-governor (pip install -U llm-governor) to read or record to it, "
        "or name another file; it was left as it is"
    )


def _read_source(path: Path, conn: sqlite3.Connection) -> str:
    """What a reader selects from: the spend table, or a view of an older
    one that gives the columns it lacks their defaults (0 or NULL).

    Raises:
        SpendDataError: the file is not a SQLite database, holds no spend
            table, or a spend table without the columns of every version.
        ConfigError: a newer schema than this release knows.
    """
    try:
        found = conn.execute(_SPEND_TABLE).fetchone()
    except sqlite3.OperationalError:
        raise  # cannot open or read the file: not about what it holds
    except sqlite3.DatabaseError as exc:
        raise SpendDataError(
            f"{path} is not a SQLite spend store ({exc}); point --db at the file "
            "the governor records to (GOVERNOR_SPEND_DB), or at a spend .jsonl"
        ) from exc
    if found is None:
        raise SpendDataError(
            f"{path} is a SQLite database with no spend table; it was left as "
            "it is. Point --db at the file the governor records to."
        )
    check_schema_version(path, conn)
    columns = _columns(conn)
    lacking = sorted(_REQUIRED_COLUMNS - columns)
    if lacking:
        raise SpendDataError(
            f"{path}: its spend table has no {', '.join(lacking)} column(s), so "
            "it is no governor spend store; point --db at the file the "
            "governor records to"
        )
    if columns.issuperset(_COLUMNS):
        return "spend"
    added = {name: default for name, _, default in _ADDED_COLUMNS}
    chosen = [
        f'"{name}"' if name in columns else f'{added[name]} AS "{name}"'
        for name in _COLUMNS
    ]
    return f"(SELECT id, {', '.join(chosen)} FROM spend)"


def _is_locked(exc: sqlite3.Error) -> bool:
    """Whether SQLite gave up waiting for another connection's lock."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _wal_pending(path: Path) -> bool:
    """Whether ``path`` has a write-ahead log holding data (a ``-wal`` file)."""
    try:
        return Path(f"{path}-wal").stat().st_size > 0
    except OSError:
        return False


class SQLiteSpendStore:
    """Spend records in one SQLite file, in WAL mode.

    Commits do not wait for the disk (``synchronous=NORMAL``): a power loss
    may drop the last records, never corrupt the file.

    Thread-safe: writes share one connection behind a lock; each query reads
    through its own connection, so a long report does not block recording.
    Several processes may write the same file (SQLite locks it; writers wait
    up to ``busy_timeout_s``). A ``call_id`` recorded twice keeps the first.

    With ``read_only`` the store only reads an existing spend file and never
    writes it, nor creates its ``-wal`` and ``-shm`` files where SQLite can
    do without them: a file it may not write (an archive, a folder shared
    read-only) reads as any other, and a file from an older version reads
    the columns it lacks as unset (0 for token counts) without gaining them.
    ``record`` then raises :class:`ConfigError`.

    Args:
        path: the database file; missing parent folders are created (not
            with ``read_only``).
        busy_timeout_s: how long a write waits for another process's lock.
        read_only: open an existing spend file to read it only.

    Raises:
        ConfigError: the file was made by a newer schema than this release
            knows (a newer llm-governor), or SQLite cannot read it
            read-only (a read-only folder where its write-ahead log needs a
            ``-shm`` file), or, with ``read_only``, another process held a
            lock on it for longer than ``busy_timeout_s``.
        SpendDataError: with ``read_only``, the file is not a SQLite
            database or holds no spend table.
        sqlite3.Error: SQLite cannot open or set up the file.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout_s: float = 5.0,
        read_only: bool = False,
    ) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        # The URI query connections open; None for a writable store.
        self._uri: str | None = None
        # What queries select from: the table, or a view of an older one.
        self._source = "spend"
        self._conn: sqlite3.Connection | None = None
        if read_only:
            self._open_to_read()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = self._connect()
        try:
            self._set_up_in_time(self._conn)
        except BaseException:
            self._conn.close()
            raise

    def _set_up_in_time(self, conn: sqlite3.Connection) -> None:
        deadline = time.monotonic() + self._timeout_s
        while True:
            try:
                self._set_up(conn)
                return
            except sqlite3.OperationalError as exc:
                # Switching a new file to WAL does not wait on SQLite's busy
                # handler: several processes creating one file can collide.
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(_SETUP_RETRY_S)

    def _set_up(self, conn: sqlite3.Connection) -> None:
        with self._lock, conn:
            check_schema_version(self.path, conn)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_DDL)
            _add_missing_columns(conn)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _open_to_read(self) -> None:
        """Check the file as a reader, with no write, and pick how to open it."""
        if not self.path.exists():
            raise SpendDataError(
                f"no spend store at {self.path} (no such file); a reader never "
                "creates one: name the file the governor records to "
                "(GOVERNOR_SPEND_DB)"
            )
        self._uri = f"{self.path.resolve().as_uri()}?mode=ro"
        try:
            self._check_readable()
        except sqlite3.OperationalError as exc:
            if _is_locked(exc):
                raise self._locked(exc) from exc
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_CANTOPEN:
                raise
            # A file in WAL mode needs a -shm file, which a read-only folder
            # cannot hold. With no -wal file holding data, the database file
            # is the whole store, so SQLite may read it as immutable.
            if _wal_pending(self.path):
                raise self._unopenable(exc) from exc
            self._uri += "&immutable=1"
            try:
                self._check_readable()
            except sqlite3.OperationalError:
                raise self._unopenable(exc) from exc

    def _check_readable(self) -> None:
        conn = self._connect()
        try:
            self._source = _read_source(self.path, conn)
        finally:
            conn.close()

    def _unopenable(self, exc: sqlite3.Error) -> ConfigError:
        return ConfigError(
            f"cannot read the spend store {self.path} ({exc}): check that the "
            "file can be read; in a folder you cannot write, SQLite reads a "
            "store with a write-ahead log (a -wal file beside it) only when "
            "it finds a -shm file there too: close the governor recording to "
            "it (which folds the log into the file), or copy the file with "
            "its -wal to a folder you can write"
        )

    def _locked(self, exc: sqlite3.Error) -> ConfigError:
        return ConfigError(
            f"cannot read the spend store {self.path}: another process holds a "
            f"lock on it ({exc}, after waiting {self._timeout_s:g} s), such as "
            "a long write or an open exclusive transaction; retry once that "
            "process has finished its write, or wait for it to end"
        )

    def _connect(self) -> sqlite3.Connection:
        if self._uri is not None:
            conn = sqlite3.connect(
                self._uri, uri=True, timeout=self._timeout_s, check_same_thread=False
            )
            conn.row_factory = sqlite3.Row
            return conn
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
        conn = self._conn
        if conn is None:
            raise ConfigError(
                f"spend store {self.path} was opened read-only (to report on "
                "it), so it cannot record; open it with SQLiteSpendStore(path) "
                "or open_store(path) to record to it"
            )
        with self._lock, conn:
            conn.executemany(_INSERT, rows)

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

    def _select(
        self,
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
                # Rows written before names were kept composed (NFC) may
                # hold the decomposed form of the same name.
                forms = list(dict.fromkeys(_forms(value)))
                marks = ", ".join("?" * len(forms))
                clauses.append(f'"{key}" IN ({marks})')
                params.extend(forms)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        return f"SELECT * FROM {self._source}{where} ORDER BY ts_us, id", params

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
        """Close the write connection (a read-only store holds none)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()

    def __enter__(self) -> SQLiteSpendStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _forms(value: str) -> tuple[str, str, str]:
    """``value`` as given and in both Unicode forms (NFC and NFD)."""
    return (
        value,
        unicodedata.normalize("NFC", value),
        unicodedata.normalize("NFD", value),
    )
