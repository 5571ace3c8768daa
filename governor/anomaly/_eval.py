"""Replay request traces through the anomaly detector with injected spikes.

The trace (e.g. the Azure LLM inference trace 2023) gives real arrival times
and token counts per service; each service is one scope. Spikes of two kinds
are injected at seeded random times, one per trial, and the detector's first
new alert gives the detection delay. Alerts on the trace without injections
count as false alerts. See ``docs/anomalies.md`` for the method and results.
"""

from __future__ import annotations

import bisect
import copy
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import numpy as np

from governor._errors import ConfigError
from governor._money import usd_to_nanos
from governor.anomaly._detector import Alert, AnomalyDetector
from governor.anomaly._settings import Anomalies
from governor.anomaly._trace_csv import read_rows, rows_at, trace_files
from governor.anomaly._trace_span import (
    IDLE_GAP_S,
    IDLE_SHARE,
    Idle,
    Stamps,
    idle_stretches,
    kept_span,
    shown_duration,
    shown_time,
)
from governor.spend._time import to_us

__all__ = [
    "SPIKES",
    "EvalResult",
    "Spike",
    "Trace",
    "evaluate",
    "load_trace",
    "run_eval",
]

Event = tuple[int, int, int]  # (epoch microseconds, tokens, nano-dollars)
SpikeKind = Literal["loop", "burst"]
_S = 1_000_000


@dataclass(frozen=True, slots=True)
class Spike:
    """An injected anomaly, sized from the scope's own mean token rate.

    ``share`` is the injected tokens as a multiple of the scope's mean tokens
    per ``share_of_s`` seconds; the calls are spread over ``duration_s``.
    A ``loop`` sends one call every ``period_s`` (plus or minus half a second)
    with a prompt growing linearly from 0.5x to 1.5x of the per-call mean, as
    an agent that re-sends its growing history does. A ``burst`` sends
    ``calls`` calls at uniform random times inside ``duration_s``, as a
    prompt-injection or abuse spike does.
    """

    kind: SpikeKind
    duration_s: float
    share: float
    share_of_s: float
    calls: int = 0
    period_s: float = 0.0


SPIKES: tuple[Spike, ...] = (
    Spike("loop", duration_s=300, share=0.5, share_of_s=300, period_s=3.0),
    Spike("burst", duration_s=10, share=1.0, share_of_s=60, calls=20),
)


@dataclass(frozen=True, slots=True)
class Trace:
    """Events per scope, priced, in time order, and the file of each scope.

    ``warnings`` says what the reader left out or found doubtful: rows far
    from the rest of their file, a scope idle for most of its span.
    """

    events: dict[str, list[Event]]
    model: str
    input_nanos_per_token: int
    output_nanos_per_token: int
    median_output: dict[str, int]
    sources: dict[str, Path] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def load_trace(path: Path, *, model: str = "gpt-4o-mini") -> Trace:
    """Read Azure-trace CSV files (one file, or a folder of them) and price them.

    Each file ``<name>.csv`` or ``<name>.csv.gz`` with columns ``TIMESTAMP,
    ContextTokens, GeneratedTokens`` becomes scope ``team:<name>``, less a
    leading ``AzureLLMInferenceTrace_``: ``AzureLLMInferenceTrace_code.csv`` is
    ``team:code`` and ``AzureLLMInferenceTrace_code_1week.csv`` is
    ``team:code_1week``. Two files with the same scope are refused. Timestamps
    are ISO 8601 (UTC unless they carry an offset) or Unix seconds; a file
    that mixes times with and without an offset is refused. Tokens are
    priced at ``model``'s list price from LiteLLM's bundled price map.

    A few rows at either end of a file set apart from the rest by a long
    pause (a wrong date or offset) are left out with a warning naming them
    (:func:`governor.anomaly._trace_span.kept_span`), and a scope without
    calls for most of its span is warned of; a scope whose rows all have 0
    tokens is refused, since the spikes are sized from its token rate.
    """
    from governor.pricing import RateCard

    sources = trace_files(path)
    rate = RateCard().rate(model)
    price_in = usd_to_nanos(rate.input_per_token)
    price_out = usd_to_nanos(rate.output_per_token)
    events: dict[str, list[Event]] = {}
    outputs: dict[str, int] = {}
    warnings: list[str] = []
    for scope, file in sources.items():
        rows = read_rows(file)
        stamps = np.fromiter((row[0] for row in rows), np.int64, len(rows))
        low, high = kept_span(stamps)
        if (low, high) != (0, len(rows)):
            warnings.append(_strays(file, stamps, low, high))
            del rows[high:], rows[:low]
            stamps = stamps[low:high]
        if not any(i or o for _, i, o in rows):
            raise ConfigError(
                f"{file}: every row of scope {scope} has 0 ContextTokens and 0 "
                "GeneratedTokens; the spikes are sized from the scope's mean "
                "token rate, so a trace without token counts cannot be "
                "evaluated: give one that records them"
            )
        idle = idle_stretches(stamps)
        if idle is not None and idle.share > IDLE_SHARE:
            warnings.append(_idle(file, scope, idle))
        outputs[scope] = round(statistics.median(o for _, _, o in rows))
        # In place: a week-long trace is millions of rows, not held twice.
        for n, (ts, i, o) in enumerate(rows):
            rows[n] = (ts, i + o, i * price_in + o * price_out)
        events[scope] = rows
    return Trace(events, model, price_in, price_out, outputs, sources, tuple(warnings))


