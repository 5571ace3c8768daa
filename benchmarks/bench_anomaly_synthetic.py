"""False alerts on steady synthetic traffic, and how fast a 10x runaway is caught.

Calls arrive as a Poisson process (exponential gaps) at a rate that is
constant, follows a daily cycle, drifts, or steps up for business hours;
each call costs $0.01 and 1,000 tokens, plus or minus 20 % (uniform). One
scope is fed through ``AnomalyDetector`` with the default ``Anomalies()``
settings (``--k`` changes ``k``). A false alert is any alert on these
workloads, which have no anomaly in them; reported per scope-day, with the
alerting intervals.

The runaway trials run a steady rate for two hours, then ten times that rate
from a random second on, and report the seconds from the runaway's start to
the first alert (median / p90 / max over the trials).

Run:  python benchmarks/bench_anomaly_synthetic.py [--days 7] [--seeds 3] [--k K]
      [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
from collections.abc import Callable, Iterator
from typing import Any

from governor.anomaly import Anomalies, AnomalyDetector

DAY_S = 86_400
MINUTE_S = 60
T0_US = 1_767_225_600 * 1_000_000  # 2026-01-01T00:00:00Z
Rate = Callable[[float], float]  # seconds since start -> calls per minute


def steady(per_minute: float) -> Rate:
    return lambda t: per_minute


def daily_cycle(t: float) -> float:
    """5 calls a minute at midnight, 50 at noon, a sine in between."""
    phase = 2 * math.pi * (t % DAY_S) / DAY_S
    return 27.5 - 22.5 * math.cos(phase)


def business_hours(t: float) -> float:
    """2 calls a minute at night, 40 from 9:00 to 17:00, a 15-minute ramp."""
    hour = (t % DAY_S) / 3600
    if 9 <= hour < 17:
        return 40.0
    if 8.75 <= hour < 9:
        return 2 + 38 * (hour - 8.75) / 0.25
    return 2.0


def drift(t: float) -> float:
    """From 10 calls a minute, 2 % more each minute for 3 hours, then level."""
    return 10 * 1.02 ** min((t % DAY_S) / 60, 180)


WORKLOADS: dict[str, Rate] = {
    "steady 20/min": steady(20),
    "steady 1/min": steady(1),
    "daily cycle 5-50/min": daily_cycle,
    "business hours 2-40/min": business_hours,
    "drift +2 %/min for 3 h": drift,
}


def arrivals(rate: Rate, span_s: float, rng: random.Random) -> Iterator[float]:
    """Poisson arrival times by thinning at the rate's peak."""
    peak = max(rate(s) for s in range(0, int(min(span_s, DAY_S)), 60)) / MINUTE_S
    t = 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= span_s:
            return
        if rng.random() * peak < rate(t) / MINUTE_S:
            yield t


def feed(
    detector: AnomalyDetector, times: Iterator[float], rng: random.Random
) -> list[int]:
    """Feed one call per arrival; the epoch microseconds of each alert."""
    alerts: list[int] = []
    for t in times:
        size = rng.uniform(0.8, 1.2)
        ts = T0_US + int(t * 1_000_000)
        found = detector.observe_units(
            "team:search",
            ts,
            usd_nanos=int(10_000_000 * size),
            tokens=int(1000 * size),
        )
        alerts += [ts] * len(found)
    return alerts


def false_alerts(
    rate: Rate, days: float, seeds: int, settings: Anomalies
) -> dict[str, float]:
    """Alerts and alerting intervals per scope-day on a workload."""
    alerts, intervals = 0, 0
    for seed in range(seeds):
        rng = random.Random(seed)
        found = feed(AnomalyDetector(settings), arrivals(rate, days * DAY_S, rng), rng)
        interval_us = int(settings.interval_s * 1_000_000)
        alerts += len(found)
        intervals += len({ts // interval_us for ts in found})
    scope_days = days * seeds
    return {
        "scope_days": scope_days,
        "alerts": alerts,
        "alerts_per_scope_day": round(alerts / scope_days, 3),
        "alerting_intervals_per_scope_day": round(intervals / scope_days, 3),
    }


def _quantile(ordered: list[float], q: float) -> float:
    """The q-quantile by linear interpolation between closest ranks."""
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def runaway(per_minute: float, trials: int, settings: Anomalies) -> dict[str, Any]:
    """Seconds from a 10x step in the call rate to the first alert."""
    delays: list[float] = []
    for seed in range(trials):
        rng = random.Random(1000 + seed)
        start = 7200 + rng.uniform(0, 3600)

        def rate(t: float, start: float = start) -> float:
            return per_minute * (10 if t >= start else 1)

        times = arrivals(rate, start + 900, rng)
        found = feed(AnomalyDetector(settings), times, rng)
        after = [ts for ts in found if ts >= T0_US + int(start * 1_000_000)]
        if after:
            delays.append((after[0] - T0_US) / 1_000_000 - start)
    ordered = sorted(delays)
    return {
        "rate_per_minute": per_minute,
        "trials": trials,
        "caught": len(delays),
        "median_delay_s": round(statistics.median(ordered), 1) if ordered else None,
        "p90_delay_s": round(_quantile(ordered, 0.9), 1) if ordered else None,
        "max_delay_s": round(ordered[-1], 1) if ordered else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=7.0, help="days per seed (7)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per workload (3)")
    parser.add_argument("--trials", type=int, default=20, help="runaway trials (20)")
    parser.add_argument("--k", type=float, help="Anomalies(k=...) (the default)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    settings = Anomalies() if args.k is None else Anomalies(k=args.k)
    document = {
        "k": settings.k,
        "false_alerts": {
            name: false_alerts(rate, args.days, args.seeds, settings)
            for name, rate in WORKLOADS.items()
        },
        "runaway_10x": [runaway(r, args.trials, settings) for r in (20.0, 1.0)],
    }
    if args.json:
        print(json.dumps(document, indent=2))
        return
    print(f"k = {settings.k:g}\n")
    print("| workload | scope-days | alerts | per scope-day | alerting intervals/day |")
    print("|---|---|---|---|---|")
    for name, row in document["false_alerts"].items():
        print(
            f"| {name} | {row['scope_days']:g} | {row['alerts']} | "
            f"{row['alerts_per_scope_day']:g} | "
            f"{row['alerting_intervals_per_scope_day']:g} |"
        )
    print()
    print("| 10x runaway from | caught | delay s (median / p90 / max) |")
    print("|---|---|---|")
    for row in document["runaway_10x"]:
        print(
            f"| {row['rate_per_minute']:g} calls/min | {row['caught']}/{row['trials']} "
            f"| {row['median_delay_s']} / {row['p90_delay_s']} / {row['max_delay_s']} |"
        )


if __name__ == "__main__":
    main()
