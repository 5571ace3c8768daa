"""Spend records and their stores: SQLite (default), JSONL traces and Redis."""

from __future__ import annotations

import gzip
import json
import re
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from _redis_fixtures import OwnRedis

from governor import Governor, attribute
from governor._errors import ConfigError
from governor.adapters.litellm import GovernedLiteLLM
from governor.spend import (
    ENV_SPEND_DB,
    JsonlSpendStore,
    RedisSpendStore,
    SpendDataError,
    SpendRecord,
    SpendStore,
    SQLiteSpendStore,
    default_spend_target,
    open_store,
    summarize,
)
from governor.testing import install_offline_provider

pytest_plugins = ["_redis_fixtures"]

T0 = datetime(2026, 12, 1, 9, 30, 15, 123456, tzinfo=UTC)


def make(i: int, **changes: object) -> SpendRecord:
    """A record with every field set, varied by ``i``."""
    fields: dict[str, object] = {
        "ts": T0 + timedelta(minutes=i),
        "task_id": f"task-{i % 3}",
        "call_id": f"call-{i}",
        "model": "gpt-4o-mini" if i % 2 else "gpt-4o",
        "provider": "openai",
        "input_tokens": 100 + i,
        "output_tokens": 20 + i,
        "cache_read_tokens": i,
        "cost_usd": Decimal("0.000000123456789") * (i + 1),
        "cost_estimated": i % 2 == 0,
        "cache_hit": i % 5 == 4,
        "saved_usd": Decimal("0.0001") * (i % 5 == 4),
        "outcome": "cache_hit" if i % 5 == 4 else "ok",
        "stop_reason": "length" if i == 1 else None,
        "latency_s": 0.25 + i,
        "team": ("search", "ads")[i % 2],
        "feature": "qa" if i % 3 else None,
        "environment": "prod",
        "user": f"u{i % 4}",
        "session": f"s{i % 2}",
        "org": None if i % 2 else "acme",
        "tags": {"customer": f"c{i % 2}", "tier": "gold"},
    }
    fields.update(changes)
    return SpendRecord(**fields)  # type: ignore[arg-type]  # mixed value types by field


