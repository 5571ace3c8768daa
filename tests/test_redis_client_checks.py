"""Redis clients and credentials that cannot work are named, with the fix.

A cache handed an asyncio client or a URL refuses it at construction (it
used to miss on every lookup); a Redis spend store that refuses the
password or an ACL rule is logged as a refusal, not as an outage; and the
ACL rules of docs/budgets-redis.md (Managed Redis) let the spend store write.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from _redis_fixtures import OwnRedis

from governor._errors import ConfigError
from governor._recorder import SpendRecorder
from governor.cache import ResponseCache
from governor.policies import Cache
from governor.spend import RedisSpendStore, SpendRecord, open_store
from governor.spend._redis import write_failure

pytest_plugins = ["_redis_fixtures"]

RECORDER = "governor._recorder"
PASSWORD = "client-checks-pw"
FAST = {"retry_initial_s": 0.02, "retry_max_s": 0.1}
DOCS = Path(__file__).resolve().parent.parent / "docs" / "budgets-redis.md"
MESSAGES = [{"role": "user", "content": "hi"}]


def _record(i: int = 0) -> SpendRecord:
    return SpendRecord(
        ts=datetime(2026, 12, 1, 9, 0, tzinfo=UTC),
        task_id="task",
        call_id=f"call-{i}",
        model="gpt-4o-mini",
        cost_usd=Decimal("0.001"),
    )


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == RECORDER and r.levelno == logging.WARNING
    ]


def _one_record_lost(store: Any, caplog: pytest.LogCaptureFixture) -> list[str]:
    """Submit a record to a store that refuses it; the recorder's warnings,
    once its close has given the record up."""
    recorder = SpendRecorder(store, **FAST)
    recorder.submit(_record())
    assert recorder.close(timeout=0.2) == 1
    return _warnings(caplog)


@pytest.fixture
def locked_redis() -> Iterator[OwnRedis]:
    """A private redis-server that requires PASSWORD, killed after the test."""
    server = OwnRedis()
    server.start("--requirepass", PASSWORD)
    yield server
    server.kill()


def _admin(server: OwnRedis) -> redis.Redis:
    return redis.Redis(port=server.port, password=PASSWORD)


def _url(server: OwnRedis, credentials: str) -> str:
    return f"redis://{credentials}@127.0.0.1:{server.port}/0"


# -- the cache refuses clients it cannot use ---------------------------------


def test_cache_refuses_an_asyncio_client() -> None:
    """An asyncio client's commands return coroutines: every lookup missed."""
    client = aredis.Redis(port=6379)
    with pytest.raises(ConfigError) as caught:
        ResponseCache(Cache(store="redis", semantic=False), redis_client=client)
    message = str(caught.value)
    assert "synchronous redis.Redis client" in message
    assert "redis.asyncio" in message
    assert "redis.Redis.from_url(url)" in message


def test_cache_refuses_a_url_string() -> None:
    """A URL is not a client: the error says how to make one from it."""
    with pytest.raises(ConfigError) as caught:
        ResponseCache(
            Cache(store="redis", semantic=False),
            redis_client="redis://127.0.0.1:6379/0",  # type: ignore[arg-type]
        )
    message = str(caught.value)
    assert "got a string" in message
    assert "redis.Redis.from_url(url)" in message
    assert "RedisCacheStore.from_url(url)" in message


