"""The governor's call flow: reserve before, settle after, refuse in time."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import litellm
import pytest
from opentelemetry.trace import StatusCode

from conftest import MOCK_COST, CountingLiteLLM, SpanCapture
from governor import (
    Budget,
    BudgetExceeded,
    ConfigError,
    Governor,
    GovernorClosed,
    Policy,
    Price,
    PriceUnknown,
    Pricing,
)
from governor.adapters.litellm import GovernedLiteLLM
from governor.telemetry import attributes as attr

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def governed(
    policy: Policy, capture: SpanCapture
) -> tuple[Governor, GovernedLiteLLM, CountingLiteLLM]:
    gov = Governor(policy, tracer_provider=capture.provider)
    counter = CountingLiteLLM()
    llm = GovernedLiteLLM(
        gov, completion=counter.completion, acompletion=counter.acompletion
    )
    return gov, llm, counter


def call(llm: GovernedLiteLLM, **extra: Any) -> Any:
    return llm.completion(
        model="gpt-4o-mini", messages=MESSAGES, mock_response="Paris", **extra
    )


def test_settled_cost_is_priced_from_reported_usage(capture: SpanCapture) -> None:
    """A call is charged its usage at the model's list price, exactly."""
    gov, llm, _ = governed(Policy(), capture)
    with gov.task() as task:
        call(llm, max_tokens=50)
    assert task.report().cost_usd == MOCK_COST


def test_task_is_stopped_before_the_call_that_would_cross(
    capture: SpanCapture,
) -> None:
    """The refused call is never sent and spend stays within the budget."""
    budget = Decimal("0.0001")
    gov, llm, counter = governed(Policy(budgets=[Budget(max_usd=budget)]), capture)
    with pytest.raises(BudgetExceeded) as info, gov.task() as task:
        for _ in range(100):
            call(llm, max_tokens=50)
    report = task.report()
    # Each call holds its worst case: prompt bound plus 50 output tokens.
    assert counter.sent == report.calls
    assert report.cost_usd <= budget
    assert report.cost_usd == MOCK_COST * counter.sent
    assert budget - report.cost_usd < Decimal(info.value.requested)
    assert report.stop_reason == "budget_exceeded"


def test_a_raised_budget_on_the_old_ledger_counts_what_the_task_spent(
    capture: SpanCapture,
) -> None:
    """The quickstart's recipe: a bigger budget, the same ledger, one task."""
    small = Decimal("0.0001")
    gov, llm, _ = governed(Policy(budgets=[Budget(max_usd=small)]), capture)
    with pytest.raises(BudgetExceeded), gov.task("job-1") as first:
        for _ in range(100):
            call(llm, max_tokens=50)

    big = Policy(budgets=[Budget(max_usd=small * 2)])
    again = Governor(big, ledger=gov.ledger, tracer_provider=capture.provider)
    counter = CountingLiteLLM()
    more = GovernedLiteLLM(
        again, completion=counter.completion, acompletion=counter.acompletion
    )
    with pytest.raises(BudgetExceeded), again.task("job-1") as second:
        for _ in range(100):
            call(more, max_tokens=50)

    both = first.report().cost_usd + second.report().cost_usd
    line = again.ledger.balance("task:job-1")
    assert line is not None
    assert Decimal(line.spent_nanos) / 10**9 == both
    assert both <= small * 2
    assert counter.sent == second.report().calls > 0


def test_budget_exceeded_carries_scope_limit_and_spend(capture: SpanCapture) -> None:
    """The refusal names the scope, unit, limit, spend so far and task id."""
    gov, llm, _ = governed(Policy(budgets=[Budget(max_usd="0.00004")]), capture)
    with pytest.raises(BudgetExceeded) as info, gov.task("t-1"):
        call(llm, max_tokens=50)
        call(llm, max_tokens=50)
    error = info.value
    assert (error.scope, error.unit, error.task_id) == ("task:t-1", "usd", "t-1")
    assert error.limit == Decimal("0.00004")
    assert error.spent == MOCK_COST
    assert error.spent_usd == MOCK_COST
    assert error.to_dict()["code"] == "budget_exceeded"
    assert (error.in_flight_only, error.to_dict()["in_flight_only"]) == (False, False)


def test_a_refusal_for_room_held_by_calls_in_flight_says_so() -> None:
    """Spend 0, room taken by a stream in flight: waiting can cure it, which
    in_flight_only tells a service (503 and retry, not 429)."""
    gov = Governor(Policy(budgets=[Budget(max_usd="0.00005")]))
    llm = GovernedLiteLLM(gov)
    with gov.task("t-2"):
        held = call(llm, max_tokens=50, stream=True)  # holds, not read yet
        with pytest.raises(BudgetExceeded) as info:
            call(llm, max_tokens=50)
        held.close()
    error = info.value
    assert (error.spent, error.in_flight_only) == (Decimal(0), True)
    assert error.to_dict()["in_flight_only"] is True


def test_token_budget_refuses_in_tokens(capture: SpanCapture) -> None:
    """A token budget counts prompt bound plus max output per call."""
    gov, llm, counter = governed(Policy(budgets=[Budget(max_tokens=100)]), capture)
    with pytest.raises(BudgetExceeded) as info, gov.task():
        call(llm, max_tokens=500)
    assert info.value.unit == "tokens"
    assert counter.sent == 0


def test_missing_max_tokens_is_filled_from_the_policy(capture: SpanCapture) -> None:
    """A request without max_tokens is sent with the policy's default ceiling."""
    seen: dict[str, Any] = {}

    def spy(**kwargs: Any) -> Any:
        seen.update(kwargs)
        return litellm.completion(**kwargs)

    gov = Governor(Policy(default_max_output_tokens=77))
    GovernedLiteLLM(gov, completion=spy).completion(
        model="gpt-4o-mini", messages=MESSAGES, mock_response="x"
    )
    assert seen["max_tokens"] == 77


