"""Rate cards: model resolution, overrides, unknown prices, cost bounds, the map."""

from __future__ import annotations

import http.server
import json
import logging
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from conftest import free_port
from governor._errors import ConfigError, PolicyError, PriceUnknown
from governor.cli import main as cli_main
from governor.policies import Price, PriceTier, Pricing
from governor.pricing import Rate, RateCard, Usage
from governor.pricing._pricemap import parse_price_map

D = Decimal

# A small map in LiteLLM's format, so resolution rules do not hang on real prices.
_MAP: dict[str, dict[str, Any]] = {
    "gpt-4o": {
        "litellm_provider": "openai",
        "input_cost_per_token": D("2.5e-06"),
        "output_cost_per_token": D("1e-05"),
        "cache_read_input_token_cost": D("1.25e-06"),
        "max_input_tokens": 128000,
        "max_output_tokens": 16384,
    },
    "openai/gpt-4o": {
        "litellm_provider": "openai",
        "input_cost_per_token": D("9e-06"),
        "output_cost_per_token": D("9e-05"),
    },
    "Org/Mixed-Case": {
        "litellm_provider": "together_ai",
        "input_cost_per_token": D("1e-07"),
        "output_cost_per_token": D("2e-07"),
    },
    "retired-model": {
        "litellm_provider": "anthropic",
        "input_cost_per_token": 0,
        "output_cost_per_token": 0,
        "max_output_tokens": 8192,
    },
    "vendor/retired-model": {"litellm_provider": "vendor", "max_input_tokens": 1000},
    "embed-only": {
        "litellm_provider": "openai",
        "input_cost_per_token": D("0"),
        "output_cost_per_token": D("1e-06"),
    },
    "long-context": {
        "litellm_provider": "gemini",
        "input_cost_per_token": D("1.25e-06"),
        "output_cost_per_token": D("1e-05"),
        "cache_read_input_token_cost": D("1.25e-07"),
        "input_cost_per_token_above_200k_tokens": D("2.5e-06"),
        "output_cost_per_token_above_200k_tokens": D("1.5e-05"),
        "input_cost_per_token_above_200k_tokens_priority": D("9e-06"),
    },
}


def _card(pricing: Pricing | None = None) -> RateCard:
    return RateCard(pricing, price_map=_MAP)


def test_exact_key_resolves_from_the_map() -> None:
    """A name that is a map key gets that entry's per-token prices."""
    rate = _card().rate("gpt-4o")
    assert (rate.model, rate.source, rate.provider) == ("gpt-4o", "price_map", "openai")
    assert (rate.input_per_token, rate.output_per_token) == (D("2.5e-6"), D("1e-5"))


def test_exact_key_wins_over_stripped_prefix() -> None:
    """A prefixed name that is itself a map key is priced by that key."""
    assert _card().rate("openai/gpt-4o").input_per_token == D("9e-06")


def test_name_in_another_letter_case_resolves() -> None:
    """Letter case does not matter when the exact name is not a key."""
    assert _card().rate("org/mixed-case").model == "Org/Mixed-Case"


def test_provider_prefix_is_stripped() -> None:
    """A provider prefix missing from the map is removed: azure/gpt-4o is gpt-4o."""
    assert _card().rate("azure/gpt-4o").model == "gpt-4o"


def test_offline_prefix_resolves_to_the_real_model() -> None:
    """offline/<model> is priced as <model>, prefixes nested or not."""
    card = RateCard()
    assert card.rate("offline/gpt-4o-mini").model == "gpt-4o-mini"
    assert card.rate("offline/gemini/gemini-2.5-flash").model == (
        "gemini/gemini-2.5-flash"
    )


def test_missing_cache_and_reasoning_prices_fall_back() -> None:
    """Cache prices fall back to the input price, reasoning to the output price."""
    rate = _card().rate("gpt-4o")
    assert rate.cache_read_per_token == D("1.25e-06")
    assert rate.cache_write_per_token == D("2.5e-06")
    assert rate.reasoning_per_token == D("1e-05")


