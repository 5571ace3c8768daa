"""The policy model: validation errors, immutability and the merge rule."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from governor import Attribution, Budget, Policy, PolicyError, Price, Pricing


def test_budget_reads_money_as_decimal() -> None:
    """Dollar amounts given as strings become exact Decimals."""
    budget = Budget(max_usd="0.10")
    assert budget.max_usd == Decimal("0.10")


def test_bad_scope_names_field_value_and_accepted_forms() -> None:
    """An unknown scope fails with the field, the value and the accepted scopes."""
    with pytest.raises(PolicyError) as info:
        Budget(scope="tem", max_usd=1)
    message = str(info.value)
    assert "scope" in message
    assert "'tem'" in message
    assert "task, session, user, team, feature, environment, org" in message


def test_bad_failure_mode_says_what_open_does() -> None:
    """The accepted forms of failure_mode are whole sentences, not cut short."""
    with pytest.raises(PolicyError) as info:
        Policy(failure_mode="sideways")  # type: ignore[arg-type]  # a bad value
    message = str(info.value)
    assert "'open' admits them under a local shadow budget" in message
    assert "'closed' refuses calls when the budget store is down" in message


def test_negative_limit_is_refused() -> None:
    """A negative dollar limit is a construction error naming max_usd."""
    with pytest.raises(PolicyError, match="max_usd"):
        Budget(max_usd="-1")


def test_budget_needs_a_limit() -> None:
    """A budget with neither dollars nor tokens is refused."""
    with pytest.raises(PolicyError, match="max_usd, max_tokens or both"):
        Budget(scope="team")


def test_unknown_field_is_refused() -> None:
    """A misspelt keyword fails instead of being ignored."""
    with pytest.raises(PolicyError, match="max_dollars"):
        Budget(max_dollars=1)  # type: ignore[call-arg]


def test_unknown_time_zone_is_refused() -> None:
    """Calendar budgets need a real IANA zone."""
    with pytest.raises(PolicyError, match="Mars/Olympus"):
        Budget(scope="team", max_usd=1, period="day", timezone="Mars/Olympus")


def test_policy_is_frozen() -> None:
    """Policies cannot be changed after construction."""
    policy = Policy()
    with pytest.raises(Exception, match="frozen"):
        policy.name = "changed"  # type: ignore[misc]


def test_two_budgets_for_one_scope_are_refused() -> None:
    """One policy holds at most one budget per scope and key."""
    with pytest.raises(PolicyError, match="two budgets for scope 'task'"):
        Policy(budgets=[Budget(max_usd=1), Budget(max_tokens=5)])


def test_merge_replaces_budget_of_same_scope_and_keeps_others() -> None:
    """An override's budget replaces the base's for its scope only."""
    org = Policy(
        budgets=[Budget(max_usd=1), Budget(scope="team", max_usd=100)],
        default_max_output_tokens=1000,
    )
    team = Policy(budgets=[Budget(max_usd=2)])
    merged = org.merged(team)
    by_scope = {b.scope: b.max_usd for b in merged.budgets}
    assert by_scope == {"task": Decimal(2), "team": Decimal(100)}
    assert merged.default_max_output_tokens == 1000


def test_merge_lays_nested_parts_and_mappings_key_by_key() -> None:
    """Nested parts merge field by field and mappings merge key by key."""
    org = Policy(
        attribution=Attribution(team="a", tags={"x": "1"}),
        pricing=Pricing(
            overrides={"m1": Price(input_usd_per_mtok=1, output_usd_per_mtok=1)}
        ),
    )
    agent = Policy(
        attribution=Attribution(feature="f", tags={"y": "2"}),
        pricing=Pricing(
            overrides={"m2": Price(input_usd_per_mtok=2, output_usd_per_mtok=2)}
        ),
    )
    merged = org.merged(agent)
    assert merged.attribution.team == "a"
    assert merged.attribution.feature == "f"
    assert dict(merged.attribution.tags) == {"x": "1", "y": "2"}
    assert sorted(merged.pricing.overrides) == ["m1", "m2"]


def test_merge_ignores_fields_the_override_left_at_default() -> None:
    """A default value in the override does not reset the base's setting."""
    org = Policy(failure_mode="open", hold_ttl_s=60)
    agent = Policy(name="agent")
    merged = org.merged(agent)
    assert (merged.failure_mode, merged.hold_ttl_s, merged.name) == (
        "open",
        60,
        "agent",
    )


