"""Replay recorded runs through the loop guard and measure what it would do.

Three figures, as issue #4 asks:

- ``false_stop_rate``: the share of resolved runs the guard flags at all;
- with injection, ``detection_rate``: the share of spliced loops flagged
  inside the loop, and ``median_delay_repeats`` / ``max_delay_repeats``;
- ``failed_runs_flagged`` and ``failed_spend_after_flag_usd``: among the
  runs that failed, how many were flagged, and what they spent after it.

Spend sums the calls whose cost is known; ``calls_without_cost`` says how
many were left out, and the spend figures are None when the calls they
would sum carry no cost at all (a record without costs is not one whose
calls were free).

A run without an outcome label counts as neither resolved nor failed
(``unlabelled_runs``); spliced loops are still injected into it.

Runs are split in two halves by a hash of their id (``train`` and ``test``),
so that settings chosen on one half can be checked on the other.
"""

from __future__ import annotations

import hashlib
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from governor.loops._guard import LoopGuard, LoopVerdict
from governor.loops._inject import KINDS, Injection, inject
from governor.loops._trajectory import Call, Trajectory
from governor.policies._loops import Loops

__all__ = ["SPLITS", "Flag", "Progress", "evaluate", "replay", "split_of", "sweep"]

#: Called with (runs replayed so far, runs to replay) after each run.
Progress = Callable[[int, int], None]

SPLITS = ("train", "test")
_MICRO_USD = Decimal("0.000001")

_RULE_SETTINGS = {
    "repeat": "max_repeats",
    "cycle": "max_cycle_repeats",
    "stale": "max_stale_steps",
    "same_result": "max_same_result_repeats",
    "near_duplicate": "max_near_duplicate_outputs",
    "repeated_turns": "max_repeated_turns",
}
# One row per changed setting, every other setting at its default; the
# pseudo-setting "only" keeps one repetition rule and turns the others off.
_SWEEP: tuple[tuple[str, tuple[Any, ...]], ...] = (
    ("only", tuple(_RULE_SETTINGS)),
    ("max_repeats", (1, 2, 3, None)),
    ("max_cycle_repeats", (1, 2, 3, None)),
    ("max_cycle_period", (2, 4, 8)),
    ("max_stale_steps", (3, 5, 8, None)),
    ("max_same_result_repeats", (5, 8, 10, 15, None)),
    ("max_repeated_turns", (1, 2, 3, None)),
    ("window_steps", (16, 64, 256)),
    ("max_near_duplicate_outputs", (1, 2, 3, None)),
    ("near_duplicate_similarity", (0.6, 0.7, 0.75, 0.8, 0.9)),
    ("near_duplicate_words_per_change", (25, 50, 100, None)),
    ("shingle_tokens", (1, 2, 3)),
    ("mask_volatile", (True, False)),
    ("max_model_calls", (50, 100, None)),
)


@dataclass(frozen=True, slots=True)
class Flag:
    """The first verdict of a replay and the call it came at."""

    index: int
    verdict: LoopVerdict
    before_call: bool

    def spend_after(self, run: Trajectory) -> Decimal:
        """What the run spent on calls a stop at this flag would have saved."""
        first_saved = self.index if self.before_call else self.index + 1
        return _known_cost(run.calls[first_saved:])


def split_of(run_id: str) -> str:
    """Return ``"train"`` or ``"test"``, fixed by a hash of the run id."""
    return SPLITS[hashlib.blake2b(run_id.encode(), digest_size=1).digest()[0] % 2]


