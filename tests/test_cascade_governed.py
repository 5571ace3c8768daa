"""A cascade through the governor: escalation, error fallback, one budget."""

from __future__ import annotations

import asyncio
import json
import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

import litellm
import pytest

from conftest import SpanCapture
from governor import Budget, Cascade, ConfigError, Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM
from governor.cascade import CascadeBudgetExceeded, ToolCall
from governor.policies._cascade import JudgeCheck, MatchCheck, Retry, Tier
from governor.pricing import Usage
from governor.telemetry import attributes as attr
from governor.testing import OfflineAnswer, install_offline_provider

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
            },
        },
    }
]
QUESTION = "Which gas do plants absorb? A) oxygen B) carbon dioxide. Reply A or B."
CASCADE = Cascade(
    tiers=[
        Tier(name="cheap", model="offline/gpt-4o-mini"),
        Tier(name="premium", model="offline/gpt-4o"),
    ],
    checks=[MatchCheck(pattern=r"^[AB]$")],
    retry=Retry(max_retries_per_tier=0, backoff_initial_s=0, jitter_s=0),
)


def respond(cheap: Any) -> Any:
    def responder(model: str, messages: Any, tools: Any) -> Any:
        if model == "gpt-4o-mini":
            return cheap
        return "B"

    return responder


def run(policy: Policy, capture: SpanCapture) -> tuple[Any, Any]:
    gov = Governor(policy, tracer_provider=capture.provider)
    llm = GovernedLiteLLM(gov)
    with gov.task() as task:
        result = llm.cascade([{"role": "user", "content": QUESTION}], max_tokens=20)
    return result, task.report()


def test_rejected_cheap_answer_escalates_and_both_are_charged(
    capture: SpanCapture,
) -> None:
    """A cheap answer failing the check goes to the next tier; both cost."""
    install_offline_provider(respond("Probably B, carbon dioxide."), speed=0)
    result, report = run(Policy(cascade=CASCADE), capture)
    assert (result.tier.name, result.answer.text) == ("premium", "B")
    assert [a.outcome for a in result.attempts] == ["rejected", "accepted"]
    assert report.calls == 2
    assert str(result.other_cost_usd) == "0"  # nothing else called; not "0E-7"
    charged = sum(
        Decimal(str(s.attributes["gen_ai.usage.cost.amount"])) for s in capture.calls()
    )
    assert charged == report.cost_usd
    # A dashboard summing the cost name over every span counts each call once.
    summed = [
        Decimal(str(s.attributes["gen_ai.usage.cost.amount"]))
        for s in capture.spans
        if s.attributes and "gen_ai.usage.cost.amount" in s.attributes
    ]
    assert sum(summed) == report.cost_usd
    attempts = capture.named("governor.cascade.attempt")
    assert [a.attributes[attr.CASCADE_ATTEMPT_COST_USD] for a in attempts] == [
        float(a.cost_usd) for a in result.attempts
    ]
    assert sum(a.cost_usd for a in result.attempts) == report.cost_usd
    events = [e.attributes[attr.CASCADE_OUTCOME] for e in capture.task().events]
    assert events == ["rejected", "accepted"]


def test_provider_error_falls_back_to_the_next_tier(capture: SpanCapture) -> None:
    """A rate-limited cheap tier falls back; the failed call costs nothing."""
    install_offline_provider(respond(OfflineAnswer(error="rate_limit")), speed=0)
    result, report = run(Policy(cascade=CASCADE), capture)
    assert result.tier.name == "premium"
    assert result.attempts[0].outcome == "error"
    assert result.attempts[0].error_kind == "rate_limit"
    costs = [s.attributes["gen_ai.usage.cost.amount"] for s in capture.calls()]
    assert costs[0] == 0
    assert Decimal(str(costs[1])) == report.cost_usd
    # The failed attempt's span is marked failed, the accepted one is not.
    statuses = [
        (s.status.status_code.name, s.status.description)
        for s in capture.named("governor.cascade.attempt")
    ]
    assert statuses == [("ERROR", "rate_limit"), ("UNSET", None)]


