"""Fixes from an API trial: error fields, cascade stops on the task, the stub
server's lifecycle, instrumenting and entering a closed governor, and a
task closed twice."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from conftest import SpanCapture
from governor import Budget, Cascade, Governor, GovernorClosed, Policy, ScopeBlocked
from governor.adapters import litellm as litellm_adapter
from governor.adapters.litellm import (
    GovernedLiteLLM,
    Instrumentation,
    active_instrumentation,
    instrument,
)
from governor.cascade import CascadeBudgetExceeded, CascadeExhausted
from governor.policies._cascade import MatchCheck, Retry, Tier
from governor.testing import install_offline_provider
from governor.testing._stub_server import StubServer

QUESTION = "Which gas do plants absorb? A) oxygen B) carbon dioxide. Reply A or B."
MESSAGES = [{"role": "user", "content": QUESTION}]
CASCADE = Cascade(
    tiers=[
        Tier(name="cheap", model="offline/gpt-4o-mini"),
        Tier(name="premium", model="offline/gpt-4o"),
    ],
    checks=[MatchCheck(pattern=r"^[AB]$")],
    check_last_tier=True,
    retry=Retry(max_retries_per_tier=0, backoff_initial_s=0, jitter_s=0),
)
ASK = {"model": "gpt-4o-mini", "mock_response": "ok", "max_tokens": 20}


def run_cascade(llm: GovernedLiteLLM, use_async: bool) -> Any:
    if use_async:
        return asyncio.run(llm.acascade(MESSAGES, max_tokens=20))
    return llm.cascade(MESSAGES, max_tokens=20)


# -- B1. ScopeBlocked carries its scope and the task's spend ------------------


def test_scope_blocked_carries_the_task_spend_and_its_scope_in_to_dict() -> None:
    gov = Governor(Policy())
    llm = GovernedLiteLLM(gov)
    with gov.task(team="runaway") as task:
        llm.completion(messages=[{"role": "user", "content": "Hello"}], **ASK)
        gov.apply_tighten(SimpleNamespace(mode="block", scope="team:runaway"))
        with pytest.raises(ScopeBlocked) as info:
            llm.completion(messages=[{"role": "user", "content": "Again"}], **ASK)
    error = info.value
    assert task.cost_usd > 0
    assert task.tokens > 0
    assert (error.spent_usd, error.spent_tokens) == (task.cost_usd, task.tokens)
    fields = error.to_dict()
    assert fields["scope"] == "team:runaway"
    assert fields["spent_usd"] == format(task.cost_usd, "f")
    assert fields["spent_tokens"] == task.tokens
    gov.close()


# -- B2. Cascade errors carry the run's tokens next to its dollars -------------


@pytest.mark.parametrize("use_async", [False, True])
def test_an_exhausted_cascade_reports_the_runs_tokens(use_async: bool) -> None:
    """Both tiers answer "C", which fails the check: the error's spent_usd and
    spent_tokens are what the run spent, here the whole task's."""
    install_offline_provider(lambda model, messages, tools: "C", speed=0)
    gov = Governor(Policy(cascade=CASCADE))
    llm = GovernedLiteLLM(gov)
    with gov.task() as task, pytest.raises(CascadeExhausted) as info:
        run_cascade(llm, use_async)
    report = task.report()
    assert report.calls == 2
    assert report.tokens > 0
    assert info.value.spent_usd == report.cost_usd
    assert info.value.spent_tokens == report.tokens
    assert info.value.to_dict()["spent_tokens"] == report.tokens
    gov.close()


def test_an_exhausted_cascade_counts_only_its_own_runs_tokens() -> None:
    """A call made before the run is the task's spend, not the run's."""
    install_offline_provider(lambda model, messages, tools: "C", speed=0)
    gov = Governor(Policy(cascade=CASCADE))
    llm = GovernedLiteLLM(gov)
    with gov.task() as task:
        llm.completion(messages=[{"role": "user", "content": "Hello"}], **ASK)
        before = (task.cost_usd, task.tokens)
        with pytest.raises(CascadeExhausted) as info:
            llm.cascade(MESSAGES, max_tokens=20)
    assert info.value.spent_usd == task.cost_usd - before[0]
    assert info.value.spent_tokens == task.tokens - before[1] > 0
    gov.close()


# -- B3. A caught CascadeBudgetExceeded still stops the task -------------------


@pytest.mark.parametrize("use_async", [False, True])
def test_a_caught_cascade_budget_stop_shows_in_the_task_report(
    use_async: bool,
) -> None:
    """As a caught BudgetExceeded does; each tier's refusal counted once."""
    install_offline_provider(lambda model, messages, tools: "B", speed=0)
    gov = Governor(Policy(cascade=CASCADE, budgets=[Budget(max_usd="0.000001")]))
    llm = GovernedLiteLLM(gov)
    with gov.task() as task:
        with pytest.raises(CascadeBudgetExceeded):
            run_cascade(llm, use_async)
        stopped = task.report()
    assert stopped.stop_reason == "cascade_budget_exceeded"
    assert (stopped.refused, stopped.calls) == (2, 0)
    assert task.report().stop_reason == "cascade_budget_exceeded"
    gov.close()