# Stray rows named in a warning; the rest are counted.
_NAMED_ROWS = 5


def _strays(file: Path, stamps: Stamps, low: int, high: int) -> str:
    """Name the rows left out at either end of a file, and the span kept."""
    left_out = {int(s) for s in stamps[:low]} | {int(s) for s in stamps[high:]}
    found = sorted(rows_at(file, left_out))
    named = ", ".join(f"{line} ({text})" for line, text in found[:_NAMED_ROWS])
    more = len(found) - _NAMED_ROWS
    count = len(stamps) - (high - low)
    rows, lines = ("a row", "line") if count == 1 else (f"{count} rows", "lines")
    pauses = []
    if low:
        gap = (stamps[low] - stamps[low - 1]) / _S
        pauses.append(f"{shown_duration(gap)} before the first of the others")
    if high < len(stamps):
        gap = (stamps[high] - stamps[high - 1]) / _S
        pauses.append(f"{shown_duration(gap)} after the last of the others")
    return (
        f"{file}: left out {rows} far from the other {high - low}: {lines} "
        f"{named}{f' and {more} more' if more > 0 else ''}, "
        f"{' and '.join(pauses)}. The evaluation covers "
        f"{shown_time(int(stamps[low]))} to {shown_time(int(stamps[high - 1]))}, "
        "where the calls are; a wrong date or UTC offset on those rows? Fix or "
        "drop them"
    )


def _idle(file: Path, scope: str, idle: Idle) -> str:
    """Say that a scope has no calls for most of its span."""
    start, end = idle.longest
    return (
        f"{file}: scope {scope} has no calls for {idle.share:.0%} of its "
        f"{shown_duration(idle.span_us / _S)} (pauses over "
        f"{shown_duration(IDLE_GAP_S)}; the longest "
        f"{shown_duration((end - start) / _S)}, from {shown_time(start)} to "
        f"{shown_time(end)}). Spikes are placed at uniform times over the span, "
        "so most land where the trace is idle: the figures describe an idle "
        "service. Give the busy part of the trace if that is not what you meant"
    )


