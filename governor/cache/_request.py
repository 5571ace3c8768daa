"""Request normalisation: what makes two requests the same, and what is cacheable.

Two keys come out of one request. The exact key hashes the normalized whole
request. The scope key hashes everything the semantic layer must hold equal
(tenant, model tier, system prompt, tool schemas, answer-shaping parameters
and every message before the last user turn), so that a paraphrase is only
ever compared with entries asked in the same situation (issue #6: a follow-up
such as "expand on that" must never hit another conversation's answer).
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

from governor._calls import message_fields

__all__ = [
    "CacheKeys",
    "KeyOptions",
    "build_keys",
    "normalize_query",
    "parse_opt_out",
]

# Transport, telemetry and routing parameters: they never change the answer.
# The endpoint does (api_base, base_url, api_version, custom_llm_provider): two
# servers may serve different models under one name, so it stays in the keys.
_TRANSPORT_PARAMS = frozenset(
    {
        "stream",
        "stream_options",
        "timeout",
        "request_timeout",
        "api_key",
        "organization",
        "headers",
        "extra_headers",
        "metadata",
        "user",
        "num_retries",
        "max_retries",
        "fallbacks",
        "cache",
        "caching",
        "callbacks",
        "tags",
    }
)


# LiteLLM's ids and bookkeeping for one call (a Router gives each call its
# own trace id). Not every litellm_ parameter: litellm_system_prompt and
# litellm_credential_name change what is asked and who answers.
_LITELLM_PER_CALL = frozenset(
    {
        "litellm_trace_id",
        "litellm_call_id",
        "litellm_session_id",
        "litellm_logging_obj",
        "litellm_metadata",
        "litellm_parent_otel_span",
        "litellm_request_debug",
    }
)


def _transport(name: str) -> bool:
    """Whether a call parameter says how it travels, not what is asked: the
    names above, LiteLLM's per-call ids, and private state (a leading
    underscore, such as the Router's ``_context_compaction_state``)."""
    return (
        name in _TRANSPORT_PARAMS or name in _LITELLM_PER_CALL or name.startswith("_")
    )


# Sampling parameters change which answer is drawn, not what kind of answer is
# wanted, so they stay out of the semantic scope (they are in the exact key).
_SAMPLING_PARAMS = frozenset({"temperature", "top_p", "top_k", "seed"})
_TOOL_PARAMS = frozenset({"tools", "tool_choice", "functions", "function_call"})
_SYSTEM_ROLES = frozenset({"system", "developer"})
# Message fields keyed in their own way; every other field is keyed as given.
_KEYED_FIELDS = frozenset(
    {"role", "content", "name", "tool_calls", "tool_call_id", "function_call"}
)
# Fields of a message that change with every request, or only tell a
# provider how to bill it, not what is asked: a LangGraph message's id, a
# timestamp, Anthropic's cache_control marker. No key holds them.
_PER_REQUEST_FIELDS: Final = frozenset(
    {
        "id",
        "message_id",
        "timestamp",
        "created",
        "created_at",
        "cache_control",
        "metadata",
    }
)
_TOOL_ROLES = frozenset({"tool", "function"})
# Compatibility forms that NFKC would fold into plain digits or letters while
# they mean something else: "2³" is not "23", "①" is not "1", "1½" is not "11/2".
_KEPT_FORMS = ("<super>", "<sub>", "<circle>", "<fraction>")


@dataclass(frozen=True, slots=True)
class KeyOptions:
    """Which parts of a request scope the cache (from the ``Cache`` policy)."""

    partition_by: tuple[str, ...] = ("org", "team")
    scope_by_model: bool = True
    scope_by_system_prompt: bool = True
    scope_by_tools: bool = True
    scope_by_context: bool = True
    max_temperature: float | None = 1.0


@dataclass(frozen=True, slots=True)
class CacheKeys:
    """The keys and the query text of one request.

    Attributes:
        exact: hex digest of the normalized whole request and its partition.
        scope: hex digest of what the semantic layer must hold equal.
        query: the normalized last user message, or None when the semantic
            layer cannot serve this request. This is the text embedded.
        uncacheable: why nothing may be served or stored, or None.
        semantic_skip: why the semantic layer is skipped, or None.
        read: False when the request opted out of lookups.
        write: False when the request opted out of storing its answer.
        text: the last user message as written (NFC, line ends trimmed),
            which the safety gate compares: folding compatibility forms
            and white space may erase what a question is about ("x\u00a0= 1"
            against "x = 1"). None whenever ``query`` is None.
    """

    exact: str
    scope: str
    query: str | None
    uncacheable: str | None = None
    semantic_skip: str | None = None
    read: bool = True
    write: bool = True
    text: str | None = None


def normalize_query(text: str) -> str:
    """Return the question text that the semantic layer embeds and compares.

    Compatibility forms are folded (NFKC: full-width letters, ligatures,
    no-break spaces), except superscripts, subscripts, circled characters and
    vulgar fractions, whose folded form is another number. Line breaks and
    indentation stay, because they can change what code means; within a line,
    runs of white space become one space. Trailing spaces, blank lines at both
    edges, repeated blank lines and indentation shared by every line go.
    """
    lines = [_collapse_inner(line) for line in _lines(_fold_compatibility(text))]
    kept = [line for at, line in enumerate(lines) if line or (at and lines[at - 1])]
    return _dedented(kept)


