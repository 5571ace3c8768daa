"""Normalised token usage and priced cost, the values pricing trades in."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

__all__ = ["USAGE_PARTS", "Cost", "Usage"]


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage of one call in one convention, whatever the provider reported.

    ``prompt_tokens`` counts every prompt token, cached ones included (the
    OpenAI convention and the meaning of ``gen_ai.usage.input_tokens``);
    ``cache_read_tokens`` and ``cache_write_tokens`` are the parts of it read
    from or written to the provider's prompt cache. ``completion_tokens``
    counts every output token; ``reasoning_tokens`` is the part of it spent on
    hidden reasoning. ``audio_input_tokens`` is the part of ``prompt_tokens``
    that is audio, not read from the cache; ``audio_cache_read_tokens`` the
    part of ``cache_read_tokens`` that is audio; ``audio_output_tokens`` the
    part of ``completion_tokens`` that is audio. Models with audio prices
    bill them at those. ``estimated`` is True when the numbers were counted
    locally because the provider reported none.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0
    audio_cache_read_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


USAGE_PARTS = (
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "audio_input_tokens",
    "audio_output_tokens",
    "audio_cache_read_tokens",
)
"""The parts of a :class:`Usage`'s prompt and completion that a price may
bill apart from plain input and output."""


@dataclass(frozen=True, slots=True)
class Cost:
    """The priced cost of one call, exact, with where the price came from.

    ``source`` is where the price came from: ``"price_map"``, ``"override"``
    (a policy override, or prices set on the call itself) or ``"default"``.
    ``estimated`` is True when the usage was counted locally (the provider
    reported none).
    """

    usd: Decimal
    model: str
    source: str
    estimated: bool = False
    breakdown: dict[str, Decimal] = field(default_factory=dict)