def test_an_answered_cascade_with_a_tier_skipped_for_budget_does_not_stop() -> None:
    install_offline_provider(lambda model, messages, tools: "B", speed=0)
    cascade = Cascade(
        tiers=[
            Tier(name="huge", model="offline/gpt-4o", params={"max_tokens": 100_000}),
            Tier(name="cheap", model="offline/gpt-4o-mini"),
        ],
        checks=[MatchCheck(pattern=r"^[AB]$")],
        retry=Retry(max_retries_per_tier=0, backoff_initial_s=0, jitter_s=0),
    )
    gov = Governor(Policy(cascade=cascade, budgets=[Budget(max_usd="0.01")]))
    with gov.task() as task:
        GovernedLiteLLM(gov).cascade(MESSAGES, max_tokens=20)
    assert (task.report().refused, task.report().stop_reason) == (1, None)
    gov.close()


# -- B4. StubServer.start() is idempotent; a closed one cannot start -----------


def _finishes(body: Any, limit_s: float = 10.0) -> bool:
    """Run ``body`` on a daemon thread; whether it ended within ``limit_s``."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            body()
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit_s)
    if errors:
        raise errors[0]
    return not thread.is_alive()


def test_a_started_stub_server_used_as_a_context_manager_closes() -> None:
    def body() -> None:
        with StubServer().start() as stub:
            assert stub.start() is stub
            assert stub.base_url.startswith("http://127.0.0.1:")

    assert _finishes(body)


def test_a_closed_stub_server_refuses_to_start_again() -> None:
    stub = StubServer().start()
    stub.close()
    with pytest.raises(RuntimeError, match="build a new StubServer"):
        stub.start()
    stub.close()  # closing again does nothing


# -- B5. instrument() on a closed governor; active_instrumentation -------------


def test_instrument_refuses_a_closed_governor() -> None:
    gov = Governor(Policy())
    gov.close()
    with pytest.raises(GovernorClosed, match=r"^instrument\(gov\) was started"):
        instrument(gov)
    with pytest.raises(GovernorClosed), Instrumentation(gov):
        pass
    assert active_instrumentation() is None


def test_active_instrumentation_is_public_and_returns_the_live_one() -> None:
    assert "active_instrumentation" in litellm_adapter.__all__
    gov = Governor(Policy())
    with instrument(gov) as live:
        assert active_instrumentation() is live
        assert live.governor is gov
        with pytest.raises(RuntimeError, match="active_instrumentation"):
            instrument(gov)
    assert active_instrumentation() is None
    gov.close()


# -- B6. close_task twice; entering a closed governor --------------------------


@pytest.mark.parametrize("use_async", [False, True])
def test_closing_a_closed_task_again_returns_its_report_and_leaves_its_span(
    capture: SpanCapture,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    use_async: bool,
) -> None:
    policy = Policy(budgets=[Budget(max_usd="1")])
    gov = Governor(policy, tracer_provider=capture.provider)
    with gov.task() as task:
        GovernedLiteLLM(gov).completion(
            messages=[{"role": "user", "content": "Hello"}], **ASK
        )
    first = task.report()
    assert first.budget_left_usd is not None
    reads: list[object] = []
    monkeypatch.setattr(gov, "_budget_left", lambda task: reads.append(task))
    monkeypatch.setattr(gov, "_abudget_left", lambda task: reads.append(task))
    with caplog.at_level(logging.WARNING):
        if use_async:
            again = asyncio.run(gov.aclose_task(task))
        else:
            again = gov.close_task(task)
    assert again == first
    assert reads == []
    assert len(capture.named("governor.task")) == 1
    assert "ended span" not in caplog.text
    gov.close()


class _MeetingSet(set[Any]):
    """A set whose discard waits (briefly) for a second thread to discard too."""

    def __init__(self) -> None:
        super().__init__()
        self.meeting = threading.Barrier(2)

    def discard(self, item: Any) -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            self.meeting.wait(timeout=1.0)  # a hang guard: one closer waits
        super().discard(item)


def test_two_threads_closing_one_task_end_its_span_once(
    capture: SpanCapture, caplog: pytest.LogCaptureFixture
) -> None:
    """Only the first of two racing closers ends the task's span."""
    gov = Governor(Policy(), tracer_provider=capture.provider)
    task = gov.open_task()
    gov._open_tasks = _MeetingSet()
    reports: list[Any] = []
    closers = [
        threading.Thread(target=lambda: reports.append(gov.close_task(task)))
        for _ in range(2)
    ]

    with caplog.at_level(logging.WARNING):
        for closer in closers:
            closer.start()
        for closer in closers:
            closer.join(timeout=10)

    assert len(reports) == 2
    assert reports[0] == reports[1]
    assert len(capture.named("governor.task")) == 1
    assert "ended span" not in caplog.text
    gov.close()


def test_entering_a_closed_governor_raises() -> None:
    gov = Governor(Policy())
    with gov:
        pass
    with pytest.raises(GovernorClosed, match="with gov:"), gov:
        pass

    async def enter() -> None:
        async with gov:
            pass

    with pytest.raises(GovernorClosed, match="async with gov:"):
        asyncio.run(enter())
