"""A plain JSONL format for recorded agent runs.

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
too) of at least 0; token counts are whole numbers of at least 0; a missing
or null cost or count is unknown (None), not zero. ``created_s`` is the
call's Unix time in seconds (an ISO 8601 time is converted, as UTC when it
has no offset), or null. Run ids are unique within a file.

Reading files (JSONL, whole JSON documents, folders, mini-swe-agent's own
files) is :mod:`governor.loops._files`; converting mini-swe-agent runs is
:mod:`governor.loops._mini`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from governor._errors import ConfigError, decimal_text
from governor.loops._fields import (
    RESOLVED,
    UNLABELLED,
    cost_of,
    count_of,
    items_of,
    mapping_of,
    outcome_of,
    required,
    time_of,
)

__all__ = [
    "FORMAT",
    "Call",
    "Found",
    "ToolCall",
    "ToolResult",
    "Trajectory",
    "message_of",
    "plain",
    "text_of",
    "trajectory_from_dict",
    "trajectory_to_dict",
    "usage_of",
    "write_trajectories",
]

FORMAT = "governor-trajectory-1"


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
    """One model call of a run, with what it asked for and got back.

    Token counts and ``cost_usd`` are None when the record does not give
    them: unknown, which the evaluation reports instead of counting as zero.
    """

    output: str
    messages: tuple[Mapping[str, str], ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    tool_results: tuple[ToolResult, ...] = ()
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    cost_usd: Decimal | None = None
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
        """The summed cost of the calls whose cost is known."""
        return sum(
            (c.cost_usd for c in self.calls if c.cost_usd is not None), Decimal(0)
        )

    @property
    def calls_without_cost(self) -> int:
        """How many calls have no known cost."""
        return sum(1 for c in self.calls if c.cost_usd is None)


def trajectory_from_dict(
    row: Mapping[str, Any], *, default_id: str | None = None
) -> Trajectory:
    """Read one run of the trajectory format (``id``, ``outcome``, ``calls``).

    ``default_id`` is the run's id when it has none (a file holding one run
    passes its name). A value that cannot be read raises
    :class:`ConfigError` naming it.
    """
    mapping_of(row, where="the run")
    fmt = row.get("format")
    if fmt is not None and fmt != FORMAT:
        raise ConfigError(
            f"format is {fmt!r}; this release reads {FORMAT!r} (write the runs "
            "with this release's write_trajectories, or leave format out)"
        )
    calls = items_of(row.get("calls"), where="calls")
    run_id = row.get("id")
    if run_id is None:
        run_id = required(row, "id", where="the run") if default_id is None else None
    elif not str(run_id).strip():
        raise ConfigError("id is empty; give each run a name, or leave id out")
    return Trajectory(
        id=str(default_id if run_id is None else run_id),
        outcome=outcome_of(row.get("outcome"), where="outcome"),
        calls=tuple(_call_from_dict(c, f"calls[{i}]") for i, c in enumerate(calls)),
        meta=dict(mapping_of(row.get("meta") or {}, where="meta")),
    )


def message_of(value: object, *, where: str) -> Mapping[str, Any]:
    """A prompt message: an object with a ``role``."""
    message = mapping_of(value, where=where)
    required(message, "role", where=where)
    return message


def text_of(content: object) -> str:
    """A message's text: a string, or the text of each part of a list.

    A part is read by what it holds: its ``text`` (OpenAI and Anthropic text
    parts), a ``tool_result``'s ``content`` (a string or parts, read the
    same way), a ``thinking`` part's thinking. A ``tool_use`` part is a tool
    call, not text (the converter reads it as one). A part of any other
    kind (an image, a document) has no text this reader understands: it
    reads as its type and the SHA-1 of its JSON, so that two different
    ones never read as the same text.
    """
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = (_part_text(part) for part in content)
        return "\n".join(text for text in texts if text is not None)
    return "" if content is None else str(content)


def _part_text(part: object) -> str | None:
    """One part's text; None for a tool call, which is not text."""
    if not isinstance(part, Mapping):
        return str(part)
    kind = part.get("type")
    if "text" in part:
        return str(part.get("text") or "")
    if kind == "tool_result":
        return text_of(part.get("content"))
    if kind == "thinking":
        return str(part.get("thinking") or "")
    if kind == "tool_use":
        return None
    whole = json.dumps(part, sort_keys=True, ensure_ascii=False, default=str)
    digest = hashlib.sha1(whole.encode("utf-8"), usedforsecurity=False).hexdigest()
    return f"<{kind or 'untyped'} part sha1 {digest}>"


