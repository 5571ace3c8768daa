"""A full connection pool is no outage, and bad Redis settings fail early.

Pool tests make the pool full by holding its only connection, so nothing
depends on timing; they use the shared Redis under a unique prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import pickle
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from governor import (
    Budget,
    ConfigError,
    Governor,
    Policy,
    SlotUnavailable,
    StoreUnavailable,
)
from governor.adapters.litellm import GovernedLiteLLM
from governor.stores import FailoverLedger, Line
from governor.stores._redis import (
    PoolBusy,
    PoolExhausted,
    RedisConfig,
    RedisConnections,
    RedisLedger,
    redact_url,
)

pytest_plugins = ["_redis_fixtures"]

LINE = Line("team:x", 10**9, None)
FULL = "No connection available."  # what redis-py's blocking pools raise


def _one_connection(url: str) -> RedisConfig:
    return RedisConfig(url=url, max_connections=1, pool_timeout_s=0.01)


@contextlib.contextmanager
def _busy(ledger: RedisLedger) -> Iterator[None]:
    """Hold the sync pool's only connection: every step finds the pool full."""
    pool = ledger.connections.client().connection_pool
    held = pool.get_connection()
    try:
        yield
    finally:
        pool.release(held)


@contextlib.asynccontextmanager
async def _abusy(ledger: RedisLedger) -> AsyncIterator[None]:
    """Hold the running loop's pool's only connection."""
    pool = ledger.connections.aclient().connection_pool
    held = await pool.get_connection()
    try:
        yield
    finally:
        await pool.release(held)


# -- a full pool ---------------------------------------------------------


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_a_full_pool_refuses_the_step_without_marking_the_store_down(
    redis_url: str, redis_prefix: str, mode: Any
) -> None:
    """The reserve is refused naming the pool and its settings; Redis is not
    counted as down, so the next reserve goes to Redis, in either mode."""
    ledger = RedisLedger(_one_connection(redis_url), prefix=redis_prefix)
    failover = FailoverLedger(ledger, mode=mode)
    with _busy(ledger), pytest.raises(PoolExhausted) as caught:
        failover.reserve("h1", [LINE], 10, 0, 60)
    error = caught.value
    assert isinstance(error, SlotUnavailable)
    assert not isinstance(error, StoreUnavailable)
    assert "connection pool" in str(error)
    assert "max_connections" in str(error)
    assert "pool_timeout_s" in str(error)
    assert "Check that Redis is running" not in str(error)
    assert (error.step, error.limit, error.timeout_s) == ("reserve", 1, 0.01)
    assert not failover.degraded
    assert failover.reserve("h2", [LINE], 10, 0, 60) is None
    ledger.close()


async def test_a_full_async_pool_refuses_the_step_without_marking_the_store_down(
    redis_url: str, redis_prefix: str
) -> None:
    """The async reserve is refused the same way."""
    ledger = RedisLedger(_one_connection(redis_url), prefix=redis_prefix)
    failover = FailoverLedger(ledger)
    async with _abusy(ledger):
        with pytest.raises(PoolExhausted, match="max_connections"):
            await failover.areserve("h1", [LINE], 10, 0, 60)
    assert not failover.degraded
    assert await failover.areserve("h2", [LINE], 10, 0, 60) is None
    await ledger.aclose()


def test_a_governed_call_refused_by_a_full_pool_leaves_the_next_one_alone(
    redis_url: str, redis_prefix: str
) -> None:
    """Through the governor: one call is refused, the store stays up."""
    ledger = RedisLedger(_one_connection(redis_url), prefix=redis_prefix)
    gov = Governor(Policy(budgets=[Budget(scope="team", max_usd="1")]), ledger=ledger)
    llm = GovernedLiteLLM(gov)
    messages = [{"role": "user", "content": "What is the capital of Peru?"}]
    kwargs: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": messages,
        "mock_response": "Lima",
        "max_tokens": 20,
        "metadata": {"team": "x"},
    }
    with _busy(ledger), pytest.raises(PoolExhausted):
        llm.completion(**kwargs)
    assert isinstance(gov.ledger, FailoverLedger)
    assert not gov.ledger.degraded
    llm.completion(**kwargs)
    balance = ledger.balance("team:x")
    assert balance is not None
    assert balance.spent_nanos > 0
    gov.close()