@pytest.fixture(params=["sqlite", "jsonl", "redis"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[SQLiteSpendStore | JsonlSpendStore | RedisSpendStore]:
    """Each store kind, empty; the Redis one under this test's own key prefix."""
    if request.param == "sqlite":
        sqlite_store = SQLiteSpendStore(tmp_path / "spend.sqlite3")
        yield sqlite_store
        sqlite_store.close()
    elif request.param == "jsonl":
        yield JsonlSpendStore(tmp_path / "trace.jsonl")
    else:
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")
        redis_store = RedisSpendStore(redis.Redis.from_url(url), prefix=prefix)
        yield redis_store
        redis_store.close()


def test_every_store_follows_the_protocol(store: SpendStore) -> None:
    """Each store is a SpendStore at runtime."""
    assert isinstance(store, SpendStore)


def test_round_trip_keeps_every_field_exactly(store: SpendStore) -> None:
    """A record read back equals the one written, money and microseconds included."""
    records = [make(i) for i in range(6)]
    store.record_many(records)
    assert list(store.query()) == records


def test_query_bounds_include_since_and_exclude_until(store: SpendStore) -> None:
    """since is inclusive and until exclusive."""
    store.record_many(make(i) for i in range(6))
    found = store.query(
        since=T0 + timedelta(minutes=2), until=T0 + timedelta(minutes=4)
    )
    assert [r.call_id for r in found] == ["call-2", "call-3"]


def test_query_filters_by_field_and_tag(store: SpendStore) -> None:
    """Field and tag filters combine with AND."""
    store.record_many(make(i) for i in range(8))
    found = store.query(
        filters={"team": "ads", "tag.customer": "c1", "task_id": "task-1"}
    )
    assert [r.call_id for r in found] == ["call-1", "call-7"]


def test_filter_none_matches_unset_attribute(store: SpendStore) -> None:
    """A None filter value keeps records where the attribute is unset."""
    store.record_many(make(i) for i in range(7))
    found = store.query(filters={"feature": None})
    assert [r.call_id for r in found] == ["call-0", "call-3", "call-6"]


def test_query_returns_time_order_whatever_the_write_order(store: SpendStore) -> None:
    """Records written out of order come back sorted by time."""
    store.record_many([make(3), make(1), make(2)])
    assert [r.call_id for r in store.query()] == ["call-1", "call-2", "call-3"]


def test_unknown_filter_key_is_a_config_error(store: SpendStore) -> None:
    """A filter on a field that does not exist names the accepted keys."""
    with pytest.raises(ConfigError, match="unknown spend filter 'colour'"):
        store.query(filters={"colour": "red"})


def test_an_outcome_filter_no_call_can_have_is_a_config_error(
    store: SpendStore,
) -> None:
    """A typo in an outcome matches nothing: said, not an empty report."""
    with pytest.raises(ConfigError, match="outcome='refuse' matches no call"):
        store.query(filters={"outcome": "refuse"})
    store.record_many([make(1)])
    assert [r.call_id for r in store.query(filters={"outcome": "ok"})] == ["call-1"]


def test_naive_bound_is_a_config_error(store: SpendStore) -> None:
    """A query bound without a time zone is refused."""
    with pytest.raises(ConfigError, match="has no time zone"):
        store.query(since=datetime(2026, 12, 1))


def test_repeated_call_id_keeps_the_first_in_sqlite(tmp_path: Path) -> None:
    """SQLite ignores a second record with the same call_id."""
    with SQLiteSpendStore(tmp_path / "s.sqlite3") as sqlite_store:
        sqlite_store.record(make(1))
        sqlite_store.record(make(1, cost_usd=Decimal(5)))
        assert [r.cost_usd for r in sqlite_store.query()] == [make(1).cost_usd]


def test_repeated_call_id_keeps_the_first_in_redis(
    redis_url: str, redis_prefix: str
) -> None:
    """Redis ignores a second record with the same call_id."""
    redis_store = RedisSpendStore(redis.Redis.from_url(redis_url), prefix=redis_prefix)
    redis_store.record(make(1))
    redis_store.record(make(1, cost_usd=Decimal(5)))
    assert [r.cost_usd for r in redis_store.query()] == [make(1).cost_usd]
    redis_store.close()


def test_repeated_call_id_in_jsonl_is_read_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The JSONL file is append-only, but a query keeps the first line of a
    call_id, as SQLite and Redis keep the first record, and says so."""
    jsonl = JsonlSpendStore(tmp_path / "t.jsonl")
    jsonl.record(make(1))
    jsonl.record(make(1, cost_usd=Decimal(5)))
    jsonl.record(make(2))
    with caplog.at_level("WARNING", logger="governor.spend._jsonl"):
        costs = [r.cost_usd for r in jsonl.query()]
    assert len(jsonl.path.read_text().splitlines()) == 3
    assert costs == [make(1).cost_usd, make(2).cost_usd]
    assert jsonl.skipped_duplicates == 1
    assert "t.jsonl: skipped 1 line(s) repeating the call_id" in caplog.text


def test_redis_store_writes_only_under_its_prefix(
    redis_url: str, redis_prefix: str
) -> None:
    """Both Redis keys start with the prefix and share the {spend} hash tag."""
    client = redis.Redis.from_url(redis_url)
    RedisSpendStore(client, prefix=redis_prefix).record(make(0))
    keys = sorted(k.decode() for k in client.scan_iter(match=redis_prefix + "*"))
    assert keys == [f"{redis_prefix}{{spend}}:h", f"{redis_prefix}{{spend}}:z"]
    client.close()


def test_redis_query_pages_past_one_batch(redis_url: str, redis_prefix: str) -> None:
    """A query returns every record when there are more than one page of them."""
    redis_store = RedisSpendStore(redis.Redis.from_url(redis_url), prefix=redis_prefix)
    redis_store.record_many(make(i, ts=T0 + timedelta(seconds=i)) for i in range(1203))
    assert sum(1 for _ in redis_store.query()) == 1203
    redis_store.close()


def test_sqlite_uses_write_ahead_logging(tmp_path: Path) -> None:
    """The database file is in WAL mode so reports do not block writers."""
    path = tmp_path / "spend.sqlite3"
    SQLiteSpendStore(path).close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sqlite_stores_money_as_exact_text(tmp_path: Path) -> None:
    """cost_usd is stored as the Decimal's plain text, not a float nor "1E-10"."""
    path = tmp_path / "spend.sqlite3"
    with SQLiteSpendStore(path) as sqlite_store:
        sqlite_store.record(make(0, cost_usd=Decimal("0.000000000123456789")))
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT cost_usd, typeof(cost_usd) FROM spend").fetchone()
    assert row == ("0.000000000123456789", "text")


def test_sqlite_creates_missing_folders(tmp_path: Path) -> None:
    """The store creates the parent folders of its file."""
    path = tmp_path / "a" / "b" / "spend.sqlite3"
    SQLiteSpendStore(path).close()
    assert path.is_file()


def test_sqlite_counts_every_record_from_many_threads(tmp_path: Path) -> None:
    """Eight threads writing at once lose no record and no fraction of a cent."""
    sqlite_store = SQLiteSpendStore(tmp_path / "spend.sqlite3")

    def write(worker: int) -> None:
        for i in range(50):
            sqlite_store.record(
                make(i, call_id=f"w{worker}-{i}", cost_usd=Decimal("0.000000001"))
            )

    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = summarize(sqlite_store.query(), ["team"]).total
    sqlite_store.close()
    assert (total.calls, total.cost_usd) == (400, Decimal("0.000000400"))


def test_jsonl_line_format(tmp_path: Path) -> None:
    """Each JSONL line carries the version, a Z timestamp and money as strings."""
    path = tmp_path / "trace.jsonl"
    JsonlSpendStore(path).record(make(0))
    line = json.loads(path.read_text().splitlines()[0])
    assert (line["v"], line["ts"], line["cost_usd"], line["tags"]) == (
        1,
        "2026-12-01T09:30:15.123456Z",
        "0.000000123456789",
        {"customer": "c0", "tier": "gold"},
    )


def test_jsonl_bad_line_names_file_and_line(tmp_path: Path) -> None:
    """A malformed line raises SpendDataError with its line number."""
    path = tmp_path / "trace.jsonl"
    JsonlSpendStore(path).record(make(0))
    with path.open("a") as fh:
        fh.write('{"v": 1, "task_id": "t"}\n')
    with pytest.raises(SpendDataError, match=r"trace\.jsonl:2: "):
        list(JsonlSpendStore(path).query())


def test_jsonl_reader_ignores_unknown_keys() -> None:
    """A record with keys from a newer writer still reads."""
    data = {**make(2).to_json_dict(), "messages": [{"role": "user"}]}
    assert SpendRecord.from_json_dict(data) == make(2)


def test_record_rejects_naive_timestamp() -> None:
    """A record's ts must carry a time zone."""
    with pytest.raises(ValueError, match="timezone-aware"):
        make(0, ts=datetime(2026, 12, 1))


def test_record_normalises_timestamp_to_utc() -> None:
    """A ts in another zone is stored as the same instant in UTC."""
    paris = timezone(timedelta(hours=1))
    rec = make(0, ts=datetime(2026, 12, 1, 10, 0, tzinfo=paris))
    assert (rec.ts.tzinfo, rec.ts.hour) == (UTC, 9)


def test_record_rejects_float_money() -> None:
    """cost_usd must be a Decimal, never a float."""
    with pytest.raises(TypeError, match="cost_usd must be a Decimal"):
        make(0, cost_usd=0.1)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("cost_usd", Decimal("NaN"), "must be a finite amount, got NaN"),
        ("cost_usd", Decimal("sNaN"), "must be a finite amount, got sNaN"),
        ("cost_usd", Decimal("-Infinity"), "must be a finite amount, got -Infinity"),
        ("cost_usd", Decimal("-5"), "must not be negative, got -5"),
        ("saved_usd", Decimal("-0.01"), "must not be negative, got -0.01"),
        ("saved_usd", Decimal("Infinity"), "must be a finite amount, got Infinity"),
    ],
)
def test_record_rejects_money_that_is_not_a_finite_non_negative_amount(
    field: str, value: Decimal, message: str
) -> None:
    """NaN, infinities and negative amounts are refused, naming the field."""
    with pytest.raises(ValueError, match=rf"^SpendRecord\.{field} {message}$"):
        make(0, **{field: value})


