"""instrument() warns of, or refuses, LiteLLM functions it does not govern."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import litellm
import pytest

from governor import ConfigError, Governor, UngovernedCall
from governor.adapters.litellm import instrument
from governor.testing import OfflineAnswer, install_offline_provider

LOGGER = "governor.adapters.litellm"


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """LiteLLM's ungoverned functions replaced by recorders of what was sent."""
    calls: list[str] = []

    def text_completion(*args: Any, **kwargs: Any) -> str:
        calls.append("text_completion")
        return "sent"

    async def aresponses(*args: Any, **kwargs: Any) -> str:
        calls.append("aresponses")
        return "sent"

    monkeypatch.setattr(litellm, "text_completion", text_completion)
    monkeypatch.setattr(litellm, "aresponses", aresponses)
    return calls


def test_warn_logs_once_per_function_and_sends(
    sent: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER), instrument(Governor()):
        answers = [litellm.text_completion(model="m", prompt="p") for _ in range(3)]

    warnings = [r.getMessage() for r in caplog.records if "not governed" in r.message]
    assert answers == ["sent"] * 3
    assert sent == ["text_completion"] * 3
    assert len(warnings) == 1
    assert warnings[0].startswith("litellm.text_completion() is not governed")
    assert "Use litellm.completion() with messages instead." in warnings[0]


def test_refuse_raises_before_sending(sent: list[str]) -> None:
    with (
        instrument(Governor(), ungoverned="refuse"),
        pytest.raises(UngovernedCall, match=r"litellm\.text_completion\(\)") as err,
    ):
        litellm.text_completion(model="m", prompt="p")

    assert sent == []
    assert err.value.function == "text_completion"
    assert err.value.to_dict()["code"] == "ungoverned_call"


def test_refuse_covers_async_functions_when_awaited(sent: list[str]) -> None:
    with instrument(Governor(), ungoverned="refuse"):
        pending = litellm.aresponses(model="m", input="hi")  # nothing raised yet
        with pytest.raises(UngovernedCall, match="acompletion"):
            asyncio.run(pending)

    assert sent == []


def test_allow_leaves_litellm_as_it_was(
    sent: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    original = litellm.text_completion

    with (
        caplog.at_level(logging.WARNING, logger=LOGGER),
        instrument(Governor(), ungoverned="allow"),
    ):
        assert litellm.text_completion is original
        litellm.text_completion(model="m", prompt="p")

    assert sent == ["text_completion"]
    assert [r for r in caplog.records if "not governed" in r.message] == []


def test_uninstrument_puts_the_functions_back(sent: list[str]) -> None:
    original = (litellm.text_completion, litellm.aresponses)

    with instrument(Governor(), ungoverned="refuse"):
        assert litellm.text_completion is not original[0]

    assert (litellm.text_completion, litellm.aresponses) == original


def test_an_unknown_mode_is_a_config_error_naming_the_modes() -> None:
    with pytest.raises(ConfigError, match=r"'warn'.*'refuse'.*'allow'"):
        instrument(Governor(), ungoverned="block")  # type: ignore[arg-type]


def test_a_responses_call_litellm_sends_as_chat_is_governed_not_refused() -> None:
    """The offline provider has no Responses API: LiteLLM bridges the call to
    the governed litellm.completion, so refuse lets it through and charges it."""
    install_offline_provider(speed=0)
    gov = Governor()

    with instrument(gov, ungoverned="refuse"), gov.task() as task:
        litellm.responses(
            model="offline/gpt-4o-mini", input="hello", max_output_tokens=20
        )

    assert task.report().calls == 1
    assert task.report().cost_usd > 0


def test_a_responses_call_sent_directly_is_refused() -> None:
    """OpenAI has a Responses API of its own: LiteLLM would send it as is."""
    with (
        instrument(Governor(), ungoverned="refuse"),
        pytest.raises(UngovernedCall, match="use_chat_completions_api=True"),
    ):
        litellm.responses(model="openai/gpt-4o", input="hello", api_key="sk-none")


def test_litellm_retrying_inside_a_governed_call_is_not_refused() -> None:
    """num_retries makes LiteLLM call completion_with_retries inside the
    governed call: that is LiteLLM calling itself, not an ungoverned call."""
    install_offline_provider(
        lambda model, messages, tools: OfflineAnswer(error="rate_limit"), speed=0
    )

    with (
        instrument(Governor(), ungoverned="refuse"),
        pytest.raises(litellm.RateLimitError),
    ):
        litellm.completion(
            model="offline/gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            num_retries=1,
            max_tokens=5,
        )