def test_unknown_model_is_refused_with_how_to_price_it(capture: SpanCapture) -> None:
    """A model without a price is refused by default, naming the fix."""
    _gov, llm, counter = governed(Policy(), capture)
    with pytest.raises(PriceUnknown) as info:
        llm.completion(model="acme/secret-model", messages=MESSAGES, mock_response="x")
    assert info.value.model == "acme/secret-model"
    assert "Pricing(overrides=" in str(info.value)
    assert counter.sent == 0


def test_default_price_admits_unknown_models(capture: SpanCapture) -> None:
    """A policy default price prices models the map does not know."""
    pricing = Pricing(default=Price(input_usd_per_mtok=1, output_usd_per_mtok=2))
    gov, llm, _ = governed(Policy(pricing=pricing), capture)
    with gov.task() as task:
        llm.completion(
            model="openai/acme-model",
            messages=MESSAGES,
            mock_response="x",
            max_tokens=5,
        )
    assert task.report().cost_usd == Decimal(10 * 1 + 20 * 2) / 10**6


def test_span_cost_equals_ledger_and_task_total_is_the_sum(
    capture: SpanCapture,
) -> None:
    """Each call span's cost is its settled cost; the task span sums them."""
    gov, llm, _ = governed(Policy(budgets=[Budget(max_usd=1)]), capture)
    with gov.task() as task:
        for _ in range(3):
            call(llm, max_tokens=30)
    calls = capture.calls()
    assert [s.attributes[attr.GEN_AI_USAGE_COST_AMOUNT] for s in calls] == [
        float(MOCK_COST)
    ] * 3
    balance = gov.ledger.balance(f"task:{task.id}")
    assert balance is not None
    assert balance.spent_nanos == 3 * 13_500
    task_span = capture.task()
    assert task_span.attributes[attr.TASK_COST_USD] == float(MOCK_COST * 3)
    assert task_span.attributes[attr.TASK_CALLS] == 3
    assert {s.parent.span_id for s in calls if s.parent} == {task_span.context.span_id}


def test_call_span_has_genai_attributes_and_decision_events(
    capture: SpanCapture,
) -> None:
    """Model-call spans use GenAI names and carry reserve/settle events."""
    gov, llm, _ = governed(Policy(), capture)
    with gov.task("t-9", team="search", feature="faq"):
        call(llm, max_tokens=30)
    (span,) = capture.calls()
    attributes = dict(span.attributes or {})
    assert attributes[attr.GEN_AI_OPERATION_NAME] == "chat"
    assert attributes[attr.GEN_AI_REQUEST_MODEL] == "gpt-4o-mini"
    assert attributes[attr.GEN_AI_PROVIDER_NAME] == "openai"
    assert attributes[attr.GEN_AI_USAGE_INPUT_TOKENS] == 10
    assert attributes[attr.GEN_AI_USAGE_OUTPUT_TOKENS] == 20
    assert attributes[attr.GEN_AI_USAGE_COST_CURRENCY] == "USD"
    assert attributes[attr.GEN_AI_USAGE_COST_SOURCE] == "price_map"
    assert attributes[attr.LLM_COST_TOTAL] == float(MOCK_COST)
    assert attributes[attr.GEN_AI_USAGE_COST] == float(MOCK_COST)
    assert (attributes[attr.TEAM], attributes[attr.FEATURE]) == ("search", "faq")
    assert [e.name for e in span.events] == [attr.EVENT_RESERVED, attr.EVENT_SETTLED]


def test_refusal_is_an_event_on_the_task_span(capture: SpanCapture) -> None:
    """A refused call leaves a refused event and the stop reason on the task."""
    gov, llm, _ = governed(Policy(budgets=[Budget(max_usd="0.000001")]), capture)
    with pytest.raises(BudgetExceeded), gov.task():
        call(llm, max_tokens=30)
    task_span = capture.task()
    assert [e.name for e in task_span.events] == [attr.EVENT_REFUSED]
    assert task_span.attributes[attr.TASK_STOP_REASON] == "budget_exceeded"


def test_provider_error_releases_the_hold(capture: SpanCapture) -> None:
    """A failed call is charged nothing and frees its reservation."""
    gov, llm, _ = governed(Policy(budgets=[Budget(max_usd="0.001")]), capture)
    with gov.task() as task:
        with pytest.raises(litellm.RateLimitError):
            llm.completion(
                model="gpt-4o-mini",
                messages=MESSAGES,
                mock_response="litellm.RateLimitError",
                max_tokens=30,
            )
        balance = gov.ledger.balance(f"task:{task.id}")
    assert balance is not None
    assert (balance.spent_nanos, balance.reserved_nanos) == (0, 0)


def test_team_budget_is_shared_by_tasks(capture: SpanCapture) -> None:
    """A team budget sums the spend of every task charged to the team."""
    policy = Policy(budgets=[Budget(scope="team", max_usd="0.00005")])
    gov, llm, counter = governed(policy, capture)
    # max_tokens stays at 20 because litellm's mock always answers 20 tokens.
    with gov.task(team="search"):
        call(llm, max_tokens=20)
    with pytest.raises(BudgetExceeded) as info:
        for _ in range(5):
            with gov.task(team="search"):
                call(llm, max_tokens=20)
    assert info.value.scope == "team:search"
    assert counter.sent == 3
    with gov.task(team="other"):
        call(llm, max_tokens=20)
    assert counter.sent == 4