def test_a_scope_may_have_a_budget_per_period() -> None:
    """A daily and a monthly team budget are two lines, both enforced."""
    from datetime import UTC, datetime

    from governor.budgets import lines_for

    policy = Policy(
        budgets=[
            Budget(scope="team", max_usd=5, period="day"),
            Budget(scope="team", max_usd=100, period="month"),
        ]
    )
    when = datetime(2026, 12, 4, tzinfo=UTC)
    lines = lines_for(policy.budgets, {"team": "search"}, "t", when)
    assert sorted((s.key, s.limit_nanos) for s in lines) == [
        ("team:search#day:2026-12-04@UTC", 5 * 10**9),
        ("team:search#month:2026-12@UTC", 100 * 10**9),
    ]


@pytest.mark.parametrize("key", ["", "   ", "a#b"])
def test_a_budget_key_that_can_never_match_is_refused(key: str) -> None:
    """Attribution values are non-empty and hold no '#': such a key limits nothing."""
    with pytest.raises(PolicyError, match="can never match"):
        Budget(scope="team", key=key, max_usd=1)


@pytest.mark.parametrize("task_id", ["", "job#day:2020-01-01@UTC", "a\nb", 42])
def test_an_unusable_task_id_is_refused(task_id: Any) -> None:
    """Empty, '#', control characters or a non-string: a clear ConfigError."""
    from governor import ConfigError, Governor

    with pytest.raises(ConfigError, match="task_id"), Governor().task(task_id):
        pass


def test_mappings_inside_a_policy_cannot_be_changed() -> None:
    """A price override added after the governor is built would move money."""
    policy = Policy(pricing=Pricing(overrides={"m": Price()}))
    with pytest.raises(PolicyError, match="frozen"):
        policy.pricing.overrides["gpt-4o"] = Price()  # type: ignore[index]
    with pytest.raises(PolicyError, match="frozen"):
        policy.attribution.tags.update(tier="gold")  # type: ignore[attr-defined]
    assert dict(policy.pricing.overrides) == {"m": Price()}


def test_a_frozen_policy_still_pickles_copies_and_hashes() -> None:
    """Frozen mappings round-trip through pickle and deepcopy and hash."""
    import copy
    import pickle

    policy = Policy(attribution=Attribution(tags={"tier": "gold"}))
    again = pickle.loads(pickle.dumps(policy))
    assert (again, copy.deepcopy(policy), hash(again)) == (
        policy,
        policy,
        hash(policy),
    )


def _nested_policy() -> Policy:
    from governor.cascade import Cascade, JsonCheck, Tier

    cheap = Tier(
        name="cheap",
        model="gpt-4o-mini",
        params={"stop": ["END"], "extra_body": {"top_k": 5, "ids": [1, {"a": [2]}]}},
    )
    return Policy(
        cascade=Cascade(
            tiers=[cheap, Tier(name="strong", model="gpt-4o")],
            checks=[JsonCheck(json_schema={"type": "object", "required": ["a"]})],
        )
    )


def test_lists_and_mappings_nested_in_a_policy_cannot_be_changed() -> None:
    """A stop list or a schema changed after the governor is built would change
    what every later call sends or accepts."""
    policy = _nested_policy()
    params = policy.cascade.tiers[0].params  # type: ignore[union-attr]
    schema = policy.cascade.checks[0].json_schema  # type: ignore[union-attr]
    changes = [
        lambda: params["stop"].append("INJECTED"),
        lambda: params["extra_body"].update(top_k=999),
        lambda: params["extra_body"]["ids"][1]["a"].append(3),
        lambda: schema["required"].append("b"),
    ]
    for change in changes:
        with pytest.raises(PolicyError, match="frozen"):
            change()
    assert (params["stop"], schema["required"]) == (["END"], ["a"])


def test_a_policy_with_nested_lists_hashes_and_round_trips() -> None:
    """Frozen lists hash, pickle and serialize as plain lists."""
    import copy
    import pickle

    policy = _nested_policy()
    again = Policy.model_validate_json(policy.model_dump_json())
    assert (again, pickle.loads(pickle.dumps(policy)), copy.deepcopy(policy)) == (
        policy,
        policy,
        policy,
    )
    assert hash(again) == hash(policy)