def test_a_settle_kept_out_by_a_full_pool_lands_in_the_background(
    redis_url: str, redis_prefix: str
) -> None:
    """The settle does not raise, the store is not marked down, and the
    background retries charge it once a connection is free."""
    ledger = RedisLedger(_one_connection(redis_url), prefix=redis_prefix)
    failover = FailoverLedger(ledger)
    assert failover.reserve("h", [LINE], 100, 0, 60) is None
    with _busy(ledger):
        failover.settle("h", [LINE.key], 40, 0)
        failover.release("other")
    assert not failover.degraded
    assert failover.pending_settles == 0
    assert ledger.connections.retries.drain(10.0) == 0
    balance = ledger.balance(LINE.key)
    assert balance is not None
    assert (balance.spent_nanos, balance.reserved_nanos) == (40, 0)
    ledger.close()


async def test_an_async_settle_kept_out_by_a_full_pool_lands_in_the_background(
    redis_url: str, redis_prefix: str
) -> None:
    """The async settle and release are handed to the background retries."""
    ledger = RedisLedger(_one_connection(redis_url), prefix=redis_prefix)
    failover = FailoverLedger(ledger)
    assert await failover.areserve("h", [LINE], 100, 0, 60) is None
    assert await failover.areserve("r", [LINE], 7, 0, 60) is None
    async with _abusy(ledger):
        await failover.asettle("h", [LINE.key], 40, 0)
        await failover.arelease("r")
    assert not failover.degraded
    retries = ledger.connections.retries
    assert await asyncio.to_thread(retries.drain, 10.0) == 0
    balance = ledger.balance(LINE.key)
    assert balance is not None
    assert (balance.spent_nanos, balance.reserved_nanos) == (40, 0)
    await ledger.aclose()
    ledger.close()


def test_a_full_pool_is_waited_for_once_but_a_settle_waits_again() -> None:
    """The pool wait is the bound for a reserve: no retry. A settle, which
    must land, tries `attempts` times and then raises StoreUnavailable, which
    its callers queue."""
    connections = RedisConnections(RedisConfig(attempts=3, retry_wait_s=0))
    tries: list[str] = []

    def full() -> None:
        tries.append("try")
        raise redis.exceptions.ConnectionError(FULL)

    with pytest.raises(PoolExhausted):
        connections.call(full, "reserve")
    assert len(tries) == 1
    tries.clear()
    with pytest.raises(PoolBusy) as caught:
        connections.call(full, "settle")
    assert len(tries) == 3
    assert isinstance(caught.value, StoreUnavailable)
    assert "connection pool exhausted" in (caught.value.cause or "")


async def test_a_full_async_pool_is_waited_for_once() -> None:
    """The async path classifies a full pool the same way."""
    connections = RedisConnections(RedisConfig(attempts=3, retry_wait_s=0))
    tries: list[str] = []

    async def full() -> None:
        tries.append("try")
        raise redis.exceptions.ConnectionError(FULL)

    with pytest.raises(PoolExhausted):
        await connections.acall(full, "acquire")
    assert len(tries) == 1


def test_pool_exhausted_survives_pickling() -> None:
    """The error crosses a process pool with its fields, like every other."""
    error = PoolExhausted("redis://:***@h:6379/0", "reserve", 4, 2.5)
    restored = pickle.loads(pickle.dumps(error))
    assert type(restored) is PoolExhausted
    assert str(restored) == str(error)
    assert vars(restored) == vars(error)
    assert restored.to_dict() == error.to_dict()
    assert error.to_dict()["code"] == "store_pool_exhausted"


# -- a database the server does not have ---------------------------------


def test_a_database_the_server_lacks_is_named(redis_url: str) -> None:
    """SELECT of a database out of range raises StoreUnavailable naming it,
    not redis-py's bare ResponseError from the governed call."""
    parts = urlsplit(redis_url)
    url = urlunsplit((parts.scheme, parts.netloc, "/99999", "", ""))
    ledger = RedisLedger(RedisConfig(url=url, attempts=1))
    with pytest.raises(StoreUnavailable, match="database 99999") as caught:
        ledger.reserve("h", [LINE], 10, 0, 60)
    assert "Check that Redis is running" not in str(caught.value)
    failover = FailoverLedger(ledger)
    with pytest.raises(StoreUnavailable, match="database 99999"):
        failover.reserve("h", [LINE], 10, 0, 60)
    ledger.close()


# -- settings checked when the config is made ----------------------------

