"""The Redis ledger: the memory ledger's behaviour, across processes, with leases.

The first group runs the same checks against MemoryLedger and RedisLedger; the
rest need a real Redis (see ``_redis_fixtures``).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from _redis_fixtures import (
    OwnRedis,
    hold_and_hang,
    spend_asyncio,
    spend_threads,
)
from redis.crc import key_slot

from governor import BudgetExceeded, Governor, Policy
from governor._calls import CallRequest
from governor._errors import ConfigError, StoreUnavailable
from governor.budgets import RollingLine, lines_for
from governor.policies import Budget
from governor.stores import Line, MemoryLedger
from governor.stores._redis import RedisConfig, RedisConnections, RedisLedger
from governor.stores._semaphore import RedisSemaphore

pytest_plugins = ["_redis_fixtures"]


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Subject:
    """A ledger under test and a way to let time pass for its leases."""

    ledger: MemoryLedger | RedisLedger
    wait: Callable[[float], None]


@pytest.fixture(params=["memory", "redis"])
def subject(request: pytest.FixtureRequest) -> Iterator[Subject]:
    """Each shared check runs once per ledger implementation."""
    if request.param == "memory":
        clock = FakeClock()

        def advance(seconds: float) -> None:
            clock.now += seconds

        yield Subject(MemoryLedger(clock=clock), advance)
        return
    ledger = request.getfixturevalue("redis_ledger")
    yield Subject(ledger, time.sleep)


# -- shared behaviour: memory and Redis --------------------------------------


def test_reserve_holds_on_every_line(subject: Subject) -> None:
    """An admitted reservation shows as reserved on each of its lines."""
    lines = [Line("task:a", 100, 50), Line("team:x", 1000, None)]
    assert subject.ledger.reserve("h", lines, 30, 20, 60) is None
    held = [subject.ledger.balance(key) for key in ("task:a", "team:x")]
    assert [(b.reserved_nanos, b.reserved_tokens) for b in held if b] == [
        (30, 20),
        (30, 20),
    ]


def test_refusal_names_line_unit_and_balance(subject: Subject) -> None:
    """A refusal names the first line lacking room, the unit and its figures."""
    lines = [Line("task:a", 100, None), Line("team:x", 50, None)]
    subject.ledger.reserve("h0", [Line("team:x", 50, None)], 20, 0, 60)
    refusal = subject.ledger.reserve("h1", lines, 40, 0, 60)
    assert refusal is not None
    assert refusal.unit == "usd"
    assert refusal.balance.key == "team:x"
    assert (refusal.balance.limit_nanos, refusal.balance.reserved_nanos) == (50, 20)
    assert refusal.balance.left_nanos == 30


def test_refusal_leaves_no_hold_on_other_lines(subject: Subject) -> None:
    """All or nothing: the line that had room holds nothing after a refusal."""
    lines = [Line("task:a", 100, None), Line("team:x", 50, None)]
    assert subject.ledger.reserve("h", lines, 60, 0, 60) is not None
    task = subject.ledger.balance("task:a")
    assert task is not None
    assert task.reserved_nanos == 0


def test_token_limit_refuses_in_tokens(subject: Subject) -> None:
    """A line limited in tokens refuses in tokens, with its token figures."""
    refusal = subject.ledger.reserve("h", [Line("task:a", None, 10)], 0, 11, 60)
    assert refusal is not None
    assert (refusal.unit, refusal.balance.limit_tokens) == ("tokens", 10)
    assert refusal.balance.limit_nanos is None


def test_settle_replaces_hold_by_actual_spend(subject: Subject) -> None:
    """Settling charges the actual amount and frees the rest of the hold."""
    assert subject.ledger.reserve("h", [Line("task:a", 100, 1000)], 80, 500, 60) is None
    subject.ledger.settle("h", ["task:a"], 30, 200)
    balance = subject.ledger.balance("task:a")
    assert balance is not None
    assert (balance.spent_nanos, balance.reserved_nanos) == (30, 0)
    assert (balance.spent_tokens, balance.left_tokens) == (200, 800)


def test_retried_settle_counts_once(subject: Subject) -> None:
    """A settle repeated with the same hold id charges once."""
    subject.ledger.reserve("h", [Line("task:a", 100)], 50, 0, 60)
    subject.ledger.settle("h", ["task:a"], 40, 0)
    subject.ledger.settle("h", ["task:a"], 40, 0)
    balance = subject.ledger.balance("task:a")
    assert balance is not None
    assert balance.spent_nanos == 40


def test_release_returns_the_room(subject: Subject) -> None:
    """A released hold frees its room and charges nothing."""
    subject.ledger.reserve("h", [Line("task:a", 100)], 100, 0, 60)
    subject.ledger.release("h")
    assert subject.ledger.reserve("h2", [Line("task:a", 100)], 100, 0, 60) is None
    balance = subject.ledger.balance("task:a")
    assert balance is not None
    assert (balance.spent_nanos, balance.reserved_nanos) == (0, 100)


def test_expired_hold_gives_its_room_back(subject: Subject) -> None:
    """A hold not settled within its lease expires and its room returns."""
    subject.ledger.reserve("h", [Line("task:a", 100)], 100, 0, 0.2)
    subject.wait(0.4)
    assert subject.ledger.reserve("h2", [Line("task:a", 100)], 100, 0, 60) is None


def test_settle_after_expiry_still_charges(subject: Subject) -> None:
    """A late settle of an expired hold charges the actual spend."""
    subject.ledger.reserve("h", [Line("task:a", 100)], 100, 0, 0.2)
    subject.wait(0.4)
    subject.ledger.settle("h", ["task:a"], 70, 0)
    balance = subject.ledger.balance("task:a")
    assert balance is not None
    assert (balance.spent_nanos, balance.reserved_nanos) == (70, 0)


def test_unknown_line_has_no_balance(subject: Subject) -> None:
    """A line the store never saw reads as None."""
    assert subject.ledger.balance("task:never") is None


def test_settle_on_a_new_line_records_unlimited_spend(subject: Subject) -> None:
    """Settling on a line never reserved records the spend with no limit."""
    subject.ledger.settle("h", ["feature:x"], 5, 7)
    balance = subject.ledger.balance("feature:x")
    assert balance is not None
    assert (balance.limit_nanos, balance.spent_nanos, balance.spent_tokens) == (
        None,
        5,
        7,
    )


def test_latest_reservation_sets_the_limit(subject: Subject) -> None:
    """Limits follow the lines of the latest reservation (a changed policy)."""
    subject.ledger.reserve("h1", [Line("team:x", 100)], 10, 0, 60)
    subject.ledger.reserve("h2", [Line("team:x", 500)], 10, 0, 60)
    balance = subject.ledger.balance("team:x")
    assert balance is not None
    assert balance.limit_nanos == 500


def test_team_cap_binds_before_task_cap(subject: Subject) -> None:
    """When the team has less room left than the task, the team line refuses."""
    now = datetime(2026, 6, 1, tzinfo=UTC)
    budgets = [Budget(max_usd="1"), Budget(scope="team", max_usd="0.5")]
    lines = [s.line() for s in lines_for(budgets, {"team": "x"}, "t1", now)]
    refusal = subject.ledger.reserve("h", lines, 600_000_000, 0, 60)
    assert refusal is not None
    assert (refusal.balance.key, refusal.balance.limit_nanos) == ("team:x", 5 * 10**8)


def test_task_cap_binds_before_team_cap(subject: Subject) -> None:
    """When the task has less room left than the team, the task line refuses."""
    now = datetime(2026, 6, 1, tzinfo=UTC)
    budgets = [Budget(max_usd="0.5"), Budget(scope="team", max_usd="1")]
    lines = [s.line() for s in lines_for(budgets, {"team": "x"}, "t1", now)]
    refusal = subject.ledger.reserve("h", lines, 600_000_000, 0, 60)
    assert refusal is not None
    assert (refusal.balance.key, refusal.balance.limit_nanos) == ("task:t1", 5 * 10**8)


async def test_async_steps_match_the_sync_ones(subject: Subject) -> None:
    """areserve, asettle, arelease and abalance mean what the sync steps mean."""
    ledger = subject.ledger
    assert await ledger.areserve("h1", [Line("task:a", 100)], 60, 0, 60) is None
    refusal = await ledger.areserve("h2", [Line("task:a", 100)], 60, 0, 60)
    assert refusal is not None
    await ledger.asettle("h1", ["task:a"], 20, 0)
    await ledger.areserve("h3", [Line("task:a", 100)], 60, 0, 60)
    await ledger.arelease("h3")
    balance = await ledger.abalance("task:a")
    assert balance is not None
    assert (balance.spent_nanos, balance.reserved_nanos) == (20, 0)


def test_keys_and_reset(subject: Subject) -> None:
    """keys() lists the lines; reset() zeroes a line's spend."""
    subject.ledger.settle("h", ["team:b", "team:a"], 9, 1)
    subject.ledger.reset("team:a")
    balance = subject.ledger.balance("team:a")
    assert subject.ledger.keys() == ["team:a", "team:b"]
    assert balance is not None
    assert (balance.spent_nanos, balance.spent_tokens) == (0, 0)


