"""The cache against bad entries, unreplayable requests and unkeyed fields.

Tests of the Redis store need a real Redis at ``REDIS_URL`` (see
``_redis_fixtures``); each works under its own key prefix.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import litellm
import pytest
import redis

from conftest import CountingLiteLLM
from governor import Budget, Cache, Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM
from governor.cache import (
    CacheEntry,
    CacheHit,
    CacheMiss,
    KeyOptions,
    MemoryCacheStore,
    RedisCacheStore,
    ResponseCache,
    build_keys,
)
from governor.stores import RedisLedger

pytest_plugins = ["_redis_fixtures"]

MODEL = "gpt-4o-mini"
ANSWER = {"role": "assistant", "content": "Kettles boil water."}
U = {"role": "user", "content": "Summarize the previous answer in one sentence."}


def messages(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A bytes client on the test Redis."""
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


def redis_cache(client: redis.Redis, prefix: str, **settings: Any) -> ResponseCache:
    store = RedisCacheStore(client, prefix=f"{prefix}cache")
    return ResponseCache(Cache(embedder="hashing", **settings), store=store)


def fill(cache: ResponseCache, text: str) -> str:
    """Store ANSWER for ``text``; return its exact key."""
    miss = cache.lookup(model=MODEL, messages=messages(text))
    assert isinstance(miss, CacheMiss)
    assert cache.store(miss, message=ANSWER, model=MODEL, cost_usd=Decimal("0.01"))
    return miss.keys.exact


def rewrite(fields: list[Any], at: int, value: Any) -> str:
    return json.dumps([*fields[:at], value, *fields[at + 1 :]])


# Each turns an entry's stored fields into the JSON it is replaced by.
CORRUPTIONS: dict[str, Callable[[list[Any]], str]] = {
    "not JSON": lambda f: "{{{garbage",
    "11 fields (a newer release)": lambda f: json.dumps([*f, "extra"]),
    "not a list": lambda f: json.dumps({"key": f[0]}),
    "message is a string": lambda f: rewrite(f, 3, "just a string"),
    "content is null": lambda f: rewrite(f, 3, {"role": "assistant", "content": None}),
    "message calls a tool": lambda f: rewrite(
        f,
        3,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "x", "type": "function", "function": {}}],
        },
    ),
    "negative cost": lambda f: rewrite(f, 5, -(10**12)),
    "tokens are text": lambda f: rewrite(f, 6, "abc"),
    "tokens are a float": lambda f: rewrite(f, 7, 1.5),
    "model is null": lambda f: rewrite(f, 4, None),
    "created_at is text": lambda f: rewrite(f, 8, "yesterday"),
    "another key": lambda f: rewrite(f, 0, "0" * 32),
}


