"""A plain JSONL format for recorded agent runs, and a converter into it.

One run per line, as a JSON object::

    {"format": "governor-trajectory-1",
     "id": "astropy__astropy-12907",
     "outcome": "resolved",
     "meta": {"agent": "mini-swe-agent 1.15.0", ...},
     "calls": [
       {"messages": [{"role": "system", "content": "..."},
                     {"role": "user", "content": "..."}],
        "output": "THOUGHT: ...```bash\\nls\\n```",
        "tool_calls": [{"id": "call-0", "name": "bash",
                        "args": {"command": "ls"}}],
        "tool_results": [{"call_id": "call-0", "content": "...",
                          "content_sha1": "...", "truncated": false}],
        "prompt_tokens": 1662, "completion_tokens": 106, "cached_tokens": 0,
        "cost_usd": "0.004596", "created_s": 1763510516}]}

``outcome`` is ``"resolved"`` for a run that did its job, ``"unresolved"`` or
``"error"`` for one that failed, and ``"unknown"`` (or no ``outcome``) for a
run without a label; true / false, yes / no and 1 / 0 are read too, in any
case, and any other value is an error. ``calls`` are the
model calls in order. A call's ``messages`` are the prompt messages added since
the call before that are not tool results (the first call's system prompt and
task, or the agent's feedback on a malformed reply); its ``tool_results``
answer its ``tool_calls`` and are part of the next call's prompt. A result cut
short keeps ``truncated: true`` and the SHA-1 of the whole text, so that exact
repeats stay detectable. ``cost_usd`` is a decimal string (numbers are read
too) of at least 0; ``created_s`` is the call's Unix time in seconds (an ISO
8601 time is converted, as UTC when it has no offset), or null. Run ids are
unique within a file.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from governor._errors import ConfigError
from governor._textlines import numbered_lines
from governor.loops._fields import (
    RESOLVED,
    UNLABELLED,
    cost_of,
    count_of,
    items_of,
    kind_of,
    mapping_of,
    outcome_of,
    required,
    time_of,
)

__all__ = [
    "FORMAT",
    "Call",
    "ToolCall",
    "ToolResult",
    "Trajectory",
    "from_mini_swe_agent",
    "read_trajectories",
    "write_trajectories",
]

FORMAT = "governor-trajectory-1"
# mini-swe-agent runs the one fenced bash block of a reply; any other count
# is answered with a format error instead of an observation.
_BASH_BLOCK = re.compile(r"```bash\s*\n(.*?)\n```", re.DOTALL)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call a model output asked for."""

    name: str
    args: Mapping[str, Any] | str
    id: str | None = None


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a tool returned, possibly cut short with the whole text's SHA-1."""

    content: str
    call_id: str | None = None
    content_sha1: str | None = None
    truncated: bool = False

    @property
    def comparable(self) -> str:
        """The text to compare with other results: the whole, or its hash."""
        if self.truncated and self.content_sha1:
            return f"{self.content}\n<full result sha1 {self.content_sha1}>"
        return self.content


