"""Embedder and verifier faults: never a wrong hit, never a cache-wide rest."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

import numpy as np
import pytest

from governor import Budget, BudgetExceeded, Cache, Governor, GovernorError, Policy
from governor._quiet import Quiet
from governor.adapters.litellm import GovernedLiteLLM
from governor.cache import (
    CallableEmbedder,
    EmbedderOutputError,
    HashingEmbedder,
    MemoryCacheStore,
    ResponseCache,
    _cache,
)
from governor.testing import install_offline_provider, offline_model

MODEL = "gpt-4o-mini"
ANSWER = {"role": "assistant", "content": "Kettles boil water."}
COST = Decimal("0.001")


def messages(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def ask(response_cache: ResponseCache, text: str, **params: Any) -> Any:
    return response_cache.lookup(model=MODEL, messages=messages(text), params=params)


def answer(cache: ResponseCache, miss: Any) -> Any:
    return cache.store(miss, message=ANSWER, model=MODEL, cost_usd=COST)


@pytest.fixture(autouse=True)
def fresh_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees the first warning of each kind."""
    monkeypatch.setattr(_cache, "_QUIET", Quiet())


def _hashed(texts: list[str]) -> Any:
    return HashingEmbedder().embed(texts)


def embed_a(texts: list[str]) -> Any:
    return _hashed(texts)


def embed_b(texts: list[str]) -> Any:
    return _hashed(texts)


BAD_OUTPUTS = {
    "one number per text": lambda texts: [float(len(t)) for t in texts],
    "one-number vectors": lambda texts: [[float(len(t))] for t in texts],
    "rows of two lengths": lambda texts: [[1.0, 2.0, 3.0]] + [[1.0, 2.0]] * len(texts),
    "a 3-d array": lambda texts: np.ones((len(texts), 1, 4)),
    "None": lambda texts: None,
    "None rows": lambda texts: [None for _ in texts],
    "NaN": lambda texts: np.full((len(texts), 4), np.nan),
    "zeros": lambda texts: np.zeros((len(texts), 4)),
    "too many rows": lambda texts: np.ones((len(texts) + 1, 4)),
    "strings": lambda texts: [["a", "b"] for _ in texts],
}


@pytest.mark.parametrize("function", BAD_OUTPUTS.values(), ids=list(BAD_OUTPUTS))
def test_a_bad_embedder_output_misses_and_serves_exact_repeats_only(
    function: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """No shape of bad output gives a hit, a store error, or a rest."""
    cache = ResponseCache(Cache(), embedder=CallableEmbedder(function, name="bad"))
    caplog.set_level(logging.WARNING)
    first = ask(cache, "How do I reset my password?")
    stored = answer(cache, first)
    other = ask(cache, "Is it safe to mix bleach and ammonia?")
    repeat = ask(cache, "How do I reset my password?")
    assert (first.reason, stored.stored, other.reason) == (
        "embed_error",
        True,
        "embed_error",
    )
    assert (repeat.hit, repeat.layer) == (True, "exact")
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].getMessage().startswith("embedder 'bad' returned ")
    assert warnings[0].exc_info is None


def test_a_scalar_embedder_through_a_governor_answers_each_question() -> None:
    """The trial's case: one float per text made every question match."""
    install_offline_provider(lambda m, msgs, tools: f"to: {msgs[-1]['content']}")
    gov = Governor(Policy(cache=Cache(embedder=lambda ts: [float(len(t)) for t in ts])))
    llm = GovernedLiteLLM(gov)
    answers = []
    for question in ("How do I reset my password?", "Is bleach safe with ammonia?"):
        with gov.task(team="t"):
            response = llm.completion(
                model=offline_model(MODEL), messages=messages(question), max_tokens=20
            )
        answers.append(response.choices[0].message.content)
    assert answers == [
        "to: How do I reset my password?",
        "to: Is bleach safe with ammonia?",
    ]


