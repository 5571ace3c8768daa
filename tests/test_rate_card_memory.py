"""Task-override pricing: one card per distinct Pricing, but not for good."""

from __future__ import annotations

from decimal import Decimal

from governor import Governor, Policy
from governor._engine import _RATE_CARD_MEMORY
from governor.adapters.litellm import GovernedLiteLLM
from governor.policies import Price, Pricing
from governor.pricing import RateCard

MESSAGES = [{"role": "user", "content": "hi"}]


def _tenant_policy(i: int) -> Policy:
    price = Price(input_usd_per_mtok=f"1.{i:04d}", output_usd_per_mtok="2")
    return Policy(pricing=Pricing(overrides={"gpt-4o-mini": price}))


def _charged(gov: Governor, policy: Policy) -> Decimal:
    with gov.task(policy=policy) as task:
        GovernedLiteLLM(gov).completion(
            model="gpt-4o-mini", messages=MESSAGES, mock_response="ok", max_tokens=20
        )
    return task.report().cost_usd


def test_cards_for_tenant_prices_are_bounded_and_still_right() -> None:
    """A service pricing each tenant its own way keeps at most a bounded
    number of cards; a tenant whose card went is priced right again."""
    gov = Governor(Policy())
    first = _charged(gov, _tenant_policy(0))
    for i in range(1, _RATE_CARD_MEMORY + 40):
        gov.rate_card_for(_tenant_policy(i))

    assert len(gov._rate_cards) == _RATE_CARD_MEMORY
    assert _charged(gov, _tenant_policy(0)) == first
    # LiteLLM's mock usage is 10 prompt and 20 completion tokens.
    assert first == (10 * Decimal("1.0000") + 20 * Decimal("2")) / 10**6
    gov.close()


def test_cards_reading_one_map_share_its_folded_names() -> None:
    """The case-folded index of the price map is built once, not per card."""
    one = Price(input_usd_per_mtok="1", output_usd_per_mtok="1")
    a = RateCard(Pricing(overrides={"x": one}))
    b = RateCard(Pricing(overrides={"y": one}))
    mapped = RateCard().rate("gpt-4o-mini").input_per_token
    assert a.rate("GPT-4o-mini").input_per_token == mapped
    assert b.rate("gpt-4o-MINI").input_per_token == mapped
    assert a._folded is b._folded


def test_a_price_map_its_owner_changes_is_read_as_it_is_now() -> None:
    """A map given as price_map= is its owner's: a card made after the owner
    changed it finds the names as they are now (none shared, none stale)."""
    entry = {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}
    prices: dict[str, dict[str, float]] = {"Acme-Large": dict(entry)}
    assert RateCard(price_map=prices).rate("acme-large").model == "Acme-Large"

    del prices["Acme-Large"]
    prices["Acme-XL"] = dict(entry)
    prices["acme-large"] = dict(entry)
    card = RateCard(price_map=prices)

    assert card.rate("acme-xl").input_per_token == Decimal("0.000001")
    assert card.rate("ACME-LARGE").output_per_token == Decimal("0.000002")
