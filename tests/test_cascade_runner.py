"""The cascade runner with fake call functions: escalation, budget, fallback."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

import pytest

from governor._errors import BudgetExceeded, ConfigError
from governor.cascade import (
    AgreementCheck,
    Answer,
    Attempt,
    Cascade,
    CascadeBudgetExceeded,
    CascadeExhausted,
    CascadeRunner,
    CooldownRegistry,
    NonEmptyCheck,
    PreCall,
    Retry,
    Tier,
    classify_error,
    cooldown_key,
    retry_after_s,
    tenacity_wait,
)


class Headers(dict[str, str]):
    """Response headers as a plain mapping."""


class FakeResponse:
    """Just enough of an HTTP response to carry headers."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self.headers = Headers(headers)


class ProviderError(Exception):
    """A provider failure known only by its HTTP status."""

    def __init__(
        self, status_code: int, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code
        self.response = FakeResponse(dict(headers or {}))


class ContentPolicyViolationError(Exception):
    """Named like LiteLLM's content-policy refusal."""


class ContextWindowExceededError(Exception):
    """Named like LiteLLM's context-overflow error."""


class Clock:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


TIERS = [
    Tier(name="cheap", model="m-cheap"),
    Tier(name="mid", model="m-mid"),
    Tier(name="top", model="m-top"),
]
NO_JITTER = Retry(jitter_s=0, backoff_initial_s=0.5, backoff_max_s=4.0)


def policy(**changes: object) -> Cascade:
    """A three-tier cascade whose answers must be non-empty."""
    settings: dict[str, Any] = {
        "tiers": TIERS,
        "checks": [NonEmptyCheck()],
        "retry": NO_JITTER,
    }
    settings.update(changes)
    return Cascade(**settings)


Script = Mapping[str, list[object]]


def scripted(script: Script) -> tuple[Callable[[Tier, str], Answer], list[str]]:
    """A call function answering per model from a script; raises exceptions."""
    queues = {model: list(steps) for model, steps in script.items()}
    sent: list[str] = []

    def call(tier: Tier, request: str) -> Answer:
        sent.append(tier.model)
        step = queues[tier.model].pop(0)
        if isinstance(step, Exception):
            raise step
        return Answer(str(step), tier.model, Decimal("0.001"))

    return call, sent


def outcomes(attempts: tuple[Attempt, ...]) -> list[tuple[str, str]]:
    """(tier, outcome) of each attempt."""
    return [(a.tier, a.outcome) for a in attempts]


def test_cheapest_passing_tier_answers_alone() -> None:
    """When the cheapest tier's answer passes, no other tier is called."""
    call, sent = scripted({"m-cheap": ["fine"]})
    result = CascadeRunner(policy()).run("q", call=call)
    assert (result.tier.name, result.answer.text, sent) == (
        "cheap",
        "fine",
        ["m-cheap"],
    )


def test_rejected_answer_escalates_with_its_reason() -> None:
    """An answer failing a check escalates, and the attempt keeps the reason."""
    call, _sent = scripted({"m-cheap": [""], "m-mid": ["ok"]})
    result = CascadeRunner(policy()).run("q", call=call)
    first = result.attempts[0]
    assert (first.outcome, first.reason) == (
        "rejected",
        "non_empty: answer has 0 characters, needs 1",
    )
    assert result.tier.name == "mid"


def test_agreement_with_a_cheaper_tier_accepts() -> None:
    """The mid tier is accepted when it agrees with the cheap tier's letter."""
    cascade = policy(checks=[AgreementCheck(normalise="choice")])
    call, _sent = scripted({"m-cheap": ["B"], "m-mid": ["(B)"]})
    result = CascadeRunner(cascade).run("q", call=call)
    assert outcomes(result.attempts) == [("cheap", "rejected"), ("mid", "accepted")]


def test_every_attempt_is_charged() -> None:
    """The result's cost sums rejected and accepted attempts."""
    call, _ = scripted({"m-cheap": [""], "m-mid": ["ok"]})
    result = CascadeRunner(policy()).run("q", call=call)
    assert result.cost_usd == Decimal("0.002")


def test_tier_over_budget_is_skipped() -> None:
    """A tier whose reservation does not fit is skipped and never called."""
    call, sent = scripted({"m-mid": ["ok"]})

    def fits(tier: Tier, request: str) -> bool:
        return tier.name != "cheap"

    result = CascadeRunner(policy()).run("q", call=call, fits=fits)
    assert (sent, result.attempts[0].error_kind) == (["m-mid"], "budget")


def test_exhausted_after_a_budget_skip_says_the_tier_was_skipped() -> None:
    """A rejected answer then a tier the budget cannot cover is not all checks."""
    call, sent = scripted({"m-cheap": [""]})

    def fits(tier: Tier, request: str) -> bool:
        return tier.name == "cheap"

    with pytest.raises(CascadeExhausted) as caught:
        CascadeRunner(policy()).run("q", call=call, fits=fits)
    assert (caught.value.reason, sent) == (
        "every answer failed its checks; 2 tier(s) skipped because the budget "
        "could not cover them",
        ["m-cheap"],
    )


def test_no_tier_fits_raises_budget_exceeded_naming_tiers() -> None:
    """When no tier fits, a BudgetExceeded names every tier and nothing is sent."""
    call, sent = scripted({})
    refusal = BudgetExceeded(
        scope="task:t1",
        unit="usd",
        limit=Decimal("0.01"),
        spent=Decimal("0.0095"),
        reserved=Decimal(0),
        requested=Decimal("0.001"),
        model="m-cheap",
    )

    def fits(tier: Tier, request: str) -> bool | BudgetExceeded:
        return refusal if tier.name == "cheap" else False

    with pytest.raises(BudgetExceeded) as caught:
        CascadeRunner(policy()).run("q", call=call, fits=fits)
    error = caught.value
    assert isinstance(error, CascadeBudgetExceeded)
    assert (error.tiers, error.scope, error.limit, sent) == (
        ("cheap", "mid", "top"),
        "task:t1",
        Decimal("0.01"),
        [],
    )


def test_budget_refusal_inside_the_call_counts_as_a_skip() -> None:
    """A reservation refused inside call skips the tier without counting a send."""
    refusal = BudgetExceeded(
        scope="task:t1",
        unit="usd",
        limit=Decimal(1),
        spent=Decimal(1),
        reserved=Decimal(0),
        requested=Decimal("0.1"),
        model="m-cheap",
    )
    call, _ = scripted({"m-cheap": [refusal], "m-mid": ["ok"]})
    result = CascadeRunner(policy()).run("q", call=call)
    assert (result.attempts[0].sent, result.sent_attempts) == (False, 1)


def test_rate_limit_waits_for_retry_after() -> None:
    """A 429 with Retry-After 3 waits 3 s (over the 0.5 s backoff) and retries."""
    call, sent = scripted({"m-cheap": [ProviderError(429, {"retry-after": "3"}), "ok"]})
    slept: list[float] = []
    result = CascadeRunner(policy()).run("q", call=call, sleep=slept.append)
    assert (slept, sent, result.tier.name) == ([3.0], ["m-cheap", "m-cheap"], "cheap")


def test_long_retry_after_falls_back_and_cools_the_model() -> None:
    """A Retry-After beyond max_retry_after_s falls back and rests the model."""
    clock = Clock()
    cooldowns = CooldownRegistry(clock)
    call, _sent = scripted(
        {"m-cheap": [ProviderError(429, {"retry-after": "120"})], "m-mid": ["ok"]}
    )
    slept: list[float] = []
    runner = CascadeRunner(policy(), cooldowns=cooldowns)
    result = runner.run("q", call=call, sleep=slept.append)
    assert (slept, result.tier.name) == ([], "mid")
    assert cooldowns.remaining_s("m-cheap") == 120.0


def test_server_errors_back_off_exponentially_then_fall_back() -> None:
    """Two retries of a 503 wait 0.5 s then 1 s, then the next tier answers."""
    call, sent = scripted({"m-cheap": [ProviderError(503)] * 3, "m-mid": ["ok"]})
    slept: list[float] = []
    result = CascadeRunner(policy()).run("q", call=call, sleep=slept.append)
    assert slept == [0.5, 1.0]
    assert sent == ["m-cheap"] * 3 + ["m-mid"]
    assert [a.error_kind for a in result.attempts[:3]] == ["server"] * 3


def test_timeout_is_retried() -> None:
    """A timeout is retried on the same tier."""
    call, sent = scripted({"m-cheap": [TimeoutError("read timed out"), "ok"]})
    result = CascadeRunner(policy()).run("q", call=call, sleep=lambda s: None)
    assert (result.attempts[0].error_kind, sent) == ("timeout", ["m-cheap", "m-cheap"])


def test_content_policy_falls_back_without_retry_or_cooldown() -> None:
    """A content-policy refusal goes to the next tier at once; the model stays up."""
    cooldowns = CooldownRegistry(Clock())
    call, sent = scripted(
        {"m-cheap": [ContentPolicyViolationError("flagged")], "m-mid": ["ok"]}
    )
    CascadeRunner(policy(), cooldowns=cooldowns).run("q", call=call)
    assert (sent, cooldowns.remaining_s("m-cheap")) == (["m-cheap", "m-mid"], 0.0)


def test_provider_context_overflow_falls_back() -> None:
    """A context-window error from the provider falls back without a retry."""
    call, sent = scripted(
        {"m-cheap": [ContextWindowExceededError("too long")], "m-mid": ["ok"]}
    )
    result = CascadeRunner(policy()).run("q", call=call)
    assert (result.attempts[0].error_kind, sent) == (
        "context_window",
        ["m-cheap", "m-mid"],
    )


def test_prompt_too_long_for_a_window_is_never_sent() -> None:
    """A tier whose context window cannot hold the prompt is skipped unsent."""
    tiers = [
        Tier(name="small", model="m-cheap", context_window_tokens=8_000),
        Tier(name="large", model="m-mid", context_window_tokens=128_000),
    ]
    call, sent = scripted({"m-mid": ["ok"]})
    result = CascadeRunner(policy(tiers=tiers)).run(
        "q", call=call, count_tokens=lambda tier, request: 9_000
    )
    assert sent == ["m-mid"]
    assert result.attempts[0].reason == "context_window: needs 9000 tokens, window 8000"


def test_context_window_probe_is_used_when_the_tier_sets_none() -> None:
    """Without a tier setting, the caller's context-window probe decides."""
    call, sent = scripted({"m-top": ["ok"]})
    windows = {"m-cheap": 4_000, "m-mid": 4_000, "m-top": None}
    CascadeRunner(policy()).run(
        "q",
        call=call,
        context_window=lambda tier: windows[tier.model],
        count_tokens=lambda tier, request: 5_000,
    )
    assert sent == ["m-top"]


def test_total_attempts_are_bounded() -> None:
    """Sends stop at max_attempts; retries leave one attempt per later tier."""
    retry = Retry(max_attempts=4, max_retries_per_tier=2, jitter_s=0)
    models = ("m-cheap", "m-mid", "m-top")
    call, sent = scripted({m: [ProviderError(500)] * 3 for m in models})
    with pytest.raises(CascadeExhausted) as caught:
        CascadeRunner(policy(retry=retry)).run("q", call=call, sleep=lambda s: None)
    assert sent == ["m-cheap", "m-cheap", "m-mid", "m-top"]
    assert len(caught.value.attempts) == 4


def test_with_the_default_retry_a_healthy_last_tier_is_reached() -> None:
    """Two failing tiers do not spend every attempt before the last one."""
    failing = [ProviderError(503)] * 3
    call, sent = scripted({"m-cheap": failing, "m-mid": list(failing), "m-top": ["ok"]})
    result = CascadeRunner(policy(retry=Retry(jitter_s=0))).run(
        "q", call=call, sleep=lambda s: None
    )
    assert (result.tier.name, len(sent)) == ("top", 6)


def test_a_failed_model_is_not_tried_again_in_the_run() -> None:
    """Two tiers on one model: after it fails, the second tier is skipped."""
    tiers = [
        Tier(name="a", model="shared"),
        Tier(name="b", model="shared", params={"temperature": 1}),
        Tier(name="c", model="other"),
    ]
    retry = Retry(max_retries_per_tier=0, cooldown_s=0)
    call, sent = scripted({"shared": [ProviderError(502)], "other": ["ok"]})
    result = CascadeRunner(policy(tiers=tiers, retry=retry)).run("q", call=call)
    assert sent == ["shared", "other"]
    assert result.attempts[1].reason.startswith("fallback cycle")


def test_cooled_model_is_skipped_by_the_next_run_until_rested() -> None:
    """A model that failed rests cooldown_s across runs, then is used again."""
    clock = Clock()
    cooldowns = CooldownRegistry(clock)
    retry = Retry(max_retries_per_tier=0, cooldown_s=30)
    runner = CascadeRunner(policy(retry=retry), cooldowns=cooldowns)
    call, _sent = scripted(
        {"m-cheap": [ProviderError(503), "back"], "m-mid": ["ok", "ok"]}
    )
    runner.run("q1", call=call)
    second = runner.run("q2", call=call)
    clock.now += 30
    third = runner.run("q3", call=call)
    assert second.attempts[0].reason == "cooldown: model rests 30.0 s more"
    assert third.tier.name == "cheap"


def test_unknown_exceptions_propagate_with_the_attempts_noted() -> None:
    """A non-provider error is not swallowed; a note lists earlier attempts."""
    call, _ = scripted({"m-cheap": [""], "m-mid": [KeyError("bug")]})
    with pytest.raises(KeyError) as caught:
        CascadeRunner(policy()).run("q", call=call)
    assert caught.value.__notes__ == [
        "raised by cascade tier 'mid'; earlier attempts: cheap (m-cheap): "
        "rejected: non_empty: answer has 0 characters, needs 1"
    ]


def test_precall_estimate_starts_hard_prompts_higher() -> None:
    """A coding prompt reaching the threshold starts at the second tier."""
    cascade = policy(precall=PreCall(thresholds=(0.4,)))
    call, sent = scripted({"m-mid": ["ok"]})
    prompt = "Write a python function to count inversions in an array."
    result = CascadeRunner(cascade).run("q", call=call, prompt_text=prompt)
    assert (result.start_tier, result.complexity, sent) == (1, 0.4235, ["m-mid"])


def test_registered_estimator_replaces_the_heuristic() -> None:
    """A named estimator (e.g. a small classifier) picks the first tier."""
    cascade = policy(precall=PreCall(estimator="clf", thresholds=(0.3, 0.6)))
    call, sent = scripted({"m-top": ["ok"]})
    runner = CascadeRunner(cascade, callables={"clf": lambda text: 0.9})
    runner.run("q", call=call, prompt_text="anything")
    assert sent == ["m-top"]


def test_all_rejected_raises_by_default_when_the_last_tier_is_checked() -> None:
    """With the last tier checked and every answer rejected, the run raises."""
    call, _ = scripted({m: [""] for m in ("m-cheap", "m-mid", "m-top")})
    with pytest.raises(CascadeExhausted, match="every answer failed its checks"):
        CascadeRunner(policy(check_last_tier=True)).run("q", call=call)


def test_all_rejected_can_return_the_best_answer_flagged() -> None:
    """on_all_rejected='return' gives the last answer with accepted=False."""
    cascade = policy(check_last_tier=True, on_all_rejected="return")
    call, _ = scripted({"m-cheap": [" "], "m-mid": ["\n"], "m-top": ["\t"]})
    result = CascadeRunner(cascade).run("q", call=call)
    assert (result.accepted, result.tier.name, result.answer.text) == (
        False,
        "top",
        "\t",
    )


def test_each_attempt_is_reported_as_it_happens() -> None:
    """The on_attempt hook sees every attempt in order, skips included."""
    seen: list[tuple[str, str]] = []
    call, _ = scripted({"m-mid": [""], "m-top": ["ok"]})
    runner = CascadeRunner(
        policy(), on_attempt=lambda a: seen.append((a.tier, a.outcome))
    )
    runner.run("q", call=call, fits=lambda tier, request: tier.name != "cheap")
    assert seen == [("cheap", "skipped"), ("mid", "rejected"), ("top", "accepted")]


def test_attempts_carry_wall_clock_bounds() -> None:
    """A sent attempt records start and end from the injected clock."""
    ticks = iter(range(1_000, 2_000, 10))
    call, _ = scripted({"m-cheap": ["ok"]})
    runner = CascadeRunner(policy(), clock_ns=lambda: next(ticks))
    (attempt,) = runner.run("q", call=call).attempts
    assert (attempt.started_ns, attempt.ended_ns) == (1_000, 1_010)


async def test_async_driver_follows_the_same_rules() -> None:
    """The async driver retries, awaits an async budget probe and escalates."""
    queue: dict[str, list[object]] = {
        "m-cheap": [ProviderError(429, {"retry-after": "2"}), ""],
        "m-mid": ["ok"],
    }
    slept: list[float] = []

    async def call(tier: Tier, request: str) -> Answer:
        step = queue[tier.model].pop(0)
        if isinstance(step, Exception):
            raise step
        return Answer(str(step), tier.model, Decimal("0.001"))

    async def fits(tier: Tier, request: str) -> bool:
        return True

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    result = await CascadeRunner(policy()).arun("q", call=call, fits=fits, sleep=sleep)
    assert slept == [2.0]
    assert outcomes(result.attempts) == [
        ("cheap", "error"),
        ("cheap", "rejected"),
        ("mid", "accepted"),
    ]


def test_jittered_backoff_stays_within_its_bounds() -> None:
    """Backoff with 0.5 s jitter lies in [base, base + 0.5] and caps at the max."""
    wait = tenacity_wait(Retry(backoff_initial_s=1, backoff_max_s=4, jitter_s=0.5))
    waits = [wait(n) for n in (1, 2, 3, 4)]
    bases = [1.0, 2.0, 4.0, 4.0]
    assert all(b <= w <= b + 0.5 for w, b in zip(waits, bases, strict=True))


def test_cooldown_keeps_the_longer_rest() -> None:
    """A shorter cooldown does not cut a longer one short."""
    clock = Clock()
    cooldowns = CooldownRegistry(clock)
    cooldowns.cool("m", 60)
    cooldowns.cool("m", 5)
    assert cooldowns.remaining_s("m") == 60.0


def test_status_codes_classify_unknown_exception_types() -> None:
    """Status 429, 408 and 502 map to rate_limit, timeout and server."""
    kinds = [classify_error(ProviderError(code)) for code in (429, 408, 502, 400)]
    assert kinds == ["rate_limit", "timeout", "server", None]


def test_retry_after_http_date_is_read_against_now() -> None:
    """An HTTP-date Retry-After gives the seconds from now until then."""
    error = ProviderError(429, {"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"})
    assert retry_after_s(error, now=lambda: 1445412480.0) == 10.0


def test_an_error_on_the_last_tier_does_not_claim_a_fallback() -> None:
    """Only an error with a tier after it says 'falling back'."""
    errors = {
        model: [ContentPolicyViolationError("flagged")]
        for model in ("m-cheap", "m-mid", "m-top")
    }
    call, _ = scripted(errors)
    with pytest.raises(CascadeExhausted) as caught:
        CascadeRunner(policy()).run("q", call=call)
    reasons = [a.reason.rsplit("; ", 1)[-1] for a in caught.value.attempts]
    assert reasons == ["falling back", "falling back", "no tier left"]


def test_every_attempt_names_the_tier_model_whatever_the_answer_says() -> None:
    """An accepted attempt reads m-mid like its failed sibling, not the dated id."""

    def call(tier: Tier, request: str) -> Answer:
        if tier.model == "m-cheap":
            raise ContentPolicyViolationError("flagged")
        return Answer("ok", "m-mid-2026-01-01", Decimal("0.001"))

    result = CascadeRunner(policy()).run("q", call=call)
    assert [(a.tier, a.model) for a in result.attempts] == [
        ("cheap", "m-cheap"),
        ("mid", "m-mid"),
    ]


class AuthenticationError(Exception):
    """Named like LiteLLM's revoked-key error."""


def test_a_rest_is_capped_at_max_cooldown_s() -> None:
    """A 429 asking for an hour rests the model max_cooldown_s, not an hour."""
    cooldowns = CooldownRegistry(Clock())
    call, _sent = scripted(
        {"m-cheap": [ProviderError(429, {"retry-after": "3600"})], "m-mid": ["ok"]}
    )
    retry = Retry(jitter_s=0, max_cooldown_s=300)
    CascadeRunner(policy(retry=retry), cooldowns=cooldowns).run("q", call=call)
    assert cooldowns.remaining_s("m-cheap") == 300.0


def test_a_failing_key_rests_the_model_for_that_key_only() -> None:
    """Runs keyed by API key: key A's auth error leaves key B on the cheap tier."""
    cooldowns = CooldownRegistry(Clock())
    runner = CascadeRunner(policy(), cooldowns=cooldowns)
    call, sent = scripted(
        {"m-cheap": [AuthenticationError("bad key"), "ok"], "m-mid": ["ok"]}
    )

    def by_key(tier: Tier, request: str) -> str:
        return cooldown_key(tier.model, {"api_key": request})

    runner.run("sk-A", call=call, rest_key=by_key)
    other = runner.run("sk-B", call=call, rest_key=by_key)
    assert (other.tier.name, sent) == ("cheap", ["m-cheap", "m-mid", "m-cheap"])
    assert cooldowns.remaining_s(by_key(TIERS[0], "sk-A")) == 30.0


def test_a_cooldown_key_hashes_the_api_key_and_names_the_endpoint() -> None:
    """The key names the model and endpoint; the API key itself never appears."""
    key = cooldown_key("m", {"api_key": "sk-secret", "api_base": "http://h:1"})
    assert key.startswith("m at http://h:1 key sha256:")
    assert "sk-secret" not in key
    assert cooldown_key("m", {}) == "m"
    assert cooldown_key("m", {"api_key": "sk-other"}) != cooldown_key(
        "m", {"api_key": "sk-secret"}
    )


def test_an_auth_fallback_is_a_warning_once_per_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A revoked key is logged at WARNING with what to fix, not again while resting."""
    caplog.set_level(logging.WARNING, logger="governor.cascade")
    clock = Clock()
    runner = CascadeRunner(policy(), cooldowns=CooldownRegistry(clock))
    call, _sent = scripted(
        {"m-cheap": [AuthenticationError("bad key")] * 2, "m-mid": ["ok"] * 3}
    )
    runner.run("q1", call=call)
    runner.run("q2", call=call)
    clock.now += 30
    runner.run("q3", call=call)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert "check the API key" in warnings[0]
    assert "cascade tier 'cheap': model m-cheap failed with auth" in warnings[0]


def test_exhausted_by_provider_errors_chains_the_last_and_advises_keys() -> None:
    """Every tier failing auth: the last error is the cause, the advice fits."""
    errors = {m: [AuthenticationError(f"{m} key")] for m in ("m-cheap", "m-mid")}
    errors["m-top"] = [ProviderError(503)] * 3
    call, _ = scripted(errors)
    retry = Retry(max_retries_per_tier=0)
    with pytest.raises(CascadeExhausted) as caught:
        CascadeRunner(policy(retry=retry)).run("q", call=call)
    error = caught.value
    assert isinstance(error.__cause__, ProviderError)
    assert "Check the API keys and model names" in str(error)
    assert "Relax the checks" not in str(error)


def test_exhausted_by_rejections_advises_relaxing_the_checks() -> None:
    """Every answer rejected: the advice is about checks, not keys."""
    call, _ = scripted({m: [""] for m in ("m-cheap", "m-mid", "m-top")})
    with pytest.raises(CascadeExhausted) as caught:
        CascadeRunner(policy(check_last_tier=True)).run("q", call=call)
    assert caught.value.__cause__ is None
    assert "Relax the checks, or add a more capable tier." in str(caught.value)
    assert "API keys" not in str(caught.value)


def test_a_check_that_raises_carries_the_attempts_note() -> None:
    """A bug in a check propagates with a note of what was sent and paid."""

    def broken(answer: Answer, history: object) -> bool:
        raise ValueError("bug in my check")

    cascade = policy(checks=[{"kind": "callable", "ref": "broken"}])
    call, _ = scripted({"m-cheap": ["fine"]})
    with pytest.raises(ValueError, match="bug in my check") as caught:
        CascadeRunner(cascade, callables={"broken": broken}).run("q", call=call)
    assert caught.value.__notes__ == [
        "raised by a check of cascade tier 'cheap' (its answer was sent and "
        "paid, cost 0.001 USD); earlier attempts: none"
    ]


def test_precall_falls_back_below_the_start_tier_when_the_budget_is_tight() -> None:
    """A hard prompt whose start tier and above do not fit tries cheaper tiers."""
    cascade = policy(precall=PreCall(thresholds=(0.4,)))
    call, sent = scripted({"m-cheap": [""]})
    prompt = "Write a python function to count inversions in an array."

    def fits(tier: Tier, request: str) -> bool:
        return tier.name == "cheap"

    runner = CascadeRunner(cascade)
    with pytest.raises(CascadeExhausted) as caught:
        runner.run("q", call=call, fits=fits, prompt_text=prompt)
    assert sent == ["m-cheap"]
    # The cheaper tier's answer is checked: the estimate said the prompt is hard.
    assert outcomes(caught.value.attempts) == [
        ("mid", "skipped"),
        ("top", "skipped"),
        ("cheap", "rejected"),
    ]
    call, sent = scripted({"m-cheap": ["fine"]})
    result = runner.run("q", call=call, fits=fits, prompt_text=prompt)
    assert (result.tier.name, result.accepted, result.start_tier) == ("cheap", True, 1)


# -- Retry-After values that are no number of seconds -------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after": "nan"},
        {"retry-after": "NaN"},
        {"retry-after": "inf"},
        {"retry-after": "-inf"},
        {"retry-after": "1e999"},
        {"retry-after": "-5"},
        {"retry-after": "soon"},
        {"retry-after": "Wed, 21 Oct 99999 07:28:10 GMT"},
        {"retry-after-ms": "nan"},
        {"retry-after-ms": "-250"},
        {"retry-after-ms": "Infinity"},
    ],
)
def test_an_unusable_retry_after_counts_as_not_given(headers: dict[str, str]) -> None:
    """NaN, infinite, negative and unreadable values ask for no wait at all."""
    assert retry_after_s(ProviderError(429, headers)) is None


def test_an_unusable_retry_after_ms_leaves_retry_after_to_be_read() -> None:
    """A NaN retry-after-ms does not hide a usable Retry-After beside it."""
    headers = {"retry-after-ms": "nan", "retry-after": "3"}
    assert retry_after_s(ProviderError(429, headers)) == 3.0


def test_an_http_date_without_a_zone_is_read_as_gmt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """'-0000' dates are GMT, as every HTTP date is, whatever the local zone."""
    import time

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        error = ProviderError(429, {"Retry-After": "Wed, 21 Oct 2015 07:28:10 -0000"})
        assert retry_after_s(error, now=lambda: 1445412480.0) == 10.0
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_nan_retry_after_waits_the_backoff_and_retries() -> None:
    """A 429 with Retry-After: nan is retried after the plain backoff."""
    call, sent = scripted(
        {"m-cheap": [ProviderError(429, {"retry-after": "nan"}), "ok"]}
    )
    slept: list[float] = []
    result = CascadeRunner(policy()).run("q", call=call, sleep=slept.append)
    assert (slept, sent, result.tier.name) == ([0.5], ["m-cheap", "m-cheap"], "cheap")
    assert "Retry-After" not in result.attempts[0].reason


async def test_a_nan_retry_after_does_not_hang_the_async_runner() -> None:
    """asyncio.sleep(nan) never returns: arun must not be asked to wait NaN."""
    import asyncio

    script = {"m-cheap": [ProviderError(429, {"retry-after-ms": "nan"}), "ok"]}
    call, sent = scripted(script)

    async def acall(tier: Tier, request: str) -> Answer:
        return call(tier, request)

    retry = Retry(jitter_s=0, backoff_initial_s=0.01)
    runner = CascadeRunner(policy(retry=retry))
    result = await asyncio.wait_for(runner.arun("q", call=acall), timeout=5)
    assert (result.tier.name, sent) == ("cheap", ["m-cheap", "m-cheap"])


# -- a 400: the request does not suit this model ------------------------------


class BadRequestError(Exception):
    """Named like LiteLLM's (and the OpenAI SDK's) HTTP 400 error."""


class UnsupportedParamsError(BadRequestError):
    """Named like LiteLLM's own subclass, raised for a parameter a model lacks."""