def test_an_embedder_that_changes_its_dimension_is_refused() -> None:
    """Vectors of another length never reach the index (a matmul error)."""
    sizes = iter([4, 5, 4])

    def embed(texts: list[str]) -> Any:
        return np.ones((len(texts), next(sizes)))

    cache = ResponseCache(Cache(safety_gate=False), embedder=CallableEmbedder(embed))
    answer(cache, ask(cache, "first question"))
    changed = ask(cache, "second question")
    back = ask(cache, "third question")
    assert (changed.reason, back.hit, back.layer) == ("embed_error", True, "semantic")


def test_checked_vectors_names_the_embedder_and_its_output() -> None:
    with pytest.raises(EmbedderOutputError) as raised:
        CallableEmbedder(lambda ts: [27.0], name="mine").embed(["a question"])
    assert isinstance(raised.value, GovernorError)
    assert str(raised.value).startswith(
        "embedder 'mine' returned [27.0] for 1 text(s): shape (1,), where "
        "(1, dimensions) was needed."
    )


class Refusal(GovernorError):
    """A governor's refusal of the cache's own call (a budget, say)."""


class RefusingEmbedder:
    """Embeds like the hashing embedder until told to refuse."""

    name = "refusing"
    default_threshold = 0.97

    def __init__(self) -> None:
        self.refuse = False
        self.calls = 0

    def embed(self, texts: list[str]) -> Any:
        self.calls += 1
        if self.refuse:
            raise Refusal("budget team:poor would be exceeded")
        return _hashed(texts)


def test_a_refused_embedding_raises_and_rests_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Lookup raises the refusal; other requests' exact hits keep working."""
    embedder = RefusingEmbedder()
    cache = ResponseCache(Cache(), embedder=embedder)
    answer(cache, ask(cache, "Who wrote Hamlet?"))
    embedder.refuse = True
    with pytest.raises(Refusal):
        ask(cache, "Who wrote Macbeth?")
    repeat = ask(cache, "Who wrote Hamlet?")
    assert (repeat.hit, repeat.layer) == (True, "exact")
    assert "cache lookup failed" not in caplog.text


def test_a_refused_embedding_at_store_stores_for_exact_repeats_and_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """store() re-embeds a question the lookup did not read (no-cache); a
    refusal then must not cost the caller the answer it paid for."""
    embedder = RefusingEmbedder()
    cache = ResponseCache(Cache(), embedder=embedder)
    miss = ask(cache, "Who wrote Hamlet?", cache={"no-cache": True})
    embedder.refuse = True
    answer(cache, miss)
    assert "the answer is stored for exact repeats only" in caplog.text
    repeat = ask(cache, "Who wrote Hamlet?")
    assert (miss.reason, repeat.hit, repeat.layer) == ("opt_out", True, "exact")


def test_a_budget_refusal_of_one_team_s_embedding_leaves_the_cache_on() -> None:
    """The trial's case: team poor's refusal rested the cache for every team."""
    provider = install_offline_provider(lambda m, msgs, tools: "Shakespeare.", speed=0)
    gov = Governor(
        Policy(
            cache=Cache(embedder="litellm:" + offline_model("text-embedding-3-small")),
            budgets=[
                Budget(scope="team", key="poor", max_usd="0.0000001"),
                Budget(scope="team", max_usd="1"),
            ],
        )
    )
    llm = GovernedLiteLLM(gov)

    def hamlet(team: str) -> list[str]:
        sent = len(provider.calls)
        with gov.task(team=team):
            llm.completion(
                model=offline_model(MODEL),
                messages=messages("Who wrote Hamlet?"),
                max_tokens=30,
            )
        return [call.source for call in provider.calls[sent:]]

    assert hamlet("rich") == ["embedding", "responder"]
    with pytest.raises(BudgetExceeded):
        hamlet("poor")
    assert hamlet("rich") == []


class DownEmbedder:
    name = "down"
    default_threshold = 0.97

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, texts: list[str]) -> Any:
        self.calls += 1
        raise ConnectionError("embedding service unreachable")


