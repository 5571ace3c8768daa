"""The trajectory format, its converter, loop injection and `governor eval loops`."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from governor._errors import ConfigError
from governor.cli import main
from governor.loops import (
    Call,
    ToolCall,
    ToolResult,
    Trajectory,
    from_mini_swe_agent,
    read_trajectories,
    write_trajectories,
)
from governor.loops._eval import evaluate, replay, split_of, sweep
from governor.loops._inject import inject
from governor.loops._trajectory import trajectory_to_dict
from governor.policies._loops import Loops

SAMPLE = Path(__file__).parent / "data" / "trajectories_sample.jsonl"


def _raw_row() -> dict[str, object]:
    """A three-call mini-swe-agent row: one action, one format error, one action."""

    def reply(text: str, cost: float) -> dict[str, object]:
        return {"role": "assistant", "content": text, "cost_usd": cost, "created": 10}

    return {
        "instance_id": "demo__demo-1",
        "resolved": False,
        "mini_version": "1.15.0",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Fix the bug."},
            reply("THOUGHT: look.\n\n```bash\nls -la\n```", 0.004596),
            {
                "role": "user",
                "content": "<returncode>0</returncode>",
                "content_sha1": "abc",
                "content_truncated": True,
            },
            reply("```bash\nls\n```\n```bash\npwd\n```", 0.001),
            {"role": "user", "content": "Please always provide EXACTLY ONE action"},
            reply("THOUGHT: ok.\n```bash\npwd\n```", 0.002),
            {"role": "user", "content": "/repo"},
        ],
    }


def _sample() -> list[Trajectory]:
    return list(read_trajectories(SAMPLE))


def test_converter_parses_one_bash_block_as_a_tool_call() -> None:
    """A reply with one bash block becomes a bash tool call with its observation."""
    run = from_mini_swe_agent(_raw_row())
    first = run.calls[0]
    assert first.tool_calls == (
        ToolCall(name="bash", args={"command": "ls -la"}, id="call-0"),
    )
    assert first.tool_results == (
        ToolResult(
            content="<returncode>0</returncode>",
            call_id="call-0",
            content_sha1="abc",
            truncated=True,
        ),
    )


def test_converter_turns_a_format_error_into_next_call_message() -> None:
    """A reply with two blocks gets no tool call; the error opens the next call."""
    run = from_mini_swe_agent(_raw_row())
    assert run.calls[1].tool_calls == ()
    assert run.calls[2].messages == (
        {"role": "user", "content": "Please always provide EXACTLY ONE action"},
    )


def test_converter_keeps_outcome_and_exact_cost() -> None:
    """Outcome words and Decimal costs come through the conversion."""
    run = from_mini_swe_agent(_raw_row())
    assert (run.outcome, run.cost_usd) == ("unresolved", Decimal("0.007596"))


def test_first_call_carries_system_prompt_and_task() -> None:
    """The messages before the first reply belong to the first call."""
    run = from_mini_swe_agent(_raw_row())
    assert [m["role"] for m in run.calls[0].messages] == ["system", "user"]


def test_truncated_result_is_compared_by_its_full_hash() -> None:
    """A cut result's comparable text includes the hash of the whole."""
    result = ToolResult(content="head", content_sha1="abc", truncated=True)
    assert result.comparable == "head\n<full result sha1 abc>"


def test_format_round_trips_through_jsonl(tmp_path: Path) -> None:
    """Writing runs and reading them back gives equal runs."""
    run = from_mini_swe_agent(_raw_row())
    path = tmp_path / "runs.jsonl.gz"
    write_trajectories([run], path)
    assert list(read_trajectories(path)) == [run]


def test_reader_accepts_raw_mini_swe_agent_rows(tmp_path: Path) -> None:
    """A gzipped file of raw data-set rows is converted while read."""
    path = tmp_path / "raw.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as out:
        out.write(json.dumps(_raw_row()) + "\n")
    (run,) = read_trajectories(path)
    assert (run.id, len(run.calls)) == ("demo__demo-1", 3)


def test_sample_holds_known_runs() -> None:
    """The committed sample has its three runs with their outcomes."""
    runs = _sample()
    assert [(r.id, r.outcome, len(r.calls)) for r in runs] == [
        ("django__django-11163", "resolved", 13),
        ("django__django-10999", "unresolved", 18),
        ("sympy__sympy-15976", "resolved", 25),
    ]


