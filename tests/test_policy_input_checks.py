"""Policies refuse input that would silently lose a limit, and say so plainly.

Each test here comes from a user trial: a budget that a policy file, a key
or a price let slip, a command that crashed on a valid policy, or a message
that named the library's internals instead of what the user gave.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from governor import Governor
from governor._calls import CallRequest
from governor._errors import BudgetExceeded, ConfigError, PolicyError
from governor._money import nanos_to_usd
from governor._replay import load_policy
from governor.cascade._builtin import load_policy as load_cascade_policy
from governor.cli import main
from governor.policies import (
    Budget,
    Cache,
    Cascade,
    Fanout,
    Loops,
    Policy,
    Price,
    PriceTier,
    Pricing,
    packs,
)
from governor.policies._cascade import Tier
from governor.spend import JsonlSpendStore, SpendRecord

DATA = Path(__file__).parent / "data"
TOP_PRICE = "9007199.254740991"


# 1. A key given twice in a JSON policy file.


def test_json_policy_with_a_key_given_twice_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The second "budgets" would drop the first: refused, naming the key."""
    policy = tmp_path / "tight.json"
    policy.write_text(
        '{"budgets":[{"max_usd":"0.0001"}],"name":"tight","budgets":[]}',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="key 'budgets' appears twice"):
        load_policy(str(policy))
    assert main(["policy", "show", str(policy)]) == 2
    assert "'budgets' appears twice" in capsys.readouterr().err


def test_json_policy_names_where_a_nested_key_repeats(tmp_path: Path) -> None:
    """A repeat deep inside is found too, with its place in the file."""
    policy = tmp_path / "p.json"
    policy.write_text(
        '{"budgets": [{"max_usd": "1"}, {"scope": "team", "max_usd": "0.5", '
        '"max_usd": "500"}]}',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"'max_usd' appears twice in budgets\[1\]"):
        load_policy(str(policy))


def test_json_policy_numbers_keep_every_digit_written(tmp_path: Path) -> None:
    """An amount written as a JSON number is read as written: a float would
    move 8426164.243672113 by a nano-dollar and round away the 22nd place."""
    policy = tmp_path / "p.json"
    policy.write_text(
        '{"budgets": [{"scope": "team", "period": "month", '
        '"max_usd": 8426164.243672113, "warn_at": [0.8]}, {"max_usd": 1e-7}], '
        '"cache": {"similarity_threshold": 0.98}}',
        encoding="utf-8",
    )
    loaded = load_policy(str(policy))
    team, task = loaded.budgets
    assert (team.max_usd, team.warn_at, task.max_usd) == (
        Decimal("8426164.243672113"),
        (0.8,),
        Decimal("1E-7"),
    )
    assert loaded.cache is not None
    assert loaded.cache.similarity_threshold == 0.98

    policy.write_text('{"budgets": [{"max_usd": 0.1000000000000000000001}]}')
    with pytest.raises(ConfigError, match="digits past the ninth decimal place"):
        load_policy(str(policy))


def test_long_json_numbers_reach_a_tier_as_floats(tmp_path: Path) -> None:
    """Only money keeps every digit: a tier's params go to the provider as
    JSON, which has no Decimal (every call on the tier failed to encode)."""
    policy = tmp_path / "p.json"
    policy.write_text(
        '{"cascade": {"tiers": [{"name": "cheap", "model": "gpt-4o-mini", '
        '"params": {"temperature": 0.1000000000000000000001, '
        '"logit_bias": {"50256": -100.00000000000000000001}}}, '
        '{"name": "top", "model": "gpt-4o"}], "checks": [{"kind": "json", '
        '"json_schema": {"type": "number", "maximum": 1.00000000000000000001}}]}}',
        encoding="utf-8",
    )
    loaded = load_policy(str(policy))
    assert loaded.cascade is not None
    params = dict(loaded.cascade.tiers[0].params)
    assert (params["temperature"], dict(params["logit_bias"])) == (
        0.1,
        {"50256": -100.0},
    )
    assert type(params["temperature"]) is float
    check = loaded.cascade.checks[0]
    assert check.json_schema is not None
    assert check.json_schema["maximum"] == 1.0
    json.dumps(params)  # what the provider call does: no Decimal left


@pytest.mark.parametrize(
    ("written", "read"),
    [("1e2", "100"), ("1.5e2", "150"), ("100.0", "100.0"), ("1e-3", "0.001")],
)
def test_a_json_amount_reads_as_written(
    tmp_path: Path, written: str, read: str
) -> None:
    """An exponent is written out as the same amount given as text is."""
    policy = tmp_path / "p.json"
    policy.write_text(f'{{"budgets": [{{"max_usd": {written}}}]}}', encoding="utf-8")
    text = policy.with_name("t.json")
    text.write_text(f'{{"budgets": [{{"max_usd": "{written}"}}]}}', encoding="utf-8")
    loaded = load_policy(str(policy)).budgets[0].max_usd
    assert (str(loaded), loaded) == (read, load_policy(str(text)).budgets[0].max_usd)