def test_async_calls_share_the_task_budget(capture: SpanCapture) -> None:
    """Concurrent async calls in one task never settle more than the budget."""
    budget = Decimal("0.0002")
    gov, llm, counter = governed(Policy(budgets=[Budget(max_usd=budget)]), capture)

    async def one() -> str:
        try:
            await llm.acompletion(
                model="gpt-4o-mini",
                messages=MESSAGES,
                mock_response="x",
                max_tokens=20,
            )
        except BudgetExceeded:
            return "refused"
        return "ok"

    async def main() -> list[str]:
        async with gov.atask() as task:
            outcomes = await asyncio.gather(*(one() for _ in range(40)))
        assert task.report().cost_usd <= budget
        return list(outcomes)

    outcomes = asyncio.run(main())
    assert outcomes.count("ok") == counter.sent
    assert outcomes.count("ok") >= 1
    assert outcomes.count("refused") == 40 - counter.sent


def test_call_outside_a_task_is_a_task_of_its_own(capture: SpanCapture) -> None:
    """A bare governed call gets its own task span with the roll-up."""
    _gov, llm, _ = governed(Policy(), capture)
    call(llm, max_tokens=5)
    task_span = capture.task()
    assert task_span.attributes[attr.TASK_CALLS] == 1
    assert task_span.attributes[attr.TASK_COST_USD] == float(MOCK_COST)


def test_spend_records_reach_the_store(tmp_path: object) -> None:
    """Each settled call is written to the spend store with its attribution."""
    from pathlib import Path

    from governor.spend import SQLiteSpendStore

    store = SQLiteSpendStore(Path(str(tmp_path)) / "spend.sqlite3")
    with Governor(spend=store) as gov, gov.task("rec-1", team="search") as task:
        for _ in range(2):
            call(GovernedLiteLLM(gov), max_tokens=30)
    records = list(store.query())
    assert [(r.task_id, r.team, r.model, r.cost_usd) for r in records] == [
        ("rec-1", "search", "gpt-4o-mini", MOCK_COST)
    ] * 2
    assert sum(r.cost_usd for r in records) == task.report().cost_usd


def test_a_task_ended_by_any_exception_records_why(capture: SpanCapture) -> None:
    """An application error ends the task with ``error:<Type>``, then propagates."""
    gov, llm, _ = governed(Policy(), capture)
    with pytest.raises(KeyError), gov.task() as task:
        call(llm, max_tokens=5)
        raise KeyError("missing")
    assert (task.report().calls, task.report().stop_reason) == (1, "error:KeyError")


def test_a_task_in_a_generator_its_reader_closed_records_closed(
    capture: SpanCapture,
) -> None:
    """A streaming handler's client went away: closed, not an error."""
    gov, llm, _ = governed(Policy(), capture)
    seen: list[Any] = []

    def answers() -> Iterator[str]:
        with gov.task() as task:
            seen.append(task)
            call(llm, max_tokens=5)
            yield "first"
            yield "second"

    reader = answers()
    assert next(reader) == "first"
    reader.close()
    assert seen[0].report().stop_reason == "closed"
    [span] = capture.named("governor.task")
    assert span.status.status_code is StatusCode.UNSET


async def test_a_cancelled_async_task_records_cancelled(capture: SpanCapture) -> None:
    """Cancelling the asyncio task that runs a governed task says so."""
    gov, _, _ = governed(Policy(), capture)
    seen: list[Any] = []

    async def work() -> None:
        async with gov.atask() as task:
            seen.append(task)
            await asyncio.sleep(10)

    running = asyncio.ensure_future(work())
    await asyncio.sleep(0.01)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert seen[0].report().stop_reason == "cancelled"


def test_a_task_pricing_override_prices_its_calls() -> None:
    """gov.task(policy=Policy(pricing=...)) charges at the override's prices."""
    from governor.testing import install_offline_provider

    install_offline_provider(speed=0)
    gov = Governor(Policy(budgets=[Budget(max_usd="1")]))
    llm = GovernedLiteLLM(gov)
    dear = Price(input_usd_per_mtok="1000", output_usd_per_mtok="1000")
    own = Price(input_usd_per_mtok="1", output_usd_per_mtok="2")
    reports = []
    for model, price in [
        ("offline/gpt-4o-mini", dear),
        ("offline/my-finetune", own),
        ("offline/gpt-4o-mini", None),
    ]:
        override = Policy(pricing=Pricing(overrides={model: price})) if price else None
        with gov.task(policy=override) as task:
            llm.completion(model=model, messages=MESSAGES, max_tokens=10)
        reports.append(task.report())
    dear_report, own_report, list_report = reports
    assert dear_report.cost_usd == Decimal(dear_report.tokens) * Decimal("0.001")
    assert own_report.cost_usd == (
        Decimal(own_report.input_tokens) * Decimal("1e-6")
        + Decimal(own_report.output_tokens) * Decimal("2e-6")
    )
    assert list_report.cost_usd * 100 < Decimal(list_report.tokens) * Decimal("0.001")


def test_calls_in_worker_threads_join_the_task_through_bind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """task.bind carries the task into a pool; without it the call warns once."""
    from concurrent.futures import ThreadPoolExecutor

    gov = Governor(Policy(budgets=[Budget(max_usd="1")]))
    llm = GovernedLiteLLM(gov)

    def ask(_: int) -> Any:
        return call(llm, max_tokens=5)

    with ThreadPoolExecutor(4) as pool, gov.task() as task:
        list(pool.map(task.bind(ask), range(6)))
        assert "outside any governed task" not in caplog.text
        list(pool.map(ask, range(3)))
    warnings = caplog.text.count("outside any governed task")
    assert (task.report().calls, warnings) == (6, 1)
    # Both readings: a worker thread of a task, or another request's call.
    assert "submit task.bind(fn)" in caplog.text
    assert "open a task for this one too" in caplog.text


