"""Deployment prices on LiteLLM calls: a Router deployment's registered prices
and an Azure deployment's ``base_model`` price a call; an id in the call's
metadata that names some other model's price map row does not."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import litellm
import pytest

from governor import Governor, Policy, Pricing
from governor.adapters.litellm import instrument

MESSAGES = [{"role": "user", "content": "Name three primary colours."}]
AZURE = {"api_key": "sk-stub", "api_base": "http://127.0.0.1:9", "api_version": "1"}


def row_price(model: str, input_tokens: int, output_tokens: int) -> Decimal:
    """What LiteLLM's price map row for ``model`` charges for these tokens."""
    row = litellm.model_cost[model]
    return input_tokens * Decimal(str(row["input_cost_per_token"])) + (
        output_tokens * Decimal(str(row["output_cost_per_token"]))
    )


def charged(call: Any) -> tuple[Decimal, Decimal]:
    """Run ``call`` governed; what the governor charged, and what the same
    tokens cost at gpt-4o's price (the model every test here calls)."""
    gov = Governor()
    with instrument(gov), gov.task() as task:
        call()
    report = task.report()
    assert report.calls == 1
    return report.cost_usd, row_price(
        "gpt-4o", report.input_tokens, report.output_tokens
    )


@pytest.fixture
def catalog_rows() -> Iterator[None]:
    """Put back the price map rows a Router deployment id may write into."""
    kept = {name: dict(litellm.model_cost[name]) for name in ("gpt-4o-mini",)}
    yield
    for name, row in kept.items():
        litellm.model_cost[name] = row


def gpt_4o(**extra: Any) -> Any:
    return lambda: litellm.completion(
        model="openai/gpt-4o",
        messages=MESSAGES,
        max_tokens=20,
        mock_response="Red, yellow and blue.",
        **extra,
    )


@pytest.mark.parametrize(
    "info",
    [
        {"id": "gpt-4o-mini"},
        {"id": "text-embedding-3-small"},
        # Prices stated beside the id do not make a price map row the
        # deployment's registration.
        {"id": "gpt-4o-mini", "input_cost_per_token": 0.15e-6},
    ],
)
@pytest.mark.parametrize("where", ["metadata", "litellm_metadata"])
def test_a_model_info_id_on_a_plain_call_does_not_price_it(
    info: dict[str, Any], where: str
) -> None:
    """A call to gpt-4o whose metadata names a cheaper model's row as its
    deployment id is still charged gpt-4o's price."""
    cost, expected = charged(gpt_4o(**{where: {"model_info": dict(info)}}))
    assert cost == expected


def test_a_model_info_id_on_an_embedding_call_does_not_price_it() -> None:
    """An embedding call is charged its own model's price, not the row its
    metadata's deployment id names."""
    gov = Governor()
    with instrument(gov), gov.task() as task:
        litellm.embedding(
            model="openai/text-embedding-3-large",
            input=["colours"],
            mock_response=[0.1, 0.2],
            metadata={"model_info": {"id": "text-embedding-ada-002-v2"}},
        )
    report = task.report()
    row = litellm.model_cost["text-embedding-3-large"]
    assert report.cost_usd == report.input_tokens * Decimal(
        str(row["input_cost_per_token"])
    )
    assert report.cost_usd > 0


@pytest.mark.usefixtures("catalog_rows")
@pytest.mark.parametrize("ident", ["gpt-4o-mini", "eastus-1"])
def test_a_router_deployment_id_does_not_price_its_call(ident: str) -> None:
    """A Router deployment of gpt-4o that sets no prices is charged gpt-4o's,
    whatever its id is called (even the name of a cheaper model)."""
    router = litellm.Router(
        model_list=[
            {
                "model_name": "big",
                "litellm_params": {
                    "model": "openai/gpt-4o",
                    "mock_response": "Red, yellow and blue.",
                },
                "model_info": {"id": ident},
            }
        ],
        num_retries=0,
    )
    cost, expected = charged(
        lambda: router.completion(model="big", messages=MESSAGES, max_tokens=20)
    )
    assert cost == expected


