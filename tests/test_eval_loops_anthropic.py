"""`governor eval loops` on runs whose messages are in Anthropic's shape.

Observations are ``tool_result`` parts of a user message and tool calls are
``tool_use`` parts of a reply; both must be read, as OpenAI's ``tool``
messages and ``tool_calls`` are, or every observation reads as "" and the
tool rules see no tool call.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from governor.cli import main
from governor.loops import read_trajectories

COMMANDS = [
    "ls",
    "cat setup.py",
    "grep -rn foo src",
    "python reproduce.py",
    "sed -i 's/a/b/' src/x.py",
    "python reproduce.py -v",
    "git diff",
    "cat src/x.py",
    "pytest -q tests/test_x.py",
    "grep -n bar src/y.py",
    "head -n 40 src/y.py",
    "python -m pip list",
    "git status",
    "pytest -q",
]

THOUGHTS = [
    "the tests fail on import, so I look at the module first.",
    "maybe a stale cache breaks collection; trying again anyway.",
    "perhaps the fixture needs a database, which this sandbox lacks.",
    "environment variables might differ between runs here.",
    "one more time, with fresh eyes, before giving up on this idea.",
]


def _result_content(n: int) -> Any:
    """A result as a string, as nested text parts, or as an image part."""
    text = f"<returncode>0</returncode>\n<output>{n} lines of {COMMANDS[n]}</output>"
    if n % 3 == 0:
        return text
    if n % 3 == 1:
        return [{"type": "text", "text": text}]
    image = {"type": "base64", "media_type": "image/png", "data": f"iVBOR{n}"}
    return [{"type": "image", "source": image}]


def _anthropic_run(run_id: str) -> dict[str, Any]:
    """A resolved run of 14 different commands: fenced blocks in text parts,
    each answered by a tool_result part."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Fix src/x.py"}]
    for n, command in enumerate(COMMANDS):
        text = f"THOUGHT: step {n}.\n```bash\n{command}\n```"
        messages.append(
            {"role": "assistant", "content": [{"type": "text", "text": text}]}
        )
        result = {"type": "tool_result", "tool_use_id": f"t{n}"}
        result["content"] = _result_content(n)
        messages.append({"role": "user", "content": [result]})
    return {"instance_id": run_id, "resolved": True, "messages": messages}


def _openai_run(run_id: str) -> dict[str, Any]:
    """The same run with plain string messages (text results only)."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Fix src/x.py"}]
    for n, command in enumerate(COMMANDS):
        text = f"THOUGHT: step {n}.\n```bash\n{command}\n```"
        messages.append({"role": "assistant", "content": text})
        content = _result_content(n)
        if not isinstance(content, str):
            content = content[0].get("text", f"image {n}")
        messages.append({"role": "user", "content": content})
    return {"instance_id": run_id, "resolved": True, "messages": messages}


def _tool_use_run(run_id: str, inputs: list[str]) -> dict[str, Any]:
    """A resolved run whose replies call ``bash`` through tool_use parts;
    every call gets the same result text."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Fix src/x.py"}]
    for n, command in enumerate(inputs):
        use = {"type": "tool_use", "id": f"u{n}", "name": "bash"}
        use["input"] = {"command": command}
        text = {"type": "text", "text": f"THOUGHT: {THOUGHTS[n]}"}
        messages.append({"role": "assistant", "content": [text, use]})
        result = {"type": "tool_result", "tool_use_id": f"u{n}", "content": "failed"}
        messages.append({"role": "user", "content": [result]})
    return {"instance_id": run_id, "resolved": True, "messages": messages}


def _write(path: Path, runs: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(run) + "\n" for run in runs), encoding="utf-8")
    return path


def _eval(capsys: pytest.CaptureFixture[str], path: Path) -> dict[str, Any]:
    code = main(["eval", "loops", str(path), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    doc: dict[str, Any] = json.loads(out)
    return doc


def test_tool_result_parts_are_the_observations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """14 different results (strings, nested text parts, images) are 14
    different observations: no false stop, as in the OpenAI form."""
    anthropic = _write(tmp_path / "a.jsonl", [_anthropic_run("r1")])
    openai = _write(tmp_path / "o.jsonl", [_openai_run("r1")])
    doc = _eval(capsys, anthropic)
    assert (doc["runs"], doc["calls"], doc["false_stop_rate"]) == (1, 14, 0.0)
    assert doc["defaults"]["all"]["false_stop_runs"] == []
    assert _eval(capsys, openai)["false_stop_rate"] == 0.0
    (run,) = read_trajectories(anthropic)
    results = [call.tool_results[0].content for call in run.calls]
    assert results[0] == "<returncode>0</returncode>\n<output>0 lines of ls</output>"
    assert results[1] == (
        "<returncode>0</returncode>\n<output>1 lines of cat setup.py</output>"
    )
    assert results[2].startswith("<image part sha1 ")
    assert len(set(results)) == 14
    (plain,) = read_trajectories(openai)
    assert [c.tool_calls for c in run.calls] == [c.tool_calls for c in plain.calls]


def test_tool_use_parts_are_the_tool_calls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same tool_use call with the same result a 4th time is a repeat
    (on call 3, counted from 0); new arguments each time are not."""
    same = _tool_use_run("same", ["pytest -q"] * 5)
    new = _tool_use_run("new", [f"pytest -q -k case{n}" for n in range(5)])
    path = _write(tmp_path / "t.jsonl", [same, new])
    doc = _eval(capsys, path)
    figures = doc["defaults"]["all"]
    assert (figures["resolved_runs"], figures["false_stops"]) == (2, 1)
    assert figures["false_stop_runs"] == [{"id": "same", "rule": "repeat", "call": 3}]
    run = next(iter(read_trajectories(path)))
    call = run.calls[0]
    assert (call.tool_calls[0].name, call.tool_calls[0].args) == (
        "bash",
        {"command": "pytest -q"},
    )
    assert (call.tool_calls[0].id, call.tool_results[0].call_id) == ("u0", "u0")
    assert call.tool_results[0].content == "failed"
    assert call.output == f"THOUGHT: {THOUGHTS[0]}"