def test_no_tier_fits_the_budget(capture: SpanCapture) -> None:
    """With a budget too small for any tier, nothing is sent."""
    provider = install_offline_provider(respond("A"), speed=0)
    provider.clear_calls()
    policy = Policy(cascade=CASCADE, budgets=[Budget(max_usd="0.000001")])
    with pytest.raises(CascadeBudgetExceeded):
        run(policy, capture)
    assert provider.calls == []


def test_a_streamed_cascade_is_refused_before_any_call() -> None:
    """Checks need whole answers: stream=True is a clear error, nothing is sent."""
    from governor import ConfigError

    provider = install_offline_provider(speed=0)
    provider.clear_calls()
    gov = Governor(Policy(cascade=CASCADE))
    llm = GovernedLiteLLM(gov)
    messages = [{"role": "user", "content": "Give me a JSON object."}]
    with gov.task() as task, pytest.raises(ConfigError, match="cannot stream"):
        llm.cascade(messages, stream=True)
    assert (provider.calls, task.report().cost_usd) == ([], Decimal(0))


def test_acascade_errors_name_acascade() -> None:
    """The async method's refusals name the method the caller called."""
    from governor import ConfigError

    gov = Governor(Policy(cascade=CASCADE))
    llm = GovernedLiteLLM(gov)
    messages = [{"role": "user", "content": "Give me a JSON object."}]
    with pytest.raises(ConfigError) as refused:
        asyncio.run(llm.acascade(messages, stream=True))
    assert str(refused.value).startswith("acascade() cannot stream")
    assert "Call acascade() without stream=True" in str(refused.value)
    with pytest.raises(ConfigError, match=r"^acascade\(model='gpt-4o'\)"):
        asyncio.run(llm.acascade(messages, model="gpt-4o"))


def test_a_tier_skipped_for_budget_does_not_mark_an_answered_task_stopped(
    capture: SpanCapture,
) -> None:
    """cheap rejected, huge over budget and skipped, last accepted: not stopped."""
    install_offline_provider(respond("Probably B, carbon dioxide."), speed=0)
    cascade = Cascade(
        tiers=[
            Tier(name="cheap", model="offline/gpt-4o-mini"),
            Tier(name="huge", model="offline/gpt-4o", params={"max_tokens": 100_000}),
            Tier(name="last", model="offline/gpt-4.1-mini"),
        ],
        checks=[MatchCheck(pattern=r"^[AB]$")],
        retry=Retry(max_retries_per_tier=0, backoff_initial_s=0, jitter_s=0),
    )
    policy = Policy(cascade=cascade, budgets=[Budget(max_usd="0.01")])
    result, report = run(policy, capture)
    assert [a.outcome for a in result.attempts] == ["rejected", "skipped", "accepted"]
    assert (report.refused, report.stop_reason) == (1, None)


def test_a_cascade_no_tier_fits_stops_its_task() -> None:
    """When the budget fits no tier, the task ends stopped by the cascade."""
    install_offline_provider(respond("A"), speed=0)
    gov = Governor(Policy(cascade=CASCADE, budgets=[Budget(max_usd="0.000001")]))
    with pytest.raises(CascadeBudgetExceeded) as stop, gov.task() as task:
        GovernedLiteLLM(gov).cascade(
            [{"role": "user", "content": QUESTION}], max_tokens=20
        )
    assert task.report().stop_reason == "cascade_budget_exceeded"
    assert stop.value.task_id == task.id