def plain(message: Mapping[str, Any]) -> Mapping[str, str]:
    """A message as its role and text only."""
    return {"role": str(message["role"]), "content": text_of(message.get("content"))}


Found = tuple[object, str]  # (a raw value, where in the run it was read)
_COUNTS = ("prompt_tokens", "completion_tokens", "cached_tokens")


def usage_of(found: Mapping[str, Found]) -> dict[str, Any]:
    """A call's tokens, cost and time, each checked; a missing one is None.

    ``found`` maps ``prompt_tokens``, ``completion_tokens``, ``cached_tokens``,
    ``cost_usd`` and ``created_s`` to the raw value and where it was read.
    """
    usage: dict[str, Any] = {}
    for key in _COUNTS:
        value, where = found[key]
        usage[key] = count_of(value, where=where)
    value, where = found["cost_usd"]
    usage["cost_usd"] = cost_of(value, where=where)
    value, where = found["created_s"]
    usage["created_s"] = time_of(value, where=where)
    return usage


def _own_usage(row: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The usage fields of a call in the trajectory format."""
    keys = (*_COUNTS, "cost_usd", "created_s")
    return usage_of({key: (row.get(key), f"{where}.{key}") for key in keys})


def _call_from_dict(value: object, where: str) -> Call:
    row = mapping_of(value, where=where)
    messages = items_of(row.get("messages"), where=f"{where}.messages")
    tool_calls = items_of(row.get("tool_calls"), where=f"{where}.tool_calls")
    results = items_of(row.get("tool_results"), where=f"{where}.tool_results")
    output = row.get("output")
    if output is not None and not isinstance(output, str):
        raise ConfigError(
            f"{where}.output is {output!r}; give the model's answer as text"
        )
    return Call(
        output=output or "",
        messages=tuple(
            plain(message_of(m, where=f"{where}.messages[{i}]"))
            for i, m in enumerate(messages)
        ),
        tool_calls=tuple(
            _tool_call(t, f"{where}.tool_calls[{i}]") for i, t in enumerate(tool_calls)
        ),
        tool_results=tuple(
            _tool_result(r, f"{where}.tool_results[{i}]") for i, r in enumerate(results)
        ),
        **_own_usage(row, where),
    )


def _tool_call(value: object, where: str) -> ToolCall:
    row = mapping_of(value, where=where)
    name = required(row, "name", where=where)
    return ToolCall(name=str(name), args=row.get("args") or {}, id=row.get("id"))


def _tool_result(value: object, where: str) -> ToolResult:
    row = mapping_of(value, where=where)
    truncated = row.get("truncated", False)
    if not isinstance(truncated, bool):
        raise ConfigError(f"{where}.truncated is {truncated!r}; give true or false")
    return ToolResult(
        content=str(row.get("content") or ""),
        call_id=row.get("call_id"),
        content_sha1=row.get("content_sha1"),
        truncated=truncated,
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
        "cost_usd": None if call.cost_usd is None else decimal_text(call.cost_usd),
        "created_s": call.created_s,
    }


def _open_text(path: Path) -> IO[str]:
    if path.suffix != ".gz":
        return path.open("w", encoding="utf-8")
    return gzip.open(path, "wt", encoding="utf-8")


def write_trajectories(runs: Iterable[Trajectory], path: str | Path) -> int:
    """Write runs as trajectory-format JSONL (``.gz`` if so named); return the count."""
    count = 0
    with _open_text(Path(path)) as out:
        for run in runs:
            out.write(json.dumps(trajectory_to_dict(run), ensure_ascii=False))
            out.write("\n")
            count += 1
    return count