# -- Redis only ------------------------------------------------------------


def test_retried_reserve_holds_once(redis_ledger: RedisLedger) -> None:
    """A reserve repeated with the same hold id (a retry) holds once."""
    redis_ledger.reserve("h", [Line("task:a", 100)], 30, 0, 60)
    redis_ledger.reserve("h", [Line("task:a", 100)], 30, 0, 60)
    balance = redis_ledger.balance("task:a")
    assert balance is not None
    assert balance.reserved_nanos == 30


def test_renew_keeps_a_hold_past_its_first_lease(redis_ledger: RedisLedger) -> None:
    """A renewed hold outlives its first lease."""
    redis_ledger.reserve("h", [Line("task:a", 100)], 100, 0, 0.3)
    assert redis_ledger.renew("h", 30) is True
    time.sleep(0.5)
    balance = redis_ledger.balance("task:a")
    assert balance is not None
    assert balance.reserved_nanos == 100


def test_renew_of_an_expired_hold_says_so(redis_ledger: RedisLedger) -> None:
    """renew() returns False once the hold is gone."""
    redis_ledger.reserve("h", [Line("task:a", 100)], 100, 0, 0.1)
    time.sleep(0.3)
    assert redis_ledger.renew("h", 30) is False


def test_every_key_of_a_call_shares_one_hash_slot(
    redis_ledger: RedisLedger, redis_url: str
) -> None:
    """All keys the ledger writes carry one hash tag, so one Cluster slot."""
    lines = [Line("task:a", 100), Line("team:x", 10**6), Line("org:o", None, 99)]
    rolling = RollingLine("user:u#rolling:60s", 10**6, None, 61.0, 60.0)
    redis_ledger.reserve("h", [*lines, rolling], 10, 1, 60)
    redis_ledger.settle("h", ["task:a", "user:u#rolling:60s"], 5, 1)
    client = redis.Redis.from_url(redis_url)
    written = list(client.scan_iter(match=redis_ledger.prefix + "*"))
    client.close()
    # 4 line hashes, 1 rolling bucket hash, the line index, the settled hold.
    assert len(written) == 7
    assert {key_slot(key) for key in written} == {key_slot(b"{budgets}")}