def test_a_call_that_cannot_be_priced_is_charged_its_hold_and_frees_its_slot() -> None:
    """end_call with an impossible usage raises, settles the worst case, frees."""
    from governor import CallRequest, CallResult, ConfigError, Fanout
    from governor.pricing import Usage

    gov = Governor(
        Policy(
            budgets=[Budget(scope="team", max_usd="1")],
            fanout=Fanout(max_inflight_calls=1, on_cap="refuse"),
        )
    )
    request = CallRequest(model="gpt-4o-mini", messages=MESSAGES, max_output_tokens=100)
    bad = Usage(prompt_tokens=5, completion_tokens=3, cache_read_tokens=10)
    with gov.task(team="a") as task:
        admission = gov.begin_call(request)
        with pytest.raises(ConfigError):
            gov.end_call(admission, CallResult(usage=bad))
        gov.end_call(gov.begin_call(request), CallResult(usage=Usage(1, 1)))
    balance = gov.ledger.balance("team:a")
    assert balance is not None
    assert (balance.reserved_nanos, task.report().calls) == (0, 2)
    assert balance.spent_nanos == admission.hold_nanos + 750
    # The tokens charged are the hold's, in the report as on the ledger.
    assert balance.spent_tokens == admission.hold_tokens + 2
    assert task.report().tokens == admission.hold_tokens + 2


def test_a_refused_call_is_a_spend_record(tmp_path: Any) -> None:
    """Reports count refusals: the refused call is written with its reason."""
    from governor.spend import open_store

    db = str(tmp_path / "spend.sqlite3")
    gov = Governor(Policy(budgets=[Budget(max_usd="0.00003")]), spend=db)
    llm = GovernedLiteLLM(gov)
    with pytest.raises(BudgetExceeded), gov.task(team="search"):
        for _ in range(5):
            call(llm, max_tokens=20)
    gov.close()
    records = list(open_store(db).query(None, None, {}))
    refused = [(r.outcome, r.stop_reason, r.cost_usd, r.team) for r in records]
    assert refused.count(("refused", "budget_exceeded", Decimal(0), "search")) == 1
    assert [r.outcome for r in records].count("ok") == len(records) - 1


def test_only_the_call_that_stopped_the_task_carries_its_stop_reason(
    tmp_path: Any,
) -> None:
    """A caller that falls back to a cheaper model after a refusal (LiteLLM's
    Router does) makes calls after the stop: theirs is not the stop."""
    from governor.spend import open_store

    db = str(tmp_path / "spend.sqlite3")
    gov = Governor(Policy(budgets=[Budget(max_usd="0.00003")]), spend=db)
    llm = GovernedLiteLLM(gov)
    with gov.task(team="search") as task:
        with pytest.raises(BudgetExceeded):
            llm.completion(
                model="gpt-4o", messages=MESSAGES, mock_response="Paris", max_tokens=20
            )
        call(llm, max_tokens=5)  # the cheaper fallback still fits
    gov.close()
    records = list(open_store(db).query(None, None, {}))
    got = [(r.model, r.outcome, r.stop_reason) for r in records]
    assert task.stop_reason == "budget_exceeded"
    assert got == [
        ("gpt-4o", "refused", "budget_exceeded"),
        ("gpt-4o-mini", "ok", None),
    ]


def test_a_failover_ledger_must_agree_with_an_explicit_failure_mode() -> None:
    """A caller's FailoverLedger(mode=...) never silently overrides the policy."""
    from governor import ConfigError
    from governor.stores import FailoverLedger, MemoryLedger

    with pytest.raises(ConfigError, match="disagrees"):
        Governor(
            Policy(failure_mode="open"),
            ledger=FailoverLedger(MemoryLedger(), mode="closed"),
        )
    adopted = Governor(Policy(), ledger=FailoverLedger(MemoryLedger(), mode="open"))
    assert (adopted.ledger.mode, adopted.ledger._on_degraded is not None) == (  # type: ignore[attr-defined]
        "open",
        True,
    )


def test_another_governors_calls_do_not_join_this_governors_task() -> None:
    """A task belongs to the governor that opened it; B's budget still holds."""
    gov_a = Governor(Policy(budgets=[Budget(max_usd="1")]))
    gov_b = Governor(Policy(budgets=[Budget(max_usd="0.0000001")]))
    with gov_a.task() as task, pytest.raises(BudgetExceeded):
        call(GovernedLiteLLM(gov_b), max_tokens=20)
    assert task.report().calls == 0


def test_a_function_bound_to_an_ended_task_runs_outside_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A late bound call is charged to a task of its own, with a warning."""
    gov = Governor(Policy(budgets=[Budget(max_usd="1")]))
    llm = GovernedLiteLLM(gov)
    with gov.task() as task:
        late = task.bind(lambda: call(llm, max_tokens=5))
    late()
    assert (task.report().calls, "ran after the task ended" in caplog.text) == (0, True)


def test_an_async_function_bound_to_a_task_runs_in_it() -> None:
    """task.bind(async_fn): the awaited calls count against the bound task."""
    gov = Governor(Policy(budgets=[Budget(max_usd="1")]))
    llm = GovernedLiteLLM(gov)

    async def ask() -> Any:
        return await llm.acompletion(
            model="gpt-4o-mini", messages=MESSAGES, mock_response="ok", max_tokens=5
        )

    async def run() -> tuple[int, int]:
        bound = gov.open_task()
        bound_ask = bound.bind(ask)
        async with gov.atask() as other:
            await bound_ask()
        gov.close_task(bound)
        return bound.report().calls, other.report().calls

    assert asyncio.run(run()) == (1, 0)


def test_a_stream_read_after_close_warns_that_its_record_is_not_written(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A call under way at close() settles: the ledger is charged and the
    lost record is said, once."""
    gov = Governor(Policy(budgets=[Budget(max_usd="1")]), spend=str(tmp_path / "s.db"))
    llm = GovernedLiteLLM(gov)
    streams = [call(llm, max_tokens=5, stream=True) for _ in range(2)]
    assert gov.close() == 0
    for stream in streams:
        assert "".join(c.choices[0].delta.content or "" for c in stream) == "Paris"
    assert caplog.text.count("settled after Governor.close()") == 1


