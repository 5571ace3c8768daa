"""Texts that threads ask a local embedder for at once go in one batch."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from governor.cache._embed import _Batcher


def _vector(text: str) -> list[float]:
    """A row that says which text it belongs to."""
    return [float(len(text)), float(sum(map(ord, text)))]


class SlowEngine:
    """Embeds a batch in a fixed time, recording each batch's texts."""

    def __init__(self, seconds: float = 0.05, fail_on: str | None = None) -> None:
        self.seconds = seconds
        self.fail_on = fail_on
        self.batches: list[list[str]] = []
        self.lock = threading.Lock()
        self.running = 0
        self.most_at_once = 0

    def __call__(self, texts: list[str]) -> Any:
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            self.batches.append(list(texts))
        try:
            time.sleep(self.seconds)
            if self.fail_on is not None and self.fail_on in texts:
                raise RuntimeError(f"engine failed on {self.fail_on!r}")
            return np.array([_vector(t) for t in texts], dtype=np.float32)
        finally:
            with self.lock:
                self.running -= 1


def _ask_all(batcher: _Batcher, groups: list[list[str]]) -> list[Any]:
    """Ask for each group from its own thread, all at once."""
    results: list[Any] = [None] * len(groups)
    start = threading.Barrier(len(groups))

    def ask(i: int) -> None:
        start.wait()
        try:
            results[i] = batcher.embed(groups[i])
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(groups))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads)
    return results


def test_threads_asking_at_once_share_batches_and_get_their_own_rows() -> None:
    """Twenty threads are served by a few batches, never two at once, and
    each thread gets the rows of its own texts, in order."""
    engine = SlowEngine()
    batcher = _Batcher(engine)
    groups = [[f"q{i}"] if i % 3 else [f"q{i}", f"q{i}-b"] for i in range(20)]
    results = _ask_all(batcher, groups)
    for group, rows in zip(groups, results, strict=True):
        assert np.asarray(rows).tolist() == [_vector(t) for t in group]
    assert engine.most_at_once == 1
    assert len(engine.batches) < len(groups)
    assert sorted(t for b in engine.batches for t in b) == sorted(
        t for g in groups for t in g
    )


def test_a_batch_never_passes_its_size_unless_one_ask_is_larger() -> None:
    """Batches hold at most max_texts texts; a single larger ask goes alone."""
    engine = SlowEngine()
    batcher = _Batcher(engine, max_texts=4)
    groups = [["a", "b"], ["c"], ["d", "e", "f"], ["g"], [str(i) for i in range(6)]]
    results = _ask_all(batcher, groups)
    assert [len(np.asarray(r)) for r in results] == [2, 1, 3, 1, 6]
    assert all(len(b) <= 4 or len(b) == 6 for b in engine.batches)
    assert 6 in [len(b) for b in engine.batches]


def test_an_engine_error_reaches_the_asks_of_its_batch_and_the_next_ask_works() -> None:
    """A failing batch raises in every thread it served; the batcher is free
    again afterwards."""
    engine = SlowEngine(fail_on="bad")
    batcher = _Batcher(engine)
    first = batcher.embed(["fine"])
    with pytest.raises(RuntimeError, match="engine failed"):
        batcher.embed(["bad"])
    after = batcher.embed(["fine again"])
    assert (np.asarray(first).tolist(), np.asarray(after).tolist()) == (
        [_vector("fine")],
        [_vector("fine again")],
    )


class GatedEngine(SlowEngine):
    """Holds its first batch until ``release`` is set, so that the asks made
    meanwhile gather, in order, into the next batch."""

    def __init__(self, fail_with: BaseException | None = None) -> None:
        super().__init__(seconds=0.0)
        self.release = threading.Event()
        self.first_running = threading.Event()
        self.fail_with = fail_with

    def __call__(self, texts: list[str]) -> Any:
        if not self.batches:
            self.first_running.set()
            assert self.release.wait(10)
        if self.fail_with is not None and "poison" in texts:
            with self.lock:
                self.batches.append(list(texts))
            raise self.fail_with
        return super().__call__(texts)


def _gather_behind_a_held_batch(
    engine: GatedEngine, later: list[list[str]]
) -> dict[str, Any]:
    """Ask ["first"] (held), then each of ``later`` in turn, queued behind it;
    release the first batch; each thread's result or error by its first text."""
    batcher = _Batcher(engine)
    results: dict[str, Any] = {}

    def ask(texts: list[str]) -> None:
        try:
            results[texts[0]] = batcher.embed(texts)
        except BaseException as exc:  # the interrupt stays in its thread
            results[texts[0]] = exc

    threads = [threading.Thread(target=ask, args=(["first"],))]
    threads[0].start()
    assert engine.first_running.wait(10)
    for texts in later:
        threads.append(threading.Thread(target=ask, args=(texts,)))
        threads[-1].start()
        deadline = time.monotonic() + 10
        while len(batcher._waiting) < len(threads) - 1:  # queued, in order
            assert time.monotonic() < deadline
            time.sleep(0.001)
    engine.release.set()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads)
    return results


def test_a_failed_batch_gives_each_other_thread_an_error_of_its_own() -> None:
    """The thread whose turn failed raises the engine's error; the others of
    its batch each raise a BatchFailed of their own, caused by it."""
    from governor.cache._embed import BatchFailed

    failure = ValueError("engine choked")
    results = _gather_behind_a_held_batch(
        GatedEngine(fail_with=failure), [["poison"], ["x"], ["y"]]
    )
    assert results["poison"] is failure
    for name in ("x", "y"):
        assert isinstance(results[name], BatchFailed)
        assert results[name].__cause__ is failure
    assert results["x"] is not results["y"]
    assert np.asarray(results["first"]).tolist() == [_vector("first")]


def test_an_interrupted_leader_leaves_the_others_to_the_next_batch() -> None:
    """Ctrl-C in the thread embedding a batch is raised there only: the other
    threads' texts are embedded in the next batch."""
    engine = GatedEngine(fail_with=KeyboardInterrupt())
    results = _gather_behind_a_held_batch(engine, [["poison"], ["x"], ["y"]])
    assert isinstance(results["poison"], KeyboardInterrupt)
    assert np.asarray(results["x"]).tolist() == [_vector("x")]
    assert np.asarray(results["y"]).tolist() == [_vector("y")]
    assert engine.batches == [["first"], ["poison", "x", "y"], ["x", "y"]]


def test_an_interrupt_before_the_lead_is_taken_strands_no_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A thread interrupted after it became the leader but before it led
    hands the lead on: the next ask is served, not left waiting."""
    batcher = _Batcher(SlowEngine(seconds=0.0))
    lead = _Batcher._lead
    calls = []

    def interrupted_once(self: _Batcher, own: Any) -> None:
        calls.append(own)
        if len(calls) == 1:
            raise KeyboardInterrupt
        lead(self, own)

    monkeypatch.setattr(_Batcher, "_lead", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        batcher.embed(["interrupted"])
    served: list[Any] = []
    thread = threading.Thread(target=lambda: served.append(batcher.embed(["next"])))
    thread.start()
    thread.join(5)
    assert not thread.is_alive()
    assert np.asarray(served[0]).tolist() == [_vector("next")]