def test_a_tier_is_sent_changeable_copies_of_its_params() -> None:
    """The provider's client may change what it is given; the policy keeps its own."""
    from governor import Governor
    from governor.adapters.litellm import GovernedLiteLLM

    sent: list[dict[str, Any]] = []

    def provider(**kwargs: Any) -> Any:
        import litellm

        kwargs["stop"].append("CLIENT")  # a client that edits in place
        kwargs["extra_body"]["top_k"] = 0
        sent.append(kwargs)
        return litellm.completion(
            model="gpt-4o-mini", messages=kwargs["messages"], mock_response='{"a": 1}'
        )

    policy = _nested_policy()
    llm = GovernedLiteLLM(Governor(policy), completion=provider)
    for _ in range(2):
        llm.cascade([{"role": "user", "content": "hi"}], max_tokens=50)
    params = policy.cascade.tiers[0].params  # type: ignore[union-attr]
    assert [s["stop"] for s in sent] == [["END", "CLIENT"], ["END", "CLIENT"]]
    assert (params["stop"], params["extra_body"]["top_k"]) == (["END"], 5)


def test_model_copy_validates_the_fields_it_changes() -> None:
    """model_copy(update=...) refuses what the constructor refuses."""
    policy = Policy(budgets=[Budget(max_usd="1")])
    with pytest.raises(PolicyError, match="budgets"):
        policy.model_copy(update={"budgets": "garbage"})
    assert policy.model_copy(update={"name": "b"}).budgets == policy.budgets


def test_model_validate_raises_policy_error() -> None:
    """Building from a mapping or JSON stays inside the governor's errors."""
    with pytest.raises(PolicyError, match="max_usd"):
        Budget.model_validate({"max_usd": "-1"})
    with pytest.raises(PolicyError, match="max_usd"):
        Budget.model_validate_json('{"max_usd": "x"}')


@pytest.mark.parametrize(
    "build",
    [
        lambda: Budget(max_usd=Decimal("1e30")),
        lambda: Budget(max_tokens=2**60),
        lambda: Budget(max_tokens=True),
        lambda: Budget(max_usd=1, period="rolling", window_s=float("inf")),
        lambda: Budget(max_usd=1, period="rolling", window_s=1e300),
        lambda: Policy(hold_ttl_s=float("inf")),
        lambda: Policy(hold_ttl_s=1e12),
        lambda: Policy(max_call_s=float("inf")),
    ],
)
def test_limits_and_durations_beyond_what_can_be_kept_are_refused(
    build: Any,
) -> None:
    """Huge or infinite values fail when built, not after a paid call."""
    with pytest.raises(PolicyError, match=r"less than or equal|finite|not True"):
        build()


def test_a_price_keyword_typo_is_named() -> None:
    """The unknown keyword is reported, not a missing input price."""
    with pytest.raises(PolicyError, match="input_usd_per_mtoken") as caught:
        Price(input_usd_per_mtoken=1, output_usd_per_mtok=1)  # type: ignore[call-arg]
    assert "but not" not in str(caught.value)


def test_a_per_second_price_with_one_token_price_is_refused() -> None:
    """usd_per_second does not make a lone input price leave output free."""
    with pytest.raises(PolicyError, match="output_usd_per_mtok"):
        Price(usd_per_second=1, input_usd_per_mtok=5)
    assert Price(usd_per_second=1).output_usd_per_mtok == 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_usd": Decimal("1e-30")}, "less than a nano-dollar"),
        ({"max_usd": "1.0000000001"}, "past the ninth decimal place"),
        ({"period": "day", "timezone": "localtime"}, "depends on each host"),
        ({"period": "rolling", "window_s": 1e-9}, "greater than or equal to 1"),
    ],
)
def test_budgets_no_ledger_could_keep_as_written_are_refused(
    changes: dict[str, Any], message: str
) -> None:
    """A sub-nano limit, a host-local zone and a sub-second window fail."""
    settings: dict[str, Any] = {"scope": "team", "max_usd": "1", **changes}
    with pytest.raises(PolicyError, match=message):
        Budget(**settings)