@pytest.mark.parametrize(
    "exponent", ["1e1000000000000000000", "1e-9999999999999999999"]
)
def test_a_json_number_with_a_huge_exponent_is_a_config_error(
    tmp_path: Path, exponent: str
) -> None:
    """Past what a Decimal can read: an error saying so, not a crash."""
    policy = tmp_path / "p.json"
    policy.write_text(f'{{"hold_ttl_s": {exponent}}}', encoding="utf-8")
    with pytest.raises(ConfigError, match="exponent too large to read"):
        load_policy(str(policy))

    tiers = tmp_path / "c.json"
    tiers.write_text(
        '{"tiers": [{"name": "a", "model": "gpt-4o-mini"}], "checks": '
        f'[{{"kind": "json", "json_schema": {{"maximum": {exponent}}}}}]}}',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="exponent too large to read"):
        load_cascade_policy(str(tiers))


# 2. A budget key that no attribution value can equal.


@pytest.mark.parametrize("key", [" search", "search ", "search\t", "a\nb", "x\x7f"])
def test_budget_key_that_can_never_match_is_refused(key: str) -> None:
    """Spaces around it or a control character: the budget would never apply."""
    with pytest.raises(PolicyError, match="key") as caught:
        Budget(scope="team", key=key, max_usd="0")
    assert repr(key) in str(caught.value)
    assert "None for every value" in str(caught.value)


def test_budget_key_that_is_a_name_is_kept() -> None:
    """An ordinary name, inner spaces included, is a fine key."""
    assert Budget(scope="team", key="web search", max_usd="1").key == "web search"


# 3. Prices no ledger can count.


@pytest.mark.parametrize(
    "build",
    [
        lambda: Price(input_usd_per_mtok="1e400", output_usd_per_mtok="1e400"),
        lambda: Price(input_usd_per_mtok="1", output_usd_per_mtok="9007200"),
        lambda: Price(
            input_usd_per_mtok=1, output_usd_per_mtok=1, cache_read_usd_per_mtok="1e9"
        ),
        lambda: Price(usd_per_second="1e10"),
        lambda: PriceTier(
            above_input_tokens=1000, input_usd_per_mtok="1e12", output_usd_per_mtok=1
        ),
    ],
)
def test_price_above_what_a_ledger_counts_is_refused(build: object) -> None:
    """Each price is at most the largest budget, per million tokens or second."""
    with pytest.raises(PolicyError, match=r"less than or equal to 9007199\.254740991"):
        build()  # type: ignore[operator]


def test_price_at_the_bound_is_kept_and_refused_calls_report_cleanly() -> None:
    """The dearest price builds, and a call it cannot afford is refused cleanly."""
    price = Price(
        input_usd_per_mtok=TOP_PRICE,
        output_usd_per_mtok=TOP_PRICE,
        usd_per_second=TOP_PRICE,
    )
    gov = Governor(
        Policy(budgets=[Budget(max_usd="1")], pricing=Pricing(overrides={"m": price}))
    )
    request = CallRequest(
        model="m", messages=(), max_output_tokens=10**18, prompt_tokens=10**18
    )
    with gov.task("t"), pytest.raises(BudgetExceeded):
        gov.begin_call(request)


def test_nanos_to_usd_is_exact_for_huge_amounts() -> None:
    """More digits than Decimal's default 28: exact, and no InvalidOperation."""
    assert nanos_to_usd(10**40) == Decimal(10**31)
    assert str(nanos_to_usd(10**40)) == "1" + "0" * 31
    assert nanos_to_usd(10**40 + 1) == Decimal("1" + "0" * 31 + ".000000001")
    assert nanos_to_usd(-(10**45)) == -Decimal(10**36)


# 4. policy show prints every valid policy.


