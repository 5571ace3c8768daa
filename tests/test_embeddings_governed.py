"""Embedding calls under the governor: reserved, charged, refused, cached lookups."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import litellm
import pytest

from conftest import SpanCapture
from governor import Budget, BudgetExceeded, Cache, ConfigError, Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM, instrument
from governor.telemetry import attributes as attr
from governor.testing import OfflineProvider, install_offline_provider

MODEL = "offline/text-embedding-3-small"
CHAT = "offline/gpt-4o-mini"
# text-embedding-3-small's list price, per token, in LiteLLM's bundled map.
PRICE = Decimal(
    str(litellm.model_cost["text-embedding-3-small"]["input_cost_per_token"])
)


@pytest.fixture
def offline() -> OfflineProvider:
    provider = install_offline_provider(speed=0)
    provider.clear_calls()
    return provider


def embedded_tokens(provider: OfflineProvider) -> int:
    return sum(c.usage.prompt_tokens for c in provider.calls if c.source == "embedding")


def test_an_embedding_is_charged_at_its_input_price(
    offline: OfflineProvider, capture: SpanCapture
) -> None:
    """Cost = the provider's prompt tokens times the model's input price."""
    gov = Governor(
        Policy(budgets=[Budget(max_usd=1)]), tracer_provider=capture.provider
    )
    llm = GovernedLiteLLM(gov)
    with gov.task() as task:
        response = llm.embedding(MODEL, ["the first text", "and a second one"])
    report = task.report()
    tokens = embedded_tokens(offline)
    assert len(response.data) == 2
    assert tokens == response.usage.prompt_tokens
    assert (report.calls, report.input_tokens, report.output_tokens) == (1, tokens, 0)
    assert report.cost_usd == tokens * PRICE
    [span] = capture.named("embeddings ")
    assert span.attributes is not None
    assert span.attributes[attr.GEN_AI_OPERATION_NAME] == "embeddings"
    assert span.attributes[attr.GEN_AI_USAGE_INPUT_TOKENS] == tokens
    assert attr.GEN_AI_REQUEST_MAX_TOKENS not in span.attributes  # writes none


def test_an_embedding_the_budget_cannot_hold_is_refused_before_it_is_sent(
    offline: OfflineProvider,
) -> None:
    """The input's worst case is reserved; a token budget below it refuses."""
    gov = Governor(Policy(budgets=[Budget(max_tokens=5)]))
    llm = GovernedLiteLLM(gov)
    with gov.task() as task, pytest.raises(BudgetExceeded) as refused:
        llm.embedding(model=MODEL, input="a text long enough to need more than five")
    assert offline.calls == []
    assert "embed fewer or shorter inputs" in str(refused.value)
    assert "max_tokens" not in str(refused.value)
    assert task.report().refused == 1


def test_embeddings_reserve_nothing_for_output(offline: OfflineProvider) -> None:
    """A budget that fits the input alone is enough: no output ceiling is held."""
    gov = Governor(Policy(budgets=[Budget(max_tokens=40)]))
    llm = GovernedLiteLLM(gov)
    with gov.task() as task:
        llm.embedding(model=MODEL, input="a short text")
    assert task.report().input_tokens == embedded_tokens(offline)


def test_repeated_embeddings_are_not_a_loop(offline: OfflineProvider) -> None:
    """Embedding one text many times (cache lookups do) never trips the guard."""
    gov = Governor(Policy())
    llm = GovernedLiteLLM(gov)
    with gov.task() as task:
        for _ in range(12):
            llm.embedding(model=MODEL, input="the same text every time")
    assert (task.report().calls, task.report().stop_reason) == (12, None)


def test_token_id_input_is_counted_exactly(offline: OfflineProvider) -> None:
    """Token ids reserve their own count; the provider's usage settles."""
    gov = Governor(Policy(budgets=[Budget(max_tokens=3)]))
    llm = GovernedLiteLLM(gov)
    with gov.task(), pytest.raises(BudgetExceeded):
        llm.embedding(model=MODEL, input=[101, 102, 103, 104])


def test_bad_input_is_refused_with_advice(offline: OfflineProvider) -> None:
    gov = Governor(Policy())
    llm = GovernedLiteLLM(gov)
    with pytest.raises(ConfigError, match="list of strings"):
        llm.embedding(model=MODEL, input=[])
    with pytest.raises(ConfigError, match="mixes kinds"):
        llm.embedding(model=MODEL, input=["text", 5])
    with pytest.raises(TypeError, match="input="):
        llm.embedding(model=MODEL)


def test_async_embedding_is_charged(offline: OfflineProvider) -> None:
    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))
    llm = GovernedLiteLLM(gov)

    async def run() -> Any:
        async with gov.atask() as task:
            await asyncio.gather(
                llm.aembedding(model=MODEL, input="one"),
                llm.aembedding(model=MODEL, input="two texts"),
            )
        return task.report()

    report = asyncio.run(run())
    assert (report.calls, report.cost_usd) == (2, embedded_tokens(offline) * PRICE)


