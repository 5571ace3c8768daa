"""A provider reporting more prompt tokens than the call's hold allowed.

A proxy that adds a system prompt of its own bills tokens the governor never
saw: the call is charged as reported (that is the bill) and a warning names
the model, the reported and the held prompt tokens, once per model.
"""

from __future__ import annotations

import logging
import math
from decimal import Decimal
from typing import Any

import litellm
import pytest

from governor import Budget, Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Say hello to the world please"}]
# The byte bound the hold takes: 16 tokens a request, 8 a message, 29 bytes.
HELD = 16 + 8 + 29
IN_PRICE = Decimal("0.15e-6")
OUT_PRICE = Decimal("0.6e-6")
ENGINE = "governor._engine"


def answer(prompt_tokens: int, completion_tokens: int = 10) -> dict[str, Any]:
    """A mock answer whose provider reports this usage."""
    return {
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hello"},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def ask(llm: GovernedLiteLLM, prompt_tokens: int, **params: Any) -> None:
    messages = params.pop("messages", MESSAGES)
    llm.completion(
        model=MODEL,
        messages=messages,
        max_tokens=50,
        mock_response=answer(prompt_tokens),
        **params,
    )


def prompt_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == ENGINE and "prompt tokens for a call" in r.getMessage()
    ]


def test_prompt_past_the_hold_is_charged_as_reported_and_warned_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """5,000 prompt tokens reported for a 53-token hold: charged all 5,000
    (past the $0.0001 limit), and one warning with both numbers."""
    gov = Governor(Policy(budgets=[Budget(scope="team", max_usd="0.0001")]))
    llm = GovernedLiteLLM(gov)
    with caplog.at_level(logging.WARNING, logger=ENGINE):
        with gov.task(team="o") as task:
            ask(llm, 5000)
        with gov.task(team="p"):
            ask(llm, 6000)  # the same model: not logged again
    gov.close()
    assert task.cost_usd == 5000 * IN_PRICE + 10 * OUT_PRICE
    assert task.report().input_tokens == 5000
    warned = prompt_warnings(caplog)
    assert len(warned) == 1
    assert warned[0].startswith(
        f"the provider reported 5000 prompt tokens for a call to {MODEL} whose "
        f"hold allowed {HELD} for its prompt; it is charged as reported"
    )
    assert "put what the proxy adds in the messages" in warned[0]
    assert "Logged once per model." in warned[0]


def test_prompt_within_the_hold_is_not_warned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A provider reporting the held prompt exactly, or less, is no overrun."""
    gov = Governor(Policy(budgets=[Budget(scope="team", max_usd="0.0001")]))
    llm = GovernedLiteLLM(gov)
    with caplog.at_level(logging.WARNING, logger=ENGINE), gov.task(team="o") as task:
        ask(llm, HELD)
        ask(llm, 7)
    gov.close()
    assert task.report().input_tokens == HELD + 7
    assert prompt_warnings(caplog) == []
    past = Governor()
    with caplog.at_level(logging.WARNING, logger=ENGINE):
        ask(GovernedLiteLLM(past), HELD + 1)
    past.close()
    assert len(prompt_warnings(caplog)) == 1  # one token past it is


def test_a_counted_hold_is_compared_with_its_count_and_margin(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Where the byte bound did not fit and the prompt was counted, the hold
    is the count plus 5% and 8 tokens; one token past that is warned of."""
    messages = [{"role": "user", "content": "word " * 80}]
    counted = int(litellm.token_counter(model=MODEL, messages=messages))
    held = math.ceil(counted * 1.05) + 8
    assert 16 + 8 + 400 + 50 > 200 >= held + 50  # refused by bytes, fits counted
    gov = Governor(Policy(budgets=[Budget(scope="team", max_tokens=200)]))
    llm = GovernedLiteLLM(gov)
    with caplog.at_level(logging.WARNING, logger=ENGINE):
        with gov.task(team="o"):
            ask(llm, held, messages=messages)
        assert prompt_warnings(caplog) == []
        with gov.task(team="p"):
            ask(llm, held + 1, messages=messages)
    gov.close()
    warned = prompt_warnings(caplog)
    assert len(warned) == 1
    assert f"reported {held + 1} prompt tokens" in warned[0]
    assert f"hold allowed {held} for its prompt" in warned[0]