def parse_opt_out(params: Mapping[str, Any]) -> tuple[bool, bool]:
    """Read a per-request opt-out and return ``(read, write)``.

    Accepts LiteLLM's convention ``cache={"no-cache": True, "no-store": True}``
    and ``cache=False`` (neither read nor write).
    """
    flag = params.get("cache")
    if flag is False:
        return False, False
    if isinstance(flag, Mapping):
        return not flag.get("no-cache", False), not flag.get("no-store", False)
    return True, True


def build_keys(
    *,
    model: str,
    messages: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    partition: Mapping[str, str],
    options: KeyOptions,
) -> CacheKeys:
    """Normalize a request and compute its keys and cacheability.

    Args:
        model: the model tier the request goes to.
        messages: OpenAI-style chat messages.
        params: every other request parameter (temperature, tools, ...).
        partition: attribution values, e.g. ``{"team": "search"}``; only the
            scopes in ``options.partition_by`` are used.
        options: the scoping options.
    """
    read, write = parse_opt_out(params)
    canon = _canonical_messages(messages)
    tenant = {k: partition[k] for k in options.partition_by if k in partition}
    model_part = model if options.scope_by_model else ""
    kept = {k: _canon(v) for k, v in params.items() if not _transport(k)}
    exact = _digest(["exact", tenant, model_part, canon, kept])
    reason = _uncacheable(canon, params, options)
    last_user = _last_user_index(canon)
    query, skip = _query(canon, last_user)
    text = None if query is None else canon[last_user or 0]["content"]
    scope = _digest(
        [
            "scope",
            tenant,
            model_part,
            _system_part(canon) if options.scope_by_system_prompt else "",
            _tools_part(kept) if options.scope_by_tools else "",
            _context_part(canon, last_user) if options.scope_by_context else "",
            {k: v for k, v in kept.items() if k not in _SAMPLING_PARAMS | _TOOL_PARAMS},
            _asker_part(canon[last_user]) if last_user is not None else None,
        ]
    )
    if reason is None and not read and not write:
        reason = "opt_out"
    return CacheKeys(exact, scope, query, reason, skip, read, write, text)


def _asker_part(asking: Mapping[str, Any]) -> Any:
    """What the asking message brings besides its text: who asks ("name":
    "what is my balance?" from alice is not bob's question) and what comes
    with the question (an Ollama-style ``images`` list, a ``file_id``), as the
    exact key already says. A message with no field but ``name`` keys as its
    name alone, as it always has."""
    fields = {k: v for k, v in asking.items() if k not in ("role", "content")}
    return fields.get("name") if fields.keys() <= {"name"} else fields


def _uncacheable(
    canon: list[dict[str, Any]], params: Mapping[str, Any], options: KeyOptions
) -> str | None:
    bound = options.max_temperature
    if bound is not None and any(
        _too_hot(value, bound) for value in _given(params, "temperature")
    ):
        return "temperature"
    if any(_given(params, "logprobs")) or any(_given(params, "top_logprobs")):
        return "logprobs"  # a cached answer has no log probabilities to replay
    if not canon:
        return "no_messages"
    last = canon[-1]
    if last["role"] in _TOOL_ROLES or (
        last["role"] == "assistant"
        and (last.get("tool_calls") or last.get("function_call"))
    ):
        return "pending_tool"  # a legacy function_call waits for its result too
    return None


def _given(params: Mapping[str, Any], name: str) -> list[Any]:
    """The values given for ``name``, at the top level or in ``extra_body``
    (merged into the body sent, so the provider obeys it as well)."""
    body = params.get("extra_body")
    places = (params, body) if isinstance(body, Mapping) else (params,)
    return [place[name] for place in places if place.get(name) is not None]


def _too_hot(temperature: Any, bound: float) -> bool:
    """Whether ``temperature`` is above ``bound``; unreadable counts as above.

    A value the cache cannot read is not its to reject: the request is left
    uncached and goes on, and the provider says what is wrong with it.
    """
    if temperature is None:
        return False
    try:
        return not float(temperature) <= bound
    except (TypeError, ValueError):
        return True


def _query(
    canon: list[dict[str, Any]], last_user: int | None
) -> tuple[str | None, str | None]:
    if last_user is None:
        return None, "no_user_turn"
    if last_user != len(canon) - 1:
        return None, "not_last_turn"
    content = canon[last_user]["content"]
    if not isinstance(content, str):
        return None, "non_text_query"
    query = normalize_query(content)
    return (query, None) if query else (None, "empty_query")


def _last_user_index(canon: list[dict[str, Any]]) -> int | None:
    for index in range(len(canon) - 1, -1, -1):
        if canon[index]["role"] == "user":
            return index
    return None


def _system_part(canon: list[dict[str, Any]]) -> list[Any]:
    return [m["content"] for m in canon if m["role"] in _SYSTEM_ROLES]