def test_a_bad_request_falls_back_without_retry_or_rest() -> None:
    """A 400 goes to the next tier at once; the model does not rest."""
    cooldowns = CooldownRegistry(Clock())
    runner = CascadeRunner(policy(), cooldowns=cooldowns)
    call, sent = scripted(
        {
            "m-cheap": [UnsupportedParamsError("temperature is not supported"), "ok"],
            "m-mid": ["ok"],
        }
    )
    slept: list[float] = []
    result = runner.run("q1", call=call, sleep=slept.append)
    first = result.attempts[0]
    assert (first.outcome, first.error_kind, first.cost_usd) == (
        "error",
        "bad_request",
        None,
    )
    assert first.reason.startswith("bad_request: UnsupportedParamsError: temperature")
    assert (result.tier.name, slept, sent) == ("mid", [], ["m-cheap", "m-mid"])
    assert cooldowns.remaining_s("m-cheap") == 0.0
    # Another request is not kept from the cheap tier.
    assert runner.run("q2", call=call).tier.name == "cheap"


def test_bad_requests_on_every_tier_exhaust_with_the_last_as_cause() -> None:
    """Every tier refusing the request: CascadeExhausted, chained, with advice."""
    last = BadRequestError("top: messages[0] is malformed")
    call, _ = scripted(
        {
            "m-cheap": [BadRequestError("cheap: bad")],
            "m-mid": [BadRequestError("mid: bad")],
            "m-top": [last],
        }
    )
    with pytest.raises(CascadeExhausted) as caught:
        CascadeRunner(policy()).run("q", call=call)
    error = caught.value
    assert error.__cause__ is last
    assert [a.error_kind for a in error.attempts] == ["bad_request"] * 3
    assert error.reason == "every tier failed or was skipped"
    assert "refused the request as invalid (HTTP 400)" in str(error)
    assert "providers' status" not in str(error)