@pytest.mark.redis
@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=list(CORRUPTIONS))
def test_an_unreadable_redis_entry_is_a_plain_miss_deleted_and_logged_once(
    client: redis.Redis,
    redis_prefix: str,
    corrupt: Callable[[list[Any]], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No store error, no pause of the cache; the entry goes, the answer returns."""
    cache = redis_cache(client, redis_prefix, semantic=False)
    key = fill(cache, "question about kettles")
    fill(cache, "question about toasters")
    entry_key = f"{redis_prefix}cache:e:{key}"
    fields = json.loads(client.hget(entry_key, "j") or b"")
    client.hset(entry_key, "j", corrupt(fields))

    with caplog.at_level(logging.WARNING, logger="governor.cache"):
        miss = cache.lookup(model=MODEL, messages=messages("question about kettles"))
        other = cache.lookup(model=MODEL, messages=messages("question about toasters"))
        again = cache.lookup(model=MODEL, messages=messages("question about kettles"))
    assert isinstance(miss, CacheMiss)
    assert (miss.reason, miss.storable) == ("not_found", True)
    assert other.hit  # the rest of the cache is not paused
    assert isinstance(again, CacheMiss)
    assert again.reason == "not_found"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert key in warnings[0].getMessage()
    assert client.exists(entry_key) == 0
    assert cache.store(miss, message=ANSWER, model=MODEL, cost_usd=Decimal(0)).stored
    assert cache.lookup(model=MODEL, messages=messages("question about kettles")).hit


@pytest.mark.redis
def test_an_unreadable_entry_met_by_a_semantic_search_is_a_plain_miss(
    client: redis.Redis, redis_prefix: str
) -> None:
    """The semantic layer skips it (and deletes it) as the exact layer does."""
    cache = redis_cache(client, redis_prefix, exact=False)
    key = fill(cache, "question about kettles")
    entry_key = f"{redis_prefix}cache:e:{key}"
    client.hset(
        entry_key,
        "j",
        CORRUPTIONS["message is a string"](
            json.loads(client.hget(entry_key, "j") or b"")
        ),
    )
    miss = cache.lookup(model=MODEL, messages=messages("question about kettles"))
    assert isinstance(miss, CacheMiss)
    assert (miss.reason, miss.storable) == ("not_found", True)
    assert client.exists(entry_key) == 0


@pytest.mark.redis
def test_a_replaced_entry_is_not_deleted_as_unreadable(
    client: redis.Redis, redis_prefix: str
) -> None:
    """Only the unreadable value read is deleted, not a fresh one written since."""
    cache = redis_cache(client, redis_prefix, semantic=False)
    key = fill(cache, "question about kettles")
    entry_key = f"{redis_prefix}cache:e:{key}"
    good = client.hget(entry_key, "j")
    store = cache.store_backend
    assert isinstance(store, RedisCacheStore)
    assert store._read(key, b"{{{garbage") is None  # read before the rewrite
    assert client.hget(entry_key, "j") == good


def governed_on_redis(url: str, prefix: str) -> tuple[Governor, GovernedLiteLLM]:
    policy = Policy(
        cache=Cache(store="redis", semantic=False), budgets=[Budget(max_usd=1)]
    )
    gov = Governor(policy, ledger=RedisLedger(url, prefix=prefix))
    return gov, GovernedLiteLLM(gov)


@pytest.mark.redis
def test_a_governed_repeat_of_a_corrupt_entry_goes_to_the_model(
    redis_url: str, redis_prefix: str, client: redis.Redis
) -> None:
    """The call neither raises nor counts a hit; the fresh answer replaces it."""
    gov, llm = governed_on_redis(redis_url, redis_prefix)
    ask = {"model": MODEL, "messages": messages("question about ovens")}
    with gov.task(team="a"):
        llm.completion(**ask, mock_response="Ovens bake.")
    (entry_key,) = client.scan_iter(match=f"{redis_prefix}cache:e:*")
    fields = json.loads(client.hget(entry_key, "j") or b"")
    client.hset(entry_key, "j", rewrite(fields, 3, "just a string"))
    with gov.task(team="a") as task:
        plain = llm.completion(**ask, mock_response="Ovens bake.")
        client.hset(entry_key, "j", rewrite(fields, 3, "just a string"))
        streamed = list(llm.completion(**ask, stream=True, mock_response="Ovens bake."))
    report = task.report()
    assert plain.choices[0].message.content == "Ovens bake."
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == "Ovens bake."
    assert (report.cache_hits, report.saved_usd) == (0, 0)
    stored = json.loads(client.hget(entry_key, "j") or b"")
    assert stored[3] == {"role": "assistant", "content": "Ovens bake."}
    gov.close()


class HandOutStore(MemoryCacheStore):
    """A store that hands out entries as given, as a custom store might."""

    def put_raw(self, entry: CacheEntry) -> None:
        self.put(entry, None, 0.0)


def test_any_store_s_unservable_entry_is_a_miss_warned_of_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Entries of any store are checked before they are served."""
    store = HandOutStore()
    cache = ResponseCache(Cache(semantic=False), store=store)
    keys = cache.keys(model=MODEL, messages=messages("question about fans"))
    bad = CacheEntry(
        keys.exact,
        None,
        None,
        "a string",
        MODEL,
        1,
        1,
        1,
        0.0,
        None,  # type: ignore[arg-type]
    )
    store.put_raw(bad)
    with caplog.at_level(logging.WARNING, logger="governor.cache"):
        first = cache.lookup(model=MODEL, messages=messages("question about fans"))
        second = cache.lookup(model=MODEL, messages=messages("question about fans"))
    assert isinstance(first, CacheMiss)
    assert isinstance(second, CacheMiss)
    assert (first.reason, first.storable) == ("not_found", True)
    assert len([r for r in caplog.records if keys.exact in r.getMessage()]) == 1
    assert cache.store(first, message=ANSWER, model=MODEL, cost_usd=Decimal(0)).stored
    assert cache.lookup(model=MODEL, messages=messages("question about fans")).hit


@pytest.mark.parametrize(
    "message",
    [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "x"}]},
        {"role": "assistant", "content": "ok", "function_call": {"name": "f"}},
        {"content": "no role"},
        {"role": "assistant", "content": ["a part"]},
    ],
)
def test_store_refuses_an_answer_it_would_not_serve(message: dict[str, Any]) -> None:
    """What a read would refuse is not written in the first place."""
    cache = ResponseCache(Cache(semantic=False))
    miss = cache.lookup(model=MODEL, messages=messages("question about grills"))
    assert isinstance(miss, CacheMiss)
    stored = cache.store(miss, message=message, model=MODEL, cost_usd=Decimal(0))
    assert (stored.stored, stored.reason) == (False, "unsupported_message")


