"""Credentials in a tier's params never print; counts and settings still do."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from governor import Cascade, ConfigError, Policy, PolicyError
from governor.cascade import Tier
from governor.cli import main
from governor.cli._policy import as_json
from governor.policies._base import mask_credentials, masked, secret_name, thawed
from governor.stores._redis import RedisConfig, redact_url


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


# -- E: a misspelt Redis password option never prints its value --------------


@pytest.mark.parametrize("option", ["pasword", "passwd", "pass", "passowrd"])
def test_an_unknown_redis_url_option_has_its_value_masked(option: str) -> None:
    """No rule on a misspelt name can tell it holds a password: every option
    redis-py does not take is shown masked; known ones stay readable."""
    url = f"redis://127.0.0.1:6379/0?socket_timeout=2&{option}=SEKRIT1"
    with pytest.raises(ConfigError) as refused:
        RedisConfig(url=url)
    message = str(refused.value)
    assert "SEKRIT" not in message
    assert f"?socket_timeout=2&{option}=***'" in message
    assert f"sets {option}, which redis-py does not take" in message
    assert "did you mean password?" in message


def test_the_report_cli_masks_a_misspelt_password_option(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["report", "--db", "redis://127.0.0.1:6379/0?pasword=SEKRIT1"]) == 1
    err = capsys.readouterr().err
    assert "SEKRIT" not in err
    assert "'redis://127.0.0.1:6379/0?pasword=***' sets pasword" in err


def test_an_address_error_masks_unknown_options_too() -> None:
    """An '@' after the host is refused before the option names are read."""
    with pytest.raises(ConfigError) as refused:
        RedisConfig(url="redis://u:p/w@127.0.0.1:6379/0?pasword=SEKRIT1")
    message = str(refused.value)
    assert "SEKRIT" not in message
    assert "'redis://u:***@127.0.0.1:6379/0?pasword=***' has a port" in message


def test_redis_url_options_are_secret_by_the_policy_rule_too() -> None:
    url = "redis://127.0.0.1:6379/0?pwd=SEKRIT1&x-api-key=SEKRIT2&db=0"
    assert redact_url(url) == "redis://127.0.0.1:6379/0?pwd=***&x-api-key=***&db=0"
    config = RedisConfig(connection_kwargs={"credential_provider": "SEKRIT3"})
    assert "SEKRIT" not in repr(config)


# -- F: credentials a provider's error text or a PolicyError repeats ----------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("401: azure_ad_token=SEKRIT is invalid", "401: azure_ad_token=*** is invalid"),
        ("bad hf_token: SEKRIT, check it", "bad hf_token: ***, check it"),
        ("got {'token': 'SEKRIT', 'n': 1}", "got {'token': '***', 'n': 1}"),
        ('{"access_token": "SEKRIT"}', '{"access_token": "***"}'),
        ('{"key": "SEKRIT", "model": "m"}', '{"key": "***", "model": "m"}'),
        ('{"token": "ab\\"SEKRIT"}', '{"token": "***"}'),
        ("access_token SEKRIT42x rejected", "access_token *** rejected"),
        ("token: SEKRIT99", "token: ***"),
        ("cfg.client_secret=SEKRIT; retry", "cfg.client_secret=***; retry"),
    ],
)
def test_a_provider_error_masks_secret_named_fields(text: str, shown: str) -> None:
    assert mask_credentials(text) == shown


@pytest.mark.parametrize(
    "text",
    [
        "the access_token provided has expired",
        "Missing required key: 'messages'",
        "token_budget=500 exceeded; max_tokens: 64",
        "set image_token='<image>' and input_key=question",
        "x-api-key header missing",
    ],
)
def test_words_after_a_secret_name_stay_readable(text: str) -> None:
    assert mask_credentials(text) == text


def test_params_given_as_pairs_are_masked_in_the_error() -> None:
    pairs = [("api_key", "SEKRIT1"), ["hf_token", "SEKRIT2"], ("max_tokens", 64)]
    with pytest.raises(PolicyError) as refused:
        Tier(name="a", model="m", params=pairs)
    message = str(refused.value)
    assert "SEKRIT" not in message
    assert "[('api_key', '***'), ['hf_token', '***'], ('max_tokens', 64)]" in message


def test_a_model_written_as_a_url_is_masked_in_the_message_body() -> None:
    with pytest.raises(PolicyError) as refused:
        Tier(name="a", model=" https://h.example/v1?key=SEKRIT&alt=json")
    message = str(refused.value)
    assert "SEKRIT" not in message
    assert "strip it first: 'https://h.example/v1?key=***&alt=json'" in message
    with pytest.raises(PolicyError) as refused:
        Tier(name="a", model="m", params={"model": "https://h.example?key=SEKRIT"})
    assert "SEKRIT" not in str(refused.value)
    with pytest.raises(PolicyError) as refused:
        Cascade(
            tiers=[
                Tier(name="a", model="https://h.example/v1?key=SEKRIT"),
                Tier(name="b", model="https://h.example/v1?key=SEKRIT"),
            ]
        )
    assert "SEKRIT" not in str(refused.value)
    assert "model 'https://h.example/v1?key=***'" in str(refused.value)


@pytest.mark.parametrize(
    ("params", "got"),
    [
        (b"api_key=SEKRIT&x=1", "(got b'api_key=***&x=1')"),
        ("api_key=SEKRIT&x=1", "(got 'api_key=***&x=1')"),
    ],
)
def test_text_given_for_params_is_masked_in_got(params: object, got: str) -> None:
    """Bytes are read as Latin-1 text and masked as a provider's error is."""
    with pytest.raises(PolicyError) as refused:
        Tier(name="a", model="m", params=params)
    assert "SEKRIT" not in str(refused.value)
    assert got in str(refused.value)


