"""Prices a LiteLLM call sets for itself are taken at no less than the price
map's for the model called (``Pricing.call_prices="at_least_map"``, the
default): a call to gpt-4o cannot make itself free or cheap with price
keywords, a Router deployment's prices or a cheaper ``base_model``.
``"honour"`` charges them as given, ``"ignore"`` prices from the map alone.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import litellm
import pytest

from governor import Governor, Policy, PolicyError, Price, PriceUnknown, Pricing
from governor.adapters.litellm import instrument
from governor.cli import main

MESSAGES = [{"role": "user", "content": "Name three primary colours."}]
ANSWER = "Red, yellow and blue."
AZURE = {"api_key": "sk-stub", "api_base": "http://127.0.0.1:9", "api_version": "1"}
ZERO = {"input_cost_per_token": 0, "output_cost_per_token": 0}
RATECARD_LOGGER = "governor.pricing._ratecard"


def row_price(model: str, input_tokens: int, output_tokens: int) -> Decimal:
    """What LiteLLM's price map row for ``model`` charges for these tokens."""
    row = litellm.model_cost[model]
    return input_tokens * Decimal(str(row["input_cost_per_token"])) + (
        output_tokens * Decimal(str(row["output_cost_per_token"]))
    )


def at(input_price: str, output_price: str, report: Any) -> Decimal:
    """The report's tokens at these prices per token."""
    return report.input_tokens * Decimal(input_price) + (
        report.output_tokens * Decimal(output_price)
    )


def charged(
    call: Callable[[], Any], pricing: Pricing | None = None, calls: int = 1
) -> Any:
    """Run ``call`` ``calls`` times in one governed task; the task's report."""
    gov = Governor(Policy(pricing=pricing) if pricing else Policy())
    try:
        with instrument(gov), gov.task() as task:
            for _ in range(calls):
                call()
    finally:
        gov.close()
    report = task.report()
    assert report.calls == calls
    return report


def gpt_4o(**extra: Any) -> Callable[[], Any]:
    return lambda: litellm.completion(
        model="openai/gpt-4o",
        messages=MESSAGES,
        max_tokens=20,
        mock_response=ANSWER,
        **extra,
    )


def floor_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == RATECARD_LOGGER and "call_prices" in r.getMessage()
    ]


def router(**prices: Any) -> litellm.Router:
    """A Router whose one deployment of gpt-4o sets these prices."""
    params = {"model": "openai/gpt-4o", "mock_response": ANSWER, **prices}
    return litellm.Router(
        model_list=[{"model_name": "smart", "litellm_params": params}],
        num_retries=0,
    )


# -- the default: no price below the map's ------------------------------------


