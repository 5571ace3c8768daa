"""Request normalisation: exact keys, semantic scopes and what is cacheable."""

from __future__ import annotations

from typing import Any

import pytest

from governor.cache import CacheKeys, KeyOptions, build_keys, normalize_query

Q = [{"role": "user", "content": "What is the capital of France?"}]


def keys(
    messages: list[dict[str, Any]] = Q,
    *,
    model: str = "gpt-4o-mini",
    options: KeyOptions | None = None,
    partition: dict[str, str] | None = None,
    **params: Any,
) -> CacheKeys:
    return build_keys(
        model=model,
        messages=messages,
        params=params,
        partition=partition or {},
        options=options or KeyOptions(),
    )


def ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def conversation(first: str, follow_up: str) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": first},
        {"role": "assistant", "content": f"An answer about {first}"},
        {"role": "user", "content": follow_up},
    ]


def test_edge_white_space_and_line_ends_do_not_change_the_exact_key() -> None:
    """Trailing spaces and CRLF line ends normalize away."""
    spaced = [{"role": "user", "content": "  What is the capital of France? \r\n"}]
    assert keys(spaced).exact == keys(Q).exact


def test_inner_white_space_changes_the_exact_key() -> None:
    """Indentation inside a message can be meaningful, so it stays in the key."""
    code = [{"role": "user", "content": "fix:\n    x = 1"}]
    flat = [{"role": "user", "content": "fix:\nx = 1"}]
    assert keys(code).exact != keys(flat).exact


def test_transport_parameters_do_not_change_the_exact_key() -> None:
    """stream, metadata and timeouts never change an answer."""
    plain = keys()
    assert keys(stream=True, metadata={"a": 1}, timeout=30).exact == plain.exact


@pytest.mark.parametrize(
    "change",
    [
        {"model": "gpt-4o"},
        {"temperature": 0.2},
        {"max_tokens": 50},
        {"response_format": {"type": "json_object"}},
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
    ],
)
def test_answer_changing_parts_change_the_exact_key(change: dict[str, Any]) -> None:
    """Model tier and answer-shaping parameters are part of the exact key."""
    assert keys(**change).exact != keys().exact


@pytest.mark.parametrize(
    "endpoint",
    [
        {"api_base": "http://127.0.0.1:8001/v1"},
        {"base_url": "http://127.0.0.1:8002/v1"},
        {"api_version": "2024-06-01"},
        {"custom_llm_provider": "openai"},
    ],
)
def test_another_endpoint_is_another_exact_key_and_scope(
    endpoint: dict[str, Any],
) -> None:
    """Two servers may answer under one model name: neither layer mixes them."""
    moved = keys(**endpoint)
    assert (moved.exact != keys().exact, moved.scope != keys().scope) == (True, True)


def test_a_single_text_part_equals_a_plain_string() -> None:
    """Content given as one text part keys like the same string."""
    parts = [{"role": "user", "content": [{"type": "text", "text": Q[0]["content"]}]}]
    assert keys(parts).exact == keys(Q).exact


def test_tool_call_ids_are_numbered_not_hashed() -> None:
    """Random tool-call ids do not make every agent turn a new key."""

    def turn(call_id: str) -> list[dict[str, Any]]:
        call = {"id": call_id, "type": "function", "function": {"name": "f"}}
        return [
            {"role": "user", "content": "look it up"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call_id, "content": "42"},
            {"role": "user", "content": "thanks, and then?"},
        ]

    assert keys(turn("call_abc")).exact == keys(turn("call_xyz")).exact


def test_partition_values_change_both_keys() -> None:
    """Two teams never share an exact key or a semantic scope."""
    a = keys(partition={"team": "a"})
    b = keys(partition={"team": "b"})
    assert (a.exact == b.exact, a.scope == b.scope) == (False, False)


def test_partition_scopes_not_configured_are_ignored() -> None:
    """Only the scopes in partition_by partition the cache."""
    a = keys(partition={"team": "a", "user": "u1"})
    b = keys(partition={"team": "a", "user": "u2"})
    assert a.exact == b.exact


def test_scope_ignores_the_last_question() -> None:
    """Two different questions in the same situation share a scope."""
    a = keys(conversation("Tell me about Rome", "Expand on that"))
    b = keys(conversation("Tell me about Rome", "Say more"))
    assert (a.scope == b.scope, a.exact == b.exact) == (True, False)


def test_scope_includes_the_earlier_conversation() -> None:
    """The same follow-up after different first turns has different scopes."""
    a = keys(conversation("Tell me about Rome", "Expand on that"))
    b = keys(conversation("Tell me about Paris", "Expand on that"))
    assert a.scope != b.scope


def test_scope_includes_the_system_prompt() -> None:
    """A different system prompt is a different scope."""
    a = keys([{"role": "system", "content": "Be terse."}, *Q])
    b = keys([{"role": "system", "content": "Answer in French."}, *Q])
    assert a.scope != b.scope


def test_scope_ignores_the_system_prompt_when_told() -> None:
    """scope_by_system_prompt=False shares a scope across system prompts."""
    options = KeyOptions(scope_by_system_prompt=False)
    a = keys([{"role": "system", "content": "Be terse."}, *Q], options=options)
    b = keys([{"role": "system", "content": "Be kind."}, *Q], options=options)
    assert a.scope == b.scope


def test_sampling_parameters_stay_out_of_the_scope() -> None:
    """Temperature changes the draw, not the kind of answer wanted."""
    assert keys(temperature=0.3).scope == keys(temperature=0.0).scope


