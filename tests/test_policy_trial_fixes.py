"""Policy API trial findings: a task scope cap, None pack arguments, money
written with an exponent, where Tier is imported from, the missing-scope
warning."""

from __future__ import annotations

import inspect
import json
import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import governor.cascade
import governor.policies
from governor import Governor, PolicyError
from governor.adapters.litellm import GovernedLiteLLM
from governor.cli import main
from governor.policies import Budget, Fanout, Policy, Price, PriceTier, packs

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "agents" / "triage.py"


# -- 1. a 'task' scope cap would never apply: refused, naming the right field --


@pytest.mark.parametrize("caps", [{"task": 4}, {"task": 4, "team": 20}])
def test_a_task_scope_cap_is_refused_pointing_to_max_inflight_calls(
    caps: dict[str, int],
) -> None:
    """Scope caps are keyed on a task's attribution values, and a task has
    no 'task' value: the cap was accepted and never taken."""
    with pytest.raises(PolicyError) as refused:
        Fanout(scope_caps=caps)  # type: ignore[arg-type]
    message = str(refused.value)
    assert message.startswith("invalid Fanout: scope_caps: ")
    assert "'task' cap would never apply" in message
    assert "max_inflight_calls" in message
    assert "Fanout(max_inflight_calls=4)" in message
    with pytest.raises(PolicyError, match="max_inflight_calls"):
        Policy.model_validate({"fanout": {"scope_caps": caps}})


def test_scope_caps_of_attribution_scopes_are_still_taken() -> None:
    """Only 'task' is refused: the attribution scopes keep their caps."""
    assert Fanout(scope_caps={"team": 2}).scope_caps == {"team": 2}
    with pytest.raises(PolicyError, match="max_inflight_calls"):
        Fanout(max_inflight_calls=3, scope_caps={"task": 3, "session": 1})


# -- 2. None (or a non-text value) for a pack's argument -------------------------


def _arguments() -> list[tuple[str, str]]:
    return [
        (name, argument)
        for name, pack in packs.PACKS.items()
        for argument in inspect.signature(pack).parameters
    ]


@pytest.mark.parametrize(("pack", "argument"), _arguments())
def test_none_for_any_pack_argument_is_refused_naming_it_and_its_default(
    pack: str, argument: str
) -> None:
    """A part reads None as unset: batch(feature=None) built a daily feature
    budget for no job, batch(inflight_calls=None) no cap, and
    starter(task_usd=None) was refused in a Budget's words."""
    build = packs.PACKS[pack]
    default = inspect.signature(build).parameters[argument].default
    with pytest.raises(PolicyError) as refused:
        build(**{argument: None})
    message = str(refused.value)
    assert message.startswith(f"packs.{pack}(): {argument}=None is not valid: None ")
    assert f"{argument} takes " in message
    assert message.endswith(f"or leave it out for its default {default!r}")
    assert "a Budget needs" not in message


def test_the_headline_arguments_of_batch_and_production_say_what_none_skips() -> None:
    with pytest.raises(PolicyError) as refused:
        packs.batch(feature=None)  # type: ignore[arg-type]
    assert "names no feature, so the pack's daily budget (scope 'feature')" in str(
        refused.value
    )
    with pytest.raises(PolicyError, match=r"environment=None is not valid: None "):
        packs.production(environment=None)  # type: ignore[arg-type]
    with pytest.raises(PolicyError) as refused:
        packs.starter(task_usd=None)  # type: ignore[arg-type]
    assert "None sets no dollar limit on the pack's task budget" in str(refused.value)
    assert "default '0.50'" in str(refused.value)
    assert packs.batch(feature="nightly").attribution.feature == "nightly"
    assert packs.production(environment="staging").attribution.environment == (
        "staging"
    )
    assert packs.starter(task_usd=2).budgets[0].max_usd == 2


@pytest.mark.parametrize("value", [b"search", 7, 1.5])
@pytest.mark.parametrize(
    ("pack", "argument"),
    [
        ("batch", "feature"),
        ("production", "environment"),
        ("production", "timezone"),
        ("customer_facing", "timezone"),
        ("cost_saver", "cheap_model"),
        ("cost_saver", "premium_model"),
    ],
)
def test_a_text_argument_of_a_pack_takes_text_only(
    pack: str, argument: str, value: Any
) -> None:
    """Bytes were read as text (b'x' named the feature 'x'), numbers were
    refused in a part's words."""
    with pytest.raises(PolicyError) as refused:
        packs.PACKS[pack](**{argument: value})
    assert str(refused.value).startswith(
        f"packs.{pack}(): {argument}={value!r} is not valid: it is of type "
        f"{type(value).__name__}, not text; {argument} takes "
    )