def _context_part(canon: list[dict[str, Any]], last_user: int | None) -> list[Any]:
    end = len(canon) if last_user is None else last_user
    return [m for m in canon[:end] if m["role"] not in _SYSTEM_ROLES]


def _tools_part(kept: Mapping[str, Any]) -> list[Any]:
    return [kept.get(name) for name in sorted(_TOOL_PARAMS)]


def _canonical_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    # Tool-call ids are random per call; numbering them in order of appearance
    # keeps the pairing of calls and results without making every key unique.
    ids: dict[str, int] = {}
    return [_canonical_message(m, ids) for m in messages]


def _canonical_message(
    message: Mapping[str, Any], ids: dict[str, int]
) -> dict[str, Any]:
    role = str(message.get("role", "user"))
    out: dict[str, Any] = {"role": role, "content": _content(message.get("content"))}
    if message.get("name"):
        out["name"] = str(message["name"])
    calls = message.get("tool_calls")
    if calls:
        out["tool_calls"] = [_tool_call(call, ids) for call in calls]
    call_id = message.get("tool_call_id")
    if call_id is not None:
        out["tool_call_id"] = ids.setdefault(str(call_id), len(ids))
    if message.get("function_call"):
        out["function_call"] = _canon(message["function_call"])
    # Any other field may change the answer (an assistant "prefix" flag, an
    # earlier turn's reasoning_content or audio id); an empty one is no field.
    for field, value in message_fields(message):
        if field in _KEYED_FIELDS or field in _PER_REQUEST_FIELDS:
            continue
        if not _empty(value):
            out[str(field)] = _canon(value)
    return out


def _empty(value: Any) -> bool:
    """None, or an empty string or container: a field that says nothing."""
    return value is None or (isinstance(value, str | list | tuple | dict) and not value)


def _tool_call(call: Any, ids: dict[str, int]) -> Any:
    data = _canon(call)
    if isinstance(data, dict) and "id" in data:
        data = {**data, "id": ids.setdefault(str(data["id"]), len(ids))}
    return data


def _content(content: Any) -> Any:
    if content is None:
        return ""
    if isinstance(content, str):
        return _normalize_text(content)
    if isinstance(content, Sequence):
        parts = [_part(p) for p in content]
        if len(parts) == 1 and isinstance(parts[0], str):
            return parts[0]
        return parts
    return _canon(content)


def _part(part: Any) -> Any:
    if isinstance(part, Mapping) and part.get("type") == "text":
        return _normalize_text(str(part.get("text", "")))
    if isinstance(part, str):
        return _normalize_text(part)
    return _canon(part)


def _normalize_text(text: str) -> str:
    # White space inside a message can carry meaning (code indentation), so
    # the exact layer only drops line-end spaces, blank lines at both edges and
    # the indentation every line shares (an edge strip would unindent the
    # first line alone).
    return _dedented(_lines(unicodedata.normalize("NFC", text)))


def _lines(text: str) -> list[str]:
    """The lines of ``text`` (any line break), without their trailing spaces."""
    return [line.rstrip() for line in text.splitlines()]


def _dedented(lines: list[str]) -> str:
    """Join ``lines`` without edge blank lines or the indentation all share."""
    filled = [at for at, line in enumerate(lines) if line]
    lines = lines[filled[0] : filled[-1] + 1] if filled else []
    indents = [line[: len(line) - len(line.lstrip())] for line in lines if line]
    shared = _shared_start(min(indents), max(indents)) if indents else 0
    return "\n".join(line[shared:] for line in lines)


def _shared_start(low: str, high: str) -> int:
    """How many characters the lowest and highest strings (so all) share."""
    count = 0
    while count < len(low) and low[count] == high[count]:
        count += 1
    return count


def _collapse_inner(line: str) -> str:
    """Keep a line's indentation; make each run of white space after it one."""
    body = line.lstrip()
    return line[: len(line) - len(body)] + " ".join(body.split())


def _fold_compatibility(text: str) -> str:
    """NFKC, except for the forms in ``_KEPT_FORMS``."""
    text = unicodedata.normalize("NFC", text)
    if text.isascii():
        return text
    folded = "".join(ch if ch.isascii() else _fold_char(ch) for ch in text)
    return unicodedata.normalize("NFC", folded)


@lru_cache(maxsize=4096)
def _fold_char(ch: str) -> str:
    if unicodedata.decomposition(ch).startswith(_KEPT_FORMS):
        return ch
    return unicodedata.normalize("NFKC", ch)


def _canon(value: Any) -> Any:
    """Return ``value`` as plain JSON-able data with a stable shape."""
    if isinstance(value, Mapping):
        return {str(k): _canon(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canon(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, type):
        # A pydantic class as response_format: its JSON schema is what counts.
        schema = getattr(value, "model_json_schema", None)
        return _canon(schema()) if callable(schema) else repr(value)
    dump = getattr(value, "model_dump", None)
    return _canon(dump()) if callable(dump) else repr(value)


def _digest(parts: list[Any]) -> str:
    raw = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    # A lone surrogate (text decoded with surrogateescape) still hashes.
    data = raw.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=16).hexdigest()