def _inject(
    trace: Trace,
    scope: str,
    spike: Spike,
    start_us: int,
    rng: np.random.Generator,
    rate: float,
) -> list[Event]:
    """The spike's calls; ``rate`` is the scope's mean tokens per second."""
    total = spike.share * rate * spike.share_of_s
    if spike.kind == "loop":
        count = max(int(spike.duration_s // spike.period_s), 2)
        offsets = np.arange(count) * spike.period_s + rng.uniform(-0.5, 0.5, count)
        weights = 0.5 + np.arange(count) / (count - 1)
    else:
        count = spike.calls
        offsets = np.sort(rng.uniform(0, spike.duration_s, count))
        weights = np.ones(count)
    sizes = total * weights / weights.sum()
    out_tokens = trace.median_output[scope]
    injected: list[Event] = []
    for offset, size in zip(offsets, sizes, strict=True):
        ts = start_us + max(int(offset * _S), 0)
        prompt = max(int(size) - out_tokens, 1)
        nanos = (
            prompt * trace.input_nanos_per_token
            + out_tokens * trace.output_nanos_per_token
        )
        injected.append((ts, prompt + out_tokens, nanos))
    return injected


@dataclass(frozen=True, slots=True)
class KindResult:
    """Detection of one spike kind over all trials."""

    kind: SpikeKind
    trials: int
    detected: int
    delays_s: tuple[float, ...]
    detected_by_scope: dict[str, int]

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-safe summary; delays in seconds from spike start to first alert."""
        delays = sorted(self.delays_s)
        return {
            "kind": self.kind,
            "trials": self.trials,
            "detected": self.detected,
            "detected_by_scope": dict(sorted(self.detected_by_scope.items())),
            "median_delay_s": _round(statistics.median(delays)) if delays else None,
            "p90_delay_s": _round(_quantile(delays, 0.9)) if delays else None,
            "max_delay_s": _round(delays[-1]) if delays else None,
        }


@dataclass(frozen=True, slots=True)
class EvalResult:
    """One configuration's detection results and false alerts."""

    settings: Anomalies
    kinds: tuple[KindResult, ...]
    false_alerts: int
    false_alert_intervals: int
    evaluated_hours: float
    false_by_scope: dict[str, int]
    false_by_rule: dict[str, int]

    @property
    def false_per_day(self) -> float:
        """Alerting intervals on the clean trace per scope-day, extrapolated."""
        return self.false_alert_intervals / self.evaluated_hours * 24

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-safe summary of the configuration and its results."""
        return {
            "k": self.settings.k,
            "count_noise": self.settings.count_noise,
            "deviation_baseline": self.settings.deviation_baseline,
            "level_intervals": self.settings.level_intervals,
            "window_intervals": self.settings.window_intervals,
            "interval_s": self.settings.interval_s,
            "min_history_intervals": self.settings.min_history_intervals,
            "burst_window_s": self.settings.burst_window_s,
            "burst_factor": self.settings.burst_factor,
            "burst_peak_factor": self.settings.burst_peak_factor,
            "cooldown_s": self.settings.cooldown_s,
            "spikes": [k.to_json_dict() for k in self.kinds],
            "false_alerts": self.false_alerts,
            "false_alert_intervals": self.false_alert_intervals,
            "false_alert_intervals_by_scope": dict(sorted(self.false_by_scope.items())),
            "false_alert_intervals_by_rule": dict(sorted(self.false_by_rule.items())),
            "evaluated_scope_hours": _round(self.evaluated_hours),
            "false_alert_intervals_per_scope_day": _round(self.false_per_day),
        }


def _round(value: float) -> float:
    return round(value, 2)


def _quantile(ordered: Sequence[float], q: float) -> float:
    return float(np.quantile(np.asarray(ordered), q))


def _feed(
    detector: AnomalyDetector, scope: str, events: Iterable[Event]
) -> list[Alert]:
    alerts: list[Alert] = []
    for ts, tokens, nanos in events:
        alerts += detector.observe_units(scope, ts, usd_nanos=nanos, tokens=tokens)
    return alerts


def _eval_start(settings: Anomalies, events: Sequence[Event]) -> int:
    interval_us = round(settings.interval_s * _S)
    first_index = events[0][0] // interval_us
    return (first_index + settings.min_history_intervals) * interval_us


def _starts(
    settings: Anomalies,
    trace: Trace,
    scope: str,
    spike: Spike,
    trials: int,
    rng: np.random.Generator,
) -> list[int]:
    events = trace.events[scope]
    low = _eval_start(settings, events)
    grace_us = round(settings.interval_s * _S)
    high = events[-1][0] - round(spike.duration_s * _S) - grace_us
    if high <= low:
        raise _too_short(settings, trace, scope, spike)
    return sorted(int(v) for v in rng.integers(low, high, trials))


def _too_short(
    settings: Anomalies, trace: Trace, scope: str, spike: Spike
) -> ConfigError:
    """Say how long a scope's trace is and how long it must be."""
    events = trace.events[scope]
    span_s = (events[-1][0] - events[0][0]) / _S
    history_s = (_eval_start(settings, events) - events[0][0]) / _S
    need_s = history_s + spike.duration_s + settings.interval_s
    source = trace.sources.get(scope, scope)
    return ConfigError(
        f"{source}: scope {scope} spans {span_s:.0f} s of calls; the evaluation "
        f"needs more than {need_s:.0f} s: {settings.min_history_intervals} "
        f"intervals of {settings.interval_s:g} s of history, a {spike.kind} "
        f"spike of {spike.duration_s:g} s and one interval after it; give a "
        "longer trace"
    )


#: Called with the number of trace calls replayed since the last call.
Replayed = Callable[[int], None]
#: Called with (trace calls replayed so far, calls to replay in all).
Progress = Callable[[int, int], None]
# Calls replayed between two reports to a Replayed callback.
_REPORT_EVERY = 50_000


@dataclass(frozen=True, slots=True)
class _Trial:
    """One injected spike: its kind, start and random generator."""

    kind: int
    start: int
    rng: np.random.Generator


@dataclass(slots=True)
class _Pending:
    """A trial's alerts, to compare with the clean pass over the same calls."""

    trial: _Trial
    first: int  # index of the first trace call in the trial's stretch
    stop: int  # index just past its last one
    alerts: list[Alert]


def _plans(
    trace: Trace,
    settings: Anomalies,
    spikes: Sequence[Spike],
    trials: int,
    seed: int,
) -> dict[str, list[_Trial]]:
    """Every scope's trials, in time order; each kind and scope has its own
    generator, seeded from (seed, kind, scope), for the start times and then,
    trial after trial in time order, the spike's shape."""
    plans: dict[str, list[_Trial]] = {scope: [] for scope in trace.events}
    for kind, spike in enumerate(spikes):
        for scope_index, scope in enumerate(sorted(trace.events)):
            rng = np.random.default_rng(_entropy(seed, kind, scope_index))
            starts = _starts(settings, trace, scope, spike, trials, rng)
            plans[scope] += (_Trial(kind, start, rng) for start in starts)
    for planned in plans.values():
        planned.sort(key=lambda trial: trial.start)  # stable: each kind in order
    return plans


def _entropy(seed: int, kind: int, scope_index: int) -> list[int]:
    """The generator's seed words; a negative seed (numpy takes none) gets
    its own stream, apart from every non-negative one's."""
    if seed >= 0:
        return [seed, kind, scope_index]
    return [-seed, kind, scope_index, 1]


class _CleanPass:
    """One detector fed a scope's calls in order, keeping each alert with the
    index of the call that raised it, and reporting its progress."""

    def __init__(
        self,
        settings: Anomalies,
        scope: str,
        events: Sequence[Event],
        replayed: Replayed | None,
    ) -> None:
        self.detector = AnomalyDetector(settings)
        self.scope = scope
        self.events = events
        self.position = 0
        self.alerts: list[tuple[int, Alert]] = []
        self._replayed = replayed
        self._reported = 0

    def advance(self, before: int | None = None) -> None:
        """Feed the calls up to time ``before`` (None: all the rest)."""
        events, scope, observe = self.events, self.scope, self.detector.observe_units
        position = self.position
        while position < len(events) and (
            before is None or events[position][0] < before
        ):
            ts, tokens, nanos = events[position]
            for alert in observe(scope, ts, usd_nanos=nanos, tokens=tokens):
                self.alerts.append((position, alert))
            position += 1
            if position - self._reported >= _REPORT_EVERY:
                self._report(position)
        self.position = position
        if position == len(events):
            self._report(position)

    def _report(self, position: int) -> None:
        if self._replayed is not None and position > self._reported:
            self._replayed(position - self._reported)
        self._reported = position


def _replay_scope(
    settings: Anomalies,
    trace: Trace,
    scope: str,
    spikes: Sequence[Spike],
    trials: Sequence[_Trial],
    replayed: Replayed | None,
) -> tuple[list[tuple[int, Alert]], list[list[float]]]:
    """Feed the scope's calls to one detector, branching a copy at each trial.

    The clean pass's detector at a trial's start is in the state of a
    detector fed only the calls before it; a copy of it gets the trial's
    stretch with the spike, and the clean pass's own alerts over that
    stretch are the baseline the spike's alerts must differ from. Returns
    the clean pass's alerts (with their calls' indexes) and, per spike
    kind, the delays of the spikes detected.
    """
    events = trace.events[scope]
    clean = _CleanPass(settings, scope, events, replayed)
    rate = sum(e[1] for e in events) / ((events[-1][0] - events[0][0]) / _S)
    grace_us = round(settings.interval_s * _S)
    pending: list[_Pending] = []
    for trial in trials:
        spike = spikes[trial.kind]
        clean.advance(trial.start)
        end = trial.start + round(spike.duration_s * _S) + grace_us
        stop = bisect.bisect_left(events, (end,), lo=clean.position)
        tail = list(events[clean.position : stop])
        injected = _inject(trace, scope, spike, trial.start, trial.rng, rate)
        alerts = _feed(copy.deepcopy(clean.detector), scope, sorted(tail + injected))
        pending.append(_Pending(trial, clean.position, stop, alerts))
    clean.advance()
    delays: list[list[float]] = [[] for _ in spikes]
    for done in pending:
        delay = _delay(done, clean.alerts)
        if delay is not None:
            delays[done.trial.kind].append(delay)
    return clean.alerts, delays


def _delay(done: _Pending, clean: Sequence[tuple[int, Alert]]) -> float | None:
    """Seconds from a spike's start to its first alert not also on the clean pass."""
    low = bisect.bisect_left(clean, done.first, key=lambda pair: pair[0])
    high = bisect.bisect_left(clean, done.stop, key=lambda pair: pair[0])
    baseline = {(to_us(a.ts), a.metric, a.rule) for _, a in clean[low:high]}
    for alert in done.alerts:
        if (to_us(alert.ts), alert.metric, alert.rule) not in baseline:
            return (to_us(alert.ts) - done.trial.start) / _S
    return None


def evaluate(
    trace: Trace,
    settings: Anomalies,
    *,
    trials: int = 10,
    seed: int = 0,
    spikes: Sequence[Spike] = SPIKES,
    replayed: Replayed | None = None,
) -> EvalResult:
    """Run ``trials`` injections per scope and spike kind, and the clean trace.

    The same ``seed`` gives the same spike times and shapes for every
    ``settings``, so configurations are compared on identical injections.
    Each scope's calls are replayed once: the clean pass, with a copy of its
    detector branched off at each spike. ``replayed`` hears how many trace
    calls were replayed, every 50,000 or so.
    """
    plans = _plans(trace, settings, spikes, trials, seed)
    delays: list[list[float]] = [[] for _ in spikes]
    found: list[dict[str, int]] = [{} for _ in spikes]
    clean: list[Alert] = []
    hours = 0.0
    for scope, events in sorted(trace.events.items()):
        alerts, scope_delays = _replay_scope(
            settings, trace, scope, spikes, plans[scope], replayed
        )
        for kind, kind_delays in enumerate(scope_delays):
            found[kind][scope] = len(kind_delays)
            delays[kind] += kind_delays
        clean += (alert for _, alert in alerts)
        hours += (events[-1][0] - _eval_start(settings, events)) / (3600 * _S)
    total = trials * len(trace.events)
    kinds = tuple(
        KindResult(spike.kind, total, len(delays[i]), tuple(delays[i]), found[i])
        for i, spike in enumerate(spikes)
    )
    return _result(trace, settings, kinds, clean, hours)


def _result(
    trace: Trace,
    settings: Anomalies,
    kinds: tuple[KindResult, ...],
    clean: Sequence[Alert],
    hours: float,
) -> EvalResult:
    """Count the clean trace's alerting intervals, by scope and by rule."""
    interval_us = round(settings.interval_s * _S)

    def intervals(alerts: Iterable[Alert]) -> set[tuple[str, int]]:
        return {(a.scope, to_us(a.ts) // interval_us) for a in alerts}

    alerting = intervals(clean)
    by_scope = {s: sum(1 for key in alerting if key[0] == s) for s in trace.events}
    by_rule = {
        rule: len(
            intervals(a for a in clean if any(f.rule == rule for f in a.all_findings()))
        )
        for rule in ("deviation", "burst")
    }
    return EvalResult(
        settings, kinds, len(clean), len(alerting), hours, by_scope, by_rule
    )


#: Settings other than the defaults worth comparing in every run.
_VARIANTS: tuple[tuple[str, Mapping[str, Any]], ...] = (
    ("count_noise=False", {"count_noise": False}),
    ("deviation_baseline=mean", {"deviation_baseline": "mean"}),
    ("burst_peak_factor=2.5", {"burst_peak_factor": 2.5}),
)


def run_eval(
    path: Path,
    *,
    seed: int = 0,
    trials: int = 10,
    ks: Sequence[float] = (2.0, 3.0, 4.0),
    windows: Sequence[int] = (10, 20, 30),
    burst_factors: Sequence[float] = (5.0, 10.0, 20.0),
    model: str = "gpt-4o-mini",
    variants: Sequence[tuple[str, Mapping[str, Any]]] = _VARIANTS,
    defaults_only: bool = False,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The defaults, a k by window sweep, a burst-factor sweep and named
    variants of the defaults (no count-noise allowance, the mean-and-std
    deviation rule, the peak-based burst baseline), as one document.

    With ``defaults_only`` only the defaults are run, and the document has
    no ``sweep``, ``burst_sweep`` or ``variants``. A configuration that
    appears twice (the defaults are also a point of each sweep) is run
    once. ``progress`` hears the trace calls replayed so far and the number
    to replay over every configuration. ``warn`` hears each of the trace's
    warnings (:attr:`Trace.warnings`) once it is read, before the replay;
    the document lists them under ``warnings``.
    """
    trace = load_trace(path, model=model)
    if warn is not None:
        for warning in trace.warnings:
            warn(warning)
    defaults = Anomalies()
    plan: dict[str, list[Anomalies]] = {"defaults": [defaults]}
    if not defaults_only:
        plan["sweep"] = [
            Anomalies(
                k=k,
                window_intervals=window,
                min_history_intervals=min(window, defaults.min_history_intervals),
            )
            for k in ks
            for window in windows
        ]
        plan["burst_sweep"] = [Anomalies(burst_factor=f) for f in burst_factors]
        plan["variants"] = [Anomalies(**changes) for _, changes in variants]
    results = _run_all(
        trace, [s for group in plan.values() for s in group], seed, trials, progress
    )
    document: dict[str, Any] = {
        "trace": _trace_doc(trace),
        "warnings": list(trace.warnings),
        "seed": seed,
        "trials_per_scope_and_kind": trials,
        "spikes": [_spike_doc(s) for s in SPIKES],
        "defaults": results[_key(defaults)],
    }
    if not defaults_only:
        document["sweep"] = [results[_key(s)] for s in plan["sweep"]]
        document["burst_sweep"] = [results[_key(s)] for s in plan["burst_sweep"]]
        document["variants"] = [
            {"label": label, **results[_key(s)]}
            for (label, _), s in zip(variants, plan["variants"], strict=True)
        ]
    return document


def _key(settings: Anomalies) -> str:
    return settings.model_dump_json()


def _run_all(
    trace: Trace,
    configurations: Sequence[Anomalies],
    seed: int,
    trials: int,
    progress: Progress | None,
) -> dict[str, dict[str, Any]]:
    """Each distinct configuration's JSON result, by :func:`_key`."""
    distinct = {_key(s): s for s in configurations}
    total = len(distinct) * sum(len(e) for e in trace.events.values())
    done = 0
    if progress is not None:
        progress(done, total)

    def replayed(calls: int) -> None:
        nonlocal done
        done += calls
        if progress is not None:
            progress(done, total)

    return {
        key: evaluate(
            trace, settings, trials=trials, seed=seed, replayed=replayed
        ).to_json_dict()
        for key, settings in distinct.items()
    }


def _trace_doc(trace: Trace) -> dict[str, Any]:
    return {
        "scopes": {s: len(e) for s, e in sorted(trace.events.items())},
        "model": trace.model,
        "usd_per_mtok": {
            "input": str(Decimal(trace.input_nanos_per_token) / 1000),
            "output": str(Decimal(trace.output_nanos_per_token) / 1000),
        },
    }


def _spike_doc(spike: Spike) -> dict[str, Any]:
    return {
        "kind": spike.kind,
        "duration_s": spike.duration_s,
        "tokens": f"{spike.share} x the scope's mean tokens per {spike.share_of_s} s",
        "calls": spike.calls or int(spike.duration_s // spike.period_s),
    }