def test_record_rejects_float_saved_and_keeps_zero_unsigned() -> None:
    """saved_usd is checked like cost_usd; a negative zero is stored as 0."""
    with pytest.raises(TypeError, match=r"saved_usd must be a Decimal, got the float"):
        make(0, saved_usd=0.5)
    rec = make(0, cost_usd=Decimal("-0.000"))
    assert str(rec.cost_usd) == "0.000"


def assert_second_line_refused(
    tmp_path: Path, field: str, value: object, message: str
) -> None:
    """A trace whose second record has ``field`` set to ``value`` stops the
    read there, with ``message`` after the file and line."""
    path = tmp_path / "trace.jsonl"
    JsonlSpendStore(path).record(make(0))
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({**make(1).to_json_dict(), field: value}) + "\n")
    with pytest.raises(SpendDataError, match=rf"trace\.jsonl:2: .*{message}"):
        list(JsonlSpendStore(path).query())


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("cost_usd", 0.1, 'cost_usd must be a decimal string such as "0.00036", '
         "got the float 0.1"),
        ("saved_usd", 1e-06, "saved_usd must be a decimal string .* float 1e-06"),
        ("cost_usd", True, "cost_usd must be a decimal string .* JSON boolean True"),
        ("cost_usd", "ten cents", "cost_usd must be a decimal string .* 'ten cents'"),
        ("cost_usd", "NaN", "SpendRecord.cost_usd must be a finite amount, got NaN"),
        ("cost_usd", "-5", "SpendRecord.cost_usd must not be negative, got -5"),
        ("saved_usd", "-Infinity", "SpendRecord.saved_usd must be a finite amount"),
    ],
)  # fmt: skip
def test_jsonl_reader_refuses_bad_money_naming_field_and_line(
    tmp_path: Path, field: str, value: object, message: str
) -> None:
    """A float, NaN or negative amount in a trace stops the read at its line."""
    assert_second_line_refused(tmp_path, field, value, message)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("model", None, "SpendRecord.model must be a non-empty string, got None"),
        ("model", "", "SpendRecord.model must be a non-empty string, got ''"),
        ("task_id", 7, "task_id must be a non-empty string, got the int 7"),
        ("provider", ["a"], "provider must be a string or None .* list \\['a'\\]"),
        ("team", 5, "SpendRecord.team must be a string or None .* the int 5"),
    ],
)
def test_jsonl_reader_refuses_names_that_are_not_strings(
    tmp_path: Path, field: str, value: object, message: str
) -> None:
    """A null model or a numeric team stops the read at its line, naming it."""
    assert_second_line_refused(tmp_path, field, value, message)