def test_rolling_line_forgets_spend_older_than_its_window(
    redis_ledger: RedisLedger,
) -> None:
    """Spend leaves a rolling window once the window has passed it."""
    line = RollingLine("user:u#rolling:1s", 100, None, 5.0, 1.0)
    redis_ledger.reserve("h1", [line], 100, 0, 60)
    redis_ledger.settle("h1", [line.key], 100, 0)
    assert redis_ledger.reserve("h2", [line], 1, 0, 60) is not None
    time.sleep(1.2)
    assert redis_ledger.reserve("h3", [line], 100, 0, 60) is None


def test_a_rolling_line_lives_its_own_lease_once_no_hold_is_left(
    redis_ledger: RedisLedger, redis_url: str
) -> None:
    """A line lives until its holds' deadline while a hold is live; once the
    last is settled, its own lease (the window's, 5 s here), not the 900 s a
    settled hold had (per-user rolling lines piled up for 15 minutes)."""
    line = RollingLine("user:u#rolling:4s", 100, None, 5.0, 4.0)
    client = redis.Redis.from_url(redis_url)
    key = f"{redis_ledger.prefix}{{budgets}}:l:{line.key}"
    try:
        redis_ledger.reserve("h1", [line], 10, 0, 900)
        redis_ledger.reserve("h2", [line], 10, 0, 900)
        redis_ledger.settle("h1", [line.key], 10, 0)
        assert client.pttl(key) > 800_000  # h2 is still live
        redis_ledger.settle("h2", [line.key], 10, 0)
        assert 0 < client.pttl(key) <= 5_000
        redis_ledger.reserve("h3", [line], 10, 0, 900)
        assert client.pttl(key) > 800_000
        redis_ledger.release("h3")  # a cancelled call: the same once released
        assert 0 < client.pttl(key) <= 5_000
    finally:
        client.close()