def test_map_limits_are_read() -> None:
    """Context window and output ceiling come from the map entry."""
    rate = _card().rate("gpt-4o")
    assert (rate.max_input_tokens, rate.max_output_tokens) == (128000, 16384)


def test_unknown_model_is_refused_with_how_to_price_it() -> None:
    """An unpriced model raises PriceUnknown naming it and the override to set."""
    with pytest.raises(PriceUnknown) as caught:
        _card().rate("my-private-model")
    assert caught.value.model == "my-private-model"
    message = str(caught.value)
    assert "'my-private-model'" in message
    assert "Pricing(overrides=" in message
    assert "Pricing(default=" in message


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("gpt-4o-mni", "gpt-4o-mini"),
        ("offline/gpt-4o-mni", "offline/gpt-4o-mini"),
        ("my-private-model", None),
    ],
)
def test_a_model_name_one_letter_off_a_priced_one_is_suggested(
    typo: str, meant: str | None
) -> None:
    """A typo is refused, saying the name it likely means; other names not."""
    with pytest.raises(PriceUnknown) as caught:
        RateCard().rate(typo)
    hint = "" if meant is None else f"; did you mean {meant!r}?"
    assert caught.value.reason.endswith(f"and no override prices it{hint}")


def test_unknown_model_stays_unknown_on_later_calls() -> None:
    """The refusal is remembered and raised again, not turned into a price."""
    card = _card()
    for _ in range(2):
        with pytest.raises(PriceUnknown):
            card.rate("my-private-model")


def test_zero_priced_map_entry_is_unknown_not_free() -> None:
    """A map entry with no input and no output price is refused, with a reason."""
    with pytest.raises(PriceUnknown) as caught:
        _card().rate("retired-model")
    assert "no token prices" in caught.value.reason


def test_first_map_entry_found_decides() -> None:
    """An unpriced prefixed entry is not priced by a shorter name's entry."""
    with pytest.raises(PriceUnknown) as caught:
        _card().rate("vendor/retired-model")
    assert "'vendor/retired-model'" in caught.value.reason


def test_real_placeholder_entry_is_unknown() -> None:
    """The bundled map's unpriced placeholder ids are refused."""
    with pytest.raises(PriceUnknown):
        RateCard().rate("bedrock/ap-northeast-1/1-month-commitment/anthropic.claude-v1")


def test_an_alias_row_is_priced_as_the_row_it_names() -> None:
    """A map row with ``alias_of`` is served as that row, as LiteLLM serves it."""
    alias = {"alias_of": "gpt-4o"}
    card = RateCard(price_map={**_MAP, "gpt-4o-latest": alias})
    rate = card.rate("gpt-4o-latest")
    assert (rate.input_per_token, rate.output_per_token) == (D("2.5e-6"), D("1e-5"))
    bundled = RateCard().rate("bedrock/claude-opus-latest")
    assert bundled.input_per_token > 0


def test_retired_claude_id_is_unknown() -> None:
    """A retired Claude id that LiteLLM would cost at 0.0 is refused."""
    with pytest.raises(PriceUnknown):
        RateCard().rate("claude-sonnet-4-20250514")


def test_override_wins_over_the_map() -> None:
    """A negotiated price replaces the map's price and says so."""
    pricing = Pricing(
        overrides={"gpt-4o": Price(input_usd_per_mtok="2", output_usd_per_mtok="8")}
    )
    rate = _card(pricing).rate("gpt-4o")
    assert (rate.source, rate.input_per_token, rate.output_per_token) == (
        "override",
        D("0.000002"),
        D("0.000008"),
    )


def test_override_matches_the_stripped_name() -> None:
    """An override for gpt-4o also prices offline/gpt-4o."""
    pricing = Pricing(
        overrides={"gpt-4o": Price(input_usd_per_mtok="2", output_usd_per_mtok="2")}
    )
    rate = _card(pricing).rate("offline/gpt-4o")
    assert (rate.model, rate.source) == ("gpt-4o", "override")