@pytest.mark.usefixtures("catalog_rows")
@pytest.mark.parametrize("where", ["litellm_params", "model_info"])
@pytest.mark.parametrize("ident", ["cheap-deployment", "gpt-4o-mini"])
def test_a_router_deployment_with_prices_is_charged_them(
    where: str, ident: str
) -> None:
    """A deployment that sets its own prices below list is charged those
    where the policy honours them, with its inherited cache price and
    whatever its id is."""
    prices = {"input_cost_per_token": 1e-7, "output_cost_per_token": 2e-7}
    params: dict[str, Any] = {
        "model": "openai/gpt-4o",
        "mock_response": "Red, yellow and blue.",
    }
    info: dict[str, Any] = {"id": ident}
    (params if where == "litellm_params" else info).update(prices)
    router = litellm.Router(
        model_list=[
            {"model_name": "cheap", "litellm_params": params, "model_info": info}
        ],
        num_retries=0,
    )
    gov = Governor(Policy(pricing=Pricing(call_prices="honour")))
    with instrument(gov), gov.task() as task:
        response = router.completion(model="cheap", messages=MESSAGES, max_tokens=20)
    report = task.report()
    expected = report.input_tokens * Decimal("1e-7") + report.output_tokens * Decimal(
        "2e-7"
    )
    assert report.cost_usd == expected
    assert response._hidden_params["response_cost"] == pytest.approx(float(expected))


def azure_router(deployment: str, where: str) -> litellm.Router:
    params: dict[str, Any] = {
        "model": f"azure/{deployment}",
        "mock_response": "Red, yellow and blue.",
        **AZURE,
    }
    entry: dict[str, Any] = {"model_name": "prod", "litellm_params": params}
    if where == "litellm_params":
        params["base_model"] = "azure/gpt-4o"
    else:
        entry["model_info"] = {"base_model": "azure/gpt-4o"}
    return litellm.Router(model_list=[entry], num_retries=0)


@pytest.mark.parametrize("where", ["litellm_params", "model_info"])
@pytest.mark.parametrize("deployment", ["my-gpt4o-deploy", "gpt-35-turbo"])
def test_an_azure_router_deployment_is_priced_as_its_base_model(
    deployment: str, where: str
) -> None:
    """An Azure deployment's base_model prices it: a deployment name LiteLLM
    does not know, and one that names a cheaper model."""
    router = azure_router(deployment, where)
    gov = Governor()
    with instrument(gov), gov.task() as task:
        response = router.completion(model="prod", messages=MESSAGES, max_tokens=20)
    report = task.report()
    expected = row_price("azure/gpt-4o", report.input_tokens, report.output_tokens)
    assert report.cost_usd == expected
    assert response._hidden_params["response_cost"] == pytest.approx(float(expected))


@pytest.mark.parametrize(
    "given",
    [
        {"base_model": "azure/gpt-4o"},
        {"base_model": "gpt-4o"},
        {"model_info": {"base_model": "azure/gpt-4o"}},
        {"metadata": {"model_info": {"base_model": "azure/gpt-4o"}}},
        {"litellm_metadata": {"model_info": {"base_model": "azure/gpt-4o"}}},
    ],
)
@pytest.mark.parametrize("deployment", ["my-gpt4o-deploy", "gpt-35-turbo"])
def test_a_plain_azure_call_is_priced_as_its_base_model(
    deployment: str, given: dict[str, Any]
) -> None:
    """A plain call's base_model prices it, where LiteLLM reads it."""
    gov = Governor()
    with instrument(gov), gov.task() as task:
        response = litellm.completion(
            model=f"azure/{deployment}",
            messages=MESSAGES,
            max_tokens=20,
            mock_response="Red, yellow and blue.",
            **AZURE,
            **given,
        )
    report = task.report()
    expected = row_price("azure/gpt-4o", report.input_tokens, report.output_tokens)
    assert report.cost_usd == expected
    assert response._hidden_params["response_cost"] == pytest.approx(float(expected))


def test_prices_on_the_call_win_over_its_base_model() -> None:
    """A call that sets its own prices is charged them, as LiteLLM does,
    base_model or not."""
    gov = Governor()
    with instrument(gov), gov.task() as task:
        litellm.completion(
            model="azure/my-gpt4o-deploy",
            messages=MESSAGES,
            max_tokens=20,
            mock_response="Red, yellow and blue.",
            base_model="azure/gpt-4o",
            input_cost_per_token=1e-7,
            output_cost_per_token=2e-7,
            **AZURE,
        )
    report = task.report()
    assert report.cost_usd == report.input_tokens * Decimal(
        "1e-7"
    ) + report.output_tokens * Decimal("2e-7")
