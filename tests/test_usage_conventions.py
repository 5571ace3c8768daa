"""Golden costs for each provider's usage convention, at LiteLLM's bundled prices.

Each expected figure is worked by hand from the per-million prices in the
bundled map (noted beside each test), so a change in how usage is read or how
cost is summed shows up as a wrong number.
"""

from __future__ import annotations

import os
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from governor._errors import ConfigError
from governor.pricing import (
    RateCard,
    Usage,
    usage_from_response,
    usage_from_stream_chunks,
)

# litellm fetches its price map over the network on import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

D = Decimal

# litellm loads, lazily, a module whose TypedDict makes pydantic warn; not ours.
pytestmark = pytest.mark.filterwarnings("ignore:Items? .*ReadOnly:UserWarning")


@pytest.fixture(scope="module")
def card() -> RateCard:
    """One rate card over LiteLLM's bundled map."""
    return RateCard()


@pytest.fixture(scope="module")
def litellm() -> Any:
    """The litellm module, imported only by the tests that use it."""
    import litellm

    return litellm


def test_openai_cached_tokens_are_part_of_prompt_tokens(card: RateCard) -> None:
    """gpt-4o-mini (0.15 in, 0.075 cached, 0.60 out): cached tokens leave the input."""
    usage = usage_from_response(
        {
            "prompt_tokens": 2000,
            "completion_tokens": 300,
            "total_tokens": 2300,
            "prompt_tokens_details": {"cached_tokens": 1024},
        }
    )
    assert usage == Usage(
        prompt_tokens=2000, completion_tokens=300, cache_read_tokens=1024
    )
    # 976 x 0.15 + 1024 x 0.075 + 300 x 0.60 per million
    assert card.cost("gpt-4o-mini", usage).usd == D("0.0004032")


def test_litellm_usage_object_with_cached_tokens(card: RateCard, litellm: Any) -> None:
    """gpt-4o (2.50 in, 1.25 cached, 10 out) from LiteLLM's own Usage object."""
    raw = litellm.Usage(
        prompt_tokens=1500,
        completion_tokens=200,
        total_tokens=1700,
        prompt_tokens_details={"cached_tokens": 1000},
    )
    usage = usage_from_response(raw)
    # 500 x 2.50 + 1000 x 1.25 + 200 x 10 per million
    assert card.cost("gpt-4o", usage).usd == D("0.0045")


def test_anthropic_cache_tokens_are_apart_from_input(card: RateCard) -> None:
    """claude-sonnet-4-6 (3 in, 0.30 read, 3.75 write, 15 out): cache adds to input."""
    usage = usage_from_response(
        {
            "input_tokens": 100,
            "cache_read_input_tokens": 5000,
            "cache_creation_input_tokens": 1000,
            "output_tokens": 400,
        }
    )
    assert usage == Usage(
        prompt_tokens=6100,
        completion_tokens=400,
        cache_read_tokens=5000,
        cache_write_tokens=1000,
    )
    # 100 x 3 + 5000 x 0.30 + 1000 x 3.75 + 400 x 15 per million
    assert card.cost("claude-sonnet-4-6", usage).usd == D("0.01155")


def test_anthropic_usage_normalised_by_litellm_is_not_double_counted(
    card: RateCard, litellm: Any
) -> None:
    """LiteLLM folds Anthropic cache tokens into prompt_tokens; they count once."""
    from litellm.llms.anthropic.chat.transformation import AnthropicConfig

    raw = AnthropicConfig().calculate_usage(
        {
            "input_tokens": 100,
            "cache_read_input_tokens": 5000,
            "cache_creation_input_tokens": 1000,
            "output_tokens": 400,
        },
        None,
    )
    assert raw.prompt_tokens == 6100
    usage = usage_from_response(raw)
    assert (usage.prompt_tokens, usage.cache_read_tokens, usage.cache_write_tokens) == (
        6100,
        5000,
        1000,
    )
    assert card.cost("anthropic/claude-sonnet-4-6", usage).usd == D("0.01155")


def test_anthropic_usage_as_object_attributes(card: RateCard) -> None:
    """An SDK-style object with attributes reads like the dict."""
    raw = SimpleNamespace(
        input_tokens=100,
        cache_read_input_tokens=5000,
        cache_creation_input_tokens=1000,
        output_tokens=400,
    )
    assert card.cost("claude-sonnet-4-6", usage_from_response(raw)).usd == D("0.01155")


