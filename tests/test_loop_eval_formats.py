"""`governor eval loops` on mini-swe-agent's own files, folders and missing costs."""

from __future__ import annotations

import gzip
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from governor._errors import ConfigError
from governor.cli import main
from governor.loops import Trajectory, read_trajectories, write_trajectories
from governor.loops._eval import evaluate
from governor.policies._loops import Loops

SAMPLE = Path(__file__).parent / "data" / "trajectories_sample.jsonl"


def _sample() -> list[Trajectory]:
    return list(read_trajectories(SAMPLE))


def _reply(text: str, n: int, *, cost: float | None = 0.004596) -> dict[str, Any]:
    """An assistant message as mini-swe-agent 1 saves it (OpenRouter response)."""
    usage: dict[str, Any] = {
        "prompt_tokens": 1000 + n,
        "completion_tokens": 100 + n,
        "total_tokens": 1100 + 2 * n,
        "prompt_tokens_details": {"cached_tokens": 10 * n},
        "completion_tokens_details": {"reasoning_tokens": 7},
    }
    if cost is not None:
        usage["cost"] = cost
    response = {
        "id": f"gen-{n}",
        "created": 1763510516 + 30 * n,
        "model": "google/gemini-3-pro-preview",
        "choices": [{"message": {"role": "assistant", "content": text}}],
        "usage": usage,
    }
    return {"role": "assistant", "content": text, "extra": {"response": response}}


def _traj_doc(run: Trajectory, *, instance_id: bool = True) -> dict[str, Any]:
    """A run rebuilt as a mini-swe-agent 1 ``.traj.json`` document."""
    messages: list[dict[str, Any]] = []
    for n, call in enumerate(run.calls):
        messages += [dict(m) for m in call.messages]
        cost = None if call.cost_usd is None else float(call.cost_usd)
        messages.append(_reply(call.output, n, cost=cost))
        messages += [{"role": "user", "content": r.content} for r in call.tool_results]
    doc: dict[str, Any] = {
        "info": {
            "exit_status": "Submitted",
            "submission": "diff --git a/x b/x",
            "model_stats": {"instance_cost": float(run.cost_usd), "api_calls": 3},
            "mini_version": "1.15.0",
            "config": {"agent": {"step_limit": 250, "cost_limit": 3.0}},
        },
        "messages": messages,
        "trajectory_format": "mini-swe-agent-1",
    }
    if instance_id:
        doc["instance_id"] = run.id
    return doc


