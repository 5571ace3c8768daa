"""Spend records keep the usage parts a price bills apart (cache writes,
reasoning, audio), so that `governor replay` prices a call as it was billed.

Records written before these parts were kept (JSONL lines without the keys,
SQLite files without the columns) read them as 0, their rows kept.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import litellm
import pytest
import redis

from governor import Governor, Policy
from governor._replay import replay
from governor.adapters.litellm import GovernedLiteLLM
from governor.cli import main
from governor.spend import (
    JsonlSpendStore,
    RedisSpendStore,
    SpendDataError,
    SpendRecord,
    SpendStore,
    SQLiteSpendStore,
)
from governor.spend._record import USAGE_PART_FIELDS
from governor.testing import StubBehaviour, StubServer

pytest_plugins = ["_redis_fixtures"]

T0 = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)

# The usage each model's stub reports, the parts the record must keep, and
# what the call costs at the bundled prices.
CASES: dict[str, tuple[dict[str, Any], dict[str, int], Decimal]] = {
    # 200 uncached at $1/M, 300 cache reads at $0.10/M, 500 cache writes at
    # $1.25/M, 100 output at $5/M.
    "claude-haiku-4-5": (
        {
            "prompt_tokens": 1000,
            "completion_tokens": 100,
            "total_tokens": 1100,
            "cache_read_input_tokens": 300,
            "cache_creation_input_tokens": 500,
        },
        {"cache_read_tokens": 300, "cache_write_tokens": 500},
        Decimal("0.001355"),
    ),
    # 1000 input at $0.05/M, 100 output at $0.20/M, 400 reasoning at $0.50/M.
    "dashscope/qwen-turbo": (
        {
            "prompt_tokens": 1000,
            "completion_tokens": 500,
            "total_tokens": 1500,
            "completion_tokens_details": {"reasoning_tokens": 400},
        },
        {"reasoning_tokens": 400},
        Decimal("0.00027"),
    ),
    # 400 text input at $2.50/M, 600 audio input at $40/M, 100 text output
    # at $10/M, 400 audio output at $80/M.
    "gpt-4o-audio-preview-2024-12-17": (
        {
            "prompt_tokens": 1000,
            "completion_tokens": 500,
            "total_tokens": 1500,
            "prompt_tokens_details": {"audio_tokens": 600},
            "completion_tokens_details": {"audio_tokens": 400},
        },
        {"audio_input_tokens": 600, "audio_output_tokens": 400},
        Decimal("0.058"),
    ),
}
PARTS = (
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "audio_input_tokens",
    "audio_output_tokens",
    "audio_cache_read_tokens",
)


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[StubServer]:
    monkeypatch.setattr(litellm, "suppress_debug_info", True)
    behaviours = {m: StubBehaviour(usage=usage) for m, (usage, _, _) in CASES.items()}
    with StubServer(behaviours) as server:
        yield server


@pytest.fixture(params=["sqlite", "jsonl", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SpendStore]:
    """Each store kind, empty; the Redis one under this test's own key prefix."""
    if request.param == "sqlite":
        sqlite_store = SQLiteSpendStore(tmp_path / "spend.sqlite3")
        yield sqlite_store
        sqlite_store.close()
    elif request.param == "jsonl":
        yield JsonlSpendStore(tmp_path / "spend.jsonl")
    else:
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")
        redis_store = RedisSpendStore(redis.Redis.from_url(url), prefix=prefix)
        yield redis_store
        redis_store.close()


def record_calls(stub: StubServer, spend: SpendStore | Path) -> None:
    """One governed LiteLLM call per model, each in a task named after it."""
    with Governor(Policy(), spend=spend) as gov:
        for model in CASES:
            with gov.task(task_id=model):
                GovernedLiteLLM(gov).completion(
                    model="openai/" + model,
                    api_base=stub.base_url + "/v1",
                    api_key="sk-test",
                    messages=[{"role": "user", "content": "hi"}],
                    max_tokens=600,
                )


