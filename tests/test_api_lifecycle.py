"""The public API's lifecycle: instrumenting LiteLLM with a block, reports
that stop at the task's end and show plain amounts, readable reprs, and
error messages and error types that match the docs."""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import litellm
import pytest

import governor
from governor import (
    Attribution,
    Budget,
    Governor,
    GovernorError,
    Policy,
    Price,
    Pricing,
    ScopeBlocked,
    TaskReport,
    govern,
)
from governor.adapters.litellm import (
    GovernedLiteLLM,
    Instrumentation,
    active_instrumentation,
    instrument,
)

MESSAGES = [{"role": "user", "content": "Name three primary colours."}]
# A price low enough that one mocked call costs under a millionth of a dollar,
# which Python's Decimal writes with an exponent (3E-7).
CHEAP = Policy(
    name="cheap",
    pricing=Pricing(
        overrides={
            "gpt-4o-mini": Price(input_usd_per_mtok="0.01", output_usd_per_mtok="0.01")
        }
    ),
)


def _functions() -> tuple[Any, ...]:
    return (
        litellm.completion,
        litellm.acompletion,
        litellm.embedding,
        litellm.aembedding,
    )


@pytest.fixture(autouse=True)
def restored_litellm() -> Iterator[tuple[Any, ...]]:
    """LiteLLM's own functions, put back after the test whatever it did."""
    original = _functions()
    assert active_instrumentation() is None
    yield original
    active = active_instrumentation()
    if active is not None:
        active.uninstrument()
    (
        litellm.completion,
        litellm.acompletion,
        litellm.embedding,
        litellm.aembedding,
    ) = original


def _call() -> Any:
    """A call through whatever ``litellm.completion`` is now."""
    return litellm.completion(
        model="gpt-4o-mini", messages=MESSAGES, mock_response="Red.", max_tokens=50
    )


# -- 1. Instrumentation as a context manager --------------------------------


def test_entering_an_instrumentation_installs_it(
    restored_litellm: tuple[Any, ...],
) -> None:
    """`with Instrumentation(gov):` governs LiteLLM in the block, not after."""
    gov = Governor()
    instrumentation = Instrumentation(gov)
    assert active_instrumentation() is None
    with instrumentation as entered, gov.task() as task:
        assert entered is instrumentation
        assert active_instrumentation() is instrumentation
        _call()
    assert task.report().calls == 1
    assert active_instrumentation() is None
    assert _functions() == restored_litellm
    with gov.task() as after:
        _call()
    assert after.report().calls == 0


def test_with_instrument_keeps_its_patch_and_undoes_it_on_exit(
    restored_litellm: tuple[Any, ...],
) -> None:
    """`instrument()` installs once: entering its result does not refuse it."""
    gov = Governor()
    with instrument(gov) as instrumentation, gov.task() as task:
        assert active_instrumentation() is instrumentation
        _call()
    assert task.report().calls == 1
    assert active_instrumentation() is None
    assert _functions() == restored_litellm


def test_an_instrumentation_can_be_entered_again_after_its_block() -> None:
    gov = Governor()
    instrumentation = Instrumentation(gov)
    for _ in range(2):
        with instrumentation, gov.task() as task:
            _call()
        assert task.report().calls == 1
        assert active_instrumentation() is None


def test_entering_while_another_governor_instruments_is_refused() -> None:
    """Entering checks as instrument() does, and leaves the active patch alone."""
    first, second = Governor(), Governor()
    with instrument(first) as active:
        patched = _functions()
        with (
            pytest.raises(RuntimeError, match="already instrumented by another"),
            Instrumentation(second),
        ):
            pass
        assert active_instrumentation() is active
        assert _functions() == patched


def test_an_instrumentation_made_under_another_governs_litellms_own_functions(
    restored_litellm: tuple[Any, ...],
) -> None:
    """Made while another patch was on, it wraps what LiteLLM has when entered,
    and puts LiteLLM's own functions back, not the other governor's."""
    first, second = Governor(), Governor()
    earlier = instrument(first)
    later = Instrumentation(second)
    earlier.uninstrument()
    with later, first.task() as first_task, second.task() as second_task:
        _call()
    assert second_task.report().calls == 1
    assert first_task.report().calls == 0
    assert _functions() == restored_litellm


# -- 2. a report's elapsed time stops at the task's end ---------------------


def test_elapsed_time_stops_when_the_task_ends() -> None:
    gov = Governor()
    with gov.task() as task:
        time.sleep(0.01)
    at_end = task.report().elapsed_s
    assert at_end >= 0.01
    time.sleep(0.05)
    assert task.report().elapsed_s == at_end
    assert task.elapsed_s() == at_end


def test_elapsed_time_runs_while_the_task_is_open() -> None:
    gov = Governor()
    with gov.task() as task:
        first = task.report().elapsed_s
        time.sleep(0.02)
        assert task.report().elapsed_s >= first + 0.02


# -- 3. amounts in plain notation --------------------------------------------


def test_a_report_shows_amounts_under_a_millionth_in_plain_notation() -> None:
    gov = Governor(CHEAP.merged(Policy(budgets=[Budget(max_usd="0.00001")])))
    llm = GovernedLiteLLM(gov)
    with gov.task() as task:
        llm.completion(
            model="gpt-4o-mini", messages=MESSAGES, mock_response="Red.", max_tokens=50
        )
    report = task.report()
    assert Decimal(0) < report.cost_usd < Decimal("0.000001")
    assert report.budget_left_usd is not None
    shown = repr(report)
    assert "E-" not in shown
    assert "E+" not in shown
    assert f"cost_usd=Decimal('{report.cost_usd:f}')" in shown
    assert f"budget_left_usd=Decimal('{report.budget_left_usd:f}')" in shown
    assert f"cost_usd={report.cost_usd:f}" in repr(task)


