"""The offline LiteLLM provider and the shipped recorded data."""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import litellm
import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_litellm import ChatLiteLLM

from governor._errors import ConfigError
from governor.pricing import Usage
from governor.testing._offline import (
    ENV_OFFLINE_SPEED,
    ENV_PROVIDER,
    OfflineAnswer,
    OfflineProvider,
    install_offline_provider,
    latency_profile,
    offline_model,
    stands_in_for,
    uninstall_offline_provider,
)
from governor.testing._recorded import (
    load_prompts,
    rebuild,
    recorded_answer,
)

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
DEFAULT_TEXT = (
    "[offline gpt-4o-mini #da697446] A stand-in answer to: "
    "What is the capital of France?"
)


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[OfflineProvider]:
    """Install the offline provider with no latency, and remove it afterwards."""
    monkeypatch.setattr(litellm, "suppress_debug_info", True)
    installed = install_offline_provider(speed=0)
    installed.clear_calls()
    yield installed
    installed.clear_calls()
    uninstall_offline_provider()


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def _add_responder(
    model: str, messages: list[dict[str, Any]], tools: list[Any] | None
) -> str | OfflineAnswer | None:
    if messages[-1]["role"] == "tool":
        return f"The sum is {messages[-1]['content']}."
    if tools:
        return OfflineAnswer(
            tool_calls=[{"name": "add", "arguments": {"a": 2, "b": 3}}]
        )
    return None


def _counted(model: str, messages: list[dict[str, Any]], answer: str) -> Usage:
    return Usage(
        prompt_tokens=litellm.token_counter(model=model, messages=messages),
        completion_tokens=litellm.token_counter(model=model, text=answer),
    )


# --- model names and the provider switch -------------------------------------


def test_offline_model_prefixes_when_switch_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With GOVERNOR_PROVIDER unset a model name is routed to the offline provider."""
    monkeypatch.delenv(ENV_PROVIDER, raising=False)
    assert offline_model("gpt-4o-mini") == "offline/gpt-4o-mini"


def test_offline_model_keeps_name_when_live(monkeypatch: pytest.MonkeyPatch) -> None:
    """GOVERNOR_PROVIDER=live returns the real model name unchanged."""
    monkeypatch.setenv(ENV_PROVIDER, "live")
    assert offline_model("claude-haiku-4-5") == "claude-haiku-4-5"


def test_offline_model_does_not_double_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name that already has the offline prefix is returned as is."""
    monkeypatch.setenv(ENV_PROVIDER, "offline")
    assert offline_model("offline/gpt-4o") == "offline/gpt-4o"


def test_offline_model_rejects_unknown_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown GOVERNOR_PROVIDER value fails and names the accepted values."""
    monkeypatch.setenv(ENV_PROVIDER, "cloud")
    with pytest.raises(ConfigError, match=r"'offline'.*'live'"):
        offline_model("gpt-4o")


def test_stands_in_for_strips_prefix_only() -> None:
    """stands_in_for names the real model of an offline name and None otherwise."""
    assert (stands_in_for("offline/gpt-4o"), stands_in_for("gpt-4o")) == (
        "gpt-4o",
        None,
    )


# --- plain completions ---------------------------------------------------------


def test_completion_reports_real_model_name(provider: OfflineProvider) -> None:
    """The response names the real model the offline provider stands in for."""
    response = litellm.completion(model="offline/gpt-4o-mini", messages=MESSAGES)
    assert response.model == "gpt-4o-mini"


def test_completion_usage_counted_with_model_tokenizer(
    provider: OfflineProvider,
) -> None:
    """Prompt and completion tokens equal litellm.token_counter for that model."""
    response = litellm.completion(model="offline/claude-sonnet-4-6", messages=MESSAGES)
    expected = _counted(
        "claude-sonnet-4-6", MESSAGES, response.choices[0].message.content
    )
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (
        expected.prompt_tokens,
        expected.completion_tokens,
    )


def test_completion_usage_is_not_litellm_mock_numbers(
    provider: OfflineProvider,
) -> None:
    """The default answer to the sample prompt uses 14 prompt and 26 output tokens."""
    response = litellm.completion(model="offline/gpt-4o-mini", messages=MESSAGES)
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (14, 26)


def test_completion_cost_is_the_real_model_price(provider: OfflineProvider) -> None:
    """LiteLLM's response_cost equals the real model's price for the counted usage."""
    response = litellm.completion(model="offline/gpt-4o-mini", messages=MESSAGES)
    expected = sum(
        litellm.cost_per_token(
            model="gpt-4o-mini",
            prompt_tokens=response.usage.prompt_tokens,
            completion_tokens=response.usage.completion_tokens,
        )
    )
    assert response._hidden_params["response_cost"] == expected


def test_default_answer_is_stable(provider: OfflineProvider) -> None:
    """The default answer is derived from the prompt by sha256, same in every run."""
    response = litellm.completion(model="offline/gpt-4o-mini", messages=MESSAGES)
    assert response.choices[0].message.content == DEFAULT_TEXT


def test_recorded_answer_is_used_for_known_prompt(provider: OfflineProvider) -> None:
    """A RouterBench prompt is answered with that model's recorded response."""
    row = load_prompts("routerbench")[0]
    messages = [{"role": "user", "content": row["prompt"]}]
    response = litellm.completion(model="offline/gpt-4-1106-preview", messages=messages)
    assert (response.choices[0].message.content, provider.calls[0].source) == (
        row["responses"]["gpt-4-1106-preview"]["response"],
        "recorded",
    )


