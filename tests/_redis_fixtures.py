"""Redis fixtures and worker processes for the Redis store tests.

Tests use the Redis at ``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``)
under a key prefix unique to each test, and delete only keys under it. With
no Redis answering, the tests skip and say why, except under CI (``CI`` set),
where they fail: CI must never skip them. Tests that stop Redis start their
own ``redis-server`` on a free local port instead.

The worker functions live here, in a module that is cheap to import, because
``multiprocessing`` with ``spawn`` imports them by name in each child.

Test modules both import helpers from here and load it as a plugin
(``pytest_plugins``), so pytest must not try to rewrite it: PYTEST_DONT_REWRITE.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from governor.stores import Line
from governor.stores._redis import RedisLedger
from governor.stores._semaphore import RedisSemaphore

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def _unreachable(reason: str) -> None:
    message = (
        f"{reason}; start one (redis-server --port 6379 --save '' "
        "--appendonly no) or set REDIS_URL"
    )
    if os.environ.get("CI"):
        pytest.fail(f"CI must not skip Redis tests: {message}")
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The URL of a Redis that answers, or skip (fail under CI)."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1.0)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        _unreachable(f"no Redis answers at {REDIS_URL} ({exc})")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix unique to this test; its keys are deleted afterwards."""
    prefix = f"govtest-{uuid.uuid4().hex[:12]}:"
    yield prefix
    delete_prefix(redis_url, prefix)


@pytest.fixture
def redis_ledger(redis_url: str, redis_prefix: str) -> Iterator[RedisLedger]:
    """A RedisLedger on the shared Redis under this test's prefix."""
    ledger = RedisLedger(redis_url, prefix=redis_prefix)
    yield ledger
    ledger.close()


def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key under ``prefix`` and return how many there were."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        return len(keys)
    finally:
        client.close()


class OwnRedis:
    """A redis-server this test starts on a free 127.0.0.1 port, and may kill."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args: list[str] = []
        self.ping_kwargs: dict[str, Any] = {}
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> None:
        """Start the server (on the same port as before) and wait for it."""
        binary = shutil.which("redis-server")
        if binary is None:
            _unreachable("no redis-server binary on PATH")
        assert binary is not None
        self.args = list(extra) or self.args
        cmd = [binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        cmd += ["--save", "", "--appendonly", "no", *self.args]
        self._proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._wait_until_up()

    def start_tls(self, cert: str, key: str, password: str) -> None:
        """Start the server speaking only TLS, with a password."""
        self.url = f"rediss://:{password}@127.0.0.1:{self.port}/0"
        self.ping_kwargs = {"ssl_ca_certs": cert}
        self.start(
            "--port", "0", "--tls-port", str(self.port),
            "--tls-cert-file", cert, "--tls-key-file", key,
            "--tls-ca-cert-file", cert, "--tls-auth-clients", "no",
            "--requirepass", password,
        )  # fmt: skip

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): it accepts nothing and answers nothing."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server run again (SIGCONT)."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def _wait_until_up(self) -> None:
        client = redis.Redis.from_url(self._ping_url(), **self.ping_kwargs)
        try:
            for _ in range(200):
                try:
                    client.ping()
                    return
                except redis.exceptions.ConnectionError:
                    time.sleep(0.02)
            raise RuntimeError(f"redis-server on port {self.port} did not start")
        finally:
            client.close()

    def _ping_url(self) -> str:
        password = _flag(self.args, "--requirepass")
        if password is None or "@" in self.url:
            return self.url
        return f"redis://:{password}@127.0.0.1:{self.port}/0"


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    """A private redis-server, killed after the test."""
    server = OwnRedis()
    server.start()
    yield server
    server.kill()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


# -- worker processes (run under multiprocessing spawn) ------------------


def spend_threads(
    url: str,
    prefix: str,
    lines: list[Line],
    threads: int,
    calls: int,
    nanos: int,
    tokens: int,
) -> int:
    """Run ``threads`` x ``calls`` reserve+settle calls; return those admitted."""
    ledger = RedisLedger(url, prefix=prefix)

    def one(index: int) -> bool:
        hold_id = f"{os.getpid()}-{index}"
        if ledger.reserve(hold_id, lines, nanos, tokens, 60.0) is not None:
            return False
        ledger.settle(hold_id, [line.key for line in lines], nanos, tokens)
        return True

    with ThreadPoolExecutor(threads) as pool:
        admitted = sum(pool.map(one, range(threads * calls)))
    ledger.close()
    return admitted


def spend_asyncio(
    url: str,
    prefix: str,
    lines: list[Line],
    concurrent: int,
    nanos: int,
    tokens: int,
) -> int:
    """Run ``concurrent`` reserve+settle calls at once; return those admitted."""

    async def run() -> int:
        ledger = RedisLedger(url, prefix=prefix)

        async def one(index: int) -> bool:
            hold_id = f"{os.getpid()}-a{index}"
            if await ledger.areserve(hold_id, lines, nanos, tokens, 60.0):
                return False
            await ledger.asettle(hold_id, [line.key for line in lines], nanos, tokens)
            return True

        results = await asyncio.gather(*(one(i) for i in range(concurrent)))
        await ledger.aclose()
        return sum(results)

    return asyncio.run(run())


def hold_and_hang(
    url: str, prefix: str, line: Line, nanos: int, lease_s: float, ready: Any
) -> None:
    """Reserve, take a semaphore slot, report ready, then hang until killed."""
    ledger = RedisLedger(url, prefix=prefix)
    ledger.reserve("doomed", [line], nanos, 1, lease_s)
    RedisSemaphore(line.key, 1, lease_s, config=url, prefix=prefix).acquire(0)
    ready.put(os.getpid())
    time.sleep(600)


def slot_worker(
    url: str, prefix: str, key: str, limit: int, calls: int, counter: Any
) -> int:
    """Hold a Redis semaphore slot ``calls`` times in threads; track the peak."""
    semaphore = RedisSemaphore(key, limit, 30.0, config=url, prefix=prefix)

    def one(_: int) -> None:
        with semaphore.slot(timeout_s=60):
            with counter.get_lock():
                counter[0] += 1
                counter[1] = max(counter[1], counter[0])
            time.sleep(0.005)
            with counter.get_lock():
                counter[0] -= 1

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(calls)))
    return calls