def test_langchain_usage_metadata_includes_cache(card: RateCard) -> None:
    """claude-haiku-4-5 (1 in, 0.10 read, 1.25 write, 5 out) via usage_metadata."""
    usage = usage_from_response(
        {
            "input_tokens": 3000,
            "output_tokens": 250,
            "total_tokens": 3250,
            "input_token_details": {"cache_read": 2000, "cache_creation": 500},
        }
    )
    assert usage == Usage(
        prompt_tokens=3000,
        completion_tokens=250,
        cache_read_tokens=2000,
        cache_write_tokens=500,
    )
    # 500 x 1 + 2000 x 0.10 + 500 x 1.25 + 250 x 5 per million
    assert card.cost("claude-haiku-4-5", usage).usd == D("0.002575")


def test_langchain_ai_message_is_read(card: RateCard) -> None:
    """A LangChain AIMessage is read through its usage_metadata."""
    from langchain_core.messages import AIMessage

    message = AIMessage(
        content="hi",
        usage_metadata={
            "input_tokens": 3000,
            "output_tokens": 250,
            "total_tokens": 3250,
            "input_token_details": {"cache_read": 2000, "cache_creation": 500},
        },
    )
    assert card.cost("claude-haiku-4-5", usage_from_response(message)).usd == D(
        "0.002575"
    )


_GEMINI = {
    "promptTokenCount": 1200,
    "cachedContentTokenCount": 400,
    "candidatesTokenCount": 300,
    "thoughtsTokenCount": 700,
    "totalTokenCount": 2200,
}


def test_gemini_thoughts_are_added_to_candidates(card: RateCard) -> None:
    """gemini-2.5-flash (0.30 in, 0.03 cached, 2.50 out and thoughts)."""
    usage = usage_from_response({"usageMetadata": _GEMINI})
    assert usage == Usage(
        prompt_tokens=1200,
        completion_tokens=1000,
        cache_read_tokens=400,
        reasoning_tokens=700,
    )
    # 800 x 0.30 + 400 x 0.03 + 300 x 2.50 + 700 x 2.50 per million
    assert card.cost("gemini/gemini-2.5-flash", usage).usd == D("0.002752")


def test_gemini_snake_case_object_reads_the_same() -> None:
    """google-genai's snake_case usage_metadata object reads like the REST dict."""
    metadata = SimpleNamespace(
        prompt_token_count=1200,
        cached_content_token_count=400,
        candidates_token_count=300,
        thoughts_token_count=700,
        total_token_count=2200,
    )
    response = SimpleNamespace(usage_metadata=metadata)
    assert usage_from_response(response) == usage_from_response(_GEMINI)


def test_gemini_candidates_that_already_hold_thoughts() -> None:
    """When the total shows thoughts inside candidates they are not added twice."""
    inclusive = {**_GEMINI, "candidatesTokenCount": 1000}
    usage = usage_from_response(inclusive)
    assert (usage.completion_tokens, usage.reasoning_tokens) == (1000, 700)


def test_openai_reasoning_tokens(card: RateCard) -> None:
    """gpt-5-mini (0.25 in, 2 out): reasoning tokens are billed inside completion."""
    usage = usage_from_response(
        {
            "prompt_tokens": 500,
            "completion_tokens": 2000,
            "completion_tokens_details": {"reasoning_tokens": 1500},
        }
    )
    assert usage.reasoning_tokens == 1500
    cost = card.cost("gpt-5-mini", usage)
    assert (cost.breakdown["output"], cost.breakdown["reasoning"]) == (
        D("0.001"),
        D("0.003"),
    )
    # 500 x 0.25 + 500 x 2 + 1500 x 2 per million
    assert cost.usd == D("0.004125")


def test_openai_responses_api_usage(card: RateCard) -> None:
    """o3-mini (1.10 in, 0.55 cached, 4.40 out) from a Responses API usage."""
    usage = usage_from_response(
        {
            "input_tokens": 1000,
            "input_tokens_details": {"cached_tokens": 200},
            "output_tokens": 800,
            "output_tokens_details": {"reasoning_tokens": 600},
            "total_tokens": 1800,
        }
    )
    assert usage == Usage(
        prompt_tokens=1000,
        completion_tokens=800,
        cache_read_tokens=200,
        reasoning_tokens=600,
    )
    # 800 x 1.10 + 200 x 0.55 + 200 x 4.40 + 600 x 4.40 per million
    assert card.cost("o3-mini", usage).usd == D("0.00451")


def test_tier_boundary_at_the_threshold(card: RateCard) -> None:
    """gemini-2.5-pro at exactly 200k prompt tokens bills the base 1.25 / 10."""
    usage = Usage(prompt_tokens=200_000, completion_tokens=1000)
    assert card.cost("gemini/gemini-2.5-pro", usage).usd == D("0.26")


