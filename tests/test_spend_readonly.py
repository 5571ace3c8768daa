"""Readers never write a spend store; bad flags, latencies and versions are
named; a newer schema is refused; JSONL is known by its name in any case."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from governor import Governor, Policy
from governor._errors import ConfigError
from governor.cli import main
from governor.spend import (
    JsonlSpendStore,
    SpendDataError,
    SpendRecord,
    SQLiteSpendStore,
    open_store,
)

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)

# The spend table of schema version 1 (before org and the usage parts).
_V1_DDL = """
CREATE TABLE spend (
    id INTEGER PRIMARY KEY,
    ts_us INTEGER NOT NULL,
    task_id TEXT NOT NULL,
    call_id TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    provider TEXT,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cache_read_tokens INTEGER NOT NULL,
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
    tags TEXT NOT NULL
);
CREATE INDEX spend_ts ON spend (ts_us);
PRAGMA user_version=1;
"""
_V1_INSERT = (
    "INSERT INTO spend (ts_us, task_id, call_id, model, provider, input_tokens, "
    "output_tokens, cache_read_tokens, cost_usd, cost_estimated, cache_hit, "
    "saved_usd, outcome, stop_reason, latency_s, team, feature, environment, "
    "user, session, tags) VALUES (?, 'task-0', ?, 'gpt-4o', 'openai', 10, 2, 0, "
    "'0.001', 0, 0, '0', 'ok', NULL, 0.5, 'search', NULL, 'prod', NULL, NULL, "
    "'{}')"
)


def record(i: int, **changes: Any) -> SpendRecord:
    """Call i of team search, a thousandth of a dollar."""
    values: dict[str, Any] = {
        "ts": T0 + timedelta(minutes=i),
        "task_id": "task-0",
        "call_id": f"call-{i}",
        "model": "gpt-4o-mini",
        "cost_usd": Decimal("0.001"),
        "team": "search",
    }
    return SpendRecord(**(values | changes))


def json_line(**changes: Any) -> str:
    """One spend JSONL line, as the governor writes it, with ``changes``."""
    return json.dumps(record(0).to_json_dict() | changes) + "\n"


def sqlite_store(path: Path, calls: int = 2) -> Path:
    """A SQLite spend store holding ``calls`` calls, closed (its WAL folded in)."""
    with SQLiteSpendStore(path) as store:
        store.record_many(record(i) for i in range(calls))
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        found: int = conn.execute("PRAGMA user_version").fetchone()[0]
    conn.close()
    return found


def set_user_version(path: Path, version: int) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version={version}")
    conn.close()


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def refuse_writes(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Call it to open every SQLite file opened by path read-only (``mode=ro``)
    from then on, as a file the user may not write: any write is "attempt to
    write a readonly database"."""
    real: Callable[..., sqlite3.Connection] = sqlite3.connect

    def read_only(database: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        if not kwargs.get("uri"):
            database = f"{Path(database).resolve().as_uri()}?mode=ro"
            kwargs["uri"] = True
        return real(database, *args, **kwargs)

    def refuse() -> None:
        monkeypatch.setattr(sqlite3, "connect", read_only)

    return refuse


@contextmanager
def immutable(path: Path) -> Iterator[None]:
    """``chattr +i``: not even root may write ``path`` (a file or a folder)."""
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("no chattr here")
    made = subprocess.run([chattr, "+i", str(path)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"chattr +i needs root on a file system that has it: {made}")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


# -- B. readers never write -----------------------------------------------------


def test_report_reads_a_store_it_may_not_write(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    refuse_writes: Callable[[], None],
) -> None:
    """A report and a replay read a file they may not write, as sqlite3 does."""
    path = sqlite_store(tmp_path / "spend.sqlite3", calls=3)
    refuse_writes()
    code, out, err = run(capsys, "report", "--db", str(path), "--format", "json")
    assert (code, err) == (0, "")
    assert json.loads(out)["total"]["calls"] == 3
    code, out, err = run(capsys, "replay", "--db", str(path), "--policy", "default")
    assert (code, err) == (0, "")
    assert out.startswith("1 tasks replayed")


def test_an_immutable_store_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The trial's case: a file chattr +i, in a folder the reader may write."""
    path = sqlite_store(tmp_path / "spend.sqlite3", calls=3)
    with immutable(path):
        code, out, err = run(capsys, "report", "--db", str(path), "--format", "json")
    assert (code, err) == (0, "")
    assert json.loads(out)["total"]["calls"] == 3


def test_a_store_in_a_read_only_folder_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A WAL file alone in a folder the reader may not write (where SQLite
    cannot make its -shm file) reads as it stands."""
    folder = tmp_path / "shared"
    folder.mkdir()
    path = sqlite_store(folder / "spend.sqlite3", calls=3)
    assert sorted(p.name for p in folder.iterdir()) == ["spend.sqlite3"]
    with immutable(folder):
        code, out, err = run(capsys, "report", "--db", str(path), "--format", "json")
    assert (code, err) == (0, "")
    assert json.loads(out)["total"]["calls"] == 3


def test_a_read_only_folder_with_a_write_ahead_log_is_not_called_no_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With calls still in a -wal file and no -shm file, SQLite cannot read
    it there: the message says why, not that it is no spend store."""
    live = sqlite_store(tmp_path / "live.sqlite3")
    writer = sqlite3.connect(live)
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("UPDATE spend SET team = 'ads'")
    writer.commit()
    folder = tmp_path / "copy"
    folder.mkdir()
    shutil.copy(live, folder / "spend.sqlite3")
    shutil.copy(f"{live}-wal", folder / "spend.sqlite3-wal")
    writer.close()
    path = folder / "spend.sqlite3"
    with immutable(folder):
        code, _, err = run(capsys, "report", "--db", str(path))
    assert code == 1
    assert f"cannot read the spend store {path} (unable to open database file)" in err
    assert "-wal" in err
    assert "not a SQLite spend store" not in err


def test_reading_an_older_file_changes_nothing(tmp_path: Path) -> None:
    """A file of schema 1 reads its missing columns as unset or 0, filters on
    them, and is left byte for byte as it was (no ALTER, no user_version)."""
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript(_V1_DDL)
        conn.executemany(
            _V1_INSERT, [(1_796_117_415_000_000 + i, f"old-{i}") for i in range(2)]
        )
    conn.close()
    before = digest(path)
    store = open_store(path, existing=True)
    try:
        found = list(store.query())
        unset = [r.call_id for r in store.query(filters={"org": None})]
        acme = list(store.query(filters={"org": "acme"}))
    finally:
        store.close()
    assert [(r.call_id, r.org, r.cache_write_tokens) for r in found] == [
        ("old-0", None, 0),
        ("old-1", None, 0),
    ]
    assert (unset, acme) == (["old-0", "old-1"], [])
    assert (digest(path), user_version(path)) == (before, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.sqlite3"]


def test_a_store_opened_to_read_does_not_record(tmp_path: Path) -> None:
    path = sqlite_store(tmp_path / "spend.sqlite3")
    store = open_store(path, existing=True)
    with pytest.raises(ConfigError, match="opened read-only"):
        store.record(record(9))
    store.close()


# -- C. flags and latency are checked --------------------------------------------


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"cache_hit": "false"}, "cache_hit must be True or False"),
        ({"cost_estimated": 1}, "cost_estimated must be True or False"),
        ({"cache_hit": None}, "cache_hit must be True or False"),
        ({"latency_s": "slow"}, "latency_s must be a number of seconds"),
        ({"latency_s": True}, "latency_s must be a number of seconds"),
        ({"latency_s": -1.5}, "latency_s must be a finite, non-negative"),
        ({"v": True}, "unknown spend record version True"),
    ],
)
def test_a_bad_flag_latency_or_version_names_its_line(
    changes: dict[str, Any], said: str, tmp_path: Path
) -> None:
    path = tmp_path / "spend.jsonl"
    path.write_text(json_line() + json_line(call_id="call-1", **changes))
    with pytest.raises(SpendDataError) as refused:
        list(JsonlSpendStore(path).query())
    assert str(refused.value).startswith(f"{path}:2: ")
    assert said in str(refused.value)


