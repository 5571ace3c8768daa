"""Bad options and bad input files: one clear line and the documented exit status.

Each command refuses what it cannot use before it runs anything, with the
file, line and field where a record is at fault, and the same advice for a
Redis that does not answer wherever a spend store is named.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from conftest import free_port
from governor import ConfigError
from governor.cli import main
from governor.cli._report import parse_when
from governor.spend import JsonlSpendStore, SpendDataError, SpendRecord

T0 = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


def _record(i: int, **changes: Any) -> SpendRecord:
    fields: dict[str, Any] = {
        "ts": T0 + timedelta(minutes=i),
        "task_id": f"task-{i % 2}",
        "call_id": f"call-{i}",
        "model": "gpt-4o-mini",
        "input_tokens": 100,
        "output_tokens": 10,
        "cost_usd": Decimal("0.00036"),
        "team": "search",
    }
    return SpendRecord(**{**fields, **changes})


def _trace(tmp_path: Path, *records: dict[str, Any]) -> str:
    """A spend JSONL: one good record, then ``records`` as written."""
    path = tmp_path / "spend.jsonl"
    lines = [_record(0).to_json_dict(), *records]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _advice(command: str, url: str, port: int, option: str) -> str:
    return (
        f"governor {command}: cannot reach the Redis spend store at {url} "
        f"(from {option}): Error 111 connecting to 127.0.0.1:{port}. Connection "
        "refused. Check the URL (host, port, database, password, TLS), start "
        f"Redis there, or pass {option} (or set GOVERNOR_SPEND_DB) to the store "
        "your services record spend to.\n"
    )


# -- governor demo ----------------------------------------------------------


def test_demo_refuses_a_traces_folder_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--traces FOLDER: exit 2 with one line; no agent runs, no store is made."""
    spend = tmp_path / "spend.sqlite3"
    code, out, err = _run(
        capsys, "demo", "--speed", "0", "--traces", str(tmp_path),
        "--spend-db", str(spend),
    )  # fmt: skip
    assert (code, out) == (2, "")
    assert err == (
        f"governor demo: --traces {tmp_path} is a folder; give a file name such "
        f"as {tmp_path / 'traces.jsonl'}\n"
    )
    assert not spend.exists()


def test_demo_refuses_a_spend_db_folder_as_a_bad_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--spend-db FOLDER exits 2 too, with one line and no traceback hint."""
    traces = tmp_path / "traces.jsonl"
    code, out, err = _run(
        capsys, "demo", "--speed", "0", "--traces", str(traces),
        "--spend-db", str(tmp_path),
    )  # fmt: skip
    assert (code, out) == (2, "")
    assert err.startswith(f"governor demo: --spend-db: spend store '{tmp_path}'")
    assert "GOVERNOR_DEBUG" not in err
    assert len(err.splitlines()) == 1
    assert not traces.exists()


def test_demo_stops_before_running_when_the_redis_spend_store_is_down(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing listens there: exit 1 with report's advice, not a run whose
    records are all lost and a closing line that points at that store."""
    port = free_port()
    url = f"redis://user:secret@127.0.0.1:{port}/0"
    traces = tmp_path / "traces.jsonl"
    code, out, err = _run(
        capsys, "demo", "--speed", "0", "--json", "--traces", str(traces),
        "--spend-db", url,
    )  # fmt: skip
    assert (code, err) == (1, "")
    hidden = f"redis://user:***@127.0.0.1:{port}/0"
    line = _advice("demo", hidden, port, "--spend-db")
    message = line.removeprefix("governor demo: ").removesuffix("\n")
    error = {"code": "store_unavailable", "message": message}
    assert json.loads(out) == {"error": error}
    assert not traces.exists()


# -- governor report: options ----------------------------------------------