def test_override_keeps_the_maps_limits_and_provider() -> None:
    """An override without limits takes them, and the provider, from the map."""
    pricing = Pricing(
        overrides={"gpt-4o": Price(input_usd_per_mtok="2", output_usd_per_mtok="2")}
    )
    rate = _card(pricing).rate("gpt-4o")
    assert (rate.max_output_tokens, rate.provider) == (16384, "openai")


def test_override_cache_and_reasoning_prices() -> None:
    """Override cache-read, cache-write and reasoning prices are each applied."""
    price = Price(
        input_usd_per_mtok="3",
        output_usd_per_mtok="15",
        cache_read_usd_per_mtok="0.3",
        cache_write_usd_per_mtok="3.75",
        reasoning_usd_per_mtok="20",
    )
    card = _card(Pricing(overrides={"house-model": price}))
    usage = Usage(
        prompt_tokens=1000,
        cache_read_tokens=500,
        cache_write_tokens=200,
        completion_tokens=100,
        reasoning_tokens=40,
    )
    cost = card.cost("house-model", usage)
    assert cost.breakdown == {
        "input": D("0.0009"),
        "cache_read": D("0.00015"),
        "cache_write": D("0.00075"),
        "output": D("0.0009"),
        "reasoning": D("0.0008"),
        "duration": D("0"),
    }
    assert cost.usd == D("0.0035")


def test_self_hosted_model_priced_per_second() -> None:
    """A per-second override bills the call's wall time, with no token price."""
    price = Price(usd_per_second="0.0025")
    card = _card(Pricing(overrides={"vllm/llama-3-8b": price}))
    cost = card.cost("vllm/llama-3-8b", Usage(prompt_tokens=900), duration_s=1.5)
    assert (cost.usd, cost.source) == (D("0.00375"), "override")


@pytest.mark.parametrize(
    "given",
    [
        "input_usd_per_mtok",
        "output_usd_per_mtok",
        "cache_read_usd_per_mtok",
        "cache_write_usd_per_mtok",
        "reasoning_usd_per_mtok",
    ],
)
def test_a_price_with_one_token_price_is_refused(given: str) -> None:
    """Forgetting the other token price would make those tokens free silently."""
    with pytest.raises(PolicyError) as caught:
        Price(**{given: "3"})
    assert "set both" in str(caught.value)


def test_explicitly_free_override_is_allowed() -> None:
    """An override of zero prices means free on purpose, so tokens cost 0."""
    card = _card(Pricing(overrides={"local-model": Price()}))
    assert card.cost("local-model", Usage(prompt_tokens=10)).usd == 0


def test_zero_map_total_for_used_tokens_is_unknown() -> None:
    """A map price that comes to 0 for a call that used tokens raises PriceUnknown."""
    card = _card()
    with pytest.raises(PriceUnknown) as caught:
        card.cost("embed-only", Usage(prompt_tokens=100))
    assert "zero" in caught.value.reason


def test_override_price_tier_applies_above_threshold() -> None:
    """A PriceTier prices every token of a call whose prompt passes its threshold."""
    price = Price(
        input_usd_per_mtok="1",
        output_usd_per_mtok="2",
        tiers=(
            PriceTier(
                above_input_tokens=1000,
                input_usd_per_mtok="4",
                output_usd_per_mtok="8",
            ),
        ),
    )
    card = _card(Pricing(overrides={"tiered": price}))
    at = card.cost("tiered", Usage(prompt_tokens=1000, completion_tokens=10)).usd
    above = card.cost("tiered", Usage(prompt_tokens=1001, completion_tokens=10)).usd
    assert (at, above) == (D("0.00102"), D("0.004084"))


def test_tier_cache_price_falls_back_to_the_base_cache_price() -> None:
    """A tier without its own cache price keeps the base's explicit cache price."""
    price = Price(
        input_usd_per_mtok="1",
        output_usd_per_mtok="2",
        cache_read_usd_per_mtok="0.1",
        tiers=(
            PriceTier(
                above_input_tokens=10, input_usd_per_mtok="2", output_usd_per_mtok="4"
            ),
        ),
    )
    rate = _card(Pricing(overrides={"m": price})).rate("m")
    assert rate.tiers[0].cache_read_per_token == D("1E-7")
    assert rate.tiers[0].cache_write_per_token == D("0.000002")


