"""Secrets planted in URLs, params, headers and provider errors never show.

Each test plants a unique canary and checks that it is absent from what the
user sees and that the redacted form is there instead.
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import redis

from governor._errors import ConfigError, PolicyError
from governor.anomaly import Alert, WebhookHook
from governor.anomaly._actions import _split_credentials
from governor.cascade import Cascade, CascadeExhausted, CascadeRunner, Tier
from governor.cascade._types import Answer, Attempt
from governor.cli import main
from governor.spend import SpendRecord, open_store
from governor.stores import RedisConfig
from governor.stores._redis import redact_url

AUTH_PORT = 6397


def canary(name: str) -> str:
    """A secret no other test and no output would hold by chance."""
    return f"CANARY{name}{uuid.uuid4().hex[:10]}"


# -- B1: the CLI names a Redis spend store with its password masked ----------


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def auth_redis() -> Iterator[str]:
    """A redis-server of our own on 127.0.0.1:6397 that requires a password."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    if not _port_free(AUTH_PORT):
        pytest.skip(f"port {AUTH_PORT} is taken")
    password = canary("PW")
    process = subprocess.Popen(
        [
            server,
            "--port",
            str(AUTH_PORT),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            password,
        ],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=AUTH_PORT, password=password)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield password
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def recorded(auth_redis: str) -> tuple[str, str, str]:
    """The password, a store URL holding it, and a prefix with one record."""
    url = f"redis://:{auth_redis}@127.0.0.1:{AUTH_PORT}/0"
    prefix = f"secrets-{uuid.uuid4().hex[:8]}:"
    store = open_store(url, prefix=prefix)
    store.record(
        SpendRecord(
            ts=datetime.now(UTC),
            task_id="t1",
            call_id="c1",
            model="gpt-4o-mini",
            cost_usd=Decimal("0.001"),
        )
    )
    store.close()
    return auth_redis, url, prefix


SHOWN = f"redis://:***@127.0.0.1:{AUTH_PORT}/0"