@pytest.mark.parametrize("since", ["99999999999d", "1000000d", "200000w"])
def test_a_span_before_the_year_1_is_an_unreadable_time(
    since: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not an OverflowError with exit 1: a bad option, exit 2."""
    db = _trace(tmp_path)
    code, out, err = _run(capsys, "report", "--db", db, "--since", since)
    assert (code, out) == (2, "")
    assert err.startswith(f"governor report: cannot read time '{since}'; ")
    assert "before the year 1" in err
    with pytest.raises(ConfigError, match="cannot read time"):
        parse_when(since, now=datetime.now(UTC))


def test_a_tag_filter_without_a_name_is_refused_as_by_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--filter tag.=x matched nothing and reported it; now exit 2, before
    the store is opened (this one does not exist)."""
    missing = str(tmp_path / "none.sqlite3")
    code, out, err = _run(capsys, "report", "--db", missing, "--filter", "tag.=x")
    assert (code, out) == (2, "")
    assert err == (
        "governor report: cannot filter spend by 'tag.': name the tag, as in "
        "--filter tag.customer=acme\n"
    )


def test_csv_counts_refused_and_errored_calls_as_json_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CSV has the refused and errors columns of the JSON, last."""
    path = tmp_path / "spend.jsonl"
    JsonlSpendStore(path).record_many(
        [
            _record(0),
            _record(1, outcome="refused", cost_usd=Decimal(0)),
            _record(2, outcome="error"),
            _record(3, outcome="error", team="ads"),
        ]
    )
    args = ("report", "--db", str(path), "--by", "team")
    _, out, _ = _run(capsys, *args, "--format", "csv")
    header = out.splitlines()[0].split(",")
    assert header[-3:] == ["cache_hits", "refused", "errors"]
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["key"], r["refused"], r["errors"]) for r in rows] == [
        ("search", "1", "1"),
        ("ads", "0", "1"),
    ]
    _, out, _ = _run(capsys, *args, "--format", "json")
    groups = json.loads(out)["groups"]["team"]
    assert [(g["key"], g["refused"], g["errors"]) for g in groups] == [
        ("search", 1, 1),
        ("ads", 0, 1),
    ]


# -- spend records: tags and numbers ---------------------------------------


@pytest.mark.parametrize(
    ("tags", "says"),
    [
        (None, "SpendRecord.tags must map tag names to strings"),
        (["a"], "SpendRecord.tags must map tag names to strings"),
        ("a", "SpendRecord.tags must map tag names to strings"),
        ({"a": {"x": 1}}, "SpendRecord.tags['a'] must be a string"),
        ({"a": 1}, "SpendRecord.tags['a'] must be a string"),
        ({"a": True}, "SpendRecord.tags['a'] must be a string"),
        ({"a": None}, "SpendRecord.tags['a'] must be a string"),
    ],
)
def test_tags_that_are_not_strings_are_named_by_file_line_and_field(
    tags: object, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not an AttributeError without a place, nor a nested value turned into
    a group named "{'x': 1}": exit 1 naming the line and the tag."""
    db = _trace(tmp_path, {**_record(1).to_json_dict(), "tags": tags})
    code, out, err = _run(capsys, "report", "--db", db, "--by", "tag.a")
    assert (code, out) == (1, "")
    assert err.startswith(f"governor report: {db}:2: malformed spend record: {says}")


def test_a_record_without_tags_has_none() -> None:
    """Leaving the key out is how a record says it has no tags."""
    data = _record(0).to_json_dict()
    del data["tags"]
    assert SpendRecord.from_json_dict(data).tags == {}


@pytest.mark.parametrize(
    ("tags", "says"),
    [
        (None, "SpendRecord.tags must map tag names to strings"),
        ({1: "a"}, "SpendRecord.tags names must be strings, got the int 1"),
        ({"a": 0.9}, "SpendRecord.tags['a'] must be a string"),
    ],
)
def test_a_record_built_with_bad_tags_is_refused(tags: Any, says: str) -> None:
    """The dataclass checks tags as it checks its other fields."""
    with pytest.raises(TypeError, match=says.replace("[", r"\[")):
        replace(_record(0), tags=tags)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('{"input_tokens": ' + "9" * 5000 + "}", "input_tokens is a number 5000"),
        ('{"tags": {"a": [0, -' + "1" * 4400 + "]}}", "tags.a[1] is a number 4400"),
    ],
)
def test_a_number_too_long_to_read_names_its_field(text: str, says: str) -> None:
    """Not Python's advice to raise sys.set_int_max_str_digits."""
    from governor.spend._record import load_json

    with pytest.raises(SpendDataError) as caught:
        load_json(text)
    assert str(caught.value).startswith(f"malformed spend record: {says} digits")
    assert "set_int_max_str_digits" not in str(caught.value)


