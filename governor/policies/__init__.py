"""Policy model: frozen, typed declarations of what a governor enforces."""

from governor.policies._model import (
    SCOPES,
    Attribution,
    Budget,
    Fanout,
    Loops,
    Policy,
    Price,
    PriceTier,
    Pricing,
    Scope,
)

__all__ = [
    "SCOPES",
    "Attribution",
    "Budget",
    "Fanout",
    "Loops",
    "Policy",
    "Price",
    "PriceTier",
    "Pricing",
    "Scope",
]
