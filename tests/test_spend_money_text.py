"""Every spend store writes money as plain decimal text and reads exponents."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import redis

from governor.spend import (
    JsonlSpendStore,
    RedisSpendStore,
    SpendRecord,
    SQLiteSpendStore,
    summarize,
)

pytest_plugins = ["_redis_fixtures"]

T0 = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
# str() writes these as "1.5E-7" and "1E+2".
TINY, ROUND = Decimal("1.5E-7"), Decimal("1E+2")


def rec(call_id: str = "call-0") -> SpendRecord:
    """A call whose cost and saving str() would write in exponent form."""
    return SpendRecord(
        ts=T0,
        task_id="task-0",
        call_id=call_id,
        model="gpt-4o-mini",
        cost_usd=TINY,
        saved_usd=ROUND,
    )


def test_record_json_form_is_plain() -> None:
    """SpendRecord.to_json_dict writes "0.00000015" and "100"."""
    data = rec().to_json_dict()
    assert (data["cost_usd"], data["saved_usd"]) == ("0.00000015", "100")


def test_jsonl_store_writes_plain_money(tmp_path: Path) -> None:
    """A spend JSONL line holds plain decimal strings, read back exactly."""
    store = JsonlSpendStore(tmp_path / "spend.jsonl")
    store.record(rec())
    line = json.loads(store.path.read_text())
    assert (line["cost_usd"], line["saved_usd"]) == ("0.00000015", "100")
    (back,) = store.query()
    assert (back.cost_usd, back.saved_usd) == (TINY, ROUND)


def test_sqlite_store_writes_plain_money(tmp_path: Path) -> None:
    """The SQLite columns hold plain decimal text."""
    path = tmp_path / "spend.sqlite3"
    with SQLiteSpendStore(path) as store:
        store.record(rec())
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT cost_usd, saved_usd FROM spend").fetchone()
    assert row == ("0.00000015", "100")


def test_redis_store_writes_plain_money(redis_url: str, redis_prefix: str) -> None:
    """The Redis hash holds the record's JSON with plain decimal strings."""
    client = redis.Redis.from_url(redis_url)
    try:
        RedisSpendStore(client, prefix=redis_prefix).record(rec())
        raw = client.hget(f"{redis_prefix}{{spend}}:h", "call-0")
    finally:
        client.close()
    assert raw is not None
    data = json.loads(raw)
    assert (data["cost_usd"], data["saved_usd"]) == ("0.00000015", "100")


def test_stores_read_money_written_in_exponent_form(tmp_path: Path) -> None:
    """Records written by older versions ("1.5E-7", "1E+2") read exactly."""
    jsonl = tmp_path / "old.jsonl"
    old = rec().to_json_dict() | {"cost_usd": "1.5E-7", "saved_usd": "1E+2"}
    jsonl.write_text(json.dumps(old) + "\n")
    (from_jsonl,) = JsonlSpendStore(jsonl).query()
    path = tmp_path / "old.sqlite3"
    with SQLiteSpendStore(path) as store:
        store.record(rec())
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE spend SET cost_usd = '1.5E-7', saved_usd = '1E+2'")
    with SQLiteSpendStore(path) as store:
        (from_sqlite,) = store.query()
    for back in (from_jsonl, from_sqlite):
        assert (back.cost_usd, back.saved_usd) == (TINY, ROUND)


def test_summary_json_is_plain() -> None:
    """Totals.to_json_dict, which --format json prints, writes plain text."""
    total = summarize([rec("a"), rec("b")], ["team"]).total.to_json_dict()
    assert (total["cost_usd"], total["saved_usd"]) == ("0.00000030", "200")