def parts_of(rec: SpendRecord) -> dict[str, int]:
    return {name: getattr(rec, name) for name in PARTS if getattr(rec, name)}


def test_each_store_keeps_the_usage_parts_and_replay_prices_them(
    stub: StubServer, store: SpendStore
) -> None:
    """Cache writes, reasoning and audio tokens are recorded, read back and
    replayed under the same policy to exactly the recorded cost."""
    record_calls(stub, store)
    records = list(store.query())
    run = replay(records, Policy())
    assert [(r.task_id, parts_of(r), r.cost_usd) for r in records] == [
        (model, parts, cost) for model, (_, parts, cost) in CASES.items()
    ]
    assert {t: r.cost_usd for t, r in run.tasks.items()} == {
        model: cost for model, (_, _, cost) in CASES.items()
    }


def test_replay_command_prices_the_recorded_parts(
    stub: StubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`governor replay --policy default` gives each task its recorded cost."""
    trace = tmp_path / "spend.jsonl"
    record_calls(stub, trace)
    capsys.readouterr()
    code = main(["replay", "--db", str(trace), "--policy", "default", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert (code, {t["task_id"]: t["cost_usd"] for t in out["per_task"]}) == (
        0,
        {model: str(cost) for model, (_, _, cost) in CASES.items()},
    )


def full_record(call_id: str = "call-0", **changes: Any) -> SpendRecord:
    values: dict[str, Any] = {
        "ts": T0,
        "task_id": "task-0",
        "call_id": call_id,
        "model": "claude-haiku-4-5",
        "provider": "anthropic",
        "input_tokens": 1000,
        "output_tokens": 500,
        "cache_read_tokens": 300,
        "cache_write_tokens": 200,
        "reasoning_tokens": 150,
        "audio_input_tokens": 100,
        "audio_output_tokens": 50,
        "audio_cache_read_tokens": 25,
        "cost_usd": Decimal("0.001"),
        **changes,
    }
    return SpendRecord(**values)


def test_every_store_round_trips_the_usage_parts(store: SpendStore) -> None:
    """A record with every part set reads back equal, in each store."""
    written = [full_record("call-0"), full_record("call-1", reasoning_tokens=0)]
    store.record_many(written)
    assert list(store.query()) == written


def test_json_writes_only_the_usage_parts_that_are_not_zero() -> None:
    """Most calls have no parts: a JSON record leaves zero parts out, so a
    line grows only for calls that have them."""
    plain = full_record(
        cache_write_tokens=0,
        reasoning_tokens=0,
        audio_input_tokens=0,
        audio_output_tokens=0,
        audio_cache_read_tokens=0,
    )
    reasoned = full_record(
        cache_write_tokens=0,
        audio_input_tokens=0,
        audio_output_tokens=0,
        audio_cache_read_tokens=0,
    )
    parts = set(USAGE_PART_FIELDS)
    assert parts & set(plain.to_json_dict()) == set()
    assert parts & set(reasoned.to_json_dict()) == {"reasoning_tokens"}
    assert parts <= set(full_record().to_json_dict())
    assert SpendRecord.from_json_dict(reasoned.to_json_dict()) == reasoned
    assert SpendRecord.from_json_dict(plain.to_json_dict()) == plain


OLD_LINE = (
    '{"v":1,"ts":"2026-12-01T09:30:15.123456Z","task_id":"task-0",'
    '"call_id":"call-0","model":"gpt-4o-mini","provider":"openai",'
    '"input_tokens":1200,"output_tokens":300,"cache_read_tokens":200,'
    '"cost_usd":"0.00036","cost_estimated":false,"cache_hit":false,'
    '"saved_usd":"0","outcome":"ok","stop_reason":null,"latency_s":0.84,'
    '"team":"search","feature":null,"environment":null,"user":null,'
    '"session":null,"org":null,"tags":{}}\n'
)


def test_a_jsonl_line_without_the_parts_reads_them_as_zero(tmp_path: Path) -> None:
    """A line written before the parts were kept reads, each part 0, and
    replays at the plain prices with its cache reads."""
    trace = tmp_path / "old.jsonl"
    trace.write_text(OLD_LINE, encoding="utf-8")
    (rec,) = JsonlSpendStore(trace).query()
    # 1000 uncached at $0.15/M, 200 cache reads at $0.075/M, 300 out at $0.60/M.
    expected = Decimal("0.000345")
    assert (rec.call_id, rec.input_tokens, parts_of(rec)) == (
        "call-0",
        1200,
        {"cache_read_tokens": 200},
    )
    assert replay([rec], Policy()).cost_usd == expected


def test_a_part_that_is_not_a_count_is_refused_naming_it(tmp_path: Path) -> None:
    """A usage part given as a float is refused, naming the field and line."""
    trace = tmp_path / "bad.jsonl"
    trace.write_text(
        OLD_LINE.replace('"cache_read_tokens":200', '"reasoning_tokens":1.5'),
        encoding="utf-8",
    )
    with pytest.raises(SpendDataError) as info:
        list(JsonlSpendStore(trace).query())
    assert str(info.value) == (
        f"{trace}:1: malformed spend record: SpendRecord.reasoning_tokens must "
        "be a whole number, got the float 1.5"
    )


# The schema of version 2 (org, no usage parts), as older releases made it.
_V2_DDL = """
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
    org TEXT,
    tags TEXT NOT NULL
);
CREATE INDEX spend_ts ON spend (ts_us);
PRAGMA user_version=2;
"""
_V2_INSERT = (
    "INSERT INTO spend (ts_us, task_id, call_id, model, provider, input_tokens, "
    "output_tokens, cache_read_tokens, cost_usd, cost_estimated, cache_hit, "
    "saved_usd, outcome, stop_reason, latency_s, team, feature, environment, "
    "user, session, org, tags) VALUES (?, 'task-0', ?, 'gpt-4o', 'openai', "
    "1000, 200, 100, ?, 0, 0, '0', 'ok', NULL, 0.5, 'search', NULL, 'prod', "
    "NULL, NULL, 'acme', '{}')"
)


def test_an_old_sqlite_file_gains_the_part_columns_and_keeps_its_rows(
    tmp_path: Path,
) -> None:
    """A file of the version 2 schema opens, its rows kept with every part 0;
    the columns are added and new records keep their parts."""
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript(_V2_DDL)
        conn.executemany(
            _V2_INSERT,
            [(1_796_117_415_000_000 + i, f"old-{i}", f"0.00{i + 1}") for i in range(2)],
        )
    conn.close()
    with SQLiteSpendStore(path) as upgraded:
        upgraded.record(full_record())
        found = list(upgraded.query())
    assert [(r.call_id, r.cost_usd, r.org, parts_of(r)) for r in found] == [
        ("call-0", Decimal("0.001"), None, parts_of(full_record())),
        ("old-0", Decimal("0.001"), "acme", {"cache_read_tokens": 100}),
        ("old-1", Decimal("0.002"), "acme", {"cache_read_tokens": 100}),
    ]
    with sqlite3.connect(path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(spend)")]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        rows = conn.execute("SELECT count(*) FROM spend").fetchone()[0]
    conn.close()
    assert (columns[-5:], version, rows) == (list(PARTS[1:]), 3, 3)


def test_replay_clamps_parts_larger_than_their_wholes() -> None:
    """Parts a hand-written record overstates are cut to what is left of
    their whole, as cache reads are cut to the input, so the call prices."""
    rec = full_record(
        input_tokens=100,
        output_tokens=10,
        cache_read_tokens=80,
        cache_write_tokens=50,
        reasoning_tokens=30,
        audio_input_tokens=0,
        audio_output_tokens=0,
        audio_cache_read_tokens=0,
    )
    # 80 cache reads at $0.10/M, 20 cache writes at $1.25/M, 10 out at $5/M.
    assert replay([rec], Policy()).cost_usd == Decimal("0.000083")
