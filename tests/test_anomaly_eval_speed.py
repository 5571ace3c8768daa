"""`governor eval anomalies` on long traces: one pass per configuration, progress,
and a defaults-only run, with the same figures as the straightforward replay."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import governor.anomaly._eval as anomaly_eval
import governor.cli._eval_anomalies as eval_cli
from governor.anomaly import Anomalies
from governor.anomaly._detector import AnomalyDetector
from governor.anomaly._eval import (
    SPIKES,
    EvalResult,
    KindResult,
    Trace,
    evaluate,
    load_trace,
    run_eval,
)
from governor.cli import main
from governor.spend._time import to_us

SAMPLE = Path(__file__).parent / "data" / "azure_trace_sample.csv"
FAST = Anomalies(interval_s=10, window_intervals=10, min_history_intervals=5)
_S = 1_000_000


def _reference(trace: Trace, settings: Anomalies, trials: int, seed: int) -> EvalResult:
    """The evaluation as first written: each kind's trials and the clean trace
    replayed separately, and each trial's clean stretch on its own copy."""
    kinds = []
    for index, spike in enumerate(SPIKES):
        delays: list[float] = []
        by_scope: dict[str, int] = {}
        for scope_index, scope in enumerate(sorted(trace.events)):
            rng = np.random.default_rng([seed, index, scope_index])
            starts = anomaly_eval._starts(settings, trace, scope, spike, trials, rng)
            found = _reference_trials(settings, trace, scope, spike, starts, rng)
            by_scope[scope] = len(found)
            delays += found
        total = trials * len(trace.events)
        kinds.append(
            KindResult(spike.kind, total, len(delays), tuple(delays), by_scope)
        )
    clean = []
    hours = 0.0
    for scope, events in sorted(trace.events.items()):
        start = anomaly_eval._eval_start(settings, events)
        clean += anomaly_eval._feed(AnomalyDetector(settings), scope, events)
        hours += (events[-1][0] - start) / (3600 * _S)
    return anomaly_eval._result(trace, settings, tuple(kinds), clean, hours)


def _reference_trials(
    settings: Anomalies,
    trace: Trace,
    scope: str,
    spike: anomaly_eval.Spike,
    starts: list[int],
    rng: np.random.Generator,
) -> list[float]:
    events = trace.events[scope]
    rate = sum(e[1] for e in events) / ((events[-1][0] - events[0][0]) / _S)
    grace_us = round(settings.interval_s * _S)
    detector = AnomalyDetector(settings)
    delays: list[float] = []
    position = 0
    for start in starts:
        while position < len(events) and events[position][0] < start:
            ts, tokens, nanos = events[position]
            detector.observe_units(scope, ts, usd_nanos=nanos, tokens=tokens)
            position += 1
        end = start + round(spike.duration_s * _S) + grace_us
        tail = [e for e in events[position:] if e[0] < end]
        injected = anomaly_eval._inject(trace, scope, spike, start, rng, rate)
        merged = sorted(tail + injected)
        trial = anomaly_eval._feed(copy.deepcopy(detector), scope, merged)
        clean = anomaly_eval._feed(copy.deepcopy(detector), scope, tail)
        baseline = {(to_us(a.ts), a.metric, a.rule) for a in clean}
        fresh = [a for a in trial if (to_us(a.ts), a.metric, a.rule) not in baseline]
        if fresh:
            delays.append((to_us(fresh[0].ts) - start) / _S)
    return delays