URL = "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("socket_timeout_s", -1),
        ("socket_timeout_s", 0),
        ("socket_timeout_s", math.nan),
        ("socket_timeout_s", math.inf),
        ("socket_timeout_s", "3"),
        ("socket_timeout_s", True),
        ("connect_timeout_s", -5),
        ("connect_timeout_s", 0),
        ("pool_timeout_s", -1),
        ("pool_timeout_s", math.inf),
        ("retry_wait_s", -1),
        ("retry_wait_s", math.nan),
        ("max_connections", 2.5),
        ("max_connections", 0),
        ("max_connections", "8"),
        ("attempts", 0),
        ("attempts", 1.5),
    ],
)
def test_a_bad_setting_is_refused_when_the_config_is_made(
    field: str, value: object
) -> None:
    """The ConfigError names the setting, what it got, and what to give."""
    with pytest.raises(ConfigError, match=f"RedisConfig.{field} must be") as caught:
        RedisConfig(url=URL, **{field: value})
    assert repr(value) in str(caught.value)
    assert "such as" in str(caught.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pool_timeout_s", 0),
        ("retry_wait_s", 0),
        ("socket_timeout_s", 0.25),
        ("connect_timeout_s", 3),
        ("max_connections", 1),
    ],
)
def test_edge_settings_that_work_are_taken(field: str, value: object) -> None:
    """Zero waits (refuse or retry at once) and whole seconds are fine."""
    assert getattr(RedisConfig(url=URL, **{field: value}), field) == value


def test_a_url_that_is_not_a_string_is_refused() -> None:
    """The URL must be text."""
    with pytest.raises(ConfigError, match="must be a string"):
        RedisConfig(url=b"redis://127.0.0.1:6379/0")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://:s3cret@127.0.0.1:notaport/0", "port that is not a number"),
        ("redis://127.0.0.1:99999/0", "port that is not a number"),
        ("redis://127.0.0.1:6379/abc", "names database 'abc'"),
        ("redis://127.0.0.1:6379/-1", "names database '-1'"),
        ("redis://127.0.0.1:6379/0?socket_timeout=abc", "socket_timeout='abc'"),
        ("redis://127.0.0.1:6379/0?socket_timeout=0", "socket_timeout='0'"),
        ("redis://127.0.0.1:6379/0?socket_connect_timeout=-1", "'-1'"),
        ("redis://127.0.0.1:6379/0?max_connections=0", "max_connections='0'"),
        ("redis://127.0.0.1:6379/0?db=x", "db='x'"),
        ("unix:///var/run/redis/redis.sock?db=abc", "db='abc'"),
    ],
)
def test_a_bad_url_is_refused_when_the_config_is_made(url: str, says: str) -> None:
    """Port, database and option values are read at once, password hidden."""
    with pytest.raises(ConfigError, match=says) as caught:
        RedisLedger(url)
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379",
        "redis://127.0.0.1:6379/",
        "redis://127.0.0.1/3",
        "redis://[::1]:6379/2",
        "rediss://:pw@host:6380/2?socket_timeout=1.5&db=2",
        "unix:///var/run/redis/redis.sock?db=2",
    ],
)
def test_good_urls_are_taken(url: str) -> None:
    """No database, an index, IPv6, TLS and unix sockets all pass."""
    assert RedisConfig(url=url).url == url


def test_a_password_is_hidden_even_beside_a_bad_port() -> None:
    """redact_url never raises and keeps the host as written."""
    assert redact_url("redis://:pw@h:notaport/0") == "redis://:***@h:notaport/0"
    assert redact_url("redis://u:pw@[::1]:6379/0") == "redis://u:***@[::1]:6379/0"


def test_pool_exhausted_is_public_in_governor_stores() -> None:
    """Callers catch it as governor.stores.PoolExhausted, the class raised."""
    import governor.stores

    assert governor.stores.PoolExhausted is PoolExhausted
    assert "PoolExhausted" in governor.stores.__all__


def test_a_config_never_shows_its_password() -> None:
    """repr() of a config (logged, or in a traceback's locals) masks secrets."""
    config = RedisConfig(
        url="rediss://app:s3cret@127.0.0.1:6499/0",
        connection_kwargs={"ssl_ca_certs": "ca.pem", "password": "s3cret"},
    )
    shown = repr(config)
    assert "s3cret" not in shown
    assert "url='rediss://app:***@127.0.0.1:6499/0'" in shown
    assert "connection_kwargs={'ssl_ca_certs': 'ca.pem', 'password': '***'}" in shown


def test_a_password_given_as_a_url_option_is_hidden() -> None:
    assert (
        redact_url("unix:///run/redis.sock?db=1&password=pw")
        == "unix:///run/redis.sock?db=1&password=***"
    )
    assert redact_url("redis://h:6379/0?db=2") == "redis://h:6379/0?db=2"
    assert redact_url("redis://h/0?pass%77ord=pw") == "redis://h/0?pass%77ord=***"
