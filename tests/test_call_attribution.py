"""A call inside a task that names a tenant the task does not.

Web middleware often opens one task per request before the tenant is known,
and the code then names the tenant per call (LiteLLM ``metadata``). Such a
call is charged to that tenant's budgets and records and reads only that
tenant's cached answers, as the same call outside a task would be.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from conftest import MOCK_COST, CountingLiteLLM, SpanCapture
from governor import (
    Attribution,
    Budget,
    BudgetExceeded,
    Cache,
    Fanout,
    Governor,
    Policy,
    ScopeBlocked,
    SlotUnavailable,
    attribute,
)
from governor.adapters.litellm import GovernedLiteLLM
from governor.anomaly import Alert, Tighten
from governor.spend import SQLiteSpendStore

QUESTION = [{"role": "user", "content": "What is the capital of Australia?"}]


def ask(llm: GovernedLiteLLM, team: str) -> Any:
    return ask_naming(llm, team=team)


def ask_naming(llm: GovernedLiteLLM, **metadata: str) -> Any:
    """Ask the question with ``metadata`` naming the call's own values."""
    return llm.completion(
        model="gpt-4o-mini",
        messages=QUESTION,
        mock_response="Canberra.",
        max_tokens=30,
        metadata=metadata,
    )


def test_tenants_named_per_call_inside_tasks_do_not_share_answers() -> None:
    """acme's answer serves acme again, never globex or initech."""
    counter = CountingLiteLLM()
    gov = Governor(Policy(cache=Cache(embedder="hashing")))
    llm = GovernedLiteLLM(gov, completion=counter.completion)
    hits = []
    for team in ("acme", "globex", "initech", "acme"):
        with gov.task() as task:
            ask(llm, team)
        hits.append(task.report().cache_hits)
    assert (counter.sent, hits) == (3, [0, 0, 0, 1])


def test_a_tenant_named_per_call_is_held_to_its_team_budget() -> None:
    """A per-team budget refuses the named team's call inside an open task."""
    policy = Policy(budgets=[Budget(scope="team", max_usd="0.000001")])
    gov = Governor(policy)
    with gov.task(), pytest.raises(BudgetExceeded) as refused:
        ask(GovernedLiteLLM(gov), "acme")
    assert refused.value.scope == "team:acme"


def test_the_spend_record_carries_the_tenant_named_per_call(tmp_path: Path) -> None:
    """The record has the call's team and the task's other values."""
    store = SQLiteSpendStore(tmp_path / "spend.sqlite3")
    with Governor(spend=store) as gov, gov.task("t-1", feature="faq") as task:
        ask(GovernedLiteLLM(gov), "acme")
    records = [(r.task_id, r.team, r.feature, r.cost_usd) for r in store.query()]
    assert records == [("t-1", "acme", "faq", MOCK_COST)]
    assert task.report().cost_usd == MOCK_COST


def test_the_task_wins_a_clash_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A task for team search keeps charging search; the clash is logged once."""
    store = SQLiteSpendStore(tmp_path / "spend.sqlite3")
    with (
        caplog.at_level(logging.WARNING, logger="governor"),
        Governor(spend=store) as gov,
        gov.task(team="search"),
    ):
        ask(GovernedLiteLLM(gov), "acme")
        ask(GovernedLiteLLM(gov), "acme")
    warned = [r for r in caplog.records if "team='acme'" in r.getMessage()]
    assert [r.team for r in store.query()] == ["search", "search"]
    assert len(warned) == 1


def test_attribute_entered_inside_a_task_meets_that_feature_budget() -> None:
    """``@attribute(feature=...)`` on a helper called inside a task is charged."""
    policy = Policy(budgets=[Budget(scope="feature", key="f", max_usd="0.000001")])
    gov = Governor(policy)
    with (
        gov.task(team="search"),
        attribute(feature="f"),
        pytest.raises(BudgetExceeded) as refused,
    ):
        ask(GovernedLiteLLM(gov), "search")
    assert refused.value.scope == "feature:f"


def test_a_task_opened_inside_attribute_naming_its_own_team_warns_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An explicit task team over an ambient default is the documented order,
    not a clash: its calls log no warning and charge the task's team."""
    policy = Policy(budgets=[Budget(scope="team", max_usd="0.000001")])
    gov = Governor(policy)
    with (
        caplog.at_level(logging.WARNING, logger="governor"),
        attribute(team="platform-default"),
        gov.task(team="search"),
        pytest.raises(BudgetExceeded) as refused,
    ):
        ask_plain(GovernedLiteLLM(gov))
    assert refused.value.scope == "team:search"
    with (
        caplog.at_level(logging.WARNING, logger="governor"),
        attribute(team="platform-default"),
        gov.task(team="search"),
        attribute(feature="summarize"),  # a node's own block, nested inside
        pytest.raises(BudgetExceeded),
    ):
        ask_plain(GovernedLiteLLM(gov))
    assert "sets otherwise" not in caplog.text


