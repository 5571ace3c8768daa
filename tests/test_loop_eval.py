"""The trajectory format, its converter, loop injection and `governor eval loops`."""

from __future__ import annotations

import gzip
import json
from decimal import Decimal
from pathlib import Path

import pytest

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
from governor.loops._eval import evaluate, replay, split_of
from governor.loops._inject import inject
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
