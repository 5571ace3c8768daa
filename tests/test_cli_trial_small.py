"""Small things a user trial of the ``governor`` command found, each fixed.

``compare --help`` says when B defaults to A; ``report`` on a Redis prefix
that holds nothing says to check ``--prefix``; ``replay`` and ``compare``
sum up their budget warnings in one line; a locked SQLite store says to
retry; a negative token count names its field; the PNG font draws every
printable ASCII character; ``--since -5d`` says to write ``5d``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import string
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from governor.cli import main
from governor.spend import JsonlSpendStore, RedisSpendStore, SpendRecord
from governor.spend._charts import Chart, Text
from governor.spend._png import render_png
from governor.spend._sqlite import SQLiteSpendStore

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
CALL_USD = Decimal("0.0045")  # gpt-4o, 1000 input and 200 output tokens
WARNING_TEXT = "has used"


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOVERNOR_DEBUG", raising=False)


def _record(n: int, **fields: object) -> SpendRecord:
    values: dict[str, object] = {
        "ts": T0 + timedelta(minutes=n),
        "task_id": f"task-{n}",
        "call_id": f"call-{n}",
        "model": "gpt-4o",
        "input_tokens": 1000,
        "output_tokens": 200,
        "cost_usd": CALL_USD,
        "team": "search",
    }
    values.update(fields)
    return SpendRecord(**values)  # type: ignore[arg-type]


# 1. compare --help


def test_compare_help_says_b_defaults_to_a_only_with_model(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The help no longer promises B = A by default, which the command refuses."""
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "default: same as A" not in help_text
    assert "give --b, --model OLD=NEW or both" in help_text
    assert "with --model alone, B is policy A with the models swapped" in help_text
    trace = tmp_path / "trace.jsonl"
    JsonlSpendStore(trace).record(_record(0))
    assert main(["compare", "--db", str(trace)]) == 2
    assert "give --b POLICY or --model OLD=NEW" in capsys.readouterr().err


# 2. report on a Redis prefix that holds nothing

HINT = "holds no spend records under this prefix"


@pytest.mark.parametrize("extra", [[], ["--format", "json"], ["--since", "7d"]])
def test_report_on_an_empty_redis_prefix_says_to_check_it(
    redis_url: str,
    redis_prefix: str,
    extra: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Nothing under the prefix: the report, and a note naming the keys read."""
    code = main(["report", "--db", redis_url, "--prefix", redis_prefix, *extra])
    captured = capsys.readouterr()
    assert code == 0
    assert HINT in captured.err
    assert f"{redis_prefix}{{spend}}:h and {redis_prefix}{{spend}}:z" in captured.err
    assert "pass the same with --prefix" in captured.err
    if extra[:1] == ["--format"]:
        assert json.loads(captured.out)["total"]["calls"] == 0
    else:
        assert "no calls" in captured.out


@pytest.mark.parametrize(
    "extra", [[], ["--filter", "team=nobody"], ["--since", "2030-01-01"]]
)
def test_report_on_a_redis_prefix_with_records_gives_no_note(
    redis_url: str,
    redis_prefix: str,
    extra: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Filters or a range that match nothing are no sign of a wrong prefix."""
    store = RedisSpendStore.from_url(redis_url, prefix=redis_prefix)
    try:
        store.record(_record(0))
    finally:
        store.close()
    code = main(["report", "--db", redis_url, "--prefix", redis_prefix, *extra])
    captured = capsys.readouterr()
    assert code == 0
    assert HINT not in captured.err
    assert ("no calls" in captured.out) == bool(extra)


# 3. replay and compare: one line for the budget warnings


@pytest.fixture
def tight(tmp_path: Path) -> tuple[Path, Path]:
    """Three days of nine calls, each day 90% of a team's day budget; the
    calls name no user, which a user budget warns about once per replay."""
    trace = tmp_path / "trace.jsonl"
    calls = [
        _record(day * 24 * 60 + n, task_id=f"day-{day}")
        for day in range(3)
        for n in range(9)
    ]
    JsonlSpendStore(trace).record_many(calls)
    policy = tmp_path / "tight.json"
    budgets = [
        {"scope": "team", "max_usd": str(CALL_USD * 10), "period": "day"},
        {"scope": "user", "max_usd": "100", "period": "day"},
    ]
    policy.write_text(json.dumps({"budgets": budgets}))
    return trace, policy


@pytest.fixture
def engine_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.WARNING, logger="governor._engine"):
        yield caplog


def _engine_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "governor._engine"]


