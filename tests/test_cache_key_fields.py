"""What the response cache keys on and refuses: the asking message's other
fields, parameters given in ``extra_body``, empty answers, a pending legacy
``function_call``, and calls made inside another governor's task."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

import pytest

from governor import Cache, Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM
from governor.cache import KeyOptions, ResponseCache, build_keys

QUESTION = "What is in this picture?"
CACHE = Cache(embedder="hashing")


class Provider:
    """A provider stand-in that numbers its answers, so a hit shows: the
    n-th request sent is answered ``"answer n"`` (or the next of ``texts``)."""

    def __init__(self, *texts: str) -> None:
        self.sent: list[dict[str, Any]] = []
        self.texts = list(texts)

    def completion(self, **kwargs: Any) -> Any:
        import litellm

        self.sent.append(kwargs)
        text = self.texts.pop(0) if self.texts else f"answer {len(self.sent)}"
        message = {"role": "assistant", "content": text}
        return litellm.ModelResponse(
            model="gpt-4o-mini",
            choices=[{"index": 0, "message": message, "finish_reason": "stop"}],
            usage={"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        )


def ask(llm: GovernedLiteLLM, messages: Any, **params: Any) -> str:
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    response = llm.completion(
        model="gpt-4o-mini", messages=messages, max_tokens=30, **params
    )
    return str(response.choices[0].message.content)


def governed(*texts: str) -> tuple[Governor, GovernedLiteLLM, Provider]:
    provider = Provider(*texts)
    gov = Governor(Policy(cache=CACHE))
    return gov, GovernedLiteLLM(gov, completion=provider.completion), provider


def keys_of(messages: list[dict[str, Any]], **params: Any) -> Any:
    return build_keys(
        model="gpt-4o-mini",
        messages=messages,
        params=params,
        partition={},
        options=KeyOptions(),
    )


def scope(messages: list[dict[str, Any]]) -> str:
    return str(keys_of(messages).scope)


def picture(**fields: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": QUESTION, **fields}]


def image_parts(url: str) -> list[dict[str, Any]]:
    content = [
        {"type": "text", "text": QUESTION},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    return [{"role": "user", "content": content}]


def test_the_asking_messages_other_fields_keep_semantic_scopes_apart() -> None:
    """Another attachment on the last user message ("images", "file_id") is
    another question: never served the first one's answer, exact or
    semantic. Image parts in its content keep answers apart as well."""
    assert scope(picture(images=["cat"])) != scope(picture(images=["dog"]))
    assert scope(picture(file_id="f1")) != scope(picture(file_id="f2"))
    assert scope(picture(images=["cat"])) != scope(picture())
    assert scope(picture(name="alice")) != scope(picture(name="bob"))
    gov, llm, provider = governed()
    with gov.task(team="t") as task:
        cat = ask(llm, picture(images=["cat"]))
        dog = ask(llm, picture(images=["dog"]))
        first = ask(llm, picture(file_id="f1"))
        second = ask(llm, picture(file_id="f2"))
        red = ask(llm, image_parts("https://example.com/red.png"))
        blue = ask(llm, image_parts("https://example.com/blue.png"))
        again = ask(llm, picture(images=["cat"]))
    gov.close()
    assert [cat, dog, first, second, red, blue] == [f"answer {n}" for n in range(1, 7)]
    assert again == cat  # the same attachment is still served
    assert (len(provider.sent), task.report().cache_hits) == (6, 1)


@pytest.mark.parametrize(
    "fields",
    [
        {"id": "m1"},
        {"timestamp": "2026-12-06T10:00:00Z"},
        {"cache_control": {"type": "ephemeral"}},
        {"name": None},
        {"name": ""},
    ],
)
def test_fields_that_change_per_request_keep_one_semantic_scope(
    fields: dict[str, Any],
) -> None:
    """A message id (LangGraph gives every message one), a timestamp or a
    provider's cache marker is not the question: the same question with or
    without it is still served from the cache."""
    assert scope(picture(**fields)) == scope(picture())
    if "name" not in fields:
        with_name = scope(picture(name="alice", **fields))
        assert with_name == scope(picture(name="alice"))


def test_message_ids_on_every_turn_leave_the_keys_alone() -> None:
    """The same conversation rebuilt with new message ids (LangGraph gives
    each message one) has the same exact and semantic keys."""

    def conversation(tag: str) -> list[dict[str, Any]]:
        turns = [
            ("system", "Be brief."),
            ("user", "What is the capital of Peru?"),
            ("assistant", "Lima."),
            ("user", "And its population?"),
        ]
        return [
            {"role": role, "content": text, "id": f"{tag}-{n}", "timestamp": tag}
            for n, (role, text) in enumerate(turns)
        ]

    first, second = keys_of(conversation("run-1")), keys_of(conversation("run-2"))
    assert (first.exact, first.scope) == (second.exact, second.scope)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"temperature": 1.9}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "logprobs"),
    ],
)
def test_parameters_in_extra_body_are_held_to_the_cacheable_rules(
    body: dict[str, Any], reason: str
) -> None:
    """extra_body is merged into the body sent, so its temperature and
    logprobs bar the cache as they do at the top level."""
    assert keys_of(picture(), extra_body=body).uncacheable == reason
    gov, llm, provider = governed()
    with gov.task(team="t") as task:
        answers = [ask(llm, "Write a creative slogan.", extra_body=body)]
        answers.append(ask(llm, "Write a creative slogan.", extra_body=body))
        cool = {"temperature": 0.2}
        answers.append(ask(llm, "Write a creative slogan.", extra_body=cool))
        answers.append(ask(llm, "Write a creative slogan.", extra_body=cool))
    gov.close()
    assert answers == ["answer 1", "answer 2", "answer 3", "answer 3"]
    assert (len(provider.sent), task.report().cache_hits) == (3, 1)


@pytest.mark.parametrize("empty", ["", "  \n\t ", "\u200b", " \ufeff\u2060 "])
def test_an_empty_answer_is_not_stored(empty: str) -> None:
    """A provider's empty answer is not served to later requests, exact or
    semantic; the store says why it kept nothing."""
    gov, llm, provider = governed(empty)
    with gov.task(team="t") as task:
        glitch = ask(llm, "Summarize the attached report.")
        healthy = ask(llm, "Summarize the attached report.")
        paraphrase = ask(llm, "summarize the attached report")
    gov.close()
    assert (glitch, healthy, paraphrase) == (empty, "answer 2", "answer 2")
    assert (len(provider.sent), task.report().cache_hits) == (2, 1)
    cache = ResponseCache(CACHE)
    miss = cache.lookup(model="gpt-4o-mini", messages=picture())
    assert not miss.hit
    stored = cache.store(
        miss,
        message={"role": "assistant", "content": empty},
        model="gpt-4o-mini",
        cost_usd=Decimal(0),
    )
    assert (stored.stored, stored.reason) == (False, "empty_answer")


def test_a_pending_legacy_function_call_is_not_cached() -> None:
    """A conversation ending with an assistant function_call waits for the
    function's result, as one ending with tool_calls does."""
    call = {"name": "get_balance", "arguments": "{}"}
    messages = [
        {"role": "user", "content": "What is my balance?"},
        {"role": "assistant", "content": None, "function_call": call},
    ]
    assert keys_of(messages).uncacheable == "pending_tool"
    gov, llm, provider = governed()
    with gov.task(team="t") as task:
        answers = [ask(llm, messages), ask(llm, messages)]
    gov.close()
    assert answers == ["answer 1", "answer 2"]
    assert (len(provider.sent), task.report().cache_hits) == (2, 0)