def test_attribute_inside_a_task_names_the_record_and_the_task_wins_clashes(
    tmp_path: Path,
) -> None:
    """The record gets the block's feature and tags; its team loses to the task's."""
    store = SQLiteSpendStore(tmp_path / "spend.sqlite3")
    with Governor(spend=store) as gov, gov.task(team="search", tags={"a": "1"}):
        with attribute(team="other", feature="f", tags={"a": "2", "x": "1"}):
            ask_plain(GovernedLiteLLM(gov))
        ask_plain(GovernedLiteLLM(gov))
    records = [(r.team, r.feature, dict(r.tags)) for r in store.query()]
    assert records == [
        ("search", "f", {"a": "1", "x": "1"}),
        ("search", None, {"a": "1"}),
    ]


def ask_plain(llm: GovernedLiteLLM) -> Any:
    return llm.completion(
        model="gpt-4o-mini", messages=QUESTION, mock_response="Canberra.", max_tokens=30
    )


def test_a_task_inside_a_task_is_charged_to_the_outer_team() -> None:
    """The inner task inherits team N: its call meets team N's budget."""
    policy = Policy(budgets=[Budget(scope="team", max_usd="0.000001")])
    gov = Governor(policy)
    with (
        gov.task(team="N"),
        gov.task() as inner,
        pytest.raises(BudgetExceeded) as refused,
    ):
        ask(GovernedLiteLLM(gov), "Q")
    assert (refused.value.scope, inner.report().attribution) == (
        "team:N",
        {"team": "N"},
    )


def test_an_inner_task_naming_its_own_team_keeps_it() -> None:
    """Values the inner task names win over the outer task's."""
    gov = Governor()
    with gov.task(team="N", feature="chat"), gov.task(team="M") as inner:
        pass
    assert inner.report().attribution == {"team": "M", "feature": "chat"}


def test_spans_and_refusal_records_name_the_tenant_named_per_call(
    tmp_path: Path, capture: SpanCapture
) -> None:
    """The call span carries team=acme; a refused call's record does too."""
    from governor.telemetry import attributes as attr

    store = SQLiteSpendStore(tmp_path / "spend.sqlite3")
    policy = Policy(budgets=[Budget(scope="team", key="globex", max_usd="0")])
    gov = Governor(policy, spend=store, tracer_provider=capture.provider)
    with gov, gov.task():
        ask(GovernedLiteLLM(gov), "acme")
        with pytest.raises(BudgetExceeded):
            ask(GovernedLiteLLM(gov), "globex")
    (span,) = capture.calls()
    records = sorted((r.outcome, r.team) for r in store.query())
    assert span.attributes[attr.TEAM] == "acme"
    assert records == [("ok", "acme"), ("refused", "globex")]


# A policy's Attribution is a default: a call that names another value of its
# scope is charged there, inside a task as outside one.

PROD_ONLY = Policy(
    attribution=Attribution(environment="prod"),
    budgets=[Budget(scope="environment", key="prod", max_usd="0.000001")],
)


def ask_env(llm: GovernedLiteLLM, environment: str) -> Any:
    return ask_naming(llm, environment=environment)


