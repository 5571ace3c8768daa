"""Benchmark the Redis ledger: reserve + settle pairs against a bare round trip.

Run against a local Redis (keys go under a unique prefix and are deleted):

    python benchmarks/bench_redis_ledger.py --redis-url redis://127.0.0.1:6379/0

Each pair is one ``reserve`` over two lines (a task and a team, as the engine
sends them) followed by its ``settle``. Reported: pairs per second and the
p50/p99 latency of one pair, for one thread, eight threads and 200 concurrent
asyncio tasks, next to the p50/p99 of a bare ``PING`` measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass

import redis

from governor.stores import Line
from governor.stores._redis import RedisConfig, RedisLedger

BIG = 10**15


@dataclass
class Row:
    """One measured case."""

    case: str
    ops: int
    per_s: float
    p50_us: float
    p99_us: float


def _lines(index: int) -> list[Line]:
    return [Line(f"task:bench-{index // 10}", BIG, BIG, 3600), Line("team:bench", BIG)]


def _pair(ledger: RedisLedger, tag: str, index: int) -> float:
    hold_id = f"{tag}-{index}"
    lines = _lines(index)
    start = time.perf_counter()
    ledger.reserve(hold_id, lines, 1000, 10, 60)
    ledger.settle(hold_id, [line.key for line in lines], 900, 9)
    return time.perf_counter() - start


def _row(case: str, latencies: list[float], wall_s: float) -> Row:
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return Row(
        case,
        len(latencies),
        len(latencies) / wall_s,
        statistics.median(latencies) * 1e6,
        p99 * 1e6,
    )


def bench_ping(url: str, count: int) -> Row:
    """Time bare PING round trips on one connection."""
    client = redis.Redis.from_url(url)
    client.ping()
    latencies = []
    wall = time.perf_counter()
    for _ in range(count):
        start = time.perf_counter()
        client.ping()
        latencies.append(time.perf_counter() - start)
    row = _row(
        "bare PING round trip (sync, 1 thread)", latencies, time.perf_counter() - wall
    )
    client.close()
    return row


def bench_threads(ledger: RedisLedger, threads: int, count: int) -> Row:
    """Run ``count`` pairs split over ``threads`` threads."""
    latencies: list[float] = []
    lock = threading.Lock()

    def work(tag: str, n: int) -> None:
        mine = [_pair(ledger, tag, i) for i in range(n)]
        with lock:
            latencies.extend(mine)

    pool = [
        threading.Thread(target=work, args=(f"t{threads}-{k}", count // threads))
        for k in range(threads)
    ]
    wall = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    case = f"reserve+settle (sync, {threads} thread{'s' if threads > 1 else ''})"
    return _row(case, latencies, time.perf_counter() - wall)


def bench_asyncio(ledger: RedisLedger, concurrent: int, count: int) -> Row:
    """Run ``count`` pairs with ``concurrent`` asyncio tasks at a time."""

    async def pair(index: int, gate: asyncio.Semaphore) -> float:
        async with gate:
            hold_id = f"a-{index}"
            lines = _lines(index)
            start = time.perf_counter()
            await ledger.areserve(hold_id, lines, 1000, 10, 60)
            await ledger.asettle(hold_id, [line.key for line in lines], 900, 9)
            return time.perf_counter() - start

    async def run() -> tuple[list[float], float]:
        gate = asyncio.Semaphore(concurrent)
        await pair(-1, gate)  # connect outside the timing
        wall = time.perf_counter()
        latencies = await asyncio.gather(*(pair(i, gate) for i in range(count)))
        elapsed = time.perf_counter() - wall
        await ledger.aclose()
        return list(latencies), elapsed

    latencies, elapsed = asyncio.run(run())
    return _row(
        f"reserve+settle (asyncio, {concurrent} concurrent)", latencies, elapsed
    )


def _cleanup(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])
    client.close()


def _table(rows: list[Row], ping_p50_us: float) -> str:
    lines = [
        "| case | pairs | pairs/s | p50 (us) | p99 (us) | p50 / bare RTT p50 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ratio = row.p50_us / ping_p50_us
        lines.append(
            f"| {row.case} | {row.ops} | {row.per_s:,.0f} | {row.p50_us:,.0f} "
            f"| {row.p99_us:,.0f} | {ratio:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every case and print a Markdown table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--pairs", type=int, default=2000, help="pairs per case")
    parser.add_argument("--json", action="store_true", help="print JSON instead")
    args = parser.parse_args(argv)

    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    config = RedisConfig(url=args.redis_url, max_connections=32)
    ledger = RedisLedger(config, prefix=prefix)
    cases: list[Callable[[], Row]] = [
        lambda: bench_ping(args.redis_url, args.pairs),
        lambda: bench_threads(ledger, 1, args.pairs),
        lambda: bench_threads(ledger, 8, args.pairs),
        lambda: bench_asyncio(ledger, 200, args.pairs),
    ]
    try:
        _pair(ledger, "warm", 0)
        rows = [case() for case in cases]
    finally:
        ledger.close()
        _cleanup(args.redis_url, prefix)
    if args.json:
        print(json.dumps([asdict(row) for row in rows], indent=2))
    else:
        print(_table(rows, rows[0].p50_us))
    return 0


if __name__ == "__main__":
    sys.exit(main())