def test_map_tier_keys_become_tiers() -> None:
    """above_200k_tokens keys make a tier at 200000; service-tier variants do not."""
    rate = _card().rate("long-context")
    assert [t.above_input_tokens for t in rate.tiers] == [200_000]
    assert rate.tiers[0].input_per_token == D("2.5e-06")


def test_tiered_pricing_table_is_read() -> None:
    """A map entry priced by a tiered_pricing table gets its base and tiers."""
    rate = RateCard().rate("dashscope/qwen-plus-latest")
    assert rate.input_per_token == D("4E-7")
    assert [t.above_input_tokens for t in rate.tiers] == [256_000]
    assert rate.tiers[0].reasoning_per_token == D("0.000012")


def test_default_price_admits_unknown_models() -> None:
    """With a default price, an unknown model is priced at it, marked default."""
    card = _card(
        Pricing(default=Price(input_usd_per_mtok="5", output_usd_per_mtok="5"))
    )
    rate = card.rate("my-private-model")
    assert (rate.model, rate.source, rate.input_per_token) == (
        "my-private-model",
        "default",
        D("0.000005"),
    )


def test_default_price_covers_zero_priced_entries() -> None:
    """A zero-priced map entry is unknown, so the default prices it."""
    card = _card(
        Pricing(default=Price(input_usd_per_mtok="5", output_usd_per_mtok="5"))
    )
    rate = card.rate("retired-model")
    assert (rate.source, rate.max_output_tokens) == ("default", 8192)


def test_default_price_does_not_replace_known_prices() -> None:
    """A model the map prices keeps its map price when a default is set."""
    card = _card(
        Pricing(default=Price(input_usd_per_mtok="5", output_usd_per_mtok="5"))
    )
    assert card.rate("gpt-4o").source == "price_map"


def test_rate_is_resolved_once_per_model() -> None:
    """A second lookup returns the very same Rate object."""
    card = _card()
    assert card.rate("gpt-4o") is card.rate("gpt-4o")


def test_cost_parts_add_up() -> None:
    """Cost.usd is the sum of its breakdown and the usage drives each part."""
    usage = Usage(prompt_tokens=2000, cache_read_tokens=1000, completion_tokens=100)
    cost = _card().cost("gpt-4o", usage)
    assert cost.breakdown["input"] == D("0.0025")
    assert cost.breakdown["cache_read"] == D("0.00125")
    assert cost.breakdown["output"] == D("0.001")
    assert cost.usd == sum(cost.breakdown.values()) == D("0.00475")


def test_estimated_usage_keeps_the_rate_source() -> None:
    """An estimated usage marks the cost estimated; the source stays the rate's."""
    cost = _card().cost("gpt-4o", Usage(prompt_tokens=10, estimated=True))
    assert (cost.source, cost.estimated) == ("price_map", True)


def test_inconsistent_usage_is_rejected() -> None:
    """Cache tokens beyond the prompt are a ConfigError, not a negative cost."""
    with pytest.raises(ConfigError):
        _card().cost("gpt-4o", Usage(prompt_tokens=10, cache_read_tokens=11))


def test_worst_case_value() -> None:
    """Worst case is prompt at the input price plus max output at the output price."""
    worst = _card().worst_case_usd("gpt-4o", prompt_tokens=1000, max_output_tokens=500)
    assert worst == D("0.0075")


def test_worst_case_uses_the_tier_the_prompt_lands_in() -> None:
    """A prompt above the threshold is bounded at the tier's prices."""
    worst = _card().worst_case_usd(
        "long-context", prompt_tokens=200_001, max_output_tokens=0
    )
    assert worst == D("0.5000025")


def test_worst_case_covers_dear_cache_writes() -> None:
    """A cache write dearer than input is covered by the bound."""
    price = Price(
        input_usd_per_mtok="3",
        output_usd_per_mtok="15",
        cache_write_usd_per_mtok="3.75",
    )
    card = _card(Pricing(overrides={"m": price}))
    worst = card.worst_case_usd("m", prompt_tokens=100, max_output_tokens=0)
    assert worst == card.cost("m", Usage(prompt_tokens=100, cache_write_tokens=100)).usd