def test_report_and_replay_refuse_a_string_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The trial's line: the report's JSON error names it (no TypeError), and
    replay refuses it too rather than reading it."""
    path = tmp_path / "bool.jsonl"
    path.write_text(json_line(cache_hit="false"))
    code, out, _ = run(capsys, "report", "--db", str(path), "--format", "json")
    error = json.loads(out)["error"]
    assert (code, error["code"]) == (1, "spend_data_invalid")
    assert error["message"].startswith(f"{path}:1: malformed spend record: ")
    assert "SpendRecord.cache_hit must be True or False" in error["message"]
    code, _, err = run(capsys, "replay", "--db", str(path), "--policy", "default")
    assert code == 1
    assert "cache_hit must be True or False" in err


def test_a_record_is_built_with_real_flags_and_latency_only() -> None:
    with pytest.raises(TypeError, match="cache_hit must be True or False"):
        record(0, cache_hit="false")
    with pytest.raises(TypeError, match="latency_s must be a number"):
        record(0, latency_s="slow")
    with pytest.raises(ValueError, match="latency_s must be a finite"):
        record(0, latency_s=float("nan"))
    assert record(0, latency_s=2).latency_s == 2.0


@pytest.mark.parametrize(
    ("column", "value", "said"),
    [
        ("cache_hit", "yes", "cache_hit must be 0 or 1 (false or true), got the str"),
        ("cache_hit", 2, "cache_hit must be 0 or 1 (false or true), got the int 2"),
        ("cost_estimated", "no", "cost_estimated must be 0 or 1"),
        ("latency_s", "slow", "latency_s must be a number of seconds"),
    ],
)
def test_a_bad_sqlite_flag_or_latency_is_named(
    column: str, value: object, said: str, tmp_path: Path
) -> None:
    path = sqlite_store(tmp_path / "spend.sqlite3")
    with sqlite3.connect(path) as conn:
        conn.execute(
            f"UPDATE spend SET {column} = ? WHERE call_id = 'call-1'", (value,)
        )
    conn.close()
    with SQLiteSpendStore(path) as store, pytest.raises(SpendDataError) as refused:
        list(store.query())
    assert str(refused.value).startswith(f"{path}: spend row 2 (call 'call-1'): ")
    assert said in str(refused.value)


# -- D. a newer schema is refused --------------------------------------------------


def test_report_refuses_a_newer_schema_and_leaves_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = sqlite_store(tmp_path / "spend.sqlite3")
    set_user_version(path, 99)
    before = digest(path)
    code, _, err = run(capsys, "report", "--db", str(path))
    assert code == 1
    assert f"spend store {path} has schema version 99" in err
    assert "newer than version 3" in err
    assert "Upgrade llm-governor" in err
    assert (user_version(path), digest(path)) == (99, before)


def test_a_writer_refuses_a_newer_schema(tmp_path: Path) -> None:
    """A governor recording to it would set its version back to 3."""
    path = sqlite_store(tmp_path / "spend.sqlite3")
    set_user_version(path, 4)
    with pytest.raises(
        ConfigError, match=r"has schema version 4 \(PRAGMA user_version\), newer than"
    ):
        SQLiteSpendStore(path)
    with pytest.raises(ConfigError, match="Upgrade llm-governor"):
        Governor(Policy(), spend=str(path))
    assert user_version(path) == 4


# -- E. JSONL by its name, in any case ---------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("spend.jsonl", "plain"),
        ("spend.JSONL", "plain"),
        ("spend.ndjson", "plain"),
        ("spend.NDJson", "plain"),
        ("spend.jsonl.gz", "gzip"),
        ("spend.JSONL.GZ", "gzip"),
        ("spend.ndjson.gz", "gzip"),
        ("spend.sqlite3", None),
        ("spend.json", None),
        ("jsonl", None),
    ],
)
def test_jsonl_kind(name: str, kind: str | None) -> None:
    from governor.spend._jsonl import jsonl_kind

    assert jsonl_kind(name) == kind


@pytest.mark.parametrize("name", ["spend.JSONL", "spend.ndjson"])
def test_a_governor_records_jsonl_under_any_case(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    store = open_store(path)
    assert isinstance(store, JsonlSpendStore)
    store.record(record(0))
    assert json.loads(path.read_text())["call_id"] == "call-0"


def test_a_compressed_upper_case_name_is_read_not_written(tmp_path: Path) -> None:
    path = tmp_path / "spend.JSONL.GZ"
    assert isinstance(open_store(path, existing=True), JsonlSpendStore)
    with pytest.raises(ConfigError, match="gzip-compressed JSONL"):
        open_store(path)


@pytest.mark.parametrize("name", ["spend.JSONL", "spend.ndjson"])
def test_report_reads_jsonl_under_any_name(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / name
    path.write_text(json_line())
    code, out, err = run(capsys, "report", "--db", str(path), "--format", "json")
    assert (code, err) == (0, "")
    assert json.loads(out)["total"]["calls"] == 1
    path.write_text("")
    code, out, _ = run(capsys, "report", "--db", str(path), "--by", "team")
    assert (code, out.splitlines()[0]) == (0, f"Spend in {path}: no calls")