def test_responder_answer_wins_over_recording(provider: OfflineProvider) -> None:
    """An installed responder answers before the recorded answer is consulted."""
    install_offline_provider(lambda model, messages, tools: "B", speed=0)
    row = load_prompts("routerbench")[0]
    messages = [{"role": "user", "content": row["prompt"]}]
    response = litellm.completion(model="offline/gpt-4-1106-preview", messages=messages)
    assert response.choices[0].message.content == "B"


def test_responder_none_falls_through_to_default(provider: OfflineProvider) -> None:
    """A responder returning None leaves the call to the default answer."""
    install_offline_provider(lambda model, messages, tools: None, speed=0)
    litellm.completion(model="offline/gpt-4o-mini", messages=MESSAGES)
    assert (provider.calls[0].source, provider.calls[0].answer.text) == (
        "default",
        DEFAULT_TEXT,
    )


def test_responder_sees_real_model_and_messages(provider: OfflineProvider) -> None:
    """The responder gets the model without prefix, the messages and the tools."""
    seen: list[tuple[str, list[dict[str, Any]], Any]] = []

    def responder(
        model: str, messages: list[dict[str, Any]], tools: list[Any] | None
    ) -> str:
        seen.append((model, messages, tools))
        return "ok"

    install_offline_provider(responder, speed=0)
    litellm.completion(model="offline/gpt-4o", messages=MESSAGES)
    assert seen == [("gpt-4o", MESSAGES, None)]


def test_max_tokens_cuts_answer_and_reports_length(provider: OfflineProvider) -> None:
    """An answer longer than max_tokens is cut to it and finishes with 'length'."""
    response = litellm.completion(
        model="offline/gpt-4o-mini", messages=MESSAGES, max_tokens=5
    )
    text = response.choices[0].message.content
    assert (
        response.usage.completion_tokens,
        litellm.token_counter(model="gpt-4o-mini", text=text),
        response.choices[0].finish_reason,
    ) == (5, 5, "length")


def test_prompt_tokens_include_tool_definitions(provider: OfflineProvider) -> None:
    """With tools in the request, prompt tokens are counted with the tools."""
    tools = [
        {
            "type": "function",
            "function": {
                "name": "add",
                "description": "Add two integers.",
                "parameters": {
                    "type": "object",
                    "properties": {"a": {"type": "integer"}},
                },
            },
        }
    ]
    response = litellm.completion(
        model="offline/gpt-4o-mini", messages=MESSAGES, tools=tools
    )
    expected = litellm.token_counter(
        model="gpt-4o-mini", messages=MESSAGES, tools=tools
    )
    assert response.usage.prompt_tokens == expected


def test_calls_are_recorded_with_request_fields(provider: OfflineProvider) -> None:
    """A call is recorded with model, messages, max_tokens, stream, answer, usage."""
    litellm.completion(model="offline/gpt-4o-mini", messages=MESSAGES, max_tokens=64)
    call = provider.calls[0]
    assert (call.model, call.messages, call.max_tokens, call.stream) == (
        "gpt-4o-mini",
        MESSAGES,
        64,
        False,
    )
    assert (call.answer.text, call.usage) == (
        DEFAULT_TEXT,
        Usage(prompt_tokens=14, completion_tokens=26),
    )


# --- async and streams --------------------------------------------------------