def test_worst_case_includes_duration() -> None:
    """A per-second price adds max_duration_s seconds to the bound."""
    card = _card(Pricing(overrides={"m": Price(usd_per_second="0.01")}))
    worst = card.worst_case_usd(
        "m", prompt_tokens=5, max_output_tokens=5, max_duration_s=2.5
    )
    assert worst == D("0.025")


def _random_usage(rng: random.Random, prompt: int, max_output: int) -> Usage:
    cache_read = rng.randint(0, prompt)
    cache_write = rng.randint(0, prompt - cache_read)
    completion = rng.randint(0, max_output)
    reasoning = rng.randint(0, completion)
    # Uncached audio input is bounded by the prompt's size, not its price
    # (see Rate.worst_case_usd); audio output and audio cache reads by price.
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=reasoning,
        audio_output_tokens=rng.randint(0, completion - reasoning),
        audio_cache_read_tokens=rng.randint(0, cache_read),
    )


@pytest.mark.parametrize(
    "model",
    [
        "gpt-4o-mini",
        "claude-sonnet-4-6",
        "gemini/gemini-2.5-pro",
        "gemini/gemini-2.5-flash",
        "dashscope/qwen-plus-latest",
        "gpt-4o-audio-preview-2024-12-17",
        "gpt-audio-mini",
    ],
)
def test_worst_case_bounds_every_cost(model: str) -> None:
    """No usage within the bounds costs more than worst_case_usd."""
    card = RateCard()
    rng = random.Random(model)
    for _ in range(300):
        prompt = rng.choice([1, 999, 200_000, 200_001, 256_001, rng.randint(1, 10**6)])
        max_output = rng.randint(0, 70_000)
        worst = card.worst_case_usd(
            model, prompt_tokens=prompt, max_output_tokens=max_output
        )
        usage = _random_usage(rng, prompt, max_output)
        assert card.cost(model, usage).usd <= worst, (model, usage)


