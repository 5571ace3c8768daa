"""Replay request traces through the anomaly detector with injected spikes.

The trace (e.g. the Azure LLM inference trace 2023) gives real arrival times
and token counts per service; each service is one scope. Spikes of two kinds
are injected at seeded random times, one per trial, and the detector's first
new alert gives the detection delay. Alerts on the trace without injections
count as false alerts. See ``docs/anomalies.md`` for the method and results.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import numpy as np

from governor._errors import ConfigError
from governor._money import usd_to_nanos
from governor.anomaly._detector import Alert, AnomalyDetector
from governor.anomaly._settings import Anomalies
from governor.anomaly._trace_csv import read_rows, trace_files
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
    """Events per scope, priced, in time order, and the file of each scope."""

    events: dict[str, list[Event]]
    model: str
    input_nanos_per_token: int
    output_nanos_per_token: int
    median_output: dict[str, int]
    sources: dict[str, Path] = field(default_factory=dict)


def load_trace(path: Path, *, model: str = "gpt-4o-mini") -> Trace:
    """Read Azure-trace CSV files (one file, or a folder of them) and price them.

    Each file ``<name>.csv`` or ``<name>.csv.gz`` with columns ``TIMESTAMP,
    ContextTokens, GeneratedTokens`` becomes scope ``team:<name>``, less a
    leading ``AzureLLMInferenceTrace_``: ``AzureLLMInferenceTrace_code.csv`` is
    ``team:code`` and ``AzureLLMInferenceTrace_code_1week.csv`` is
    ``team:code_1week``. Two files with the same scope are refused. Timestamps
    are ISO 8601 (UTC unless they carry an offset) or Unix seconds. Tokens are
    priced at ``model``'s list price from LiteLLM's bundled price map.
    """
    from governor.pricing import RateCard

    sources = trace_files(path)
    rate = RateCard().rate(model)
    price_in = usd_to_nanos(rate.input_per_token)
    price_out = usd_to_nanos(rate.output_per_token)
    events: dict[str, list[Event]] = {}
    outputs: dict[str, int] = {}
    for scope, file in sources.items():
        rows = read_rows(file)
        events[scope] = [(ts, i + o, i * price_in + o * price_out) for ts, i, o in rows]
        outputs[scope] = round(statistics.median(o for _, _, o in rows))
    return Trace(events, model, price_in, price_out, outputs, sources)


def _inject(
    trace: Trace, scope: str, spike: Spike, start_us: int, rng: np.random.Generator
) -> list[Event]:
    events = trace.events[scope]
    span_s = (events[-1][0] - events[0][0]) / _S
    rate = sum(e[1] for e in events) / span_s  # mean tokens per second
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


def _scope_trials(
    settings: Anomalies,
    trace: Trace,
    scope: str,
    spike: Spike,
    starts: Sequence[int],
    rng: np.random.Generator,
) -> list[float]:
    """Run one scope's trials; return the delays of the spikes detected."""
    events = trace.events[scope]
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
        merged = sorted(tail + _inject(trace, scope, spike, start, rng))
        trial_alerts = _feed(copy.deepcopy(detector), scope, merged)
        clean_tail = _feed(copy.deepcopy(detector), scope, tail)
        baseline = {(to_us(a.ts), a.metric, a.rule) for a in clean_tail}
        fresh = [
            a for a in trial_alerts if (to_us(a.ts), a.metric, a.rule) not in baseline
        ]
        if fresh:
            delays.append((to_us(fresh[0].ts) - start) / _S)
    return delays


def evaluate(
    trace: Trace,
    settings: Anomalies,
    *,
    trials: int = 10,
    seed: int = 0,
    spikes: Sequence[Spike] = SPIKES,
) -> EvalResult:
    """Run ``trials`` injections per scope and spike kind, and the clean trace.

    The same ``seed`` gives the same spike times and shapes for every
    ``settings``, so configurations are compared on identical injections.
    """
    kinds = tuple(
        _detection(trace, settings, spike, trials, [seed, index])
        for index, spike in enumerate(spikes)
    )
    clean, hours = _clean_alerts(trace, settings)
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


def _detection(
    trace: Trace, settings: Anomalies, spike: Spike, trials: int, seed: list[int]
) -> KindResult:
    delays: list[float] = []
    by_scope: dict[str, int] = {}
    for scope_index, scope in enumerate(sorted(trace.events)):
        rng = np.random.default_rng([*seed, scope_index])
        starts = _starts(settings, trace, scope, spike, trials, rng)
        found = _scope_trials(settings, trace, scope, spike, starts, rng)
        by_scope[scope] = len(found)
        delays += found
    total = trials * len(trace.events)
    return KindResult(spike.kind, total, len(delays), tuple(delays), by_scope)


def _clean_alerts(trace: Trace, settings: Anomalies) -> tuple[list[Alert], float]:
    """Alerts on the uninjected trace, and the scope-hours evaluated."""
    found: list[Alert] = []
    hours = 0.0
    for scope, events in sorted(trace.events.items()):
        start = _eval_start(settings, events)
        found += _feed(AnomalyDetector(settings), scope, events)
        hours += (events[-1][0] - start) / (3600 * _S)
    return found, hours


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
) -> dict[str, Any]:
    """The defaults, a k by window sweep, a burst-factor sweep and named
    variants of the defaults (no count-noise allowance, the mean-and-std
    deviation rule, the peak-based burst baseline), as one document."""
    trace = load_trace(path, model=model)
    defaults = Anomalies()
    sweep = [
        evaluate(
            trace,
            Anomalies(
                k=k,
                window_intervals=window,
                min_history_intervals=min(window, defaults.min_history_intervals),
            ),
            trials=trials,
            seed=seed,
        ).to_json_dict()
        for k in ks
        for window in windows
    ]
    return {
        "trace": {
            "scopes": {s: len(e) for s, e in sorted(trace.events.items())},
            "model": trace.model,
            "usd_per_mtok": {
                "input": str(Decimal(trace.input_nanos_per_token) / 1000),
                "output": str(Decimal(trace.output_nanos_per_token) / 1000),
            },
        },
        "seed": seed,
        "trials_per_scope_and_kind": trials,
        "spikes": [_spike_doc(s) for s in SPIKES],
        "defaults": evaluate(trace, defaults, trials=trials, seed=seed).to_json_dict(),
        "sweep": sweep,
        "burst_sweep": [
            evaluate(
                trace, Anomalies(burst_factor=factor), trials=trials, seed=seed
            ).to_json_dict()
            for factor in burst_factors
        ],
        "variants": [
            {
                "label": label,
                **evaluate(
                    trace, Anomalies(**changes), trials=trials, seed=seed
                ).to_json_dict(),
            }
            for label, changes in variants
        ],
    }


def _spike_doc(spike: Spike) -> dict[str, Any]:
    return {
        "kind": spike.kind,
        "duration_s": spike.duration_s,
        "tokens": f"{spike.share} x the scope's mean tokens per {spike.share_of_s} s",
        "calls": spike.calls or int(spike.duration_s // spike.period_s),
    }
