"""Spend JSONL read while written, and large stores read in little memory.

A reader can meet the last line of a JSONL store half written: it is left
out with a note, never called a bad line. A query reads the file twice
(matches noted, then read in time order) and a replay keeps compact calls:
these tests check that order, duplicates, filters, bounds and gzip come out
as a whole-file sort gave them, and that memory no longer grows with whole
records.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import logging
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from governor._replay import load_policy, replay
from governor.spend import JsonlSpendStore, SpendDataError, SpendRecord

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[1]


def rec(i: int, *, at: int | None = None, call: str | None = None) -> SpendRecord:
    """Call i, ``at`` minutes after T0 (default i), team a or b by parity."""
    return SpendRecord(
        ts=T0 + timedelta(minutes=i if at is None else at),
        task_id=f"task-{i // 3}",
        call_id=call or f"call-{i}",
        model="gpt-4o-mini",
        provider="openai",
        input_tokens=100 + i,
        output_tokens=10 + i,
        cost_usd=Decimal("0.001") * (i + 1),
        team="a" if i % 2 == 0 else "b",
        tags={"customer": f"c{i % 3}", "quality": "1" if i % 5 else "0"},
    )


def write(path: Path, records: Iterable[SpendRecord]) -> Path:
    JsonlSpendStore(path).record_many(records)
    return path


def governor(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command line, so that its stderr is what a user sees."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "governor", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def half_written(tmp_path: Path) -> Path:
    """Five whole records, then the first 200 bytes of a sixth, no newline."""
    path = write(tmp_path / "part.jsonl", [rec(i) for i in range(5)])
    line = json.dumps(rec(5).to_json_dict(), separators=(",", ":"))
    with path.open("ab") as fh:
        fh.write(line.encode()[:200])
    return path


# B1: a last line still being written


def test_report_leaves_out_a_half_written_last_line(tmp_path: Path) -> None:
    path = half_written(tmp_path)
    done = governor("report", "--db", str(path), "--by", "model", "--format", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["total"]["calls"] == 5
    assert "last line (6) is incomplete (being written?)" in done.stderr
    assert "delete" not in done.stderr


def test_replay_leaves_out_a_half_written_last_line(tmp_path: Path) -> None:
    path = half_written(tmp_path)
    done = governor("replay", "--db", str(path), "--json")
    assert done.returncode == 0, done.stderr
    assert sum(t["calls"] for t in json.loads(done.stdout)["per_task"]) == 5
    assert "incomplete (being written?)" in done.stderr


def _lines(count: int) -> list[bytes]:
    return [
        json.dumps(rec(i).to_json_dict(), separators=(",", ":")).encode()
        for i in range(count)
    ]


def test_records_separated_by_carriage_returns_are_refused_not_left_out(
    tmp_path: Path,
) -> None:
    """A CR-only file is one line with no newline: it is not being written,
    so it is named as bad, with the fix, instead of read as no calls."""
    path = tmp_path / "cr.jsonl"
    path.write_bytes(b"\r".join(_lines(3)) + b"\r")
    with pytest.raises(SpendDataError, match=r"cr\.jsonl:1: .*CR alone") as info:
        list(JsonlSpendStore(path).query())
    assert "tr '\\r' '\\n'" in str(info.value)


@pytest.mark.parametrize(
    "tail",
    [b"\x00\xff\xfe not a record", b"[1, 2", b"garbage"],
    ids=["binary", "a-list", "text"],
)
def test_a_last_line_that_cannot_become_a_record_is_named(
    tmp_path: Path, tail: bytes
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(_lines(2)) + b"\n" + tail)
    with pytest.raises(SpendDataError, match=r"bad\.jsonl:3: "):
        list(JsonlSpendStore(path).query())


def test_a_last_line_cut_inside_a_character_is_being_written(
    tmp_path: Path,
) -> None:
    """A writer's partial write can end inside a UTF-8 character."""
    path = tmp_path / "cut.jsonl"
    cut = '{"v":1,"team":"\u00e9'.encode()[:-1]
    path.write_bytes(b"\n".join(_lines(2)) + b"\n" + cut)
    assert [r.call_id for r in JsonlSpendStore(path).query()] == [
        "call-0",
        "call-1",
    ]


def test_query_logs_the_left_out_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = half_written(tmp_path)
    with caplog.at_level(logging.WARNING, logger="governor.spend._jsonl"):
        got = list(JsonlSpendStore(path).query())
    assert [r.call_id for r in got] == [f"call-{i}" for i in range(5)]
    assert "part.jsonl: the last line (6) is incomplete" in caplog.text