def test_amounts_beyond_exact_range_are_refused(redis_ledger: RedisLedger) -> None:
    """Amounts past 2**53 would lose precision in Lua and raise ConfigError."""
    with pytest.raises(ConfigError, match="more than a Redis ledger can hold"):
        redis_ledger.reserve("h", [Line("task:a")], 2**53, 0, 60)
    with pytest.raises(ConfigError, match="whole numbers of 0 or more"):
        redis_ledger.reserve("h", [Line("task:a")], -1, 0, 60)


def test_a_hold_too_large_says_in_dollars_what_to_lower(
    redis_ledger: RedisLedger,
) -> None:
    """$1M per Mtok and max_tokens=10**7: the refusal speaks dollars, not nanos."""
    with pytest.raises(ConfigError) as caught:
        redis_ledger.reserve("h", [Line("team:a")], 10_000_026 * 10**9, 10_000_026, 60)
    message = str(caught.value)
    assert message.startswith(
        "this call would need to hold up to $10,000,026.00 and 10,000,026 tokens "
        "(its max_tokens at the model's prices, plus its prompt), more than a "
        "Redis ledger can hold in one amount: at most $9,007,199.25 "
        "(9,007,199,254,740,991 nano-dollars) and 9,007,199,254,740,991 tokens. "
        "Lower the call's max_tokens, or the model's prices"
    )
    assert "nanos=" not in message
    with pytest.raises(ConfigError, match=r"spend to settle is \$9,007,199\.25"):
        redis_ledger.settle("h", ["team:a"], 2**53, 0)


def test_script_cache_flush_is_survived(own_redis: OwnRedis) -> None:
    """After SCRIPT FLUSH the ledger reloads its scripts (NOSCRIPT fallback)."""
    ledger = RedisLedger(own_redis.url)
    ledger.reserve("h1", [Line("task:a", 100)], 10, 0, 60)
    redis.Redis.from_url(own_redis.url).script_flush()
    assert ledger.reserve("h2", [Line("task:a", 100)], 10, 0, 60) is None
    ledger.close()


def test_password_in_url_authenticates() -> None:
    """A redis:// URL with a password reaches a server that requires one."""
    server = OwnRedis()
    server.start("--requirepass", "s3cret")
    try:
        ledger = RedisLedger(f"redis://:s3cret@127.0.0.1:{server.port}/0")
        assert ledger.reserve("h", [Line("task:a", 100)], 10, 0, 60) is None
        ledger.close()
    finally:
        server.kill()


