"""Redis outages and refusals around a call: nothing spent is lost or stuck.

Each test breaks its own redis-server (or a switched in-memory store), never
the shared one beyond its own prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import pytest
import redis
from _redis_fixtures import OwnRedis
from _switched_store import SwitchedStore

from governor import Budget, Fanout, Governor, Policy, StoreUnavailable
from governor._calls import CallRequest, CallResult
from governor.pricing import Usage
from governor.stores import FailoverLedger, Line, MemoryLedger, RedisConfig
from governor.stores._failover import EVENT_CAP_OPEN
from governor.stores._redis import RedisLedger, refusal_advice
from governor.stores._semaphore import RedisSemaphore

pytest_plugins = ["_redis_fixtures"]

LINE = Line("team:x", 10**9, None)
MESSAGES = [{"role": "user", "content": "What is the capital of Peru?"}]
USAGE = Usage(prompt_tokens=10, completion_tokens=5)


def _spent(store: MemoryLedger, key: str = "team:x") -> int:
    balance = MemoryLedger.balance(store, key)
    return -1 if balance is None else balance.spent_nanos


def _eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def _records(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _config(server: OwnRedis) -> RedisConfig:
    return RedisConfig(
        url=server.url,
        attempts=1,
        socket_timeout_s=0.3,
        connect_timeout_s=0.3,
    )


def _governor(
    ledger: object,
    spend: Path | None = None,
    mode: Literal["closed", "open"] = "closed",
    caps: dict[str, int] | None = None,
) -> Governor:
    fanout = Fanout(scope_caps=caps or {}, on_cap="refuse")
    policy = Policy(
        budgets=[Budget(scope="team", max_usd="1")],
        failure_mode=mode,
        fanout=fanout,
    )
    return Governor(
        policy,
        ledger=ledger,
        spend=str(spend) if spend else None,  # type: ignore[arg-type]
    )


def _request() -> CallRequest:
    return CallRequest(model="gpt-4o-mini", messages=MESSAGES, max_output_tokens=20)


@pytest.fixture
def server() -> Iterator[OwnRedis]:
    """A private redis-server, resumed and killed after the test."""
    own = OwnRedis()
    own.start()
    yield own
    with contextlib.suppress(AssertionError):  # killed by the test
        own.resume()
    own.kill()


# -- 1. queued settles reach the store without another call --------------


def test_a_queued_settle_is_written_without_another_call() -> None:
    """Settles queued in an outage reach the store on their own once it is back."""
    store = SwitchedStore()
    ledger = FailoverLedger(store, mode="closed", probe_interval_s=0.05)
    ledger.reserve("h1", [LINE], 60, 0, 60)
    store.down = True
    ledger.settle("h1", ["team:x"], 40, 0)
    store.down = False
    assert _eventually(lambda: _spent(store) == 40)
    assert _eventually(lambda: not ledger.degraded)
    assert ledger.pending_settles == 0


def test_close_writes_queued_settles_when_the_store_is_back(tmp_path: Path) -> None:
    """Governor.close() gives queued settles time to reach the store."""
    store = SwitchedStore()
    ledger = FailoverLedger(store, mode="open", probe_interval_s=60)
    gov = _governor(ledger, tmp_path / "spend.jsonl", mode="open")
    store.down = True
    with gov.task(team="search"):
        gov.end_call(gov.begin_call(_request()), CallResult(usage=USAGE))
    store.down = False
    gov.close(timeout_s=2)
    (record,) = _records(tmp_path / "spend.jsonl")
    assert _spent(store, "team:search") == round(float(record["cost_usd"]) * 1e9)
    assert ledger.pending_settles == 0


def test_close_warns_of_settles_it_cannot_write(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A store still down at close: a WARNING names the settles and their cost."""
    store = SwitchedStore()
    ledger = FailoverLedger(store, mode="open", probe_interval_s=60)
    gov = _governor(ledger, mode="open")
    store.down = True
    with gov.task(team="search"):
        cost = gov.end_call(gov.begin_call(_request()), CallResult(usage=USAGE))
    with caplog.at_level(logging.WARNING, logger="governor._engine"):
        gov.close(timeout_s=0.2)
    (message,) = [
        r.getMessage() for r in caplog.records if r.name == "governor._engine"
    ]
    assert f"1 settle(s) totalling ${cost}" in message
    assert "Bring the store back" in message