def replay(
    run: Trajectory, loops: Loops, *, start: int = 0, end: int | None = None
) -> Flag | None:
    """Feed a run to a fresh guard and return its first flag at or after ``start``.

    The step of call ``i`` is ``i + 1``; model calls and steps are counted
    alike, and wall time comes from the calls' ``created_s``. Each call's
    prompt is rebuilt as the run's messages so far: every call's new
    ``messages``, its output (an assistant message with its tool calls) and
    its tool results (tool messages).
    """
    guard = LoopGuard(loops)
    calls = run.calls if end is None else run.calls[:end]
    t0 = run.calls[0].created_s if run.calls else None
    prompt: list[Mapping[str, Any]] = []
    for index, call in enumerate(calls):
        step = index + 1
        elapsed = (call.created_s or 0) - t0 if t0 is not None else 0.0
        prompt.extend(call.messages)
        verdicts = [(guard.check_ceilings(step, step, elapsed), True)]
        verdicts.append((guard.on_prompt(prompt, step=step), True))
        verdicts.append((guard.on_model_output(call.output, step=step), False))
        _answer(prompt, call)
        for tool_call in call.tool_calls:
            result = call.results_for(tool_call)
            verdict = guard.on_tool_call(
                tool_call.name, tool_call.args, result, step=step
            )
            verdicts.append((verdict, False))
        for verdict, before in verdicts:
            if verdict is not None and index >= start:
                return Flag(index=index, verdict=verdict, before_call=before)
    return None


def _answer(prompt: list[Mapping[str, Any]], call: Call) -> None:
    """Add a call's output and tool results to the prompt of the next call."""
    tool_calls = [{"name": t.name, "args": t.args, "id": t.id} for t in call.tool_calls]
    prompt.append(
        {"role": "assistant", "content": call.output, "tool_calls": tool_calls}
    )
    for result in call.tool_results:
        prompt.append(
            {
                "role": "tool",
                "tool_call_id": result.call_id,
                "content": result.comparable,
            }
        )


@dataclass(frozen=True, slots=True)
class _Outcome:
    run: Trajectory
    split: str
    flag: Flag | None
    # (injection, flag inside the loop or None), one per kind that fitted
    injected: tuple[tuple[Injection, Flag | None], ...]


def _outcome(run: Trajectory, loops: Loops, *, injecting: bool, seed: int) -> _Outcome:
    flag = replay(run, loops)
    injected = []
    if injecting:
        for kind in KINDS:
            spliced = inject(run, kind, seed=seed)
            if spliced is None:
                continue
            copy, where = spliced
            injected.append(
                (where, replay(copy, loops, start=where.start, end=where.end))
            )
    return _Outcome(run, split_of(run.id), flag, tuple(injected))


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _delays(pairs: Iterable[tuple[Injection, Flag | None]]) -> list[int]:
    return [where.repeats_at(flag.index) for where, flag in pairs if flag is not None]


def _detection(pairs: Sequence[tuple[Injection, Flag | None]]) -> dict[str, Any]:
    delays = _delays(pairs)
    return {
        "injected": len(pairs),
        "detected": len(delays),
        "detection_rate": _rate(len(delays), len(pairs)),
        # A float however many delays: the median of an odd count is an int.
        "median_delay_repeats": float(statistics.median(delays)) if delays else None,
        "max_delay_repeats": max(delays) if delays else None,
    }


def _summary(outcomes: Sequence[_Outcome], *, injecting: bool) -> dict[str, Any]:
    good = [o for o in outcomes if o.run.resolved]
    bad = [o for o in outcomes if o.run.labelled and not o.run.resolved]
    stops = [o.flag for o in good if o.flag is not None]
    flagged = [o for o in bad if o.flag is not None]
    after = sum(
        (o.flag.spend_after(o.run) for o in flagged if o.flag is not None),
        Decimal(0),
    )
    priced = _priced(outcomes, bad)
    summary: dict[str, Any] = {
        "runs": len(outcomes),
        "unlabelled_runs": len(outcomes) - len(good) - len(bad),
        "resolved_runs": len(good),
        "false_stops": len(stops),
        "false_stop_rate": _rate(len(stops), len(good)),
        "false_stops_by_rule": dict(Counter(f.verdict.rule for f in stops)),
        "false_stop_runs": [
            {"id": o.run.id, "rule": o.flag.verdict.rule, "call": o.flag.index}
            for o in good
            if o.flag is not None
        ],
        "failed_runs": len(bad),
        "failed_runs_flagged": len(flagged),
        "failed_spend_usd": _usd(sum((o.run.cost_usd for o in bad), Decimal(0)))
        if priced
        else None,
        "failed_spend_after_flag_usd": _usd(after) if priced else None,
        **_usage_counts(outcomes),
    }
    pairs = [pair for o in outcomes for pair in o.injected]
    summary.update(_detection(pairs) if injecting else _no_detection())
    if injecting:
        summary["detected_by_rule"] = dict(
            Counter(flag.verdict.rule for _, flag in pairs if flag is not None)
        )
        summary["by_kind"] = {
            kind: _detection([p for p in pairs if p[0].kind == kind]) for kind in KINDS
        }
    return summary