# -- 3. money given with an exponent is kept written out ------------------------


def test_money_fields_hold_amounts_without_a_positive_exponent() -> None:
    budget = Budget(max_usd="1e3")
    assert str(budget.max_usd) == "1000"
    assert budget == Budget(max_usd=1000)
    assert hash(budget) == hash(Budget(max_usd="1000.0"))
    assert Budget(max_usd=1) == Budget(max_usd="1.0")
    assert str(Budget(max_usd="2.50").max_usd) == "2.50"
    price = Price(
        input_usd_per_mtok="1e1",
        output_usd_per_mtok="3E+1",
        usd_per_second="2e0",
        tiers=[
            PriceTier(
                above_input_tokens=1000,
                input_usd_per_mtok="2e1",
                output_usd_per_mtok="6e1",
            )
        ],
    )
    assert (str(price.input_usd_per_mtok), str(price.output_usd_per_mtok)) == (
        "10",
        "30",
    )
    assert str(price.usd_per_second) == "2"
    tier = price.tiers[0]
    assert (str(tier.input_usd_per_mtok), str(tier.output_usd_per_mtok)) == (
        "20",
        "60",
    )
    with pytest.raises(PolicyError, match="less than or equal to"):
        Budget(max_usd="1e40")


def test_policy_show_prints_money_without_an_exponent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "policy.json"
    path.write_text(
        json.dumps(
            {
                "budgets": [{"max_usd": "1e3"}],
                "pricing": {
                    "overrides": {
                        "m": {
                            "input_usd_per_mtok": "1e-7",
                            "output_usd_per_mtok": "2.50",
                        }
                    }
                },
            }
        )
    )
    assert main(["policy", "show", str(path)]) == 0
    out = capsys.readouterr().out
    shown = json.loads(out)
    assert shown["budgets"][0]["max_usd"] == "1000"
    price = shown["pricing"]["overrides"]["m"]
    assert price["input_usd_per_mtok"] == "0.0000001"
    assert price["output_usd_per_mtok"] == "2.50"
    assert "E+" not in out
    assert "E-" not in out
    assert Policy.model_validate_json(out).budgets[0].max_usd == Decimal(1000)


# -- 4. Tier is imported from governor.policies, as Cascade is -----------------


def test_tier_is_a_policy_part_of_governor_policies() -> None:
    from governor.policies import Tier

    assert Tier is governor.cascade.Tier
    assert "Tier" in governor.policies.__all__
    assert governor.policies.Cascade is governor.cascade.Cascade


def test_the_triage_example_imports_public_modules_only() -> None:
    source = EXAMPLE.read_text(encoding="utf-8")
    assert "governor.policies._" not in source
    assert "from governor.cascade import JsonCheck, Retry, Tier" in source


# -- 5. the missing-scope warning names the scope and how to give it ------------


def test_the_missing_scope_warning_names_each_scope_and_how_to_give_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """It said ``Budget(scope=...)`` and, for two scopes, gave the first
    scope's remedies only."""
    policy = Policy(
        budgets=[
            Budget(scope="feature", max_usd="1", period="day"),
            Budget(scope="team", max_usd="1", period="month"),
        ]
    )
    gov = Governor(policy)
    llm = GovernedLiteLLM(gov)
    with caplog.at_level(logging.WARNING, logger="governor"), gov.task():
        llm.completion(
            model="gpt-4o-mini", messages=MESSAGES, mock_response="Paris", max_tokens=20
        )
    lines = [
        r.getMessage() for r in caplog.records if "a task names no" in r.getMessage()
    ]
    assert len(lines) == 2
    for scope, line in zip(("feature", "team"), lines, strict=True):
        assert line.startswith(f"a task names no {scope}, ")
        assert f"Budget(scope={scope!r}) charges nothing" in line
        assert f"gov.task({scope}=...)" in line
        assert f"with governor.attribute({scope}=...)" in line
        assert f"Attribution({scope}=...)" in line
        assert f"metadata key {scope!r} (metadata={{{scope!r}: ...}})" in line
        assert "Budget(scope=...)" not in line
