"""Policy model: frozen, typed declarations of what a governor enforces."""

from governor.policies._cache import Cache
from governor.policies._cascade import Cascade
from governor.policies._loops import Loops
from governor.policies._model import (
    SCOPES,
    Attribution,
    Budget,
    Fanout,
    Period,
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
    "Cache",
    "Cascade",
    "Fanout",
    "Loops",
    "Period",
    "Policy",
    "Price",
    "PriceTier",
    "Pricing",
    "Scope",
]