def test_nothing_new_starts_on_a_closed_governor(capture: SpanCapture) -> None:
    """A call or a task started after close() is refused before it is sent."""
    gov, llm, counter = governed(Policy(budgets=[Budget(max_usd="1")]), capture)
    call(llm, max_tokens=5)
    gov.close()

    with pytest.raises(GovernorClosed, match="Governor that is closed") as raised:
        call(llm, max_tokens=5)
    assert raised.value.what == "a call"
    with pytest.raises(GovernorClosed, match=r"^a task was started"):
        gov.open_task("late")
    with pytest.raises(GovernorClosed):
        asyncio.run(llm.acompletion(model="gpt-4o-mini", messages=MESSAGES))

    assert counter.sent == 1
    assert gov.close() == 0  # closing again is still a no-op


def test_crossing_two_warning_thresholds_at_once_logs_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A call that takes a team past 50% and 80% at once warns once, at its use."""
    budget = Budget(scope="team", max_usd="0.0000155", warn_at=(0.5, 0.8))
    gov = Governor(Policy(budgets=[budget]))
    with caplog.at_level(logging.WARNING, logger="governor"), gov.task(team="a"):
        call(GovernedLiteLLM(gov), max_tokens=20)
    lines = [r.getMessage() for r in caplog.records if "has used" in r.getMessage()]
    # MOCK_COST is 0.0000135: 87% of the limit.
    assert lines == ["budget team:a has used 87% of its limit (past its warn_at 80%)"]


def test_a_threshold_crossed_between_reads_is_announced_at_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line is read at most every so often; a crossing in between is still
    announced by the call that makes it, not left for a later call that the
    budget may refuse. (The read interval is stretched so no read is due.)"""
    from governor import _engine

    monkeypatch.setattr(_engine, "_WARN_EVERY_S", 3600.0)
    # MOCK_COST is 0.0000135: 34%, 68%, then 101% of the limit.
    budget = Budget(scope="team", max_usd="0.0000400", warn_at=(0.5,))
    gov = Governor(Policy(budgets=[budget]))
    llm = GovernedLiteLLM(gov)
    with caplog.at_level(logging.WARNING, logger="governor"):
        for _ in range(2):
            with gov.task(team="a"):
                call(llm, max_tokens=20)
        lines = [r.getMessage() for r in caplog.records if "has used" in r.getMessage()]
        with gov.task(team="a"), pytest.raises(BudgetExceeded):
            call(llm, max_tokens=20)
    assert lines == ["budget team:a has used 68% of its limit (past its warn_at 50%)"]


def test_one_call_task_lines_are_forgotten_after_a_hold_lifetime() -> None:
    """Calls outside a task leave no lasting line; a named task's line stays."""
    from governor.stores import MemoryLedger

    class Clock:
        now = 0.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()
    ledger = MemoryLedger(clock=clock)
    gov = Governor(Policy(budgets=[Budget(max_usd="1")]), ledger=ledger)
    for _ in range(3):
        call(GovernedLiteLLM(gov), max_tokens=20)
    with gov.task("job-1"):
        call(GovernedLiteLLM(gov), max_tokens=20)
    before = len(ledger.keys())
    clock.now = 901.0
    assert (before, ledger.keys()) == (4, ["task:job-1"])


def test_an_open_task_reports_the_budget_left_so_far() -> None:
    """report() inside the task reads the room left, not None."""
    gov = Governor(Policy(budgets=[Budget(max_usd="0.001")]))
    with gov.task() as task:
        call(GovernedLiteLLM(gov), max_tokens=20)
        inside = task.report().budget_left_usd
    assert inside == Decimal("0.001") - MOCK_COST
    assert task.report().budget_left_usd == inside


def test_a_task_without_spend_reports_its_own_limit_not_its_teams() -> None:
    """A task line the ledger has not seen yet has its whole limit left: the
    team's larger room, partly spent by an earlier task, does not show."""
    policy = Policy(budgets=[Budget(max_usd="1"), Budget(scope="team", max_usd="5")])
    gov = Governor(policy)
    llm = GovernedLiteLLM(gov)
    with gov.task(team="a"):
        call(llm, max_tokens=20)
    with gov.task(team="a") as idle:
        inside = idle.report().budget_left_usd
    with gov.task(team="a") as refused, pytest.raises(PriceUnknown):
        llm.completion(model="no-such-model-xyz", messages=MESSAGES)
    assert (inside, idle.report().budget_left_usd) == (Decimal(1), Decimal(1))
    assert refused.report().refused == 1
    assert refused.report().budget_left_usd == Decimal(1)


def test_an_unseen_task_line_does_not_hide_a_tighter_team_line() -> None:
    """The tightest line wins, seen or not; None only when no USD budget applies."""
    policy = Policy(budgets=[Budget(max_usd="1"), Budget(scope="team", max_usd="0.5")])
    gov = Governor(policy)
    with gov.task(team="a"):
        call(GovernedLiteLLM(gov), max_tokens=20)

    async def left_at_async_close() -> Decimal | None:
        async with gov.atask(team="a") as task:
            pass
        return task.report().budget_left_usd

    assert asyncio.run(left_at_async_close()) == Decimal("0.5") - MOCK_COST
    tokens_only = Governor(Policy(budgets=[Budget(max_tokens=1000)]))
    with tokens_only.task() as task:
        call(GovernedLiteLLM(tokens_only), max_tokens=20)
    assert task.report().budget_left_usd is None