def _write_doc(path: Path, doc: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return path


def _actions(run: Trajectory) -> list[tuple[str, object]]:
    return [(c.output, [t.args for t in c.tool_calls]) for c in run.calls]


def test_a_traj_json_file_is_read_as_one_run(tmp_path: Path) -> None:
    """A pretty-printed mini-swe-agent file is one run, not 'line 1: not JSON'."""
    original = _sample()[0]
    path = _write_doc(tmp_path / "x.traj.json", _traj_doc(original))
    (run,) = read_trajectories(path)
    assert (run.id, run.outcome) == (original.id, "unknown")
    assert _actions(run) == _actions(original)
    assert run.meta["exit_status"] == "Submitted"
    assert (run.meta["step_limit"], run.meta["cost_limit_usd"]) == (250, 3.0)


def test_usage_is_read_from_the_raw_api_response(tmp_path: Path) -> None:
    """Tokens, cached tokens, cost and time come from extra.response."""
    path = _write_doc(tmp_path / "x.traj.json", _traj_doc(_sample()[0]))
    (run,) = read_trajectories(path)
    second = run.calls[1]
    assert (second.prompt_tokens, second.completion_tokens) == (1001, 101)
    assert (second.cached_tokens, second.created_s) == (10, 1763510546)
    assert second.cost_usd == _sample()[0].calls[1].cost_usd


def test_a_file_of_one_run_without_id_takes_its_name(tmp_path: Path) -> None:
    """`mini -o task.traj.json` writes no instance_id: the file name is the id."""
    doc = _traj_doc(_sample()[0], instance_id=False)
    path = _write_doc(tmp_path / "fix-login.traj.json", doc)
    assert [r.id for r in read_trajectories(path)] == ["fix-login"]


def test_a_run_of_messages_may_name_itself_by_id(tmp_path: Path) -> None:
    """A list of message-form runs with 'id' (the trajectory format's key) is
    read, not refused for want of 'instance_id'."""
    runs = _sample()
    docs = []
    for run in runs:
        doc = _traj_doc(run, instance_id=False)
        doc["id"] = f"by-id-{run.id}"
        docs.append(doc)
    path = _write_doc(tmp_path / "runs.json", docs)
    assert [r.id for r in read_trajectories(path)] == [f"by-id-{r.id}" for r in runs]


def test_a_json_list_of_runs_is_read(tmp_path: Path) -> None:
    """One JSON document holding a list of runs gives each of them."""
    runs = _sample()
    path = _write_doc(tmp_path / "runs.json", [_traj_doc(r) for r in runs])
    assert [r.id for r in read_trajectories(path)] == [r.id for r in runs]


def test_a_folder_is_read_with_its_sub_folders_in_order(tmp_path: Path) -> None:
    """The SWE-bench runner's layout: <id>/<id>.traj.json, plus preds.json."""
    first, second, third = _sample()
    _write_doc(tmp_path / second.id / f"{second.id}.traj.json", _traj_doc(second))
    _write_doc(tmp_path / first.id / f"{first.id}.traj.json", _traj_doc(first))
    write_trajectories([third], tmp_path / "more.jsonl.gz")
    _write_doc(tmp_path / "preds.json", {first.id: {"model_patch": "diff"}})
    (tmp_path / "minisweagent.log").write_text("not a run\n", encoding="utf-8")
    skipped: list[tuple[Path, str]] = []
    runs = list(read_trajectories(tmp_path, on_skip=lambda *a: skipped.append(a)))
    assert [r.id for r in runs] == [second.id, first.id, third.id]
    assert [path.name for path, _ in skipped] == ["preds.json"]


def test_a_repeated_id_across_files_names_both(tmp_path: Path) -> None:
    """The same run in two files of a folder is refused, both files named."""
    run = _sample()[0]
    _write_doc(tmp_path / "a.traj.json", _traj_doc(run))
    _write_doc(tmp_path / "b.traj.json", _traj_doc(run))
    with pytest.raises(ConfigError, match=r"b\.traj\.json: run id .* in .*a\.traj"):
        list(read_trajectories(tmp_path))


def test_a_folder_without_run_files_is_a_config_error(tmp_path: Path) -> None:
    """An empty folder says which files it looked for."""
    with pytest.raises(ConfigError, match=r"no run files in .*\*\.traj\.json"):
        list(read_trajectories(tmp_path))


def test_a_broken_document_names_its_line(tmp_path: Path) -> None:
    """A syntax error deep in a pretty-printed file names that line."""
    text = json.dumps(_traj_doc(_sample()[0]), indent=2).splitlines()
    text[40] = text[40] + " oops"
    path = tmp_path / "x.traj.json"
    path.write_text("\n".join(text), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"x\.traj\.json:41: not JSON"):
        list(read_trajectories(path))


def test_a_gzipped_traj_json_is_read(tmp_path: Path) -> None:
    """A compressed whole-file document is recognised by its bytes."""
    doc = json.dumps(_traj_doc(_sample()[1]), indent=2)
    path = tmp_path / "x.traj.json.gz"
    path.write_bytes(gzip.compress(doc.encode()))
    assert [r.id for r in read_trajectories(path)] == [_sample()[1].id]


def _v2_doc() -> dict[str, Any]:
    """A mini-swe-agent 2 run with tool calling: tool messages, extra.cost."""

    def reply(n: int, command: str) -> dict[str, Any]:
        call = {
            "id": f"toolu_{n}",
            "type": "function",
            "function": {"name": "bash", "arguments": json.dumps({"command": command})},
        }
        usage = {"prompt_tokens": 50 * n, "completion_tokens": 5}
        extra = {"response": {"usage": usage}, "cost": 0.25, "timestamp": 100.0 + n}
        return {
            "role": "assistant",
            "content": None,
            "tool_calls": [call],
            "extra": extra,
        }

    def result(n: int, text: str) -> dict[str, Any]:
        return {"role": "tool", "tool_call_id": f"toolu_{n}", "content": text}

    rejected = {
        "role": "user",
        "content": "No tool calls found in the response.",
        "extra": {
            "interrupt_type": "FormatError",
            "cost": 0.5,
            "response": {
                "choices": [{"message": {"content": "I think we are done."}}],
                "usage": {"prompt_tokens": 70, "completion_tokens": 9},
            },
        },
    }
    return {
        "info": {"exit_status": "LimitsExceeded", "mini_version": "2.0.0"},
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": [{"type": "text", "text": "Fix the bug."}]},
            reply(1, "ls"),
            result(1, "a.py"),
            rejected,
            reply(2, "cat a.py"),
            result(2, "print(1)"),
            {"role": "exit", "content": "", "extra": {"exit_status": "Submitted"}},
        ],
        "trajectory_format": "mini-swe-agent-1.1",
    }


