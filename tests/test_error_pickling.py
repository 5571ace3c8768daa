"""Errors survive pickling and print amounts plainly, with advice fit for the unit."""

from __future__ import annotations

import copy
import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor
from decimal import Decimal

import pytest

import governor._errors
import governor.loops._errors
from governor import (
    Budget,
    BudgetExceeded,
    CallRequest,
    ConfigError,
    Governor,
    GovernorClosed,
    GovernorError,
    GovernorHalt,
    LoopDetected,
    OutputLimitExceeded,
    Policy,
    PolicyError,
    Price,
    PriceUnknown,
    Pricing,
    ScopeBlocked,
    StoreUnavailable,
    UngovernedCall,
)
from governor.cascade import Attempt, CascadeBudgetExceeded, CascadeExhausted
from governor.spend._record import SpendDataError
from governor.stores._semaphore import SlotUnavailable

USD_ADVICE = "Raise the budget's limit, lower max_tokens, or pick a cheaper model."
TOKEN_ADVICE = (
    "Raise the budget's token limit (Budget.max_tokens), lower the call's "
    "max_tokens, or shorten the prompt."
)


def _budget_refusal(task_id: str = "t-1") -> BudgetExceeded:
    """A refusal as the engine builds it, with amounts in exponent form."""
    return BudgetExceeded(
        scope=f"task:{task_id}",
        unit="usd",
        limit=Decimal("2E+2"),
        spent=Decimal("199.99998"),
        reserved=Decimal("0.000005"),
        requested=Decimal("2.5E-5"),
        model="gpt-4o-mini",
        task_id=task_id,
        task_spent_usd=Decimal("199.99998"),
        task_spent_tokens=1234,
    )


def _token_refusal() -> BudgetExceeded:
    return BudgetExceeded(
        scope="team:search",
        unit="tokens",
        limit=Decimal(100),
        spent=Decimal(60),
        reserved=Decimal(0),
        requested=Decimal(520),
        model="gpt-4o-mini",
        task_id="t-2",
        task_spent_usd=Decimal("0.000036"),
        task_spent_tokens=60,
    )


def _loop() -> LoopDetected:
    return LoopDetected(
        rule="repeat",
        detail="tool call bash(ls) returned the same result 4 times",
        evidence=['bash({"command":"ls"}) -> a'],
        steps=[1, 2, 3, 4],
        setting="max_repeats",
        limit=2,
        task_id="t-3",
        spent_usd=Decimal("0.42"),
        spent_tokens=900,
    )


def _attempts() -> tuple[Attempt, ...]:
    return (
        Attempt(
            tier="cheap",
            model="gpt-4o-mini",
            outcome="error",
            reason="rate_limit: RateLimitError: slow down; falling back",
            sent=True,
            error_kind="rate_limit",
            started_ns=1,
            ended_ns=2,
        ),
        Attempt(
            tier="strong",
            model="gpt-4o",
            outcome="skipped",
            reason="over budget",
            sent=False,
            error_kind="budget",
        ),
    )


ERRORS: dict[str, GovernorError] = {
    "GovernorError": GovernorError("something went wrong"),
    "ConfigError": ConfigError("a semaphore needs at least 1 slot, got 0"),
    "PolicyError": PolicyError("cannot merge int into Policy"),
    "PriceUnknown": PriceUnknown("acme/unpriced", "not in the price map"),
    "PriceUnknown-no-reason": PriceUnknown("acme/unpriced"),
    "GovernorHalt": GovernorHalt(
        "stopped", task_id="t-9", spent_usd=Decimal("1.5"), spent_tokens=10
    ),
    "BudgetExceeded-usd": _budget_refusal(),
    "BudgetExceeded-tokens": _token_refusal(),
    "ScopeBlocked": ScopeBlocked("team:search", task_id="t-4"),
    "OutputLimitExceeded": OutputLimitExceeded(
        model="gpt-4o", reserved_tokens=64, streamed_chars=1290, task_id="t-6"
    ),
    "StoreUnavailable": StoreUnavailable(
        "the Redis store at redis://127.0.0.1:6379/0 did not answer reserve "
        "after 3 attempt(s): Connection refused."
    ),
    "SlotUnavailable": SlotUnavailable("fanout:search", 4, 2.5),
    "GovernorClosed": GovernorClosed("a task"),
    "UngovernedCall": UngovernedCall("responses", "litellm.completion()"),
    "UngovernedCall-no-instead": UngovernedCall("image_generation"),
    "SpendDataError": SpendDataError("spend.jsonl:3: not JSON"),
    "LoopDetected": _loop(),
    "CascadeExhausted": CascadeExhausted(
        _attempts(),
        reason="every tier failed",
        tiers=["cheap", "strong"],
        task_id="t-5",
        spent_usd=Decimal("0.003"),
    ),
    "CascadeBudgetExceeded": CascadeBudgetExceeded(
        _attempts(),
        tiers=["cheap", "strong"],
        refusal=_budget_refusal("t-6"),
        task_id="t-6",
        spent_usd=Decimal("0.003"),
    ),
}


