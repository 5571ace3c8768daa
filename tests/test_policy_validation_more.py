"""Settings accepted at construction that misbehaved later are refused there.

Each test comes from a user trial: a value a policy part took without a word
and then ignored, broke at call time, or turned into something else (a lease
that lapsed under a running call, a Redis count no script could take, a team
name with an invisible character that no budget keyed on the name applies to).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from governor import Governor, attribute
from governor._errors import PolicyError
from governor.cache import CacheHit, CacheMiss, ResponseCache
from governor.cli._policy import as_json
from governor.policies import (
    Attribution,
    Budget,
    Cache,
    Loops,
    Policy,
    Price,
    PriceTier,
    Pricing,
    packs,
)
from governor.policies._cascade import Retry, Tier

pytest_plugins = ["_redis_fixtures"]

ZERO = Decimal(0)


# 1. A lease shorter than a renewal round trip.


@pytest.mark.parametrize("ttl_s", [0.001, 0.3, 0.999])
def test_hold_ttl_under_a_second_is_refused(ttl_s: float) -> None:
    with pytest.raises(PolicyError) as caught:
        Policy(hold_ttl_s=ttl_s)
    assert str(caught.value).startswith(
        "invalid Policy: hold_ttl_s: Input should be greater than or equal to 1 "
        f"(got {ttl_s!r}). Accepted: seconds, from 1 up to a week,"
    )
    assert "a shorter lease would lapse between renewals" in str(caught.value)


def test_hold_ttl_of_one_second_is_kept() -> None:
    assert Policy(hold_ttl_s=1).hold_ttl_s == 1.0


def test_default_max_output_tokens_is_bounded_like_every_count() -> None:
    """10**30 was taken, and a refusal then named it as the output held."""
    with pytest.raises(PolicyError) as caught:
        Policy(default_max_output_tokens=10**30)
    assert "default_max_output_tokens: Input should be less than or equal to " in (
        str(caught.value)
    )
    assert Policy(default_max_output_tokens=2**53 - 1).default_max_output_tokens == (
        2**53 - 1
    )


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("attempts", 10**9, "RedisConfig.attempts is at most 100, such as 3"),
        ("max_connections", 10**9, "RedisConfig.max_connections is at most 100,000"),
        ("attempts", 0, "RedisConfig.attempts must be a whole number of at least 1"),
    ],
)
def test_redis_counts_are_bounded(name: str, value: int, message: str) -> None:
    """A billion attempts would retry for years, each wait up to a second."""
    from governor import ConfigError
    from governor.stores import RedisConfig

    with pytest.raises(ConfigError) as caught:
        RedisConfig(**{name: value})
    assert str(caught.value).startswith(message)
    assert RedisConfig(attempts=100, max_connections=100_000).attempts == 100


# 2. A cache count Redis cannot take.


def test_cache_max_entries_past_the_bound_is_refused() -> None:
    with pytest.raises(
        PolicyError,
        match=r"^invalid Cache: max_entries: Input should be less than or equal "
        r"to 100000000 \(got 9223372036854775808\)\. Accepted: a positive number "
        r"of entries, up to 100 million,",
    ):
        Cache(store="redis", max_entries=2**63)


@pytest.mark.redis
def test_cache_max_entries_at_the_bound_stores_in_redis(
    redis_url: str, redis_prefix: str
) -> None:
    """The largest accepted count is one the store's script takes."""
    import redis

    client = redis.Redis.from_url(redis_url)
    settings = Cache(
        store="redis",
        max_entries=100_000_000,
        semantic=False,
        key_prefix=f"{redis_prefix}cache",
    )
    cache = ResponseCache(settings, redis_client=client)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    miss = cache.lookup(model="gpt-4o-mini", messages=messages)
    assert isinstance(miss, CacheMiss)
    answer = {"role": "assistant", "content": "Paris."}
    stored = cache.store(miss, message=answer, model="gpt-4o-mini", cost_usd=ZERO)
    hit = cache.lookup(model="gpt-4o-mini", messages=messages)
    client.close()
    assert (stored.stored, stored.reason) == (True, None)
    assert isinstance(hit, CacheHit)
    assert hit.message == answer


