"""Overrides never silently drop a limit or widen who shares cached answers.

A keyed budget overrides the scope-wide budget of its slot limit by limit,
``Policy.merged`` merges budgets of one ident field by field, and a merge of
cache settings keeps the partition scopes of both.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from conftest import CountingLiteLLM
from governor import Budget, BudgetExceeded, Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM
from governor.budgets import lines_for
from governor.policies import Cache, Price, Pricing, packs
from governor.stores import MemoryLedger

# litellm's mock reports 10 prompt and 20 completion tokens: with input free
# and output at $1 per million tokens, a call costs exactly $0.00002, and a
# call sent max_tokens=20 holds exactly that much.
PRICING = Pricing(
    overrides={"gpt-4o-mini": Price(input_usd_per_mtok="0", output_usd_per_mtok="1")}
)
CALL_NANOS = 20_000
MESSAGES = [{"role": "user", "content": "Say hi."}]
WHEN = datetime(2026, 6, 1, tzinfo=UTC)


def _call(gov: Governor, **task: Any) -> None:
    with gov.task(**task):
        GovernedLiteLLM(gov).completion(
            model="gpt-4o-mini",
            messages=MESSAGES,
            mock_response="hi",
            max_tokens=20,
        )


def _calls_until_refused(gov: Governor, tries: int, **task: Any) -> tuple[int, str]:
    """How many calls went through before one was refused, and its scope."""
    for sent in range(tries):
        try:
            _call(gov, **task)
        except BudgetExceeded as refused:
            return sent, refused.scope
    return tries, ""


# --- keyed budgets: lines_for ------------------------------------------------


@pytest.mark.parametrize("order", [1, -1])
def test_a_keyed_budget_inherits_the_limit_it_leaves_unset(order: int) -> None:
    """Team search's token budget keeps every team's dollar limit, in any order."""
    budgets = [
        Budget(scope="team", max_usd="0.0001", period="month"),
        Budget(scope="team", key="search", max_tokens=10**6, period="month"),
    ][::order]
    (spec,) = lines_for(budgets, {"team": "search"}, "t1", WHEN)
    assert (spec.key, spec.limit_nanos, spec.limit_tokens) == (
        "team:search#month:2026-06@UTC",
        100_000,
        10**6,
    )
    assert (spec.budget.key, spec.budget.max_usd) == ("search", Decimal("0.0001"))
    (other,) = lines_for(budgets, {"team": "ads"}, "t1", WHEN)
    assert (other.limit_nanos, other.limit_tokens) == (100_000, None)


def test_a_keyed_limit_wins_and_its_own_settings_are_kept() -> None:
    """A limit the keyed budget sets replaces the scope-wide one's; its window,
    time zone and warn_at are its own; only the missing limit is inherited."""
    budgets = [
        Budget(scope="team", max_usd="5", max_tokens=1000, period="day"),
        Budget(
            scope="team",
            key="search",
            max_usd="1",
            period="day",
            timezone="Europe/Paris",
            warn_at=(0.5,),
        ),
    ]
    (spec,) = lines_for(budgets, {"team": "search"}, "t1", WHEN)
    assert (spec.key, spec.limit_nanos, spec.limit_tokens) == (
        "team:search#day:2026-06-01@Europe/Paris",
        10**9,
        1000,
    )
    assert (spec.budget.timezone, spec.budget.warn_at) == ("Europe/Paris", (0.5,))


def test_a_keyed_token_budget_keeps_the_teams_dollar_cap_on_calls() -> None:
    """Governed calls of team search stop at every team's $0.00005 a month,
    though search's own budget sets tokens only."""
    ledger = MemoryLedger()
    gov = Governor(
        Policy(
            pricing=PRICING,
            budgets=[
                Budget(scope="team", max_usd="0.00005", period="month", warn_at=()),
                Budget(
                    scope="team",
                    key="search",
                    max_tokens=10**6,
                    period="month",
                    warn_at=(),
                ),
            ],
        ),
        ledger=ledger,
    )
    try:
        # $0.00004 spent: the third call would need $0.00002 of $0.00001 left
        line = f"team:search#month:{_month()}@UTC"
        assert _calls_until_refused(gov, 5, team="search") == (2, line)
        balance = ledger.balance(line)
        assert balance is not None
        assert (balance.spent_nanos, balance.limit_nanos, balance.limit_tokens) == (
            2 * CALL_NANOS,
            50_000,
            10**6,
        )
    finally:
        gov.close()


def _month() -> str:
    return datetime.now(UTC).strftime("%Y-%m")


# --- Policy.merged -----------------------------------------------------------


def test_merging_a_token_budget_keeps_the_packs_dollar_limit() -> None:
    """starter's $0.0001 task cap survives an override that sets tokens only."""
    merged = packs.starter(task_usd="0.0001").merged(
        Policy(budgets=[Budget(max_tokens=10**6)])
    )
    assert [(b.scope, b.max_usd, b.max_tokens) for b in merged.budgets] == [
        ("task", Decimal("0.0001"), 10**6)
    ]