def test_the_window_check_counts_the_tiers_own_max_tokens() -> None:
    """A tier whose params send max_tokens=100 does not fit a 50-token window."""
    provider = install_offline_provider(respond("B"), speed=0)
    provider.clear_calls()
    cascade = Cascade(
        tiers=[
            Tier(
                name="small",
                model="offline/gpt-4o-mini",
                context_window_tokens=50,
                params={"max_tokens": 100},
            ),
            Tier(name="premium", model="offline/gpt-4o"),
        ],
        checks=[MatchCheck(pattern=r"^[AB]$")],
        retry=Retry(max_retries_per_tier=0, backoff_initial_s=0, jitter_s=0),
    )
    gov = Governor(Policy(cascade=cascade))
    with gov.task():
        result = GovernedLiteLLM(gov).cascade([{"role": "user", "content": QUESTION}])
    assert [(a.tier, a.outcome) for a in result.attempts] == [
        ("small", "skipped"),
        ("premium", "accepted"),
    ]


def test_a_string_instead_of_messages_is_refused_with_the_expected_shape() -> None:
    """cascade("hi") says it takes a list of message dicts."""
    gov = Governor(Policy(cascade=CASCADE))
    with pytest.raises(
        TypeError, match=r"^cascade\(\) messages= must be a list of message dicts"
    ):
        GovernedLiteLLM(gov).cascade("hi")  # type: ignore[arg-type]


def test_a_cascade_takes_the_message_objects_completion_takes() -> None:
    """LiteLLM's Message objects, which completion() takes, are taken too."""
    install_offline_provider(respond("Probably B, carbon dioxide."), speed=0)
    gov = Governor(Policy(cascade=CASCADE))
    message = litellm.Message(role="user", content=QUESTION)
    with gov.task():
        result = GovernedLiteLLM(gov).cascade([message])
    assert result.attempts[-1].outcome == "accepted"


def test_an_unpriced_tier_is_refused_when_the_governor_is_built() -> None:
    """A tier nothing prices fails at setup, naming the tier, not mid-cascade."""
    tiers = [Tier(name="cheap", model="acme/in-house-7b"), *CASCADE.tiers[1:]]
    with pytest.raises(ConfigError, match=r"cascade tier .cheap.: .*acme/in-house-7b"):
        Governor(Policy(cascade=CASCADE.model_copy(update={"tiers": tiers})))


def test_an_unpriced_tier_in_a_task_override_is_refused_before_any_call() -> None:
    """A task's own cascade is checked when it is first run, before a paid call."""
    install_offline_provider(speed=0, responder=respond("A"))
    tiers = [*CASCADE.tiers[:1], Tier(name="premium", model="acme/in-house-70b")]
    override = Policy(cascade=CASCADE.model_copy(update={"tiers": tiers}))
    gov = Governor(Policy())
    with gov.task(policy=override) as task, pytest.raises(ConfigError):
        GovernedLiteLLM(gov).cascade([{"role": "user", "content": QUESTION}])
    assert task.report().calls == 0


def test_a_priced_override_lets_an_in_house_tier_through() -> None:
    """An override price makes the same tier acceptable."""
    from governor.policies import Price, Pricing

    tiers = [Tier(name="cheap", model="acme/in-house-7b"), *CASCADE.tiers[1:]]
    policy = Policy(
        cascade=CASCADE.model_copy(update={"tiers": tiers}),
        pricing=Pricing(overrides={"acme/in-house-7b": Price()}),
    )
    assert Governor(policy).policy.cascade is policy.cascade


def test_litellm_fallbacks_inside_a_cascade_are_refused() -> None:
    """fallbacks would answer inside one tier at its price: use tiers."""
    with pytest.raises(ConfigError, match="add each fallback model as a Tier"):
        Tier(name="cheap", model="gpt-4o-mini", params={"fallbacks": ["gpt-4o"]})
    gov = Governor(Policy(cascade=CASCADE))
    with pytest.raises(ConfigError, match="add each fallback model as a Tier"):
        GovernedLiteLLM(gov).cascade(
            [{"role": "user", "content": QUESTION}], fallbacks=["offline/gpt-4o"]
        )


