"""Credentials in a tier's params never print; counts and settings still do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from governor import Cascade, Policy, PolicyError
from governor.cascade import Tier
from governor.cli import main
from governor.cli._policy import as_json
from governor.policies._base import mask_credentials, masked, secret_name, thawed


@pytest.mark.parametrize(
    "name",
    [
        "azure_ad_token",
        "api_token",
        "hf_token",
        "github_token",
        "HF_TOKEN",
        "azureAdToken",
        "X-Amz-Security-Token",
        "jwt",
        "ssh_key",
        "encryption_key",
        "X-Amz-Signature",
    ],
)
def test_credential_names_are_secret(name: str) -> None:
    assert secret_name(name)


@pytest.mark.parametrize(
    "name",
    [
        *("max_tokens", "max_completion_tokens", "tokens", "max_output_tokens"),
        *("token_budget", "token_type", "eos_token", "page_token", "nextPageToken"),
        *("key", "keys", "key_prefix", "keywords", "monkey", "cache_key"),
        *("prompt_cache_key", "sortKey", "idempotency_key", "top_k"),
    ],
)
def test_counts_and_lookup_keys_stay_readable_beside_a_masked_token(
    name: str,
) -> None:
    """Masking these would hide what a policy does (or a budget's key)."""
    assert not secret_name(name)
    assert masked({name: 64, "hf_token": "SEKRET"}) == {name: 64, "hf_token": "***"}


def test_the_tier_error_masks_credentials_and_shows_the_bad_count() -> None:
    params = {
        "azure_ad_token": "eyJSEKRET",
        "api_base": "https://h.example/v1?key=SEKRETQ&alt=json",
        "max_tokens": -1,
        "max_completion_tokens": 9,
    }
    with pytest.raises(PolicyError) as refused:
        Tier(name="a", model="azure/gpt-4o", params=params)
    message = str(refused.value)
    assert "SEKRET" not in message
    assert "'azure_ad_token': '***'" in message
    assert "'api_base': 'https://h.example/v1?key=***&alt=json'" in message
    assert "'max_tokens': -1" in message
    assert "'max_completion_tokens': 9" in message


def test_the_tier_repr_masks_every_credential_and_keeps_the_rest() -> None:
    params = {
        "hf_token": "hf_SEKRET1",
        "github_token": "ghp_SEKRET2",
        "client_secret": "SEKRET3",
        "api_base": "https://u:SEKRET4@h.example/v1/chat?api-version=2024-06-01"
        "&api-key=SEKRET5&Access%5FToken=SEKRET6#sig=SEKRET7",
        "fallback_urls": ["https://h.example/x?code=SEKRET8&region=eu"],
        "max_tokens": 64,
        "max_completion_tokens": 32,
        "cache_key": "tenant-7",
    }
    tier = Tier(name="cheap", model="gpt-4o-mini", params=params)
    shown = repr(tier)
    assert "SEKRET" not in shown
    assert masked(tier.params) == {
        "hf_token": "***",
        "github_token": "***",
        "client_secret": "***",
        "api_base": "https://u:***@h.example/v1/chat?api-version=2024-06-01"
        "&api-key=***&Access%5FToken=***#sig=***",
        "fallback_urls": ["https://h.example/x?code=***&region=eu"],
        "max_tokens": 64,
        "max_completion_tokens": 32,
        "cache_key": "tenant-7",
    }
    assert tier.params["hf_token"] == "hf_SEKRET1"  # sent as given


def test_policy_show_prints_no_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tier_params = {
        "azure_ad_token": "eyJSEKRET1",
        "api_token": "SEKRET2",
        "api_base": "https://gw.example.com/openai?key=SEKRET3&api-version=2024",
        "extra_headers": {"x-refresh-jwt": "SEKRET4"},
        "max_tokens": 64,
        "max_completion_tokens": 48,
    }
    policy = {
        "budgets": [{"scope": "team", "key": "search", "max_usd": "5"}],
        "cascade": {
            "tiers": [
                {"name": "cheap", "model": "azure/gpt-4o-mini", "params": tier_params},
                "gpt-4o",
            ]
        },
    }
    path = tmp_path / "pol.json"
    path.write_text(json.dumps(policy), encoding="utf-8")
    assert main(["policy", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "SEKRET" not in out
    shown = json.loads(out)
    assert shown["cascade"]["tiers"][0]["params"] == {
        "azure_ad_token": "***",
        "api_token": "***",
        "api_base": "https://gw.example.com/openai?key=***&api-version=2024",
        "extra_headers": {"x-refresh-jwt": "***"},
        "max_tokens": 64,
        "max_completion_tokens": 48,
    }
    assert shown["budgets"][0]["key"] == "search"


def test_a_provider_error_masks_credential_query_options() -> None:
    text = (
        "403 from https://acct.blob.core.windows.net/c/b?sv=2024&sig=SEKRET1 "
        "and https://h.example/v1?hf_token=SEKRET2&x=1: denied"
    )
    assert mask_credentials(text) == (
        "403 from https://acct.blob.core.windows.net/c/b?sv=2024&sig=*** "
        "and https://h.example/v1?hf_token=***&x=1: denied"
    )


def test_sets_and_bytearrays_in_params_are_frozen() -> None:
    stop, raw = {"END"}, bytearray(b"\x00\x01")
    tier = Tier(name="a", model="m", params={"stop": stop, "raw": raw})
    stop.add("LATER")
    raw.extend(b"\x02")
    assert tier.params["stop"] == frozenset({"END"})
    assert tier.params["raw"] == b"\x00\x01"
    with pytest.raises(AttributeError):
        tier.params["stop"].add("y")
    assert hash(tier) == hash(Tier(name="a", model="m", params=dict(tier.params)))
    sent = thawed(tier.params)
    sent["stop"].add("mine")  # the call gets its own changeable set
    assert tier.params["stop"] == frozenset({"END"})
    policy = Policy(cascade=Cascade(tiers=[tier, Tier(name="b", model="n")]))
    assert as_json(policy)["cascade"]["tiers"][0]["params"]["stop"] == ["END"]
