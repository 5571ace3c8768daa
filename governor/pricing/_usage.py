"""Token usage as providers report it, brought to one convention.

Providers disagree on what their numbers include. :class:`Usage` follows the
OpenAI convention (prompt tokens include cached ones, completion tokens
include reasoning ones); each reader below converts one provider's shape:

===============  ==========================================================
shape            how it is read
===============  ==========================================================
OpenAI / LiteLLM ``prompt_tokens`` includes ``prompt_tokens_details.cached_tokens``
                 and ``.audio_tokens``; ``completion_tokens`` includes
                 ``completion_tokens_details.reasoning_tokens`` and
                 ``.audio_tokens``; LiteLLM's Usage also brings Anthropic's
                 cache tokens into ``prompt_tokens`` and repeats them as
                 ``cache_read_input_tokens`` / ``cache_creation_input_tokens``
OpenAI Responses ``input_tokens`` includes ``input_tokens_details.cached_tokens``
Anthropic        ``input_tokens`` excludes ``cache_read_input_tokens`` and
                 ``cache_creation_input_tokens``; thinking is in ``output_tokens``
Gemini           ``promptTokenCount`` includes ``cachedContentTokenCount``;
                 ``candidatesTokenCount`` excludes ``thoughtsTokenCount``
LangChain        ``input_tokens`` includes ``input_token_details.cache_read``,
                 ``.cache_creation`` and ``.audio``; ``output_tokens`` includes
                 ``output_token_details.reasoning`` and ``.audio``
===============  ==========================================================
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from governor._errors import ConfigError
from governor.pricing._types import Usage

__all__ = ["usage_from_response", "usage_from_stream_chunks"]

logger = logging.getLogger(__name__)

_OPENAI_KEYS = ("prompt_tokens", "completion_tokens")
_GEMINI_KEYS = (
    "promptTokenCount",
    "candidatesTokenCount",
    "prompt_token_count",
    "candidates_token_count",
)
_LANGCHAIN_KEYS = ("input_token_details", "output_token_details")
_RESPONSES_KEYS = ("input_tokens_details", "output_tokens_details")
_ANTHROPIC_KEYS = ("input_tokens", "output_tokens")
# Containers that hold a usage: a response's ``usage``, LangChain's
# ``usage_metadata`` (and google-genai's), Gemini REST's ``usageMetadata``.
_WRAPPER_KEYS = ("usage", "usage_metadata", "usageMetadata")


class _Fields(Protocol):
    """Read access to an object's fields, whether it is a dict or not."""

    def get(self, key: str, /) -> Any: ...


class _Attributes:
    """Fields of a plain object, read as attributes."""

    __slots__ = ("_obj",)

    def __init__(self, obj: object) -> None:
        self._obj = obj

    def get(self, key: str, /) -> Any:
        return getattr(self._obj, key, None)


_NO_FIELDS: Mapping[str, Any] = {}


def _fields(obj: object) -> _Fields:
    if obj is None:
        return _NO_FIELDS
    if isinstance(obj, dict):
        return obj
    if hasattr(type(obj), "__pydantic_fields__"):
        # Pydantic models (LiteLLM's, OpenAI's, Anthropic's, LangChain's) keep
        # fields in __dict__ and extras aside; asking getattr for a missing
        # name costs LiteLLM's models several microseconds each.
        extra = getattr(obj, "__pydantic_extra__", None)
        return {**obj.__dict__, **extra} if extra else obj.__dict__
    if isinstance(obj, Mapping):
        return obj
    return _Attributes(obj)


def well_formed_usage(sent: object) -> Usage:
    """What a malformed usage reports in well-formed fields, marked estimated.

    Every count :func:`usage_from_response` would refuse is left out (nested
    details too) and the rest read as it reads a usage: a side left out reads
    0, which the adapters count locally. Being estimated, it gives them no
    total to settle at.
    """
    try:
        kept = usage_from_response(_counts_only(sent, _DETAIL_DEPTH))
    except ConfigError:  # no field of a known shape is left
        kept = Usage()
    return dataclasses.replace(kept, estimated=True)