FOUR_TIERS = Cascade(
    tiers=[
        Tier(name="t1", model="offline/gpt-4o-mini"),
        Tier(name="t2", model="offline/gpt-4.1-mini"),
        Tier(name="t3", model="offline/gpt-4.1"),
        Tier(name="t4", model="offline/gpt-4o"),
    ],
    checks=[MatchCheck(pattern=r"^[AB]$")],
    check_last_tier=True,
    on_all_rejected="return",
)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_outside_a_task_the_task_budget_bounds_the_whole_cascade(
    mode: str, tmp_path: Path, capture: SpanCapture
) -> None:
    """cascade() with no task open is one task: the budget sees every tier."""
    install_offline_provider(lambda model, messages, tools: "x " * 90, speed=0)
    spend = tmp_path / "spend.jsonl"
    limit = Decimal("0.0012")
    policy = Policy(cascade=FOUR_TIERS, budgets=[Budget(max_usd=limit)])
    gov = Governor(policy, spend=spend, tracer_provider=capture.provider)
    llm = GovernedLiteLLM(gov)
    messages = [{"role": "user", "content": QUESTION}]
    metadata = {"team": "search"}
    if mode == "sync":
        result = llm.cascade(messages, max_tokens=100, metadata=metadata)
    else:
        result = asyncio.run(llm.acascade(messages, max_tokens=100, metadata=metadata))
    gov.close()
    records = [json.loads(line) for line in spend.read_text().splitlines()]
    assert [a.outcome for a in result.attempts][-1] == "skipped"
    assert len({r["task_id"] for r in records}) == 1
    assert sum(Decimal(r["cost_usd"]) for r in records) == result.cost_usd <= limit
    assert {r["team"] for r in records} == {"search"}
    assert attr.CASCADE_SAVED_USD in capture.task().attributes


def test_a_revoked_key_rests_the_cheap_tier_for_that_key_only() -> None:
    """One tenant's auth error does not send other tenants to the premium tier."""

    def completion(**kwargs: Any) -> Any:
        if kwargs["model"] == "gpt-4o-mini" and kwargs["api_key"] == "sk-revoked":
            raise litellm.AuthenticationError("bad key", "openai", kwargs["model"])
        return litellm.completion(**{**kwargs, "mock_response": "B"})

    cascade = Cascade(tiers=["gpt-4o-mini", "gpt-4o"])
    gov = Governor(Policy(cascade=cascade))
    llm = GovernedLiteLLM(gov, completion=completion)
    answered = []
    for key in ("sk-revoked", "sk-good", "sk-revoked"):
        with gov.task():
            result = llm.cascade([{"role": "user", "content": QUESTION}], api_key=key)
        answered.append([a.outcome for a in result.attempts])
    assert answered == [["error", "accepted"], ["accepted"], ["skipped", "accepted"]]