# -- the summary of a run that found no answer --------------------------------


def test_the_summary_counts_each_kind_of_skip() -> None:
    """A cooldown skip and a budget skip are each counted under their own cause."""
    cooldowns = CooldownRegistry(Clock())
    cooldowns.cool("m-mid", 60)
    call, sent = scripted({"m-cheap": [""]})

    def fits(tier: Tier, request: str) -> bool:
        return tier.name != "top"

    with pytest.raises(CascadeExhausted) as caught:
        CascadeRunner(policy(), cooldowns=cooldowns).run("q", call=call, fits=fits)
    assert (caught.value.reason, sent) == (
        "every answer failed its checks; 1 tier(s) skipped because the budget "
        "could not cover them; 1 tier(s) skipped because their model was "
        "resting after recent failures (cooldown)",
        ["m-cheap"],
    )


def test_the_summary_counts_failed_tiers_and_window_skips() -> None:
    """A rejection, a provider error and a prompt too long: each is said."""
    cascade = policy(
        tiers=[
            Tier(name="cheap", model="m-cheap"),
            Tier(name="mid", model="m-mid"),
            Tier(name="top", model="m-top", context_window_tokens=10),
        ]
    )
    call, _ = scripted({"m-cheap": [""], "m-mid": [ProviderError(503)] * 3})
    with pytest.raises(CascadeExhausted) as caught:
        CascadeRunner(cascade).run(
            "q", call=call, sleep=lambda s: None, count_tokens=lambda t, r: 50
        )
    assert caught.value.reason == (
        "every answer failed its checks; 1 tier(s) failed with a provider "
        "error; 1 tier(s) skipped because the request does not fit their "
        "context window"
    )


# -- checks and estimators are synchronous ------------------------------------


async def _async_check(answer: Answer, history: object) -> bool:
    return True


def test_an_async_check_is_refused_before_anything_is_sent() -> None:
    """An async def check is refused when the runner is built, not after a call."""
    cascade = policy(checks=[{"kind": "callable", "ref": "mine"}])
    with pytest.raises(ConfigError, match="check 'callable:mine' refers to"):
        CascadeRunner(cascade, callables={"mine": _async_check})


def test_an_async_estimator_is_refused_when_the_runner_is_built() -> None:
    """A pre-call estimator must return its score, not a coroutine."""

    async def estimate(text: str) -> float:
        return 0.5

    cascade = policy(precall=PreCall(thresholds=(0.4,), estimator="mine"))
    with pytest.raises(ConfigError, match="pre-call estimator 'mine' refers to"):
        CascadeRunner(cascade, callables={"mine": estimate})
