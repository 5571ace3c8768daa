"""Replay a cached answer as a stream, for callers that asked for one."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

from governor.cache._types import CacheHit

__all__ = ["areplay_chunks", "replay_chunks", "split_text"]

_PIECE = re.compile(r"\S+\s*|\s+")


def split_text(text: str, chunk_chars: int = 48) -> list[str]:
    """Split ``text`` into pieces of about ``chunk_chars``, at word ends.

    Joining the pieces gives back ``text`` exactly.
    """
    pieces: list[str] = []
    current = ""
    for word in _PIECE.findall(text):
        if current and len(current) + len(word) > chunk_chars:
            pieces.append(current)
            current = ""
        current += word
    if current:
        pieces.append(current)
    return pieces


def replay_chunks(
    hit: CacheHit,
    *,
    chunk_chars: int = 48,
    created: int | None = None,
    include_usage: bool = False,
) -> Iterator[dict[str, Any]]:
    """Yield the hit's message as OpenAI-style ``chat.completion.chunk`` dicts.

    The chunks have the shape of the stream LiteLLM yields for the same
    request. The first chunk carries the role, the following ones the text,
    and the last of them the finish reason; no chunk has a usage. With
    ``include_usage`` (pass it when the request's ``stream_options`` asked
    for usage) one more chunk ends the stream, with no choices and a usage
    of zero tokens and zero cost: a cached answer spends nothing. Tool
    calls, if the cached message has any, come whole in one chunk.
    ``litellm.ModelResponseStream(**chunk)`` accepts each dict.
    """
    base = {
        "id": f"chatcmpl-cache-{uuid.uuid4().hex}",  # one per answer, as LiteLLM
        "object": "chat.completion.chunk",
        "created": int(time.time()) if created is None else created,
        "model": hit.model,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {**base, "choices": [choice]}

    yield chunk({"role": "assistant", "content": ""})
    for piece in split_text(hit.text, chunk_chars):
        yield chunk({"content": piece})
    calls = hit.message.get("tool_calls")
    if calls:
        indexed = [{"index": i, **call} for i, call in enumerate(calls)]
        yield chunk({"tool_calls": indexed})
    yield chunk({}, "tool_calls" if calls else "stop")
    if include_usage:
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        yield {**base, "choices": [], "usage": {**usage, "cost": 0.0}}


async def areplay_chunks(
    hit: CacheHit,
    *,
    chunk_chars: int = 48,
    created: int | None = None,
    include_usage: bool = False,
) -> AsyncIterator[dict[str, Any]]:
    """:func:`replay_chunks` as an async iterator."""
    chunks = replay_chunks(
        hit, chunk_chars=chunk_chars, created=created, include_usage=include_usage
    )
    for item in chunks:
        yield item