@pytest.mark.parametrize(
    ("settings", "seed"),
    [
        (FAST, 0),
        (FAST.model_copy(update={"k": 2.0}), 3),
        (FAST.model_copy(update={"burst_factor": 2.0, "count_noise": False}), 5),
    ],
)
def test_one_pass_gives_the_figures_of_separate_passes(
    settings: Anomalies, seed: int
) -> None:
    """Branching trials off the clean pass changes no figure."""
    trace = load_trace(SAMPLE)
    fast = evaluate(trace, settings, trials=6, seed=seed).to_json_dict()
    assert fast == _reference(trace, settings, 6, seed).to_json_dict()
    assert fast["false_alerts"] + sum(k["detected"] for k in fast["spikes"]) > 0


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the timestamp of every call fed to any detector."""
    fed: list[int] = []
    observe = AnomalyDetector.observe_units

    def counted(self: AnomalyDetector, scope: str, ts: int, **kw: Any) -> Any:
        fed.append(ts)
        return observe(self, scope, ts, **kw)

    monkeypatch.setattr(AnomalyDetector, "observe_units", counted)
    return fed


def test_calls_before_the_first_spike_are_replayed_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A configuration replays the trace once, not once per kind and again clean."""
    trace = load_trace(SAMPLE)
    (events,) = trace.events.values()
    fed = _counting(monkeypatch)
    evaluate(trace, FAST, trials=2, seed=0)
    assert fed.count(events[0][0]) == 1
    assert len(fed) < 2 * len(events)


def test_a_configuration_run_twice_is_evaluated_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The defaults are also a sweep point and a burst-sweep point: one run."""
    seen: list[Anomalies] = []

    def recording(trace: Trace, settings: Anomalies, **kw: Any) -> EvalResult:
        seen.append(settings)
        return evaluate(trace, settings, **kw)

    monkeypatch.setattr(anomaly_eval, "evaluate", recording)
    document = run_eval(SAMPLE, trials=1)
    assert len(seen) == len({s.model_dump_json() for s in seen}) == 14
    (sweep_point,) = [
        r for r in document["sweep"] if (r["k"], r["window_intervals"]) == (4.0, 30)
    ]
    assert sweep_point == document["defaults"] == document["burst_sweep"][0]


def test_progress_counts_calls_over_every_configuration() -> None:
    """Progress starts at 0 and ends at 14 configurations x the trace's calls."""
    seen: list[tuple[int, int]] = []
    run_eval(SAMPLE, trials=1, progress=lambda done, total: seen.append((done, total)))
    assert seen[0] == (0, 14 * 599)
    assert seen[-1] == (14 * 599, 14 * 599)
    assert [done for done, _ in seen] == sorted({done for done, _ in seen})


def test_defaults_only_runs_one_configuration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``defaults_only`` gives the same defaults and no sweep."""
    full = run_eval(SAMPLE, trials=2)
    seen: list[Anomalies] = []

    def recording(trace: Trace, settings: Anomalies, **kw: Any) -> EvalResult:
        seen.append(settings)
        return evaluate(trace, settings, **kw)

    monkeypatch.setattr(anomaly_eval, "evaluate", recording)
    alone = run_eval(SAMPLE, trials=2, defaults_only=True)
    assert seen == [Anomalies()]
    assert alone["defaults"] == full["defaults"]
    assert not {"sweep", "burst_sweep", "variants"} & alone.keys()


def test_cli_defaults_only_prints_one_row(capsys: pytest.CaptureFixture[str]) -> None:
    """``--defaults-only`` prints the defaults row alone."""
    assert main(["eval", "anomalies", str(SAMPLE), "--defaults-only"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line[:2] == "| "]
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| **defaults**"]


def _lines(text: str) -> Iterator[str]:
    return (line for line in text.splitlines() if line)


def test_cli_prints_progress_on_stderr_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Progress goes to stderr, so --json output stays one document."""
    monkeypatch.setattr(eval_cli, "_PROGRESS_CALLS", 1000)
    assert main(["eval", "anomalies", str(SAMPLE), "--json", "--trials", "1"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["defaults"]["k"] == 4.0
    lines = list(_lines(captured.err))
    assert lines[0] == "governor eval anomalies: replayed 0/8,386 calls (0%)"
    assert lines[-1] == "governor eval anomalies: replayed 8,386/8,386 calls (100%)"
    assert 3 <= len(lines) <= 22


def test_cli_is_quiet_on_short_traces(capsys: pytest.CaptureFixture[str]) -> None:
    """Under 100,000 replayed calls in all, nothing is printed on stderr."""
    assert main(["eval", "anomalies", str(SAMPLE), "--json", "--trials", "1"]) == 0
    assert capsys.readouterr().err == ""