def test_negative_zero_and_repeated_warnings_are_normalised() -> None:
    """'-0' is a zero budget and a repeated warn_at fraction warns once."""
    budget = Budget(scope="team", max_usd="-0", warn_at=(0.5, 0.5))
    assert (str(budget.max_usd), budget.warn_at) == ("0", (0.5,))


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (
            lambda: Budget(max_usd=1, period="day"),
            "invalid Budget: period: a task budget lasts the task; use "
            "period='total', or another scope (e.g. scope='team') for a budget "
            "that resets (got scope='task', period='day').",
        ),
        (
            lambda: Budget(max_usd=1, key="x"),
            "invalid Budget: key: a task budget applies to every task; drop key "
            "(got scope='task', key='x').",
        ),
        (
            lambda: Budget(scope="team"),
            "invalid Budget: max_usd, max_tokens: a Budget needs max_usd, "
            "max_tokens or both.",
        ),
        (
            lambda: Budget(scope="team", max_usd=1, period="rolling"),
            "invalid Budget: period, window_s: period='rolling' needs window_s, "
            "and only it takes one (got period='rolling', window_s=None).",
        ),
        (
            lambda: Price(input_usd_per_mtok=1),
            "invalid Price: output_usd_per_mtok: Price sets input_usd_per_mtok but "
            "not output_usd_per_mtok; set both input_usd_per_mtok and "
            "output_usd_per_mtok (0 makes those tokens free on purpose), or "
            "Price() for a free model (got input_usd_per_mtok=1).",
        ),
        (
            lambda: Policy(budgets=[Budget(max_usd=1), Budget(max_tokens=5)]),
            "invalid Policy: budgets: two budgets for scope 'task' key None period "
            "'total'; put max_usd and max_tokens on one Budget (budgets of other "
            "periods, e.g. a day and a month, may sit side by side).",
        ),
        (
            lambda: Policy(budgets=[{"max_usd": 1, "period": "day"}]),
            "invalid Policy: budgets.0: invalid Budget: period: a task budget",
        ),
        (
            lambda: Budget(scope="team", max_usd=1, warn_at=(1.5,)),
            "invalid Budget: warn_at: warn_at fractions must lie strictly between "
            "0 and 1 (got (1.5,)).",
        ),
    ],
)
def test_rules_across_fields_name_the_fields_not_the_model(
    build: Any, expected: str
) -> None:
    """A model-level rule names the fields to change and only their values."""
    with pytest.raises(PolicyError) as caught:
        build()
    message = str(caught.value)
    assert message.startswith(expected)
    assert "(model)" not in message
    assert "Value error" not in message


def test_cascade_rules_across_fields_name_the_fields() -> None:
    """Cascade and Retry rules name their fields too."""
    from governor.policies import Cascade
    from governor.policies._cascade import PreCall, Retry, Tier

    cases: list[tuple[Any, str]] = [
        (
            lambda: Retry(cooldown_s=500, max_cooldown_s=400),
            "invalid Retry: cooldown_s, max_cooldown_s: cooldown_s (500) exceeds "
            "max_cooldown_s (400); lower cooldown_s or raise max_cooldown_s.",
        ),
        (
            lambda: Cascade(tiers=["a", "a"]),
            "invalid Cascade: tiers: tier names must be unique, got ['a', 'a'].",
        ),
        (
            lambda: Cascade(
                tiers=[Tier(name="a", model="m"), Tier(name="b", model="m")]
            ),
            "invalid Cascade: tiers: tiers 'a' and 'b' send the same model 'm'",
        ),
        (
            lambda: Cascade(tiers=["a", "b"], precall=PreCall(thresholds=[0.2, 0.5])),
            "invalid Cascade: precall.thresholds, tiers: precall has 2 threshold(s) "
            "for 2 tier(s); it needs fewer thresholds than there are tiers.",
        ),
    ]
    for build, expected in cases:
        with pytest.raises(PolicyError) as caught:
            build()
        assert str(caught.value).startswith(expected)
        assert "(model)" not in str(caught.value)


def test_an_unknown_keyword_names_the_fields_the_part_takes() -> None:
    """A misspelt keyword lists what would have been accepted."""
    with pytest.raises(PolicyError) as info:
        Attribution(bogus="x")  # type: ignore[call-arg]
    assert str(info.value) == (
        "invalid Attribution: bogus: not a field of Attribution, which takes "
        "team, feature, environment, user, session, org, tags."
    )
