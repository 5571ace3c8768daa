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

``outcome`` is ``"resolved"`` for a run that did its job and any other word
(``"unresolved"``, ``"error"``, ``"unknown"``) otherwise. ``calls`` are the
model calls in order. A call's ``messages`` are the prompt messages added since
the call before that are not tool results (the first call's system prompt and
task, or the agent's feedback on a malformed reply); its ``tool_results``
answer its ``tool_calls`` and are part of the next call's prompt. A result cut
short keeps ``truncated: true`` and the SHA-1 of the whole text, so that exact
repeats stay detectable. ``cost_usd`` is a decimal string (numbers are read
too); ``created_s`` is the call's Unix time in seconds, or null.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Literal

from governor._errors import ConfigError
from governor._money import as_decimal

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
        return self.outcome == "resolved"

    @property
    def cost_usd(self) -> Decimal:
        """The summed cost of every call."""
        return sum((c.cost_usd for c in self.calls), Decimal(0))


def from_mini_swe_agent(row: Mapping[str, Any]) -> Trajectory:
    """Convert one run of the mini-swe-agent SWE-bench data set.

    A tool call is the bash block parsed from the model's reply; its result
    is the observation message that follows. A reply without exactly one
    block gets no tool call, and the format error it drew becomes a message
    of the next call.
    """
    messages = row["messages"]
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
        call = _mini_call(message, reply, len(calls), tuple(pending))
        answered = bool(call.tool_calls)
        pending = []
        calls.append(call)
    return Trajectory(
        id=str(row["instance_id"]),
        outcome="resolved" if row.get("resolved") else "unresolved",
        calls=tuple(calls),
        meta={
            "agent": f"mini-swe-agent {row.get('mini_version', '')}".strip(),
            "exit_status": row.get("exit_status"),
            "step_limit": row.get("step_limit"),
            "cost_limit_usd": row.get("cost_limit_usd"),
        },
    )


def _plain(message: Mapping[str, Any]) -> Mapping[str, str]:
    return {"role": str(message["role"]), "content": str(message["content"])}


def _mini_call(
    message: Mapping[str, Any],
    reply: Mapping[str, Any] | None,
    index: int,
    pending: tuple[Mapping[str, str], ...],
) -> Call:
    output = str(message["content"])
    blocks = _BASH_BLOCK.findall(output)
    tool_calls: tuple[ToolCall, ...] = ()
    tool_results: tuple[ToolResult, ...] = ()
    if len(blocks) == 1 and reply is not None and reply["role"] == "user":
        call_id = f"call-{index}"
        tool_calls = (ToolCall(name="bash", args={"command": blocks[0]}, id=call_id),)
        tool_results = (
            ToolResult(
                content=str(reply["content"]),
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
        prompt_tokens=int(message.get("prompt_tokens") or 0),
        completion_tokens=int(message.get("completion_tokens") or 0),
        cached_tokens=int(message.get("cached_tokens") or 0),
        cost_usd=as_decimal(message.get("cost_usd") or 0, field="cost_usd"),
        created_s=message.get("created"),
    )


def trajectory_from_dict(row: Mapping[str, Any]) -> Trajectory:
    """Read one line of the trajectory format (or a raw mini-swe-agent row)."""
    if "calls" not in row:
        if "instance_id" in row and "messages" in row:
            return from_mini_swe_agent(row)
        raise ConfigError(
            "a trajectory line needs 'id', 'outcome' and 'calls' (see the format "
            "in docs/loops.md), or must be a mini-swe-agent row with "
            "'instance_id' and 'messages'"
        )
    return Trajectory(
        id=str(row["id"]),
        outcome=str(row.get("outcome", "unknown")),
        calls=tuple(_call_from_dict(c) for c in row["calls"]),
        meta=dict(row.get("meta") or {}),
    )


def _call_from_dict(row: Mapping[str, Any]) -> Call:
    return Call(
        output=str(row.get("output") or ""),
        messages=tuple(_plain(m) for m in row.get("messages") or ()),
        tool_calls=tuple(
            ToolCall(name=str(t["name"]), args=t.get("args") or {}, id=t.get("id"))
            for t in row.get("tool_calls") or ()
        ),
        tool_results=tuple(
            ToolResult(
                content=str(r.get("content") or ""),
                call_id=r.get("call_id"),
                content_sha1=r.get("content_sha1"),
                truncated=bool(r.get("truncated")),
            )
            for r in row.get("tool_results") or ()
        ),
        prompt_tokens=int(row.get("prompt_tokens") or 0),
        completion_tokens=int(row.get("completion_tokens") or 0),
        cached_tokens=int(row.get("cached_tokens") or 0),
        cost_usd=as_decimal(row.get("cost_usd") or 0, field="cost_usd"),
        created_s=row.get("created_s"),
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


def _open_text(path: Path, mode: Literal["r", "w"]) -> IO[str]:
    if path.suffix != ".gz":
        return path.open(mode, encoding="utf-8")
    if mode == "r":
        return gzip.open(path, "rt", encoding="utf-8")
    return gzip.open(path, "wt", encoding="utf-8")


def read_trajectories(path: str | Path) -> Iterator[Trajectory]:
    """Yield the runs of a JSONL file (``.gz`` too), in either accepted shape."""
    with _open_text(Path(path), "r") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ConfigError(f"{path}:{number}: not JSON ({exc})") from exc
            yield trajectory_from_dict(row)


def write_trajectories(runs: Iterable[Trajectory], path: str | Path) -> int:
    """Write runs as trajectory-format JSONL (``.gz`` if so named); return the count."""
    count = 0
    with _open_text(Path(path), "w") as out:
        for run in runs:
            out.write(json.dumps(trajectory_to_dict(run), ensure_ascii=False))
            out.write("\n")
            count += 1
    return count
