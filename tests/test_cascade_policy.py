"""The Cascade policy part: tiers, checks, pre-call tiering, retry settings."""

from __future__ import annotations

import pytest

from governor._errors import PolicyError
from governor.policies._cascade import (
    AgreementCheck,
    AnyOfCheck,
    Cascade,
    JsonCheck,
    NonEmptyCheck,
    PreCall,
    PythonCodeCheck,
    Retry,
    Tier,
)


def test_bare_model_names_become_tiers() -> None:
    """A tier given as a bare model name is named after the model."""
    cascade = Cascade(tiers=["gpt-4o-mini", "gpt-4o"])
    assert cascade.tiers == (
        Tier(name="gpt-4o-mini", model="gpt-4o-mini"),
        Tier(name="gpt-4o", model="gpt-4o"),
    )


def test_duplicate_tier_names_are_refused() -> None:
    """Two tiers with one name are refused, naming the duplicates."""
    with pytest.raises(PolicyError, match=r"tier names must be unique.*'a', 'a'"):
        Cascade(tiers=["a", "a"])


def test_unknown_check_kind_lists_the_accepted_kinds() -> None:
    """An unknown check kind is refused with the accepted kinds in the message."""
    with pytest.raises(PolicyError, match="non_empty, not_refusal, json, agreement"):
        Cascade(tiers=["a"], checks=[{"kind": "vibes"}])


def test_precall_needs_fewer_thresholds_than_tiers() -> None:
    """Pre-call tiering with as many thresholds as tiers is refused."""
    with pytest.raises(PolicyError, match="fewer thresholds than there are tiers"):
        Cascade(tiers=["a", "b"], precall=PreCall(thresholds=(0.3, 0.6)))


def test_precall_thresholds_must_ascend() -> None:
    """Descending pre-call thresholds are refused."""
    with pytest.raises(PolicyError, match="ascending"):
        PreCall(thresholds=(0.6, 0.3))


def test_cascade_round_trips_through_json() -> None:
    """A cascade dumped to JSON and read back is equal to the original."""
    cascade = Cascade(
        tiers=[
            Tier(name="cheap", model="gpt-4o-mini", params={"temperature": 0}),
            Tier(
                name="code",
                model="gpt-4o",
                checks=[AnyOfCheck(checks=[PythonCodeCheck(), JsonCheck()])],
            ),
        ],
        checks=[AgreementCheck(normalise="choice", min_agreeing=2)],
        precall=PreCall(thresholds=(0.5,)),
        retry=Retry(cooldown_s=5.0),
    )
    assert Cascade.model_validate_json(cascade.model_dump_json()) == cascade


def test_merge_overrides_only_the_retry_field_set() -> None:
    """Merging an override that sets one retry field keeps the base's tiers."""
    base = Cascade(tiers=["a", "b"], retry=Retry(max_attempts=4))
    override = Cascade(tiers=["a", "b"], retry=Retry(cooldown_s=1.0))
    merged = base.merged(override)
    assert (merged.retry.max_attempts, merged.retry.cooldown_s) == (4, 1.0)


def test_negative_backoff_is_refused_with_accepted_forms() -> None:
    """A negative backoff names the field and what it accepts."""
    with pytest.raises(PolicyError, match=r"backoff_initial_s.*seconds before"):
        Retry(backoff_initial_s=-1)


def test_a_cooldown_longer_than_its_cap_is_refused() -> None:
    """cooldown_s above a max_cooldown_s given with it names both and what to
    change; without one, a long cooldown_s (valid before the cap existed) is
    its own cap."""
    with pytest.raises(PolicyError, match=r"cooldown_s \(600\) exceeds max_cooldown_s"):
        Retry(cooldown_s=600, max_cooldown_s=300)
    with pytest.raises(PolicyError, match="max_cooldown_s"):
        Retry(max_cooldown_s=-1)
    assert Retry().max_cooldown_s == 300.0
    assert Retry(cooldown_s=600).max_cooldown_s == 600.0
    loaded = Retry.model_validate_json('{"cooldown_s": 900}')
    assert (loaded.cooldown_s, loaded.max_cooldown_s) == (900.0, 900.0)
    from_text = Retry.model_validate({"cooldown_s": "600"})  # YAML, environment
    assert from_text.max_cooldown_s == 600.0


@pytest.mark.parametrize(
    "params",
    [{"stream": True}, {"stream_options": {"include_usage": True}}],
    ids=["stream", "stream_options"],
)
def test_streaming_params_in_a_tier_are_refused(params: dict[str, object]) -> None:
    """A tier cannot stream: its whole answer must be checked first."""
    with pytest.raises(PolicyError, match="a cascade cannot stream"):
        Tier(name="cheap", model="gpt-4o-mini", params=params)


def test_the_same_model_and_params_twice_are_refused() -> None:
    """A second tier repeating the first's model and params is refused."""
    with pytest.raises(PolicyError, match=r"tiers 'a' and 'b' send the same model"):
        Cascade(tiers=["m", Tier(name="a", model="x"), Tier(name="b", model="x")])
    other = Tier(name="b", model="x", params={"temperature": 1})
    assert len(Cascade(tiers=[Tier(name="a", model="x"), other]).tiers) == 2
    checked = Tier(name="b", model="x", checks=[NonEmptyCheck()])
    assert len(Cascade(tiers=[Tier(name="a", model="x"), checked]).tiers) == 2


def test_a_blank_tier_name_is_refused() -> None:
    """A name of spaces is refused like an empty one."""
    with pytest.raises(PolicyError, match="must not be blank"):
        Tier(name="  ", model="gpt-4o-mini")


def test_more_tiers_than_max_attempts_is_warned_of_once_per_policy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One Policy(...) logs the unreachable-tier warning once, not twice."""
    import logging

    from governor.policies import Policy

    tiers = [f"model-{i}" for i in range(7)]
    made = [
        lambda: Policy(cascade=Cascade(tiers=tiers)),
        lambda: Policy(cascade={"tiers": tiers}),
        lambda: Policy.model_validate({"cascade": {"tiers": tiers}}),
    ]
    for make in made:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="governor.policies._cascade"):
            make()
        assert sum("7 tiers but" in r.getMessage() for r in caplog.records) == 1


def test_a_provider_key_in_tier_params_is_masked_in_reprs_errors_and_show() -> None:
    """params={"api_key": ...} is kept for the call but never printed."""
    import json

    from governor import Cascade, Policy
    from governor.cli._policy import as_json

    secret = "sk-SECRET-123"
    params = {"api_key": secret, "temperature": 0, "max_tokens": 64}
    tier = Tier(name="cheap", model="gpt-4o-mini", params=params)
    policy = Policy(cascade=Cascade(tiers=[tier, Tier(name="b", model="gpt-4o")]))
    shown = [repr(tier), repr(policy), str(policy), json.dumps(as_json(policy))]
    assert [secret in text for text in shown] == [False] * 4
    assert "'api_key': '***'" in repr(tier)
    assert "'max_tokens': 64" in repr(tier)
    assert tier.params["api_key"] == secret

    with pytest.raises(PolicyError) as refused:
        Tier(name="a", model="m", params={"api_key": secret, "stream": True})
    assert secret not in str(refused.value)
    assert "'api_key': '***'" in str(refused.value)