def test_gzip_jsonl_is_read_by_suffix_or_magic_bytes(tmp_path: Path) -> None:
    """A compressed spend JSONL reads as the plain one, whatever its name."""
    plain = tmp_path / "t.jsonl"
    JsonlSpendStore(plain).record_many([make(0), make(1)])
    packed = gzip.compress(plain.read_bytes())
    for name in ("t.jsonl.gz", "t.gz"):
        (tmp_path / name).write_bytes(packed)
        store = open_store(tmp_path / name, existing=True)
        assert list(store.query()) == [make(0), make(1)], name


def test_gzip_jsonl_is_refused_for_writing(tmp_path: Path) -> None:
    """Appending plain lines would corrupt it: opening it to record is refused."""
    with pytest.raises(ConfigError, match="gzip-compressed JSONL, which the gov"):
        open_store(tmp_path / "t.jsonl.gz")
    with pytest.raises(ConfigError, match=r"record to a \.jsonl path"):
        JsonlSpendStore(tmp_path / "t.jsonl.gz").record(make(0))


def test_cut_short_gzip_jsonl_names_the_file(tmp_path: Path) -> None:
    """A truncated compressed file stops the read with SpendDataError."""
    path = tmp_path / "t.jsonl.gz"
    lines = "".join(json.dumps(make(i).to_json_dict()) + "\n" for i in range(50))
    path.write_bytes(gzip.compress(lines.encode())[:-30])
    with pytest.raises(SpendDataError, match=r"t\.jsonl\.gz:\d+: the gzip data"):
        list(open_store(path, existing=True).query())


def test_jsonl_reader_accepts_whole_numbers_exactly(tmp_path: Path) -> None:
    """A JSON integer is exact, so it is read as that many dollars."""
    data = {**make(1).to_json_dict(), "cost_usd": 2, "saved_usd": 0}
    rec = SpendRecord.from_json_dict(data)
    assert (rec.cost_usd, rec.saved_usd) == (Decimal(2), Decimal(0))


def test_sqlite_reader_names_the_row_of_a_bad_amount(tmp_path: Path) -> None:
    """A NaN written into the file by hand is refused with its row and call."""
    path = tmp_path / "spend.sqlite3"
    with SQLiteSpendStore(path) as sqlite_store:
        sqlite_store.record_many([make(0), make(1)])
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE spend SET cost_usd='NaN' WHERE call_id='call-1'")
    connection.close()
    with (
        SQLiteSpendStore(path) as sqlite_store,
        pytest.raises(
            SpendDataError,
            match=r"spend\.sqlite3: spend row 2 \(call 'call-1'\): .*finite",
        ),
    ):
        list(sqlite_store.query())