# -- logprobs ----------------------------------------------------------------


@pytest.mark.parametrize("asked", [{"logprobs": True}, {"top_logprobs": 2}])
def test_a_request_for_logprobs_is_neither_served_nor_stored(
    asked: dict[str, Any],
) -> None:
    """A cached answer has no log probabilities to replay."""
    cache = ResponseCache(Cache(semantic=False))
    miss = cache.lookup(
        model=MODEL, messages=messages("Is the sky blue?"), params=asked
    )
    assert isinstance(miss, CacheMiss)
    assert (miss.reason, miss.storable) == ("logprobs", False)


def test_logprobs_false_is_cacheable() -> None:
    cache = ResponseCache(Cache(semantic=False))
    params = {"logprobs": False}
    miss = cache.lookup(
        model=MODEL, messages=messages("Is the sky blue?"), params=params
    )
    assert isinstance(miss, CacheMiss)
    assert miss.storable


def test_a_governed_logprobs_repeat_is_sent_again() -> None:
    """The repeat is the model's own response, with its logprobs, not a replay."""
    counter = CountingLiteLLM()
    gov = Governor(Policy(cache=Cache(semantic=False)))
    llm = GovernedLiteLLM(gov, completion=counter.completion)
    with gov.task(team="a") as task:
        for _ in range(2):
            llm.completion(
                model=MODEL,
                messages=messages("Is the sky blue?"),
                logprobs=True,
                top_logprobs=1,
                mock_response="Yes.",
            )
    assert counter.sent == 2
    assert task.report().cache_hits == 0


# -- message fields in the exact key ------------------------------------------


def exact(*conversation: dict[str, Any]) -> str:
    keys = build_keys(
        model=MODEL,
        messages=list(conversation),
        params={},
        partition={},
        options=KeyOptions(),
    )
    return keys.exact


EARLIER = {"role": "user", "content": "Tell me a story."}


@pytest.mark.parametrize(
    ("plain", "marked"),
    [
        (
            [U, {"role": "assistant", "content": "Sure"}],
            [U, {"role": "assistant", "content": "Sure", "prefix": True}],
        ),
        (
            [EARLIER, {"role": "assistant", "content": "Once..."}, U],
            [
                EARLIER,
                {"role": "assistant", "content": "Once...", "reasoning_content": "r"},
                U,
            ],
        ),
        (
            [EARLIER, {"role": "assistant", "content": ""}, U],
            [EARLIER, {"role": "assistant", "content": "", "audio": {"id": "a1"}}, U],
        ),
    ],
    ids=["prefix", "reasoning_content", "audio"],
)
def test_every_message_field_is_in_the_exact_key(
    plain: list[dict[str, Any]], marked: list[dict[str, Any]]
) -> None:
    """A field that can change the answer is never dropped from the key."""
    assert exact(*plain) != exact(*marked)


