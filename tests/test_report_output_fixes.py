"""``governor report`` output that any reader takes back as it was written:
CSV fields with line breaks, formula-guarded keys, PNG digits, plain money,
one notice of skipped duplicate lines."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from governor.cli import main
from governor.spend import JsonlSpendStore, SpendRecord
from governor.spend._charts import Text
from governor.spend._png import _GLYPHS, _draw_text

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def rec(i: int, **changes: object) -> SpendRecord:
    """Call i of team "t", costing a thousandth of a dollar."""
    fields: dict[str, object] = {
        "ts": T0 + timedelta(minutes=i),
        "task_id": f"task-{i}",
        "call_id": f"call-{i}",
        "model": "gpt-4o-mini",
        "cost_usd": Decimal("0.001"),
        "team": "t",
    }
    fields.update(changes)
    return SpendRecord(**fields)  # type: ignore[arg-type]  # mixed value types


def trace(tmp_path: Path, *records: SpendRecord) -> str:
    """A spend JSONL file holding ``records``."""
    path = tmp_path / "spend.jsonl"
    JsonlSpendStore(path).record_many(records)
    return str(path)


def report(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run ``governor report``, expect exit 0, return its stdout."""
    code = main(["report", *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_csv_quotes_carriage_returns_and_newlines_so_readers_round_trip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key holding a bare "\\r" (or "\\n") is quoted: csv.reader reads it back
    whole instead of raising "new-line character seen in unquoted field"."""
    db = trace(
        tmp_path,
        rec(0, tags={"k": "cr\rx"}, model="my\rmodel"),
        rec(1, tags={"k": "nl\nx"}, model="a,b"),
        rec(2, tags={"k": 'q"r\r\n'}, model="plain"),
    )
    out = report(
        capsys, "--db", db, "--by", "tag.k", "--by", "model", "--format", "csv"
    )
    rows = list(csv.DictReader(io.StringIO(out, newline="")))
    assert sorted((r["by"], r["key"]) for r in rows) == [
        ("model", "a,b"),
        ("model", "my\rmodel"),
        ("model", "plain"),
        ("tag.k", "cr\rx"),
        ("tag.k", "nl\nx"),
        ("tag.k", 'q"r\r\n'),
    ]
    assert {r["calls"] for r in rows} == {"1"}
    assert out.startswith("by,key,calls,")
    assert out.endswith("\n")


def test_csv_formula_guard_keeps_every_key_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Teams "-7" and "'-7" print as two keys, and stripping the one leading
    quote a guarded key got gives back each team's name."""
    teams = ["-7", "'-7", "''-7", "=1", "'=1", "'", "plain", "+x", "@y", "\tz"]
    db = trace(tmp_path, *(rec(i, team=t) for i, t in enumerate(teams)))
    out = report(capsys, "--db", db, "--by", "team", "--format", "csv")
    keys = [r["key"] for r in csv.DictReader(io.StringIO(out, newline=""))]
    assert len(set(keys)) == len(teams)
    assert {"'-7", "''-7", "'''-7", "''"} <= set(keys)
    stripped = sorted(k[1:] if k.startswith("'") else k for k in keys)
    assert stripped == sorted(teams)


def glyph_pixels(x: float, text: str) -> np.ndarray:
    """The inked pixels of ``text`` drawn at ``x``, cropped to their box."""
    canvas = np.full((20, 120, 3), 255, dtype=np.uint8)
    _draw_text(canvas, Text(x, 12, text))
    ink = np.any(canvas != 255, axis=2)
    rows, cols = np.nonzero(ink)
    return ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


@pytest.mark.parametrize("x", [10, 11, 13.5, 7.25])
def test_png_text_keeps_each_glyph_column_at_a_half_pixel_x(x: float) -> None:
    """A label drawn half a pixel further right has the same pixels: no
    one-pixel glyph column is rounded away (round() rounds halves to even)."""
    text = "$0.000040 1"
    assert np.array_equal(glyph_pixels(x + 0.5, text), glyph_pixels(x, text))


@pytest.mark.parametrize("x", [10.5, 11.5])
def test_png_half_pixel_label_has_every_glyph_pixel(x: float) -> None:
    """Each character at a half-pixel x sets one pixel per bit of its glyph."""
    for char in "0124$":
        bits = sum(bin(row).count("1") for row in _GLYPHS[char])
        assert int(glyph_pixels(x, char).sum()) == bits, char


def test_json_report_writes_money_in_plain_notation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Totals that str() would write as "1.5E-7" or "1E+2" are plain decimals."""
    db = trace(
        tmp_path,
        rec(0, cost_usd=Decimal("1.5E-7"), saved_usd=Decimal("1E+2")),
    )
    out = report(capsys, "--db", db, "--by", "team", "--format", "json")
    document = json.loads(out)
    (row,) = document["groups"]["team"]
    total = document["total"]
    assert (total["cost_usd"], total["saved_usd"]) == ("0.00000015", "100")
    assert (row["cost_usd"], row["saved_usd"]) == ("0.00000015", "100")


def test_report_reads_money_written_in_exponent_form(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Records written before plain notation ("1.5E-7") still read exactly."""
    line = rec(0).to_json_dict() | {"cost_usd": "1.5E-7", "saved_usd": "2E+1"}
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps(line) + "\n")
    out = report(capsys, "--db", str(path), "--by", "team", "--format", "json")
    total = json.loads(out)["total"]
    assert (total["cost_usd"], total["saved_usd"]) == ("0.00000015", "20")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m governor.cli`` in a process of its own, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "governor.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_skipped_duplicate_lines_are_told_once_per_report(tmp_path: Path) -> None:
    """A table report says it once (its note line), not also on stderr; the
    JSON and CSV reports keep stdout clean and say it once on stderr."""
    db = trace(tmp_path, rec(0), rec(1), rec(1, cost_usd=Decimal(5)))
    said = "repeating the call_id of an earlier"
    table = cli("report", "--db", db, "--by", "team")
    assert table.returncode == 0, table.stderr
    assert (table.stdout + table.stderr).count(said) == 1
    assert said in table.stdout.splitlines()[-1]
    for fmt in ("json", "csv"):
        done = cli("report", "--db", db, "--by", "team", "--format", fmt)
        assert (done.returncode, done.stdout.count(said)) == (0, 0)
        assert done.stderr.count(said) == 1


# -- timestamps at the ends of the calendar ---------------------------------


def test_a_record_whose_time_is_past_year_9999_in_utc_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It overflowed into an unexpected OverflowError, with no line."""
    line = json.dumps(
        {**rec(0).to_json_dict(), "ts": "9999-12-31T23:59:59.999999-01:00"}
    )
    path = tmp_path / "late.jsonl"
    path.write_text(line + "\n")
    assert main(["report", "--db", str(path)]) != 0
    err = capsys.readouterr().err
    assert "late.jsonl:1: " in err
    assert "outside the years a UTC time can hold" in err
    assert "OverflowError" not in err


def test_days_of_early_years_are_written_with_four_digits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    early = datetime(1, 1, 1, tzinfo=UTC)
    db = trace(tmp_path, rec(0, ts=early), rec(1, ts=early + timedelta(days=2)))
    page = tmp_path / "early.html"
    out = report(capsys, "--db", db, "--by", "day", "--html", str(page))
    assert "Spend in" in out
    assert "0001-01-01 00:00 .. 0001-01-03 00:00 UTC" in out
    assert "0001-01-03" in out
    assert "0001-01-01" in page.read_text()


def test_records_centuries_apart_chart_only_the_days_with_spend(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Filling every day from year 1000 to 9999 took a minute and 223 MB."""
    db = trace(
        tmp_path,
        rec(0, ts=datetime(1000, 1, 1, tzinfo=UTC)),
        rec(1, ts=datetime(9999, 12, 31, 23, tzinfo=UTC)),
    )
    page = tmp_path / "far.html"
    report(capsys, "--db", db, "--by", "day", "--html", str(page))
    text = page.read_text()
    assert "1000-01-01" in text
    assert "9999-12-31" in text
    assert "1000-01-02" not in text
    assert len(text) < 100_000


def test_the_last_day_of_year_9999_charts_without_overflow(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    last = datetime(9999, 12, 31, 23, tzinfo=UTC)
    db = trace(tmp_path, rec(0, ts=last - timedelta(days=1)), rec(1, ts=last))
    page = tmp_path / "end.png"
    report(capsys, "--db", db, "--by", "day", "--png", str(page))
    assert page.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
