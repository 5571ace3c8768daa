"""Operating the Redis ledger: warnings about settings that lose budgets.

Workers that disagree on a line's limit, a server that may evict budget
keys, and a line index that lost lines. Tests that need a server configured
to evict start a private ``redis-server`` (see ``_redis_fixtures``); the
shared one at ``REDIS_URL`` is never reconfigured.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
from _redis_fixtures import OwnRedis

from governor import Budget, Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM
from governor.stores import Line
from governor.stores._redis import RedisLedger

LOGGER = "governor.stores._redis"
MESSAGES = [{"role": "user", "content": "What is the capital of Peru?"}]


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno == logging.WARNING and record.name == LOGGER
    ]


@contextmanager
def _server(*args: str) -> Iterator[OwnRedis]:
    server = OwnRedis()
    server.start(*args)
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def evicting_redis() -> Iterator[OwnRedis]:
    """A private redis-server with maxmemory and allkeys-lru."""
    with _server("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru") as server:
        yield server


# -- workers that disagree on a limit ------------------------------------


def test_two_governors_with_different_limits_on_one_prefix_are_warned(
    redis_url: str, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A stale worker (or another app on the prefix) whose policy gives a
    line another limit is told so, once per line per process, with what to
    do; what each enforces is unchanged."""
    stale = Governor(
        Policy(budgets=[Budget(scope="team", max_usd="0.005")]),
        ledger=RedisLedger(redis_url, prefix=redis_prefix),
    )
    fresh = Governor(
        Policy(budgets=[Budget(scope="team", max_usd="0.001")]),
        ledger=RedisLedger(redis_url, prefix=redis_prefix),
    )
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(3):
            for gov in (stale, fresh):
                with gov.task(team="search"):
                    GovernedLiteLLM(gov).completion(
                        model="gpt-4o-mini",
                        messages=MESSAGES,
                        mock_response="Lima",
                        max_tokens=20,
                    )
    warnings = _warnings(caplog)
    assert len(warnings) == 2, warnings
    fresh_says, stale_says = warnings
    assert "budget line 'team:search'" in fresh_says
    assert "a limit of $0.001, but another worker" in fresh_says
    assert "had stored $0.005" in fresh_says
    assert f"sharing the prefix {redis_prefix!r}" in fresh_says
    assert "Run one policy on every worker that shares the prefix" in fresh_says
    assert "give different apps different prefixes" in fresh_says
    assert "a limit of $0.005" in stale_says
    assert "had stored $0.001" in stale_says
    stale.close()
    fresh.close()