def _public_error_classes() -> set[type[BaseException]]:
    found: set[type[BaseException]] = set()
    for module in (governor._errors, governor.loops._errors):
        for name in module.__all__:
            value = getattr(module, name)
            if isinstance(value, type) and issubclass(value, BaseException):
                found.add(value)
    return found


def _assert_same(restored: BaseException, original: BaseException) -> None:
    assert type(restored) is type(original)
    assert str(restored) == str(original)
    assert restored.args == original.args
    assert vars(restored) == vars(original)
    if isinstance(original, GovernorError):
        assert isinstance(restored, GovernorError)
        assert restored.to_dict() == original.to_dict()


def test_every_public_error_class_has_a_pickling_case() -> None:
    """Each class exported by the two error modules is covered below."""
    covered = {type(error) for error in ERRORS.values()}
    assert _public_error_classes() <= covered


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_error_round_trips_through_pickle(name: str) -> None:
    """Class, message, args and every attribute survive pickle, all protocols."""
    original = ERRORS[name]
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        _assert_same(pickle.loads(pickle.dumps(original, protocol)), original)


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_error_survives_copy_and_deepcopy(name: str) -> None:
    """copy.copy and copy.deepcopy use the same reduction and keep the fields."""
    original = ERRORS[name]
    _assert_same(copy.copy(original), original)
    _assert_same(copy.deepcopy(original), original)


def test_budget_exceeded_fields_after_pickle() -> None:
    """The unpickled refusal carries the exact budget fields and task spend."""
    restored = pickle.loads(pickle.dumps(_budget_refusal()))
    assert type(restored) is BudgetExceeded
    assert restored.scope == "task:t-1"
    assert restored.unit == "usd"
    assert restored.limit == Decimal(200)
    assert str(restored.limit) == "200"
    assert restored.spent == Decimal("199.99998")
    assert restored.reserved == Decimal("0.000005")
    assert restored.requested == Decimal("0.000025")
    assert restored.model == "gpt-4o-mini"
    assert restored.task_id == "t-1"
    assert restored.spent_usd == Decimal("199.99998")
    assert restored.spent_tokens == 1234
    assert restored.code == "budget_exceeded"


def test_price_unknown_message_is_not_garbled_by_pickle() -> None:
    """PriceUnknown keeps its own message and model, not the message as model."""
    restored = pickle.loads(pickle.dumps(PriceUnknown("acme/x", "not listed")))
    assert restored.model == "acme/x"
    assert restored.reason == "not listed"
    assert str(restored) == (
        "no price is known for model 'acme/x' (not listed). Price it with "
        "Policy(pricing=Pricing(overrides={'acme/x': Price(input_usd_per_mtok=..., "
        "output_usd_per_mtok=...)})), or set Pricing(default=Price(...)) to "
        "admit unpriced models at a default rate."
    )
    assert restored.to_dict()["model"] == "acme/x"


def test_loop_detected_fields_after_pickle() -> None:
    """LoopDetected stays a RecursionError and keeps rule, evidence and steps."""
    restored = pickle.loads(pickle.dumps(_loop()))
    assert isinstance(restored, RecursionError)
    assert (restored.rule, restored.setting, restored.limit) == (
        "repeat",
        "max_repeats",
        2,
    )
    assert restored.evidence == ('bash({"command":"ls"}) -> a',)
    assert restored.steps == (1, 2, 3, 4)
    assert (restored.task_id, restored.spent_usd, restored.spent_tokens) == (
        "t-3",
        Decimal("0.42"),
        900,
    )


def test_notes_survive_pickle() -> None:
    """Notes added to an error (add_note) come back with it."""
    error = _budget_refusal()
    error.add_note("raised by cascade tier 'cheap'")
    restored = pickle.loads(pickle.dumps(error))
    assert restored.__notes__ == ["raised by cascade tier 'cheap'"]


def _refuse_in_worker(task_id: str) -> None:
    """Run in a worker process: raise a refusal for the parent to re-raise."""
    raise _budget_refusal(task_id)