# How deep a usage's details nest (usage, prompt_tokens_details,
# cached_tokens_details): no reader looks deeper.
_DETAIL_DEPTH = 3


def _counts_only(obj: object, depth: int) -> dict[str, Any]:
    """``obj``'s well-formed counts and, ``depth`` levels down, its nested
    fields' (details) the same way."""
    kept: dict[str, Any] = {}
    for key, value in _items(obj).items():
        if _is_count(value):
            kept[str(key)] = value
        elif depth > 1 and _items(value):
            kept[str(key)] = _counts_only(value, depth - 1)
    return kept


def _items(obj: object) -> Mapping[Any, Any]:
    """A mapping's or a Pydantic model's fields, a plain object's attributes;
    nothing for a value (a number, a string)."""
    if isinstance(obj, Mapping) or hasattr(type(obj), "__pydantic_fields__"):
        return _fields(obj)  # type: ignore[return-value]  # a Mapping here
    return vars(obj) if hasattr(obj, "__dict__") else _NO_FIELDS


def _is_count(value: object) -> bool:
    """Whether ``value`` is a count :func:`usage_count` takes (None is not)."""
    if value is None:
        return False
    try:
        usage_count(value, "")
    except ConfigError:
        return False
    return True


def usage_from_response(obj: object) -> Usage:
    """Read the token usage of one call from a response or a usage object.

    Accepts a whole response (LiteLLM ``ModelResponse``, LangChain
    ``AIMessage``, an Anthropic or Gemini response, as objects or dicts) or its
    usage part, in any of the conventions in this module's docstring.

    Raises:
        ConfigError: the object is in no known shape; the message lists the
            keys that were seen.
    """
    if isinstance(obj, Usage):
        return obj
    fields = _fields(obj)
    for has_keys, reader in _READERS:
        for key in has_keys:
            if fields.get(key) is not None:
                return reader(fields)
    for key in _WRAPPER_KEYS:
        inner = fields.get(key)
        if inner is not None:
            return usage_from_response(inner)
    raise ConfigError(
        f"cannot read token usage from a {type(obj).__name__} with keys "
        f"{_keys_seen(obj)}; pass an OpenAI/LiteLLM usage (prompt_tokens, "
        "completion_tokens), an Anthropic one (input_tokens, output_tokens), a "
        "Gemini usageMetadata (promptTokenCount, candidatesTokenCount), a "
        "LangChain usage_metadata, or a response that holds one as usage"
    )


def usage_from_stream_chunks(chunks: Iterable[object]) -> Usage | None:
    """Read the usage of a streamed call from its chunks, or None if none had any.

    OpenAI-style chunks (LiteLLM's included) carry a running total as
    ``usage``, normally only on the last chunk, so the last one that has it
    wins. LangChain message chunks carry ``usage_metadata`` increments that
    LangChain itself adds up when chunks are merged, so those are summed.
    """
    last: Usage | None = None
    summed: Usage | None = None
    for chunk in chunks:
        fields = _fields(chunk)
        usage = fields.get("usage")
        if usage is not None:
            last = usage_from_response(usage)
            continue
        increment = fields.get("usage_metadata")
        if increment is not None:
            summed = _add(summed, usage_from_response(increment))
    return last if last is not None else summed


def _add(total: Usage | None, part: Usage) -> Usage:
    if total is None:
        return part
    return Usage(
        prompt_tokens=total.prompt_tokens + part.prompt_tokens,
        completion_tokens=total.completion_tokens + part.completion_tokens,
        cache_read_tokens=total.cache_read_tokens + part.cache_read_tokens,
        cache_write_tokens=total.cache_write_tokens + part.cache_write_tokens,
        reasoning_tokens=total.reasoning_tokens + part.reasoning_tokens,
        audio_input_tokens=total.audio_input_tokens + part.audio_input_tokens,
        audio_output_tokens=total.audio_output_tokens + part.audio_output_tokens,
        audio_cache_read_tokens=(
            total.audio_cache_read_tokens + part.audio_cache_read_tokens
        ),
    )