def test_importing_pricing_does_not_import_litellm() -> None:
    """import governor.pricing, and pricing a model, leave litellm unimported."""
    code = (
        "import sys, governor.pricing as p; p.RateCard().rate('gpt-4o'); "
        "print('litellm' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "False"


def test_bundled_map_keeps_prices_exact() -> None:
    """Prices parse as Decimal, so 1.5e-07 stays exactly 0.00000015."""
    assert RateCard().rate("gpt-4o-mini").input_per_token == D("0.00000015")


def test_remote_map_failure_falls_back_to_bundled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unreachable remote map logs a WARNING and prices from the bundled map."""
    url = f"http://127.0.0.1:{free_port()}/prices.json"
    card = RateCard(Pricing(remote_price_map=True), price_map_url=url)
    with caplog.at_level(logging.WARNING, logger="governor.pricing._pricemap"):
        rate = card.rate("gpt-4o-mini")
    assert rate.input_per_token == D("1.5e-07")
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert url in caplog.records[0].getMessage()


@pytest.fixture
def served_map() -> Iterator[str]:
    """Serve a one-model price map from a local HTTP server; yield its URL."""
    body = json.dumps(
        {"gpt-4o-mini": {"input_cost_per_token": 1e-07, "output_cost_per_token": 2e-07}}
    ).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/prices.json"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_remote_map_is_used_when_fetched(served_map: str) -> None:
    """An opted-in remote map replaces the bundled prices."""
    card = RateCard(Pricing(remote_price_map=True), price_map_url=served_map)
    assert card.rate("gpt-4o-mini").input_per_token == D("1e-07")


def test_price_map_document_must_be_an_object() -> None:
    """A map that is not a JSON object of entries is rejected."""
    with pytest.raises(ValueError, match="JSON object"):
        parse_price_map(b"[1, 2]")


def test_cli_prints_the_entry_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    """governor pricing MODEL --json prints per-million prices, tiers and limits."""
    assert cli_main(["pricing", "offline/gemini/gemini-2.5-pro", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["model"] == "gemini/gemini-2.5-pro"
    assert document["source"] == "price_map"
    assert document["provider"] == "gemini"
    assert document["usd_per_mtok"] == {
        "input": "1.25",
        "output": "10",
        "cache_read": "0.125",
        "cache_write": "1.25",
        "reasoning": "10",
    }
    assert document["tiers"][0]["above_input_tokens"] == 200_000
    assert document["tiers"][0]["usd_per_mtok"]["input"] == "2.5"
    assert (document["max_input_tokens"], document["max_output_tokens"]) == (
        1048576,
        65536,
    )


def test_cli_prints_the_entry_as_text(capsys: pytest.CaptureFixture[str]) -> None:
    """governor pricing MODEL prints a readable entry with the resolved key."""
    assert cli_main(["pricing", "openai/gpt-4o-mini"]) == 0
    out = capsys.readouterr().out
    assert "model      gpt-4o-mini" in out
    assert "  input       0.15" in out
    assert "max output         16384 tokens" in out


def test_cli_refuses_an_unknown_model(capsys: pytest.CaptureFixture[str]) -> None:
    """An unpriced model exits 1 and says how to price it on the command line:
    the "pricing" of a JSON policy file given with --policy, not Python."""
    assert cli_main(["pricing", "no-such-model-xyz"]) == 1
    err = capsys.readouterr().err
    assert "given with --policy" in err
    assert '{"pricing": {"overrides": {"no-such-model-xyz": {' in err
    assert "Pricing(overrides=" not in err


def test_rate_is_a_frozen_value() -> None:
    """A Rate cannot be changed after it is built."""
    rate = _card().rate("gpt-4o")
    assert isinstance(rate, Rate)
    with pytest.raises(AttributeError):
        rate.input_per_token = D(0)  # type: ignore[misc]


def test_cli_prices_as_a_policy_file_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--policy applies the policy's overrides: an in-house model gets its price."""
    policy = tmp_path / "policy.py"
    policy.write_text(
        "from governor import Policy\n"
        "from governor.policies import Price, Pricing\n"
        "POLICY = Policy(pricing=Pricing(overrides={'acme/llm': Price(\n"
        "    input_usd_per_mtok='0.5', output_usd_per_mtok='2')}))\n",
        encoding="utf-8",
    )
    assert cli_main(["pricing", "acme/llm", "--json", "--policy", str(policy)]) == 0
    document = json.loads(capsys.readouterr().out)
    assert (document["source"], document["usd_per_mtok"]["output"]) == (
        "override",
        "2",
    )


def test_cli_names_a_missing_policy_file(capsys: pytest.CaptureFixture[str]) -> None:
    """A --policy that is no file exits 2 and says what it takes."""
    assert cli_main(["pricing", "gpt-4o", "--policy", "nope.py"]) == 2
    assert "is not 'default', 'pack:NAME' or an existing" in capsys.readouterr().err


def test_cli_suggests_the_pack_a_bare_pack_name_means(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """'production' is no file; 'pack:production' is what was meant."""
    assert cli_main(["policy", "show", "production"]) == 2
    assert capsys.readouterr().err.endswith("did you mean 'pack:production'?\n")
    assert cli_main(["policy", "show", "Customer-Facing"]) == 2
    assert "did you mean 'pack:customer_facing'?" in capsys.readouterr().err


def test_worst_case_holds_output_at_the_dearer_audio_price() -> None:
    """A model that prices audio output dearer than text holds output at it."""
    rate = RateCard().rate("gpt-4o-audio-preview-2024-12-17")
    worst = rate.worst_case_usd(prompt_tokens=10, max_output_tokens=100)
    assert worst == 10 * D("2.5e-6") + 100 * D("8e-5")
    nanos = rate.worst_case_nanos(prompt_tokens=10, max_output_tokens=100)
    audio = Usage(prompt_tokens=10, completion_tokens=100, audio_output_tokens=100)
    assert nanos >= rate.cost_nanos(audio) == 8_025_000


def test_map_audio_prices_and_their_long_context_tier() -> None:
    """Audio prices come from the entry; a tier's own audio input price wins,
    audio output keeps the base's."""
    entry = {
        "input_cost_per_token": D("1e-6"),
        "output_cost_per_token": D("4e-6"),
        "input_cost_per_audio_token": D("3e-6"),
        "output_cost_per_audio_token": D("9e-6"),
        "input_cost_per_token_above_200k_tokens": D("2e-6"),
        "output_cost_per_token_above_200k_tokens": D("8e-6"),
        "input_cost_per_audio_token_above_200k_tokens": D("5e-6"),
    }
    rate = RateCard(price_map={"talker": entry}).rate("talker")
    (tier,) = rate.tiers
    assert (rate.audio_input_per_token, rate.audio_output_per_token) == (
        D("3e-6"),
        D("9e-6"),
    )
    assert (tier.audio_input_per_token, tier.audio_output_per_token) == (
        D("5e-6"),
        D("9e-6"),
    )
    long_call = Usage(prompt_tokens=200_001, audio_input_tokens=1, completion_tokens=2)
    expected = 200_000 * D("2e-6") + D("5e-6") + 2 * D("8e-6")
    assert rate.cost(long_call).usd == expected


def _fake_litellm(monkeypatch: pytest.MonkeyPatch, model_cost: dict[str, Any]) -> None:
    """Stand in for an imported litellm whose run-time map is ``model_cost``."""
    import types

    fake = types.ModuleType("litellm")
    fake.model_cost = model_cost  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "litellm", fake)


def test_call_prices_win_over_the_map_and_lie_over_its_entry() -> None:
    """A call's own prices replace the entry's; the rest of the entry stays."""
    card = _card()
    rate = card.rate("gpt-4o", {"input_cost_per_token": 0.001})
    other = card.rate("long-context")
    assert (rate.input_per_token, rate.output_per_token) == (D("0.001"), D("1e-5"))
    assert (rate.cache_read_per_token, rate.max_output_tokens) == (D("1.25e-6"), 16384)
    assert rate.source == "override"
    assert other.input_per_token == D("1.25e-06")  # another model: the map's
    assert card.rate("gpt-4o").input_per_token == D("2.5e-6")  # outside: the map's


def test_a_policy_override_wins_over_call_prices() -> None:
    """Pricing.overrides win over everything, a call's own prices included."""
    price = Price(input_usd_per_mtok="1", output_usd_per_mtok="2")
    card = _card(Pricing(overrides={"gpt-4o": price}))
    rate = card.rate("openai/gpt-4o", {"input_cost_per_token": 0.5})
    assert rate.input_per_token == D("1e-6")


def test_call_prices_price_an_unmapped_model_even_at_zero() -> None:
    """A model no map knows is priced by the call's prices; zeros mean free."""
    card = _card()
    prices = {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}
    rate = card.rate("openai/my-vllm", prices)
    assert (rate.input_per_token, rate.output_per_token) == (D("1e-6"), D("2e-6"))
    free = {"input_cost_per_token": 0, "output_cost_per_token": 0}
    assert card.rate("openai/my-vllm", free).cost(Usage(prompt_tokens=5)).usd == 0
    cache_only = {"cache_read_input_token_cost": 1e-6}
    with pytest.raises(PriceUnknown, match="call sets prices"):
        card.rate("openai/my-vllm", cache_only)


def test_an_input_price_alone_on_an_unmapped_model_is_warned_of(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Output tokens counted free by a call that prices input only on a model
    no map knows is an accident worth a warning; a mapped model, or both
    prices given, is not."""
    card = _card()
    with caplog.at_level(logging.WARNING, logger="governor.pricing._ratecard"):
        rate = card.rate("openai/my-vllm", {"input_cost_per_token": 3e-6})
        card.rate("openai/my-vllm", {"input_cost_per_token": 3e-6})
        card.rate("gpt-4o", {"input_cost_per_token": 3e-6})
        both = {"input_cost_per_token": 3e-6, "output_cost_per_token": 0}
        card.rate("openai/other-vllm", both)
    assert rate.output_per_token == 0
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1
    assert "'openai/my-vllm'" in warned[0]
    assert "Set output_cost_per_token too" in warned[0]


def test_call_per_second_price_replaces_token_prices() -> None:
    """A per-second price set alone bills wall time, as LiteLLM does (where
    the policy honours prices set on calls as given)."""
    rate = _card(Pricing(call_prices="honour")).rate(
        "gpt-4o", {"input_cost_per_second": 0.002}
    )
    assert (rate.usd_per_second, rate.input_per_token) == (D("0.002"), 0)
    assert rate.cost(Usage(prompt_tokens=100), duration_s=1.5).usd == D("0.003")


def test_a_flat_call_price_is_written_into_a_tiered_table() -> None:
    """A tiered_pricing row set's ranges all take a flat price the call sets."""
    table = [
        {
            "range": [0, 1000],
            "input_cost_per_token": 1e-6,
            "output_cost_per_token": 2e-6,
        },
        {
            "range": [1000, 9000],
            "input_cost_per_token": 3e-6,
            "output_cost_per_token": 4e-6,
        },
    ]
    card = RateCard(price_map={"t": {"tiered_pricing": table}})
    rate = card.rate("t", {"output_cost_per_token": 7e-6})
    assert [t.output_per_token for t in (rate, *rate.tiers)] == [D("7e-6")] * 2
    assert [t.input_per_token for t in (rate, *rate.tiers)] == [D("1e-6"), D("3e-6")]


def test_litellm_run_time_map_prices_a_model_the_map_lacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """litellm.model_cost (register_model) prices what the bundled map lacks,
    before the default, and a changed registration reprices."""
    runtime = {
        "openai/my-vllm": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}
    }
    _fake_litellm(monkeypatch, runtime)
    default = Price(input_usd_per_mtok="50", output_usd_per_mtok="50")
    card = RateCard(Pricing(default=default))
    rate = card.rate("openai/my-vllm")
    assert (rate.input_per_token, rate.source) == (D("0.000001"), "price_map")
    runtime["openai/my-vllm"] = {
        "input_cost_per_token": 3e-6,
        "output_cost_per_token": 0,
    }
    assert card.rate("openai/my-vllm").input_per_token == D("0.000003")
    # The bundled map's own models keep its prices.
    runtime["gpt-4o-mini"] = {"input_cost_per_token": 1, "output_cost_per_token": 1}
    assert card.rate("gpt-4o-mini").input_per_token == D("1.5e-7")
    assert card.rate("never-heard-of").source == "default"


def test_a_model_registered_after_a_refusal_is_priced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refusal is not kept: a later registration prices the model."""
    runtime: dict[str, Any] = {}
    _fake_litellm(monkeypatch, runtime)
    card = RateCard()
    with pytest.raises(PriceUnknown) as caught:
        card.rate("late/model")
    assert (
        "not in LiteLLM's price map (bundled or at run time in litellm.model_cost)"
        in str(caught.value)
    )
    runtime["late/model"] = {"input_cost_per_token": 1e-6, "output_cost_per_token": 0}
    assert card.rate("late/model").input_per_token == D("0.000001")


def test_a_pinned_map_ignores_litellms_run_time_map(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A card given its own map prices from it alone, and says so."""
    _fake_litellm(monkeypatch, {"x": {"input_cost_per_token": 1.0}})
    with pytest.raises(PriceUnknown) as caught:
        _card().rate("x")
    assert "not in the rate card's price map, and no override" in str(caught.value)


@pytest.mark.parametrize("count", [float("inf"), float("nan"), 1e300, 10**12], ids=str)
def test_usage_counts_no_call_reaches_are_refused_as_malformed(count: object) -> None:
    """inf raised OverflowError and NaN ValueError past the adapters' guards;
    1e300 and 10**12 were charged as tokens."""
    from governor.pricing import usage_from_response

    with pytest.raises(ConfigError, match="'prompt_tokens'"):
        usage_from_response({"prompt_tokens": count, "completion_tokens": 5})
    assert usage_from_response({"prompt_tokens": 10**9}).prompt_tokens == 10**9