def test_a_tool_call_answer_passes_the_default_checks() -> None:
    """Both tiers call a tool: the cheap tier's call is accepted by default checks."""
    call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    install_offline_provider(
        lambda model, messages, tools: OfflineAnswer(tool_calls=[call]), speed=0
    )
    cascade = Cascade(tiers=CASCADE.tiers, check_last_tier=True)
    gov = Governor(Policy(cascade=cascade))
    with gov.task():
        result = GovernedLiteLLM(gov).cascade(
            [{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS
        )
    assert (result.tier.name, result.accepted) == ("cheap", True)
    assert result.answer.tool_calls == (ToolCall("get_weather", '{"city": "Paris"}'),)


def test_a_judges_own_calls_are_in_the_cascade_cost_and_the_saving(
    capture: SpanCapture,
) -> None:
    """A judge calling a model through the governor: its cost is the run's too."""

    def responder(model: str, messages: Any, tools: Any) -> str:
        return "9" if "Rate this" in messages[-1]["content"] else "B"

    install_offline_provider(responder, speed=0)
    cascade = CASCADE.model_copy(
        update={"checks": (JudgeCheck(judge=f"{__name__}:judge", min_score=7),)}
    )
    gov = Governor(Policy(cascade=cascade), tracer_provider=capture.provider)
    JUDGE_CLIENT[:] = [GovernedLiteLLM(gov)]
    with gov.task() as task:
        result = JUDGE_CLIENT[0].cascade([{"role": "user", "content": QUESTION}])
    report = task.report()
    assert (report.calls, result.tier.name) == (2, "cheap")
    assert result.cost_usd == report.cost_usd > result.attempts_cost_usd
    assert result.other_cost_usd == report.cost_usd - result.attempts[0].cost_usd
    saved = capture.task().attributes[attr.CASCADE_SAVED_USD]
    usage = result.answer.raw.usage
    premium = Governor(Policy()).rate_card.rate("offline/gpt-4o")
    would_cost = premium.cost(Usage(usage.prompt_tokens, usage.completion_tokens))
    assert saved == pytest.approx(float(would_cost.usd - report.cost_usd))


JUDGE_CLIENT: list[GovernedLiteLLM] = []


def judge(answer: Any, history: Any) -> float:
    """A judge model called through the governed client."""
    response = JUDGE_CLIENT[0].completion(
        model="offline/gpt-4o",
        max_tokens=5,
        messages=[{"role": "user", "content": "Rate this answer: " + answer.text}],
    )
    return float(response.choices[0].message.content)


def test_tiers_listed_dearest_first_are_warned_about_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A tier costing more per token than the next one logs one warning."""
    caplog.set_level(logging.WARNING, logger="governor")
    reversed_tiers = Cascade(tiers=["gpt-4o", "gpt-4o-mini"])
    gov = Governor(Policy(cascade=reversed_tiers))
    gov.check_tier_prices(Policy(cascade=reversed_tiers))
    Governor(Policy(cascade=Cascade(tiers=["gpt-4o-mini", "gpt-4o"])))
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "'gpt-4o' costs more per token than the tier after it" in warnings[0]


def test_a_judge_registered_by_name_reaches_the_cascade() -> None:
    """GovernedLiteLLM(callables=...) resolves the names a policy uses."""
    install_offline_provider(respond("B"), speed=0)
    cascade = CASCADE.model_copy(
        update={"checks": (JudgeCheck(judge="strict", min_score=7),)}
    )
    gov = Governor(Policy(cascade=cascade))
    llm = GovernedLiteLLM(gov, callables={"strict": lambda answer, history: 9})
    with gov.task():
        result = llm.cascade([{"role": "user", "content": QUESTION}])
    assert result.attempts[0].checks[0].reason == "judge scored 9, at least 7"


def _refusing(model: str) -> Any:
    """litellm.completion, except that ``model`` answers HTTP 400."""

    def completion(**kwargs: Any) -> Any:
        if kwargs["model"] == model:
            raise litellm.BadRequestError(
                "Unsupported parameter: 'temperature' is not supported with "
                "this model.",
                model=model,
                llm_provider="openai",
            )
        return litellm.completion(**kwargs)

    return completion


def test_a_bad_request_falls_back_uncharged_and_unrested(
    capture: SpanCapture,
) -> None:
    """A 400 on the cheap tier: the next tier answers, the 400 costs nothing,
    and the cheap model is not rested for the next request."""
    provider = install_offline_provider(respond("A"), speed=0)
    provider.clear_calls()
    gov = Governor(Policy(cascade=CASCADE), tracer_provider=capture.provider)
    llm = GovernedLiteLLM(gov, completion=_refusing("offline/gpt-4o-mini"))
    messages = [{"role": "user", "content": QUESTION}]
    with gov.task() as task:
        first = llm.cascade(messages, max_tokens=20)
        second = llm.cascade(messages, max_tokens=20)
    report = task.report()
    refused = first.attempts[0]
    assert (refused.outcome, refused.error_kind, refused.cost_usd) == (
        "error",
        "bad_request",
        None,
    )
    assert (first.tier.name, first.answer.text) == ("premium", "B")
    # Not rested: the second request is sent to the cheap tier again.
    assert [a.tier for a in second.attempts] == ["cheap", "premium"]
    assert report.cost_usd == first.cost_usd + second.cost_usd
    assert first.cost_usd == first.attempts[1].cost_usd > 0
    assert [c.model for c in provider.calls] == ["gpt-4o", "gpt-4o"]


async def test_an_async_check_under_acascade_is_refused_before_any_call() -> None:
    """An async def check is refused when the run is set up: nothing is paid."""

    async def my_async(answer: Any, history: Any) -> bool:
        return True

    provider = install_offline_provider(respond("A"), speed=0)
    provider.clear_calls()
    cascade = CASCADE.model_copy(
        update={"checks": ({"kind": "callable", "ref": "my_async"},)}
    )
    gov = Governor(Policy(cascade=cascade))
    llm = GovernedLiteLLM(gov, callables={"my_async": my_async})
    async with gov.atask() as task:
        with pytest.raises(ConfigError, match="'my_async', an async function"):
            await llm.acascade([{"role": "user", "content": QUESTION}])
    assert (provider.calls, task.report().cost_usd) == ([], Decimal(0))


def test_a_task_sums_the_savings_of_its_cascades() -> None:
    """Task.add_cascade_saving keeps the sum over the task's cascade runs."""
    gov = Governor(Policy(cascade=CASCADE))
    with gov.task() as task:
        assert task.cascade_saved_usd == Decimal(0)
        assert task.add_cascade_saving(Decimal("0.25")) == Decimal("0.25")
        assert task.add_cascade_saving(Decimal("-0.05")) == Decimal("0.20")
    assert task.cascade_saved_usd == Decimal("0.20")


def _span_text(capture: SpanCapture) -> str:
    parts: list[str] = []
    for span in capture.spans:
        parts.append(span.name)
        parts.extend(str(v) for v in (span.attributes or {}).values())
        for event in span.events:
            parts.extend(str(v) for v in (event.attributes or {}).values())
    return "\n".join(parts)


@pytest.mark.parametrize("captured", [False, True])
def test_attempt_reasons_quote_no_answer_or_error_text_unless_captured(
    capture: SpanCapture, monkeypatch: pytest.MonkeyPatch, captured: bool
) -> None:
    """A rejected answer's check reason and a provider error's message may
    quote the conversation: off the spans unless content capture is on."""
    monkeypatch.setenv(
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", str(captured).lower()
    )
    answers = iter(["SECRET-ANSWER-41", "B"])

    def provider(**kwargs: Any) -> Any:
        if kwargs["model"] == "gpt-4o":
            raise litellm.RateLimitError(
                "limit hit for prompt SECRET-PROMPT-17",
                llm_provider="openai",
                model="gpt-4o",
            )
        return litellm.completion(**{**kwargs, "mock_response": next(answers)})

    cascade = Cascade(
        tiers=[
            Tier(name="cheap", model="gpt-4o-mini"),
            Tier(name="mid", model="gpt-4o"),
            Tier(name="last", model="gpt-4o-mini", params={"temperature": 0.1}),
        ],
        checks=[MatchCheck(pattern=r"^[AB]$")],
        retry=Retry(max_retries_per_tier=0, backoff_initial_s=0, jitter_s=0),
    )
    gov = Governor(Policy(cascade=cascade), tracer_provider=capture.provider)
    with gov.task():
        result = GovernedLiteLLM(gov, completion=provider).cascade(
            [{"role": "user", "content": "A or B?"}], max_tokens=20
        )
    assert [a.outcome for a in result.attempts] == ["rejected", "error", "accepted"]
    text = _span_text(capture)
    reasons = [
        a.attributes[attr.CASCADE_REASON]
        for a in capture.named("governor.cascade.attempt")
    ]
    if captured:
        assert reasons == [a.reason for a in result.attempts]
        assert "SECRET-PROMPT-17" in text
    else:
        secrets = ("SECRET-ANSWER-41" in text, "SECRET-PROMPT-17" in text)
        assert secrets == (False, False)
        assert reasons[:2] == [
            "match: failed",
            "rate_limit: RateLimitError; falling back",
        ]