def test_cache_still_takes_a_synchronous_client(
    redis_url: str, redis_prefix: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        cache = ResponseCache(
            Cache(store="redis", semantic=False, key_prefix=f"{redis_prefix}cache"),
            redis_client=client,
        )
        miss = cache.lookup(
            model="gpt-4o-mini", messages=MESSAGES, params={}, partition={}
        )
        assert not miss.hit
        assert miss.reason != "store_error"
    finally:
        client.close()


# -- which spend write failures are refusals -----------------------------------


def test_refusals_are_told_from_outages() -> None:
    url = "redis://:***@host:6379/0"
    wrong = write_failure(
        redis.exceptions.AuthenticationError("invalid username-password pair"), url
    )
    assert wrong.refused == "refused the credentials"
    assert wrong.advice is not None
    assert "spend store's URL (Governor(spend=...))" in wrong.advice
    assert "RedisLedger" not in wrong.advice
    noperm = write_failure(
        redis.exceptions.NoPermissionError("no permissions to run the 'multi'"), url
    )
    assert noperm.refused == "refused a command to the ACL user"
    assert noperm.advice is not None
    assert "docs/budgets-redis.md" in noperm.advice
    down = write_failure(redis.exceptions.ConnectionError("refused"), url)
    assert down == (None, None)
    tls = write_failure(
        redis.exceptions.TimeoutError("Timeout connecting to server"),
        "rediss://:***@host:6379/0",
    )
    assert tls.refused is None
    assert tls.advice is not None
    assert "use redis:// for such a server" in tls.advice


# -- the spend writer names refusals and keeps the records -----------------------


def test_a_wrong_password_is_a_refusal_and_the_records_wait(
    locked_redis: OwnRedis, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Logged as refused credentials, with the fix; once the server takes the
    password, the waiting record is written (retries go on as before)."""
    caplog.set_level(logging.WARNING, logger=RECORDER)
    store = RedisSpendStore.from_url(_url(locked_redis, ":wrong"), prefix=redis_prefix)
    recorder = SpendRecorder(store, **FAST)
    recorder.submit(_record())
    assert recorder.flush() == 1
    (warning,) = [line for line in _warnings(caplog) if "refused" in line]
    assert "refused the credentials" in warning
    assert "unreachable" not in warning
    assert "Check the user name and password in the spend store's URL" in warning
    assert ":wrong@" not in warning
    admin = _admin(locked_redis)
    try:
        admin.config_set("requirepass", "wrong")
        assert recorder.close(timeout=10) == 0
    finally:
        admin.close()
    assert recorder.written == 1


def test_records_lost_to_a_refusal_say_why(
    locked_redis: OwnRedis, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=RECORDER)
    store = RedisSpendStore.from_url(_url(locked_redis, ""), prefix=redis_prefix)
    first, *_, lost = _one_record_lost(store, caplog)
    assert "refused the credentials" in first
    assert "requires a password and none was given" in first
    assert "are lost: the store refused the credentials" in lost
    assert "requires a password and none was given" in lost


def test_a_missing_acl_rule_is_a_refusal_naming_the_docs(
    locked_redis: OwnRedis, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=RECORDER)
    user = f"u{uuid.uuid4().hex[:8]}"
    admin = _admin(locked_redis)
    try:
        admin.acl_setuser(
            user,
            enabled=True,
            passwords=["+userpw"],
            keys=[f"{redis_prefix}*"],
            commands=["+ping", "+@hash", "+@sortedset"],
        )
    finally:
        admin.close()
    store = RedisSpendStore.from_url(
        _url(locked_redis, f"{user}:userpw"), prefix=redis_prefix
    )
    first, *_, lost = _one_record_lost(store, caplog)
    assert "refused a command to the ACL user" in first
    assert "NoPermissionError" in first
    assert "docs/budgets-redis.md (Managed Redis)" in first
    assert "docs/budgets-redis.md" in lost


def test_a_tls_url_against_a_plain_server_names_tls(
    own_redis: OwnRedis, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An outage as before (retried), but the warning names the likely cause."""
    caplog.set_level(logging.WARNING, logger=RECORDER)
    url = f"rediss://127.0.0.1:{own_redis.port}/0?socket_connect_timeout=0.3"
    first = _one_record_lost(open_store(url, prefix=redis_prefix), caplog)[0]
    assert "is unreachable" in first
    assert "A rediss:// URL speaks TLS" in first


def test_an_outage_is_still_logged_as_one(caplog: pytest.LogCaptureFixture) -> None:
    """Connection refused: the outage warning as before, with no refusal."""
    caplog.set_level(logging.WARNING, logger=RECORDER)
    nobody = OwnRedis()  # a free port, no server started on it
    recorder = SpendRecorder(RedisSpendStore.from_url(nobody.url), **FAST)
    recorder.submit(_record())
    assert recorder.close(timeout=0.1) == 1
    warnings = _warnings(caplog)
    assert "is unreachable" in warnings[0]
    assert "retried with backoff" in warnings[0]
    assert not any("refused the" in line for line in warnings)


# -- the documented ACL rules are enough for the spend store -------------------


def _documented_rules() -> list[str]:
    """The ``+`` rules of the Managed Redis paragraph of budgets-redis.md."""
    text = DOCS.read_text(encoding="utf-8")
    start = text.index("**Managed Redis**")
    paragraph = text[start : text.index("\n\n", start)]
    return sorted(set(re.findall(r"\+[@\w|]+", paragraph)))


@pytest.mark.parametrize("leave_out", [(), ("+multi", "+exec")])
def test_the_documented_acl_rules_let_the_spend_store_work(
    locked_redis: OwnRedis, redis_prefix: str, leave_out: tuple[str, ...]
) -> None:
    """The rules as documented write, read and clear; without the spend
    store's transaction rules (the list as it was), writes are refused."""
    rules = [rule for rule in _documented_rules() if rule not in leave_out]
    assert {"+multi", "+exec", "+hsetnx", "+zadd"} <= {*rules, *leave_out}
    user = f"u{uuid.uuid4().hex[:8]}"
    admin = _admin(locked_redis)
    try:
        admin.acl_setuser(
            user,
            enabled=True,
            passwords=["+userpw"],
            keys=[f"{redis_prefix}*"],
            commands=rules,
        )
    finally:
        admin.close()
    url = _url(locked_redis, f"{user}:userpw")
    with RedisSpendStore.from_url(url, prefix=redis_prefix) as store:
        if leave_out:
            with pytest.raises(redis.exceptions.NoPermissionError):
                store.record(_record())
            return
        store.record_many([_record(0), _record(1)])
        assert [r.call_id for r in store.query()] == ["call-0", "call-1"]
        store.clear()
        assert list(store.query()) == []