def test_budget_exceeded_crosses_a_process_pool() -> None:
    """A worker's BudgetExceeded is re-raised in the parent with its fields."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        future = pool.submit(_refuse_in_worker, "t-worker")
        with pytest.raises(BudgetExceeded) as info:
            future.result(timeout=120)
    error = info.value
    assert type(error) is BudgetExceeded
    assert error.scope == "task:t-worker"
    assert error.task_id == "t-worker"
    assert (error.limit, error.spent, error.reserved, error.requested) == (
        Decimal(200),
        Decimal("199.99998"),
        Decimal("0.000005"),
        Decimal("0.000025"),
    )
    assert error.spent_tokens == 1234
    assert str(error) == str(_budget_refusal("t-worker"))


def test_amounts_print_without_exponent() -> None:
    """Exponent-form Decimals print plainly and keep their value."""
    error = _budget_refusal()
    assert str(error) == (
        "budget task:t-1 (usd) would be exceeded by a call to 'gpt-4o-mini': "
        "needs up to 0.000025 usd (the most it can cost), "
        "0.000015 left of 200 (spent 199.99998, "
        "reserved by calls in flight 0.000005). The call was not sent. "
        f"{USD_ADVICE}"
    )
    assert str(error.limit) == "200"
    assert error.limit == Decimal("2E+2")
    assert error.to_dict()["limit"] == "200"
    assert error.to_dict()["requested"] == "0.000025"


def test_tiny_amounts_print_without_exponent() -> None:
    """Amounts below a millionth, which Decimal's str writes as 1E-7, too."""
    error = BudgetExceeded(
        scope="task:t-7",
        unit="usd",
        limit=Decimal("0.000001"),
        spent=Decimal("9E-7"),
        reserved=Decimal(0),
        requested=Decimal("1.5E-7"),
        model="gpt-4o-mini",
    )
    assert (
        "needs up to 0.00000015 usd (the most it can cost), 0.0000001 left of 0.000001 "
    ) in str(error)
    assert "(spent 0.0000009, " in str(error)
    assert "E-" not in str(error)
    assert error.to_dict()["spent"] == "0.0000009"
    assert error.spent == Decimal("9E-7")


def test_loop_detected_prints_spend_without_exponent() -> None:
    """The loop stop message writes the task's spend plainly."""
    error = LoopDetected(
        rule="max_model_calls",
        detail="the task made 50 model calls",
        setting="max_model_calls",
        limit=50,
        spent_usd=Decimal("3E+1"),
    )
    assert "after spending $30 (0 tokens)" in str(error)
    assert error.to_dict()["spent_usd"] == "30"
    assert str(error.spent_usd) == "30"


def _refuse(policy: Policy, request: CallRequest, task_id: str) -> BudgetExceeded:
    gov = Governor(policy)
    try:
        with pytest.raises(BudgetExceeded) as info, gov.task(task_id):
            gov.begin_call(request)
    finally:
        gov.close()
    return info.value


def test_usd_budget_of_200_refusal_prints_200() -> None:
    """A $200 budget's refusal says "200 left of 200", never "2E+2"."""
    policy = Policy(
        budgets=[Budget(max_usd=200)],
        pricing=Pricing(
            overrides={
                "acme/big": Price(input_usd_per_mtok=0, output_usd_per_mtok=1_000_000)
            }
        ),
    )
    request = CallRequest(
        model="acme/big",
        messages=[{"role": "user", "content": "hi"}],
        max_output_tokens=500,
    )
    error = _refuse(policy, request, "t-200")
    assert str(error) == (
        "budget task:t-200 (usd) would be exceeded by a call to 'acme/big': "
        "needs up to 500 usd (the most it can cost), "
        "200 left of 200 (spent 0, reserved by calls in "
        f"flight 0). The call was not sent. {USD_ADVICE}"
    )
    assert str(error.limit) == "200"
    assert error.limit == Decimal(200)
    assert str(error.requested) == "500"
    assert error.to_dict()["limit"] == "200"


def test_token_budget_refusal_advises_token_remedies() -> None:
    """A token budget's refusal does not suggest a cheaper model."""
    policy = Policy(
        budgets=[Budget(max_tokens=100)],
        pricing=Pricing(
            overrides={"acme/big": Price(input_usd_per_mtok=1, output_usd_per_mtok=1)}
        ),
    )
    request = CallRequest(
        model="acme/big",
        messages=[{"role": "user", "content": "hi"}],
        max_output_tokens=500,
        prompt_tokens=20,
    )
    error = _refuse(policy, request, "t-tok")
    assert error.unit == "tokens"
    assert str(error) == (
        "budget task:t-tok (tokens) would be exceeded by a call to 'acme/big': "
        "needs up to 520 tokens (the most it can cost), "
        "100 left of 100 (spent 0, reserved by calls in "
        f"flight 0). The call was not sent. {TOKEN_ADVICE}"
    )
    assert "cheaper model" not in str(error)
    assert str(error.limit) == "100"


def test_advice_follows_the_unit() -> None:
    """Dollar refusals suggest a cheaper model; token refusals do not."""
    assert str(_budget_refusal()).endswith(USD_ADVICE)
    assert str(_token_refusal()).endswith(TOKEN_ADVICE)


def test_whole_dollar_amounts_convert_without_an_exponent() -> None:
    """nanos_to_usd writes 200 dollars as 200, and 1 nano-dollar exactly."""
    from governor._money import nanos_to_usd

    assert [str(nanos_to_usd(n)) for n in (200 * 10**9, 10**9, 25_000)] == [
        "200",
        "1",
        "0.000025",
    ]