def test_a_report_stores_amounts_without_an_exponent() -> None:
    report = _report(
        cost_usd=Decimal("2E+2"),
        saved_usd=Decimal("1E+1"),
        budget_left_usd=Decimal("3E+3"),
    )
    assert (str(report.cost_usd), str(report.saved_usd)) == ("200", "10")
    assert str(report.budget_left_usd) == "3000"
    assert report.cost_usd == Decimal(200)


def test_a_report_without_a_budget_and_its_pickle_keep_their_values() -> None:
    report = _report(cost_usd=Decimal("0.0000002"), budget_left_usd=None)
    assert report.budget_left_usd is None
    assert "budget_left_usd=None" in repr(report)
    assert pickle.loads(pickle.dumps(report)) == report


def _report(**amounts: Any) -> TaskReport:
    fields: dict[str, Any] = {
        "task_id": "t-1",
        "policy": "default",
        "calls": 1,
        "refused": 0,
        "cache_hits": 0,
        "input_tokens": 10,
        "output_tokens": 20,
        "cost_usd": Decimal(0),
        "saved_usd": Decimal(0),
        "budget_left_usd": None,
        "stop_reason": None,
        "elapsed_s": 0.5,
        "attribution": {},
    }
    return TaskReport(**{**fields, **amounts})


# -- 4. ScopeBlocked names the method that lifts the block -------------------


def test_scope_blocked_says_to_call_the_governors_unblock() -> None:
    message = str(ScopeBlocked("team:a", task_id="t-1"))
    assert "gov.unblock('team:a')" in message
    assert "governor.unblock" not in message
    assert not hasattr(governor, "unblock")
    gov = Governor()
    gov.unblock("team:a")  # the call the message gives runs


# -- 5. readable reprs -------------------------------------------------------


def test_a_task_repr_shows_its_id_state_calls_and_cost_only() -> None:
    gov = Governor(CHEAP)
    llm = GovernedLiteLLM(gov)
    with gov.task("job-17", user="alice@example.com") as task:
        assert repr(task) == "<Task id='job-17' open calls=0 cost_usd=0>"
        llm.completion(
            model="gpt-4o-mini", messages=MESSAGES, mock_response="Red.", max_tokens=50
        )
    cost = format(task.cost_usd, "f")
    assert repr(task) == f"<Task id='job-17' closed calls=1 cost_usd={cost}>"
    assert "alice" not in repr(task)


def test_governed_litellm_and_instrumentation_reprs_name_their_governor() -> None:
    gov = Governor(CHEAP)
    whose = f"governor={id(gov):#x} policy='cheap'"
    assert repr(GovernedLiteLLM(gov)) == f"<GovernedLiteLLM {whose}>"
    instrumentation = Instrumentation(gov)
    assert repr(instrumentation) == f"<Instrumentation not installed {whose}>"
    with instrumentation:
        assert repr(instrumentation) == f"<Instrumentation installed {whose}>"
    assert repr(instrumentation) == f"<Instrumentation not installed {whose}>"


# -- 6. misuse of a call raises Python's errors, as docs/errors.md says ------


@pytest.mark.parametrize(
    "misuse",
    [
        lambda: Governor({"budgets": []}),  # type: ignore[arg-type]
        lambda: govern(object(), 5),  # type: ignore[arg-type]
        lambda: Budget("1"),  # type: ignore[call-arg]
        lambda: instrument(Policy()),  # type: ignore[arg-type]
        lambda: pickle.dumps(Governor()),
    ],
    ids=[
        "Governor(dict)",
        "govern(x, 5)",
        "Budget('1')",
        "instrument(policy)",
        "pickle",
    ],
)
def test_misuse_of_a_call_raises_type_error_not_a_governor_error(misuse: Any) -> None:
    with pytest.raises(TypeError) as info:
        misuse()
    assert not isinstance(info.value, GovernorError)


def test_instrumenting_twice_raises_runtime_error_not_a_governor_error() -> None:
    gov = Governor()
    with instrument(gov), pytest.raises(RuntimeError) as info:
        instrument(gov)
    assert not isinstance(info.value, GovernorError)


def test_invalid_settings_raise_governor_errors() -> None:
    with pytest.raises(GovernorError):
        Budget(max_usd="-1")
    with pytest.raises(GovernorError):
        Attribution(team="a#b")


def test_instrument_warns_of_a_module_that_bound_litellm_early(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`from litellm import completion` before instrument() keeps the
    ungoverned function under the module's own name: instrument() says so,
    naming the module and the name."""
    import sys
    import types

    import litellm

    from governor.adapters.litellm import instrument

    early = types.ModuleType("early_caller")
    early.ask_model = litellm.completion  # type: ignore[attr-defined]
    late = types.ModuleType("late_caller")
    late.litellm = litellm  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "early_caller", early)
    monkeypatch.setitem(sys.modules, "late_caller", late)

    with caplog.at_level(logging.WARNING, logger="governor"), instrument(Governor()):
        pass
    lines = [r.getMessage() for r in caplog.records if "bound before" in r.getMessage()]
    assert lines == [
        "early_caller.ask_model holds LiteLLM's own function, bound before "
        "instrument(): calls through that name are not governed. Call it through "
        "the module (import litellm; litellm.completion(...)), or instrument "
        "before that module is imported."
    ]