def test_policy_show_prints_callables_and_other_values_as_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A verifier function and an object in a tier's params do not crash it."""
    policy = tmp_path / "verif.py"
    policy.write_text(
        "from governor import Policy\n"
        "from governor.policies import Cache, Cascade\n"
        "from governor.policies._cascade import Tier\n"
        "def check(*args):\n"
        "    return True\n"
        "class Marker:\n"
        "    def __repr__(self):\n"
        "        return 'Marker()'\n"
        "POLICY = Policy(\n"
        "    cache=Cache(verifier=check),\n"
        "    cascade=Cascade(tiers=[Tier(name='a', model='m',\n"
        "                                params={'extra': Marker()})]),\n"
        ")\n",
        encoding="utf-8",
    )
    assert main(["policy", "show", str(policy)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["cache"]["verifier"] == "<callable verif.check>"
    assert shown["cascade"]["tiers"][0]["params"] == {"extra": "Marker()"}


def test_policy_show_prints_a_lambda_verifier(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The documented ``Cache(verifier=lambda ...)`` prints as a placeholder."""
    policy = tmp_path / "lam.py"
    policy.write_text(
        "from governor import Policy\n"
        "from governor.policies import Cache\n"
        "POLICY = Policy(cache=Cache(verifier=lambda *a: True))\n",
        encoding="utf-8",
    )
    assert main(["policy", "show", str(policy)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["cache"]["verifier"] == "<callable lam.<lambda>>"


# 5. Policy files: encodings, names, what a Python file defines.


def test_json_policy_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    """Windows editors write a UTF-8 BOM: it is read, not refused."""
    policy = tmp_path / "bom.json"
    policy.write_bytes(b'\xef\xbb\xbf{"name": "bom"}')
    assert load_policy(str(policy)).name == "bom"


@pytest.mark.parametrize("suffix", [".json", ".py"])
@pytest.mark.parametrize("encoding", ["utf-16", "latin-1"])
def test_policy_file_not_in_utf8_says_to_save_it_as_utf8(
    tmp_path: Path, suffix: str, encoding: str
) -> None:
    """A UTF-16 or Latin-1 file gets advice, not a raw codec error."""
    policy = tmp_path / f"p{suffix}"
    text = '{"name": "café"}' if suffix == ".json" else "POLICY = 'café'\n"
    policy.write_text(text, encoding=encoding)
    with pytest.raises(ConfigError, match="save the file as UTF-8"):
        load_policy(str(policy))


def test_python_policy_declaring_its_encoding_still_loads(tmp_path: Path) -> None:
    """A .py file with a coding line is Python's to read, and is read."""
    policy = tmp_path / "declared.py"
    policy.write_bytes(
        b"# -*- coding: latin-1 -*-\n"
        b"from governor import Policy\n"
        b"POLICY = Policy(name='caf\xe9')\n"
    )
    assert load_policy(str(policy)).name == "café"
    failing = tmp_path / "failing.py"
    failing.write_bytes(b"# -*- coding: latin-1 -*-\nraise RuntimeError('caf\xe9')\n")
    with pytest.raises(ConfigError, match="RuntimeError") as caught:
        load_policy(str(failing))
    assert "UTF-8" not in str(caught.value)


@pytest.mark.parametrize("name", ["policy.yaml", "ok.json.gz", "policy.txt"])
def test_policy_file_must_be_json_or_python(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """Another suffix is not imported as Python: the message says what works."""
    policy = tmp_path / name
    policy.write_text("{}", encoding="utf-8")
    assert main(["policy", "show", str(policy)]) == 2
    err = capsys.readouterr().err
    assert "must be a .json file" in err
    assert ".py file" in err
    assert "imported as Python" not in err


def test_python_policy_that_is_a_dict_says_so(tmp_path: Path) -> None:
    """``POLICY = {...}`` is defined, but a dict: not 'defines no Policy'."""
    policy = tmp_path / "d.py"
    policy.write_text("POLICY = {'name': 'x'}\nNOTPOL = 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="POLICY is defined but is a dict") as caught:
        load_policy(str(policy))
    assert "defines no Policy" not in str(caught.value)
    with pytest.raises(ConfigError, match="NOTPOL is defined but is an int"):
        load_policy(f"{policy}:NOTPOL")
    with pytest.raises(ConfigError, match="defines no Policy named MISSING"):
        load_policy(f"{policy}:MISSING")


# 6. compare against a policy that costs nothing.


def _records() -> list[SpendRecord]:
    start = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    return [
        SpendRecord(
            ts=start + timedelta(seconds=i),
            task_id=f"task-{i}",
            call_id=f"call-{i}",
            model="gpt-4o",
            input_tokens=1000,
            output_tokens=200,
            cost_usd=Decimal("0.0045"),
        )
        for i in range(2)
    ]


def test_compare_from_a_free_policy_has_no_percentage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A costs $0, B costs money: the change is n/a (JSON null), not +0.0%."""
    trace = tmp_path / "trace.jsonl"
    JsonlSpendStore(trace).record_many(_records())
    zero = tmp_path / "zero.json"
    zero.write_text('{"pricing": {"overrides": {"gpt-4o": {}}}}', encoding="utf-8")
    base = ["compare", "--db", str(trace), "--a", str(zero), "--b", "default"]
    assert main([*base, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cost_per_task_change_pct"] is None
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "(n/a" in out
    assert "+0.0%" not in out
    # Both free: no change at all.
    same = ["compare", "--db", str(trace), "--a", str(zero), "--b", str(zero)]
    assert main([*same, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cost_per_task_change_pct"] == 0.0


# 7. Messages name what the user gave.


@pytest.mark.parametrize(
    ("build", "argument"),
    [
        (lambda: packs.production(team_inflight_calls=0), "team_inflight_calls=0"),
        (lambda: packs.starter(task_usd="$5"), "task_usd='$5'"),
        (lambda: packs.production(timezone="Mars/Base"), "timezone='Mars/Base'"),
        (lambda: packs.batch(feature=" batch"), "feature=' batch'"),
        (lambda: packs.batch(inflight_calls=0), "inflight_calls=0"),
        (lambda: packs.customer_facing(session_usd="-1"), "session_usd='-1'"),
        (lambda: packs.cost_saver(cheap_model=""), "cheap_model=''"),
    ],
)
def test_pack_errors_name_the_pack_argument(build: object, argument: str) -> None:
    """The message leads with the pack and the argument the caller passed."""
    with pytest.raises(PolicyError) as caught:
        build()  # type: ignore[operator]
    message = str(caught.value)
    assert message.startswith("packs.")
    assert argument in message
    for internal in ("invalid Fanout", "invalid Budget", "scope_caps", "max_usd"):
        assert internal not in message


@pytest.mark.parametrize(
    "args",
    [["--threshold", "1.5"], ["--threshold", "0"], ["--sweep", "0.9,nan"]],
)
def test_eval_cache_names_the_threshold_option(
    capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    """A threshold outside (0, 1] exits 2 naming the option, not Cache."""
    pairs = str(DATA / "qqp_sample.jsonl")
    assert main(["eval", "cache", pairs, "--embedder", "hashing", *args]) == 2
    err = capsys.readouterr().err
    assert args[0] in err
    assert "invalid Cache" not in err
    assert "similarity_threshold" not in err


def test_pricing_json_advice_matches_the_text_advice(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Both forms advise a JSON --policy file; neither advises Python."""
    assert main(["pricing", "no-such-model-xyz", "--json"]) == 1
    message = json.loads(capsys.readouterr().out)["error"]["message"]
    assert "given with --policy" in message
    assert "Policy(pricing=" not in message
    assert main(["pricing", "no-such-model-xyz"]) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("model", ["", "  "])
def test_pricing_refuses_an_empty_model_name(
    capsys: pytest.CaptureFixture[str], model: str
) -> None:
    """No advice to price the model '': the name is refused, exit 2."""
    assert main(["pricing", model]) == 2
    err = capsys.readouterr().err
    assert "give a model name" in err
    assert "no price is known" not in err


@pytest.mark.parametrize(
    ("given", "meant"), [("utc", "UTC"), ("europe/paris", "Europe/Paris")]
)
def test_time_zone_in_the_wrong_case_names_the_zone_meant(
    given: str, meant: str
) -> None:
    """Zone names are case-sensitive: the message names the right spelling."""
    with pytest.raises(PolicyError, match=f"did you mean {meant!r}"):
        Budget(scope="team", max_usd=1, period="day", timezone=given)


# 8. Booleans are not counts.


@pytest.mark.parametrize(
    "build",
    [
        lambda: Fanout(max_inflight_calls=True),
        lambda: Fanout(max_branches=True),
        lambda: Fanout(scope_caps={"team": True}),
        lambda: Policy(default_max_output_tokens=True),
        lambda: Budget(max_tokens=True),
        lambda: Loops(max_model_calls=True),
        lambda: Loops(min_output_words=False),
        lambda: Cache(max_entries=True),
        lambda: Price(max_output_tokens=True),
        lambda: Tier(name="a", model="m", context_window_tokens=True),
        lambda: Policy(max_call_s=True),
        lambda: Policy(hold_ttl_s=True),
        lambda: Fanout(wait_timeout_s=False),
        lambda: Cache(similarity_threshold=True),
    ],
)
def test_booleans_are_refused_for_every_count(build: object) -> None:
    """True would be read as 1 (False as 0): refused, as Budget.max_tokens is."""
    with pytest.raises(PolicyError, match="takes a number, not True or False"):
        build()  # type: ignore[operator]


def test_counts_given_as_numbers_still_build() -> None:
    """The check is on booleans only: ordinary counts are untouched."""
    fanout = Fanout(max_inflight_calls=3, scope_caps={"team": 2})
    assert (fanout.max_inflight_calls, dict(fanout.scope_caps)) == (3, {"team": 2})
    assert Cascade(tiers=[Tier(name="a", model="m")]).tiers[0].name == "a"


def test_a_policy_part_given_positional_values_says_to_name_them() -> None:
    """Budget("1") named pydantic's internals; it now names the fields."""
    with pytest.raises(
        TypeError, match=r"Budget takes keyword arguments only.*max_usd="
    ):
        Budget("1")  # type: ignore[misc]