def test_disagreeing_token_limits_are_warned_per_line(
    redis_ledger: RedisLedger, redis_url: str, redis_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """Token limits count too, and each line is warned of on its own."""
    other = RedisLedger(redis_url, prefix=redis_prefix)
    team, user = Line("team:a", None, 1000), Line("user:b", 10**9)
    assert other.reserve("o1", [team, user], 1, 1, 30) is None
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        mine = [Line("team:a", None, 2000), Line("user:b", 10**9)]
        assert redis_ledger.reserve("m1", mine, 1, 1, 30) is None
        assert redis_ledger.reserve("m2", [Line("user:b", 2 * 10**9)], 1, 1, 30) is None
    warnings = _warnings(caplog)
    assert len(warnings) == 2, warnings
    assert "'team:a'" in warnings[0]
    assert "a limit of 2,000 tokens" in warnings[0]
    assert "stored 1,000 tokens" in warnings[0]
    assert "'user:b'" in warnings[1]
    assert "a limit of $2" in warnings[1]
    assert "stored $1." in warnings[1]
    other.close()


def test_a_refused_reserve_warns_of_a_disagreeing_limit_too(
    redis_ledger: RedisLedger, redis_url: str, redis_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """The worker with the lower limit is warned even when it refuses."""
    other = RedisLedger(redis_url, prefix=redis_prefix)
    assert other.reserve("o1", [Line("team:a", 1000)], 900, 0, 30) is None
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        refusal = redis_ledger.reserve("m1", [Line("team:a", 500)], 1, 0, 30)
    assert refusal is not None
    assert refusal.balance.limit_nanos == 500
    warnings = _warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "'team:a'" in warnings[0]
    other.close()


def test_a_process_changing_its_own_limit_is_not_warned(
    redis_ledger: RedisLedger, caplog: pytest.LogCaptureFixture
) -> None:
    """Auto-tighten and its restore change the limit one process sends: no
    other worker disagrees, so nothing is said."""
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for i, limit in enumerate((1000, 500, 1000, None)):
            line = Line("team:a", limit)
            assert redis_ledger.reserve(f"h{i}", [line], 1, 0, 30) is None
    assert _warnings(caplog) == []


# -- a server that may evict budget keys ---------------------------------


def test_a_server_that_may_evict_is_warned_of_once(
    evicting_redis: OwnRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """maxmemory with allkeys-lru: one WARNING at the first reserve, naming
    what can be lost and the fix."""
    ledger = RedisLedger(evicting_redis.url)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for i in range(3):
            assert ledger.reserve(f"h{i}", [Line("team:a", 10**9)], 1, 0, 30) is None
    warnings = _warnings(caplog)
    assert len(warnings) == 1, warnings
    assert f"the Redis at {evicting_redis.url}" in warnings[0]
    assert "maxmemory 67108864 bytes with maxmemory-policy allkeys-lru" in warnings[0]
    assert "a budget line (its spend comes back at zero" in warnings[0]
    assert "the line index" in warnings[0]
    assert "and a hold" in warnings[0]
    assert "Set maxmemory-policy noeviction" in warnings[0]
    assert "a Redis of their own" in warnings[0]
    ledger.close()


def test_an_async_ledger_warns_of_eviction_too(
    evicting_redis: OwnRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """areserve checks the server as reserve does."""

    async def run() -> None:
        ledger = RedisLedger(evicting_redis.url)
        for i in range(2):
            assert await ledger.areserve(f"h{i}", [Line("t:a", 10)], 1, 0, 30) is None
        await ledger.aclose()

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        asyncio.run(run())
    warnings = _warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "maxmemory-policy allkeys-lru" in warnings[0]


@pytest.mark.parametrize(
    "args",
    [
        ("--maxmemory", "64mb", "--maxmemory-policy", "noeviction"),
        ("--maxmemory", "0", "--maxmemory-policy", "volatile-lru"),
    ],
    ids=["noeviction", "no-maxmemory"],
)
def test_a_server_that_never_evicts_is_not_warned_of(
    args: tuple[str, ...], caplog: pytest.LogCaptureFixture
) -> None:
    """noeviction, or no maxmemory at all: nothing is said."""
    with _server(*args) as server:
        ledger = RedisLedger(server.url)
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            assert ledger.reserve("h", [Line("team:a", 10**9)], 1, 0, 30) is None
        ledger.close()
    assert _warnings(caplog) == []


def test_a_volatile_policy_names_the_keys_with_an_expiry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """volatile-*: only keys with an expiry go, and the warning says which."""
    with _server("--maxmemory", "64mb", "--maxmemory-policy", "volatile-ttl") as server:
        ledger = RedisLedger(server.url)
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            assert ledger.reserve("h", [Line("team:a", 10**9)], 1, 0, 30) is None
        ledger.close()
    warnings = _warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "maxmemory-policy volatile-ttl" in warnings[0]
    assert "keys with an expiry: a budget line" in warnings[0]


_ACL = ("~*", "&*", "+@all")


@pytest.mark.parametrize(
    ("denied", "warned"),
    [(("-info",), True), (("-info", "-config"), False)],
    ids=["config-get-only", "neither"],
)
def test_memory_settings_read_under_acls(
    denied: tuple[str, ...], warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A user refused INFO is checked with CONFIG GET; a user refused both
    is told nothing, and its reserves work as before."""
    args = ("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru")
    user = ("--user", "ops", "on", ">s3cret", *_ACL, *denied)
    with _server(*args, *user) as server:
        ledger = RedisLedger(f"redis://ops:s3cret@127.0.0.1:{server.port}/0")
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            for i in range(2):
                assert ledger.reserve(f"h{i}", [Line("t:a", 10)], 1, 0, 30) is None
        ledger.close()
    warnings = _warnings(caplog)
    assert len(warnings) == (1 if warned else 0), warnings


# -- what eviction leaves behind -----------------------------------------


def test_a_reserve_puts_its_line_back_in_a_lost_index(
    redis_url: str, redis_ledger: RedisLedger
) -> None:
    """An index evicted (or emptied) is refilled by the next reserve of each
    line, so `budget status` and `reset` see the lines again."""
    lines = [Line("team:a", 10**9), Line("user:b", 10**9)]
    assert redis_ledger.reserve("h1", lines, 1, 0, 30) is None
    client = redis.Redis.from_url(redis_url)
    client.delete(redis_ledger.ns + "lines")
    client.close()
    assert redis_ledger.keys() == []
    assert redis_ledger.reserve("h2", lines, 1, 0, 30) is None
    assert redis_ledger.keys() == ["team:a", "user:b"]


def test_a_settle_without_its_hold_names_eviction_as_a_cause(
    redis_url: str, redis_ledger: RedisLedger, caplog: pytest.LogCaptureFixture
) -> None:
    """A hold hash evicted by Redis: the settle's warning names eviction."""
    line = Line("team:a", 1000)
    assert redis_ledger.reserve("h1", [line], 60, 0, 30) is None
    client = redis.Redis.from_url(redis_url)
    client.delete(redis_ledger.ns + "h:h1")
    client.close()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        redis_ledger.settle("h1", [line.key], 60, 0)
    warnings = _warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "found no live hold on team:a" in warnings[0]
    assert "Redis evicted the hold" in warnings[0]
    assert "maxmemory-policy other than noeviction" in warnings[0]