def test_version_2_tool_calls_and_rejected_replies_are_calls(tmp_path: Path) -> None:
    """Tool calls, tool messages, extra.cost and a reply kept on its format error."""
    path = _write_doc(tmp_path / "task-7.traj.json", _v2_doc())
    (run,) = read_trajectories(path)
    assert run.id == "task-7"
    assert [c.output for c in run.calls] == ["", "I think we are done.", ""]
    assert [[t.args for t in c.tool_calls] for c in run.calls] == [
        [{"command": "ls"}],
        [],
        [{"command": "cat a.py"}],
    ]
    assert run.calls[0].results_for(run.calls[0].tool_calls[0]) == "a.py"
    assert run.calls[0].messages[1] == {"role": "user", "content": "Fix the bug."}
    assert run.calls[2].messages[0]["content"].startswith("No tool calls")
    assert run.cost_usd == Decimal("1.0")
    assert [c.created_s for c in run.calls] == [101.0, None, 102.0]


def test_version_2_text_blocks_are_actions(tmp_path: Path) -> None:
    """mini-swe-agent 2's ```mswea_bash_command block is the action."""
    text = "Example: ```bash\nrm -rf /\n```\n```mswea_bash_command\nls\n```"
    doc = {
        "messages": [
            {"role": "user", "content": "Fix it."},
            {"role": "assistant", "content": text},
            {"role": "user", "content": "<returncode>0</returncode>"},
        ]
    }
    (run,) = read_trajectories(_write_doc(tmp_path / "t.traj.json", doc))
    assert [t.args for t in run.calls[0].tool_calls] == [{"command": "ls"}]


def test_cli_reads_a_folder_of_traj_json_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command takes a folder; the skipped file and no labels go to stderr."""
    for run in _sample():
        _write_doc(tmp_path / run.id / f"{run.id}.traj.json", _traj_doc(run))
    _write_doc(tmp_path / "preds.json", {})
    assert main(["eval", "loops", str(tmp_path), "--json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert (doc["runs"], doc["unlabelled_runs"], doc["calls_without_cost"]) == (
        3,
        3,
        0,
    )
    assert "skipped" in captured.err
    assert "preds.json" in captured.err
    assert "3 of 3 runs have no outcome label" in captured.err


def _no_cost(run: Trajectory) -> dict[str, Any]:
    """A run's mini-swe-agent file with every cost left out (LiteLLM v1 files)."""
    doc = _traj_doc(run)
    for message in doc["messages"]:
        if message["role"] == "assistant":
            del message["extra"]["response"]["usage"]["cost"]
    return {**doc, "resolved": False}


