"""Convert runs of mini-swe-agent into the trajectory format.

Two shapes of the same run are read:

- mini-swe-agent's own ``.traj.json`` file: ``{"info": {...}, "messages":
  [...], "trajectory_format": "mini-swe-agent-1"}``, with ``instance_id`` at
  the top when the SWE-bench runner wrote it. Each model reply keeps the raw
  API response under ``extra.response``: its ``usage`` holds the token
  counts (and, through OpenRouter, ``cost``), ``created`` the time; version
  2 files also put the call's ``cost`` and ``timestamp`` in ``extra``.
- a row of the compacted SWE-bench data set: the same messages with the
  usage fields flattened onto each reply (``prompt_tokens``, ``cost_usd``,
  ``created``, ...) and the official ``resolved`` outcome.

The tool calls of a reply are its ``tool_calls`` (mini-swe-agent 2's
default tool calling; the results are the ``tool`` messages that follow),
else its Anthropic ``tool_use`` content parts (the results are the
``tool_result`` parts of the user message that follows; its other parts
are a message of the next call), else its one fenced ``bash`` (version 1)
or ``mswea_bash_command`` (version 2) block, whose result is the
observation message that follows. A reply without exactly one block gets
no tool call, and the format error it drew becomes a message of the next
call. Message text is read as :func:`text_of` reads it: a ``tool_result``
part's content is its text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import replace
from typing import Any

from governor._errors import ConfigError
from governor.loops._fields import items_of, outcome_of
from governor.loops._trajectory import (
    Call,
    Found,
    ToolCall,
    ToolResult,
    Trajectory,
    message_of,
    plain,
    text_of,
    usage_of,
)

__all__ = ["from_mini_swe_agent"]

# mini-swe-agent runs the one fenced block of a reply; any other count is
# answered with a format error instead of an observation. Version 2 renamed
# the block to keep bash examples in a reply from being run.
_BLOCKS = (
    re.compile(r"```mswea_bash_command\s*\n(.*?)\n```", re.DOTALL),
    re.compile(r"```bash\s*\n(.*?)\n```", re.DOTALL),
)
_OBSERVATION_ROLES = ("user", "tool")

# Where each usage field may be, first found wins: the compacted data set's
# flat field, then the places mini-swe-agent writes it (paths from the
# message; "usage" is extra.response.usage).
_USAGE_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    "prompt_tokens": (
        ("prompt_tokens",),
        ("usage", "prompt_tokens"),
        ("usage", "input_tokens"),
    ),
    "completion_tokens": (
        ("completion_tokens",),
        ("usage", "completion_tokens"),
        ("usage", "output_tokens"),
    ),
    "cached_tokens": (
        ("cached_tokens",),
        ("usage", "prompt_tokens_details", "cached_tokens"),
        ("usage", "cache_read_input_tokens"),
        ("usage", "input_tokens_details", "cached_tokens"),
    ),
    "cost_usd": (
        ("cost_usd",),
        ("extra", "cost"),
        ("usage", "cost"),
    ),
    "created_s": (
        ("created",),
        ("extra", "response", "created"),
        ("extra", "timestamp"),
    ),
}
_USAGE = ("extra", "response", "usage")


def from_mini_swe_agent(
    row: Mapping[str, Any], *, default_id: str | None = None
) -> Trajectory:
    """Convert one mini-swe-agent run: a ``.traj.json`` document or a data-set row.

    The id is ``instance_id``, else ``id``, else ``default_id`` (a file holding one run
    passes its name). ``resolved`` gives the outcome (see the format in
    ``docs/loops.md``); a run without it, as mini-swe-agent's own files
    are, has no label. Token counts and costs are read from the reply or
    from its raw API response; one that is given nowhere stays unknown. A
    value that cannot be read raises :class:`ConfigError` naming it.
    """
    messages = [
        message_of(m, where=f"messages[{i}]")
        for i, m in enumerate(items_of(row.get("messages"), where="messages"))
    ]
    info = _mapping(row.get("info"))
    return Trajectory(
        id=_run_id(row, default_id),
        outcome=outcome_of(_either(row, info, "resolved"), where="resolved"),
        calls=tuple(_calls(messages)),
        meta=_meta(row, info),
    )


def _run_id(row: Mapping[str, Any], default_id: str | None) -> str:
    run_id = row.get("instance_id")
    if run_id is None:
        run_id = row.get("id")  # as the trajectory format names it
    if run_id is None:
        run_id = default_id
    if run_id is None:
        raise ConfigError(
            "the run has no 'instance_id' (or 'id'); give each run of a file its "
            "id (only a file that holds a single run takes its id from the file "
            "name)"
        )
    return str(run_id)


def _meta(row: Mapping[str, Any], info: Mapping[str, Any]) -> dict[str, Any]:
    agent = _mapping(_mapping(info.get("config")).get("agent"))
    version = _either(row, info, "mini_version") or ""
    meta = {
        "agent": f"mini-swe-agent {version}".strip(),
        "exit_status": _either(row, info, "exit_status"),
        "step_limit": row.get("step_limit", agent.get("step_limit")),
        "cost_limit_usd": row.get("cost_limit_usd", agent.get("cost_limit")),
    }
    total = row.get("instance_cost_usd")
    if total is None:
        total = _mapping(info.get("model_stats")).get("instance_cost")
    if total is not None:
        meta["instance_cost_usd"] = total
    return meta


def _either(row: Mapping[str, Any], info: Mapping[str, Any], key: str) -> Any:
    """``key`` of the run, else of its ``info`` (where ``.traj.json`` keeps it)."""
    value = row.get(key)
    return info.get(key) if value is None else value


def _calls(messages: Sequence[Mapping[str, Any]]) -> list[Call]:
    """The model calls of a run's messages, in order."""
    calls: list[Call] = []
    pending: list[Mapping[str, str]] = []
    position = 0
    while position < len(messages):
        message = messages[position]
        where = f"messages[{position}]"
        if message["role"] == "assistant":
            later = _until_next_reply(messages, position + 1)
            call, answered = _reply_call(message, later, len(calls), where)
            calls.append(_with_messages(call, pending))
            pending = _besides_results(call, later[:answered])
            position += 1 + answered
            continue
        if _rejected_reply(message):
            # Version 2 keeps a reply it could not parse only on the format
            # error it drew: a paid call with no action.
            calls.append(_with_messages(_rejected_call(message, where), pending))
            pending = []
        pending.append(plain(message))
        position += 1
    return calls


