"""``governor eval cascade`` prices a tier by its ``params``, as live calls are."""

from __future__ import annotations

import csv
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from governor import Governor
from governor.cascade import Cascade, Tier
from governor.cascade._builtin import price_table
from governor.cascade._datasets import estimate_tokens, read_rows
from governor.cascade._prices import tier_rates
from governor.cli import main
from governor.policies import Policy, Price, Pricing

MIXTRAL = "mistralai/Mixtral-8x7B-Instruct-v0.1"  # RouteLLM's name, price-mapped
GPT4 = "gpt-4-1106-preview"
OWN = "acme/self-hosted-7b"  # in no price map
ANSWERS = {0: "Five plus zero.\n#### 5", 1: "It is six.\n#### 6", 2: "#### 7"}
PARAMS = {"input_cost_per_token": 0.001, "output_cost_per_token": 0.002}


def _routellm(path: Path, models: list[str]) -> Path:
    """A RouteLLM CSV (prompt, M, M_response): every model right on each row."""
    header = ["prompt", *models, *(m + "_response" for m in models)]
    body = [
        [f"What is 5 + {i}?", *("True" for _ in models), *(text for _ in models)]
        for i, text in ANSWERS.items()
    ]
    with path.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows([header, *body])
    return path


def _expected(input_usd: str, output_usd: str) -> Decimal:
    """Every row's first-tier call at these per-token prices, from the rows'
    estimated tokens (4 UTF-8 bytes a token)."""
    return sum(
        (
            estimate_tokens(f"What is 5 + {i}?") * Decimal(input_usd)
            + estimate_tokens(text) * Decimal(output_usd)
            for i, text in ANSWERS.items()
        ),
        Decimal(0),
    )


def _policy(path: Path, tiers: list[Any], **extra: Any) -> Path:
    body = {"name": "p", "tiers": tiers, "checks": [{"kind": "non_empty"}], **extra}
    path.write_text(json.dumps(body), encoding="utf-8")
    return path


