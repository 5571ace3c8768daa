"""The price of each cascade tier, as the tier's own calls are priced."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from governor._calls import priced_name
from governor._errors import ConfigError, PriceUnknown
from governor.pricing._ratecard import call_price_fields

if TYPE_CHECKING:
    from governor.policies._cascade import Cascade, Tier
    from governor.pricing import Rate, RateCard

__all__ = ["tier_prices", "tier_rates"]


def tier_prices(tier: Tier) -> Mapping[str, Any] | None:
    """The prices a tier's ``params`` set for its calls (LiteLLM's fields,
    ``input_cost_per_token`` and kin); None when they set none."""
    return call_price_fields(tier.params) or None


def tier_rates(card: RateCard, cascade: Cascade) -> list[tuple[str, Rate]]:
    """Each tier's name and rate: its model under its provider, with the
    prices its ``params`` set laid over the price map's entry, as its calls
    are priced.

    Raises:
        ConfigError: nothing prices a tier's model (the price map, the
            policy's overrides and default, the tier's own ``params``), or
            the tier's ``params`` set a price that is not one.
    """
    rates = []
    for tier in cascade.tiers:
        provider = tier.params.get("custom_llm_provider")
        try:
            name = priced_name(tier.model, str(provider) if provider else None)
            rates.append((tier.name, card.rate(name, tier_prices(tier))))
        except (PriceUnknown, ConfigError) as exc:
            raise ConfigError(f"cascade tier {tier.name!r}: {exc}") from exc
    return rates