def test_a_governed_prefix_request_is_not_served_the_plain_answer() -> None:
    counter = CountingLiteLLM()
    gov = Governor(Policy(cache=Cache(semantic=False)))
    llm = GovernedLiteLLM(gov, completion=counter.completion)
    with gov.task(team="a"):
        for last in ({}, {"prefix": True}):
            turn = {"role": "assistant", "content": "Sure", **last}
            llm.completion(model=MODEL, messages=[U, turn], mock_response="x")
    assert counter.sent == 2


def test_empty_fields_and_message_objects_keep_the_key() -> None:
    """A response's message put back in the history keys like its dict."""
    answer = litellm.Message(content="Once...", role="assistant")
    as_dict = {"role": "assistant", "content": "Once..."}
    with_nones = {**as_dict, "tool_calls": None, "refusal": None, "annotations": []}
    assert exact(EARLIER, answer, U) == exact(EARLIER, as_dict, U)  # type: ignore[arg-type]
    assert exact(EARLIER, with_nones, U) == exact(EARLIER, as_dict, U)


def test_tool_call_ids_stay_normalized() -> None:
    def turn(call_id: str) -> list[dict[str, Any]]:
        call = {"id": call_id, "type": "function", "function": {"name": "f"}}
        return [
            EARLIER,
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call_id, "content": "42"},
            U,
        ]

    assert exact(*turn("call_a")) == exact(*turn("call_b"))


# -- requests that name no tenant -----------------------------------------------


def no_tenant_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "names none of the scopes" in r.getMessage()
    ]


def test_calls_that_name_no_tenant_are_warned_of_once_per_governor(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gov = Governor(Policy(cache=Cache(semantic=False)))
    llm = GovernedLiteLLM(gov)
    with caplog.at_level(logging.WARNING, logger="governor"):
        for text in ("first", "second"):
            with gov.task():
                llm.completion(model=MODEL, messages=messages(text), mock_response="x")
    (warning,) = no_tenant_warnings(caplog)
    assert "org, team" in warning


@pytest.mark.parametrize(
    ("cache", "scopes"),
    [(Cache(semantic=False), {"team": "a"}), (Cache(partition_by=()), {})],
    ids=["a tenant named", "sharing on purpose"],
)
def test_no_warning_when_a_tenant_is_named_or_sharing_is_asked_for(
    caplog: pytest.LogCaptureFixture, cache: Cache, scopes: dict[str, str]
) -> None:
    gov = Governor(Policy(cache=cache))
    llm = GovernedLiteLLM(gov)
    with caplog.at_level(logging.WARNING, logger="governor"), gov.task(**scopes):
        llm.completion(model=MODEL, messages=messages("q"), mock_response="x")
    assert no_tenant_warnings(caplog) == []


# -- what the docs say of sessions and sampling ---------------------------------


def test_sessions_share_answers_unless_the_cache_partitions_by_session() -> None:
    """docs/cache.md: thread_id/session is not in the default partition."""
    for partition_by, sent in ((("org", "team"), 1), (("org", "team", "session"), 2)):
        counter = CountingLiteLLM()
        gov = Governor(Policy(cache=Cache(semantic=False, partition_by=partition_by)))
        llm = GovernedLiteLLM(gov, completion=counter.completion)
        for session in ("t1", "t2"):
            with gov.task(team="a", session=session):
                llm.completion(
                    model=MODEL, messages=messages("Who am I?"), mock_response="x"
                )
        assert counter.sent == sent


def test_the_semantic_layer_ignores_the_seed() -> None:
    """docs/cache.md: sampling settings are in the exact key, not the scope."""
    cache = ResponseCache(Cache(embedder="hashing"))
    first = cache.lookup(
        model=MODEL, messages=messages("Name a colour"), params={"seed": 1}
    )
    assert isinstance(first, CacheMiss)
    cache.store(first, message=ANSWER, model=MODEL, cost_usd=Decimal(0))
    found = cache.lookup(
        model=MODEL, messages=messages("Name a colour"), params={"seed": 2}
    )
    assert isinstance(found, CacheHit)
    assert found.layer == "semantic"
