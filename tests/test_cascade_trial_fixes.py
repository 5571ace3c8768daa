"""Cascade fixes found by a trial: escalation, savings, validation, advice, eval."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from governor import Budget, ConfigError, Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM
from governor.cascade import (
    Answer,
    CallableCheck,
    Cascade,
    CascadeExhausted,
    CascadeRunner,
    CheckResult,
    JudgeCheck,
    MatchCheck,
    PreCall,
    Tier,
    build_check,
)
from governor.cascade._builtin import NamedPolicy, load_policy
from governor.cascade._fit import fit_and_report
from governor.cascade._replay import Recorded, ReplayRow
from governor.policies import Loops, Price, Pricing
from governor.testing import (
    OfflineAnswer,
    install_offline_provider,
    uninstall_offline_provider,
)

MESSAGES = [{"role": "user", "content": "hello there"}]
PRICES = {"input_cost_per_token": 0.001, "output_cost_per_token": 0.001}


@pytest.fixture
def offline() -> Iterator[Any]:
    """Install the offline provider with a responder set per test."""
    answers: dict[str, Any] = {}
    provider = install_offline_provider(
        lambda model, messages, tools: answers.get(model), speed=0
    )
    provider.clear_calls()
    yield answers, provider
    uninstall_offline_provider()


def _two_tiers(**premium: Any) -> list[Tier]:
    return [
        Tier(name="cheap", model="offline/gpt-4o-mini"),
        Tier(name="premium", model="offline/gpt-4o", **premium),
    ]


# -- 1. a loop escalation never rewrites a cascade attempt -----------------


def test_escalation_never_rewrites_a_cascade_attempt(offline: Any) -> None:
    answers, provider = offline
    text = "The quarterly report shows revenue grew by twelve percent this year 42"
    answers.update({"gpt-4o-mini": text, "gpt-4o": "premium 42 " + text})
    policy = Policy(
        budgets=[Budget(max_usd="1")],
        loops=Loops(action="escalate"),
        cascade=Cascade(tiers=_two_tiers(), checks=[MatchCheck(pattern="42")]),
    )
    gov = Governor(policy)
    llm = GovernedLiteLLM(gov)
    hinted = 0
    with gov.task() as task:
        for i in range(5):
            provider.clear_calls()
            content = f"summarise report {i}"
            result = llm.cascade([{"role": "user", "content": content}], max_tokens=40)
            sent = [call.model for call in provider.calls]
            assert sent == ["gpt-4o-mini"], (i, sent)
            assert result.tier.name == "cheap"
            assert [a.model for a in result.attempts] == ["offline/gpt-4o-mini"]
            assert result.cost_usd == result.attempts[0].cost_usd
            messages = provider.calls[0].messages
            hinted += any(m["role"] == "system" for m in messages)
        assert task.extras["loop_watch"].hint is None
    assert hinted == 1  # the run after the verdict took the hint, once


def test_a_cascade_run_consumes_the_escalation_hint(offline: Any) -> None:
    answers, provider = offline
    answers.update({"gpt-4o-mini": "42", "gpt-4o": "42"})
    policy = Policy(
        budgets=[Budget(max_usd="1")],
        loops=Loops(action="escalate"),
        cascade=Cascade(tiers=_two_tiers(), checks=[MatchCheck(pattern="42")]),
    )
    gov = Governor(policy)
    llm = GovernedLiteLLM(gov)
    with gov.task() as task:
        llm.cascade(MESSAGES, max_tokens=5)
        task.extras["loop_watch"].hint = "You are repeating yourself."
        provider.clear_calls()
        llm.cascade(MESSAGES, max_tokens=5)
        assert [c.model for c in provider.calls] == ["gpt-4o-mini"]
        assert provider.calls[0].messages[-1] == {
            "role": "system",
            "content": "You are repeating yourself.",
        }
        assert task.extras["loop_watch"].hint is None


# -- 2. the saving prices the last tier as its call would be priced ---------


def test_saving_prices_the_last_tier_with_its_params(offline: Any) -> None:
    answers, _ = offline
    answers.update({"gpt-4o-mini": "no", "gpt-4o": "42"})
    policy = Policy(
        budgets=[Budget(max_usd="1")],
        cascade=Cascade(
            tiers=_two_tiers(params=PRICES), checks=[MatchCheck(pattern="42")]
        ),
    )
    gov = Governor(policy)
    llm = GovernedLiteLLM(gov)
    with gov.task() as task:
        result = llm.cascade(MESSAGES, max_tokens=5)
        cheap = result.attempts[0].cost_usd
        assert result.tier.name == "premium"
        # The premium answer was paid: only the cheap attempt was lost.
        assert task.cascade_saved_usd == -cheap
    answers["gpt-4o-mini"] = "42"
    with gov.task() as task:
        result = llm.cascade(MESSAGES, max_tokens=5)
        usage = result.answer.raw.usage
        tokens = usage.prompt_tokens + usage.completion_tokens
        would = Decimal("0.001") * tokens
        assert task.cascade_saved_usd == would - result.cost_usd


def test_saving_prices_a_per_second_last_tier_for_the_accepted_time(
    offline: Any,
) -> None:
    answers, provider = offline
    provider.speed = 0.05
    answers.update({"gpt-4o-mini": "42", "llama-70b": "42"})
    policy = Policy(
        budgets=[Budget(max_usd="1")],
        max_call_s=10,
        pricing=Pricing(overrides={"offline/llama-70b": Price(usd_per_second="1")}),
        cascade=Cascade(
            tiers=[
                Tier(name="cheap", model="offline/gpt-4o-mini"),
                Tier(name="selfhosted", model="offline/llama-70b"),
            ],
            checks=[MatchCheck(pattern="42")],
        ),
    )
    gov = Governor(policy)
    llm = GovernedLiteLLM(gov)
    with gov.task() as task:
        result = llm.cascade(MESSAGES, max_tokens=5)
        accepted = result.attempts[-1]
        assert accepted.started_ns is not None
        assert accepted.ended_ns is not None
        seconds = (accepted.ended_ns - accepted.started_ns) / 1e9
        assert result.tier.name == "cheap"
        saved = task.cascade_saved_usd
        assert saved > 0  # the per-second premium was avoided
        assert math.isclose(float(saved + result.cost_usd), seconds, rel_tol=1e-6)


# -- 3. an answer returned although rejected saved nothing -------------------


def test_a_returned_rejected_answer_saves_nothing(offline: Any) -> None:
    answers, _ = offline
    answers.update(
        {
            "gpt-4o-mini": "no",
            "gpt-4.1-mini": "no",
            "gpt-4o": OfflineAnswer(error="server_error"),
        }
    )
    policy = Policy(
        budgets=[Budget(max_usd="1")],
        cascade=Cascade(
            tiers=[
                Tier(name="cheap", model="offline/gpt-4o-mini"),
                Tier(name="mid", model="offline/gpt-4.1-mini"),
                Tier(name="premium", model="offline/gpt-4o"),
            ],
            checks=[MatchCheck(pattern="42")],
            check_last_tier=True,
            on_all_rejected="return",
            retry={"max_retries_per_tier": 0},
        ),
    )
    gov = Governor(policy)
    llm = GovernedLiteLLM(gov)
    with gov.task() as task:
        result = llm.cascade(MESSAGES, max_tokens=5)
        assert not result.accepted
        assert result.cost_usd > 0
        assert task.cascade_saved_usd == -result.cost_usd


# -- 4. CheckResult.passed is a bool ----------------------------------------


def _run(check: Any, **callables: Any) -> Any:
    runner = CascadeRunner(
        Cascade(
            tiers=[Tier(name="c", model="gpt-4o-mini"), Tier(name="p", model="gpt-4o")],
            checks=[check],
        ),
        callables=callables,
    )
    return runner.run(
        MESSAGES, call=lambda tier, _: Answer("ans", tier.model, Decimal("0.001"))
    )


@pytest.mark.parametrize("passed", ["False", "no", 1, 0, None])
def test_check_result_passed_must_be_a_bool(passed: Any) -> None:
    with pytest.raises(ConfigError, match="CheckResult of check 'mine'"):
        CheckResult(check="mine", passed=passed, reason="looks wrong")

    def mine(answer: Any, history: Any) -> CheckResult:
        return CheckResult(check="mine", passed=passed)

    with pytest.raises(ConfigError, match="give True or False"):
        _run(CallableCheck(ref="mine"), mine=mine)


def test_check_result_takes_numpy_bool() -> None:
    numpy = pytest.importorskip("numpy")
    result = CheckResult(check="mine", passed=numpy.bool_(False))
    assert result.passed is False


# -- 5. a tier's params prices count when the policy is checked -------------


def test_tier_params_price_an_unmapped_model() -> None:
    prices = {"input_cost_per_token": 1e-7, "output_cost_per_token": 1e-7}
    policy = Policy(
        cascade=Cascade(
            tiers=[
                Tier(name="own", model="openai/my-private-llm", params=prices),
                Tier(name="premium", model="gpt-4o"),
            ]
        )
    )
    Governor(policy)  # priced by its params: not refused


def test_tier_order_warning_reads_params_prices(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = Policy(
        cascade=Cascade(
            tiers=[
                Tier(name="a", model="gpt-4o-mini", params=PRICES),
                Tier(name="b", model="gpt-4o"),
            ]
        )
    )
    with caplog.at_level(logging.WARNING, logger="governor"):
        Governor(policy)
    assert "cascade tier 'a' costs more per token" in caplog.text


def test_tier_params_with_a_bad_price_name_the_tier() -> None:
    policy = Policy(
        cascade=Cascade(
            tiers=[
                Tier(
                    name="own",
                    model="gpt-4o-mini",
                    params={"input_cost_per_token": -1},
                ),
                Tier(name="premium", model="gpt-4o"),
            ]
        )
    )
    with pytest.raises(ConfigError, match="cascade tier 'own'"):
        Governor(policy)


# -- 6. the pre-call estimator returns a finite number ----------------------


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), "0.9", True, Decimal("NaN"), None, 10**400],
)
def test_estimator_value_is_validated(value: Any) -> None:
    cascade = Cascade(
        tiers=[Tier(name="a", model="gpt-4o-mini"), Tier(name="b", model="gpt-4o")],
        precall=PreCall(thresholds=(0.5,), estimator="est"),
    )
    runner = CascadeRunner(cascade, callables={"est": lambda text: value})
    with pytest.raises(ConfigError, match="pre-call estimator 'est' returned"):
        runner.run(
            MESSAGES,
            call=lambda tier, _: Answer("ok", tier.model, Decimal(0)),
            prompt_text="x",
        )


def test_estimator_number_still_picks_the_tier() -> None:
    cascade = Cascade(
        tiers=[Tier(name="a", model="gpt-4o-mini"), Tier(name="b", model="gpt-4o")],
        precall=PreCall(thresholds=(0.5,), estimator="est"),
    )
    runner = CascadeRunner(cascade, callables={"est": lambda text: Decimal("0.9")})
    result = runner.run(
        MESSAGES,
        call=lambda tier, _: Answer("ok", tier.model, Decimal(0)),
        prompt_text="x",
    )
    assert result.start_tier == 1
    assert result.complexity == 0.9


# -- 7. a judge's huge or signalling value is a ConfigError ------------------


@pytest.mark.parametrize("value", [10**400, -(10**400), Decimal("sNaN")])
def test_judge_value_out_of_float_range_is_config_error(value: Any) -> None:
    check = build_check(
        JudgeCheck(judge="j", min_score=0.5), callables={"j": lambda a, h: value}
    )
    with pytest.raises(ConfigError, match="a judge must return a finite number"):
        check(Answer("hi", "m", Decimal(0)), [])


# -- 8. the advice fits what was seen ---------------------------------------


class ContextWindowExceededError(Exception):
    """Classified as a context-window failure by its name."""


def test_context_window_failures_advise_a_shorter_prompt() -> None:
    cascade = Cascade(
        tiers=[
            Tier(name="cheap", model="gpt-4o-mini", context_window_tokens=10),
            Tier(name="premium", model="gpt-4o"),
        ]
    )

    def call(tier: Tier, request: Any) -> Answer:
        raise ContextWindowExceededError("too long")

    with pytest.raises(CascadeExhausted) as caught:
        CascadeRunner(cascade).run(
            MESSAGES, call=call, count_tokens=lambda tier, request: 100
        )
    text = str(caught.value)
    assert "shorten the prompt" in text
    assert "providers' status" not in text


def test_budget_skip_and_rejection_advise_raising_the_budget() -> None:
    cascade = Cascade(
        tiers=_two_tiers(), checks=[MatchCheck(pattern="42")], check_last_tier=True
    )

    def fits(tier: Tier, request: Any) -> bool:
        return tier.name == "cheap"

    with pytest.raises(CascadeExhausted) as caught:
        CascadeRunner(cascade).run(
            MESSAGES,
            call=lambda tier, _: Answer("no.", tier.model, Decimal("0.001")),
            fits=fits,
        )
    text = str(caught.value)
    assert "raise the budget's limit" in text
    assert "Relax the checks" in text


def test_attempt_listing_has_no_double_full_stop(offline: Any) -> None:
    answers, _ = offline
    answers.update({"gpt-4o-mini": "no", "gpt-4o": "42"})
    policy = Policy(
        budgets=[Budget(max_usd="0.005")],
        cascade=Cascade(
            tiers=_two_tiers(params=PRICES), checks=[MatchCheck(pattern="42")]
        ),
    )
    gov = Governor(policy)
    with pytest.raises(CascadeExhausted) as caught:
        GovernedLiteLLM(gov).cascade(MESSAGES, max_tokens=5)
    text = str(caught.value)
    assert "budget: " in text  # the refusal's own sentence ends with a stop
    assert ".." not in text
    assert ".;" not in text


# -- 9. eval cascade ---------------------------------------------------------


def test_policy_file_key_given_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(
        '{"tiers": [{"name": "c", "model": "gpt-4o-mini"}, "gpt-4o"],'
        ' "tiers": ["gpt-4o"]}',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"p\.json: key 'tiers' appears twice"):
        load_policy(str(path))


def _rows() -> list[ReplayRow]:
    outcomes = {
        "gpt-4o-mini": Recorded(1.0, "4", Decimal("0.001")),
        "gpt-4o": Recorded(1.0, "4", Decimal("0.01")),
    }
    return [ReplayRow(f"q{i}", "p", outcomes) for i in range(6)]


def test_no_fit_figures_from_zero_fit_rows() -> None:
    cascade = Cascade(tiers=[Tier(name="c", model="gpt-4o-mini"), "gpt-4o"])
    policy = NamedPolicy("pol", "from pol.json", (("pol", cascade),))
    result = fit_and_report(policy, _rows(), fit_fraction=0)
    assert result.fit_rows == 0
    assert result.report.summary.rows == 6
    point = result.curve[0]
    assert point.fit_cost_ratio is None
    assert point.fit_quality_ratio is None
    assert point.cost_ratio is not None


def test_unknown_judge_names_the_policy_file_and_place(tmp_path: Path) -> None:
    path = tmp_path / "pol.json"
    path.write_text(
        json.dumps(
            {
                "tiers": ["gpt-4o-mini", "gpt-4o"],
                "checks": [
                    {"kind": "non_empty"},
                    {"kind": "judge", "judge": "zzz", "min_score": 0.5},
                ],
            }
        ),
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"pol\.json\): checks\[1\]: callable 'zzz'"):
        fit_and_report(load_policy(str(path)), _rows(), fit_fraction=0)


# -- 10. cascade(model=...) is refused ---------------------------------------


def test_cascade_refuses_a_model_argument(offline: Any) -> None:
    answers, provider = offline
    answers.update({"gpt-4o-mini": "42", "gpt-4o": "42"})
    gov = Governor(Policy(cascade=Cascade(tiers=_two_tiers())))
    llm = GovernedLiteLLM(gov)
    with pytest.raises(ConfigError, match=r"cascade\(model='offline/gpt-4o'\)"):
        llm.cascade(MESSAGES, model="offline/gpt-4o")
    assert provider.calls == []


def test_a_sent_attempt_that_failed_free_reports_a_cost_of_zero() -> None:
    """A sent attempt answered by a 429 costs nothing: its span says 0, so that
    summing attempt costs by tier counts it."""
    from conftest import SpanCapture
    from governor.cascade import NonEmptyCheck
    from governor.telemetry import attributes as attr
    from governor.testing import (
        OfflineAnswer,
        install_offline_provider,
        offline_model,
        uninstall_offline_provider,
    )

    def responder(model: str, messages: Any, tools: Any) -> Any:
        return OfflineAnswer(error="rate_limit") if model == "gpt-4o-mini" else "ok"

    capture = SpanCapture()
    tiers = [
        Tier(name="cheap", model=offline_model("gpt-4o-mini")),
        Tier(name="premium", model=offline_model("gpt-4o")),
    ]
    policy = Policy(cascade=Cascade(tiers=tiers, checks=[NonEmptyCheck()]))
    install_offline_provider(responder, speed=0)
    try:
        gov = Governor(policy, tracer_provider=capture.provider)
        with gov.task():
            GovernedLiteLLM(gov).cascade([{"role": "user", "content": "hi"}])
    finally:
        uninstall_offline_provider()
    cheap = capture.named("governor.cascade.attempt cheap")
    assert len(cheap) >= 1  # a 429 may be retried on its tier: each says 0
    for span in cheap:
        assert span.attributes is not None
        assert span.attributes[attr.CASCADE_SENT] is True
        assert span.attributes[attr.CASCADE_ATTEMPT_COST_USD] == 0.0