def test_temperature_above_the_bound_is_uncacheable() -> None:
    """A request hotter than max_temperature is neither served nor stored."""
    options = KeyOptions(max_temperature=0.5)
    assert keys(options=options, temperature=0.9).uncacheable == "temperature"


def test_unset_temperature_is_cacheable() -> None:
    """A request that sets no temperature is cacheable."""
    assert keys(options=KeyOptions(max_temperature=0.0)).uncacheable is None


def test_pending_tool_result_is_uncacheable() -> None:
    """A request whose last message is a tool result is not cached."""
    messages = [*Q, {"role": "tool", "tool_call_id": "1", "content": "42"}]
    assert keys(messages).uncacheable == "pending_tool"


def test_pending_tool_call_is_uncacheable() -> None:
    """A request ending in an assistant tool call is not cached."""
    call = {"id": "1", "type": "function", "function": {"name": "f"}}
    messages = [*Q, {"role": "assistant", "content": None, "tool_calls": [call]}]
    assert keys(messages).uncacheable == "pending_tool"


def test_opt_out_of_both_directions_is_uncacheable() -> None:
    """cache={"no-cache": True, "no-store": True} opts a request out."""
    found = keys(cache={"no-cache": True, "no-store": True})
    assert (found.uncacheable, found.read, found.write) == ("opt_out", False, False)


def test_no_cache_alone_still_allows_storing() -> None:
    """cache={"no-cache": True} skips the lookup but keeps the answer."""
    found = keys(cache={"no-cache": True})
    assert (found.uncacheable, found.read, found.write) == (None, False, True)


def test_query_is_the_normalized_last_user_message() -> None:
    """The text the semantic layer embeds: runs of spaces within a line folded."""
    messages = [{"role": "user", "content": "  What  is the\u00a0capital\tof France? "}]
    assert keys(messages).query == "What is the capital of France?"


def test_image_question_skips_the_semantic_layer() -> None:
    """A question with an image can only be served by the exact layer."""
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}
    text = {"type": "text", "text": "what is this?"}
    found = keys([{"role": "user", "content": [text, image]}])
    assert (found.query, found.semantic_skip) == (None, "non_text_query")


def test_assistant_prefill_skips_the_semantic_layer() -> None:
    """A request that ends with an assistant prefill is exact-only."""
    found = keys([*Q, {"role": "assistant", "content": "The capital is"}])
    assert (found.query, found.semantic_skip) == (None, "not_last_turn")


@pytest.mark.parametrize(
    ("one", "other"),
    [
        # indentation decides what code does
        ("for i in x:\n    f(i)\ng()", "for i in x:\n    f(i)\n    g()"),
        ("    f()\ng()", "f()\ng()"),
        # compatibility forms that are other numbers
        ("Is 2³ prime?", "Is 23 prime?"),
        ("What does step ① say?", "What does step 1 say?"),
        ("Add 1½ cups", "Add 11\u20442 cups"),
    ],
)
def test_normalization_keeps_meaning_bearing_differences(one: str, other: str) -> None:
    """Indentation and superscripts survive both layers' normalization."""
    assert normalize_query(one) != normalize_query(other)
    assert keys(ask(one)).exact != keys(ask(other)).exact


@pytest.mark.parametrize(
    ("text", "query"),
    [
        ("  What  is\tit?  ", "What is it?"),
        (
            "\n\n  for i in x:\n      f(i)  \n\n\n  g()\n",
            "for i in x:\n    f(i)\n\ng()",
        ),
        ("ＧＰＴ－４ ｆｉｘ and ﬁle", "GPT-4 fix and file"),
        ("a\u00a0b\u3000c\r\nd", "a b c\nd"),
        ("x² + ½ + ③", "x² + ½ + ③"),
    ],
)
def test_the_query_folds_only_what_cannot_matter(text: str, query: str) -> None:
    """Spaces within a line, edge and repeated blank lines, width and ligatures."""
    assert normalize_query(text) == query


def test_the_exact_key_keeps_relative_indentation() -> None:
    """Indentation all lines share goes; one line's own indentation stays."""
    assert keys(ask("  if x:\n      f()")).exact == keys(ask("if x:\n    f()")).exact
    assert keys(ask("    f()\ng()")).exact != keys(ask("f()\ng()")).exact


@pytest.mark.parametrize("temperature", ["hot", float("nan"), [0.2]])
def test_an_unreadable_temperature_is_left_uncached_not_raised(
    temperature: Any,
) -> None:
    """The provider, not the cache, says what is wrong with the parameter."""
    assert keys(temperature=temperature).uncacheable == "temperature"


def test_the_gate_text_is_the_question_as_written() -> None:
    """Folding is for the embedding; the gate reads the question unfolded."""
    found = keys([{"role": "user", "content": "  Why is x\u00a0= 1  an  error? "}])
    assert (found.query, found.text) == (
        "Why is x = 1 an error?",
        "Why is x\u00a0= 1  an  error?",
    )


def test_litellm_per_call_ids_are_not_keyed_but_what_changes_the_answer_is() -> None:
    """A Router's per-call trace id and private state leave the key alone;
    LiteLLM's system prompt and credential name choose the answer."""
    base = keys()
    assert keys(litellm_trace_id="t-1", litellm_call_id="c-1") == base
    assert keys(_context_compaction_state=object()).exact == base.exact
    for name, value in (
        ("litellm_system_prompt", "Answer in French."),
        ("litellm_credential_name", "eu"),
    ):
        assert keys(**{name: value}).exact != base.exact