def test_load_json_reads_json_and_refuses_what_is_not() -> None:
    """Good JSON reads as json.loads reads it; bad JSON raises as it does."""
    from governor.spend._record import load_json

    assert load_json(b'{"a": 1, "b": [2.5, "c"]}') == {"a": 1, "b": [2.5, "c"]}
    with pytest.raises(json.JSONDecodeError):
        load_json("{")


# -- governor replay and compare -------------------------------------------


@pytest.mark.parametrize(
    "command", [["replay"], ["compare", "--a", "default", "--b", "default"]]
)
def test_replay_and_compare_give_reports_advice_when_redis_is_down(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Not a bare "ConnectionError: Error 111 ...": the URL and what to do."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    code, out, err = _run(capsys, *command, "--db", url)
    assert (code, out) == (1, "")
    assert err == _advice(command[0], url, port, "--db")


def test_replay_names_the_environment_as_the_source_of_the_url(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no --db, the advice says the URL came from GOVERNOR_SPEND_DB."""
    port = free_port()
    monkeypatch.setenv("GOVERNOR_SPEND_DB", f"redis://127.0.0.1:{port}/0")
    code, _, err = _run(capsys, "replay")
    assert code == 1
    assert "(from GOVERNOR_SPEND_DB): Error 111" in err


# -- governor --version ------------------------------------------------------


def test_version_prints_the_installed_distribution(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`governor --version` prints `governor 0.1.0` (the installed version)."""
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out == f"governor {version('llm-governor')}\n"


# -- governor eval: unusable input exits 2 ---------------------------------


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_eval_loops_refuses_a_file_with_no_runs(
    content: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not a table of zeros with exit 0: exit 2, as eval cache and cascade do."""
    path = tmp_path / "runs.jsonl"
    path.write_text(content)
    code, out, err = _run(capsys, "eval", "loops", str(path))
    assert (code, out) == (2, "")
    assert err.startswith(f"governor eval loops: {path} holds no runs; ")


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "loops"],
        ["eval", "cache"],
        ["eval", "cascade", "--policy", "routerbench-3tier"],
        ["eval", "anomalies"],
    ],
)
@pytest.mark.parametrize("name", ["missing.csv", "empty.csv"])
def test_every_eval_target_exits_2_for_unusable_input(
    argv: list[str], name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing or empty input file: one line on stderr and exit 2 everywhere."""
    (tmp_path / "empty.csv").write_text("")
    code, out, err = _run(capsys, *argv, str(tmp_path / name))
    assert (code, out) == (2, "")
    assert err.startswith(f"governor {' '.join(argv[:2])}: ")
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("target", [[], ["loops"], ["anomalies"]])
def test_eval_help_states_the_exit_status(
    target: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["eval", *target, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "Exit status: 0 with the report; 2 when the input cannot be used" in out


def test_a_number_too_long_to_read_is_named_by_file_line_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 5,000-digit token count: exit 1 naming spend.jsonl:2 and input_tokens."""
    path = Path(_trace(tmp_path))
    line = json.dumps(_record(1).to_json_dict()).replace(
        '"input_tokens": 100', '"input_tokens": ' + "9" * 5000
    )
    path.write_text(path.read_text() + line + "\n")
    code, out, err = _run(capsys, "report", "--db", str(path))
    assert (code, out) == (1, "")
    assert err == (
        f"governor report: {path}:2: malformed spend record: input_tokens is a "
        "number 5000 digits long; no count or amount is that large, so the "
        "record is corrupt\n"
    )


def test_a_redis_record_with_a_number_too_long_to_read_names_its_field(
    redis_url: str, redis_prefix: str
) -> None:
    """The Redis store names the hash field (the call id) and the record's field."""
    import redis

    from governor.spend import RedisSpendStore

    body = json.dumps(_record(0).to_json_dict()).replace(
        '"output_tokens": 10', '"output_tokens": ' + "9" * 5000
    )
    with RedisSpendStore.from_url(redis_url, prefix=redis_prefix) as store:
        store.record(_record(0))
        with redis.Redis.from_url(redis_url) as client:
            client.hset(store.hash_key, "call-0", body)
        with pytest.raises(SpendDataError) as caught:
            list(store.query())
    assert str(caught.value).endswith(
        "'call-0': malformed spend record: output_tokens is a number 5000 digits "
        "long; no count or amount is that large, so the record is corrupt"
    )