def test_a_merged_budget_takes_only_the_fields_the_override_set() -> None:
    """Set fields win (a limit, warn_at); unset ones and None limits inherit."""
    base = Policy(
        budgets=[
            Budget(
                scope="team",
                max_usd="1",
                period="day",
                timezone="Europe/Paris",
                warn_at=(0.5,),
            ),
            Budget(scope="user", max_usd="2"),
        ]
    )
    merged = base.merged(
        Policy(
            budgets=[
                Budget(scope="team", max_tokens=100, period="day", warn_at=(0.9,)),
                Budget(scope="user", max_usd=None, max_tokens=7),
                Budget(scope="org", max_usd="9"),
            ]
        )
    )
    team, user, org = merged.budgets
    assert (team.max_usd, team.max_tokens, team.timezone, team.warn_at) == (
        Decimal("1"),
        100,
        "Europe/Paris",
        (0.9,),
    )
    assert (user.max_usd, user.max_tokens) == (Decimal("2"), 7)
    assert (org.scope, org.max_usd) == ("org", Decimal("9"))
    lowered = base.merged(
        Policy(budgets=[Budget(scope="team", max_usd="0.5", period="day")])
    )
    team, _ = lowered.budgets
    assert (team.max_usd, team.timezone, team.warn_at) == (
        Decimal("0.5"),
        "Europe/Paris",
        (0.5,),
    )


def test_a_merged_policy_refuses_the_call_past_the_inherited_cap() -> None:
    """Governed calls under the merged pack stop at the task's $0.00005."""
    policy = packs.starter(task_usd="0.00005").merged(
        Policy(pricing=PRICING, budgets=[Budget(max_tokens=10**6)])
    )
    gov = Governor(policy, ledger=MemoryLedger())
    llm = GovernedLiteLLM(gov)
    sent = 0
    try:
        with gov.task() as task, pytest.raises(BudgetExceeded) as refused:
            for _ in range(5):
                llm.completion(
                    model="gpt-4o-mini",
                    messages=MESSAGES,
                    mock_response="hi",
                    max_tokens=20,
                )
                sent += 1
    finally:
        gov.close()
    assert sent == 2
    assert refused.value.scope == f"task:{task.id}"
    assert task.report().cost_usd == Decimal("0.00004")


# --- Cache partition_by ------------------------------------------------------


def test_merging_packs_keeps_the_per_user_partition() -> None:
    """customer_facing's per-user cache stays per user under batch's settings."""
    merged = packs.customer_facing().merged(packs.batch())
    assert merged.cache is not None
    assert merged.cache.partition_by == ("org", "team", "user")
    assert merged.cache.semantic  # batch's other settings still win


def test_a_cache_merge_keeps_the_scopes_of_both() -> None:
    """Base scopes first, then the override's new ones; unset keeps the base."""
    base = Cache(partition_by=("org", "team", "session"))
    assert base.merged(Cache(partition_by=("user", "org"))).partition_by == (
        "org",
        "team",
        "session",
        "user",
    )
    assert base.merged(Cache(partition_by=())).partition_by == base.partition_by
    assert base.merged(Cache(ttl_s=60)).partition_by == base.partition_by
    shared = Cache(partition_by=())
    assert shared.merged(Cache(partition_by=("org",))).partition_by == ("org",)
    # a wider partition is built anew, on purpose
    wider = base.model_copy(update={"partition_by": ("org",)})
    assert wider.partition_by == ("org",)
    policy = Policy(cache=base).merged(Policy(cache=Cache(partition_by=("org",))))
    assert policy.cache is not None
    assert policy.cache.partition_by == ("org", "team", "session")


def test_users_of_a_team_do_not_share_answers_under_merged_packs() -> None:
    """Under customer_facing merged with batch, user b is not served user a's
    cached answer."""
    counter = CountingLiteLLM()
    policy = packs.customer_facing().merged(packs.batch())
    gov = Governor(policy.merged(Policy(cache=Cache(embedder="hashing"))))
    llm = GovernedLiteLLM(gov, completion=counter.completion)
    hits = []
    try:
        for user in ("a", "b", "a"):
            with gov.task(team="support", user=user, feature="batch") as task:
                llm.completion(
                    model="gpt-4o-mini",
                    messages=MESSAGES,
                    mock_response="hi",
                    max_tokens=20,
                )
            hits.append(task.cache_hits)
    finally:
        gov.close()
    assert hits == [0, 0, 1]
    assert counter.sent == 2


@pytest.mark.parametrize(
    "switch",
    ["scope_by_model", "scope_by_system_prompt", "scope_by_tools", "scope_by_context"],
)
def test_a_merge_keeps_a_scoping_switch_the_base_turns_on(switch: str) -> None:
    """An override turning a scoping switch off cannot merge it away; its
    other settings still win."""
    base = Cache(exact=True)
    override = Cache(**{switch: False}, ttl_s=60)
    merged = base.merged(override)
    assert (getattr(merged, switch), merged.ttl_s) == (True, 60)
    assert getattr(Cache(**{switch: False}).merged(Cache()), switch) is False
