"""Ready-made policy packs: what each declares, enforces, and the CLI around them."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from conftest import CountingLiteLLM
from governor import Budget, BudgetExceeded, ConfigError, Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM
from governor.cli import main
from governor.policies import packs
from governor.testing import install_offline_provider, offline_model

QUESTION = [{"role": "user", "content": "Summarise the quarterly report."}]


def ask(llm: GovernedLiteLLM, **extra: object) -> object:
    return llm.completion(
        model=offline_model("gpt-4o"), messages=QUESTION, max_tokens=500, **extra
    )


@pytest.mark.parametrize("name", sorted(packs.PACKS))
def test_every_pack_builds_a_governor_under_its_name(name: str) -> None:
    """Each pack is a valid policy, named after itself, a governor accepts."""
    policy = packs.by_name(name)
    assert policy.name == name
    assert Governor(policy).policy is policy


def test_an_unknown_pack_names_the_packs() -> None:
    """A typo lists what exists."""
    with pytest.raises(ConfigError, match="the packs are starter, production"):
        packs.by_name("prod")


def test_starter_refuses_a_call_over_its_task_budget() -> None:
    """task_usd caps a task: the call that would cross it is not sent."""
    install_offline_provider(speed=0)
    gov = Governor(packs.starter(task_usd="0.004"))
    llm = GovernedLiteLLM(gov)
    with pytest.raises(BudgetExceeded) as stop, gov.task():
        for _ in range(10):
            ask(llm)
    assert (stop.value.scope.split(":")[0], stop.value.limit) == (
        "task",
        Decimal("0.004"),
    )


def test_production_charges_each_team_per_month() -> None:
    """A team's monthly budget is shared by its tasks; another team has its own."""
    install_offline_provider(speed=0)
    gov = Governor(packs.production(team_monthly_usd="0.012"))
    llm = GovernedLiteLLM(gov)
    with pytest.raises(BudgetExceeded) as stop:
        for _ in range(100):  # each task is far under its own $1
            with gov.task(team="search"):
                ask(llm)
    with gov.task(team="ads") as other:
        ask(llm)
    assert stop.value.scope.startswith("team:search#month:")
    assert other.report().calls == 1


def test_customer_facing_users_never_share_cached_answers() -> None:
    """The same question from two users is sent for each; a repeat is not."""
    counter = CountingLiteLLM()
    gov = Governor(packs.customer_facing())
    llm = GovernedLiteLLM(gov, completion=counter.completion)
    for user in ("alice", "bob", "alice"):
        with gov.task(user=user, session=f"s-{user}"):
            llm.completion(
                model="gpt-4o-mini",
                messages=QUESTION,
                mock_response="Revenue grew 4%.",
                max_tokens=20,
            )
    assert counter.sent == 2


def test_a_pack_merged_with_an_override_keeps_its_other_budgets() -> None:
    """merged() replaces the budget of the same scope and keeps the rest."""
    override = Policy(budgets=[Budget(scope="team", max_usd="5000", period="month")])
    policy = packs.production().merged(override)
    limits = {(b.scope, b.period): b.max_usd for b in policy.budgets}
    assert limits == {
        ("task", "total"): Decimal("1"),
        ("team", "month"): Decimal("5000"),
    }


def test_cli_lists_the_packs_and_shows_one(capsys: pytest.CaptureFixture[str]) -> None:
    """governor policy packs|show print what a pack holds."""
    assert main(["policy", "packs"]) == 0
    listing = capsys.readouterr().out
    assert [line.split()[0] for line in listing.splitlines()] == [
        f"pack:{name}" for name in packs.PACKS
    ]
    assert main(["policy", "show", "pack:batch"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["name"], shown["attribution"]["feature"]) == ("batch", "batch")


def test_cli_show_refuses_an_unknown_policy(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown pack exits 2 naming the packs."""
    assert main(["policy", "show", "pack:nope"]) == 2
    assert "no policy pack named 'nope'" in capsys.readouterr().err