def test_bytes_without_credentials_are_shown_as_given() -> None:
    assert masked({"raw": b"\x00\xffkey"}) == {"raw": b"\x00\xffkey"}


# -- G: tokenizer tokens and field keys are not credentials; URL punctuation --


@pytest.mark.parametrize(
    "name",
    [
        *("image_token", "audio_token", "video_token", "input_key", "output_key"),
        *("text_key", "model_key", "label_key", "content_key", "prompt_key"),
        "response_key",
    ],
)
def test_special_tokens_and_field_keys_stay_readable(name: str) -> None:
    assert not secret_name(name)
    assert masked({name: "<image>"}) == {name: "<image>"}


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "(see https://h/x?key=abc). Try again.",
            "(see https://h/x?key=***). Try again.",
        ),
        ("at https://h/x?sig=a.b.c, then", "at https://h/x?sig=***, then"),
        ("[https://h/x?access_token=a.b.c]!", "[https://h/x?access_token=***]!"),
    ],
)
def test_a_url_in_text_keeps_the_punctuation_after_it(text: str, shown: str) -> None:
    assert mask_credentials(text) == shown


@pytest.mark.parametrize("unit", ["a-", "a_", "a.", "x:", "https://"])
def test_a_long_error_page_is_masked_and_cut_without_hanging(unit: str) -> None:
    """Runs of one kind of character once sent a pattern backtracking for
    minutes (40,000 characters of "a-a-a-..." took 27 s); the text is now cut
    at 20,000 characters with a note, and masked all the same."""
    text = "api_key=SEKRIT1234 " + unit * 50_000
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(mask_credentials(text)))
    worker.start()
    worker.join(timeout=60)  # a guard against a hang, not a speed target
    assert outcome, "mask_credentials did not return within a minute"
    [shown] = outcome
    assert shown.startswith("api_key=*** ")
    assert "SEKRIT" not in shown
    assert shown.endswith(f" [... cut: {len(text)} characters in all]")
    assert len(shown) == 20_000 + len(f" [... cut: {len(text)} characters in all]")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("password=Summer2024!", "password=***"),
        ("password: Summer2024!", "password: ***"),
        ("token=!!!!", "token=***"),
        ("Authorization: Bearer abc123def!", "Authorization: ***"),
    ],
)
def test_a_secret_ending_in_punctuation_is_masked_whole(text: str, shown: str) -> None:
    assert mask_credentials(text) == shown