def test_redis_reader_names_the_field_of_a_bad_amount(own_redis: OwnRedis) -> None:
    """A float cost written into Redis by hand is refused, naming the call."""
    redis_store = RedisSpendStore.from_url(own_redis.url, prefix="bad:")
    redis_store.record(make(0))
    body = {**make(0).to_json_dict(), "cost_usd": 0.5}
    redis_store._client.hset(redis_store.hash_key, "call-0", json.dumps(body))
    with pytest.raises(
        SpendDataError, match=r"bad:\{spend\}:h field 'call-0': .*float 0\.5"
    ):
        list(redis_store.query())
    redis_store.close()


def test_default_target_reads_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """GOVERNOR_SPEND_DB overrides the default location."""
    monkeypatch.setenv(ENV_SPEND_DB, "/var/lib/gov/spend.sqlite3")
    assert default_spend_target() == "/var/lib/gov/spend.sqlite3"


def test_default_target_without_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without GOVERNOR_SPEND_DB the store is ./.governor/spend.sqlite3."""
    monkeypatch.delenv(ENV_SPEND_DB, raising=False)
    assert default_spend_target() == str(Path(".governor") / "spend.sqlite3")


def test_open_store_picks_the_kind_from_the_target(tmp_path: Path) -> None:
    """A .jsonl path opens a JSONL store, a redis URL a Redis one, else SQLite."""
    kinds = [
        type(open_store(tmp_path / "t.jsonl")),
        type(open_store("redis://127.0.0.1:1/0")),
        type(open_store(tmp_path / "s.sqlite3")),
    ]
    assert kinds == [JsonlSpendStore, RedisSpendStore, SQLiteSpendStore]


def test_summarize_sums_exactly_and_orders_by_cost() -> None:
    """Groups hold exact Decimal sums, highest cost first, (none) for unset."""
    records = [make(i, cost_usd=Decimal("0.1") * i) for i in range(6)]
    summary = summarize(records, ["feature", "team"])
    features = [(g.key, g.totals.cost_usd) for g in summary.groups["feature"]]
    assert features == [("qa", Decimal("1.2")), ("(none)", Decimal("0.3"))]
    assert summary.total.cost_usd == Decimal("1.5")


def test_org_round_trips_and_filters_in_every_store(store: SpendStore) -> None:
    """org is stored, read back, and filtered on, set or unset."""
    store.record_many(make(i) for i in range(5))
    assert [r.org for r in store.query()] == ["acme", None, "acme", None, "acme"]
    acme = [r.call_id for r in store.query(filters={"org": "acme"})]
    unset = [r.call_id for r in store.query(filters={"org": None})]
    assert (acme, unset) == (["call-0", "call-2", "call-4"], ["call-1", "call-3"])


def test_json_without_org_reads_as_unset() -> None:
    """A record written before org existed reads with org None."""
    data = make(0).to_json_dict()
    del data["org"]
    assert SpendRecord.from_json_dict(data) == make(0, org=None)


# The spend table as schema version 1 made it, before the org column.
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
    "user, session, tags) VALUES (?, ?, ?, 'gpt-4o', 'openai', 10, 2, 0, ?, 0, 0, "
    "'0', 'ok', NULL, 0.5, 'search', NULL, 'prod', NULL, NULL, '{}')"
)


def _v1_database(path: Path, rows: int) -> None:
    """Write a spend file with the version 1 schema holding ``rows`` calls."""
    with sqlite3.connect(path) as conn:
        conn.executescript(_V1_DDL)
        conn.executemany(
            _V1_INSERT,
            [
                (1_796_117_415_000_000 + i, f"old-{i}", f"old-call-{i}", f"0.00{i + 1}")
                for i in range(rows)
            ],
        )
    conn.close()


def test_old_sqlite_file_gains_org_and_keeps_its_rows(tmp_path: Path) -> None:
    """A file made before org existed is upgraded in place, no row lost."""
    path = tmp_path / "old.sqlite3"
    _v1_database(path, 3)
    with SQLiteSpendStore(path) as upgraded:
        old = list(upgraded.query())
        upgraded.record(make(0))
        mine = list(upgraded.query(filters={"org": "acme"}))
        unset = [r.call_id for r in upgraded.query(filters={"org": None})]
    assert [(r.call_id, r.team, r.cost_usd, r.org) for r in old] == [
        ("old-call-0", "search", Decimal("0.001"), None),
        ("old-call-1", "search", Decimal("0.002"), None),
        ("old-call-2", "search", Decimal("0.003"), None),
    ]
    assert (mine, unset) == ([make(0)], ["old-call-0", "old-call-1", "old-call-2"])
    with sqlite3.connect(path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(spend)")]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    conn.close()
    assert (columns[-1], "org" in columns, version) == ("org", True, 3)


def test_upgraded_sqlite_file_opens_again_for_a_report(tmp_path: Path) -> None:
    """Opening an upgraded file again (as a reader) adds nothing and loses nothing."""
    path = tmp_path / "old.sqlite3"
    _v1_database(path, 2)
    SQLiteSpendStore(path).close()
    store = open_store(path, existing=True)
    assert [r.call_id for r in store.query()] == ["old-call-0", "old-call-1"]
    store.close()


def test_summarize_groups_by_org() -> None:
    """Grouping by org sums each org exactly; unset org is (none)."""
    records = [make(i, cost_usd=Decimal("0.1") * i) for i in range(5)]
    orgs = summarize(records, ["org"]).groups["org"]
    assert [(g.key, g.totals.calls, g.totals.cost_usd) for g in orgs] == [
        ("acme", 3, Decimal("0.6")),
        ("(none)", 2, Decimal("0.4")),
    ]


def test_governed_call_records_the_task_org(tmp_path: Path) -> None:
    """A call inside gov.task(org=...) or attribute(org=...) is charged to the org."""
    install_offline_provider(speed=0)
    store = SQLiteSpendStore(tmp_path / "spend.sqlite3")
    messages = [{"role": "user", "content": "hi"}]
    with Governor(spend=store) as gov:
        llm = GovernedLiteLLM(gov)
        with gov.task("t-acme", org="acme", team="search") as task:
            llm.completion(model="offline/gpt-4o-mini", messages=messages)
        with attribute(org="globex"), gov.task("t-globex"):
            llm.completion(model="offline/gpt-4o-mini", messages=messages)
    records = list(store.query())
    store.close()
    assert [(r.task_id, r.org, r.team) for r in records] == [
        ("t-acme", "acme", "search"),
        ("t-globex", "globex", None),
    ]
    assert records[0].cost_usd == task.report().cost_usd > 0


def test_processes_creating_one_new_sqlite_file_together_all_open_it(
    tmp_path: Path,
) -> None:
    """Switching a new file to WAL collided ('database is locked') 1 in 4 times.

    The workers come from a fork server: forked from this test process, whose
    other threads (earlier tests' writers) may hold SQLite's locks at the
    fork, a child could wait on them for ever. A worker still alive after
    its time is killed, so a failure cannot hang the test run's exit.
    """
    import multiprocessing

    from _sqlite_opener import open_new_store

    context = multiprocessing.get_context("forkserver")
    outcomes: list[str] = []
    for round_ in range(6):
        path = tmp_path / f"spend-{round_}.db"
        barrier, results = context.Barrier(8), context.Queue()
        workers = [
            context.Process(
                target=open_new_store, args=(path, barrier, results), daemon=True
            )
            for _ in range(8)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
            if worker.is_alive():
                worker.kill()
        outcomes += [results.get(timeout=5) for _ in workers]
    assert outcomes == ["ok"] * 48


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"input_tokens": "100"}, "input_tokens must be a whole number, got the str"),
        ({"output_tokens": 1.5}, "output_tokens must be a whole number"),
        ({"input_tokens": True}, "input_tokens must be a whole number"),
        ({"cost_usd": "1e400"}, "cost_usd of 1.000e+400 dollars for one call"),
    ],
)
def test_a_corrupt_json_record_names_the_field(
    change: dict[str, Any], message: str
) -> None:
    """Hand-edited or truncated values are refused, naming the field."""
    data = {**make(0).to_json_dict(), **change}
    with pytest.raises(SpendDataError, match=re.escape(message)):
        SpendRecord.from_json_dict(data)


def test_a_corrupt_sqlite_amount_names_the_column(tmp_path: Path) -> None:
    """A cost that is not a number names the column and the value."""
    path = tmp_path / "spend.sqlite3"
    SQLiteSpendStore(path).record(make(0))
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE spend SET cost_usd = 'abc'")
    with pytest.raises(SpendDataError, match="cost_usd must be a decimal amount"):
        list(SQLiteSpendStore(path).query())