def test_real_repeated_no_op_edit_is_flagged() -> None:
    """The sample's real run that reissued the same no-op sed is caught."""
    run = _sample()[2]
    flag = replay(run, Loops())
    assert flag is not None
    assert (flag.verdict.rule, flag.verdict.steps) == ("repeat", (20, 21, 22, 24))


def test_injection_is_seeded() -> None:
    """The same seed splices the same loop at the same place."""
    run = _sample()[0]
    assert inject(run, "repeat", seed=3) == inject(run, "repeat", seed=3)


def test_repeat_injection_copies_one_call() -> None:
    """A repeat injection adds ten copies of the call just before it."""
    run = _sample()[0]
    spliced = inject(run, "repeat", seed=0)
    assert spliced is not None
    copy, where = spliced
    loop = copy.calls[where.start : where.end]
    assert len(copy.calls) == len(run.calls) + 10
    assert loop == (copy.calls[where.start - 1],) * 10


def test_cycle_injection_alternates_two_calls() -> None:
    """A cycle injection repeats the two calls before it, A, B, A, B."""
    run = _sample()[0]
    spliced = inject(run, "cycle", seed=0)
    assert spliced is not None
    copy, where = spliced
    a, b = copy.calls[where.start - 2 : where.start]
    assert copy.calls[where.start : where.end] == (a, b) * 10


def test_near_duplicate_injection_changes_outputs_and_results() -> None:
    """Near-duplicate copies differ from each other in text and in result."""
    run = _sample()[0]
    spliced = inject(run, "near_duplicate", seed=0)
    assert spliced is not None
    copy, where = spliced
    loop = copy.calls[where.start : where.end]
    assert len({c.output for c in loop}) == 10
    assert len({c.tool_results for c in loop}) == 10


def test_delay_counts_laps_of_a_cycle() -> None:
    """A flag on the fourth call of a two-call cycle is a delay of two repeats."""
    run = _sample()[0]
    spliced = inject(run, "cycle", seed=0)
    assert spliced is not None
    _, where = spliced
    assert where.repeats_at(where.start + 3) == 2


def test_injected_repeat_is_caught_after_max_repeats_plus_one() -> None:
    """At the defaults a spliced exact repeat is flagged on the third copy."""
    run = _sample()[0]
    spliced = inject(run, "repeat", seed=0)
    assert spliced is not None
    copy, where = spliced
    flag = replay(copy, Loops(), start=where.start, end=where.end)
    assert flag is not None
    assert where.repeats_at(flag.index) == 3


def test_injected_cycle_is_caught_by_the_output_rule_alone() -> None:
    """Two outputs taking turns are a cycle to the output rule too, on lap two."""
    outputs_only = Loops(max_repeats=None, max_cycle_repeats=None, max_stale_steps=None)
    for run in _sample():
        spliced = inject(run, "cycle", seed=0)
        assert spliced is not None
        copy, where = spliced
        flag = replay(copy, outputs_only, start=where.start, end=where.end)
        assert flag is not None
        assert flag.verdict.rule == "near_duplicate"
        assert where.repeats_at(flag.index) == 2


def test_split_is_fixed_by_run_id() -> None:
    """The train/test half of a run depends only on its id."""
    assert [split_of("django__django-11163"), split_of("sympy__sympy-15976")] == [
        split_of("django__django-11163"),
        split_of("sympy__sympy-15976"),
    ]
    assert {split_of(f"run-{n}") for n in range(20)} == {"train", "test"}


def test_evaluate_on_sample_gives_known_figures() -> None:
    """On the sample, one of two resolved runs is flagged and every loop is caught."""
    report = evaluate(_sample(), Loops(), injecting=True, seed=0)["all"]
    assert (report["false_stops"], report["resolved_runs"]) == (1, 2)
    assert (report["detected"], report["injected"]) == (9, 9)
    assert report["failed_runs_flagged"] == 0