@dataclass(frozen=True, slots=True)
class Call:
    """One model call of a run, with what it asked for and got back."""

    output: str
    messages: tuple[Mapping[str, str], ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    tool_results: tuple[ToolResult, ...] = ()
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    created_s: float | None = None

    def results_for(self, call: ToolCall) -> str | None:
        """Return the comparable result text answering ``call``, if any."""
        for result in self.tool_results:
            if result.call_id == call.id:
                return result.comparable
        return None


@dataclass(frozen=True, slots=True)
class Trajectory:
    """One recorded agent run."""

    id: str
    outcome: str
    calls: tuple[Call, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def resolved(self) -> bool:
        """True when the run did its job."""
        return self.outcome == RESOLVED

    @property
    def labelled(self) -> bool:
        """False for a run whose outcome is ``"unknown"``: neither good nor bad."""
        return self.outcome != UNLABELLED

    @property
    def cost_usd(self) -> Decimal:
        """The summed cost of every call."""
        return sum((c.cost_usd for c in self.calls), Decimal(0))


def from_mini_swe_agent(row: Mapping[str, Any]) -> Trajectory:
    """Convert one run of the mini-swe-agent SWE-bench data set.

    A tool call is the bash block parsed from the model's reply; its result
    is the observation message that follows. A reply without exactly one
    block gets no tool call, and the format error it drew becomes a message
    of the next call. ``resolved`` gives the outcome (see the module
    docstring); a row without it is a run without a label. A value that
    cannot be read raises :class:`ConfigError` naming it.
    """
    messages = [
        _message(m, where=f"messages[{i}]")
        for i, m in enumerate(items_of(row.get("messages"), where="messages"))
    ]
    calls: list[Call] = []
    pending: list[Mapping[str, str]] = []
    answered = False
    for position, message in enumerate(messages):
        if message["role"] != "assistant":
            if not answered:
                pending.append(_plain(message))
            answered = False
            continue
        reply = messages[position + 1] if position + 1 < len(messages) else None
        where = f"messages[{position}]"
        call = _mini_call(message, reply, len(calls), tuple(pending), where)
        answered = bool(call.tool_calls)
        pending = []
        calls.append(call)
    return Trajectory(
        id=str(required(row, "instance_id", where="the row")),
        outcome=outcome_of(row.get("resolved"), where="resolved"),
        calls=tuple(calls),
        meta={
            "agent": f"mini-swe-agent {row.get('mini_version', '')}".strip(),
            "exit_status": row.get("exit_status"),
            "step_limit": row.get("step_limit"),
            "cost_limit_usd": row.get("cost_limit_usd"),
        },
    )


def _message(value: object, *, where: str) -> Mapping[str, Any]:
    """A prompt message: an object with a ``role``."""
    message = mapping_of(value, where=where)
    required(message, "role", where=where)
    return message


def _plain(message: Mapping[str, Any]) -> Mapping[str, str]:
    content = message.get("content")
    return {"role": str(message["role"]), "content": str(content or "")}


def _mini_call(
    message: Mapping[str, Any],
    reply: Mapping[str, Any] | None,
    index: int,
    pending: tuple[Mapping[str, str], ...],
    where: str,
) -> Call:
    output = str(message.get("content") or "")
    blocks = _BASH_BLOCK.findall(output)
    tool_calls: tuple[ToolCall, ...] = ()
    tool_results: tuple[ToolResult, ...] = ()
    if len(blocks) == 1 and reply is not None and reply["role"] == "user":
        call_id = f"call-{index}"
        tool_calls = (ToolCall(name="bash", args={"command": blocks[0]}, id=call_id),)
        tool_results = (
            ToolResult(
                content=str(reply.get("content") or ""),
                call_id=call_id,
                content_sha1=reply.get("content_sha1"),
                truncated=bool(reply.get("content_truncated")),
            ),
        )
    return Call(
        output=output,
        messages=pending,
        tool_calls=tool_calls,
        tool_results=tool_results,
        **_usage(message, where, created="created"),
    )


def _usage(row: Mapping[str, Any], where: str, *, created: str) -> dict[str, Any]:
    """A call's tokens, cost and time, each checked."""
    return {
        "prompt_tokens": count_of(
            row.get("prompt_tokens"), where=f"{where}.prompt_tokens"
        ),
        "completion_tokens": count_of(
            row.get("completion_tokens"), where=f"{where}.completion_tokens"
        ),
        "cached_tokens": count_of(
            row.get("cached_tokens"), where=f"{where}.cached_tokens"
        ),
        "cost_usd": cost_of(row.get("cost_usd"), where=f"{where}.cost_usd"),
        "created_s": time_of(row.get(created), where=f"{where}.{created}"),
    }


def trajectory_from_dict(row: Mapping[str, Any]) -> Trajectory:
    """Read one line of the trajectory format (or a raw mini-swe-agent row).

    A value that cannot be read raises :class:`ConfigError` naming it.
    """
    mapping_of(row, where="the line")
    if "calls" not in row:
        if "instance_id" in row and "messages" in row:
            return from_mini_swe_agent(row)
        raise ConfigError(
            "a trajectory line needs 'id', 'outcome' and 'calls' (see the format "
            "in docs/loops.md), or must be a mini-swe-agent row with "
            "'instance_id' and 'messages'"
        )
    calls = items_of(row["calls"], where="calls")
    return Trajectory(
        id=str(required(row, "id", where="the run")),
        outcome=outcome_of(row.get("outcome"), where="outcome"),
        calls=tuple(_call_from_dict(c, f"calls[{i}]") for i, c in enumerate(calls)),
        meta=dict(mapping_of(row.get("meta") or {}, where="meta")),
    )


def _call_from_dict(value: object, where: str) -> Call:
    row = mapping_of(value, where=where)
    messages = items_of(row.get("messages"), where=f"{where}.messages")
    tool_calls = items_of(row.get("tool_calls"), where=f"{where}.tool_calls")
    results = items_of(row.get("tool_results"), where=f"{where}.tool_results")
    return Call(
        output=str(row.get("output") or ""),
        messages=tuple(
            _plain(_message(m, where=f"{where}.messages[{i}]"))
            for i, m in enumerate(messages)
        ),
        tool_calls=tuple(
            _tool_call(t, f"{where}.tool_calls[{i}]") for i, t in enumerate(tool_calls)
        ),
        tool_results=tuple(
            _tool_result(r, f"{where}.tool_results[{i}]") for i, r in enumerate(results)
        ),
        **_usage(row, where, created="created_s"),
    )


def _tool_call(value: object, where: str) -> ToolCall:
    row = mapping_of(value, where=where)
    name = required(row, "name", where=where)
    return ToolCall(name=str(name), args=row.get("args") or {}, id=row.get("id"))


def _tool_result(value: object, where: str) -> ToolResult:
    row = mapping_of(value, where=where)
    return ToolResult(
        content=str(row.get("content") or ""),
        call_id=row.get("call_id"),
        content_sha1=row.get("content_sha1"),
        truncated=bool(row.get("truncated")),
    )


def trajectory_to_dict(run: Trajectory) -> dict[str, Any]:
    """Return one run as the JSON object of its line."""
    return {
        "format": FORMAT,
        "id": run.id,
        "outcome": run.outcome,
        "meta": dict(run.meta),
        "calls": [_call_to_dict(c) for c in run.calls],
    }


def _call_to_dict(call: Call) -> dict[str, Any]:
    return {
        "messages": [dict(m) for m in call.messages],
        "output": call.output,
        "tool_calls": [
            {"id": t.id, "name": t.name, "args": t.args} for t in call.tool_calls
        ],
        "tool_results": [
            {
                "call_id": r.call_id,
                "content": r.content,
                "content_sha1": r.content_sha1,
                "truncated": r.truncated,
            }
            for r in call.tool_results
        ],
        "prompt_tokens": call.prompt_tokens,
        "completion_tokens": call.completion_tokens,
        "cached_tokens": call.cached_tokens,
        "cost_usd": str(call.cost_usd),
        "created_s": call.created_s,
    }


def _open_text(path: Path) -> IO[str]:
    if path.suffix != ".gz":
        return path.open("w", encoding="utf-8")
    return gzip.open(path, "wt", encoding="utf-8")


_FIX = "fix or drop that line (the format is in docs/loops.md)"


def read_trajectories(path: str | Path) -> Iterator[Trajectory]:
    """Yield the runs of a JSONL file, in either accepted shape.

    A gzip file is read whatever its name, and a leading byte-order mark is
    skipped. A line that cannot be read, or a run id seen on an earlier line,
    raises :class:`ConfigError` naming the file and line.
    """
    seen: dict[str, int] = {}
    for number, line in numbered_lines(Path(path)):
        if not line.strip():
            continue
        run = _run_of_line(path, number, line)
        if run.id in seen:
            raise ConfigError(
                f"{path}:{number}: run id {run.id!r} is also on line "
                f"{seen[run.id]}; give each run its own id (the train/test "
                "split and the injected loops follow it) or drop the repeat"
            )
        seen[run.id] = number
        yield run


def _run_of_line(path: str | Path, number: int, line: str) -> Trajectory:
    try:
        row = json.loads(line)
    except ValueError as exc:
        raise ConfigError(f"{path}:{number}: not JSON ({exc}); {_FIX}") from exc
    if not isinstance(row, dict):
        raise ConfigError(
            f"{path}:{number}: a JSON {kind_of(row)}, not a run object; {_FIX}"
        )
    try:
        return trajectory_from_dict(row)
    except ConfigError as exc:
        raise ConfigError(f"{path}:{number}: {exc}; {_FIX}") from exc


def write_trajectories(runs: Iterable[Trajectory], path: str | Path) -> int:
    """Write runs as trajectory-format JSONL (``.gz`` if so named); return the count."""
    count = 0
    with _open_text(Path(path)) as out:
        for run in runs:
            out.write(json.dumps(trajectory_to_dict(run), ensure_ascii=False))
            out.write("\n")
            count += 1
    return count
