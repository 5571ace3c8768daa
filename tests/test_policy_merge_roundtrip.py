"""A policy kept for merging round-trips with what it sets, and
Loops.escalate_to is checked when built.

A policy counts in a merge by the fields it sets explicitly. Written with
only those (``model_dump_json(exclude_unset=True)``, ``governor policy show
--set-only``) and read back, it merges over a pack exactly as the original
does; a full print sets every field, so it would reset a pack's ceilings.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from governor import Budget, ConfigError, Governor, Policy, PolicyError
from governor.cli import main
from governor.cli._policy import load_policy
from governor.policies import Attribution, Cache, Fanout, Loops, Price, Pricing
from governor.policies.packs import PACKS

OVERRIDES = {
    "team budget": Policy(
        budgets=[Budget(scope="team", key="search", max_usd="5000", period="month")]
    ),
    "same budget line": Policy(
        budgets=[Budget(scope="team", max_usd="5", period="month")]
    ),
    "nested parts": Policy(
        loops=Loops(max_repeats=3, exempt_tools=("wait_for_job",)),
        fanout=Fanout(max_branches=4),
        attribution=Attribution(team="search", tags={"tier": "gold"}),
        cache=Cache(max_temperature=0.5),
    ),
    "defaults set by hand": Policy(
        name="default",
        loops=Loops(max_model_calls=None, max_wall_s=None),
        fanout=Fanout(max_inflight_calls=None, on_cap="wait"),
        attribution=Attribution(environment=None),
    ),
}

PACK_NAMES = sorted(PACKS)


def _through_policy_show(
    override: Policy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Policy:
    """``override`` written as a minimal file, printed by ``policy show
    --set-only`` and that output read back as the command line reads a
    ``.json`` policy."""
    given = tmp_path / "given.json"
    given.write_text(override.model_dump_json(exclude_unset=True), encoding="utf-8")
    capsys.readouterr()
    assert main(["policy", "show", "--set-only", str(given)]) == 0
    shown = tmp_path / "shown.json"
    shown.write_text(capsys.readouterr().out, encoding="utf-8")
    return load_policy(str(shown))


@pytest.mark.parametrize("pack", PACK_NAMES)
@pytest.mark.parametrize("kind", sorted(OVERRIDES))
def test_a_json_round_trip_merges_like_the_original(pack: str, kind: str) -> None:
    override = OVERRIDES[kind]
    read_back = Policy.model_validate_json(override.model_dump_json(exclude_unset=True))
    assert read_back == override
    base = PACKS[pack]()
    assert base.merged(read_back) == base.merged(override)


@pytest.mark.parametrize("pack", PACK_NAMES)
@pytest.mark.parametrize("kind", sorted(OVERRIDES))
def test_policy_show_set_only_merges_like_the_original(
    pack: str, kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    override = OVERRIDES[kind]
    shown = _through_policy_show(override, tmp_path, capsys)
    assert shown == override
    base = PACKS[pack]()
    assert base.merged(shown) == base.merged(override)


@pytest.mark.parametrize("pack", PACK_NAMES)
def test_every_pack_printed_set_only_reads_back_equal(
    pack: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cascade's checks keep their kind, which tells them apart."""
    capsys.readouterr()
    assert main(["policy", "show", "--set-only", f"pack:{pack}"]) == 0
    shown = tmp_path / "shown.json"
    shown.write_text(capsys.readouterr().out, encoding="utf-8")
    read_back = load_policy(str(shown))
    assert read_back == PACKS[pack]()
    assert PACKS["production"]().merged(read_back) == PACKS["production"]().merged(
        PACKS[pack]()
    )


def test_a_read_back_override_keeps_the_packs_runaway_ceilings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = PACKS["production"]()
    shown = _through_policy_show(OVERRIDES["team budget"], tmp_path, capsys)
    merged = base.merged(shown)
    assert merged.loops.max_model_calls == base.loops.max_model_calls == 100
    assert merged.loops.max_wall_s == base.loops.max_wall_s == 1800
    assert merged.fanout.max_inflight_calls == base.fanout.max_inflight_calls == 16
    assert merged.attribution.environment == "prod"
    assert merged.name == "production"
    assert len(merged.budgets) == len(base.budgets) + 1


def test_a_field_set_explicitly_to_its_default_resets_the_base() -> None:
    """An override that means it (None lifts a ceiling) is obeyed."""
    merged = PACKS["production"]().merged(OVERRIDES["defaults set by hand"])
    assert (merged.loops.max_model_calls, merged.loops.max_wall_s) == (None, None)
    assert merged.fanout.max_inflight_calls is None
    assert merged.attribution.environment is None


# --- Loops.escalate_to -----------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt-4o ", " gpt-4o", "", "  "])
def test_escalate_to_must_name_a_model_exactly(model: str) -> None:
    with pytest.raises(PolicyError, match="escalate_to"):
        Loops(action="escalate", escalate_to=model)


@pytest.mark.parametrize("action", ["stop", "record"])
def test_escalate_to_only_applies_with_action_escalate(action: str) -> None:
    with pytest.raises(PolicyError, match="only applies with action='escalate'"):
        Loops(action=action, escalate_to="gpt-4o")


def test_no_pack_sets_escalate_to() -> None:
    assert all(pack().loops.escalate_to is None for pack in PACKS.values())


def test_an_override_that_records_drops_escalate_to() -> None:
    base = Loops(action="escalate", escalate_to="gpt-4o")
    recorded = base.merged(Loops(action="record"))
    assert (recorded.action, recorded.escalate_to) == ("record", None)
    kept = base.merged(Loops(max_repeats=3))
    assert (kept.action, kept.escalate_to) == ("escalate", "gpt-4o")


def test_an_unpriced_escalate_to_is_refused_when_the_governor_is_built() -> None:
    policy = Policy(loops=Loops(action="escalate", escalate_to="no-such-model-xyz"))
    with pytest.raises(ConfigError, match="escalate_to 'no-such-model-xyz'"):
        Governor(policy)


def test_a_priced_escalate_to_is_accepted() -> None:
    pricing = Pricing(overrides={"my-model": Price()})
    loops = Loops(action="escalate", escalate_to="my-model")
    gov = Governor(Policy(loops=loops, pricing=pricing))
    gov.close()


def test_an_unpriced_escalate_to_in_a_task_policy_is_refused_when_it_opens() -> None:
    """A task override is checked as the governor's policy is, before its
    first call, not at the escalated retry mid-task."""
    gov = Governor(Policy())
    loops = Loops(max_model_calls=2, action="escalate", escalate_to="no-such-model-zz")
    task = gov.task(policy=Policy(loops=loops))
    with pytest.raises(ConfigError, match="escalate_to 'no-such-model-zz'"):
        task.__enter__()
    gov.close()