def test_tier_boundary_above_the_threshold(card: RateCard) -> None:
    """One token past 200k bills every token at 2.50 / 15."""
    usage = Usage(prompt_tokens=200_001, completion_tokens=1000)
    assert card.cost("gemini/gemini-2.5-pro", usage).usd == D("0.5150025")


def test_tier_applies_to_cached_tokens(card: RateCard) -> None:
    """Above the threshold cached tokens take the tier's 0.25 cache price."""
    usage = Usage(prompt_tokens=300_000, cache_read_tokens=100_000)
    # 200000 x 2.50 + 100000 x 0.25 per million
    assert card.cost("gemini/gemini-2.5-pro", usage).usd == D("0.525")


def test_costs_match_litellms_own_arithmetic(card: RateCard, litellm: Any) -> None:
    """Our exact figure equals LiteLLM's float cost for an Anthropic cache call."""
    from litellm.llms.anthropic.chat.transformation import AnthropicConfig

    raw = AnthropicConfig().calculate_usage(
        {
            "input_tokens": 120,
            "cache_read_input_tokens": 3000,
            "cache_creation_input_tokens": 700,
            "output_tokens": 90,
        },
        None,
    )
    prompt_usd, completion_usd = litellm.cost_per_token(
        model="claude-sonnet-4-6", usage_object=raw
    )
    ours = card.cost("claude-sonnet-4-6", usage_from_response(raw)).usd
    assert abs(ours - D(repr(prompt_usd + completion_usd))) < D("1e-12")


