"""Model cascade settings: tiers, acceptance checks, fallback."""

from __future__ import annotations

from pydantic import Field

from governor.policies._base import PolicyModel

__all__ = ["Cascade"]


class Cascade(PolicyModel):
    """An ordered list of model tiers, cheapest first (built out under issue #5)."""

    tiers: tuple[str, ...] = Field(
        min_length=1, description="model names, cheapest first"
    )