def test_a_call_naming_another_environment_beats_the_policy_default(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Staging calls inside a task are charged to staging, not to the policy's
    default prod, whose budget would refuse them; no clash is logged."""
    store = SQLiteSpendStore(tmp_path / "spend.sqlite3")
    with (
        caplog.at_level(logging.WARNING, logger="governor"),
        Governor(PROD_ONLY, spend=store) as gov,
        gov.task(team="search"),
    ):
        ask_env(GovernedLiteLLM(gov), "staging")
        ask_env(GovernedLiteLLM(gov), "staging")
        with pytest.raises(BudgetExceeded) as refused:
            ask_plain(GovernedLiteLLM(gov))
    assert refused.value.scope == "environment:prod"
    assert [(r.environment, r.cost_usd) for r in store.query()] == [
        ("staging", MOCK_COST),
        ("staging", MOCK_COST),
        ("prod", 0),  # the refused call's record
    ]
    assert "sets otherwise" not in caplog.text


def test_a_sub_task_keeps_the_default_a_call_may_replace() -> None:
    """A default inherited through a parent task is still only a default."""
    gov = Governor(PROD_ONLY)
    with gov.task(team="search"), gov.task() as inner:
        ask_env(GovernedLiteLLM(gov), "staging")
    assert inner.report().cost_usd == MOCK_COST


def test_a_task_opened_for_prod_still_wins_over_the_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A task opened for prod charges prod whatever its calls name, and says
    so once."""
    gov = Governor(PROD_ONLY)
    with (
        caplog.at_level(logging.WARNING, logger="governor"),
        gov.task(environment="prod"),
        pytest.raises(BudgetExceeded) as refused,
    ):
        ask_env(GovernedLiteLLM(gov), "staging")
    assert refused.value.scope == "environment:prod"
    assert "environment='staging'" in caplog.text


def test_a_task_inside_attribute_for_prod_still_wins_over_the_call() -> None:
    """An ``attribute(environment="prod")`` block around the task is explicit
    too: not a default a call may replace."""
    gov = Governor(PROD_ONLY)
    with (
        attribute(environment="prod"),
        gov.task(),
        pytest.raises(BudgetExceeded) as refused,
    ):
        ask_env(GovernedLiteLLM(gov), "staging")
    assert refused.value.scope == "environment:prod"


def test_a_blocked_default_does_not_block_a_call_naming_another_value() -> None:
    """Blocking prod refuses the task's own calls, not those it sends to
    staging."""
    gov = Governor(Policy(attribution=Attribution(environment="prod")))
    gov.apply_tighten(Tighten("environment:prod", "block", 0.5, an_alert()))
    with gov.task(team="search") as task:
        ask_env(GovernedLiteLLM(gov), "staging")
        with pytest.raises(ScopeBlocked):
            ask_plain(GovernedLiteLLM(gov))
    assert task.report().cost_usd == MOCK_COST


def an_alert() -> Alert:
    moment = datetime(2026, 12, 1, tzinfo=UTC)
    return Alert(
        scope="environment:prod",
        metric="usd",
        rule="burst",
        ts=moment,
        interval_start=moment,
        observed=Decimal("0.5"),
        threshold=Decimal("0.1"),
        baseline_mean=Decimal("0.12"),
        baseline_std=Decimal("0.01"),
    )


async def test_a_call_naming_its_environment_takes_that_environments_slot() -> None:
    """With one slot per environment, a prod call and a staging call of one
    task run at once, and a second staging call finds staging's slot busy."""
    gov = Governor(
        Policy(
            attribution=Attribution(environment="prod"),
            fanout=Fanout(scope_caps={"environment": 1}, on_cap="refuse"),
        )
    )
    llm = GovernedLiteLLM(gov)

    async def slow(environment: str | None) -> Any:
        metadata = {} if environment is None else {"environment": environment}
        return await llm.acompletion(
            model="gpt-4o-mini",
            messages=QUESTION,
            mock_response="Canberra.",
            mock_delay=0.3,
            max_tokens=30,
            metadata=metadata,
        )

    async with gov.atask(team="search") as task:
        both = await asyncio.gather(slow(None), slow("staging"))
        outcomes = await asyncio.gather(
            slow("staging"), slow("staging"), return_exceptions=True
        )
    assert len(both) == 2
    refused = [o for o in outcomes if isinstance(o, SlotUnavailable)]
    assert len(refused) == 1
    assert "environment:staging" in str(refused[0])
    assert task.report().calls == 3


def test_a_task_policy_naming_another_value_states_it() -> None:
    """``gov.task(policy=Policy(attribution=Attribution(environment="dev")))``
    states dev for the task: a call naming staging is charged to dev."""
    gov = Governor(
        Policy(
            attribution=Attribution(environment="prod"),
            budgets=[Budget(scope="environment", key="dev", max_usd="0.000001")],
        )
    )
    stated = Policy(attribution=Attribution(environment="dev"))
    with gov.task(policy=stated), pytest.raises(BudgetExceeded) as refused:
        ask_env(GovernedLiteLLM(gov), "staging")
    assert refused.value.scope == "environment:dev"


def test_a_copy_of_the_governors_policy_keeps_its_defaults() -> None:
    """A task policy copied from the governor's (other limits, a deep copy,
    the same policy read again) states no environment, nor does one naming
    the governor's own default value: its calls may still name staging."""
    gov = Governor(PROD_ONLY)
    copies = [
        gov.policy.model_copy(update={"budgets": PROD_ONLY.budgets}),
        copy.deepcopy(gov.policy),
        Policy.model_validate_json(gov.policy.model_dump_json()),
        Policy(attribution=Attribution(environment="prod")),  # the same value
    ]
    for policy in copies:
        with gov.task(policy=policy) as task:
            ask_env(GovernedLiteLLM(gov), "staging")
        assert task.report().cost_usd == MOCK_COST