def _with_messages(call: Call, pending: Sequence[Mapping[str, str]]) -> Call:
    return replace(call, messages=tuple(pending))


def _until_next_reply(
    messages: Sequence[Mapping[str, Any]], start: int
) -> Sequence[Mapping[str, Any]]:
    end = start
    while end < len(messages) and messages[end]["role"] != "assistant":
        end += 1
    return messages[start:end]


def _reply_call(
    message: Mapping[str, Any],
    later: Sequence[Mapping[str, Any]],
    index: int,
    where: str,
) -> tuple[Call, int]:
    """One reply's call and how many of the messages after it are its results."""
    output = text_of(message.get("content"))
    usage = _usage(message, where)
    requested = message.get("tool_calls")
    if isinstance(requested, list) and requested:
        calls = tuple(_tool_call(t, index, n) for n, t in enumerate(requested))
        results = _tool_results(calls, later)
        call = Call(output, (), calls, results, **usage)
        return call, len(results)
    uses = _parts(message, "tool_use")
    if uses:
        calls = tuple(_tool_use(t, index, n) for n, t in enumerate(uses))
        answer = later[0] if later and later[0]["role"] == "user" else {}
        results = _result_parts(calls, _parts(answer, "tool_result"))
        call = Call(output, (), calls, results, **usage)
        return call, 1 if results else 0
    blocks = _action_blocks(output)
    if len(blocks) != 1 or not later or later[0]["role"] not in _OBSERVATION_ROLES:
        return Call(output, **usage), 0
    call_id = f"call-{index}"
    observation = later[0]
    # Anthropic's shape: the tool_result parts (the other parts, if any,
    # are a message of the next call).
    observed = _parts(observation, "tool_result") or observation.get("content")
    result = ToolResult(
        content=text_of(observed),
        call_id=call_id,
        content_sha1=observation.get("content_sha1"),
        truncated=bool(observation.get("content_truncated")),
    )
    tool_call = ToolCall(name="bash", args={"command": blocks[0]}, id=call_id)
    return Call(output, (), (tool_call,), (result,), **usage), 1


def _action_blocks(output: str) -> list[str]:
    for pattern in _BLOCKS:
        blocks = pattern.findall(output)
        if blocks:
            return list(blocks)
    return []


def _tool_call(value: object, index: int, rank: int) -> ToolCall:
    """A tool call in the OpenAI shape ``{id, function: {name, arguments}}``."""
    call = _mapping(value)
    function = _mapping(call.get("function")) or call
    args: Any = function.get("arguments", function.get("args"))
    if isinstance(args, str):
        with suppress(ValueError):  # else compared as the text it is
            args = json.loads(args)
    call_id = call.get("id")
    return ToolCall(
        name=str(function.get("name") or "unnamed"),
        args=args if isinstance(args, Mapping | str) else {},
        id=str(call_id) if call_id is not None else f"call-{index}-{rank}",
    )