def test_a_cut_multibyte_character_at_the_end_is_a_write_in_progress(
    tmp_path: Path,
) -> None:
    path = write(tmp_path / "s.jsonl", [rec(0)])
    with path.open("ab") as fh:
        fh.write('{"ts":"2026-03-01T09:00:00Z","task_id":"caf\u00e9'.encode()[:-1])
    assert [r.call_id for r in JsonlSpendStore(path).query()] == ["call-0"]


def test_a_whole_last_line_without_newline_is_read(tmp_path: Path) -> None:
    path = write(tmp_path / "s.jsonl", [rec(0), rec(1)])
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    assert [r.call_id for r in JsonlSpendStore(path).query()] == ["call-0", "call-1"]


def test_a_bad_middle_line_still_fails_naming_it(tmp_path: Path) -> None:
    path = half_written(tmp_path)
    with path.open("ab") as fh:  # the cut record now has lines after it
        fh.write(b"\n" + json.dumps(rec(7).to_json_dict()).encode() + b"\n")
    with pytest.raises(SpendDataError, match=r"part\.jsonl:6: not JSON .*delete"):
        list(JsonlSpendStore(path).query())
    done = governor("report", "--db", str(path))
    assert done.returncode == 1
    assert "part.jsonl:6: not JSON" in done.stderr


def test_a_bad_last_line_with_its_newline_still_fails(tmp_path: Path) -> None:
    path = half_written(tmp_path)
    with path.open("ab") as fh:
        fh.write(b"\n")
    with pytest.raises(SpendDataError, match=r"part\.jsonl:6: not JSON"):
        list(JsonlSpendStore(path).query())


def test_a_last_line_of_whole_json_that_is_no_record_still_fails(
    tmp_path: Path,
) -> None:
    path = write(tmp_path / "s.jsonl", [rec(0)])
    with path.open("ab") as fh:
        fh.write(b'{"ts": "2026-03-01T09:00:00Z"}')
    with pytest.raises(SpendDataError, match=r"s\.jsonl:2: malformed spend record"):
        list(JsonlSpendStore(path).query())


def test_a_batch_after_a_cut_line_starts_a_line_of_its_own(tmp_path: Path) -> None:
    path = half_written(tmp_path)
    JsonlSpendStore(path).record_many([rec(8), rec(9)])
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""  # the file ends with a newline
    assert [json.loads(line)["call_id"] for line in lines[-3:-1]] == [
        "call-8",
        "call-9",
    ]
    with pytest.raises(SpendDataError, match=r"part\.jsonl:6: not JSON"):
        list(JsonlSpendStore(path).query())  # the cut line is a bad line now


def test_a_file_saved_without_final_newline_keeps_both_records(
    tmp_path: Path,
) -> None:
    path = write(tmp_path / "s.jsonl", [rec(0)])
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    JsonlSpendStore(path).record(rec(1))
    assert [r.call_id for r in JsonlSpendStore(path).query()] == ["call-0", "call-1"]


# B2: the two-pass query gives what a whole-file sort gave


def mixed() -> list[SpendRecord]:
    """Times out of file order, ties, and repeated call_ids (the later ones
    earlier in time, or in another team, so that keeping one shows)."""
    records = [rec(i, at=(i * 7) % 11) for i in range(22)]
    records.append(rec(30, at=-5, call="call-3"))  # repeats call-3, earlier
    records.append(rec(31, at=4, call="call-4"))  # repeats call-4, odd team
    records.append(rec(32, at=3))  # ties with call-2 and call-13
    return records


def expected(
    records: list[SpendRecord],
    since: datetime | None = None,
    until: datetime | None = None,
    team: str | None = None,
) -> list[str]:
    """The old rule: first line of each call_id, filtered, stable-sorted by ts."""
    seen: set[str] = set()
    first = []
    for r in records:
        if r.call_id not in seen:
            seen.add(r.call_id)
            first.append(r)
    kept = [
        r
        for r in first
        if (since is None or r.ts >= since)
        and (until is None or r.ts < until)
        and (team is None or r.team == team)
    ]
    return [r.call_id for r in sorted(kept, key=lambda r: r.ts)]


@pytest.fixture(params=["plain", "gzip"])
def mixed_store(request: pytest.FixtureRequest, tmp_path: Path) -> JsonlSpendStore:
    path = write(tmp_path / "m.jsonl", mixed())
    if request.param == "gzip":
        gz = tmp_path / "m.jsonl.gz"
        gz.write_bytes(gzip.compress(path.read_bytes()))
        path = gz
    return JsonlSpendStore(path)


def test_order_ties_and_duplicates_match_a_whole_file_sort(
    mixed_store: JsonlSpendStore,
) -> None:
    got = list(mixed_store.query())
    assert [r.call_id for r in got] == expected(mixed())
    assert mixed_store.skipped_duplicates == 2
    by_id = {r.call_id: r for r in got}
    assert by_id["call-3"].ts == T0 + timedelta(minutes=(3 * 7) % 11)
    assert by_id["call-4"].team == "a"  # the first line's, not the repeat's
    assert got == sorted(got, key=lambda r: r.ts)