def test_failed_run_spend_after_flag_is_summed(tmp_path: Path) -> None:
    """A flagged failed run reports what it spent on the calls after the flag."""
    looping = Call(
        output="THOUGHT: again.",
        tool_calls=(ToolCall(name="bash", args="ls", id="c"),),
        tool_results=(ToolResult(content="a", call_id="c"),),
        cost_usd=Decimal("0.25"),
    )
    run = Trajectory(id="loop-1", outcome="unresolved", calls=(looping,) * 6)
    report = evaluate([run], Loops(), injecting=False, seed=0)["all"]
    # Flagged at the fourth call, its third repeat: calls 5 and 6 were avoidable.
    assert (report["failed_runs_flagged"], report["failed_spend_after_flag_usd"]) == (
        1,
        "0.500000",
    )


def test_cli_json_has_the_issue_keys(capsys: pytest.CaptureFixture[str]) -> None:
    """`governor eval loops --json --inject` prints the named figures."""
    code = main(["eval", "loops", str(SAMPLE), "--json", "--inject", "--seed", "0"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {
        "false_stop_rate": doc["false_stop_rate"],
        "detection_rate": doc["detection_rate"],
        "failed_runs_flagged": doc["failed_runs_flagged"],
    } == {"false_stop_rate": 0.5, "detection_rate": 1.0, "failed_runs_flagged": 0}
    assert {"median_delay_repeats", "max_delay_repeats"} <= doc.keys()
    assert "failed_spend_after_flag_usd" in doc


def test_cli_reports_an_unreadable_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing file is exit status 2 with the path in the message."""
    missing = tmp_path / "nope.jsonl"
    assert main(["eval", "loops", str(missing)]) == 2
    assert "nope.jsonl" in capsys.readouterr().err


def _write_lines(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


_TOKENS = {"prompt_tokens": 900, "completion_tokens": 40}


def _tiny_run(run_id: str, outcome: object = "resolved") -> dict[str, object]:
    """A governor-format run of two different calls."""
    run = Trajectory(
        id=run_id,
        outcome="resolved",
        calls=(
            Call(output="look", cost_usd=Decimal("0.25"), created_s=100, **_TOKENS),
            Call(output="fix", cost_usd=Decimal("0.5"), created_s=130, **_TOKENS),
        ),
    )
    return {**trajectory_to_dict(run), "outcome": outcome}


@pytest.mark.parametrize(
    ("resolved", "outcome"),
    [
        (True, "resolved"),
        ("true", "resolved"),
        ("TRUE", "resolved"),
        ("Resolved", "resolved"),
        ("yes", "resolved"),
        (1, "resolved"),
        ("1", "resolved"),
        (False, "unresolved"),
        ("false", "unresolved"),
        ("False", "unresolved"),
        ("unresolved", "unresolved"),
        ("No", "unresolved"),
        (0, "unresolved"),
        ("0", "unresolved"),
    ],
)
def test_raw_resolved_flag_is_read_in_its_common_forms(
    tmp_path: Path, resolved: object, outcome: str
) -> None:
    """A string "false" is not resolved, and "Resolved" is not a failure."""
    path = _write_lines(tmp_path / "raw.jsonl", [{**_raw_row(), "resolved": resolved}])
    (run,) = read_trajectories(path)
    assert run.outcome == outcome


@pytest.mark.parametrize(
    ("word", "resolved"),
    [("Resolved", True), ("RESOLVED", True), ("unresolved", False)],
)
def test_outcome_word_is_read_in_any_case(
    tmp_path: Path, word: str, resolved: bool
) -> None:
    """``"outcome": "Resolved"`` is a resolved run, not a failed one."""
    path = _write_lines(tmp_path / "runs.jsonl", [_tiny_run("a", word)])
    (run,) = read_trajectories(path)
    assert (run.resolved, run.labelled) == (resolved, True)


def test_an_unknown_outcome_word_names_file_and_line(tmp_path: Path) -> None:
    """A word that is not an outcome is an error, not a silent failure."""
    rows = [_tiny_run("a"), _tiny_run("b", "success")]
    path = _write_lines(tmp_path / "runs.jsonl", rows)
    with pytest.raises(ConfigError, match=r"runs\.jsonl:2: outcome is 'success'"):
        list(read_trajectories(path))


def test_a_run_without_a_label_is_neither_resolved_nor_failed(tmp_path: Path) -> None:
    """A missing ``resolved`` leaves the run out of both false stops and failures."""
    row = {k: v for k, v in _raw_row().items() if k != "resolved"}
    path = _write_lines(tmp_path / "raw.jsonl", [row, _tiny_run("b")])
    report = evaluate(list(read_trajectories(path)), Loops(), injecting=False, seed=0)
    summary = report["all"]
    assert (summary["unlabelled_runs"], summary["failed_runs"]) == (1, 0)
    assert (summary["resolved_runs"], summary["failed_spend_usd"]) == (1, "0.000000")


def test_cli_says_how_many_runs_have_no_label(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The note goes to stderr, so --json stays one JSON document."""
    rows = [_tiny_run("a"), _tiny_run("b", None), _tiny_run("c", "unknown")]
    path = _write_lines(tmp_path / "runs.jsonl", rows)
    assert main(["eval", "loops", str(path), "--json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert (doc["unlabelled_runs"], doc["defaults"]["all"]["failed_runs"]) == (2, 0)
    assert "2 of 3 runs have no outcome label" in captured.err


def _raw_with(change: dict[str, object]) -> dict[str, object]:
    """The raw row with keys of its first reply (messages[2]) changed."""
    row = _raw_row()
    messages = [dict(m) for m in row["messages"]]
    messages[2].update(change)
    return {**row, "messages": messages}


@pytest.mark.parametrize(
    ("row", "says"),
    [
        (_raw_with({"role": None}), "messages[2] has no 'role'"),
        (_raw_with({"cost_usd": "abc"}), "messages[2].cost_usd is 'abc'"),
        (_raw_with({"cost_usd": float("nan")}), "messages[2].cost_usd is nan"),
        (_raw_with({"cost_usd": -1.5}), "messages[2].cost_usd is -1.5"),
        (_raw_with({"prompt_tokens": "many"}), "messages[2].prompt_tokens is 'many'"),
        (_raw_with({"completion_tokens": -3}), "messages[2].completion_tokens is -3"),
        (_raw_with({"created": "yesterday"}), "messages[2].created is 'yesterday'"),
        ({**_tiny_run("x"), "id": None}, "the run has no 'id'"),
        ({**_tiny_run("x"), "calls": "none"}, "calls is a JSON string, not a list"),
        (
            {**_tiny_run("x"), "calls": [{"tool_calls": [{"args": {}}]}]},
            "calls[0].tool_calls[0] has no 'name'",
        ),
        (7, "a JSON number, not a run object"),
    ],
)
def test_a_bad_value_names_file_line_and_field(
    tmp_path: Path, row: object, says: str
) -> None:
    """Each unreadable value is a ConfigError with ``path:line`` and the field."""
    path = _write_lines(tmp_path / "runs.jsonl", [_tiny_run("ok"), row])
    with pytest.raises(ConfigError, match=re.escape(f"runs.jsonl:2: {says}")):
        list(read_trajectories(path))


def test_iso_call_times_are_read_as_unix_seconds(tmp_path: Path) -> None:
    """An ISO 8601 ``created`` gives the same seconds as the number."""
    iso = _raw_with({"created": "1970-01-01T00:00:10Z"})
    naive = _raw_with({"created": "1970-01-01 00:00:10"})
    for row in (iso, naive):
        path = _write_lines(tmp_path / "raw.jsonl", [row])
        (run,) = read_trajectories(path)
        assert run.calls[0].created_s == 10


def test_gzip_is_recognised_by_its_bytes_and_a_bom_is_skipped(tmp_path: Path) -> None:
    """A gzipped file without .gz and a file with a byte-order mark both read."""
    line = json.dumps(_raw_row()) + "\n"
    packed = tmp_path / "packed.jsonl"
    packed.write_bytes(gzip.compress(line.encode()))
    marked = tmp_path / "marked.jsonl"
    marked.write_bytes(b"\xef\xbb\xbf" + line.encode())
    assert [r.id for r in read_trajectories(packed)] == ["demo__demo-1"]
    assert [r.id for r in read_trajectories(marked)] == ["demo__demo-1"]


def test_a_truncated_gzip_file_is_a_config_error(tmp_path: Path) -> None:
    """A cut-short gzip stream names the file instead of raising EOFError."""
    data = gzip.compress(
        ("".join(json.dumps(_tiny_run(f"r{n}")) + "\n" for n in range(50))).encode()
    )
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match=r"cut\.jsonl\.gz:\d+: the gzip data is cut"):
        list(read_trajectories(path))


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 give the line, not a bare codec error."""
    path = tmp_path / "runs.jsonl"
    path.write_bytes(json.dumps(_tiny_run("a")).encode() + b"\n\xff\n")
    with pytest.raises(ConfigError, match=r"runs\.jsonl:2: not UTF-8 text"):
        list(read_trajectories(path))


def test_a_repeated_run_id_is_refused(tmp_path: Path) -> None:
    """The same id twice would count the run twice: both lines are named."""
    rows = [_tiny_run("a"), _tiny_run("b"), _tiny_run("a")]
    path = _write_lines(tmp_path / "runs.jsonl", rows)
    with pytest.raises(
        ConfigError, match=r"runs\.jsonl:3: run id 'a' is also on line 1"
    ):
        list(read_trajectories(path))


def test_cli_reports_a_bad_line_with_exit_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI prints the reader's ``path:line`` message once."""
    path = _write_lines(tmp_path / "runs.jsonl", [_raw_with({"cost_usd": "abc"})])
    assert main(["eval", "loops", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"governor eval loops: {path}:1: messages[2].cost_usd")


def test_cli_prints_progress_on_stderr_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every 100 runs a progress line goes to stderr; stdout stays JSON."""
    rows = [_tiny_run(f"run-{n}") for n in range(200)]
    path = _write_lines(tmp_path / "runs.jsonl", rows)
    assert main(["eval", "loops", str(path), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["runs"] == 200
    assert captured.err.splitlines() == [
        "governor eval loops: replayed 100/200 runs",
        "governor eval loops: replayed 200/200 runs",
    ]


def test_sweep_progress_counts_runs_over_the_whole_grid() -> None:
    """The sweep reports runs done across all its settings."""
    seen: list[tuple[int, int]] = []
    grid = [("max_repeats", (1, 2)), ("max_stale_steps", (3,))]
    sweep(
        _sample(), Loops(), injecting=False, seed=0, grid=grid, progress=_record(seen)
    )
    assert seen == [(n, 9) for n in range(1, 10)]


def _record(seen: list[tuple[int, int]]) -> Callable[[int, int], None]:
    def note(done: int, total: int) -> None:
        seen.append((done, total))

    return note


@pytest.mark.parametrize("cost", ["1e300", 1e300, 10**40], ids=["text", "float", "int"])
def test_a_cost_no_call_can_have_is_refused_naming_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cost: object
) -> None:
    """A call cost of 1e300 or 10**40 dollars is a corrupt record: exit 2 naming
    file, line and field, as a negative cost is, not a decimal overflow."""
    row = _tiny_run("big")
    row["calls"][1]["cost_usd"] = cost  # type: ignore[index]
    path = _write_lines(tmp_path / "runs.jsonl", [_tiny_run("ok"), row])
    assert main(["eval", "loops", str(path), "--json"]) == 2
    err = json.loads(capsys.readouterr().out)["error"]["message"]
    assert "runs.jsonl:2: calls[1].cost_usd of 1.000e+" in err
    assert "dollars for one call cannot be right" in err


def test_the_median_delay_is_a_float_for_one_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One run's odd number of detections gives a float median, as more runs do."""
    run = _sample()[0]
    report = evaluate([run], Loops(), injecting=True, seed=0)
    assert report["all"]["detected"] == 3
    medians = [report["all"]["median_delay_repeats"]]
    medians += [k["median_delay_repeats"] for k in report["all"]["by_kind"].values()]
    assert all(type(m) is float for m in medians), medians


def test_the_falsely_stopped_runs_are_named(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A false stop can be looked at: the JSON lists each stopped resolved run
    with its rule and call, the text names them under the table."""

    sample = str(Path(__file__).parent / "data" / "trajectories_sample.jsonl")
    assert main(["eval", "loops", sample, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    runs = doc["defaults"]["all"]["false_stop_runs"]
    assert runs == [{"id": "sympy__sympy-15976", "rule": "repeat", "call": 23}]
    assert len(runs) == doc["defaults"]["all"]["false_stops"]
    assert main(["eval", "loops", sample]) == 0
    assert (
        "Resolved runs the defaults stop: sympy__sympy-15976 (repeat, call 24)."
        in capsys.readouterr().out
    )