@pytest.mark.parametrize(
    "prices",
    [
        ZERO,
        {"input_cost_per_token": 1e-12, "output_cost_per_token": 1e-12},
        {"base_model": "gpt-4o-mini"},
        {"model_info": {"base_model": "gpt-4o-mini"}},
        {"metadata": {"model_info": {"base_model": "gpt-4o-mini"}}},
    ],
    ids=["zero", "tiny", "base_model", "model_info", "metadata"],
)
def test_cheap_call_prices_are_charged_the_map_price(
    prices: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Five calls to gpt-4o that price themselves at zero, next to nothing or
    as gpt-4o-mini are charged gpt-4o's price, with one warning."""
    caplog.set_level(logging.WARNING, logger=RATECARD_LOGGER)
    report = charged(gpt_4o(**prices), calls=5)
    assert report.cost_usd == row_price(
        "gpt-4o", report.input_tokens, report.output_tokens
    )
    warnings = floor_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "input_cost_per_token" in warnings[0]
    assert "0.0000025" in warnings[0]  # the map's input price
    assert "call_prices='honour'" in warnings[0]


def test_a_tiny_per_second_price_does_not_make_tokens_free(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A call that prices itself per second (next to nothing) is still charged
    at least the map's token prices."""
    caplog.set_level(logging.WARNING, logger=RATECARD_LOGGER)
    report = charged(gpt_4o(input_cost_per_second=1e-9), calls=3)
    tokens = row_price("gpt-4o", report.input_tokens, report.output_tokens)
    assert tokens <= report.cost_usd < tokens + Decimal("0.000001")
    assert len(floor_warnings(caplog)) == 1


def test_a_router_deployment_with_zero_prices_is_charged_the_map_price(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=RATECARD_LOGGER)
    smart = router(**ZERO)
    report = charged(
        lambda: smart.completion(model="smart", messages=MESSAGES, max_tokens=20),
        calls=2,
    )
    assert report.cost_usd == row_price(
        "gpt-4o", report.input_tokens, report.output_tokens
    )
    assert len(floor_warnings(caplog)) == 1


def test_call_prices_above_the_map_are_charged_price_by_price(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A dearer input price is charged; a cheaper output price is raised to
    the map's, and only it is named in the warning."""
    caplog.set_level(logging.WARNING, logger=RATECARD_LOGGER)
    report = charged(gpt_4o(input_cost_per_token=1e-4, output_cost_per_token=0))
    assert report.cost_usd == at("1e-4", "1e-5", report)  # gpt-4o's output
    (warning,) = floor_warnings(caplog)
    assert "output_cost_per_token" in warning
    assert "input_cost_per_token" not in warning


def test_an_azure_base_model_dearer_than_the_deployment_name_prices_up() -> None:
    """A deployment named after a cheaper model whose base_model is gpt-4o is
    charged gpt-4o's price, as before."""
    report = charged(
        lambda: litellm.completion(
            model="azure/gpt-35-turbo",
            messages=MESSAGES,
            max_tokens=20,
            mock_response=ANSWER,
            base_model="azure/gpt-4o",
            **AZURE,
        )
    )
    assert report.cost_usd == row_price(
        "azure/gpt-4o", report.input_tokens, report.output_tokens
    )


@pytest.mark.parametrize("where", ["call", "model_info", "metadata"])
def test_an_azure_deployment_named_after_a_dearer_model_is_priced_as_its_base(
    where: str,
) -> None:
    """An Azure deployment's name is its owner's choice: one named gpt-4 (the
    portal's default is the model's name) whose base_model is gpt-4o is
    charged gpt-4o's price, as LiteLLM charges it, not gpt-4's."""
    given = {
        "call": {"base_model": "azure/gpt-4o"},
        "model_info": {"model_info": {"base_model": "azure/gpt-4o"}},
        "metadata": {"metadata": {"model_info": {"base_model": "azure/gpt-4o"}}},
    }[where]
    report = charged(
        lambda: litellm.completion(
            model="azure/gpt-4",
            messages=MESSAGES,
            max_tokens=20,
            mock_response=ANSWER,
            **given,
            **AZURE,
        )
    )
    assert report.cost_usd == row_price(
        "azure/gpt-4o", report.input_tokens, report.output_tokens
    )


def test_a_model_the_map_does_not_know_keeps_the_call_prices(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=RATECARD_LOGGER)
    report = charged(
        lambda: litellm.completion(
            model="azure/my-private-deployment",
            messages=MESSAGES,
            max_tokens=20,
            mock_response=ANSWER,
            input_cost_per_token=1e-9,
            output_cost_per_token=2e-9,
            **AZURE,
        )
    )
    assert report.cost_usd == at("1e-9", "2e-9", report)
    assert floor_warnings(caplog) == []


@pytest.mark.parametrize("mode", ["at_least_map", "honour", "ignore"])
def test_a_policy_override_wins_over_call_and_map_prices(mode: str) -> None:
    override = Price(input_usd_per_mtok="0.5", output_usd_per_mtok="1")
    pricing = Pricing(
        overrides={"gpt-4o": override},
        call_prices=mode,  # type: ignore[arg-type]
    )
    report = charged(gpt_4o(**ZERO), pricing)
    assert report.cost_usd == at("5e-7", "1e-6", report)


# -- honour and ignore ------------------------------------------------------


def test_honour_charges_zero_call_prices_as_given(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=RATECARD_LOGGER)
    report = charged(gpt_4o(**ZERO), Pricing(call_prices="honour"), calls=2)
    assert report.cost_usd == 0
    assert floor_warnings(caplog) == []


def test_honour_charges_a_router_deployment_its_negotiated_prices() -> None:
    smart = router(input_cost_per_token=1e-7, output_cost_per_token=2e-7)
    report = charged(
        lambda: smart.completion(model="smart", messages=MESSAGES, max_tokens=20),
        Pricing(call_prices="honour"),
    )
    assert report.cost_usd == at("1e-7", "2e-7", report)


@pytest.mark.parametrize(
    "prices",
    [
        ZERO,
        {"input_cost_per_token": 1e-4, "output_cost_per_token": 1e-4},
        {"base_model": "gpt-4o-mini"},
    ],
    ids=["zero", "dearer", "base_model"],
)
def test_ignore_prices_from_the_map_alone(prices: dict[str, Any]) -> None:
    report = charged(gpt_4o(**prices), Pricing(call_prices="ignore"))
    assert report.cost_usd == row_price(
        "gpt-4o", report.input_tokens, report.output_tokens
    )


def test_ignore_prices_a_router_deployment_from_the_map() -> None:
    smart = router(input_cost_per_token=1e-4, output_cost_per_token=1e-4)
    report = charged(
        lambda: smart.completion(model="smart", messages=MESSAGES, max_tokens=20),
        Pricing(call_prices="ignore"),
    )
    assert report.cost_usd == row_price(
        "gpt-4o", report.input_tokens, report.output_tokens
    )


# -- the setting -------------------------------------------------------------


def test_the_setting_defaults_to_at_least_map_and_refuses_other_values() -> None:
    assert Pricing().call_prices == "at_least_map"
    with pytest.raises(PolicyError, match="call_prices"):
        Pricing(call_prices="cheapest")  # type: ignore[arg-type]
    with pytest.raises(PolicyError):
        Pricing(call_prices=None)  # type: ignore[arg-type]


def test_a_json_policy_file_round_trips_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = Policy(pricing=Pricing(call_prices="honour"))
    path = tmp_path / "policy.json"
    path.write_text(policy.model_dump_json())
    assert Policy.model_validate_json(path.read_text()) == policy

    assert main(["policy", "show", str(path)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["pricing"]["call_prices"] == "honour"

    assert main(["pricing", "gpt-4o", "--policy", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "gpt-4o"

    path.write_text(json.dumps({"pricing": {"call_prices": "free"}}))
    assert main(["policy", "show", str(path)]) == 2
    assert "call_prices" in capsys.readouterr().err


def test_ignore_refuses_a_model_only_the_call_prices() -> None:
    """Under "ignore" a deployment no map knows needs an override or a
    default; the refusal says the call's prices were not read."""
    with pytest.raises(PriceUnknown, match="call_prices='ignore'"):
        charged(
            lambda: litellm.completion(
                model="azure/my-private-deployment",
                messages=MESSAGES,
                max_tokens=20,
                mock_response=ANSWER,
                input_cost_per_token=1e-6,
                output_cost_per_token=2e-6,
                **AZURE,
            ),
            Pricing(call_prices="ignore"),
        )


def test_a_base_model_given_on_the_call_wins_over_its_metadatas() -> None:
    """As LiteLLM reads them: the call's model_info before its metadata's."""
    from governor.adapters.litellm import _base_model

    kwargs = {
        "model_info": {"base_model": "azure/gpt-4o"},
        "metadata": {"model_info": {"base_model": "azure/gpt-4o-mini"}},
    }
    assert _base_model(kwargs) == "azure/gpt-4o"
