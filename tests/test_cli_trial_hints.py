"""Hints a new-user trial of the docs asked for, each fixed.

``replay`` and ``compare`` on a Redis prefix that holds nothing say to check
``--prefix`` as ``report`` does; a misspelt Redis URL or connection option
names the option meant; ``demo --json`` says which tiers a cascade task used,
as its text does.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from governor import ConfigError
from governor.cli import main
from governor.spend import RedisSpendStore, SpendRecord
from governor.stores import RedisConfig

HINT = "holds no spend records under this prefix"


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOVERNOR_DEBUG", raising=False)


# 1. replay and compare on a Redis prefix that holds nothing

COMMANDS = [["replay"], ["replay", "--json"], ["compare", "--b", "default"]]


@pytest.mark.parametrize("command", COMMANDS)
def test_replay_and_compare_on_an_empty_redis_prefix_say_to_check_it(
    redis_url: str,
    redis_prefix: str,
    command: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The same note as ``report``, naming the keys read, on stderr."""
    code = main([*command, "--db", redis_url, "--prefix", redis_prefix])
    captured = capsys.readouterr()
    assert code == 0
    assert HINT in captured.err
    assert f"{redis_prefix}{{spend}}:h and {redis_prefix}{{spend}}:z" in captured.err
    assert "pass the same with --prefix" in captured.err
    assert captured.err.count(HINT) == 1  # compare reads the store once


@pytest.mark.parametrize("command", COMMANDS)
def test_replay_and_compare_on_a_redis_prefix_with_records_give_no_note(
    redis_url: str,
    redis_prefix: str,
    command: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Records under the prefix: the replay, and no note."""
    store = RedisSpendStore.from_url(redis_url, prefix=redis_prefix)
    try:
        store.record(
            SpendRecord(
                ts=datetime(2026, 11, 2, 9, 0, tzinfo=UTC),
                task_id="task-0",
                call_id="call-0",
                model="gpt-4o",
                input_tokens=1000,
                output_tokens=200,
                cost_usd=Decimal("0.0045"),
            )
        )
    finally:
        store.close()
    code = main([*command, "--db", redis_url, "--prefix", redis_prefix])
    captured = capsys.readouterr()
    assert code == 0
    assert HINT not in captured.err


# 2. a misspelt Redis option names the one meant


@pytest.mark.parametrize("name", ["sockettimeout", "SocketTimeout", "socket-timeout"])
def test_a_misspelt_url_option_names_the_nearest_one(name: str) -> None:
    with pytest.raises(ConfigError) as raised:
        RedisConfig(url=f"redis://127.0.0.1:6379/0?{name}=3")
    message = str(raised.value)
    assert f"sets {name}, which redis-py does not take" in message
    assert "did you mean socket_timeout?" in message


def test_several_misspelt_url_options_each_name_theirs() -> None:
    url = "redis://127.0.0.1:6379/0?sockettimeout=3&max_conns=4&zzz=1&prefix=a:"
    with pytest.raises(ConfigError) as raised:
        RedisConfig(url=url)
    message = str(raised.value)
    assert (
        "did you mean max_connections for max_conns, "
        "socket_timeout for sockettimeout?" in message
    )
    assert "a key prefix is not part of the URL" in message


def test_a_misspelt_connection_kwarg_names_the_nearest_one() -> None:
    with pytest.raises(ConfigError) as raised:
        RedisConfig(
            url="redis://127.0.0.1:6379/0",
            connection_kwargs={"health_check": 5},
        )
    assert "did you mean health_check_interval?" in str(raised.value)


def test_an_option_near_none_gets_no_guess() -> None:
    with pytest.raises(ConfigError) as raised:
        RedisConfig(url="redis://127.0.0.1:6379/0?zzz=1")
    assert "did you mean" not in str(raised.value)


# 3. demo --json: the cascade rows say which tiers answered


def test_demo_json_gives_the_cascade_path_as_the_text_does(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    common = ["demo", "--speed", "0", "--count", "1"]

    def run(name: str, *extra: str) -> str:
        files = ["--traces", str(tmp_path / f"{name}.jsonl")]
        files += ["--spend-db", str(tmp_path / f"{name}.sqlite3")]
        assert main([*common, *files, *extra]) == 0
        return capsys.readouterr().out

    rows = json.loads(run("json", "--json"))["tasks"]
    text = run("text")
    triage = [row for row in rows if row["agent"] == "triage (cascade)"]
    assert triage
    for row in triage:
        assert row["detail"].startswith("cascade: ")
        assert f"{row['detail']}, " in text
    assert any("strong accepted" in row["detail"] for row in triage)
    assert "was stopped: cascade" not in text  # a cascade row was not stopped
    assert "was stopped: loop detected" in text