def test_a_ledger_url_is_refused_with_the_constructor_to_use() -> None:
    """A URL string where a ledger object belongs fails at once, with a fix."""
    with pytest.raises(ConfigError, match=r"RedisLedger\('redis://127.0.0.1:1/0'\)"):
        Governor(Policy(), ledger="redis://127.0.0.1:1/0")  # type: ignore[arg-type]


def test_anomaly_settings_of_the_wrong_kind_are_refused() -> None:
    """A plain dict is not Anomalies(...): say so before the first call."""
    with pytest.raises(ConfigError, match=r"Anomalies\(\.\.\.\)"):
        Governor(Policy(), anomalies={"min_calls": 2})  # type: ignore[arg-type]


@pytest.mark.parametrize("target", ["ftp://host/spend", "{tmp}"])
def test_a_spend_target_it_cannot_open_is_named(target: str, tmp_path: Any) -> None:
    """A URL scheme it does not speak or a folder is refused with the path."""
    target = target.format(tmp=tmp_path)
    with pytest.raises(ConfigError, match=re.escape(repr(target))):
        Governor(Policy(), spend=target)


IMAGE_PROMPT = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        ],
    }
]


def test_an_image_is_reserved_at_what_the_model_bills_for_one() -> None:
    """gpt-4o-mini bills an image as ~17x gpt-4o's tokens; the bound follows."""
    from governor._calls import IMAGE_PART_TOKENS, prompt_byte_bound

    mini = prompt_byte_bound(IMAGE_PROMPT, None, model="openai/gpt-4o-mini")
    full = prompt_byte_bound(IMAGE_PROMPT, None, model="openai/gpt-4o")
    assert mini - full == 2_833 + 8 * 5_667 - IMAGE_PART_TOKENS


def test_a_file_passed_by_id_is_reserved_at_the_context_window() -> None:
    """A file whose size is unknown is bounded by what the model can read."""
    from governor._calls import prompt_byte_bound

    by_id = [
        {
            "role": "user",
            "content": [{"type": "file", "file": {"file_id": "file-abc123"}}],
        }
    ]
    bound = prompt_byte_bound(by_id, None, model="gpt-4o", window_tokens=128_000)
    assert 128_000 <= bound < 128_100


def test_the_prompt_bound_never_passes_the_context_window(
    capture: SpanCapture,
) -> None:
    """Three files by id on gpt-4o reserve at most its 128k-token window."""
    from governor import CallRequest, CallResult

    files = [{"type": "file", "file": {"file_id": f"file-{i}"}} for i in range(3)]
    gov = Governor(Policy(), tracer_provider=capture.provider)
    with gov.task():
        admission = gov.begin_call(
            CallRequest(model="gpt-4o", messages=[{"role": "user", "content": files}])
        )
        assert admission.hold_tokens - admission.max_output_tokens <= 128_000
        gov.end_call(admission, CallResult())


def test_a_task_that_is_ending_refuses_new_calls_before_sending() -> None:
    """Task.ending: set by an adapter whose run is ending (a sync graph
    waiting for its nodes); a direct LiteLLM call from a node is refused."""
    counter = CountingLiteLLM()
    gov = Governor()
    llm = GovernedLiteLLM(gov, completion=counter.completion)

    class RunOver(RuntimeError):
        pass

    with gov.task() as task:
        call(llm, max_tokens=5)
        task.ending = RunOver
        with pytest.raises(RunOver):
            call(llm, max_tokens=5)
    assert (counter.sent, task.report().calls) == (1, 1)


def test_the_hold_and_the_cost_use_the_same_rate() -> None:
    """A name the price map resolves by folding its case is held at the map's
    price, not at an override keyed by the folded name."""
    from governor import CallRequest, CallResult
    from governor.policies import Price, Pricing
    from governor.pricing import Usage

    dear = Price(input_usd_per_mtok=1000, output_usd_per_mtok=1000)
    gov = Governor(Policy(pricing=Pricing(overrides={"gpt-4o-mini": dear})))
    request = CallRequest(model="GPT-4O-MINI", messages=MESSAGES, max_output_tokens=10)
    with gov.task():
        admission = gov.begin_call(request)
        rate = admission.rate
        worst = rate.worst_case_nanos(
            prompt_tokens=admission.hold_tokens - 10,
            max_output_tokens=10,
            max_duration_s=0.0,
        )
        cost = gov.end_call(admission, CallResult(usage=Usage(5, 10)))
    assert rate.source == "price_map"
    assert admission.hold_nanos == worst
    assert cost <= Decimal(admission.hold_nanos) / 10**9


def test_areport_reads_an_open_tasks_budget_with_the_async_steps() -> None:
    """Inside an async task, areport gives report's figures without a
    blocking ledger read on the loop."""
    policy = Policy(budgets=[Budget(max_usd="1"), Budget(scope="team", max_usd="0.5")])
    gov = Governor(policy)
    blocking: list[str] = []
    budget_left = gov._budget_left

    def watched(task: Any) -> Any:  # the blocking read
        blocking.append(task.id)
        return budget_left(task)

    gov._budget_left = watched  # type: ignore[method-assign]

    async def main() -> tuple[Any, Any]:
        async with gov.atask(team="a") as task:
            await GovernedLiteLLM(gov).acompletion(
                model="gpt-4o-mini",
                messages=MESSAGES,
                mock_response="hi",
                max_tokens=20,
            )
            inside = await task.areport()
        return inside, await task.areport()

    inside, after = asyncio.run(main())
    assert inside.budget_left_usd == Decimal("0.5") - inside.cost_usd
    assert (after.budget_left_usd, after.calls, blocking) == (
        inside.budget_left_usd,
        1,
        [],
    )