@pytest.mark.parametrize(
    "text",
    [
        "Missing x-api-key HTTP header",
        "access_token JSON invalid",
        "The access_token JWT was malformed",
        "refresh_token 404 not found",
        "api_key DISABLED",
        "private_key PEM_read_bio failed",
        "Invalid value for 'token': expected one of 'a', 'b'",
        '{"access_token": "", "api_key_required": true}',
    ],
)
def test_words_of_a_provider_message_after_a_secret_name_stay(text: str) -> None:
    assert mask_credentials(text) == text


def test_a_credential_the_cut_splits_is_masked_whole() -> None:
    """A bearer token across the 20,000-character cut shows none of itself."""
    text = ("x " * 10_000)[: 20_000 - 23] + " Bearer abcdefghijklmnopqrstuvwxyz tail"
    shown = mask_credentials(text)
    assert "abcdefghijklmno" not in shown
    assert shown.endswith(f" [... cut: {len(text)} characters in all]")


def test_a_key_shaped_value_is_masked_under_any_name() -> None:
    """A provider key or bearer token is masked where its field's name says
    nothing secret (``input_key``) or it sits in a longer text."""
    shown = masked(
        {
            "input_key": "sk-proj-abcdefghijklmnop1234",
            "temperature": "api_key=sk-abcdefghijk",
            "label_key": "Bearer abcdefghijklmnop1234",
            "model": "gpt-4o",
        }
    )
    assert shown == {
        "input_key": "***",
        "temperature": "api_key=***",
        "label_key": "Bearer ***",
        "model": "gpt-4o",
    }


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:6379/0?pasword=hunter2",
        "redis://127.0.0.1:6379/0?pass=hunter2",
        "redis://127.0.0.1:6379/0?passowrd=hunter2",
    ],
)
def test_a_misspelt_password_option_is_masked_in_every_redis_url_error(
    url: str,
) -> None:
    with pytest.raises(ConfigError) as refused:
        RedisConfig(url=url)
    assert "hunter2" not in str(refused.value)
    assert "=***" in str(refused.value)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("password=p]ssw0rd", "password=***"),
        ("Authorization: Bearer abc]def0123456789", "Authorization: ***"),
        ("client_secret=Zx9}Qw8]Er7", "client_secret=***"),
        ("AWS_SECRET_ACCESS_KEY=abc]defGHI/jkl+mno", "AWS_SECRET_ACCESS_KEY=***"),
        ("[https://h/x?access_token=a.b.c]!", "[https://h/x?access_token=***]!"),
        ('{"api_key_required": true}', '{"api_key_required": true}'),
    ],
)
def test_a_bracket_inside_a_secret_does_not_end_it(text: str, shown: str) -> None:
    """A closing bracket ends a value only as its last character."""
    assert mask_credentials(text) == shown


@pytest.mark.parametrize("name", ["hf_hub_model_12345678", "xai-grok-2-latest"])
def test_a_model_name_that_starts_like_a_key_is_shown(name: str) -> None:
    assert masked({"model": name}) == {"model": name}


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("Authorization: Bearer ***", "Authorization: Bearer ***"),
        (
            "curl -H 'Authorization: Bearer ***REDACTED***'",
            "curl -H 'Authorization: ***'",
        ),
        ("api_key: Bearer ***", "api_key: Bearer ***"),
        ("password: ***hunter2xyz", "password: ***"),
        ("api_key=***abc123secret", "api_key=***"),
        ("token=***.real", "token=***"),
        ("token=***. Try again", "token=***. Try again"),
    ],
)
def test_a_masked_value_stays_as_it_is_and_a_partly_masked_one_is_masked(
    text: str, shown: str
) -> None:
    """Masking text masked already changes nothing ("*** ***" came of it);
    a value that only starts with the mask is still a value."""
    assert mask_credentials(text) == shown
    assert mask_credentials(shown) == shown
