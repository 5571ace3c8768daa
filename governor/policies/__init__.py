"""Policy model: frozen, typed declarations of what a governor enforces.

:class:`Policy` and its parts are here, :class:`Cascade` and its
:class:`Tier` included; a cascade's checks, ``PreCall`` and ``Retry`` are
imported from :mod:`governor.cascade`, which holds ``Cascade`` and ``Tier``
too.
"""

from governor.policies._cache import Cache
from governor.policies._cascade import Cascade, Tier
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
    "Tier",
]