def test_filters_and_bounds_match_a_whole_file_sort(
    mixed_store: JsonlSpendStore,
) -> None:
    since, until = T0 + timedelta(minutes=2), T0 + timedelta(minutes=8)
    got = mixed_store.query(since, until, {"team": "b"})
    assert [r.call_id for r in got] == expected(mixed(), since, until, "b")
    # The repeat of call-4 is in team b, its first line in team a: no call-4.
    assert "call-4" not in [
        r.call_id for r in mixed_store.query(None, None, {"team": "b"})
    ]


def test_records_read_again_are_the_records_read_first(
    mixed_store: JsonlSpendStore,
) -> None:
    by_id: dict[str, SpendRecord] = {}
    for r in mixed():
        by_id.setdefault(r.call_id, r)
    assert list(mixed_store.query()) == sorted(
        (by_id[i] for i in expected(mixed())), key=lambda r: r.ts
    )


def test_a_byte_order_mark_on_the_first_line_is_read_both_times(
    tmp_path: Path,
) -> None:
    path = write(tmp_path / "s.jsonl", [rec(2, at=0), rec(1, at=5), rec(0, at=9)])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    got = list(JsonlSpendStore(path).query())
    assert [r.call_id for r in got] == ["call-2", "call-1", "call-0"]


def test_a_file_rewritten_between_the_two_reads_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "s.jsonl", [rec(i) for i in range(100)])
    records = JsonlSpendStore(path).query()
    with path.open("r+b") as fh:  # the same length, another day
        fh.write(path.read_bytes().replace(b"2026-03-01", b"2026-03-02"))
    with pytest.raises(SpendDataError, match=r"s\.jsonl changed while it was read"):
        list(records)


def test_lines_appended_between_the_two_reads_are_not_read(tmp_path: Path) -> None:
    path = write(tmp_path / "s.jsonl", [rec(i) for i in range(3)])
    records = JsonlSpendStore(path).query()
    write(path, [rec(9, at=-1)])
    assert [r.call_id for r in records] == ["call-0", "call-1", "call-2"]


def test_an_empty_or_missing_file_gives_no_records(tmp_path: Path) -> None:
    (tmp_path / "e.jsonl").write_bytes(b"")
    assert list(JsonlSpendStore(tmp_path / "e.jsonl").query()) == []
    assert list(JsonlSpendStore(tmp_path / "none.jsonl").query()) == []


# B2: memory


def _peak(fn: object) -> int:
    """Peak traced bytes while ``fn()`` runs."""
    gc.collect()
    tracemalloc.start()
    try:
        fn()  # type: ignore[operator]
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20,000 calls, a tenth of them a minute out of time order."""
    path = tmp_path_factory.mktemp("many") / "many.jsonl"
    store = JsonlSpendStore(path)
    store.record_many(rec(i, at=i - (60 if i % 10 == 0 else 0)) for i in range(20_000))
    return path


def test_query_memory_does_not_hold_every_record(many: Path) -> None:
    count = 0

    def read() -> None:
        nonlocal count
        for _ in JsonlSpendStore(many).query():
            count += 1

    peak = _peak(read)
    assert count == 20_000
    # A whole-file sort held about 1.7 KB per record (34 MB here).
    assert peak < 400 * 20_000, peak


def test_replay_loads_compact_calls(many: Path) -> None:
    from governor.cli._replay import load_records

    args = argparse.Namespace(db=str(many), prefix=None, task=[])
    kept: list[object] = []
    peak = _peak(lambda: kept.extend(load_records(args)))
    assert len(kept) == 20_000
    # SpendRecords, with their parts, took well over 1 KB each.
    assert peak < 600 * 20_000, peak


def test_compact_calls_replay_as_records_do(many: Path) -> None:
    from governor._replay import recorded_calls

    records = list(JsonlSpendStore(many).query())[:3000]
    policy = load_policy("default")
    as_records = replay(records, policy)
    as_calls = replay(recorded_calls(records), policy)
    assert as_calls.as_dict() == as_records.as_dict()
    assert as_calls.tasks == as_records.tasks


def test_a_query_never_iterated_holds_no_file(tmp_path: Path) -> None:
    """query() reads the file once to check it, then opens it again only when
    its records are asked for: an unused iterator leaves nothing open."""
    import warnings

    store = JsonlSpendStore(tmp_path / "q.jsonl")
    store.record_many([rec(0)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        unused = store.query()
        del unused
        gc.collect()
    assert [r.call_id for r in store.query()] == ["call-0"]
