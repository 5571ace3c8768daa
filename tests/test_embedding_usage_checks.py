"""An embedding answer's usage passes the checks a completion's does: a
malformed count (negative, not a whole number, past a billion tokens) is not
charged; the inputs are counted locally, marked estimated, with a warning."""

from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import litellm
import pytest
from litellm.types.utils import Embedding, EmbeddingResponse, Usage

from governor import Budget, Governor, Policy
from governor.adapters._embeddings import embedding_request, embedding_result
from governor.adapters.litellm import GovernedLiteLLM
from governor.pricing import Usage as GovernorUsage

MODEL = "text-embedding-3-small"
# text-embedding-3-small's list price, per token, in LiteLLM's bundled map.
PRICE = Decimal(str(litellm.model_cost[MODEL]["input_cost_per_token"]))
# What the model's tokenizer (cl100k_base) counts in "hello world".
HELLO_TOKENS = 2
MALFORMED = "the provider's usage for model text-embedding-3-small is malformed"


def answering(usage: Any) -> Callable[..., EmbeddingResponse]:
    """A stand-in for ``litellm.embedding`` that reports ``usage``."""

    def embedding(**kwargs: Any) -> EmbeddingResponse:
        vector = Embedding(embedding=[0.1], index=0, object="embedding")
        return EmbeddingResponse(model=kwargs["model"], data=[vector], usage=usage)

    return embedding


def reported(prompt: int) -> Usage:
    return Usage(prompt_tokens=prompt, completion_tokens=0, total_tokens=prompt)


def settled(usage: Any) -> GovernorUsage:
    """What ``embedding_result`` settles a "hello world" call at."""
    request = embedding_request({"model": MODEL, "input": "hello world"})
    # LiteLLM's own response would refuse some of these usages outright.
    response = SimpleNamespace(model=MODEL, data=[], usage=usage)
    return embedding_result(request, response).usage


def test_usage_past_a_billion_tokens_is_charged_the_local_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """5e9 prompt tokens for "hello world" charge its 2 counted tokens, and
    a $1 team budget is not exhausted by them."""
    gov = Governor(Policy(budgets=[Budget(scope="team", max_usd="1")]))
    llm = GovernedLiteLLM(gov, embedding=answering(reported(5 * 10**9)))
    with caplog.at_level(logging.WARNING), gov.task(team="x") as task:
        llm.embedding(model=MODEL, input="hello world")
    report = task.report()
    assert (report.calls, report.input_tokens, report.output_tokens) == (
        1,
        HELLO_TOKENS,
        0,
    )
    assert report.cost_usd == HELLO_TOKENS * PRICE
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith(MALFORMED)
    assert "'prompt_tokens' reports 5000000000 tokens" in warnings[0]
    fine = GovernedLiteLLM(gov, embedding=answering(reported(7)))
    with gov.task(team="x") as again:
        fine.embedding(model=MODEL, input="hi")
    assert again.report().cost_usd == 7 * PRICE
    gov.close()


def test_a_well_formed_count_is_charged_as_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A count the provider may have billed is its bill, not re-counted."""
    gov = Governor(Policy(budgets=[Budget(scope="team", max_usd="1")]))
    llm = GovernedLiteLLM(gov, embedding=answering(reported(17)))
    with caplog.at_level(logging.WARNING), gov.task(team="x") as task:
        llm.embedding(model=MODEL, input="hello world")
    report = task.report()
    assert (report.input_tokens, report.cost_usd) == (17, 17 * PRICE)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    gov.close()


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 5 * 10**9, "total_tokens": 5 * 10**9},
        {"prompt_tokens": 10**9 + 1},
        {"prompt_tokens": -3, "total_tokens": 40},
        {"prompt_tokens": True, "total_tokens": 40},
        {"prompt_tokens": "12", "total_tokens": 40},
        {"prompt_tokens": 2.5, "total_tokens": 40},
        {"prompt_tokens": float("inf")},
        {"prompt_tokens": 0, "total_tokens": 5 * 10**9},
        {"total_tokens": -1},
    ],
    ids=[
        "5e9",
        "a-billion-and-one",
        "negative",
        "bool",
        "string",
        "fraction",
        "infinite",
        "total-past-a-billion",
        "negative-total",
    ],
)
def test_a_malformed_count_is_counted_locally_and_warned(
    usage: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Neither the malformed count nor a total sent with it is charged."""
    with caplog.at_level(logging.WARNING):
        assert settled(usage) == GovernorUsage(
            prompt_tokens=HELLO_TOKENS, estimated=True
        )
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage().startswith(MALFORMED)


@pytest.mark.parametrize(
    ("usage", "tokens"),
    [
        ({"prompt_tokens": 9, "total_tokens": 9}, 9),
        ({"prompt_tokens": 10**9, "total_tokens": 10**9}, 10**9),
        ({"prompt_tokens": 9.0}, 9),
        ({"prompt_tokens": 0, "total_tokens": 11}, 11),
        (reported(13), 13),
    ],
    ids=["dict", "a-billion", "whole-float", "total-only", "litellm-usage"],
)
def test_a_well_formed_count_settles_unestimated(
    usage: Any, tokens: int, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert settled(usage) == GovernorUsage(prompt_tokens=tokens)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_no_usage_is_counted_locally_without_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        assert settled({}) == GovernorUsage(prompt_tokens=HELLO_TOKENS, estimated=True)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
