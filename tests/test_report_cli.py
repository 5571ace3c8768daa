"""``governor report``: tables, JSON, CSV, HTML and PNG from a spend store."""

from __future__ import annotations

import csv
import gzip
import io
import json
import sqlite3
import struct
import zlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from conftest import free_port
from governor.cli import main
from governor.cli._report import parse_when
from governor.spend import (
    JsonlSpendStore,
    RedisSpendStore,
    SpendRecord,
    SQLiteSpendStore,
)
from governor.spend._png import encode_png

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
TEAMS = ("search", "ads")
ORGS = ("acme", "globex", None)


def record(i: int) -> SpendRecord:
    """Call i: team search for even i, ads for odd; cost 0.001 x (i + 1).

    org cycles acme, globex, unset: acme 0.022, globex 0.015, unset 0.018.
    """
    return SpendRecord(
        ts=T0 + timedelta(hours=3 * i),
        task_id=f"task-{i % 4}",
        call_id=f"call-{i}",
        model="gpt-4o-mini",
        provider="openai",
        input_tokens=1000,
        output_tokens=100,
        cost_usd=Decimal("0.001") * (i + 1),
        team=TEAMS[i % 2],
        feature="qa",
        environment="prod",
        org=ORGS[i % 3],
        tags={"customer": "acme" if i < 4 else "globex"},
    )


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A SQLite store holding ten calls over 27 hours."""
    path = tmp_path / "spend.sqlite3"
    with SQLiteSpendStore(path) as store:
        store.record_many(record(i) for i in range(10))
    return str(path)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``governor report`` and return exit code, stdout and stderr."""
    code = main(["report", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_table_lists_cost_per_team(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The team table holds each team's calls and exact cost."""
    code, out, _ = run(capsys, "--db", db, "--by", "team")
    rows = {line.split()[0]: line.split() for line in out.splitlines()[4:6]}
    assert code == 0
    assert (rows["search"][1], rows["search"][4]) == ("5", "0.025000")
    assert (rows["ads"][1], rows["ads"][4]) == ("5", "0.030000")


def test_default_tables_are_team_feature_model_day_and_tasks(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --by the report shows team, feature, model, day and top tasks."""
    _, out, _ = run(capsys, "--db", db)
    titles = [line for line in out.splitlines() if line.startswith(("By ", "Top "))]
    assert titles == ["By team", "By feature", "By model", "By day", "Top 10 tasks"]


def test_table_by_hour_prints_the_hours(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--by hour in the table format prints a table, as JSON and CSV do."""
    _, out, _ = run(capsys, "--db", db, "--by", "hour")
    _, document, _ = run(capsys, "--db", db, "--format", "json", "--by", "hour")
    hours = [g["key"] for g in json.loads(document)["groups"]["hour"]]
    block = out.split("By hour\n", 1)[1].splitlines()[1:]
    assert sorted(line.split()[0] for line in block) == sorted(
        key.split()[0] if " " in key else key for key in hours
    )


def test_json_totals_are_exact_strings(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--format json prints one document with money as decimal strings."""
    _, out, _ = run(capsys, "--db", db, "--format", "json", "--by", "day")
    document = json.loads(out)
    days = {g["key"]: g["cost_usd"] for g in document["groups"]["day"]}
    assert document["total"]["cost_usd"] == "0.055"
    assert days == {"2026-12-01": "0.021", "2026-12-02": "0.034"}


def test_csv_has_one_row_per_group(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--format csv names the grouping in a column."""
    _, out, _ = run(capsys, "--db", db, "--format", "csv", "--by", "tag.customer")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["by"], r["key"], r["cost_usd"]) for r in rows] == [
        ("tag.customer", "globex", "0.045000"),
        ("tag.customer", "acme", "0.010000"),
    ]


def test_csv_keeps_a_formula_in_a_key_as_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A team named like a spreadsheet formula is written with a leading quote."""
    path = tmp_path / "spend.sqlite3"
    with SQLiteSpendStore(path) as store:
        formula = replace(record(0), team='=HYPERLINK("x")')
        store.record_many([formula, replace(record(1), team="-1")])
    _, out, _ = run(capsys, "--db", str(path), "--format", "csv", "--by", "team")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert sorted(r["key"] for r in rows) == ["'-1", '\'=HYPERLINK("x")']


def test_table_escapes_control_characters_in_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A team name with a newline or an escape cannot break or drive the table."""
    path = tmp_path / "spend.sqlite3"
    with SQLiteSpendStore(path) as store:
        store.record_many([replace(record(0), team="a\nb\x1b[31m")])
    _, out, _ = run(capsys, "--db", str(path), "--by", "team")
    assert ("a\\nb\\x1b[31m" in out, "\x1b" in out) == (True, False)


def test_since_and_filter_narrow_the_calls(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--since and --filter keep only matching calls."""
    args = ["--db", db, "--format", "json", "--by", "team"]
    _, out, _ = run(capsys, *args, "--since", "2026-12-02", "--filter", "team=ads")
    assert json.loads(out)["total"] == {
        "calls": 2,
        "input_tokens": 2000,
        "output_tokens": 200,
        "cost_usd": "0.018",
        "saved_usd": "0",
        "cache_hits": 0,
        "refused": 0,
        "errors": 0,
    }


def test_top_limits_the_task_list(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--top N keeps the N most expensive tasks."""
    args = ["--db", db, "--format", "json", "--by", "task", "--top", "2"]
    _, out, _ = run(capsys, *args)
    tasks = json.loads(out)["groups"]["task"]
    assert [(t["key"], t["cost_usd"]) for t in tasks] == [
        ("task-1", "0.018"),
        ("task-0", "0.015"),
    ]


def test_reads_a_jsonl_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--db accepts a JSONL trace file."""
    path = tmp_path / "trace.jsonl"
    JsonlSpendStore(path).record_many(record(i) for i in range(3))
    _, out, _ = run(capsys, "--db", str(path), "--format", "json", "--by", "team")
    assert json.loads(out)["total"]["cost_usd"] == "0.006"


def test_missing_store_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --db path that does not exist exits 1 and creates nothing."""
    path = tmp_path / "none.sqlite3"
    code, _, err = run(capsys, "--db", str(path))
    assert (code, path.exists()) == (1, False)
    assert "no spend store at" in err
    assert 'Governor(policy, spend="spend.sqlite3")' in err


def test_bad_grouping_is_an_error(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown --by key exits 2, as a bad option does, listing the keys."""
    code, _, err = run(capsys, "--db", db, "--by", "colour")
    assert code == 2
    assert "cannot group spend by 'colour'" in err


def test_parse_when_relative_and_iso() -> None:
    """7d means seven days before now; a date without zone is UTC."""
    now = datetime(2026, 12, 8, 12, 0, tzinfo=UTC)
    assert parse_when("7d", now=now) == datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert parse_when("2026-12-01", now=now) == datetime(2026, 12, 1, tzinfo=UTC)


def test_html_has_inline_svg_charts(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--html writes a page with spend over time, by team and top tasks."""
    page = tmp_path / "report.html"
    run(capsys, "--db", db, "--by", "team", "--html", str(page))
    text = page.read_text()
    assert text.count("<svg ") == 3
    assert "Spend per hour (USD)" in text
    assert "Top 4 tasks by spend" in text
    assert ">$0.0300</text>" in text


def read_png(data: bytes) -> np.ndarray:
    """Decode an 8-bit RGB, non-interlaced PNG with filter 0 rows."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    chunks, pos = b"", 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        if data[pos + 4 : pos + 8] == b"IDAT":
            chunks += data[pos + 8 : pos + 8 + length]
        pos += length + 12
    rows = np.frombuffer(zlib.decompress(chunks), dtype=np.uint8)
    return rows.reshape(height, width * 3 + 1)[:, 1:].reshape(height, width, 3)


def test_png_encoder_round_trips_pixels() -> None:
    """encode_png writes pixels a PNG decoder reads back unchanged."""
    canvas = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert np.array_equal(read_png(encode_png(canvas)), canvas)


def test_png_report_draws_bars(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--png writes a valid PNG whose bars are drawn in the bar colour."""
    path = tmp_path / "report.png"
    run(capsys, "--db", db, "--by", "team", "--png", str(path))
    pixels = read_png(path.read_bytes())
    bar = np.all(pixels == (0x3B, 0x6E, 0xA5), axis=2)
    assert pixels.shape[1] == 760
    assert bar.sum() > 1000


def org_groups(out: str) -> list[tuple[str | None, int, str]]:
    """The (key, calls, cost_usd) rows of the org grouping in a JSON report."""
    rows = json.loads(out)["groups"]["org"]
    return [(g["key"], g["calls"], g["cost_usd"]) for g in rows]


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_by_org_sums_each_org(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--by org groups calls by organisation, highest cost first, unset as null."""
    path = tmp_path / ("spend.sqlite3" if kind == "sqlite" else "trace.jsonl")
    with SQLiteSpendStore(path) if kind == "sqlite" else JsonlSpendStore(path) as s:
        s.record_many(record(i) for i in range(10))
    code, out, _ = run(capsys, "--db", str(path), "--format", "json", "--by", "org")
    assert code == 0
    assert org_groups(out) == [
        ("acme", 4, "0.022"),
        (None, 3, "0.018"),
        ("globex", 3, "0.015"),
    ]


def test_table_by_org(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The table report has a "By org" block with each org's exact cost."""
    _, out, _ = run(capsys, "--db", db, "--by", "org")
    lines = out.splitlines()
    block = lines[lines.index("By org") + 2 : lines.index("By org") + 5]
    assert [(line.split()[0], line.split()[4]) for line in block] == [
        ("acme", "0.022000"),
        ("(none)", "0.018000"),
        ("globex", "0.015000"),
    ]


def test_filter_by_org(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--filter org=globex keeps only that organisation's calls."""
    args = ["--db", db, "--format", "json", "--by", "team"]
    _, out, _ = run(capsys, *args, "--filter", "org=globex")
    total = json.loads(out)["total"]
    assert (total["calls"], total["cost_usd"]) == (3, "0.015")


def test_report_on_a_file_from_before_org(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A spend file without the org column reports, its calls with org unset."""
    path = tmp_path / "old.sqlite3"
    with SQLiteSpendStore(path) as store:
        store.record_many(record(i) for i in range(3))
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE spend DROP COLUMN org")
        conn.execute("PRAGMA user_version=1")
    conn.close()
    code, out, _ = run(capsys, "--db", str(path), "--format", "json", "--by", "org")
    assert (code, org_groups(out)) == (0, [(None, 3, "0.006")])


def test_help_names_org(capsys: pytest.CaptureFixture[str]) -> None:
    """report --help lists org among the groupings and the filters."""
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "user, session, org, task or tag.NAME" in help_text
    assert "session, org or tag.NAME" in help_text


def test_an_inverted_time_range_is_refused(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--since after --until exits 2 saying so, rather than an empty report."""
    args = ["--since", "2026-12-02", "--until", "2026-12-01"]
    code, out, err = run(capsys, "--db", db, *args)
    assert (code, out) == (2, "")
    assert "--since 2026-12-02 (2026-12-02 00:00:00 UTC) is not before" in err


def test_an_empty_time_range_is_refused(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--since equal to --until holds no instant (until is exclusive): exit 2."""
    args = ["--since", "2026-12-01", "--until", "2026-12-01T00:00:00Z"]
    code, _, err = run(capsys, "--db", db, *args)
    assert (code, "is not before --until" in err) == (2, True)


@pytest.mark.parametrize("top", ["-1", "0", "ten"])
def test_top_must_be_a_positive_whole_number(
    top: str, db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--top -1 (or 0, or a word) is refused by the parser with exit 2."""
    with pytest.raises(SystemExit) as exited:
        main(["report", "--db", db, "--top", top])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert f"--top: must be a positive whole number (1 or more), got '{top}'" in err


def write_trace(path: Path, *lines: bytes) -> str:
    """A JSONL trace: one good record, then ``lines`` as they are."""
    good = json.dumps(record(0).to_json_dict()).encode()
    path.write_bytes(b"\n".join([good, *lines]) + b"\n")
    return str(path)


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (b'{"team": "\xff"}', "2: not UTF-8 text (byte 0xff at position 11)"),
        (b"not json", "2: not JSON (Expecting value at column 1)"),
        (b"[1, 2]", "2: a JSON array, not a spend record"),
    ],
)
def test_a_bad_trace_line_is_named_by_file_and_line(
    line: bytes, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad bytes, bad JSON or a non-object: exit 1 naming file:line, and a fix."""
    path = write_trace(tmp_path / "trace.jsonl", line)
    code, _, err = run(capsys, "--db", path)
    assert (code, f"{path}:{says}" in err) == (1, True)
    assert "fix or delete this line" in err


def test_a_byte_order_mark_is_not_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trace an editor saved with a UTF-8 BOM still reads."""
    path = tmp_path / "trace.jsonl"
    write_trace(path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    code, out, _ = run(capsys, "--db", str(path), "--format", "json", "--by", "team")
    assert (code, json.loads(out)["total"]["calls"]) == (0, 1)


def headline(out: str) -> str:
    """The report's first line, with the store's path cut off."""
    return out.splitlines()[0].split(": ", 1)[1]


def test_an_empty_report_says_no_calls_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No calls reads "no calls", not "no calls, 0 calls, $0.000000"."""
    path = tmp_path / "trace.jsonl"
    path.write_text("")
    code, out, _ = run(capsys, "--db", str(path), "--by", "team")
    assert (code, headline(out)) == (0, "no calls")


def test_one_call_is_one_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The headline counts "1 call", not "1 calls"."""
    path = write_trace(tmp_path / "trace.jsonl")
    _, out, _ = run(capsys, "--db", path, "--by", "team")
    assert headline(out) == (
        "2026-12-01 08:00 .. 2026-12-01 08:00 UTC, 1 call, $0.001000 (saved $0.000000)"
    )


@pytest.fixture
def unset_teams(tmp_path: Path) -> str:
    """Teams None, "", "  " (all unset: 0.006) and one named "(none)" (0.004)."""
    path = tmp_path / "spend.sqlite3"
    teams = (None, "", "  ", "(none)")
    with SQLiteSpendStore(path) as store:
        store.record_many(replace(record(i), team=t) for i, t in enumerate(teams))
    return str(path)


def test_blank_teams_are_unset_and_apart_from_a_team_named_none(
    unset_teams: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table has one (none) row for unset teams; "(none)" the name is quoted."""
    _, out, _ = run(capsys, "--db", unset_teams, "--by", "team")
    rows = [line.split()[:2] for line in out.splitlines()[4:]]
    assert rows == [["(none)", "3"], ['"(none)"', "1"]]


def test_json_and_csv_give_unset_no_name(
    unset_teams: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """JSON keys the unset row null and CSV leaves its key empty."""
    args = ["--db", unset_teams, "--by", "team", "--format"]
    _, out, _ = run(capsys, *args, "json")
    json_keys = [g["key"] for g in json.loads(out)["groups"]["team"]]
    _, out, _ = run(capsys, *args, "csv")
    csv_keys = [r["key"] for r in csv.DictReader(io.StringIO(out))]
    assert (json_keys, csv_keys) == ([None, "(none)"], ["", "(none)"])


def test_a_folder_as_the_store_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--db pointing at a folder exits 1 saying it is a folder."""
    folder = tmp_path / "trace.jsonl"
    folder.mkdir()
    code, _, err = run(capsys, "--db", str(folder))
    assert (code, f"{folder} is a folder, not a spend store" in err) == (1, True)


def test_a_folder_as_the_html_file_is_refused_before_reading(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--html FOLDER exits 2 and prints no report."""
    code, out, err = run(capsys, "--db", db, "--html", str(tmp_path))
    assert (code, out) == (2, "")
    assert f"--html {tmp_path} is a folder" in err


def test_an_unwritable_png_path_is_named(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--png in a missing folder exits 2 before the report, naming the path."""
    path = tmp_path / "missing" / "r.png"
    code, out, err = run(capsys, "--db", db, "--png", str(path))
    assert (code, out) == (2, "")
    assert f"--png {path}: no such folder {path.parent}" in err


def test_an_empty_filter_value_keeps_the_unset_calls(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--filter org= keeps the calls with no org (calls 2, 5 and 8)."""
    args = ["--db", db, "--format", "json", "--by", "org", "--filter", "org="]
    code, out, _ = run(capsys, *args)
    assert (code, org_groups(out)) == (0, [(None, 3, "0.018")])


def test_an_empty_filter_value_keeps_blank_values_too(
    unset_teams: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--filter team= keeps None, "" and blank teams, the report's unset row."""
    args = ["--db", unset_teams, "--format", "json", "--by", "team"]
    _, out, _ = run(capsys, *args, "--filter", "team=")
    total = json.loads(out)["total"]
    assert (total["calls"], total["cost_usd"]) == (3, "0.006")


def test_html_tells_the_unset_row_from_a_team_named_none(
    unset_teams: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The chart labels read (none) for unset and "(none)" for the name."""
    page = tmp_path / "report.html"
    run(capsys, "--db", unset_teams, "--by", "team", "--html", str(page))
    html = page.read_text()
    assert (html.count(">(none)<"), html.count(">&quot;(none)&quot;<")) == (1, 1)


def test_an_unknown_filter_key_exits_2_before_the_store_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--filter foo=bar is a bad option: exit 2, as a bad --by is, not 1.

    The key is checked before the store is opened, so even a missing store
    reports the filter.
    """
    code, out, err = run(
        capsys, "--db", str(tmp_path / "none.sqlite3"), "--filter", "foo=bar"
    )
    assert (code, out) == (2, "")
    assert err == (
        "governor report: unknown spend filter 'foo'; use one of task_id, "
        "call_id, model, provider, outcome, team, feature, environment, user, "
        "session, org or 'tag.<name>'\n"
    )


def test_an_unreachable_redis_store_says_what_to_do(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--db redis://... with nothing listening: exit 1, the URL and the fixes.

    Not a bare "ConnectionError: Error 111 ..." as before.
    """
    port = free_port()
    url = f"redis://user:secret@127.0.0.1:{port}/0"
    code, out, err = run(capsys, "--db", url)
    assert (code, out) == (1, "")
    assert err == (
        f"governor report: cannot reach the Redis spend store at "
        f"redis://user:***@127.0.0.1:{port}/0 (from --db): Error 111 connecting "
        f"to 127.0.0.1:{port}. Connection refused. Check the URL (host, port, "
        "database, password, TLS), start Redis there, or pass --db (or set "
        "GOVERNOR_SPEND_DB) to the store your services record spend to.\n"
    )


def test_an_unreachable_redis_store_from_the_environment_is_named(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no --db, the message says the URL came from GOVERNOR_SPEND_DB."""
    port = free_port()
    monkeypatch.setenv("GOVERNOR_SPEND_DB", f"redis://127.0.0.1:{port}/0")
    code, _, err = run(capsys)
    assert code == 1
    assert err.startswith(
        f"governor report: cannot reach the Redis spend store at "
        f"redis://127.0.0.1:{port}/0 (from GOVERNOR_SPEND_DB): Error 111"
    )


def test_a_spans_file_given_as_the_store_is_named_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--db at a traces JSONL says it holds spans and how to record spend."""
    spans = tmp_path / "spans.jsonl"
    line = {"name": "chat gpt-4o-mini", "trace_id": "ab" * 16, "span_id": "cd" * 8}
    spans.write_text(json.dumps(line) + "\n")
    code, _, err = run(capsys, "--db", str(spans))
    assert code == 1
    assert "looks like a span" in err
    assert "Governor(policy, spend=PATH)" in err


def test_wide_characters_keep_the_table_columns_aligned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A team named in Chinese takes two columns a character: cells still line up."""
    from governor.cli._text import width

    path = tmp_path / "spend.sqlite3"
    with SQLiteSpendStore(path) as store:
        store.record_many(
            replace(record(i), team=("搜索团队", "ads")[i % 2]) for i in range(4)
        )
    _, out, _ = run(capsys, "--db", str(path), "--by", "team")
    block = out.split("By team\n", 1)[1].splitlines()[:3]
    assert len({width(line) for line in block}) == 1


def test_prefix_reads_only_that_deployments_redis_records(
    redis_url: str, redis_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--prefix X reads the Redis store under X only, and says so."""
    for name, team in (("a", "search"), ("b", "ads")):
        prefix = f"{redis_prefix}{name}:"
        with RedisSpendStore.from_url(redis_url, prefix=prefix) as store:
            rows = [replace(record(i), team=team) for i in range(3)]
            store.record_many(rows)
    prefix = f"{redis_prefix}a:"
    code, out, err = run(
        capsys, "--db", redis_url, "--prefix", prefix, "--by", "team", "--format",
        "json",
    )  # fmt: skip
    groups = json.loads(out)["groups"]["team"]
    assert (code, err) == (0, "")
    assert [(g["key"], g["calls"]) for g in groups] == [("search", 3)]
    _, table, _ = run(capsys, "--db", redis_url, "--prefix", prefix, "--by", "team")
    assert table.startswith(f"Spend in {redis_url} (prefix {prefix}): ")


def test_prefix_with_a_store_that_is_not_redis_exits_2(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--prefix names Redis keys: with a SQLite store it is a bad option."""
    code, out, err = run(capsys, "--db", db, "--prefix", "deployA:")
    assert (code, out) == (2, "")
    assert err == (
        f"governor report: a key prefix applies only to a Redis spend store, and "
        f"{db!r} is not one: drop the prefix, or name the redis:// URL that "
        "holds the records\n"
    )


def test_a_prefix_with_a_brace_exits_2(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A brace in --prefix would move the {spend} hash tag: refused."""
    code, _, err = run(capsys, "--db", redis_url, "--prefix", "deployA:{spend}:")
    assert code == 2
    assert "must be free of '{' and '}'" in err


def test_repeated_call_ids_in_a_trace_are_counted_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A line repeating a call_id is skipped, as SQLite and Redis skip it, and
    the table says how many were."""
    path = tmp_path / "trace.jsonl"
    JsonlSpendStore(path).record_many(record(i) for i in range(3))
    JsonlSpendStore(path).record_many(record(i) for i in range(2))
    code, out, _ = run(capsys, "--db", str(path), "--by", "team")
    assert code == 0
    assert "3 calls, $0.006000" in out.splitlines()[0]
    assert out.rstrip().endswith(
        "Note: skipped 2 line(s) repeating the call_id of an earlier line; the "
        "first record of each call is counted"
    )
    code, out, _ = run(capsys, "--db", str(path), "--format", "json")
    assert json.loads(out)["total"]["calls"] == 3


def test_reads_a_gzip_compressed_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A .jsonl.gz trace is read, not taken for a SQLite file."""
    plain = tmp_path / "trace.jsonl"
    JsonlSpendStore(plain).record_many(record(i) for i in range(3))
    path = tmp_path / "trace.jsonl.gz"
    path.write_bytes(gzip.compress(plain.read_bytes()))
    code, out, err = run(capsys, "--db", str(path), "--format", "json")
    assert (code, err) == (0, "")
    assert json.loads(out)["total"]["cost_usd"] == "0.006"


def test_a_null_model_is_named_by_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record whose model is null exits 1 naming its line, not as "(none)"."""
    line = json.dumps({**record(1).to_json_dict(), "model": None}).encode()
    path = write_trace(tmp_path / "trace.jsonl", line)
    code, out, err = run(capsys, "--db", path, "--by", "model")
    assert (code, out) == (1, "")
    assert f"{path}:2: malformed spend record: SpendRecord.model must be" in err