def _from_openai(usage: _Fields) -> Usage:
    prompt_details = _fields(usage.get("prompt_tokens_details"))
    completion_details = _fields(usage.get("completion_tokens_details"))
    cache_read = _first_count(
        (prompt_details, "cached_tokens"),
        (usage, "cache_read_input_tokens"),
        (usage, "prompt_cache_hit_tokens"),  # DeepSeek's raw name
    )
    cache_write = _first_count(
        (prompt_details, "cache_creation_tokens"),
        (prompt_details, "cache_write_tokens"),
        (usage, "cache_creation_input_tokens"),
    )
    reasoning = _first_count(
        (completion_details, "reasoning_tokens"), (usage, "reasoning_tokens")
    )
    audio = None
    audio_in = prompt_details.get("audio_tokens")
    audio_out = completion_details.get("audio_tokens")
    if audio_in or audio_out:  # most answers have no audio
        # Audio read from the cache is a cache read, counted in
        # cached_tokens_details as well as in audio_tokens.
        cached = _fields(prompt_details.get("cached_tokens_details"))
        audio_read = min(_count(cached, "audio_tokens"), cache_read)
        audio_input = max(usage_count(audio_in, "audio_tokens") - audio_read, 0)
        audio = (audio_input, usage_count(audio_out, "audio_tokens"), audio_read)
    return _consistent(
        prompt=_count(usage, "prompt_tokens"),
        completion=_count(usage, "completion_tokens"),
        cache_read=cache_read,
        cache_write=cache_write,
        reasoning=reasoning,
        audio=audio,
    )


def _consistent(
    *,
    prompt: int,
    completion: int,
    cache_read: int,
    cache_write: int,
    reasoning: int,
    audio: tuple[int, int, int] | None = None,
) -> Usage:
    # Some pass-through providers report prompt tokens net of cache tokens or
    # completion tokens net of reasoning; a part larger than its whole can only
    # mean that, and adding it back is the one reading that bills every token.
    if cache_read + cache_write > prompt:
        logger.debug("prompt_tokens %d excludes cache tokens; adding them", prompt)
        prompt += cache_read + cache_write
    if reasoning > completion:
        logger.debug("completion_tokens %d excludes reasoning; adding it", completion)
        completion += reasoning
    if audio is None:
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
            reasoning_tokens=reasoning,
        )
    # Audio is billed as LiteLLM bills it: prompt audio only where the cache
    # left prompt tokens uncovered, and every reported output part in full.
    audio_input, audio_output, audio_read = audio
    audio_input = min(audio_input, prompt - cache_read - cache_write)
    if reasoning + audio_output > completion:
        logger.debug(
            "completion_tokens %d is less than its reasoning and audio parts; "
            "billing the parts",
            completion,
        )
        completion = reasoning + audio_output
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=reasoning,
        audio_input_tokens=audio_input,
        audio_output_tokens=audio_output,
        audio_cache_read_tokens=audio_read,
    )


def _from_responses(usage: _Fields) -> Usage:
    return _consistent(
        prompt=_count(usage, "input_tokens"),
        completion=_count(usage, "output_tokens"),
        cache_read=_count(_fields(usage.get("input_tokens_details")), "cached_tokens"),
        cache_write=0,
        reasoning=_count(
            _fields(usage.get("output_tokens_details")), "reasoning_tokens"
        ),
    )


def _from_langchain(usage: _Fields) -> Usage:
    input_details = _fields(usage.get("input_token_details"))
    output_details = _fields(usage.get("output_token_details"))
    return _consistent(
        prompt=_count(usage, "input_tokens"),
        completion=_count(usage, "output_tokens"),
        cache_read=_count(input_details, "cache_read"),
        cache_write=_count(input_details, "cache_creation"),
        reasoning=_count(output_details, "reasoning"),
        audio=_langchain_audio(input_details, output_details),
    )


