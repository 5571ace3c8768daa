"""The command lines never destroy what they read, and say what was wrong.

An output path that names an input is refused before anything is written;
--html and --png files are written whole or not at all; a traces file that
is not JSON lines is left alone; empty or conflicting options are refused;
files that cannot be used are named with what to do.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from governor.cli import main
from governor.spend import JsonlSpendStore, SpendRecord, SQLiteSpendStore

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
SQLITE_HEADER = b"SQLite format 3\x00"


@pytest.fixture(autouse=True)
def _isolated(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stores come from the options only, never from the environment, and
    a command that ignored an option writes its defaults into an empty folder."""
    for name in ("GOVERNOR_SPEND_DB", "GOVERNOR_TRACES_FILE", "GOVERNOR_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


def _record(i: int) -> SpendRecord:
    return SpendRecord(
        ts=T0 + timedelta(hours=i),
        task_id=f"task-{i % 2}",
        call_id=f"call-{i}",
        model="gpt-4o-mini",
        provider="openai",
        input_tokens=1000,
        output_tokens=100,
        cost_usd=Decimal("0.001"),
        team=("research", "support")[i % 2],
        feature="qa",
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A SQLite spend store of four calls, two teams."""
    path = tmp_path / "spend.sqlite3"
    with SQLiteSpendStore(path) as store:
        store.record_many(_record(i) for i in range(4))
    return path


@pytest.fixture
def routerbench(tmp_path: Path) -> Path:
    """The RouterBench sample, uncompressed, in a folder of its own."""
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / "r.csv"
    path.write_bytes(gzip.decompress((DATA / "routerbench_sample.csv.gz").read_bytes()))
    return path


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _usage_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run a command line that argparse refuses; its stderr."""
    with pytest.raises(SystemExit) as caught:
        main(list(args))
    assert caught.value.code == 2
    return capsys.readouterr().err


# -- 1. an output over an input --------------------------------------------------------


@pytest.mark.parametrize("option", ["--html", "--png"])
def test_report_refuses_to_write_a_chart_over_its_store(
    db: Path, option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`report --db X --html X` exits 2 naming both; the store is untouched."""
    before = db.read_bytes()
    code, out, err = _run(capsys, "report", "--db", str(db), option, str(db))
    assert (code, out) == (2, "")
    assert f"{option} {db} is the same file as --db {db}" in err
    assert db.read_bytes() == before


def test_report_refuses_a_store_named_by_another_path(
    db: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative path, or a hard link, to the store is the store."""
    monkeypatch.chdir(db.parent)
    link = db.parent / "link.html"
    os.link(db, link)
    for output in (f"./{db.name}", str(link)):
        code, _, err = _run(capsys, "report", "--db", db.name, "--html", output)
        assert (code, "is the same file as --db" in err) == (2, True)
    assert db.read_bytes().startswith(SQLITE_HEADER)


def test_report_refuses_html_and_png_to_one_file(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The PNG would overwrite the page written just before it."""
    out_file = str(tmp_path / "r.out")
    code, _, err = _run(
        capsys, "report", "--db", str(db), "--html", out_file, "--png", out_file
    )
    assert code == 2
    assert f"--png {out_file} is the same file as --html {out_file}" in err


def test_eval_cascade_refuses_a_chart_over_its_data(
    routerbench: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`eval cascade --png r.csv r.csv` exits 2; the data file is untouched."""
    before = routerbench.read_bytes()
    code, _, err = _run(
        capsys,
        "eval",
        "cascade",
        "--policy",
        "routerbench-3tier",
        "--png",
        str(routerbench),
        str(routerbench),
    )
    assert code == 2
    assert f"--png {routerbench} is the same file as DATA {routerbench}" in err
    assert routerbench.read_bytes() == before


def test_eval_cascade_refuses_a_chart_over_a_file_of_its_data_folder(
    routerbench: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder's files are read as data: the chart may not replace one."""
    before = routerbench.read_bytes()
    folder = routerbench.parent
    code, _, err = _run(
        capsys,
        "eval",
        "cascade",
        "--policy",
        "routerbench-3tier",
        "--png",
        str(routerbench),
        str(folder),
    )
    assert (code, "is a file in the DATA folder" in err) == (2, True)
    assert routerbench.read_bytes() == before


def test_eval_cascade_refuses_a_chart_over_its_policy_file(
    routerbench: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The --policy JSON file is read too."""
    policy = tmp_path / "policy.json"
    policy.write_text('{"tiers": ["a", "b"]}', encoding="utf-8")
    code, _, err = _run(
        capsys,
        "eval",
        "cascade",
        "--policy",
        str(policy),
        "--png",
        str(policy),
        str(routerbench),
    )
    assert (code, f"is the same file as --policy {policy}" in err) == (2, True)
    assert policy.read_text(encoding="utf-8") == '{"tiers": ["a", "b"]}'


def _limited_run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the command line in a process that may write files of 2,000 bytes
    at most (a full disk, as far as the written file is concerned)."""
    import resource

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not death
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))

    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "governor.cli", *args],
        cwd=cwd,
        env=env,
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.skipif(
    importlib.util.find_spec("resource") is None or not hasattr(signal, "SIGXFSZ"),
    reason="needs POSIX file size limits",
)
@pytest.mark.parametrize("command", ["report-html", "report-png", "cascade-png"])
def test_a_chart_that_cannot_be_written_whole_leaves_the_earlier_one(
    command: str, routerbench: Path, tmp_path: Path
) -> None:
    """A write that fails part way (the disk fills) leaves the earlier file as
    it was, and no half-written file beside it."""
    earlier = tmp_path / "out" / "chart"
    earlier.parent.mkdir()
    earlier.write_bytes(b"the earlier report")
    # A JSONL store: SQLite's own files would meet the size limit too.
    db = tmp_path / "spend.jsonl"
    with JsonlSpendStore(db) as store:
        store.record_many(_record(i) for i in range(4))
    args = {
        "report-html": ["report", "--db", str(db), "--html", str(earlier)],
        "report-png": ["report", "--db", str(db), "--png", str(earlier)],
        "cascade-png": [
            "eval",
            "cascade",
            "--policy",
            "routerbench-3tier",
            "--png",
            str(earlier),
            str(routerbench),
        ],
    }[command]
    done = _limited_run(args, tmp_path)
    assert done.returncode in (1, 2), done.stderr
    assert f"{earlier}" in done.stderr
    assert earlier.read_bytes() == b"the earlier report"
    assert sorted(p.name for p in earlier.parent.iterdir()) == ["chart"]


def test_a_chart_written_whole_replaces_the_earlier_one(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The page replaces an earlier file and keeps its permission bits."""
    page = tmp_path / "out" / "r.html"
    page.parent.mkdir()
    page.write_text("old", encoding="utf-8")
    page.chmod(0o640)
    code, _, _ = _run(capsys, "report", "--db", str(db), "--html", str(page))
    assert code == 0
    assert page.read_text(encoding="utf-8").lstrip().lower().startswith("<!doctype")
    assert (page.stat().st_mode & 0o777, len(list(page.parent.iterdir()))) == (0o640, 1)


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (SQLITE_HEADER + b"\x00" * 100, "a SQLite database"),
        (b"just some notes\nnot spans\n", "no line at its start opens a JSON"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "binary data"),
    ],
)
def test_demo_refuses_traces_that_are_not_json_lines(
    content: bytes, what: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Spans are appended: an existing file of anything else is refused (2)."""
    traces = tmp_path / "traces.jsonl"
    traces.write_bytes(content)
    spend = tmp_path / "spend.sqlite3"
    code, _, err = _run(
        capsys, "demo", "--traces", str(traces), "--spend-db", str(spend)
    )
    assert code == 2
    assert f"--traces {traces} is an existing file that is not JSON lines" in err
    assert what in err
    assert traces.read_bytes() == content
    assert not spend.exists()


def test_demo_takes_an_existing_span_file() -> None:
    """A JSONL file of earlier spans, or an empty one, is appended to."""
    from governor._files import not_json_lines

    assert not_json_lines(DATA / "trajectories_sample.jsonl") is None


def test_demo_refuses_traces_and_spend_in_one_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same new path for both would put spans into the SQLite file."""
    both = tmp_path / "both.db"
    code, _, err = _run(capsys, "demo", "--traces", str(both), "--spend-db", str(both))
    assert (code, "are the same file" in err) == (2, True)
    assert not both.exists()


# -- 2. CSV fields past the size limit -------------------------------------------------


@pytest.fixture
def default_field_limit() -> Iterator[None]:
    """csv's 128 KiB default, whatever an earlier test in the process set."""
    saved = csv.field_size_limit(131_072)
    try:
        yield
    finally:
        csv.field_size_limit(saved)


@pytest.mark.usefixtures("default_field_limit")
def test_eval_anomalies_names_the_line_of_an_overlong_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A field over 128 KiB (a quote left open) exits 2 naming file and line."""
    trace = tmp_path / "trace.csv"
    trace.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46,10,20\n"
        f'"{"x" * 200_000}",1,2\n',
        encoding="utf-8",
    )
    code, _, err = _run(capsys, "eval", "anomalies", str(trace))
    assert code == 2
    assert f"{trace}:3: not readable as CSV (field larger than field limit" in err
    assert "quote" in err


@pytest.mark.usefixtures("default_field_limit")
def test_eval_cascade_names_a_header_with_an_overlong_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An overlong header field exits 2 naming the file, not a bare csv error."""
    data = tmp_path / "r.csv"
    data.write_text(
        f'prompt,"{"x" * 200_000}",m|model_response,m|total_cost\np,1,a,0.1\n',
        encoding="utf-8",
    )
    code, _, err = _run(
        capsys, "eval", "cascade", "--policy", "routerbench-3tier", str(data)
    )
    assert code == 2
    assert f"{data}: the header line is not readable as CSV" in err


def test_eval_cascade_names_the_line_of_a_field_past_its_limit(
    routerbench: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A response longer than the reader takes exits 2 naming file and line."""
    from governor.cascade import _datasets

    saved = csv.field_size_limit()
    monkeypatch.setattr(_datasets, "_FIELD_LIMIT", 100)
    try:
        code, _, err = _run(
            capsys, "eval", "cascade", "--policy", "routerbench-3tier", str(routerbench)
        )
    finally:
        csv.field_size_limit(saved)
    assert code == 2
    assert f"{routerbench}:" in err
    assert "not readable as CSV (field larger than field limit (100))" in err


# -- 3. spans that could not be written ------------------------------------------------


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.skipif(
    importlib.util.find_spec("langchain_litellm") is None,
    reason="the demo's examples need langchain-litellm",
)
def test_demo_exits_1_when_its_spans_are_lost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every write fails (a full disk): exit 1 and no "Traces:" line."""
    code, out, err = _run(
        capsys,
        "demo",
        "--speed",
        "0",
        "--count",
        "1",
        "--traces",
        "/dev/full",
        "--spend-db",
        str(tmp_path / "spend.sqlite3"),
    )
    assert code == 1
    assert "Traces:" not in out
    assert "spans could not be written to --traces /dev/full" in err


@pytest.mark.skipif(
    importlib.util.find_spec("langchain_litellm") is None,
    reason="the demo's examples need langchain-litellm",
)
def test_demo_exits_1_when_spend_records_are_lost(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A store that stops answering mid-run: records lost at close mean exit
    1 and no "Spend:" pointer at a store that lacks them (it said exit 0)."""
    from governor import Governor

    closing = Governor.close

    def close_losing_two(self: Governor, timeout_s: float | None = None) -> int:
        return closing(self, timeout_s) + 2

    monkeypatch.setattr(Governor, "close", close_losing_two)
    spend = tmp_path / "spend.sqlite3"
    code, out, err = _run(
        capsys,
        "demo",
        "--speed",
        "0",
        "--count",
        "1",
        "--traces",
        str(tmp_path / "t.jsonl"),
        "--spend-db",
        str(spend),
    )
    assert code == 1
    assert "Traces:" in out
    assert "Spend:" not in out
    assert f"12 spend record(s) could not be written to {spend}" in err


# -- 4. empty options ------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["budget", "status", "--redis-url", ""],
        ["budget", "reset", "team:x", "--redis-url", ""],
        ["report", "--db", ""],
        ["replay", "--db", ""],
        ["demo", "--spend-db", ""],
        ["demo", "--traces", " "],
        ["report", "--html", ""],
        ["report", "--since", ""],
        ["report", "--until", ""],
        ["compare", "--b", ""],
        ["compare", "--a", ""],
        ["replay", "--policy", ""],
        ["budget", "status", "--hash-tag", ""],
        ["budget", "status", "--prefix", ""],
    ],
)
def test_an_empty_option_value_is_refused(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`--redis-url "$URL"` with URL unset is an error, not the default."""
    err = _usage_error(capsys, *args)
    option = next(a for a in args if a.startswith("--"))
    assert f"argument {option}: is empty" in err
    assert "leave the option out" in err


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (["eval", "loops", ""], "PATH"),
        (["eval", "anomalies", ""], "PATH"),
        (["eval", "cache", ""], "PAIRS"),
        (["eval", "cascade", "", "--policy", "routerbench-3tier"], "DATA"),
        (["policy", "show", ""], "POLICY"),
        (["budget", "reset", ""], "SCOPE"),
    ],
)
def test_an_empty_argument_is_refused_before_anything_is_read(
    args: list[str], name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty path, policy or line key is not read as the current folder or
    matched against the store: it is a usage error naming the argument."""
    err = _usage_error(capsys, *args)
    assert f"argument {name}: is empty" in err
    assert "leave the option out" not in err


# -- 5. repeated options ---------------------------------------------------------------


def test_report_refuses_two_values_of_one_filter_key(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A call has one team: the second value is not silently kept alone."""
    code, out, err = _run(
        capsys,
        "report",
        "--db",
        str(db),
        "--filter",
        "team=research",
        "--filter",
        "team=support",
    )
    assert (code, out) == (2, "")
    assert "--filter team=research and --filter team=support" in err
    assert "--by team" in err


def test_report_takes_one_filter_given_twice(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same KEY=VALUE twice is one filter."""
    code, out, _ = _run(
        capsys,
        "report",
        "--db",
        str(db),
        "--format",
        "json",
        "--filter",
        "team=research",
        "--filter",
        "team=research",
    )
    assert (code, json.loads(out)["total"]["calls"]) == (0, 2)


def test_replay_refuses_one_model_swapped_for_two(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--model A=B --model A=C`: a call is replayed as one model."""
    code, _, err = _run(
        capsys,
        "replay",
        "--db",
        str(db),
        "--model",
        "gpt-4o-mini=gpt-4o",
        "--model",
        "gpt-4o-mini=gpt-4.1",
    )
    assert code == 2
    assert "--model gpt-4o-mini=gpt-4o and --model gpt-4o-mini=gpt-4.1" in err


def test_replay_takes_one_swap_given_twice(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = _run(
        capsys,
        "replay",
        "--db",
        str(db),
        "--model",
        "gpt-4o-mini=gpt-4o",
        "--model",
        "gpt-4o-mini=gpt-4o",
    )
    assert code == 0


# -- 6. pack:NAME as a cascade policy --------------------------------------------------


def test_eval_cascade_takes_a_pack_with_a_cascade(
    routerbench: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """pack:cost_saver is read as its cascade (whose models this data lacks)."""
    code, _, err = _run(
        capsys, "eval", "cascade", "--policy", "pack:cost_saver", str(routerbench)
    )
    assert code == 2
    assert "cannot import" not in err
    assert "pack:cost_saver uses; it needs ['gpt-4o-mini', 'gpt-4o']" in err


def test_eval_cascade_names_the_cascade_policies_for_a_pack_without_one(
    routerbench: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(
        capsys, "eval", "cascade", "--policy", "pack:starter", str(routerbench)
    )
    assert code == 2
    assert "pack:starter: the pack has no cascade" in err
    assert "pack:cost_saver" in err
    assert "routerbench-3tier" in err


# -- 7. messages -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b'{"a": 1}\n', "is not a SQLite database"),
        (b"", None),
    ],
)
def test_demo_names_a_spend_db_that_is_not_sqlite(
    content: bytes,
    said: str | None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A JSON file is refused (2) before SQLite says "file is not a database";
    an empty file is a new database to a writer."""
    from governor.cli._spend_source import not_a_spend_file

    spend = tmp_path / "demo.json"
    spend.write_bytes(content)
    if said is None:
        assert not_a_spend_file(str(spend), reading=False) is None
        return
    traces = tmp_path / "traces.jsonl"
    code, _, err = _run(
        capsys, "demo", "--traces", str(traces), "--spend-db", str(spend)
    )
    assert code == 2
    assert f"--spend-db: {spend} {said}" in err
    assert "DatabaseError" not in err
    assert spend.read_bytes() == content


@pytest.mark.parametrize("device", ["/dev/null", "/proc/version"])
def test_demo_names_a_spend_db_that_is_a_device_or_system_file(
    device: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not Path(device).exists():
        pytest.skip(f"no {device} here")
    traces = tmp_path / "traces.jsonl"
    code, _, err = _run(capsys, "demo", "--traces", str(traces), "--spend-db", device)
    assert code == 2
    assert f"--spend-db: {device} is not a" in err
    assert "OperationalError" not in err


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("empty", "is an empty file, not a spend store"),
        ("null", "is not a regular file"),
    ],
)
def test_report_does_not_call_an_empty_file_or_a_device_a_database(
    kind: str, said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if kind == "empty":
        store = tmp_path / "empty.db"
        store.touch()
    else:
        store = Path(os.devnull)
        if not store.exists() or store.is_file():
            pytest.skip("no null device here")
    code, _, err = _run(capsys, "report", "--db", str(store))
    assert code == 1
    assert f"{store} {said}" in err
    assert "SQLite database with no spend table" not in err


def test_eval_anomalies_advises_on_a_missing_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nonexistent"
    code, _, err = _run(capsys, "eval", "anomalies", str(missing))
    assert code == 2
    assert f"{missing}: no such file or folder; give a folder of Azure" in err
    assert "[Errno" not in err


def test_report_checks_the_html_folder_before_printing_the_report(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing output folder exits 2 up front, the report unprinted."""
    page = tmp_path / "missing" / "x.html"
    code, out, err = _run(capsys, "report", "--db", str(db), "--html", str(page))
    assert (code, out) == (2, "")
    assert f"--html {page}: no such folder {page.parent}" in err


def test_ctrl_c_says_interrupted_and_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from governor.cli import _report

    def interrupted(args: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(_report, "_run", interrupted)
    code, _, err = _run(capsys, "report")
    assert (code, err) == (130, "governor report: interrupted\n")