def _parts(message: Mapping[str, Any], kind: str) -> list[Mapping[str, Any]]:
    """The content parts of type ``kind`` of a message (Anthropic's shape)."""
    content = message.get("content")
    if not isinstance(content, list):
        return []
    return [p for p in content if isinstance(p, Mapping) and p.get("type") == kind]


def _tool_use(part: Mapping[str, Any], index: int, rank: int) -> ToolCall:
    """A ``tool_use`` part, read as the OpenAI tool call it stands for."""
    function = {"name": part.get("name"), "arguments": part.get("input")}
    return _tool_call({"id": part.get("id"), "function": function}, index, rank)


def _result_parts(
    calls: Sequence[ToolCall], parts: Sequence[Mapping[str, Any]]
) -> tuple[ToolResult, ...]:
    """The ``tool_result`` parts answering ``tool_use`` calls, each matched to
    its call by ``tool_use_id`` (else the call of its rank)."""
    return tuple(
        _result(part, part.get("tool_use_id"), calls, rank)
        for rank, part in enumerate(parts)
    )


def _besides_results(
    call: Call, answered: Sequence[Mapping[str, Any]]
) -> list[Mapping[str, str]]:
    """What a message of ``tool_result`` parts says besides the results (a
    text part after them): a message of the next call's prompt."""
    if not call.tool_results or len(answered) != 1 or answered[0]["role"] != "user":
        return []
    content = answered[0].get("content")
    if not isinstance(content, list) or not _parts(answered[0], "tool_result"):
        return []
    rest = [p for p in content if not _is_result(p)]
    return [plain({"role": "user", "content": rest})] if rest else []


def _is_result(part: object) -> bool:
    return isinstance(part, Mapping) and part.get("type") == "tool_result"


def _tool_results(
    calls: Sequence[ToolCall], later: Sequence[Mapping[str, Any]]
) -> tuple[ToolResult, ...]:
    """The ``tool`` messages right after a reply, each matched to its call.

    A message without ``tool_call_id`` answers the call of its rank.
    """
    results: list[ToolResult] = []
    for rank, message in enumerate(later):
        if message["role"] != "tool":
            break
        results.append(_result(message, message.get("tool_call_id"), calls, rank))
    return tuple(results)


def _result(
    entry: Mapping[str, Any],
    call_id: object,
    calls: Sequence[ToolCall],
    rank: int,
) -> ToolResult:
    """A tool result (a ``tool`` message or a ``tool_result`` part) answering
    the call ``call_id`` names, else the call of its rank."""
    if call_id is None and rank < len(calls):
        call_id = calls[rank].id
    return ToolResult(
        content=text_of(entry.get("content")),
        call_id=None if call_id is None else str(call_id),
        content_sha1=entry.get("content_sha1"),
        truncated=bool(entry.get("content_truncated")),
    )


def _rejected_reply(message: Mapping[str, Any]) -> bool:
    """A feedback message that carries the raw response of the reply it rejects."""
    return bool(_mapping(_mapping(message.get("extra")).get("response")))


def _rejected_call(message: Mapping[str, Any], where: str) -> Call:
    response = _mapping(_mapping(message.get("extra")).get("response"))
    choices = response.get("choices")
    first = _mapping(choices[0]) if isinstance(choices, list) and choices else {}
    output = text_of(_mapping(first.get("message")).get("content"))
    return Call(output, **_usage(message, where))


def _usage(message: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A reply's tokens, cost and time from the first place that has each."""
    usage = _nested(message, _USAGE)
    found: dict[str, Found] = {}
    for key, paths in _USAGE_PATHS.items():
        found[key] = (None, f"{where}.{paths[0][0]}")
        for path in paths:
            start, rest = (usage, path[1:]) if path[0] == "usage" else (message, path)
            value = _nested(start, rest)
            if value is not None:
                found[key] = (value, _where(where, path))
                break
    return usage_of(found)


def _where(where: str, path: Sequence[str]) -> str:
    if path[0] == "usage":
        path = (*_USAGE, *path[1:])
    return ".".join((where, *path))


def _nested(value: object, path: Sequence[str]) -> Any:
    """The value at ``path`` inside nested objects, or None where one is missing."""
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _mapping(value: object) -> Mapping[str, Any]:
    """An object's fields, or none when the value is not an object."""
    return value if isinstance(value, Mapping) else {}