def test_instrument_governs_litellm_embedding(offline: OfflineProvider) -> None:
    gov = Governor(Policy())
    with instrument(gov), gov.task() as task:
        litellm.embedding(model=MODEL, input="governed without editing call sites")
    assert task.report().calls == 1
    with gov.task() as after:
        litellm.embedding(model=MODEL, input="no longer governed")
    assert after.report().calls == 0


def test_a_paid_cache_embedding_is_charged_to_the_task(
    offline: OfflineProvider,
) -> None:
    """Cache(embedder='litellm:<model>'): each lookup's embedding is a charged call."""
    gov = Governor(Policy(cache=Cache(embedder=f"litellm:{MODEL}")))
    llm = GovernedLiteLLM(gov)
    question = [{"role": "user", "content": "How far is the Moon from the Earth?"}]
    with gov.task() as task:
        llm.completion(model=CHAT, messages=question, max_tokens=200)
        llm.completion(model=CHAT, messages=question, max_tokens=200)
    [chat] = [c for c in offline.calls if c.source != "embedding"]
    prices = litellm.model_cost["gpt-4o-mini"]
    chat_cost = chat.usage.prompt_tokens * Decimal(
        str(prices["input_cost_per_token"])
    ) + chat.usage.completion_tokens * Decimal(str(prices["output_cost_per_token"]))
    report = task.report()
    embedded = embedded_tokens(offline)
    # One embedding (the first lookup); the repeat is an exact hit, not embedded.
    assert [c.source for c in offline.calls].count("embedding") == 1
    assert embedded > 0
    assert (report.calls, report.cache_hits) == (2, 1)
    assert report.cost_usd == embedded * PRICE + chat_cost


def test_a_cache_embedding_refused_by_the_budget_raises_the_refusal(
    offline: OfflineProvider,
) -> None:
    """A budget too small for the lookup's embedding refuses; no warning noise."""
    policy = Policy(
        cache=Cache(embedder=f"litellm:{MODEL}"), budgets=[Budget(max_tokens=4)]
    )
    gov = Governor(policy)
    llm = GovernedLiteLLM(gov)
    question = [{"role": "user", "content": "How far is the Moon from the Earth?"}]
    with gov.task(), pytest.raises(BudgetExceeded):
        llm.completion(model=CHAT, messages=question, max_tokens=20)
    assert offline.calls == []


@pytest.mark.parametrize("given", [{}, {"max_retries": None}])
def test_embeddings_are_sent_without_sdk_retries(
    offline: OfflineProvider, given: dict[str, Any]
) -> None:
    """Like completions, an embedding call goes out with max_retries=0."""
    import litellm

    seen: list[Any] = []

    def embed(**kwargs: Any) -> Any:
        seen.append(kwargs.get("max_retries"))
        return litellm.embedding(**kwargs)

    gov = Governor()
    GovernedLiteLLM(gov, embedding=embed).embedding(model=MODEL, input="hi", **given)
    assert seen == [0]


@pytest.mark.parametrize(
    ("given", "tokens"),
    [([1, 2, 3, 4, 5], 5), ([[1, 2, 3], [7, 8]], 5), ([[9] * 40], 40)],
)
def test_the_offline_provider_counts_token_ids_one_token_each(
    offline: OfflineProvider, given: list[Any], tokens: int
) -> None:
    """Inputs given as token ids are billed one token per id, as the real
    APIs bill them, not by the length of their printed form."""
    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))
    with gov.task() as task:
        response = GovernedLiteLLM(gov).embedding(model=MODEL, input=given)
    assert response.usage.prompt_tokens == tokens
    assert embedded_tokens(offline) == tokens
    assert task.report().cost_usd == tokens * PRICE


def test_a_batch_is_held_at_one_window_per_input_not_one_in_all(
    offline: OfflineProvider,
) -> None:
    """Ten texts of some 3,000 tokens each bill about 30,000 tokens: a
    10,000-token budget refuses the batch before it is sent, though each
    text fits the model's 8,191-token window."""
    gov = Governor(Policy(budgets=[Budget(max_tokens=10_000)]))
    llm = GovernedLiteLLM(gov)
    texts = ["word " * 3000] * 10
    with gov.task() as task, pytest.raises(BudgetExceeded):
        llm.embedding(model=MODEL, input=texts)
    assert offline.calls == []
    assert task.report().refused == 1
    with gov.task() as task:
        llm.embedding(model=MODEL, input=texts[:3])
    assert task.report().input_tokens == embedded_tokens(offline)
    assert 9_000 <= embedded_tokens(offline) <= 10_000