def _langchain_audio(inputs: _Fields, outputs: _Fields) -> tuple[int, int, int] | None:
    audio_in, audio_out = inputs.get("audio"), outputs.get("audio")
    if not audio_in and not audio_out:
        return None
    return usage_count(audio_in, "audio"), usage_count(audio_out, "audio"), 0


def _from_anthropic(usage: _Fields) -> Usage:
    cache_read = _count(usage, "cache_read_input_tokens")
    cache_write = _count(usage, "cache_creation_input_tokens")
    return Usage(
        prompt_tokens=_count(usage, "input_tokens") + cache_read + cache_write,
        completion_tokens=_count(usage, "output_tokens"),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
    )


def _from_gemini(usage: _Fields) -> Usage:
    def count(camel: str, snake: str) -> int:
        return _first_count((usage, camel), (usage, snake))

    prompt = count("promptTokenCount", "prompt_token_count")
    candidates = count("candidatesTokenCount", "candidates_token_count")
    thoughts = count("thoughtsTokenCount", "thoughts_token_count")
    tool_prompt = count("toolUsePromptTokenCount", "tool_use_prompt_token_count")
    total = count("totalTokenCount", "total_token_count")
    cached = count("cachedContentTokenCount", "cached_content_token_count")
    # Gemini bills tool-use prompt tokens as input; some model versions count
    # thoughts inside candidates, which the total then reveals.
    thoughts_apart = prompt + tool_prompt + candidates != total or total == 0
    return Usage(
        prompt_tokens=prompt + tool_prompt,
        completion_tokens=candidates + thoughts if thoughts_apart else candidates,
        cache_read_tokens=cached,
        reasoning_tokens=thoughts,
    )


_READERS: tuple[tuple[tuple[str, ...], Callable[[_Fields], Usage]], ...] = (
    (_OPENAI_KEYS, _from_openai),
    (_GEMINI_KEYS, _from_gemini),
    (_LANGCHAIN_KEYS, _from_langchain),
    (_RESPONSES_KEYS, _from_responses),
    (_ANTHROPIC_KEYS, _from_anthropic),
)


def _count(fields: _Fields, key: str) -> int:
    return usage_count(fields.get(key), key)


MOST_USAGE_TOKENS = 10**9
"""The largest token count a usage field may report: no call reads or
writes a billion tokens, so a larger figure is nonsense, not usage."""


def usage_count(value: Any, key: str) -> int:
    """The token count a usage field ``key`` reports, 0 when it is None.

    Raises:
        ConfigError: the value is malformed: not a whole number (a bool, a
            string, a fraction, not finite), negative, or past
            :data:`MOST_USAGE_TOKENS`.
    """
    if value is None:
        return 0
    if type(value) is int and 0 <= value <= MOST_USAGE_TOKENS:  # the usual case
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"usage field {key!r} must be a token count, got {value!r}")
    if not math.isfinite(value) or value < 0 or value != int(value):
        raise ConfigError(
            f"usage field {key!r} must be a whole number >= 0, got {value!r}"
        )
    if value > MOST_USAGE_TOKENS:
        raise ConfigError(
            f"usage field {key!r} reports {value!r} tokens, more than any call "
            f"reads or writes ({MOST_USAGE_TOKENS:,})"
        )
    return int(value)


def _first_count(*places: tuple[_Fields, str]) -> int:
    for fields, key in places:
        value = fields.get(key)
        if value is not None:
            return usage_count(value, key)
    return 0


def _keys_seen(obj: object) -> list[str]:
    if isinstance(obj, Mapping):
        return sorted(str(key) for key in obj)
    names = vars(obj) if hasattr(obj, "__dict__") else dir(obj)
    return sorted(name for name in names if not name.startswith("_"))