def test_a_call_inside_another_governors_task_skips_the_cache(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Governor g2's client called inside g1's tasks is not charged to their
    tenants, so it never reads or fills g2's unnamed partition: tenant B is
    not served tenant A's answer. A call that names its tenant still is."""
    g1 = Governor(Policy())
    g2, llm, provider = governed()
    question = "What is our internal discount code?"
    with caplog.at_level(logging.WARNING, logger="governor"):
        with g1.task(team="A"):
            tenant_a = ask(llm, question)
        with g1.task(team="B"):
            tenant_b = ask(llm, question)
        with g1.task(team="A"):
            named = [ask(llm, question, metadata={"team": "A"}) for _ in range(2)]
    g1.close()
    g2.close()
    assert (tenant_a, tenant_b) == ("answer 1", "answer 2")
    assert named == ["answer 3", "answer 3"]
    assert len(provider.sent) == 3
    assert "neither served from nor stored in that cache" in caplog.text


@pytest.mark.parametrize("text", ["\U0001fae8", "\u00e9", "\u4e2d"])
def test_an_answer_of_one_visible_character_is_stored(text: str) -> None:
    """A newer emoji this Python's Unicode tables do not know yet, an
    accented letter or a Chinese character is an answer."""
    cache = ResponseCache(CACHE)
    miss = cache.lookup(model="gpt-4o-mini", messages=picture())
    stored = cache.store(
        miss,
        message={"role": "assistant", "content": text},
        model="gpt-4o-mini",
        cost_usd=Decimal(0),
    )
    assert (stored.stored, stored.reason) == (True, None)