def test_report_table_names_the_store_masked(
    recorded: tuple[str, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    password, url, prefix = recorded
    assert main(["report", "--db", url, "--prefix", prefix]) == 0
    out = capsys.readouterr()
    assert password not in out.out + out.err
    assert f"Spend in {SHOWN} (prefix {prefix})" in out.out


def test_report_json_store_field_is_masked(
    recorded: tuple[str, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    password, url, prefix = recorded
    args = ["report", "--format", "json", "--db", url, "--prefix", prefix]
    assert main(args) == 0
    out = capsys.readouterr()
    assert password not in out.out + out.err
    assert json.loads(out.out)["store"] == f"{SHOWN} (prefix {prefix})"


def test_report_html_title_is_masked(
    recorded: tuple[str, str, str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    password, url, prefix = recorded
    page = tmp_path / "report.html"
    args = ["report", "--db", url, "--prefix", prefix, "--html", str(page)]
    assert main(args) == 0
    text = page.read_text(encoding="utf-8")
    assert password not in text + capsys.readouterr().out
    assert f"<title>llm-governor spend report ({SHOWN} (prefix" in text


def test_report_masks_a_password_given_as_a_url_option(
    auth_redis: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"redis://127.0.0.1:{AUTH_PORT}/0?password={auth_redis}"
    assert main(["report", "--db", url]) == 0
    out = capsys.readouterr()
    assert auth_redis not in out.out + out.err
    assert f"Spend in redis://127.0.0.1:{AUTH_PORT}/0?password=***" in out.out


@pytest.mark.parametrize("command", ["replay", "compare"])
def test_replay_and_compare_errors_mask_the_store(
    recorded: tuple[str, str, str],
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    password, url, prefix = recorded
    extra = ["--model", "gpt-4o-mini=gpt-4o"] if command == "compare" else []
    args = [command, "--db", url, "--prefix", prefix, "--task", "nope", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert password not in err
    assert f"no recorded call of task(s) nope in {SHOWN}" in err
    assert f"`governor report --db {SHOWN} --prefix {prefix}" in err


def test_a_prefix_error_masks_a_url_that_is_not_redis(
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret = canary("PFX")
    assert main(["report", "--db", f"http://u:{secret}@h/x", "--prefix", "p"]) == 2
    err = capsys.readouterr().err
    assert secret not in err
    assert "http://u:***@h/x" in err


# -- B2: a password holding / # ? is masked, and the fix is named ------------


@pytest.mark.parametrize("cut", ["/", "#", "?"])
def test_a_password_with_a_url_delimiter_never_shows(cut: str) -> None:
    head, tail = canary("A"), canary("B")
    url = f"redis://app:{head}{cut}{tail}@127.0.0.1:6396/0"
    assert redact_url(url) == "redis://app:***@127.0.0.1:6396/0"
    with pytest.raises(ConfigError) as caught:
        RedisConfig(url=url)
    shown = str(caught.value) + json.dumps(caught.value.to_dict())
    shown += repr(pickle.loads(pickle.dumps(caught.value)))
    for secret in (head, tail):
        assert secret not in shown
    assert "'redis://app:***@127.0.0.1:6396/0'" in shown
    assert "must be percent-encoded" in str(caught.value)


def test_budget_status_masks_a_password_with_a_slash(
    capsys: pytest.CaptureFixture[str],
) -> None:
    head, tail = canary("C"), canary("D")
    url = f"redis://:{head}/{tail}@127.0.0.1:6379/0"
    assert main(["budget", "status", "--redis-url", url]) != 0
    out = capsys.readouterr()
    assert head not in out.out + out.err
    assert tail not in out.out + out.err
    assert "redis://:***@127.0.0.1:6379/0" in out.err


# -- B3: secret-named headers and URL passwords in params are masked ----------

HEADERS = ("api-key", "x-api-key", "Ocp-Apim-Subscription-Key", "X-Goog-Api-Key")


def test_tier_repr_masks_headers_and_url_passwords() -> None:
    secrets = {name: canary(str(i)) for i, name in enumerate(HEADERS)}
    password = canary("BASE")
    tier = Tier(
        name="a",
        model="azure/gpt-4o-mini",
        params={
            "api_base": f"https://u:{password}@x.openai.azure.com",
            "extra_headers": secrets,
            "max_tokens": 512,
            "max_completion_tokens": 256,
            "logit_bias": {"50256": -100},
            "top_k": 5,
        },
    )
    shown = repr(tier) + repr(Cascade(tiers=[tier]))
    for secret in (*secrets.values(), password):
        assert secret not in shown
    assert "'api_base': 'https://u:***@x.openai.azure.com'" in shown
    for name in HEADERS:
        assert f"'{name}': '***'" in shown
    for kept in ("'max_tokens': 512", "'max_completion_tokens': 256", "'top_k': 5"):
        assert kept in shown
    assert "'logit_bias': {'50256': -100}" in shown


def test_policy_errors_mask_secret_headers() -> None:
    secret = canary("PE")
    params = {"stream": True, "extra_headers": {"x-api-key": secret}}
    with pytest.raises(PolicyError) as caught:
        Tier(name="a", model="gpt-4o-mini", params=params)
    assert secret not in str(caught.value)
    assert "'x-api-key': '***'" in str(caught.value)


def test_policy_show_masks_headers_and_url_passwords(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, password = canary("SHOW"), canary("SHOWPW")
    tier = {
        "name": "a",
        "model": "azure/gpt-4o-mini",
        "params": {
            "api_base": f"https://u:{password}@x.openai.azure.com",
            "extra_headers": {"Ocp-Apim-Subscription-Key": key},
        },
    }
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"cascade": {"tiers": [tier]}}), encoding="utf-8")
    assert main(["policy", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert key not in out
    assert password not in out
    assert "https://u:***@x.openai.azure.com" in out


def test_the_cooldown_debug_line_masks_the_api_base(
    caplog: pytest.LogCaptureFixture,
) -> None:
    password = canary("COOL")
    tier = Tier(
        name="a",
        model="openai/gpt-4o-mini",
        params={"api_base": f"http://u:{password}@127.0.0.1:9/v1"},
    )
    runner = CascadeRunner(Cascade(tiers=[tier]))

    def refuse(tier: Tier, request: object) -> Answer:
        raise AuthenticationError("invalid credentials")

    with (
        caplog.at_level(logging.DEBUG, logger="governor.cascade"),
        pytest.raises(CascadeExhausted),
    ):
        runner.run({}, call=refuse, sleep=lambda s: None)
    assert password not in caplog.text
    assert "cascade cools openai/gpt-4o-mini at http://***@127.0.0.1:9/v1" in (
        caplog.text
    )


class AuthenticationError(Exception):
    """Classified by name, as LiteLLM's and the SDKs' errors are: an auth error."""


# -- S1: provider error text that echoes a key is masked ---------------------


def test_cascade_exhausted_masks_keys_a_provider_echoes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    key, bearer, header = f"sk-{canary('SK')}", canary("BEARER"), canary("HDR")
    tier = Tier(name="a", model="gpt-4o-mini")

    def refuse(tier: Tier, request: object) -> Answer:
        raise AuthenticationError(
            f"Incorrect API key provided: {key}. Sent Authorization: Bearer "
            f"{bearer}, api-key: {header}; see the docs"
        )

    runner = CascadeRunner(Cascade(tiers=[tier]))
    with (
        caplog.at_level(logging.DEBUG, logger="governor.cascade"),
        pytest.raises(CascadeExhausted) as caught,
    ):
        runner.run({}, call=refuse, sleep=lambda s: None)
    error = caught.value
    again = pickle.loads(pickle.dumps(error))
    shown = str(error) + json.dumps(error.to_dict()) + caplog.text
    shown += repr(again.__dict__) + str(again)
    for secret in (key, bearer, header):
        assert secret not in shown
    assert "Incorrect API key provided: ***" in str(error)
    assert "Authorization: ***, api-key: ***; see the docs" in str(error)


def test_cascade_exhausted_masks_attempts_built_elsewhere() -> None:
    token = canary("TOK")
    attempt = Attempt(
        tier="a",
        model="m",
        outcome="error",
        reason=f"auth_error: Unauthorized: token={token} rejected",
        sent=True,
    )
    error = CascadeExhausted([attempt], reason="1 tier(s) failed")
    shown = str(error) + json.dumps(error.to_dict())
    shown += repr(pickle.loads(pickle.dumps(error)).attempts)
    assert token not in shown
    assert "token=*** rejected" in str(error)


# -- B5: webhook URLs show scheme://host[:port]/... only ---------------------


def _alert() -> Alert:
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    return Alert(
        scope="team:s",
        metric="usd",
        rule="burst",
        ts=t0,
        interval_start=t0,
        observed=Decimal("0.5"),
        threshold=Decimal("0.1"),
        baseline_mean=Decimal("0.1"),
        baseline_std=Decimal("0.01"),
    )


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    "path", ["/bot{secret}/sendMessage", "/hook;token={secret}", "/x?k={secret}"]
)
def test_webhook_logs_show_no_path_params_or_query(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret, port = canary("HOOK"), _closed_port()
    hook = WebhookHook(
        f"http://127.0.0.1:{port}" + path.format(secret=secret),
        blocking=True,
        timeout_s=1,
    )
    with caplog.at_level(logging.WARNING, logger="governor.anomaly"):
        hook(_alert())
    assert secret not in caplog.text + repr(hook)
    assert f"POST to http://127.0.0.1:{port}/... failed" in caplog.text
    assert repr(hook) == f"WebhookHook('http://127.0.0.1:{port}/...', timeout_s=1)"


def test_an_unreadable_webhook_url_is_not_quoted() -> None:
    head, tail = canary("W1"), canary("W2")
    with pytest.raises(ConfigError) as caught:
        _split_credentials(f"https://u:{head}/{tail}@hooks.example.com/x")
    assert head not in str(caught.value)
    assert tail not in str(caught.value)
    assert "percent-encoded" in str(caught.value)


def test_anomaly_settings_show_their_webhook_url_redacted() -> None:
    from governor.anomaly import Anomalies

    canary = "https://alice:CANARYPW@hooks.slack.com/services/T0/B0/CANARYTOK?k=CANARYQ"
    settings = Anomalies(webhook_url=canary)
    for shown in (repr(settings), str(settings)):
        assert "CANARY" not in shown
        assert "webhook_url='https://hooks.slack.com/...'" in shown
    assert settings.webhook_url == canary  # kept whole for the POST


def test_what_is_not_a_secret_stays_readable() -> None:
    """Provider errors keep their cause, and tool schemas and plain endpoints
    show as written; keys, tokens and passwords are still masked."""
    from governor.policies._base import mask_credentials, masked

    for text in (
        "Unsupported value for key: temperature",
        "Missing required key: 'messages'",
        "Bearer token missing",
        "secret: missing region",
        "https://x-aiplatform.googleapis.com/v1/models/claude@20241022:rawPredict",
        "rate limit exceeded for key_id=abc123",
    ):
        assert mask_credentials(text) == text
    assert mask_credentials("api-key: CANARY0123456789") == "api-key: ***"
    assert "CANARY" not in mask_credentials("Authorization: Bearer CANARYabc123xyz")
    params = {
        "api_base": "https://gw.example.com/models/llama@v2/v1",
        "tools": [{"parameters": {"properties": {"sortKey": {}, "pageToken": {}}}}],
        "api_key": "CANARY",
        "extra_headers": {"x-api-key": "CANARY"},
    }
    shown = masked(params)
    assert shown["api_base"] == params["api_base"]
    assert shown["tools"] == params["tools"]
    assert (shown["api_key"], shown["extra_headers"]["x-api-key"]) == ("***", "***")
