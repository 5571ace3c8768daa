"""Cascade fallbacks driven by a real HTTP stub server on 127.0.0.1."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from conftest import SpanCapture
from governor import Cascade, Governor, Policy
from governor.adapters._tokens import count_message_tokens
from governor.adapters.litellm import GovernedLiteLLM
from governor.policies._cascade import NonEmptyCheck, Retry, Tier
from governor.telemetry import attributes as attr
from governor.testing import StubBehaviour, StubServer

MESSAGES = [{"role": "user", "content": "Name a prime number."}]


def cascade(base_url: str, **tier_extra: Any) -> Cascade:
    params = {"api_base": base_url + "/v1", "api_key": "sk-test", "timeout": 1.0}
    return Cascade(
        tiers=[
            Tier(name="cheap", model="openai/gpt-4o-mini", params=params, **tier_extra),
            Tier(name="strong", model="openai/gpt-4o", params=params),
        ],
        checks=[NonEmptyCheck()],
        retry=Retry(
            max_retries_per_tier=0,
            backoff_initial_s=0,
            jitter_s=0,
            max_retry_after_s=0.1,
        ),
    )


def run(stub: StubServer, capture: SpanCapture, **tier_extra: Any) -> Any:
    gov = Governor(
        Policy(cascade=cascade(stub.base_url, **tier_extra)),
        tracer_provider=capture.provider,
    )
    with gov.task() as task:
        result = GovernedLiteLLM(gov).cascade(MESSAGES, max_tokens=20)
    return result, task


def models_asked(stub: StubServer) -> list[str]:
    return [r.body["model"] for r in stub.requests]


@pytest.mark.parametrize(
    ("behaviour", "kind"),
    [
        (StubBehaviour(status=429, retry_after_s=0.05), "rate_limit"),
        (StubBehaviour(status=503), "server"),
        (StubBehaviour(delay_s=3.0), "timeout"),
    ],
)
def test_provider_errors_fall_back_to_the_next_tier(
    behaviour: StubBehaviour, kind: str, capture: SpanCapture
) -> None:
    """429, 503 and a slow reply each move the request to the next tier."""
    ok = StubBehaviour(answer="7", prompt_tokens=12, completion_tokens=1)
    with StubServer({"gpt-4o-mini": behaviour, "gpt-4o": ok}) as stub:
        result, task = run(stub, capture)
        asked = models_asked(stub)
    assert (result.tier.name, result.answer.text) == ("strong", "7")
    assert result.attempts[0].error_kind == kind
    assert asked == ["gpt-4o-mini", "gpt-4o"]
    strong_cost = 12 * Decimal("2.5e-6") + 1 * Decimal("10e-6")
    # A timed-out request reached the provider and may be billed in full: its
    # hold is charged (the prompt's bound and all 20 output tokens); a
    # refused one (429, 503) billed nothing.
    report = task.report()
    if kind == "timeout":
        held_in = report.input_tokens - 12
        assert held_in >= count_message_tokens("gpt-4o-mini", MESSAGES)
        assert report.output_tokens == 1 + 20
        held = held_in * Decimal("0.15e-6") + 20 * Decimal("0.6e-6")
        assert report.cost_usd == strong_cost + held
        assert result.attempts[0].cost_usd == held
        assert result.cost_usd == report.cost_usd
    else:
        assert report.cost_usd == strong_cost


def test_prompt_too_long_for_a_tier_is_never_sent(capture: SpanCapture) -> None:
    """A tier whose context window the prompt cannot fit is skipped unsent."""
    ok = StubBehaviour(answer="7", prompt_tokens=12, completion_tokens=1)
    with StubServer({"gpt-4o-mini": ok, "gpt-4o": ok}) as stub:
        result, _ = run(stub, capture, context_window_tokens=5)
        asked = models_asked(stub)
    assert asked == ["gpt-4o"]
    assert (result.attempts[0].outcome, result.attempts[0].sent) == ("skipped", False)


def test_each_attempt_has_a_span_and_the_task_its_final_tier(
    capture: SpanCapture,
) -> None:
    """Attempt spans carry tier, outcome and reason; the task the final tier."""
    ok = StubBehaviour(answer="7", prompt_tokens=12, completion_tokens=1)
    with StubServer({"gpt-4o-mini": StubBehaviour(status=503), "gpt-4o": ok}) as stub:
        run(stub, capture)
    spans = capture.named("governor.cascade.attempt")
    assert [s.attributes[attr.CASCADE_TIER] for s in spans] == ["cheap", "strong"]
    assert [s.attributes[attr.CASCADE_OUTCOME] for s in spans] == [
        "error",
        "accepted",
    ]
    task = capture.task()
    assert task.attributes[attr.CASCADE_FINAL_TIER] == "strong"
    # The strong tier's answer at the strong tier's price: nothing saved, so
    # the saving is not set (docs/attributes.md).
    assert attr.CASCADE_SAVED_USD not in task.attributes


def test_a_resting_model_rests_for_tasks_that_override_the_policy() -> None:
    """Each task's override makes a new Cascade; the cooldown still holds."""
    with StubServer({"gpt-4o-mini": StubBehaviour(status=503)}) as stub:
        gov = Governor(Policy(cascade=cascade(stub.base_url)))
        override = Policy(cascade=cascade(stub.base_url))
        llm = GovernedLiteLLM(gov)
        for _ in range(3):
            with gov.task(policy=override):
                llm.cascade(MESSAGES, max_tokens=20)
        asked = models_asked(stub)
    assert asked == ["gpt-4o-mini", "gpt-4o", "gpt-4o", "gpt-4o"]
