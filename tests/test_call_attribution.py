"""A call inside a task that names a tenant the task does not.

Web middleware often opens one task per request before the tenant is known,
and the code then names the tenant per call (LiteLLM ``metadata``). Such a
call is charged to that tenant's budgets and records and reads only that
tenant's cached answers, as the same call outside a task would be.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from conftest import MOCK_COST, CountingLiteLLM, SpanCapture
from governor import (
    Budget,
    BudgetExceeded,
    Cache,
    Governor,
    Policy,
    attribute,
)
from governor.adapters.litellm import GovernedLiteLLM
from governor.spend import SQLiteSpendStore

QUESTION = [{"role": "user", "content": "What is the capital of Australia?"}]


def ask(llm: GovernedLiteLLM, team: str) -> Any:
    return llm.completion(
        model="gpt-4o-mini",
        messages=QUESTION,
        mock_response="Canberra.",
        max_tokens=30,
        metadata={"team": team},
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