def _known_cost(calls: Iterable[Call]) -> Decimal:
    return sum((c.cost_usd for c in calls if c.cost_usd is not None), Decimal(0))


def _priced(outcomes: Sequence[_Outcome], bad: Sequence[_Outcome]) -> bool:
    """Whether the failed runs' spend can be given: some of their calls (or,
    when they have none, some call of the runs) carry a cost."""
    failed_calls = [c for o in bad for c in o.run.calls]
    calls = failed_calls or [c for o in outcomes for c in o.run.calls]
    return not calls or any(c.cost_usd is not None for c in calls)


def _usage_counts(outcomes: Sequence[_Outcome]) -> dict[str, int]:
    """How many calls the runs have, and how many lack a cost or token counts."""
    calls = [c for o in outcomes for c in o.run.calls]
    return {
        "calls": len(calls),
        "calls_without_cost": sum(1 for c in calls if c.cost_usd is None),
        "calls_without_tokens": sum(
            1 for c in calls if c.prompt_tokens is None and c.completion_tokens is None
        ),
    }


def _usd(amount: Decimal) -> str:
    # The data's float-born costs carry noise below a micro-dollar.
    return str(amount.quantize(_MICRO_USD))


def _no_detection() -> dict[str, Any]:
    return {
        "injected": 0,
        "detected": 0,
        "detection_rate": None,
        "median_delay_repeats": None,
        "max_delay_repeats": None,
    }


def evaluate(
    runs: Sequence[Trajectory],
    loops: Loops,
    *,
    injecting: bool,
    seed: int,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Measure one setting on all runs and on each half of the split."""
    outcomes = []
    for run in runs:
        outcomes.append(_outcome(run, loops, injecting=injecting, seed=seed))
        if progress is not None:
            progress(len(outcomes), len(runs))
    report = {"all": _summary(outcomes, injecting=injecting)}
    for split in SPLITS:
        part = [o for o in outcomes if o.split == split]
        report[split] = _summary(part, injecting=injecting)
    return report


def sweep(
    runs: Sequence[Trajectory],
    base: Loops,
    *,
    injecting: bool,
    seed: int,
    grid: Sequence[tuple[str, Sequence[Any]]] = _SWEEP,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Measure each setting of the grid in turn, the others at ``base``.

    ``progress`` counts runs over the whole grid, not per setting.
    """
    points = [(name, value) for name, values in grid for value in values]
    total = len(points) * len(runs)
    rows: list[dict[str, Any]] = []
    for name, value in points:
        loops = _with(base, name, value)
        report = evaluate(
            runs,
            loops,
            injecting=injecting,
            seed=seed,
            progress=_offset(progress, len(rows) * len(runs), total),
        )
        rows.append({"setting": name, "value": value, **report})
    return rows


def _offset(progress: Progress | None, done: int, total: int) -> Progress | None:
    """Report one setting's runs as part of the whole sweep."""
    if progress is None:
        return None
    report = progress

    def shifted(runs_done: int, _runs: int) -> None:
        report(done + runs_done, total)

    return shifted


def _with(base: Loops, name: str, value: Any) -> Loops:
    fields: dict[str, Any] = base.model_dump()
    if name != "only":
        return Loops(**{**fields, name: value})
    for rule, setting in _RULE_SETTINGS.items():
        if rule != value:
            fields[setting] = None
    return Loops(**fields)