def test_recovery_with_nothing_queued_says_no_settles_were_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The recovery log claims queued settles only when some were written."""
    store = SwitchedStore()
    ledger = FailoverLedger(store, mode="closed", probe_interval_s=0)
    store.down = True
    with pytest.raises(StoreUnavailable):
        ledger.reserve("h1", [LINE], 10, 0, 60)
    store.down = False
    with caplog.at_level(logging.WARNING, logger="governor.stores._failover"):
        assert ledger.reserve("h2", [LINE], 10, 0, 60) is None
    assert caplog.records[-1].getMessage() == "budget store answers again"


# -- 2. fan-out caps in Redis follow the failure mode --------------------


def test_a_slot_release_that_cannot_reach_redis_keeps_the_answer(
    server: OwnRedis, tmp_path: Path
) -> None:
    """Redis stalls mid-call: the call returns, is recorded, and frees its slot."""
    spend = tmp_path / "spend.jsonl"
    ledger = RedisLedger(_config(server), prefix="t:")
    gov = _governor(ledger, spend, caps={"team": 1})
    gov.ledger.primary.connections.retries.interval_s = 0.05  # type: ignore[attr-defined]
    gov.ledger._probe_interval_s = 0.05  # type: ignore[attr-defined]
    with gov.task(team="search"):
        admission = gov.begin_call(_request())
        server.pause()
        cost = gov.end_call(admission, CallResult(usage=USAGE))
    server.resume()
    assert cost > 0
    semaphore = RedisSemaphore(
        "slots:team:search", 1, 900, config=server.url, prefix="t:"
    )
    assert _eventually(lambda: semaphore.in_use() == 0)
    # The queued settle is written and the store counts as up again.
    assert _eventually(lambda: gov.ledger.pending_settles == 0)  # type: ignore[attr-defined]
    assert _eventually(lambda: not gov.ledger.degraded)  # type: ignore[attr-defined]
    with gov.task(team="search"):  # the cap of 1 is free again
        gov.end_call(gov.begin_call(_request()), CallResult(usage=USAGE))
    gov.close(timeout_s=2)
    assert [r["outcome"] for r in _records(spend)] == ["ok", "ok"]
    balance = RedisLedger(server.url, prefix="t:").balance(admission.keys[0])
    assert balance is not None
    assert balance.spent_nanos == 2 * round(cost * 10**9)


def test_open_mode_admits_a_capped_call_while_redis_is_down(
    server: OwnRedis,
) -> None:
    """failure_mode='open': a cap whose Redis is down is skipped, with an event."""
    events: list[str] = []
    ledger = FailoverLedger(
        RedisLedger(_config(server), prefix="t:"),
        mode="open",
        on_degraded=events.append,
    )
    gov = _governor(ledger, mode="open", caps={"team": 1})
    server.kill()
    with gov.task(team="search") as task:
        gov.end_call(gov.begin_call(_request()), CallResult(usage=USAGE))
    assert task.report().cost_usd > 0
    assert EVENT_CAP_OPEN in events


def test_closed_mode_refuses_a_capped_call_with_accurate_advice(
    server: OwnRedis,
) -> None:
    """failure_mode='closed': the refusal names the cap and what open would do."""
    gov = _governor(RedisLedger(_config(server), prefix="t:"), caps={"team": 1})
    server.kill()
    with pytest.raises(StoreUnavailable) as info, gov.task(team="search"):
        gov.begin_call(_request())
    message = str(info.value)
    assert message.startswith(
        "fan-out slot refused: the Redis store holding the fan-out cap on "
        "'team:search' is unavailable (acquire failed: "
    )
    assert "fan-out cap on 'team:search'" in message
    assert "admit calls without the cap" in message
    assert "shadow budget" not in message


# -- 3. a Redis that refuses writes counts as down -----------------------


def _fill(server: OwnRedis) -> None:
    client = redis.Redis.from_url(server.url)
    client.config_set("maxmemory", 1)  # our own server: every write is OOM
    client.close()


def test_an_out_of_memory_settle_is_queued_not_raised(server: OwnRedis) -> None:
    """OOM on settle: queued, and written once Redis has memory again."""
    ledger = FailoverLedger(
        RedisLedger(_config(server), prefix="t:"), probe_interval_s=0.05
    )
    assert ledger.reserve("h1", [LINE], 60, 0, 60) is None
    _fill(server)
    ledger.settle("h1", ["team:x"], 40, 0)
    assert ledger.pending_settles == 1
    redis.Redis.from_url(server.url).config_set("maxmemory", 0)
    balance = RedisLedger(server.url, prefix="t:")
    assert _eventually(lambda: ledger.pending_settles == 0)
    found = balance.balance("team:x")
    assert found is not None
    assert (found.spent_nanos, found.reserved_nanos) == (40, 0)


def test_an_out_of_memory_reserve_fails_closed_naming_the_cause(
    server: OwnRedis,
) -> None:
    """OOM on reserve, closed mode: StoreUnavailable says OOM and what to do."""
    ledger = FailoverLedger(RedisLedger(_config(server), prefix="t:"))
    _fill(server)
    with pytest.raises(StoreUnavailable) as info:
        ledger.reserve("h1", [LINE], 60, 0, 60)
    message = str(info.value)
    assert "OOM" in message
    assert "raise maxmemory" in message
    assert "failure_mode='open'" in message


def test_an_out_of_memory_reserve_fails_open_under_the_shadow(
    server: OwnRedis,
) -> None:
    """OOM on reserve, open mode: admitted under the shadow budget."""
    ledger = FailoverLedger(RedisLedger(_config(server), prefix="t:"), mode="open")
    _fill(server)
    assert ledger.reserve("h1", [LINE], 60, 0, 60) is None
    assert ledger.degraded


@pytest.mark.parametrize(
    ("reply", "advice"),
    [
        ("MISCONF Redis is configured to save RDB snapshots", "snapshot"),
        ("NOPERM this user has no permissions", "ACL"),
        ("ERR The user executing the script can't run this command", "ACL"),
        ("READONLY You can't write against a read only replica.", "primary"),
        ("WRONGTYPE Operation against a key", None),
    ],
)
def test_server_refusals_are_told_apart(reply: str, advice: str | None) -> None:
    """Replies that need the server changed get advice; others are bugs."""
    from redis._parsers.base import BaseParser

    found = refusal_advice(BaseParser.parse_error(reply))
    assert (found is None) if advice is None else (advice in (found or ""))


# -- 4. a reserve or acquire that times out is undone --------------------


def test_a_timed_out_reserve_is_released_once_redis_answers(
    server: OwnRedis,
) -> None:
    """Closed mode: a reserve the server runs late does not pin the budget."""
    ledger = FailoverLedger(
        RedisLedger(_config(server), prefix="t:"), probe_interval_s=0.05
    )
    assert ledger.reserve("warm", [LINE], 1, 0, 900) is None
    ledger.release("warm")
    server.pause()
    with pytest.raises(StoreUnavailable):
        ledger.reserve("late", [LINE], 500, 0, 900)
    server.resume()
    reader = RedisLedger(server.url, prefix="t:")
    assert _eventually(lambda: ledger.pending_releases == 0)
    found = reader.balance("team:x")
    assert found is not None
    assert found.reserved_nanos == 0


def test_a_reserve_arriving_after_its_release_holds_nothing(
    redis_ledger: RedisLedger,
) -> None:
    """A release that overtakes its reserve still wins."""
    assert redis_ledger.reserve("other", [LINE], 1, 0, 900) is None
    redis_ledger.release("h1")
    assert redis_ledger.reserve("h1", [LINE], 500, 0, 900) is None
    found = redis_ledger.balance("team:x")
    assert found is not None
    assert found.reserved_nanos == 1


def test_a_timed_out_slot_acquire_is_given_back(server: OwnRedis) -> None:
    """An acquire the server runs late does not keep its slot for a lease."""
    semaphore = RedisSemaphore("team:x", 1, 900, config=_config(server))
    semaphore.connections.retries.interval_s = 0.05
    semaphore.release(semaphore.acquire(0))
    server.pause()
    with pytest.raises(StoreUnavailable):
        semaphore.acquire(0)
    server.resume()
    assert _eventually(lambda: semaphore.connections.retries.pending == 0)
    assert semaphore.in_use() == 0


# -- 5. a settle cut off by a cancellation is still recorded -------------


def test_a_call_cancelled_while_settling_is_recorded_and_charged_once(
    tmp_path: Path,
) -> None:
    """wait_for cuts a stalled settle: the record and the store agree."""
    spend = tmp_path / "spend.jsonl"
    store = SwitchedStore()
    store.stall_s = 2.0
    ledger = FailoverLedger(store, probe_interval_s=0.05)
    gov = _governor(ledger, spend)

    async def cut_off() -> None:
        async with gov.atask(team="search"):
            admission = await gov.abegin_call(_request())
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(
                    gov.aend_call(admission, CallResult(usage=USAGE)), 0.2
                )

    asyncio.run(cut_off())
    gov.close(timeout_s=2)
    (record,) = _records(spend)
    assert _spent(store, "team:search") == round(float(record["cost_usd"]) * 1e9)


# -- 6. keys made by a settle expire -------------------------------------


def test_a_settle_after_its_line_vanished_gives_the_line_a_ttl(
    redis_url: str, redis_ledger: RedisLedger
) -> None:
    """A line evicted or lost mid-call comes back with a lease, not for ever."""
    assert redis_ledger.reserve("h1", [LINE], 60, 0, 60) is None
    client = redis.Redis.from_url(redis_url)
    client.delete(redis_ledger.ns + "l:team:x")
    redis_ledger.settle("h1", ["team:x"], 40, 0)
    ttl_ms = client.pttl(redis_ledger.ns + "l:team:x")
    client.close()
    assert 0 < ttl_ms <= 86_400_000