# 3. Values that could never work, refused rather than ignored.


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"exact": False, "semantic": False},
            "invalid Cache: exact, semantic: with both layers off the cache can "
            "never serve an answer, yet every call would still be keyed and "
            "stored: turn one layer on, or set Policy(cache=None) for no cache "
            "(got exact=False, semantic=False).",
        ),
        (
            {"verifier": ""},
            "invalid Cache: verifier: a blank verifier names no model: give a "
            "cheap model's name, e.g. 'gpt-4o-mini', a callable, or None for no "
            "verifier (got '').",
        ),
        (
            {"partition_by": ("team", "team")},
            "invalid Cache: partition_by: partition scopes ['team'] are named "
            "more than once; name each scope once, e.g. ('org', 'team') (got "
            "('team', 'team')).",
        ),
        (
            {"key_prefix": " "},
            "invalid Cache: key_prefix: a blank key prefix would put the cache's "
            "keys among any other keys on the server: give a name such as "
            "'governor:cache' (got ' ').",
        ),
    ],
)
def test_cache_settings_that_cannot_work_are_refused(
    settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(PolicyError) as caught:
        Cache(**settings)
    assert str(caught.value).startswith(message)


def test_one_cache_layer_alone_is_kept() -> None:
    assert (Cache(exact=False).semantic, Cache(semantic=False).exact) == (True, True)


@pytest.mark.parametrize("flag", ["yes", "false", 1, 0])
def test_remote_price_map_takes_a_real_bool_only(flag: object) -> None:
    with pytest.raises(
        PolicyError,
        match=r"^invalid Pricing: remote_price_map: remote_price_map takes True "
        r"or False only, not text or a number read as a flag: True fetches "
        r"LiteLLM's price map over the network",
    ):
        Pricing(remote_price_map=flag)


def test_remote_price_map_from_json_true_is_kept() -> None:
    pricing = Pricing.model_validate_json('{"remote_price_map": true}')
    assert pricing.remote_price_map is True


@pytest.mark.parametrize("model", ["", "  ", " gpt-4o"])
def test_price_override_for_no_model_name_is_refused(model: str) -> None:
    with pytest.raises(
        PolicyError,
        match=rf"^invalid Pricing: overrides: override key {model!r} can never "
        r"match a model a call names: key each Price by the model name as it "
        r"is called",
    ):
        Pricing(overrides={model: Price()})


def tier(above: int, output: str) -> PriceTier:
    return PriceTier(
        above_input_tokens=above, input_usd_per_mtok="1", output_usd_per_mtok=output
    )


def test_price_tiers_for_one_length_are_refused() -> None:
    with pytest.raises(
        PolicyError,
        match=r"^invalid Price: tiers: two tiers start above 200000 input tokens; "
        r"which one bills would depend on their order: keep one PriceTier per "
        r"above_input_tokens",
    ):
        Price(
            input_usd_per_mtok="1",
            output_usd_per_mtok="2",
            tiers=[tier(200_000, "3"), tier(200_000, "4")],
        )
    kept = Price(
        input_usd_per_mtok="1",
        output_usd_per_mtok="2",
        tiers=[tier(128_000, "3"), tier(200_000, "4")],
    )
    assert [t.above_input_tokens for t in kept.tiers] == [128_000, 200_000]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "",
            "invalid Policy: name: a policy name labels its spans and reports: "
            "give a non-empty name, e.g. 'search-agent' (got '').",
        ),
        (
            "a\nb",
            "invalid Policy: name: a policy name must not hold control or "
            "invisible characters (here U+000A): it labels spans and report "
            "lines, which such a character would break or disguise; remove it "
            "(got 'a\\nb').",
        ),
        (
            "prod\u200b",
            "invalid Policy: name: a policy name must not hold control or "
            "invisible characters (here U+200B ZERO WIDTH SPACE): it labels "
            "spans and report lines, which such a character would break or "
            "disguise; remove it (got 'prod\\u200b').",
        ),
    ],
)
def test_policy_name_must_be_a_printable_label(name: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        Policy(name=name)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize("tool", ["", " ", "wait_for_job "])
def test_exempt_tool_that_names_no_tool_is_refused(tool: str) -> None:
    with pytest.raises(
        PolicyError,
        match=rf"^invalid Loops: exempt_tools: exempt tool {tool!r} can never "
        r"match a tool or node name",
    ):
        Loops(exempt_tools=[tool])


def test_backoff_initial_above_its_ceiling_is_refused() -> None:
    with pytest.raises(PolicyError) as caught:
        Retry(backoff_initial_s=100, backoff_max_s=1)
    assert str(caught.value) == (
        "invalid Retry: backoff_initial_s, backoff_max_s: backoff_initial_s (100) "
        "exceeds backoff_max_s (1), which caps every wait, the first too; lower "
        "backoff_initial_s or raise backoff_max_s."
    )


def test_long_backoff_without_a_ceiling_is_its_own_ceiling() -> None:
    """As cooldown_s above 300 s is its own cap when max_cooldown_s is unset."""
    retry = Retry(backoff_initial_s=10)
    assert (retry.backoff_initial_s, retry.backoff_max_s) == (10.0, 10.0)


def test_tier_params_naming_a_model_are_refused() -> None:
    with pytest.raises(PolicyError) as caught:
        Tier(name="cheap", model="gpt-4o-mini", params={"model": "gpt-4o"})
    assert str(caught.value).startswith(
        "invalid Tier: params: params sets model 'gpt-4o', which a tier never "
        "sends: it calls its own model. Set Tier(model=...) instead, and remove "
        "model from params (got {'model': 'gpt-4o'})."
    )


@pytest.mark.parametrize(
    ("params", "rule"),
    [
        ({"max_tokens": -1}, "max_tokens must be a whole number of at least 1"),
        ({"max_tokens": 0}, "max_tokens must be a whole number of at least 1"),
        ({"max_tokens": 1.5}, "max_tokens must be a whole number of at least 1"),
        ({"max_tokens": True}, "max_tokens must be a whole number of at least 1"),
        (
            {"max_completion_tokens": 0},
            "max_completion_tokens must be a whole number of at least 1",
        ),
        ({"n": 0}, "n must be a whole number of at least 1"),
        (
            {"temperature": float("nan")},
            "temperature must be a finite number of 0 or more",
        ),
        ({"temperature": -0.5}, "temperature must be a finite number of 0 or more"),
        ({"temperature": "0.2"}, "temperature must be a finite number of 0 or more"),
        ({"top_p": float("inf")}, "top_p must be a number from 0 to 1"),
        ({"top_p": 1.5}, "top_p must be a number from 0 to 1"),
    ],
)
def test_tier_params_with_impossible_numbers_are_refused(
    params: dict[str, Any], rule: str
) -> None:
    ((name, value),) = params.items()
    with pytest.raises(PolicyError) as caught:
        Tier(name="cheap", model="gpt-4o-mini", params=params)
    assert str(caught.value).startswith(
        f"invalid Tier: params: params[{name!r}] is {value!r}: {rule}"
    )


def test_tier_params_with_usable_numbers_are_kept() -> None:
    params = {"max_tokens": 512, "temperature": 0, "top_p": 1, "n": 3, "seed": None}
    assert dict(Tier(name="t", model="m", params=params).params) == params


def test_cost_saver_with_one_model_twice_names_the_argument() -> None:
    with pytest.raises(PolicyError) as caught:
        packs.cost_saver(cheap_model="gpt-4o", premium_model="gpt-4o")
    assert str(caught.value) == (
        "packs.cost_saver(): premium_model='gpt-4o' is not valid: it is "
        "cheap_model too, so the premium tier would repeat the cheap tier's "
        "answer at the same price and fail the same way; premium_model takes a "
        "model dearer than cheap_model (by default 'gpt-4o' over 'gpt-4o-mini')"
    )


def test_cost_saver_in_the_wrong_price_order_is_warned_of_by_the_governor(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The pack cannot know the policy's own prices; the governor can, and warns."""
    policy = packs.cost_saver(cheap_model="gpt-4o", premium_model="gpt-4o-mini")
    assert policy.cascade is not None
    assert [t.model for t in policy.cascade.tiers] == ["gpt-4o", "gpt-4o-mini"]
    with caplog.at_level(logging.WARNING, logger="governor._engine"):
        Governor(policy).close()
    assert [r.getMessage()[:80] for r in caplog.records] == [
        "cascade tier 'cheap' costs more per token than the tier after it, "
        "'premium': a c"
    ]


# 4. Names with invisible characters: a second tenant that looks like the first.

INVISIBLE = [
    ("\ufeffsearch", "U+FEFF ZERO WIDTH NO-BREAK SPACE"),
    ("search\u200b", "U+200B ZERO WIDTH SPACE"),
    ("se\u00adarch", "U+00AD SOFT HYPHEN"),
    ("sea\u200drch", "U+200D ZERO WIDTH JOINER"),
    ("search\u2060", "U+2060 WORD JOINER"),
    ("search\u202e", "U+202E RIGHT-TO-LEFT OVERRIDE"),
    ("se\u2028arch", "U+2028 LINE SEPARATOR"),
    ("search\u3164", "U+3164 HANGUL FILLER"),
    ("se\x85arch", "U+0085"),
]
PROBLEM = (
    "must not hold invisible characters (here {}): it would look like the name "
    "without it, yet count as a different one; remove it"
)


def open_task(name: str) -> None:
    gov = Governor()
    try:
        with gov.task(session=name):
            pass
    finally:
        gov.close()


BUILDERS: dict[str, Callable[[str], object]] = {
    "team": lambda name: Attribution(team=name),
    "attribute": lambda name: attribute(user=name),
    "task": open_task,
    "metadata": lambda name: Attribution.values_in({"feature": name}),
    "budget key": lambda name: Budget(scope="team", key=name, max_usd=1, period="day"),
    "tag name": lambda name: Attribution(tags={name: "x"}),
    "tag value": lambda name: Attribution(tags={"source": name}),
}


@pytest.mark.parametrize(("name", "code_point"), INVISIBLE)
@pytest.mark.parametrize("where", list(BUILDERS))
def test_names_with_invisible_characters_are_refused(
    where: str, name: str, code_point: str
) -> None:
    with pytest.raises(PolicyError) as caught:
        BUILDERS[where](name)
    assert PROBLEM.format(code_point) in str(caught.value)


def test_budget_key_with_an_invisible_character_suggests_the_name() -> None:
    with pytest.raises(PolicyError, match=r"\(e\.g\. 'search'\), or None"):
        Budget(scope="team", key="\ufeffsearch", max_usd=1)


@pytest.mark.parametrize(
    "name",
    [
        "search team",
        "recherche-équipe",
        "検索",
        "naïve",
        "\U0001f469\u200d\U0001f4bb devs",  # woman technologist: a joined emoji
        "\U0001f3f3\ufe0f\u200d\U0001f308 pride",
        "team \U0001f468\u200d\U0001f469\u200d\U0001f467",
        "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f sales",
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian: a non-joiner
        "\u0915\u094d\u200d\u0937",  # Devanagari with a joiner
        "\u0600\u0661\u0662",  # the Arabic number sign prints
    ],
)
def test_visible_names_are_kept(name: str) -> None:
    """Joiners inside an emoji or a word of a script that spells with them,
    a flag's tag characters and the Arabic number sign are part of what the
    name shows."""
    assert Attribution(team=name, tags={"t": name}).team == name
    assert Budget(scope="team", key=name, max_usd=1).key == name
    assert Policy(name=name).name == name


@pytest.mark.parametrize(
    ("name", "code_point"),
    [
        ("\u200d\U0001f4bb devs", "U+200D ZERO WIDTH JOINER"),  # at the start
        ("devs \u200c", "U+200C ZERO WIDTH NON-JOINER"),  # after a space
        ("search\U000e0067", "U+E0067 TAG LATIN SMALL LETTER G"),  # no flag
    ],
)
def test_joiners_and_tags_outside_what_they_join_are_refused(
    name: str, code_point: str
) -> None:
    with pytest.raises(PolicyError) as caught:
        Attribution(team=name)
    assert PROBLEM.format(code_point) in str(caught.value)


# 5. Budget settings the budget never reads.


def test_warn_at_on_a_task_budget_is_refused() -> None:
    with pytest.raises(PolicyError) as caught:
        Budget(max_usd=1, warn_at=(0.5,))
    assert str(caught.value) == (
        "invalid Budget: warn_at: warn_at applies to shared budgets (scope "
        "'team', 'user', ...): a task budget never warns, whatever its "
        "fractions; drop warn_at, or set it on a budget of another scope (got "
        "scope='task', warn_at=(0.5,))."
    )


@pytest.mark.parametrize("warn_at", [(), (0.8, 0.95), (0.95, 0.8)])
def test_task_budget_keeps_the_default_or_no_warn_at(
    warn_at: tuple[float, ...],
) -> None:
    """The default (as `policy show` prints it) and () say nothing wrong."""
    assert Budget(max_usd=1, warn_at=warn_at).warn_at == tuple(sorted(warn_at))


@pytest.mark.parametrize(("period", "window_s"), [("total", None), ("rolling", 3600.0)])
def test_timezone_without_a_calendar_period_is_refused(
    period: str, window_s: float | None
) -> None:
    with pytest.raises(PolicyError) as caught:
        Budget(
            scope="team",
            max_usd=1,
            period=period,
            window_s=window_s,
            timezone="Europe/Paris",
        )
    assert str(caught.value) == (
        "invalid Budget: timezone: timezone applies to the calendar periods "
        f"(hour, day, week, month) only: a {period!r} budget never reads it; "
        "drop timezone, or use a calendar period such as period='day' (got "
        f"period={period!r}, timezone='Europe/Paris')."
    )


def test_timezone_of_a_calendar_period_is_kept() -> None:
    budget = Budget(scope="team", max_usd=1, period="day", timezone="Europe/Paris")
    assert budget.timezone == "Europe/Paris"


@pytest.mark.parametrize("name", sorted(packs.PACKS))
def test_every_pack_printed_as_json_loads_again(name: str) -> None:
    """What `governor policy show` prints (defaults included) is not refused."""
    policy = packs.by_name(name)
    assert Policy.model_validate(as_json(policy)) == policy