def test_stream_usage_only_in_the_last_chunk(card: RateCard, litellm: Any) -> None:
    """A LiteLLM stream with include_usage yields its usage on the last chunk."""
    chunks = list(
        litellm.completion(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hello there"}],
            mock_response="hi how are you",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert [getattr(c, "usage", None) is not None for c in chunks[:-1]] == [False] * (
        len(chunks) - 1
    )
    usage = usage_from_stream_chunks(chunks)
    assert usage == Usage(prompt_tokens=9, completion_tokens=4)
    # 9 x 0.15 + 4 x 0.60 per million
    assert card.cost("gpt-4o-mini", usage).usd == D("0.00000375")


def test_stream_without_usage_gives_none(litellm: Any) -> None:
    """A stream that never reports usage yields None, for the caller to count."""
    chunks = list(
        litellm.completion(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hello there"}],
            mock_response="hi how are you",
            stream=True,
        )
    )
    assert usage_from_stream_chunks(chunks) is None


def test_locally_counted_stream_cost_is_marked_estimated(card: RateCard) -> None:
    """Usage counted locally for a stream without usage prices as estimated."""
    counted = Usage(prompt_tokens=9, completion_tokens=4, estimated=True)
    cost = card.cost("gpt-4o-mini", counted)
    assert (cost.usd, cost.estimated, cost.source) == (
        D("0.00000375"),
        True,
        "price_map",
    )


def test_openai_sse_chunks_as_dicts() -> None:
    """Raw OpenAI stream chunks carry usage null until the final one."""
    chunks = [
        {"choices": [{"delta": {"content": "a"}}], "usage": None},
        {"choices": [{"delta": {"content": "b"}}], "usage": None},
        {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 2}},
    ]
    assert usage_from_stream_chunks(chunks) == Usage(
        prompt_tokens=12, completion_tokens=2
    )


def test_langchain_chunk_increments_are_summed() -> None:
    """LangChain message chunks carry usage increments, which add up."""
    from langchain_core.messages import AIMessageChunk

    chunks = [
        AIMessageChunk(
            content="a",
            usage_metadata={"input_tokens": 10, "output_tokens": 0, "total_tokens": 10},
        ),
        AIMessageChunk(content="b"),
        AIMessageChunk(
            content="c",
            usage_metadata={
                "input_tokens": 0,
                "output_tokens": 5,
                "total_tokens": 5,
                "output_token_details": {"reasoning": 2},
            },
        ),
    ]
    assert usage_from_stream_chunks(chunks) == Usage(
        prompt_tokens=10, completion_tokens=5, reasoning_tokens=2
    )


def test_whole_litellm_response_is_read(litellm: Any) -> None:
    """A LiteLLM ModelResponse is read through its usage."""
    response = litellm.completion(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        mock_response="hello",
    )
    assert usage_from_response(response) == Usage(
        prompt_tokens=10, completion_tokens=20
    )


def test_unknown_shape_names_the_keys_seen() -> None:
    """An unreadable object raises ConfigError listing its keys."""
    with pytest.raises(ConfigError) as caught:
        usage_from_response({"tokens_in": 3, "tokens_out": 4})
    assert "['tokens_in', 'tokens_out']" in str(caught.value)


def test_non_numeric_count_is_rejected() -> None:
    """A token count that is not a whole number raises ConfigError."""
    with pytest.raises(ConfigError, match="prompt_tokens"):
        usage_from_response({"prompt_tokens": "12", "completion_tokens": 1})


def test_prompt_reported_net_of_cache_is_made_whole() -> None:
    """Cache tokens larger than prompt_tokens mean the prompt excluded them."""
    usage = usage_from_response(
        {
            "prompt_tokens": 100,
            "completion_tokens": 5,
            "cache_read_input_tokens": 5000,
            "cache_creation_input_tokens": 1000,
        }
    )
    assert (usage.prompt_tokens, usage.cache_read_tokens) == (6100, 5000)


def test_a_usage_passes_through_unchanged() -> None:
    """A governor Usage, estimated or not, is returned as it is."""
    counted = Usage(prompt_tokens=9, completion_tokens=4, estimated=True)
    assert usage_from_response(counted) is counted


# gpt-4o-audio-preview-2024-12-17: text 2.50 in / 10 out, audio 40 in / 80 out.
_AUDIO_USAGE = {
    "prompt_tokens": 1000,
    "completion_tokens": 500,
    "total_tokens": 1500,
    "prompt_tokens_details": {"audio_tokens": 800, "text_tokens": 200},
    "completion_tokens_details": {"audio_tokens": 400, "text_tokens": 100},
}


def test_openai_audio_tokens_are_billed_at_audio_prices(card: RateCard) -> None:
    """200 text in, 800 audio in, 100 text out, 400 audio out."""
    usage = usage_from_response(_AUDIO_USAGE)
    assert (usage.audio_input_tokens, usage.audio_output_tokens) == (800, 400)
    cost = card.cost("openai/gpt-4o-audio-preview-2024-12-17", usage)
    # 200*2.5e-6 + 800*4e-5 + 100*1e-5 + 400*8e-5
    assert cost.usd == D("0.0655")
    assert cost.breakdown["audio_input"] == D("0.032")
    assert cost.breakdown["audio_output"] == D("0.032")


def test_audio_costs_match_litellms_own_arithmetic(
    card: RateCard, litellm: Any
) -> None:
    """The exact figure equals LiteLLM's cost for the same audio usage, cached
    audio and all, and the integer path gives it too."""
    from governor._money import usd_to_nanos

    raw = {
        **_AUDIO_USAGE,
        "prompt_tokens_details": {
            "audio_tokens": 800,
            "text_tokens": 200,
            "cached_tokens": 300,
            "cached_tokens_details": {"audio_tokens": 100, "text_tokens": 200},
        },
    }
    usage = usage_from_response(raw)
    assert (usage.cache_read_tokens, usage.audio_cache_read_tokens) == (300, 100)
    assert usage.audio_input_tokens == 700
    # gemini-2.5-flash prices cached audio apart (0.10 against 0.03 for text).
    for model in ("gpt-audio-mini", "gemini-2.5-flash"):
        prompt_usd, completion_usd = litellm.cost_per_token(
            model=model, usage_object=litellm.Usage(**raw)
        )
        ours = card.cost(model, usage).usd
        assert abs(ours - D(repr(prompt_usd + completion_usd))) < D("1e-12"), model
        assert card.rate(model).cost_nanos(usage) == usd_to_nanos(ours)


def test_langchain_audio_details_are_read() -> None:
    """LangChain's input and output token details name audio ``audio``."""
    usage = usage_from_response(
        {
            "input_tokens": 50,
            "output_tokens": 30,
            "input_token_details": {"audio": 40},
            "output_token_details": {"audio": 25},
        }
    )
    assert (usage.audio_input_tokens, usage.audio_output_tokens) == (40, 25)


def test_audio_parts_larger_than_their_wholes_bill_as_litellm_does() -> None:
    """Prompt audio bills only what the cache left; output parts bill in full."""
    usage = usage_from_response(
        {
            "prompt_tokens": 100,
            "completion_tokens": 10,
            "prompt_tokens_details": {"cached_tokens": 60, "audio_tokens": 90},
            "completion_tokens_details": {"audio_tokens": 12, "reasoning_tokens": 3},
        }
    )
    assert usage == Usage(
        prompt_tokens=100,
        completion_tokens=15,
        cache_read_tokens=60,
        reasoning_tokens=3,
        audio_input_tokens=40,
        audio_output_tokens=12,
    )