def test_replay_sums_up_budget_warnings_in_one_line(
    tight: tuple[Path, Path],
    engine_log: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No warning per line and day, one line counting them; others still show."""
    trace, policy = tight
    assert main(["replay", "--db", str(trace), "--policy", str(policy)]) == 0
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "governor replay: 3 budget warnings (a line past a warn_at fraction) on "
        "3 budget lines held back; pass --verbose to print each"
    ]
    logged = _engine_warnings(engine_log)
    assert not [m for m in logged if WARNING_TEXT in m]
    assert [m for m in logged if m.startswith("a task names no user")]


@pytest.mark.parametrize("flag", ["-v", "--verbose"])
def test_replay_verbose_prints_each_budget_warning(
    tight: tuple[Path, Path],
    flag: str,
    engine_log: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    trace, policy = tight
    assert main(["replay", "--db", str(trace), "--policy", str(policy), flag]) == 0
    assert "held back" not in capsys.readouterr().err
    warned = [m for m in _engine_warnings(engine_log) if WARNING_TEXT in m]
    assert [m.split()[1] for m in warned] == [
        f"team:search#day:2026-11-0{day}@UTC" for day in (2, 3, 4)
    ]


def test_compare_sums_up_both_runs_budget_warnings(
    tight: tuple[Path, Path],
    engine_log: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    trace, policy = tight
    argv = ["compare", "--db", str(trace), "--a", str(policy), "--json"]
    assert main([*argv, "--model", "gpt-4o=gpt-4o"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["a"]["tasks"] == 3
    assert captured.err.splitlines() == [
        "governor compare: 6 budget warnings (a line past a warn_at fraction) on "
        "3 budget lines held back; pass --verbose to print each"
    ]
    assert not [m for m in _engine_warnings(engine_log) if WARNING_TEXT in m]


# 4. a locked SQLite store


def test_a_locked_sqlite_store_says_to_retry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another connection holds an exclusive lock: the report waits its busy
    timeout (5 s), then says the store is locked, not that it is unreadable."""
    path = tmp_path / "spend.sqlite3"
    with SQLiteSpendStore(path) as store:
        store.record(_record(0))
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("PRAGMA journal_mode=DELETE")
        holder.execute("BEGIN EXCLUSIVE")
        code = main(["report", "--db", str(path)])
    finally:
        holder.close()
    err = capsys.readouterr().err
    assert code == 1
    assert "another process holds a lock on it (database is locked" in err
    assert "retry once that process has finished its write" in err
    assert "check that the file can be read" not in err
    assert main(["report", "--db", str(path), "--format", "json"]) == 0


# 5. a negative token count


def test_a_negative_token_count_names_its_field_and_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = _record(0).to_json_dict()
    document["cache_read_tokens"] = -7
    trace = tmp_path / "trace.jsonl"
    trace.write_text(json.dumps(document) + "\n")
    assert main(["report", "--db", str(trace)]) == 1
    err = capsys.readouterr().err
    assert (
        "malformed spend record: SpendRecord.cache_read_tokens must be a "
        "non-negative token count, got -7"
    ) in err


# 6. the PNG font


def _drawn(text: str) -> bytes:
    return render_png([Chart("t", 20, 20, (Text(2, 12, text),))])


@pytest.mark.parametrize("char", sorted(set(string.printable[:95]) - {"?"}))
def test_every_printable_ascii_character_has_a_glyph(char: str) -> None:
    assert _drawn(char) != _drawn("?")


def test_only_characters_outside_ascii_print_as_a_question_mark() -> None:
    assert _drawn("\u00e9") == _drawn("?")


def test_report_png_draws_a_double_quote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Team ``q"q`` and team ``q?q`` no longer draw alike."""
    pngs = []
    for n, team in enumerate(['q"q', "q?q"]):
        trace = tmp_path / f"trace-{n}.jsonl"
        JsonlSpendStore(trace).record(_record(0, team=team))
        png = tmp_path / f"report-{n}.png"
        argv = ["report", "--db", str(trace), "--by", "team", "--png", str(png)]
        assert main(argv) == 0
        pngs.append(png.read_bytes())
    capsys.readouterr()
    assert pngs[0] != pngs[1]


# 7. --since -5d


@pytest.mark.parametrize("option", ["--since", "--until"])
def test_a_span_with_a_minus_sign_says_to_write_it_without(
    option: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--since -5d`` reaches the time check (not argparse's "expected one
    argument"), which says to write ``5d``; ``--since=-5d`` says the same."""
    trace = tmp_path / "trace.jsonl"
    JsonlSpendStore(trace).record(_record(0))
    advice = "cannot read time '-5d' (a span before now takes no minus sign: write 5d)"
    for words in ([option, "-5d"], [f"{option}=-5d"]):
        assert main(["report", "--db", str(trace), *words]) == 2
        assert advice in capsys.readouterr().err
    code = main(["report", "--db", str(trace), option, "-5d", "--format", "json"])
    assert code == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == "config_error"
    assert error["message"].startswith(advice)
    assert main(["report", "--db", str(trace), "--since", "5d"]) == 0