def test_a_call_without_cost_has_an_unknown_cost(tmp_path: Path) -> None:
    """No cost field is None, not a free call."""
    path = _write_doc(tmp_path / "x.traj.json", _no_cost(_sample()[0]))
    (run,) = read_trajectories(path)
    assert {c.cost_usd for c in run.calls} == {None}
    assert run.calls_without_cost == len(run.calls)


def test_spend_figures_are_null_when_no_call_has_a_cost(tmp_path: Path) -> None:
    """Failed runs without costs give null spend, not a fake $0."""
    runs = []
    for run in _sample():
        path = _write_doc(tmp_path / f"{run.id}.traj.json", _no_cost(run))
        runs += read_trajectories(path)
    summary = evaluate(runs, Loops(), injecting=False, seed=0)["all"]
    assert (summary["failed_spend_usd"], summary["failed_spend_after_flag_usd"]) == (
        None,
        None,
    )
    assert summary["calls_without_cost"] == summary["calls"] == 56


def test_cli_says_how_many_calls_have_no_cost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The note goes to stderr and the JSON spend figures are null."""
    for run in _sample():
        _write_doc(tmp_path / f"{run.id}.traj.json", _no_cost(run))
    assert main(["eval", "loops", str(tmp_path), "--json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["failed_spend_after_flag_usd"] is None
    assert doc["defaults"]["all"]["failed_spend_usd"] is None
    assert "56 of 56 calls have no cost" in captured.err
    assert "null, not zero" in captured.err


def test_cli_table_shows_a_dash_for_unknown_spend(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Markdown table does not print $0.00 for spend nobody recorded."""
    _write_doc(tmp_path / "x.traj.json", _no_cost(_sample()[1]))
    assert main(["eval", "loops", str(tmp_path)]) == 0
    first_row = capsys.readouterr().out.splitlines()[2]
    assert first_row.endswith("| 0/1 | - |")