def _eval(
    capsys: pytest.CaptureFixture[str], data: Path, policy: Path
) -> tuple[int, dict[str, Any], str]:
    """Run the command with --json: its exit code, its document (the report,
    or the error) and stderr."""
    args = ["--policy", str(policy), "--fit-fraction", "0", "--json"]
    code = main(["eval", "cascade", str(data), *args])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def test_params_prices_win_over_the_list_price(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A price-mapped model whose tier sets prices is charged those prices:
    tokens times the params rates, not the list price."""
    data = _routellm(tmp_path / "r.csv", [MIXTRAL, GPT4])
    tier = {"name": "cheap", "model": MIXTRAL, "params": PARAMS}
    code, doc, err = _eval(capsys, data, _policy(tmp_path / "p.json", [tier, GPT4]))
    assert (code, err) == (0, "")
    expected = _expected("0.001", "0.002")
    assert expected == Decimal("0.038")  # 12 tokens in, 13 out, over 3 rows
    assert Decimal(doc["cost_usd"]) == expected
    assert Decimal(doc["baselines"]["always-cheapest"]["cost_usd"]) == expected


def test_a_model_priced_only_by_params_is_accepted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model no price map knows, priced by its tier's params, is replayed and
    charged at them, as Governor(policy) accepts it live."""
    data = _routellm(tmp_path / "r.csv", [OWN, GPT4])
    prices = {"input_cost_per_token": 1e-7, "output_cost_per_token": 2e-7}
    Governor(
        Policy(
            cascade=Cascade(tiers=[Tier(name="own", model=OWN, params=prices), GPT4])
        )
    )
    tier = {"name": "own", "model": OWN, "params": prices}
    code, doc, err = _eval(capsys, data, _policy(tmp_path / "p.json", [tier, GPT4]))
    assert (code, err) == (0, "")
    assert Decimal(doc["cost_usd"]) == _expected("1e-7", "2e-7")
    assert doc["accuracy"] == 1.0


def test_eval_prices_a_tier_as_live_does(tmp_path: Path) -> None:
    """Per model, eval's price is the rate live charges the tier: params over
    the map, a policy override above both."""
    override = Pricing(
        overrides={"gpt-4o": Price(input_usd_per_mtok=1, output_usd_per_mtok=0)}
    )
    cascade = Cascade(
        tiers=[
            Tier(name="own", model=OWN, params=PARAMS),
            Tier(name="mini", model="gpt-4o-mini", params=PARAMS),
            Tier(name="big", model="gpt-4o", params={"input_cost_per_token": 9}),
        ]
    )
    live = dict(tier_rates(Governor(Policy(pricing=override)).rate_card, cascade))
    prices = price_table("routellm-gsm8k", override, cascade.tiers)
    for tier in cascade.tiers:
        rate = live[tier.name]
        assert prices.price(tier.model) == (rate.input_per_token, rate.output_per_token)
    assert prices.price("gpt-4o-mini") == (Decimal("0.001"), Decimal("0.002"))
    assert prices.price("gpt-4o") == (Decimal("0.000001"), Decimal(0))


def test_tiers_of_one_model_must_agree_on_their_params_prices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The data records one answer per model, so one price: two tiers of one
    model priced differently are refused, naming both."""
    data = _routellm(tmp_path / "r.csv", [MIXTRAL, GPT4])
    tiers = [
        {"name": "cold", "model": MIXTRAL, "params": PARAMS},
        {"name": "warm", "model": MIXTRAL, "params": {"temperature": 1}},
        GPT4,
    ]
    code, doc, _ = _eval(capsys, data, _policy(tmp_path / "p.json", tiers))
    assert code == 2
    message = doc["error"]["message"]
    assert f"tiers 'cold' and 'warm' both use {MIXTRAL!r}" in message
    assert (
        "(input_cost_per_token=0.001, output_cost_per_token=0.002 and none)" in message
    )


def test_one_price_written_two_ways_is_one_price(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """0.001, "0.001" and 1e-3 are the same price: no refusal."""
    data = _routellm(tmp_path / "r.csv", [MIXTRAL, GPT4])
    written = {"input_cost_per_token": "0.001", "output_cost_per_token": 2e-3}
    tiers = [
        {"name": "cold", "model": MIXTRAL, "params": PARAMS},
        {"name": "warm", "model": MIXTRAL, "params": written},
        GPT4,
    ]
    code, both, _ = _eval(capsys, data, _policy(tmp_path / "p.json", tiers))
    alone = [tiers[0], GPT4]
    _, one, _ = _eval(capsys, data, _policy(tmp_path / "q.json", alone))
    assert code == 0
    assert both["cost_usd"] == one["cost_usd"]


def test_recorded_costs_are_charged_as_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """JSONL rows record what each call cost and no tokens: params prices do
    not change them (docs/benchmarks.md says so)."""
    row = {
        "id": "q1",
        "prompt": "Say hi.",
        "outcomes": {
            "small": {"score": 1, "response": "hi", "cost_usd": "0.003"},
            "large": {"score": 1, "response": "hi", "cost_usd": "0.030"},
        },
    }
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps(row) + "\n", encoding="utf-8")
    tier = {"name": "small", "model": "small", "params": PARAMS}
    code, doc, _ = _eval(capsys, data, _policy(tmp_path / "p.json", [tier, "large"]))
    assert code == 0
    assert doc["cost_usd"] == "0.003"


def test_rows_read_without_tiers_keep_the_list_price(tmp_path: Path) -> None:
    """price_table without tiers prices as before: the map's list price."""
    data = _routellm(tmp_path / "r.csv", [MIXTRAL, GPT4])
    plain = read_rows(data, price_table).rows[0].outcomes[MIXTRAL].cost_usd
    cascade = Cascade(tiers=[Tier(name="cheap", model=MIXTRAL, params=PARAMS), GPT4])
    priced = read_rows(
        data, lambda layout: price_table(layout, None, cascade.tiers)
    ).rows[0]
    tokens = (estimate_tokens(priced.prompt), estimate_tokens(ANSWERS[0]))
    assert priced.outcomes[MIXTRAL].cost_usd == tokens[0] * Decimal("0.001") + tokens[
        1
    ] * Decimal("0.002")
    assert plain < priced.outcomes[MIXTRAL].cost_usd / 100