def test_url_options_redis_py_takes_are_used_and_others_refused(
    redis_url: str, redis_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A known option in the URL works; an unknown one (a prefix put in the
    URL) is refused when the ledger is built, not at its first command."""
    from governor import ConfigError
    from governor.cli import main

    options = "socket_timeout=3&health_check_interval=10&client_name=governor-test"
    ledger = RedisLedger(f"{redis_url}?{options}", prefix=redis_prefix)
    assert ledger.reserve("h-url", [Line("task:url-test", 100)], 10, 0, 60) is None
    ledger.release("h-url")
    ledger.close()
    with pytest.raises(ConfigError, match=r"sets prefix, .* pass prefix="):
        RedisLedger(f"{redis_url}?prefix=deployA:")
    assert main(["report", "--db", f"{redis_url}?prefx=1"]) == 1
    assert "sets prefx, which redis-py does not take" in capsys.readouterr().err


def test_rediss_url_with_password_reaches_a_tls_server(tmp_path: Path) -> None:
    """A rediss:// URL with a password and a CA file talks TLS to the server."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl binary to make a test certificate")
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", key, "-out", cert, "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    server = OwnRedis()
    server.start_tls(cert, key, "tls-secret")
    try:
        config = RedisConfig(url=server.url, connection_kwargs={"ssl_ca_certs": cert})
        ledger = RedisLedger(config)
        assert ledger.reserve("h", [Line("task:a", 100)], 10, 0, 60) is None
        ledger.close()
    finally:
        server.kill()


def test_unreachable_store_raises_without_leaking_password() -> None:
    """A dead store raises StoreUnavailable whose message hides the password."""
    server = OwnRedis()  # a free port nobody listens on
    config = RedisConfig(
        url=f"redis://:hunter2@127.0.0.1:{server.port}/0",
        attempts=2,
        retry_wait_s=0.01,
    )
    ledger = RedisLedger(config)
    with pytest.raises(StoreUnavailable, match="failure_mode='open'") as caught:
        ledger.reserve("h", [Line("task:a", 100)], 10, 0, 60)
    assert "hunter2" not in str(caught.value)
    assert ":***@" in str(caught.value)


def test_transient_error_is_retried() -> None:
    """A connection error that clears on retry does not reach the caller."""
    connections = RedisConnections(RedisConfig(attempts=3, retry_wait_s=0.001))
    outcomes: list[object] = [redis.exceptions.ConnectionError("reset"), "ok"]

    def flaky() -> object:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert connections.call(flaky, "test") == "ok"


def test_retries_are_bounded() -> None:
    """A store that keeps failing is tried `attempts` times, then StoreUnavailable."""
    connections = RedisConnections(RedisConfig(attempts=3, retry_wait_s=0.001))
    tries: list[int] = []

    def dead() -> None:
        tries.append(1)
        raise redis.exceptions.TimeoutError("timed out")

    with pytest.raises(StoreUnavailable, match="after 3 attempt"):
        connections.call(dead, "test")
    assert len(tries) == 3


@pytest.mark.parametrize(
    ("reply", "advice"),
    [
        ("WRONGPASS invalid username-password pair or user is disabled.", "Check"),
        ("NOAUTH Authentication required.", "Redis requires a password"),
    ],
)
def test_refused_credentials_are_not_retried(reply: str, advice: str) -> None:
    """WRONGPASS and NOAUTH stay refused: tried once, worded as a refusal."""
    from redis._parsers.base import BaseParser

    url = "redis://app:hunter2@127.0.0.1:6399/0"
    connections = RedisConnections(RedisConfig(url=url, attempts=3))
    tries: list[int] = []

    def refused() -> None:
        tries.append(1)
        raise BaseParser.parse_error(reply)

    with pytest.raises(StoreUnavailable) as caught:
        connections.call(refused, "reserve")
    message = str(caught.value)
    assert len(tries) == 1
    assert message.startswith(
        "the Redis store at redis://app:***@127.0.0.1:6399/0 refused the "
        f"credentials given for reserve (not retried): {reply.rstrip('.')}. {advice}"
    )
    assert "attempt" not in message
    assert "hunter2" not in message
    assert "RedisConfig.url" in message
    assert caught.value.cause == f"reserve failed: credentials refused: {reply[:-1]}"


def test_a_wrong_password_is_refused_at_once_by_a_real_server() -> None:
    """A server with requirepass refuses a wrong password once, without waiting."""
    server = OwnRedis()
    server.start("--requirepass", "s3cret")
    try:
        config = RedisConfig(
            url=f"redis://:WRONGpw@127.0.0.1:{server.port}/0",
            attempts=3,
            retry_wait_s=1.0,
        )
        ledger = RedisLedger(config)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            ledger.reserve("h", [Line("task:a", 100)], 10, 0, 60)
        elapsed = time.monotonic() - started
        ledger.close()
    finally:
        server.kill()
    message = str(caught.value)
    assert elapsed < 0.9  # retries would wait retry_wait_s, 1 s, at least
    assert "refused the credentials given for reserve (not retried): WRONGPASS" in (
        message
    )
    assert "Check the user name and password" in message
    assert "WRONGpw" not in message


async def test_async_pool_queues_beyond_max_connections(
    redis_url: str, redis_prefix: str
) -> None:
    """200 concurrent async calls share 8 connections without an error."""
    config = RedisConfig(url=redis_url, max_connections=8)
    ledger = RedisLedger(config, prefix=redis_prefix)
    line = Line("team:x", 10_000)
    results = await asyncio.gather(
        *(ledger.areserve(f"h{i}", [line], 100, 0, 60) for i in range(200))
    )
    await ledger.aclose()
    assert sum(r is None for r in results) == 100


async def test_cancel_during_a_call_is_not_lost(redis_ledger: RedisLedger) -> None:
    """A task cancelled while its reserve is on the wire ends cancelled."""
    call = asyncio.create_task(
        redis_ledger.areserve("h", [Line("task:a", 100)], 10, 0, 60)
    )
    await asyncio.sleep(0)  # let it send the command
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call


def test_ledger_serves_successive_event_loops(redis_ledger: RedisLedger) -> None:
    """One ledger works from two asyncio.run calls in turn."""
    for hold_id in ("h1", "h2"):
        asyncio.run(redis_ledger.areserve(hold_id, [Line("task:a")], 5, 0, 60))
    balance = redis_ledger.balance("task:a")
    assert balance is not None
    assert balance.reserved_nanos == 10


# -- leases and lines: a line lives as long as the holds on it ---------------


def _rolling(limit_nanos: int = 100) -> RollingLine:
    """A rolling line of one second, which lives 61/60 s after a change."""
    return RollingLine("user:u#rolling:1s", limit_nanos, None, 61 / 60, 1.0)


def test_a_line_outlives_every_hold_on_it(redis_ledger: RedisLedger) -> None:
    """A call held longer than its rolling line's window keeps the line, so a
    second call that does not fit beside it is refused, as in memory."""
    line = _rolling()
    assert redis_ledger.reserve("long", [line], 80, 0, 30) is None
    time.sleep(1.3)  # past the line's own lifetime, the hold still live
    assert redis_ledger.reserve("second", [line], 60, 0, 30) is not None
    redis_ledger.settle("long", [line.key], 70, 0)
    balance = redis_ledger.balance(line.key)
    assert balance is not None
    assert (balance.spent_nanos, balance.reserved_nanos) == (70, 0)


def test_renew_keeps_the_holds_lines_alive(redis_ledger: RedisLedger) -> None:
    """A renewed hold keeps its lines as long as itself."""
    line = _rolling()
    assert redis_ledger.reserve("long", [line], 80, 0, 1.0) is None
    assert redis_ledger.renew("long", 30) is True
    time.sleep(1.5)  # past the first lease and the line's own lifetime
    balance = redis_ledger.balance(line.key)
    assert balance is not None
    assert balance.reserved_nanos == 80
    assert redis_ledger.reserve("second", [line], 60, 0, 30) is not None


def test_a_hold_reaped_after_its_line_was_made_again_leaves_it_alone(
    redis_ledger: RedisLedger,
) -> None:
    """Two holds outlive their line; a late settle of one makes the line
    again; reaping the other later takes nothing off the new line."""
    line = Line("team:x", 1000, None, ttl_s=0.1)
    assert redis_ledger.reserve("dead", [line], 300, 0, 0.2) is None
    assert redis_ledger.reserve("late", [line], 300, 0, 0.2) is None
    time.sleep(0.4)  # both holds and the line have lapsed, none reaped yet
    redis_ledger.settle("late", [line.key], 100, 0)
    balance = redis_ledger.balance(line.key)  # reaps "dead"
    assert balance is not None
    assert (balance.spent_nanos, balance.reserved_nanos) == (100, 0)
    assert redis_ledger.reserve("next", [line], 901, 0, 30) is not None


def test_a_hold_on_an_evicted_line_takes_nothing_off_the_new_one(
    redis_url: str, redis_ledger: RedisLedger
) -> None:
    """A line evicted under a hold is made again by the next call; when the
    old hold lapses, the new line keeps exactly the new call's hold."""
    line = Line("team:x", 1000)
    assert redis_ledger.reserve("old", [line], 300, 0, 0.2) is None
    client = redis.Redis.from_url(redis_url)
    client.delete(redis_ledger.ns + "l:" + line.key)
    client.close()
    time.sleep(0.01)  # the new line is made a millisecond or more later
    assert redis_ledger.reserve("new", [line], 500, 0, 30) is None
    time.sleep(0.3)
    balance = redis_ledger.balance(line.key)  # reaps "old"
    assert balance is not None
    assert balance.reserved_nanos == 500


def test_a_rolling_line_made_again_by_a_settle_keeps_its_window(
    redis_url: str, redis_ledger: RedisLedger
) -> None:
    """A rolling line lost under a live hold (evicted) is made again by the
    settle with its window and lease, so the spend rolls off."""
    line = _rolling()
    assert redis_ledger.reserve("h1", [line], 100, 0, 30) is None
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.delete(redis_ledger.ns + "l:" + line.key, redis_ledger.ns + "r:" + line.key)
    redis_ledger.settle("h1", [line.key], 100, 0)
    made = client.hgetall(redis_ledger.ns + "l:" + line.key)
    client.close()
    assert (made.get("wm"), made.get("ttl")) == ("1000", "1017")
    time.sleep(1.2)
    assert redis_ledger.reserve("h2", [line], 100, 0, 30) is None


def test_spend_on_a_line_made_without_its_window_rolls_off(
    redis_ledger: RedisLedger,
) -> None:
    """A settle with no hold left makes a lost rolling line without its
    window; the next reserve buckets that spend, which then rolls off while
    calls keep the line alive."""
    line = _rolling()
    redis_ledger.settle("orphan", [line.key], 100, 0)
    assert redis_ledger.reserve("h1", [line], 1, 0, 0.2) is not None
    for i in range(7):  # light traffic: the line never lapses
        time.sleep(0.2)
        redis_ledger.reserve(f"touch{i}", [line], 0, 0, 30)
        redis_ledger.release(f"touch{i}")
    assert redis_ledger.reserve("h2", [line], 100, 0, 30) is None


def test_reserves_prune_expired_lines_from_the_index(
    redis_url: str, redis_ledger: RedisLedger
) -> None:
    """Keys of lines that expired leave the index as new lines come (a line
    per task), without anyone listing the lines."""
    for i in range(30):
        line = Line(f"task:old{i}", 1000, None, ttl_s=0.1)
        redis_ledger.reserve(f"h{i}", [line], 1, 0, 0.1)
        redis_ledger.settle(f"h{i}", [line.key], 1, 0)
    time.sleep(0.3)
    for i in range(200):
        line = Line(f"task:new{i}", 1000, None, ttl_s=30)
        redis_ledger.reserve(f"new{i}", [line], 1, 0, 30)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    index = client.smembers(redis_ledger.ns + "lines")
    client.close()
    assert len([key for key in index if key.startswith("task:old")]) <= 5
    assert len(index) <= 205


def test_a_refusal_by_held_room_says_when_the_holds_lapse(
    redis_ledger: RedisLedger,
) -> None:
    """A call refused for room held by calls in flight (a stopped worker's)
    is told when that room comes back at the latest."""
    line = Line("team:search", 10**9)
    assert redis_ledger.reserve("stopped", [line], 10**9 - 100, 0, 30) is None
    refusal = redis_ledger.reserve("next", [line], 101, 0, 30)
    assert refusal is not None
    assert refusal.holds_lapse_s is not None
    assert 25 < refusal.holds_lapse_s <= 30
    gov = Governor(
        Policy(budgets=[Budget(scope="team", max_usd="1")]), ledger=redis_ledger
    )
    request = CallRequest(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        max_output_tokens=20,
    )
    with pytest.raises(BudgetExceeded) as refused, gov.task(team="search"):
        gov.begin_call(request)
    assert "keeps its hold until it lapses, at the latest in 30 s" in str(refused.value)


def test_a_settle_that_found_its_hold_expired_warns_once_a_minute(
    redis_ledger: RedisLedger, caplog: pytest.LogCaptureFixture
) -> None:
    """A settle whose hold lapsed first is charged and logs one WARNING a
    minute saying the line may end above its limit."""
    line = Line("team:x", 1000)
    for hold_id in ("h1", "h2"):
        assert redis_ledger.reserve(hold_id, [line], 60, 0, 0.1) is None
        time.sleep(0.2)
        assert redis_ledger.reserve(f"{hold_id}-next", [line], 60, 0, 30) is None
    with caplog.at_level(logging.WARNING, logger="governor.stores._redis"):
        redis_ledger.settle("h1", [line.key], 60, 0)
        redis_ledger.settle("h2", [line.key], 60, 0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "call h1 found no live hold on team:x" in warnings[0]
    assert "above their limits" in warnings[0]
    balance = redis_ledger.balance(line.key)
    assert balance is not None
    assert balance.spent_nanos == 120


def test_a_settle_of_no_lines_warns_nothing(
    redis_ledger: RedisLedger, caplog: pytest.LogCaptureFixture
) -> None:
    """A call no budget line limits (a policy with no budgets) has no hold to
    find and nothing to end above: its settle logs no warning."""
    with caplog.at_level(logging.WARNING, logger="governor.stores._redis"):
        redis_ledger.settle("h-none", [], 60, 0)
    assert [r for r in caplog.records if r.levelno == logging.WARNING] == []


def test_lines_and_holds_written_before_marks_keep_working(
    redis_url: str, redis_ledger: RedisLedger
) -> None:
    """A line and a hold in the layout of earlier versions (no marks, no
    hold deadline on the line) are settled and held as before."""
    ns = redis_ledger.ns
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.hset(ns + "l:team:x", mapping={"ln": 100, "sn": 10, "st": 0, "rn": 50})
    client.hset(ns + "l:team:x", mapping={"rt": 0})
    client.hset(
        ns + "h:old",
        mapping={"k": '["team:x"]', "n": 50, "t": 0, "dl": 2**52, "s": "held"},
    )
    client.zadd(ns + "holds", {"old": 2**52})
    client.close()
    assert redis_ledger.reserve("new", [Line("team:x", 100)], 41, 0, 30) is not None
    redis_ledger.settle("old", ["team:x"], 20, 0)
    assert redis_ledger.reserve("new", [Line("team:x", 100)], 70, 0, 30) is None
    balance = redis_ledger.balance("team:x")
    assert balance is not None
    assert (balance.spent_nanos, balance.reserved_nanos) == (30, 70)


# -- several processes -------------------------------------------------------


@pytest.mark.slow
def test_worker_processes_admit_exactly_what_fits(
    redis_url: str, redis_prefix: str
) -> None:
    """Four processes of concurrent calls admit exactly limit // amount calls."""
    nanos, tokens, fits = 7_000, 3, 100
    team = Line("team:search", nanos * fits + nanos - 1, None)
    org = Line("org:acme", None, 10**6)
    shared = (redis_url, redis_prefix, [team, org])
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(4, mp_context=ctx) as pool:
        futures = [
            pool.submit(spend_threads, *shared[:3], 8, 25, nanos, tokens),
            pool.submit(spend_threads, *shared[:3], 8, 25, nanos, tokens),
            pool.submit(spend_asyncio, *shared[:3], 200, nanos, tokens),
            pool.submit(spend_asyncio, *shared[:3], 200, nanos, tokens),
        ]
        admitted = sum(f.result(timeout=120) for f in futures)
    ledger = RedisLedger(redis_url, prefix=redis_prefix)
    balance = ledger.balance(team.key)
    ledger.close()
    assert admitted == fits
    assert balance is not None
    assert (balance.spent_nanos, balance.reserved_nanos) == (nanos * fits, 0)
    assert balance.spent_tokens == tokens * fits


@pytest.mark.slow
def test_killed_worker_budget_and_slot_come_back(
    redis_url: str, redis_prefix: str
) -> None:
    """A worker killed mid-call loses its hold and its slot when the lease ends."""
    line = Line("team:search", 1000, None)
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    worker = ctx.Process(
        target=hold_and_hang, args=(redis_url, redis_prefix, line, 1000, 1.0, ready)
    )
    worker.start()
    pid = ready.get(timeout=60)
    ledger = RedisLedger(redis_url, prefix=redis_prefix)
    semaphore = RedisSemaphore(line.key, 1, 1.0, config=redis_url, prefix=redis_prefix)
    assert ledger.reserve("blocked", [line], 1, 0, 60) is not None
    assert semaphore.in_use() == 1

    os.kill(pid, signal.SIGKILL)
    worker.join(timeout=30)
    admitted = _eventually(lambda: ledger.reserve("after", [line], 1000, 0, 60))
    token = semaphore.acquire(timeout_s=30)
    semaphore.release(token)
    ledger.close()
    assert worker.exitcode == -signal.SIGKILL
    assert admitted is True


def _eventually(reserve: Callable[[], object], limit_s: float = 30.0) -> bool:
    """Retry a reservation until it is admitted or ``limit_s`` passes."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if reserve() is None:
            return True
        time.sleep(0.1)
    return False


def test_a_token_limit_too_large_to_store_says_tokens() -> None:
    """The Redis bound on a token limit is given in tokens, not dollars."""
    from governor.stores._redis import _check_limits

    with pytest.raises(
        ConfigError, match=r"9007199254740991 tokens, got 1152921504606846976"
    ) as e:
        _check_limits(Line("team:x", limit_tokens=2**60))
    assert "dollars" not in str(e.value)


def test_listing_a_large_index_reads_it_in_batches_and_prunes_it(
    redis_url: str, redis_prefix: str
) -> None:
    """1,200 task lines, half expired: the live ones are listed, the others
    leave the index, and no single server call reads the whole set."""
    ledger = RedisLedger(redis_url, prefix=redis_prefix)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    for i in range(1200):
        ledger.settle(f"h{i}", [f"task:t{i:04d}"], 0, 1)
    index = redis_prefix + "{budgets}:lines"
    dead = [f"task:t{i:04d}" for i in range(0, 1200, 2)]
    client.delete(*[f"{redis_prefix}{{budgets}}:l:{key}" for key in dead])
    calls: list[str] = []
    real_call = ledger._conn.call

    def counted(fn: Any, what: str) -> Any:
        calls.append(what)
        return real_call(fn, what)

    ledger._conn.call = counted  # type: ignore[method-assign]
    listed = ledger.keys()
    assert listed == [f"task:t{i:04d}" for i in range(1, 1200, 2)]
    assert client.scard(index) == 600
    assert calls.count("keys") >= 2 * 3  # a scan and a check per batch of 500