async def test_acompletion_usage_counted(provider: OfflineProvider) -> None:
    """An async completion reports the same counted usage as a sync one."""
    response = await litellm.acompletion(model="offline/gpt-4o-mini", messages=MESSAGES)
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (14, 26)


def test_stream_final_chunk_carries_counted_usage(provider: OfflineProvider) -> None:
    """With include_usage the last stream chunk carries the counted usage."""
    chunks = list(
        litellm.completion(
            model="offline/gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        14,
        26,
        40,
    )


def test_stream_usage_only_on_last_chunk(provider: OfflineProvider) -> None:
    """With include_usage no chunk but the last carries usage."""
    chunks = list(
        litellm.completion(
            model="offline/gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert [getattr(c, "usage", None) is not None for c in chunks[:-1]] == [False] * (
        len(chunks) - 1
    )


def test_stream_without_include_usage_has_no_usage(provider: OfflineProvider) -> None:
    """Without include_usage no stream chunk carries usage."""
    chunks = list(
        litellm.completion(model="offline/gpt-4o-mini", messages=MESSAGES, stream=True)
    )
    assert [getattr(c, "usage", None) for c in chunks] == [None] * len(chunks)


def test_stream_pieces_join_to_the_answer(provider: OfflineProvider) -> None:
    """The streamed word pieces join to exactly the non-streamed answer."""
    chunks = list(
        litellm.completion(model="offline/gpt-4o-mini", messages=MESSAGES, stream=True)
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert (text, len(chunks) > 10) == (DEFAULT_TEXT, True)


async def test_async_stream_final_chunk_carries_usage(
    provider: OfflineProvider,
) -> None:
    """An async stream with include_usage ends with the counted usage."""
    stream = await litellm.acompletion(
        model="offline/gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (
        14,
        26,
    )


def test_stream_call_is_recorded_as_stream(provider: OfflineProvider) -> None:
    """A streamed call is recorded with stream=True and its usage."""
    list(
        litellm.completion(model="offline/gpt-4o-mini", messages=MESSAGES, stream=True)
    )
    call = provider.calls[0]
    assert (call.stream, call.usage) == (
        True,
        Usage(prompt_tokens=14, completion_tokens=26),
    )


# --- injected errors ----------------------------------------------------------

ERRORS = [
    ("rate_limit", litellm.RateLimitError),
    ("server_error", litellm.InternalServerError),
    ("timeout", litellm.Timeout),
    ("context_window", litellm.ContextWindowExceededError),
]


@pytest.mark.parametrize(("kind", "exc_type"), ERRORS)
def test_injected_error_raises_litellm_type(
    provider: OfflineProvider, kind: str, exc_type: type[Exception]
) -> None:
    """An answer with error=kind raises the matching LiteLLM exception."""
    install_offline_provider(
        lambda model, messages, tools: OfflineAnswer(error=kind),  # type: ignore[arg-type]
        speed=0,
    )
    with pytest.raises(exc_type):
        litellm.completion(model="offline/gpt-4o-mini", messages=MESSAGES)


@pytest.mark.parametrize(("kind", "exc_type"), ERRORS)
def test_injected_error_raises_before_stream(
    provider: OfflineProvider, kind: str, exc_type: type[Exception]
) -> None:
    """A stream with an injected error raises its own type, not a mid-stream error."""
    install_offline_provider(
        lambda model, messages, tools: OfflineAnswer(error=kind),  # type: ignore[arg-type]
        speed=0,
    )
    with pytest.raises(exc_type) as caught:
        list(
            litellm.completion(
                model="offline/gpt-4o-mini", messages=MESSAGES, stream=True
            )
        )
    assert not isinstance(caught.value, litellm.exceptions.MidStreamFallbackError)


async def test_injected_error_raises_in_async_stream(
    provider: OfflineProvider,
) -> None:
    """An async stream with an injected rate limit raises RateLimitError."""
    install_offline_provider(
        lambda model, messages, tools: OfflineAnswer(error="rate_limit"), speed=0
    )
    with pytest.raises(litellm.RateLimitError):
        stream = await litellm.acompletion(
            model="offline/gpt-4o-mini", messages=MESSAGES, stream=True
        )
        async for _ in stream:
            pass


def test_responder_exception_propagates(provider: OfflineProvider) -> None:
    """An exception raised by the responder reaches the caller as a LiteLLM error."""

    def responder(model: str, messages: Any, tools: Any) -> str:
        raise litellm.RateLimitError("slow down", llm_provider="offline", model=model)

    install_offline_provider(responder, speed=0)
    with pytest.raises(litellm.RateLimitError, match="slow down"):
        litellm.completion(model="offline/gpt-4o-mini", messages=MESSAGES)


def test_failed_call_is_recorded_with_zero_usage(provider: OfflineProvider) -> None:
    """A call with an injected error is recorded with no tokens billed."""
    install_offline_provider(
        lambda model, messages, tools: OfflineAnswer(error="server_error"), speed=0
    )
    with pytest.raises(litellm.InternalServerError):
        litellm.completion(model="offline/gpt-4o-mini", messages=MESSAGES)
    assert (provider.calls[0].usage, provider.calls[0].finish_reason) == (
        Usage(),
        "error",
    )


def test_unknown_error_kind_is_refused() -> None:
    """OfflineAnswer rejects an unknown error kind and lists the accepted ones."""
    with pytest.raises(ConfigError, match="rate_limit, server_error"):
        OfflineAnswer(error="boom")  # type: ignore[arg-type]


# --- installation, speed and latency ------------------------------------------


def test_install_is_idempotent(provider: OfflineProvider) -> None:
    """Installing twice returns the same provider and keeps one map entry."""
    again = install_offline_provider(speed=0)
    entries = [e for e in litellm.custom_provider_map if e["provider"] == "offline"]
    assert (again is provider, len(entries)) == (True, 1)


def test_speed_read_from_environment(
    provider: OfflineProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a speed argument GOVERNOR_OFFLINE_SPEED sets the latency multiplier."""
    monkeypatch.setenv(ENV_OFFLINE_SPEED, "0.25")
    assert install_offline_provider().speed == 0.25


@pytest.mark.parametrize("raw", ["fast", "inf", "nan", "-1"])
def test_invalid_speed_in_environment_is_refused(
    provider: OfflineProvider, monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    """A GOVERNOR_OFFLINE_SPEED that is not a finite number >= 0 fails, named."""
    monkeypatch.setenv(ENV_OFFLINE_SPEED, raw)
    with pytest.raises(ConfigError, match=f"GOVERNOR_OFFLINE_SPEED='{raw}'"):
        install_offline_provider()


def test_latency_profile_by_model_family() -> None:
    """Small models are simulated faster than standard ones, and large ones slower."""
    fast, standard, slow = (
        latency_profile("gpt-4o-mini"),
        latency_profile("gpt-4o"),
        latency_profile("claude-opus-4-8"),
    )
    assert (fast.tokens_per_s, standard.tokens_per_s, slow.tokens_per_s) == (
        150.0,
        70.0,
        35.0,
    )


def test_simulated_time_is_ttft_plus_decoding(provider: OfflineProvider) -> None:
    """A call's simulated time is (ttft + tokens / tokens_per_s) times the speed."""
    install_offline_provider(speed=0.001)
    litellm.completion(model="offline/gpt-4o-mini", messages=MESSAGES)
    assert provider.calls[0].simulated_s == pytest.approx((0.25 + 26 / 150.0) * 0.001)


# --- ChatLiteLLM --------------------------------------------------------------


def test_chat_litellm_invoke_usage(provider: OfflineProvider) -> None:
    """ChatLiteLLM.invoke reports the counted usage as usage_metadata."""
    message = ChatLiteLLM(model="offline/gpt-4o-mini").invoke(MESSAGES[0]["content"])
    assert (message.content, message.usage_metadata) == (
        DEFAULT_TEXT,
        {"input_tokens": 14, "output_tokens": 26, "total_tokens": 40},
    )


async def test_chat_litellm_ainvoke_usage(provider: OfflineProvider) -> None:
    """ChatLiteLLM.ainvoke reports the counted usage as usage_metadata."""
    message = await ChatLiteLLM(model="offline/gpt-4o-mini").ainvoke(
        MESSAGES[0]["content"]
    )
    assert message.usage_metadata == {
        "input_tokens": 14,
        "output_tokens": 26,
        "total_tokens": 40,
    }


def test_chat_litellm_stream_usage(provider: OfflineProvider) -> None:
    """ChatLiteLLM.stream joins to the answer and carries the counted usage."""
    total: AIMessageChunk | None = None
    for chunk in ChatLiteLLM(model="offline/gpt-4o-mini").stream(
        MESSAGES[0]["content"]
    ):
        total = chunk if total is None else total + chunk
    assert total is not None
    usage = total.usage_metadata or {}
    assert (total.content, usage.get("input_tokens"), usage.get("output_tokens")) == (
        DEFAULT_TEXT,
        14,
        26,
    )


def test_chat_litellm_bind_tools_returns_tool_call(provider: OfflineProvider) -> None:
    """A responder's tool call reaches ChatLiteLLM.bind_tools as a parsed tool call."""
    install_offline_provider(_add_responder, speed=0)
    message = ChatLiteLLM(model="offline/gpt-4o-mini").bind_tools([add]).invoke("2+3?")
    call = message.tool_calls[0]
    assert (call["name"], call["args"], call["id"].startswith("call_")) == (
        "add",
        {"a": 2, "b": 3},
        True,
    )


def test_chat_litellm_tool_round_trip(provider: OfflineProvider) -> None:
    """After the tool result is sent back the model answers with text."""
    install_offline_provider(_add_responder, speed=0)
    model = ChatLiteLLM(model="offline/gpt-4o-mini").bind_tools([add])
    first = model.invoke("2+3?")
    tool_call_id = first.tool_calls[0]["id"]
    second = model.invoke(
        [HumanMessage("2+3?"), first, ToolMessage("5", tool_call_id=tool_call_id)]
    )
    assert (second.content, provider.calls[1].messages[-1]["role"]) == (
        "The sum is 5.",
        "tool",
    )


def test_tool_call_usage_counts_name_and_arguments(provider: OfflineProvider) -> None:
    """A tool-call answer bills the tokens of the function name and its arguments."""
    install_offline_provider(_add_responder, speed=0)
    message = ChatLiteLLM(model="offline/gpt-4o-mini").bind_tools([add]).invoke("2+3?")
    expected = litellm.token_counter(model="gpt-4o-mini", text='add{"a": 2, "b": 3}')
    assert (message.usage_metadata or {}).get("output_tokens") == expected


async def test_chat_litellm_astream_tool_call(provider: OfflineProvider) -> None:
    """ChatLiteLLM.astream assembles a streamed tool call and its usage."""
    install_offline_provider(_add_responder, speed=0)
    model = ChatLiteLLM(model="offline/gpt-4o-mini").bind_tools([add])
    total: AIMessageChunk | None = None
    async for chunk in model.astream("2+3?"):
        total = chunk if total is None else total + chunk
    assert total is not None
    assert (
        total.tool_calls[0]["args"],
        (total.usage_metadata or {}).get("input_tokens"),
    ) == (
        {"a": 2, "b": 3},
        provider.calls[0].usage.prompt_tokens,
    )


# --- recorded data ------------------------------------------------------------


def test_prompt_sets_have_documented_sizes() -> None:
    """The shipped sets hold 40 HotpotQA, 40 GSM8K and 120 RouterBench rows."""
    sizes = [len(load_prompts(n)) for n in ("hotpotqa", "gsm8k", "routerbench")]
    assert sizes == [40, 40, 120]


def test_gsm8k_final_answer_is_extracted() -> None:
    """The first GSM8K problem's final answer is the number after '####'."""
    first = load_prompts("gsm8k")[0]
    assert (first["id"], first["final_answer"]) == ("gsm8k.test.0", "18")


def test_hotpotqa_first_question() -> None:
    """The first HotpotQA row is the Derrickson / Ed Wood comparison question."""
    first = load_prompts("hotpotqa")[0]
    assert (first["answer"], first["type"]) == ("yes", "comparison")


def test_recorded_answer_by_litellm_id_and_routerbench_name() -> None:
    """A recorded answer is found by LiteLLM id and by RouterBench model name."""
    prompt = load_prompts("routerbench")[0]["prompt"]
    assert (
        recorded_answer("anthropic.claude-v1", prompt),
        recorded_answer("claude-v1", prompt + "\n"),
    ) == ("D", "D")


def test_recorded_answer_unknown_prompt_is_none() -> None:
    """A prompt that was never recorded has no recorded answer."""
    assert recorded_answer("gpt-4-1106-preview", "What is 2+2?") is None


def test_load_prompts_returns_a_copy() -> None:
    """Changing returned rows does not change what the next call returns."""
    load_prompts("gsm8k")[0]["question"] = "changed"
    assert load_prompts("gsm8k")[0]["question"].startswith("Janet")


def test_load_prompts_unknown_name_fails() -> None:
    """An unknown prompt set name fails and lists the accepted names."""
    with pytest.raises(ValueError, match="gsm8k, hotpotqa, routerbench"):
        load_prompts("mmlu")  # type: ignore[arg-type]


def _routerbench_csv() -> bytes:
    from governor.testing._recorded import ROUTERBENCH_MODELS

    names = [*ROUTERBENCH_MODELS, "WizardLM/WizardLM-13B-V1.2"]
    header = ["", "sample_id", "prompt", "eval_name", *names]
    header += [f"{n}|model_response" for n in names]
    header += [f"{n}|total_cost" for n in names]
    header.append("oracle_model_to_route_to")
    values = ["7", "arc.1", "['Pick A or B']", "arc-challenge"]
    values += ["1.0" if n == "claude-v1" else "0.0" for n in names]
    values += ["['A']" for _ in names]
    values += ["0.0042639999999999996" for _ in names]
    values.append("WizardLM/WizardLM-13B-V1.2")
    text = io.StringIO()
    csv.writer(text).writerows([header, values])
    return gzip.compress(text.getvalue().encode())


def test_rebuild_converts_source_rows(tmp_path: Path) -> None:
    """rebuild() unwraps texts, maps model ids, cleans costs, recomputes the oracle."""
    routing = tmp_path / "src/routing/routerbench_subset"
    routing.mkdir(parents=True)
    for name in ("arc_challenge", "mbpp"):
        (routing / f"routerbench_0shot_{name}_train.csv.gz").write_bytes(
            _routerbench_csv()
        )
    (tmp_path / "src/prompts/hotpotqa").mkdir(parents=True)
    (tmp_path / "src/prompts/hotpotqa/hotpot_dev_v1_simplified.json").write_text(
        json.dumps([{"question": "Q?", "answer": "A", "type": "bridge"}])
    )
    (tmp_path / "src/prompts/gsm8k").mkdir(parents=True)
    (tmp_path / "src/prompts/gsm8k/test.jsonl").write_text(
        json.dumps({"question": "1+1?", "answer": "1+1=2\n#### 2"}) + "\n"
    )
    counts = rebuild(tmp_path / "src", tmp_path / "out")
    with gzip.open(tmp_path / "out/routerbench.jsonl.gz", "rt") as f:
        row = json.loads(f.readline())
    assert counts == {
        "routerbench.jsonl.gz": 2,
        "hotpotqa.jsonl.gz": 1,
        "gsm8k.jsonl.gz": 1,
    }
    assert (
        row["prompt"],
        row["oracle_model"],
        row["responses"]["anthropic.claude-v1"],
    ) == (
        "Pick A or B",
        "anthropic.claude-v1",
        {
            "correct": 1.0,
            "cost_usd": "0.004264",
            "response": "A",
            "routerbench_model": "claude-v1",
        },
    )


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_call_timeout_shorter_than_the_model_raises_timeout(
    provider: OfflineProvider, stream: bool
) -> None:
    """timeout= is honoured: a model slower than it raises litellm.Timeout,
    and a timeout longer than the model takes changes nothing."""
    import asyncio

    provider.speed = 1.0  # gpt-4o-mini's real time to first token and speed
    model = offline_model("gpt-4o-mini")
    with pytest.raises(litellm.Timeout, match="did not answer within"):
        response = litellm.completion(
            model=model, messages=MESSAGES, timeout=0.05, stream=stream
        )
        if stream:
            list(response)

    with pytest.raises(litellm.Timeout):
        asyncio.run(litellm.acompletion(model=model, messages=MESSAGES, timeout=0.05))

    provider.speed = 0
    answer = litellm.completion(model=model, messages=MESSAGES, timeout=0.05)
    assert answer.choices[0].message.content


def test_offline_counts_never_reach_for_a_hub_tokenizer(
    provider: OfflineProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model LiteLLM counts with a Hugging Face Hub tokenizer is counted
    without a download while the provider is installed (on a machine with no
    network the download retried for about 20 s); uninstalling gives LiteLLM
    its setting back."""
    from litellm import utils

    asked: list[str] = []

    def hub_tokenizer(model: str, *args: Any, **kwargs: Any) -> Any:
        asked.append(model)
        raise RuntimeError("no network in this test")

    monkeypatch.setattr(utils, "_return_huggingface_tokenizer", hub_tokenizer)
    uninstall_offline_provider()
    monkeypatch.setattr(litellm, "disable_hf_tokenizer_download", False)
    install_offline_provider(speed=0)
    response = litellm.completion(
        model="offline/together_ai/meta-llama/Llama-3-8b-chat-hf", messages=MESSAGES
    )
    assert asked == []
    assert response.usage.prompt_tokens > 0
    uninstall_offline_provider()
    assert litellm.disable_hf_tokenizer_download is False
