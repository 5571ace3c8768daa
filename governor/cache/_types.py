"""Values the cache hands out: stored entries, hits and misses."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from governor._money import nanos_to_usd
from governor.cache._request import CacheKeys

__all__ = [
    "CacheEntry",
    "CacheHit",
    "CacheLayer",
    "CacheMiss",
    "entry_problem",
    "message_problem",
    "message_text",
]

CacheLayer = Literal["exact", "semantic"]


def message_text(message: dict[str, Any]) -> str:
    """Return the text of an assistant message (text parts joined)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One stored answer and what it cost when it was first bought.

    Attributes:
        key: the exact key of the request that was answered.
        index: the semantic index the entry lives in (scope and embedder), or
            None when it can only be found by its exact key.
        query: the question as written (NFC, line ends trimmed), which the
            safety gate compares; entries stored by earlier releases hold
            its normalized form.
        message: the assistant message, JSON-able, e.g.
            ``{"role": "assistant", "content": "..."}``.
        model: the model that produced the answer.
        cost_nanos: what the answer cost, in nano-dollars.
        input_tokens: prompt tokens the answer used.
        output_tokens: completion tokens the answer used.
        created_at: when it was stored, in seconds since the epoch.
        expires_at: when it stops being served, or None.
    """

    key: str
    index: str | None
    query: str | None
    message: dict[str, Any]
    model: str
    cost_nanos: int
    input_tokens: int
    output_tokens: int
    created_at: float
    expires_at: float | None

    def expired(self, now: float) -> bool:
        """True once ``now`` has reached the entry's expiry."""
        return self.expires_at is not None and now >= self.expires_at

    def to_json(self) -> str:
        """Serialize for a shared store."""
        return json.dumps(
            [
                self.key,
                self.index,
                self.query,
                self.message,
                self.model,
                self.cost_nanos,
                self.input_tokens,
                self.output_tokens,
                self.created_at,
                self.expires_at,
            ],
            separators=(",", ":"),
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> CacheEntry:
        """Read an entry written by :meth:`to_json`.

        Raises:
            ValueError: ``raw`` is not an entry this release writes (not
                JSON, another number of fields, or a field of the wrong
                type; see :func:`entry_problem`).
        """
        try:
            values = json.loads(raw)
        except ValueError as exc:  # UnicodeDecodeError is one too
            raise ValueError(f"not JSON ({exc})") from None
        if not isinstance(values, list) or len(values) != _FIELDS:
            raise ValueError(f"not a list of {_FIELDS} fields")
        entry = cls(*values)
        problem = entry_problem(entry)
        if problem is not None:
            raise ValueError(problem)
        return entry


_FIELDS = len(fields(CacheEntry))


def message_problem(message: Any) -> str | None:
    """What makes ``message`` an answer the cache does not serve, or None.

    The cache stores plain text answers only: ``{"role": "assistant",
    "content": "<text>"}``. A tool call is never stored (its answer depends on
    the tool's result), so a message that carries one, or any other field, was
    not written by this cache and would be replayed as something else.
    """
    if not isinstance(message, dict):
        return f"its message is a {type(message).__name__}, not an object"
    if message.get("role") != "assistant":
        return "its message's role is not 'assistant'"
    if not isinstance(message.get("content"), str):
        return "its message's content is not a string"
    extra = sorted(str(k) for k in message if k not in ("role", "content"))
    if extra:
        return f"its message has fields the cache never stores: {extra[:5]}"
    return None


def entry_problem(entry: CacheEntry) -> str | None:
    """What makes ``entry`` unfit to serve (a field of the wrong type), or None.

    Counts and cost must be non-negative integers, times finite numbers, and
    the message a plain text answer (see :func:`message_problem`).
    """
    if not isinstance(entry.key, str) or not entry.key:
        return "its key is not a string"
    if not all(v is None or isinstance(v, str) for v in (entry.index, entry.query)):
        return "its index or question is not a string"
    if not isinstance(entry.model, str) or not entry.model:
        return "its model is not a string"
    counts = (entry.cost_nanos, entry.input_tokens, entry.output_tokens)
    if not all(_count(v) for v in counts):
        return "its cost or token counts are not non-negative integers"
    expires = entry.expires_at
    if not _time(entry.created_at) or not (expires is None or _time(expires)):
        return "its times are not finite numbers"
    return message_problem(entry.message)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _time(value: Any) -> bool:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class CacheHit:
    """A request answered from cache: serve ``message`` and charge nothing.

    Attributes:
        layer: ``"exact"`` or ``"semantic"``.
        similarity: cosine similarity of the match (1.0 for exact hits).
        message: the cached assistant message to return.
        model: the model that produced the cached answer.
        saved_usd: what the answer cost when bought: report it as saved.
        saved_input_tokens: prompt tokens not spent again.
        saved_output_tokens: completion tokens not spent again.
        cached_query: the cached question (None for exact hits on requests
            with no user turn).
        key: the exact key of the cached entry.
        age_s: seconds since the entry was stored.
        embedding_cost_usd: what embedding this lookup cost (priced
            embedders only); charge it to the budget.
    """

    layer: CacheLayer
    similarity: float
    message: dict[str, Any]
    model: str
    saved_usd: Decimal
    saved_input_tokens: int
    saved_output_tokens: int
    cached_query: str | None
    key: str
    age_s: float
    embedding_cost_usd: Decimal = Decimal(0)
    hit: Literal[True] = True

    @property
    def text(self) -> str:
        """The cached answer's text."""
        return message_text(self.message)

    @classmethod
    def from_entry(
        cls,
        entry: CacheEntry,
        *,
        layer: CacheLayer,
        similarity: float,
        now: float,
        embedding_cost_usd: Decimal = Decimal(0),
    ) -> CacheHit:
        """Build a hit that serves ``entry``."""
        return cls(
            layer=layer,
            similarity=similarity,
            message=entry.message,
            model=entry.model,
            saved_usd=nanos_to_usd(entry.cost_nanos),
            saved_input_tokens=entry.input_tokens,
            saved_output_tokens=entry.output_tokens,
            cached_query=entry.query,
            key=entry.key,
            age_s=max(0.0, now - entry.created_at),
            embedding_cost_usd=embedding_cost_usd,
        )


@dataclass(frozen=True, slots=True)
class CacheMiss:
    """No cached answer: make the call, then hand this back to ``store``.

    Attributes:
        reason: why nothing was served: ``"disabled"``, ``"opt_out"``,
            ``"temperature"``, ``"logprobs"`` (a request for log
            probabilities, which a cached answer has none of),
            ``"pending_tool"``, ``"no_messages"``,
            ``"not_found"`` (no entry at or above the threshold),
            ``"ambiguous"`` (two cached questions matched about as well),
            ``"gate:<check>"`` (the nearest entries were refused by the safety
            gate), ``"verifier"``, ``"too_long"`` (too long to embed: only
            the exact layer was asked), or ``"store_error"`` /
            ``"embed_error"`` (the cache failed open).
        best_similarity: the highest similarity seen, or None.
        storable: True when the answer to this request may be stored.
        keys: the request's keys (reused by ``store``).
        embedding_cost_usd: what embedding this lookup cost; charge it.
    """

    reason: str
    keys: CacheKeys
    best_similarity: float | None = None
    storable: bool = True
    embedding_cost_usd: Decimal = Decimal(0)
    vector: npt.NDArray[np.float32] | None = field(
        default=None, repr=False, compare=False
    )
    hit: Literal[False] = False