def test_a_request_that_sets_prices_is_held_and_charged_at_them() -> None:
    """CallRequest.prices lie over the map's entry for that call only; the next
    call without them is priced from the map again."""
    from governor import CallRequest, CallResult
    from governor.pricing import Usage

    own = {"input_cost_per_token": 0.001, "output_cost_per_token": 0.002}
    priced = CallRequest(
        model="gpt-4o-mini", messages=MESSAGES, max_output_tokens=10, prices=own
    )
    plain = CallRequest(model="gpt-4o-mini", messages=MESSAGES, max_output_tokens=10)
    gov = Governor()
    with gov.task():
        admission = gov.begin_call(priced)
        cost = gov.end_call(admission, CallResult(usage=Usage(5, 10)))
        other = gov.begin_call(plain)
        gov.end_call(other, CallResult(usage=Usage(5, 10)))
    assert admission.rate.input_per_token == Decimal("0.001")
    assert cost == 5 * Decimal("0.001") + 10 * Decimal("0.002")
    assert other.rate.input_per_token == Decimal("1.5e-7")


def test_usage_past_what_a_ledger_stores_is_capped_and_the_warning_says_how(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Absurd reported usage is charged the ledger's largest amount in dollars
    while its tokens, still storable, are charged as reported; the warning
    gives both charged amounts."""
    from governor import CallRequest, CallResult
    from governor.policies import Price, Pricing
    from governor.pricing import Usage

    dear = Price(input_usd_per_mtok=1_000_000, output_usd_per_mtok=1_000_000)
    gov = Governor(Policy(pricing=Pricing(overrides={"gpt-4o-mini": dear})))
    request = CallRequest(model="gpt-4o-mini", messages=MESSAGES, max_output_tokens=10)
    with gov.task() as task:
        admission = gov.begin_call(request)
        with caplog.at_level(logging.WARNING, logger="governor"):
            gov.end_call(admission, CallResult(usage=Usage(5, 10**12)))
    cap = 2**53 - 1
    assert task.report().tokens == 10**12 + 5
    assert task.report().cost_usd == Decimal(cap) / 10**9
    assert f"charged {cap} nano-USD and {10**12 + 5} tokens" in caplog.text


def test_a_call_through_another_governor_is_not_held_to_this_task(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A call through governor B inside a task of governor A is B's alone:
    it neither draws on A's task line in B's ledger (A's limit, the wrong
    ledger) nor counts in A's report; a warning says so once."""
    gov_a = Governor(Policy(name="A", budgets=[Budget(max_usd="0.0001")]))
    gov_b = Governor(Policy(name="B", budgets=[Budget(max_usd="1")]))
    with (
        caplog.at_level(logging.WARNING, logger="governor"),
        gov_a.task(task_id="t") as task,
    ):
        for _ in range(2):
            call(GovernedLiteLLM(gov_b), max_tokens=20)
    assert gov_b.ledger.balance("task:t") is None
    assert task.report().calls == 0
    assert caplog.text.count("started inside task t of another governor") == 1


def test_a_call_charged_its_hold_says_hold_on_its_span(capture: SpanCapture) -> None:
    """gen_ai.usage.cost.source tells a hold charge (a call cut off after it
    was sent) from a local token count."""
    from governor import CallRequest, CallResult

    gov = Governor(Policy(), tracer_provider=capture.provider)
    request = CallRequest(model="gpt-4o-mini", messages=MESSAGES, max_output_tokens=10)
    with gov.task():
        admission = gov.begin_call(request)
        gov.end_call(admission, CallResult(error=TimeoutError(), charge_hold=True))
    (span,) = capture.calls()
    assert span.attributes is not None
    assert span.attributes[attr.GEN_AI_USAGE_COST_SOURCE] == "hold"


@pytest.mark.parametrize(
    ("stop", "status"), [(None, "UNSET"), ("closed", "UNSET"), ("error", "ERROR")]
)
def test_only_a_failed_task_has_an_error_status(
    capture: SpanCapture, stop: str | None, status: str
) -> None:
    """A run a human paused or a reader stopped early is no error trace; a
    task that failed is."""
    gov = Governor(Policy(), tracer_provider=capture.provider)
    with gov.task() as task:
        task.stop_reason = stop
    assert capture.task().status.status_code.name == status


def test_a_scope_budget_a_task_names_no_value_for_is_warned_of_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Budget(scope='team') charges nothing for a task with no team: said
    once, not for each task, and not for a task that names a team."""
    budget = Budget(scope="team", max_usd="1", period="month")
    gov = Governor(Policy(budgets=[budget]))
    llm = GovernedLiteLLM(gov)
    with caplog.at_level(logging.WARNING, logger="governor"):
        for _ in range(2):
            with gov.task():
                call(llm, max_tokens=20)
        with gov.task(team="a"):
            call(llm, max_tokens=20)
    lines = [
        r.getMessage() for r in caplog.records if "names no team" in r.getMessage()
    ]
    assert len(lines) == 1
    assert "gov.task(team=...)" in lines[0]
    assert "with governor.attribute(team=...)" in lines[0]


def test_a_refusal_of_a_call_without_max_tokens_names_the_default_it_held() -> None:
    """A call that set no max_tokens held Policy.default_max_output_tokens: the
    refusal says so, rather than telling the user to lower a max_tokens they
    never gave."""
    gov = Governor(Policy(budgets=[Budget(max_usd="0.001")]))
    with gov.task(), pytest.raises(BudgetExceeded) as refused:
        GovernedLiteLLM(gov).completion(
            model="gpt-4o", messages=MESSAGES, mock_response="x"
        )
    message = str(refused.value)
    assert "Policy.default_max_output_tokens (4096)" in message
    assert "pass a smaller max_tokens on the call" in message


def test_the_policy_of_a_governor_cannot_be_replaced() -> None:
    """Its rate card and budget lines were built from it: a new policy would
    apply half (budgets yes, prices no), so replacing it is refused."""
    gov = Governor(Policy(budgets=[Budget(max_usd="1")]))
    before = gov.policy
    with pytest.raises(AttributeError, match=r"Build a new Governor\(policy"):
        gov.policy = Policy()
    with pytest.raises(AttributeError, match=r"Build a new Governor\(policy"):
        del gov.policy
    assert gov.policy is before


def test_a_call_that_joins_an_ended_task_is_charged_to_it_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An asyncio task started in a task's block and awaited after it ends
    still charges the task (its budget holds), and says so once."""
    gov = Governor(Policy(budgets=[Budget(max_usd="1")]))
    llm = GovernedLiteLLM(gov)

    async def ask() -> None:
        await asyncio.sleep(0.01)
        for _ in range(2):
            await llm.acompletion(
                model="gpt-4o-mini", messages=MESSAGES, mock_response="Paris"
            )

    async def main() -> Any:
        async with gov.atask("late") as task:
            child = asyncio.create_task(ask())
        assert task.report().calls == 0
        await child
        return task

    task = asyncio.run(main())
    assert task.report().calls == 2
    assert caplog.text.count("a call joined task late after the task ended") == 1


def test_a_busy_line_is_warned_of_once_however_many_lines_come_and_go(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past its memory of lines the governor forgets the idle ones, not the
    team line every call uses: its threshold is not announced again."""
    import governor._engine as engine

    monkeypatch.setattr(engine, "_WARN_MEMORY", 20)
    gov = Governor(
        Policy(
            budgets=[
                Budget(scope="team", max_usd="100", period="day", warn_at=(1e-6,)),
                Budget(scope="session", max_usd="1", warn_at=(0.99,)),
            ]
        )
    )
    llm = GovernedLiteLLM(gov)
    with caplog.at_level(logging.WARNING, logger="governor"):
        for i in range(60):
            with gov.task(team="a", session=f"s{i}"):
                call(llm, max_tokens=5)
    lines = [r.getMessage() for r in caplog.records if "team:a" in r.getMessage()]
    assert len(lines) == 1
    assert len(gov._warn_checked) <= 21


def test_aclose_waits_for_cancelled_calls_to_settle(tmp_path: Any) -> None:
    """A server's shutdown cancels its requests, then closes the governor:
    aclose() waits for the cancelled streams to settle and give back their
    slots, so every spend record is written and no slot is left taken."""
    from pathlib import Path

    from governor import Fanout
    from governor.spend import SQLiteSpendStore
    from governor.stores import MemoryLedger

    class SlowStore(MemoryLedger):
        """A store that takes a while to settle, as Redis across a network."""

        async def asettle(self, *args: Any) -> None:
            await asyncio.sleep(0.3)
            self.settle(*args)

    store = SQLiteSpendStore(Path(str(tmp_path)) / "spend.sqlite3")
    gov = Governor(
        Policy(fanout=Fanout(scope_caps={"team": 32})), spend=store, ledger=SlowStore()
    )
    llm = GovernedLiteLLM(gov)

    async def relay(i: int) -> None:
        with gov.task(f"r{i}", team="web"):
            stream = await llm.acompletion(
                model="gpt-4o-mini",
                messages=MESSAGES,
                mock_response="word " * 400,
                stream=True,
            )
            async with stream:  # cancelled, it hangs up and settles
                async for _ in stream:
                    started.add(i)
                    await asyncio.sleep(0.01)

    started: set[int] = set()

    async def serve_then_shut_down() -> int:
        requests = [asyncio.create_task(relay(i)) for i in range(10)]
        while len(started) < 10:  # every stream is under way
            await asyncio.sleep(0.01)
        for request in requests:
            request.cancel()  # as uvicorn does, then it runs the shutdown
        lost = await gov.aclose()
        await asyncio.gather(*requests, return_exceptions=True)
        return lost

    assert asyncio.run(serve_then_shut_down()) == 0
    assert len(list(store.query())) == 10
    assert gov._calls_open() == 0


def test_closing_with_this_threads_stream_open_does_not_wait_for_it(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Leaving `with Governor()` with a stream still open in this thread: the
    stream cannot progress while close waits, so close does not wait for it
    (it says the call was still under way)."""
    import time
    import types

    import governor._engine as engine

    def no_wait(_: float) -> None:
        raise AssertionError("close waited for a call of its own thread")

    clock = {
        name: getattr(time, name) for name in dir(time) if not name.startswith("_")
    }
    monkeypatch.setattr(
        engine, "time", types.SimpleNamespace(**{**clock, "sleep": no_wait})
    )
    gov = Governor(Policy(budgets=[Budget(max_usd="1")]))
    with caplog.at_level(logging.WARNING, logger="governor"), gov:
        stream = call(GovernedLiteLLM(gov), max_tokens=20, stream=True)
        next(iter(stream))
    assert "1 call(s) still under way" in caplog.text
    stream.close()


def test_an_aclose_cancelled_while_waiting_still_closes(tmp_path: Any) -> None:
    """Cancelled while it waits for calls, aclose() goes on closing in a
    thread, as its docstring says: the spend writer is stopped."""
    import time

    from governor.stores import MemoryLedger

    class SlowStore(MemoryLedger):
        async def asettle(self, *args: Any) -> None:
            await asyncio.sleep(0.5)
            self.settle(*args)

    gov = Governor(spend=str(tmp_path / "s.db"), ledger=SlowStore())
    llm = GovernedLiteLLM(gov)

    async def main() -> None:
        call_made = asyncio.create_task(
            llm.acompletion(model="gpt-4o-mini", messages=MESSAGES, mock_response="x")
        )
        while not gov._settling:  # the call is settling (slowly)
            await asyncio.sleep(0.01)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(gov.aclose(), 0.05)
        await call_made

    asyncio.run(main())
    deadline = time.monotonic() + 10
    while gov.recorder is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gov.recorder is None