def test_partly_missing_costs_sum_the_known_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Some calls without cost: the figures are lower bounds, and stderr says so."""
    run = _sample()[1]
    doc = {**_traj_doc(run), "resolved": False}
    replies = [m for m in doc["messages"] if m["role"] == "assistant"]
    del replies[0]["extra"]["response"]["usage"]["cost"]
    path = _write_doc(tmp_path / "x.traj.json", doc)
    known = sum((c.cost_usd for c in run.calls[1:] if c.cost_usd), Decimal(0))
    assert main(["eval", "loops", str(path), "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)["defaults"]["all"]
    assert Decimal(out["failed_spend_usd"]) == known.quantize(Decimal("0.000001"))
    assert f"1 of {len(run.calls)} calls have no cost" in captured.err
    assert "lower bounds" in captured.err


def test_a_trajectory_line_without_cost_round_trips_as_null(tmp_path: Path) -> None:
    """Writing a run with an unknown cost writes null, which reads back as None."""
    row = {"id": "a", "outcome": "unresolved", "calls": [{"output": "look"}]}
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(row) + "\n", encoding="utf-8")
    runs = list(read_trajectories(source))
    assert runs[0].calls[0].cost_usd is None
    target = tmp_path / "out.jsonl"
    write_trajectories(runs, target)
    (line,) = target.read_text(encoding="utf-8").splitlines()
    assert json.loads(line)["calls"][0]["cost_usd"] is None
    assert list(read_trajectories(target)) == runs


def test_cli_help_names_the_accepted_inputs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The help says which files and folders the command reads."""
    with pytest.raises(SystemExit):
        main(["eval", "loops", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shape in (".traj.json", "folder", "trajectories.jsonl.gz"):
        assert re.search(re.escape(shape), text)


def test_a_bad_nested_value_names_its_path(tmp_path: Path) -> None:
    """A cost read from the raw response is named by its path in the file."""
    doc = _traj_doc(_sample()[0])
    replies = [m for m in doc["messages"] if m["role"] == "assistant"]
    replies[1]["extra"]["response"]["usage"]["cost"] = "abc"
    path = _write_doc(tmp_path / "x.traj.json", doc)
    says = "x.traj.json: messages[4].extra.response.usage.cost is 'abc'"
    with pytest.raises(ConfigError, match=re.escape(says)):
        list(read_trajectories(path))


@pytest.mark.parametrize(("bad_line", "number"), [(0, 1), (1, 2)])
def test_a_line_that_is_not_json_is_named(
    tmp_path: Path, bad_line: int, number: int
) -> None:
    """JSON lines with a broken line, first or later, name that line."""
    lines = [json.dumps({"id": f"r{n}", "calls": []}) for n in range(3)]
    lines[bad_line] = "{not json"
    path = tmp_path / "runs.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"runs\.jsonl:{number}: not JSON"):
        list(read_trajectories(path))


def test_a_swe_agent_traj_file_is_named_as_a_format_not_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SWE-agent's own .traj (a 'trajectory' of steps) is said to be unsupported,
    in a folder and given alone, not just 'not a run'."""
    step = {"action": "ls", "observation": "a b", "response": "ls", "thought": ""}
    doc = {"environment": "swe_main", "trajectory": [step], "info": {}}
    path = _write_doc(tmp_path / "runs" / "django__django-1.traj", doc)
    assert main(["eval", "loops", str(path.parent)]) == 2
    assert "holds a SWE-agent trajectory" in capsys.readouterr().err
    assert main(["eval", "loops", str(path)]) == 2
    err = capsys.readouterr().err
    assert "django__django-1.traj: this is a SWE-agent trajectory" in err
    assert "a format that is not read" in err


def test_cli_help_says_swe_agent_traj_files_are_not_read(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The help lists *.traj only as JSON in the accepted formats."""
    with pytest.raises(SystemExit):
        main(["eval", "loops", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "own .traj format is not read" in help_text


def _one_run(**changes: Any) -> dict[str, Any]:
    run = {
        "format": "governor-trajectory-1",
        "id": "run-1",
        "outcome": "resolved",
        "calls": [
            {
                "messages": [{"role": "user", "content": "fix it"}],
                "output": "done",
                "tool_results": [{"content": "ok", "truncated": False}],
                "created_s": 1763508908,
            }
        ],
    }
    call_changes = changes.pop("call", {})
    result_changes = changes.pop("result", {})
    run["calls"][0].update(call_changes)  # type: ignore[index]
    run["calls"][0]["tool_results"][0].update(result_changes)  # type: ignore[index]
    return {**run, **changes}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format": "governor-trajectory-2"}, "format is 'governor-trajectory-2'"),
        ({"id": " "}, "id is empty"),
        ({"call": {"output": 5}}, "calls[0].output is 5; give the model's answer"),
        ({"result": {"truncated": "yes"}}, ".truncated is 'yes'; give true or false"),
        ({"call": {"created_s": 1e300}}, "calls[0].created_s is 1e+300; give Unix"),
    ],
)
def test_a_run_with_a_value_it_cannot_mean_is_refused(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    """Values that were read as something else (an unknown format as this
    one, 5 as the text "5", "yes" as true, a time past the year 5138) are
    refused, naming the field."""
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps(_one_run(**changes)) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        list(read_trajectories(path))
    assert message in str(refused.value)


def test_a_plain_run_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps(_one_run()) + "\n", encoding="utf-8")
    (run,) = read_trajectories(path)
    assert (run.id, run.calls[0].output, run.calls[0].tool_results[0].truncated) == (
        "run-1",
        "done",
        False,
    )