def test_an_embedder_that_is_down_leaves_the_exact_layer_working(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The answer is stored unindexed, embedded once, logged once, no rest."""
    embedder = DownEmbedder()
    cache = ResponseCache(Cache(), embedder=embedder)
    caplog.set_level(logging.WARNING)
    miss = ask(cache, "Who wrote Hamlet?")
    stored = answer(cache, miss)
    repeat = ask(cache, "Who wrote Hamlet?")
    assert (miss.reason, stored, embedder.calls) == (
        "embed_error",
        _cache.Stored(True),
        1,
    )
    assert (repeat.hit, repeat.layer) == (True, "exact")
    assert [r.getMessage()[:41] for r in caplog.records] == [
        "cache embedding failed; calling the model"
    ]


def test_a_store_whose_embedding_fails_stores_for_the_exact_layer() -> None:
    """A question first embedded at store (no-cache) is stored unindexed."""
    embedder = DownEmbedder()
    cache = ResponseCache(Cache(), embedder=embedder)
    stored = answer(cache, ask(cache, "Who wrote Hamlet?", cache={"no-cache": True}))
    repeat = ask(cache, "Who wrote Hamlet?")
    assert (stored, repeat.hit, repeat.layer) == (_cache.Stored(True), True, "exact")


FIRST_LAMBDA = lambda texts: texts  # noqa: E731
SECOND_LAMBDA = lambda texts: texts  # noqa: E731


def test_a_callable_embedder_is_named_after_its_function() -> None:
    assert CallableEmbedder(embed_a).name == "callable:test_cache_trial_fixes.embed_a"
    first, second = CallableEmbedder(FIRST_LAMBDA), CallableEmbedder(SECOND_LAMBDA)
    line = FIRST_LAMBDA.__code__.co_firstlineno
    assert first.name == f"callable:test_cache_trial_fixes.<lambda>:{line}"
    assert second.name == f"callable:test_cache_trial_fixes.<lambda>:{line + 1}"
    assert CallableEmbedder(embed_a, name="mine").name == "mine"


@pytest.mark.parametrize(("other", "layer"), [(embed_a, "semantic"), (embed_b, None)])
def test_two_callables_never_compare_vectors(other: Any, layer: Any) -> None:
    """Two caches on one store: the same callable shares, another does not."""
    store = MemoryCacheStore()
    writer = ResponseCache(Cache(embedder=embed_a), store=store)
    answer(writer, ask(writer, "What is the boiling point of water?"))
    reader = ResponseCache(Cache(embedder=other), store=store)
    found = ask(reader, "What is the boiling point of water ?")
    assert getattr(found, "layer", None) == layer


def test_a_verifier_refused_by_the_governor_refuses_the_hit_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def verifier(question: str, cached_question: str, cached_answer: str) -> bool:
        raise Refusal("budget task:t would be exceeded")

    cache = ResponseCache(
        Cache(embedder="hashing", similarity_threshold=0.5), verifier=verifier
    )
    caplog.set_level(logging.WARNING)
    answer(cache, ask(cache, "What is the boiling point of water?"))
    found = ask(cache, "What is the boiling point of water ?")
    assert found.reason == "verifier"
    assert [(r.getMessage(), r.exc_info) for r in caplog.records] == [
        (
            "cache verifier call refused (Refusal: budget task:t would be "
            "exceeded); refusing the hit",
            None,
        )
    ]


def test_a_verifier_call_the_budget_refuses_does_not_stop_the_task() -> None:
    """The task's budget holds the call but not the verifier's longer
    prompt: the hit is refused, the call is answered, and the task is not
    marked stopped by a refusal of the cache's own check."""
    provider = install_offline_provider(lambda m, msgs, tools: "At 100 °C.", speed=0)
    cache = Cache(
        embedder="hashing",
        similarity_threshold=0.5,
        verifier=offline_model("gpt-4o-mini"),
    )
    gov = Governor(Policy(cache=cache, budgets=[Budget(max_tokens=60)]))
    llm = GovernedLiteLLM(gov)
    for text in (
        "What is the boiling point of water?",
        "What is the boiling point of water ?",
    ):
        with gov.task() as task:
            llm.completion(
                model=offline_model(MODEL), messages=messages(text), max_tokens=20
            )
    report = task.report()
    assert (report.calls, report.refused, report.stop_reason) == (1, 1, None)
    assert (report.cache_hits, provider.calls[-1].usage.prompt_tokens) == (0, 15)
