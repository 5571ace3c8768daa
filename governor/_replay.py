"""Replay recorded traffic through a policy, and compare two runs.

Each recorded call (a :class:`governor.spend.SpendRecord`) is sent through a
real :class:`Governor` with no provider: the call is reserved and settled with
its recorded token usage, priced by the policy's rate card, under the policy's
budgets. A task stopped by the policy stops there, as it would have live, and
its later calls are not replayed, and its recorded quality does not count:
it scores 0, since the answer that earned it was never reached. Cache hits
are replayed as calls, since a new
policy may not serve them; their records carry no tokens, so they replay at no
cost: a replay of cached traffic under a policy without a cache understates
what that policy would pay by what the hits saved (``saved_usd``).

The calls are replayed in the order they started (a record's time, when
the call finished, less its latency), tasks interleaved as they ran (each
task open from its first call to its last), on the recorded clock:
calendar and rolling budget windows and a task's wall time (``max_wall_s``)
follow the records' times, not the time of the replay.
Each call is charged to the scope values its own record names. A policy's
cascade and response cache are not simulated (a warning says so).

Records written by hand or by older releases may hold names the live
governor refuses: a scope value such as ``"a#b"`` or ``" ab"`` is charged
to no value of its scope, as a live call could not be charged to it (a
warning names each), and a task id with ``#`` or a control character is
replayed under an id of its own with those characters escaped, its results
still under the recorded id.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from governor._calls import CallRequest, CallResult
from governor._engine import _MAX_AMOUNT, Governor
from governor._errors import ConfigError, GovernorHalt, decimal_text
from governor._task import _checked_id
from governor.policies import Attribution, Policy
from governor.policies._model import (
    ATTRIBUTION_FIELDS,
    _suggested_name,
    name_problem,
    tag_problem,
)
from governor.pricing import Usage
from governor.spend._record import TOKEN_FIELDS
from governor.stores import MemoryLedger

if TYPE_CHECKING:
    from governor._task import Task
    from governor.spend import SpendRecord

__all__ = [
    "RecordedCall",
    "ReplayRun",
    "TaskReplay",
    "load_policy",
    "recorded_calls",
    "replay",
]

logger = logging.getLogger(__name__)

# Quality words, in any case, as the eval commands read a correctness cell.
_QUALITY_WORDS = {"true": 1.0, "yes": 1.0, "false": 0.0, "no": 0.0}


@dataclass
class TaskReplay:
    """One task as the replayed policy ran it."""

    task_id: str
    calls: int = 0
    cost_usd: Decimal = Decimal(0)
    stop_reason: str | None = None
    quality: float | None = None
    recorded_quality: float | None = None


@dataclass
class ReplayRun:
    """A whole replay: every task, in the order first seen."""

    label: str
    tasks: dict[str, TaskReplay] = field(default_factory=dict)
    not_simulated: tuple[str, ...] = ()
    """Parts of the policy the replay does not run (``cascade``, ``cache``)."""

    @property
    def cost_usd(self) -> Decimal:
        """Total cost of the run."""
        return sum((t.cost_usd for t in self.tasks.values()), Decimal(0))

    @property
    def stopped(self) -> int:
        """Tasks the policy stopped."""
        return sum(1 for t in self.tasks.values() if t.stop_reason)

    @property
    def quality(self) -> float | None:
        """Mean quality over tasks that have one, else None; stopped tasks score 0.

        The values are summed exactly (:func:`math.fsum`) and divided once,
        so tasks that all scored 1 give exactly 1.0; finite tags whose sum
        is past a float (near 1e308) are each divided first."""
        known = [t.quality for t in self.tasks.values() if t.quality is not None]
        if not known:
            return None
        try:
            return math.fsum(known) / len(known)
        except OverflowError:
            return math.fsum(q / len(known) for q in known)

    @property
    def stopped_recorded_good(self) -> int:
        """Stopped tasks whose recorded quality was above 0: credit the policy cut."""
        return sum(
            1
            for t in self.tasks.values()
            if t.stop_reason and (t.recorded_quality or 0) > 0
        )

    def as_dict(self) -> dict[str, Any]:
        """The run as plain JSON-ready data."""
        count = len(self.tasks) or 1
        return {
            "label": self.label,
            "tasks": len(self.tasks),
            "cost_usd": decimal_text(self.cost_usd),
            "cost_per_task_usd": decimal_text(_nano(self.cost_usd / count)),
            "stopped": self.stopped,
            "stopped_recorded_good": self.stopped_recorded_good,
            "quality": self.quality,
            "not_simulated": list(self.not_simulated),
        }


class RecordedCall:
    """What a replay reads of one recorded call: a few hundred bytes where
    a :class:`SpendRecord` takes a few thousand, for replays of many calls.

    ``at`` is when the call started (its record's time, when it finished,
    less its latency) in seconds since the epoch, ``values`` the
    scope values it names that today's rules accept, ``refused`` those it
    names that they refuse (``"a#b"``, ``" ab"``), and ``tags`` its tags, each
    as ``(name, value)`` pairs; the other attributes are the record's own.
    Build them with :func:`recorded_calls`.
    """

    __slots__ = (
        "at",
        "call_id",
        "task_id",
        "model",
        "outcome",
        "values",
        "refused",
        "tags",
        *TOKEN_FIELDS,
    )

    at: float
    call_id: str
    task_id: str
    model: str
    outcome: str
    values: tuple[tuple[str, str], ...]
    refused: tuple[tuple[str, str], ...]
    tags: tuple[tuple[str, str], ...]
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    audio_input_tokens: int
    audio_output_tokens: int
    audio_cache_read_tokens: int


# The longest a call can have run: a hold lapses after at most a week.
_LONGEST_CALL_S = 7 * 86_400.0


def recorded_calls(
    records: Iterable[SpendRecord | RecordedCall],
) -> list[RecordedCall]:
    """``records`` as a replay keeps them, read one at a time: names that
    repeat (tasks, models, scope values, tags) are kept once."""
    shared: dict[Any, Any] = {}
    return [_compact(record, shared) for record in records]


def _compact(
    record: SpendRecord | RecordedCall, shared: dict[Any, Any]
) -> RecordedCall:
    """One record as a :class:`RecordedCall`, its repeated parts from ``shared``."""
    if isinstance(record, RecordedCall):
        return record
    call = RecordedCall()
    # Live, a call is charged to the window it was reserved in, when it
    # started; a record's ts is when it finished. A latency past any call's
    # (a corrupt record) moves it back no further than that.
    call.at = record.ts.timestamp() - min(record.latency_s, _LONGEST_CALL_S)
    call.call_id = record.call_id
    call.task_id = shared.setdefault(record.task_id, record.task_id)
    call.model = shared.setdefault(record.model, record.model)
    call.outcome = shared.setdefault(record.outcome, record.outcome)
    for name in TOKEN_FIELDS:
        setattr(call, name, getattr(record, name))
    usable, refused = _values(record)
    call.values = _pairs(usable, shared)
    call.refused = _pairs(refused, shared)
    call.tags = _pairs(record.tags, shared)
    return call


def _pairs(
    mapping: Mapping[str, str], shared: dict[Any, Any]
) -> tuple[tuple[str, str], ...]:
    """``mapping``'s items as a tuple, each name, pair and tuple kept once."""
    pairs = []
    for key, value in mapping.items():
        pair = (shared.setdefault(key, key), shared.setdefault(value, value))
        pairs.append(shared.setdefault(pair, pair))
    items = tuple(pairs)
    return shared.setdefault(items, items)  # type: ignore[no-any-return]


def replay(
    records: Iterable[SpendRecord | RecordedCall],
    policy: Policy,
    *,
    label: str | None = None,
    model_map: Mapping[str, str] | None = None,
) -> ReplayRun:
    """Run recorded calls through ``policy``; see the module docstring.

    Args:
        records: recorded calls, any order; replayed in time order, each
            task open from its first call to its last. Many calls take less
            memory given as :func:`recorded_calls`.
        policy: the policy to replay under.
        label: a name for the run (default: the policy's name).
        model_map: models to swap, e.g. ``{"gpt-4o": "gpt-4.1"}``; the
            recorded token counts are kept.
    """
    # Calls made at one moment go in call id order, whatever order the store
    # gave them in, so every store replays alike.
    shared: dict[Any, Any] = {}
    calls = sorted(
        (c for r in records if (c := _compact(r, shared)).outcome != "refused"),
        key=lambda c: (c.at, c.call_id),
    )
    del shared
    run = ReplayRun(label or policy.name, not_simulated=_not_simulated(policy))
    _warn_refused(calls)
    clock = _RecordedClock(calls[0].at if calls else 0.0)
    gov = Governor(policy, ledger=MemoryLedger(clock=clock))
    gov._wall_clock = clock
    gov._task_lines_kept = True
    tasks = _by_task(calls)
    unread: list[tuple[str, str, str]] = []
    for task_id, task_calls in tasks.items():
        quality, bad = _quality(task_calls)
        unread.extend((task_id, key, value) for key, value in bad)
        run.tasks[task_id] = TaskReplay(task_id, recorded_quality=quality)
    replaying = _Replaying(gov, dict(model_map or {}), tasks, _live_ids(tasks))
    for record in calls:
        clock.now = record.at
        replaying.call(record, run.tasks[record.task_id])
    _warn_unread(unread)
    _warn_capped(replaying.capped)
    return run


class _RecordedClock:
    """The recorded time of the call being replayed, in seconds since the
    epoch: the replay's governor picks budget windows by it, and its ledger
    ages lines (rolling windows) by it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class _Replaying:
    """The tasks of a replay open at the recorded time of the call replayed."""

    def __init__(
        self,
        gov: Governor,
        swaps: Mapping[str, str],
        tasks: Mapping[str, list[RecordedCall]],
        live_ids: Mapping[str, str],
    ) -> None:
        self.gov = gov
        self.swaps = swaps
        self.tasks = tasks
        # Recorded task ids a live task may not take, and the ids they open as.
        self.live_ids = live_ids
        self.left = {task_id: len(calls) for task_id, calls in tasks.items()}
        # Each open task, and the recorded time of its first call.
        self.open: dict[str, tuple[Task, float]] = {}
        self.capped: list[str] = []

    def call(self, record: RecordedCall, outcome: TaskReplay) -> None:
        """Replay one call; open its task at its first call, close it at its
        last (or when the policy stops it)."""
        task_id = record.task_id
        own = dict(record.values)
        self.left[task_id] -= 1
        if outcome.stop_reason:
            return  # stopped: its later calls are not replayed
        task, started = self.open.get(task_id) or self._open(task_id)
        # The task's wall time (max_wall_s) runs on the recorded clock.
        task.started_at = time.monotonic() - (record.at - started)
        before = task.cost_nanos
        # Values the task names already need not be named again per call.
        named = own if own.items() - task.scope_values.items() else None
        try:
            _replay_call(self.gov, task, record, self.swaps, named)
        except GovernorHalt as exc:
            outcome.stop_reason = exc.code
        if task.cost_nanos - before >= _MAX_AMOUNT:
            self.capped.append(task_id)
        if outcome.stop_reason or not self.left[task_id]:
            del self.open[task_id]
            report = self.gov.close_task(task)
            outcome.calls = report.calls
            outcome.cost_usd = report.cost_usd
            outcome.quality = _replayed_quality(outcome)

    def _open(self, task_id: str) -> tuple[Task, float]:
        calls = self.tasks[task_id]
        values = [dict(call.values) for call in calls]
        shared = _shared_attribution(calls[0], values)
        # A scope every call names, each its own value (or one refused, which
        # _warn_refused names), is named per call: the warning that the task
        # names none would mislead.
        per_call = set.intersection(
            *({scope for scope, _ in (*c.values, *c.refused)} for c in calls)
        )
        self.gov._warned_unnamed.update(per_call - shared.scope_values().keys())
        live_id = self.live_ids.get(task_id, task_id)
        opened = self.gov.open_task(live_id, attribution=shared), calls[0].at
        self.open[task_id] = opened
        return opened


def _not_simulated(policy: Policy) -> tuple[str, ...]:
    """The parts of ``policy`` a replay does not run, said once per policy."""
    parts = tuple(
        name
        for name, part in (("cascade", policy.cascade), ("cache", policy.cache))
        if part is not None
    )
    said = ("not_simulated", policy.name, parts)
    if parts and said not in _WARNED:
        _remember(said)
        logger.warning(
            "policy %r has a %s, which replay does not simulate: each call is "
            "replayed with its recorded model and tokens (a recorded cache hit "
            "at no cost), so the figures show none of its savings; they show "
            "the policy's prices and budgets only",
            policy.name,
            " and a ".join(parts),
        )
    return parts


# Warnings already given: ``governor compare`` replays the same records twice.
_WARNED: set[tuple[object, ...]] = set()
_MAX_WARNED = 64


def _remember(said: tuple[object, ...]) -> None:
    if len(_WARNED) >= _MAX_WARNED:
        _WARNED.clear()
    _WARNED.add(said)


def _warn_unread(unread: list[tuple[str, str, str]]) -> None:
    """One warning for the quality tag values that could not be read."""
    if not unread:
        return
    task_id, key, value = unread[0]
    said = (len(unread), task_id, key, value)
    if said in _WARNED:
        return
    _remember(said)
    logger.warning(
        "%d quality/correct tag value(s) could not be read, e.g. task %r has "
        "%s=%r; give a finite number or true/false/yes/no; a task with no "
        "readable one has no quality (n/a)",
        *said,
    )


_REFUSED_SHOWN = 5
"""How many refused scope values are named one warning each; one more says the rest."""


def _warn_refused(calls: Iterable[RecordedCall]) -> None:
    """Name once each scope value the calls name that a live governor refuses.

    Such a value (``"a#b"``, ``" ab"``) cannot name a team, user, ... live:
    ``Attribution`` and LiteLLM ``metadata`` refuse it, so no budget line is
    keyed on it, and the replay charges the call to no value of that scope.
    """
    refused: dict[tuple[str, str], int] = {}
    for call in calls:
        for pair in call.refused:
            refused[pair] = refused.get(pair, 0) + 1
    if not refused:
        return
    said = ("refused", len(refused), *next(iter(refused)))
    if said in _WARNED:
        return
    _remember(said)
    for (scope, value), count in list(refused.items())[:_REFUSED_SHOWN]:
        logger.warning(
            "%(calls)d recorded call(s) name %(scope)s %(value)r, which the "
            "live governor refuses: the name %(problem)s. The replay "
            "charges them to no %(scope)s, so %(scope)s budgets skip them; "
            "correct the name in the records%(fix)s for those budgets to "
            "count them",
            {
                "calls": count,
                "scope": scope,
                "value": value,
                "problem": name_problem(value),
                "fix": _suggested_name(value),
            },
        )
    more = len(refused) - _REFUSED_SHOWN
    if more > 0:
        logger.warning(
            "%d more recorded scope value(s) are names the live governor "
            "refuses; the replay charges their calls to no value of that "
            "scope alike (`governor report --by SCOPE` lists every value)",
            more,
        )


def _live_ids(tasks: Mapping[str, object]) -> dict[str, str]:
    """The id each recorded task id a live task may not take opens as.

    A live task id is non-empty, without ``#`` (which starts a budget line's
    period window) or control characters; records written by hand or by
    older releases may hold one with them. Such a task is replayed under the
    recorded id with ``%``, ``#`` and control characters written ``%XX``
    (blank: every character), made unlike every other task's id; its results
    keep the recorded id. One warning names the first.
    """
    taken = set(tasks)
    live: dict[str, str] = {}
    for task_id in tasks:
        try:
            _checked_id(task_id)
        except ConfigError:
            live[task_id] = _escaped_id(task_id, taken)
            taken.add(live[task_id])
    if live:
        first, escaped = next(iter(live.items()))
        said = ("task ids", len(live), first)
        if said not in _WARNED:
            _remember(said)
            logger.warning(
                "%d recorded task id(s) hold '#' or control characters, or are "
                "blank, which a live task id may not, e.g. %r: each is replayed "
                "under an id with those characters escaped (here %r), and "
                "shown under its recorded id",
                len(live),
                first,
                escaped,
            )
    return live


def _escaped_id(task_id: str, taken: set[str]) -> str:
    """``task_id`` as a live task id no other task of the replay has."""
    blank = not task_id.strip()
    escaped = "".join(
        f"%{ord(ch):02X}" if blank or ch in "%#" or ord(ch) < 32 else ch
        for ch in task_id
    )
    candidate, number = escaped, 1
    while candidate in taken:
        number += 1
        candidate = f"{escaped}~{number}"
    return candidate


def _warn_capped(capped: list[str]) -> None:
    """One warning for tasks whose cost holds a call capped at the ledger's most."""
    if not capped:
        return
    said = ("capped", len(capped), capped[0])
    if said in _WARNED:
        return
    _remember(said)
    logger.warning(
        "%d call(s) recorded usage worth more than a ledger holds exactly, e.g. "
        "in task %r: each is counted at $%s, so the cost shown for its task "
        "and run is that capped figure, not the recorded one; check the "
        "record's token counts",
        len(capped),
        capped[0],
        decimal_text(Decimal(_MAX_AMOUNT) / 10**9),
    )


def _by_task(calls: Iterable[RecordedCall]) -> dict[str, list[RecordedCall]]:
    """Calls by task, in the order each task is first seen."""
    grouped: dict[str, list[RecordedCall]] = {}
    for record in calls:
        grouped.setdefault(record.task_id, []).append(record)
    return grouped


def _replayed_quality(outcome: TaskReplay) -> float | None:
    """The recorded quality, or 0 for a task the policy stopped before its end."""
    if outcome.recorded_quality is None or not outcome.stop_reason:
        return outcome.recorded_quality
    return 0.0


def _replay_call(
    gov: Governor,
    task: Task,
    record: RecordedCall,
    swaps: Mapping[str, str],
    named: Mapping[str, str] | None = None,
) -> None:
    """One recorded call, in ``task``, also charged to the scope values
    ``named`` (its record's, as a call's LiteLLM ``metadata`` names them live)."""
    model = swaps.get(record.model, record.model)
    usage = _recorded_usage(record)
    request = CallRequest(
        model=model,
        messages=(),
        max_output_tokens=max(record.output_tokens, 1),
        prompt_tokens=record.input_tokens,
        task=task,
        attribution=named,
    )
    admission = gov.begin_call(request)
    gov.end_call(admission, CallResult(usage=usage, response_model=model))


def _recorded_usage(record: RecordedCall) -> Usage:
    """The usage a record reports, each part clamped to what holds it.

    A record written by hand or by an older release may give parts larger
    than their wholes (more cache reads than input tokens, say); pricing
    refuses such a usage, so each part is cut to what is left of its whole.
    """
    prompt, completion = record.input_tokens, record.output_tokens
    read = min(record.cache_read_tokens, prompt)
    write = min(record.cache_write_tokens, prompt - read)
    reasoning = min(record.reasoning_tokens, completion)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cache_read_tokens=read,
        cache_write_tokens=write,
        reasoning_tokens=reasoning,
        audio_input_tokens=min(record.audio_input_tokens, prompt - read - write),
        audio_output_tokens=min(record.audio_output_tokens, completion - reasoning),
        audio_cache_read_tokens=min(record.audio_cache_read_tokens, read),
    )


def _values(record: SpendRecord) -> tuple[dict[str, str], dict[str, str]]:
    """The scope values a record names: those a live call can be charged to,
    and those the live governor refuses as names (see :func:`_warn_refused`).

    An empty or blank value is unset, as reports read it. Records written by
    older releases, or by hand, may hold other names today's rules refuse
    (``"a#b"``, ``" ab"``): reports list them, but no live call is charged
    to them, so the replay charges none to them either and says so.
    """
    usable: dict[str, str] = {}
    refused: dict[str, str] = {}
    for scope in ATTRIBUTION_FIELDS:
        value = getattr(record, scope)
        if value is None or not value.strip():
            continue
        (usable if _usable_name(value) else refused)[scope] = value
    return usable, refused


@functools.lru_cache(maxsize=4096)
def _usable_name(value: str) -> bool:
    return name_problem(value) is None


def _shared_attribution(
    first: RecordedCall, values: list[dict[str, str]]
) -> Attribution:
    """A task's attribution: the scope values all its calls name alike (each
    call names its own others, in ``values``), and its first call's tags."""
    shared = {k: v for k, v in values[0].items() if all(c.get(k) == v for c in values)}
    tags = {
        name: value
        for name, value in first.tags
        if _usable_tag(name) and _usable_tag(value)
    }
    return Attribution(**shared, tags=tags)


def _usable_tag(text: str) -> bool:
    return isinstance(text, str) and tag_problem(text) is None


def _quality(
    calls: list[RecordedCall],
) -> tuple[float | None, list[tuple[str, str]]]:
    """A task's quality, from a ``quality`` or ``correct`` tag on any call
    (the last call with one it can read), and the (tag, value) pairs passed
    over as unreadable on the way.

    A value is a finite number, or true/false/yes/no in any case (1 and 0);
    NaN and infinities are passed over as unreadable.
    """
    unread: list[tuple[str, str]] = []
    for record in reversed(calls):
        tags = dict(record.tags)
        for key in ("quality", "correct"):
            value = tags.get(key)
            if value is None:
                continue
            quality = _quality_value(value)
            if quality is not None:
                return quality, unread
            unread.append((key, str(value)))
    return None, unread


def _quality_value(value: Any) -> float | None:
    """A tag value as a quality: a number, or a yes/no word; None otherwise."""
    word = _QUALITY_WORDS.get(str(value).strip().lower())
    if word is not None:
        return word
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _nano(value: Decimal) -> Decimal:
    return value.quantize(Decimal("1e-9")).normalize()


def load_policy(spec: str) -> Policy:
    """Load a policy from ``default``, ``pack:NAME``, a ``.json`` or ``.py`` file.

    A Python file must define ``POLICY``; ``path.py:NAME`` picks another name.
    ``pack:NAME`` is a ready-made pack of :mod:`governor.policies.packs`. A
    file is read as UTF-8 (a byte-order mark is allowed); a JSON file may
    not name one key twice in an object, since the last would silently win.

    Raises:
        ConfigError: the file is missing, is neither ``.json`` nor ``.py``,
            is not UTF-8, or does not hold a Policy; or no pack has that name.
    """
    if spec == "default":
        return Policy()
    if spec.startswith("pack:"):
        from governor.policies.packs import by_name

        return by_name(spec.removeprefix("pack:"))
    path_text, _, name = spec.partition(":") if ".py:" in spec else (spec, "", "")
    path = Path(path_text)
    if not path.is_file():
        from governor.policies.packs import PACKS

        pack = spec.strip().lower().replace("-", "_")
        hint = f"; did you mean 'pack:{pack}'?" if pack in PACKS else ""
        raise ConfigError(
            f"policy {spec!r} is not 'default', 'pack:NAME' or an existing "
            f".json / .py file{hint}"
        )
    suffix = path.suffix.lower()
    if suffix not in (".json", ".py"):
        raise ConfigError(
            f"{path}: a policy file must be a .json file (one JSON object) or "
            "a .py file that defines POLICY, named so; or give 'default' or "
            "'pack:NAME'"
        )
    if suffix == ".json":
        return _json_policy(path)
    return _python_policy(path, name or "POLICY")


def _check_utf8(path: Path) -> str:
    """The file's text, read as UTF-8 with or without a byte-order mark.

    Raises:
        ConfigError: it is not UTF-8 (UTF-16, Latin-1, ...).
    """
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save "
            "the file as UTF-8"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from exc


def _check_source_text(path: Path) -> None:
    """Refuse a .py file that its own encoding (UTF-8 unless it declares
    another in a coding line) cannot read, e.g. one saved as UTF-16."""
    import io
    import tokenize

    data = path.read_bytes()
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    except SyntaxError:
        encoding = "utf-8"
    if encoding.startswith("utf-8"):
        _check_utf8(path)
        return
    try:
        data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not {encoding} text as its coding line says ({exc.reason} "
            f"at byte {exc.start}); save the file as UTF-8"
        ) from exc


def _json_policy(path: Path) -> Policy:
    text = _check_utf8(path)
    try:
        data = _unique_keys(
            json.loads(text, object_pairs_hook=_Pairs, parse_float=json_number), ""
        )
    except ValueError as exc:
        raise ConfigError(f"{path}: not a policy: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: not a policy: a policy file holds one JSON object "
            f'such as {{"budgets": [{{"max_usd": "1"}}]}}, got a JSON '
            f"{type(data).__name__}"
        )
    try:
        return Policy(**data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a policy: {exc}") from exc


def json_number(text: str) -> float | Decimal:
    """A JSON number with a fraction or exponent, read without losing digits.

    A float when it keeps the number as written (``0.993``, ``1e-7``): the
    policy's money fields read a float by its shortest digits, the same
    ones; a whole number written with an exponent (``1e2``, ``1.5e2``) is
    an int, so it reads as the same number written as text does (``100``,
    not ``100.0``). Otherwise the exact :class:`~decimal.Decimal`, so that an amount
    such as ``8426164.243672113``, which a float would move by a
    nano-dollar, is kept, and one with digits past the ninth place is
    refused, as it is when written as a string.
    """
    number = float(text)
    try:
        exact = Decimal(text)
    except ArithmeticError:
        shown = text if len(text) <= 40 else f"{text[:37]}..."
        raise ValueError(
            f"the number {shown} has an exponent too large to read; "
            "write the value within the range the field allows"
        ) from None
    if math.isfinite(number) and Decimal(repr(number)) == exact:
        if number.is_integer() and "e" in text.lower() and abs(number) < 2**53:
            return int(number)  # 1e2 is 100, as "1e2" written as text is
        return number
    return exact


class _Pairs(list[tuple[str, Any]]):
    """A JSON object's members as read, duplicates kept, for _unique_keys."""


def _unique_keys(value: Any, where: str) -> Any:
    """``value`` with its objects made dicts; ValueError on a key given twice.

    ``json.loads`` keeps the last of two equal keys, so a policy that names
    ``budgets`` twice would silently drop the first list: refused instead.
    """
    if isinstance(value, _Pairs):
        result: dict[str, Any] = {}
        for key, item in value:
            if key in result:
                place = f" in {where}" if where else " at the top level"
                raise ValueError(
                    f"key {key!r} appears twice{place}; the last would silently "
                    "replace the first: keep one"
                )
            result[key] = _unique_keys(item, f"{where}.{key}" if where else key)
        return result
    if isinstance(value, list):
        return [_unique_keys(item, f"{where}[{i}]") for i, item in enumerate(value)]
    return value


def _python_policy(path: Path, name: str) -> Policy:
    # Named as `import cpol` names cpol.py, so that its functions are
    # `cpol.my_embed` here as in the program that imports it: a callable
    # embedder's cache index (callable:cpol.my_embed) is the same in both.
    # The module is not added to sys.modules, so it shadows nothing.
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        _check_source_text(path)  # the likelier cause, in plainer words
        raise ConfigError(f"{path}: importing it failed: {exc!r}") from exc
    if not hasattr(module, name):
        raise ConfigError(
            f"{path} defines no Policy named {name}: define {name} = Policy(...) "
            f"in it, or name the policy after a colon ({path}:NAME)"
        )
    policy = getattr(module, name)
    if not isinstance(policy, Policy):
        if isinstance(policy, dict):
            hint = (
                f"; build it with {name} = Policy(**{{...}}), or save the "
                "mapping as a .json policy file"
            )
        elif callable(policy):
            hint = f"; call it: {name} = {_called_as(policy, module)}(...)"
        else:
            hint = ""
        raise ConfigError(
            f"{path}: {name} is defined but is {_a(type(policy).__name__)}, not "
            f"a Policy{hint}"
        )
    return policy


def _called_as(function: Any, module: Any) -> str:
    """How the policy file would name ``function``: ``packs.production`` for
    a pack, the bare name for a function of the file itself."""
    name = getattr(function, "__qualname__", "POLICY")
    home = getattr(function, "__module__", None)
    if not isinstance(home, str) or home == module.__name__:
        return str(name)
    return f"{home.rpartition('.')[2]}.{name}"


def swaps_from(pairs: Iterable[str]) -> dict[str, str]:
    """Parse ``OLD=NEW`` model swaps from the command line.

    The same swap given twice is kept once; one OLD swapped for two models
    is refused, since a call is replayed as one model.
    """
    swaps: dict[str, str] = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise ConfigError(f"model swap {pair!r} must look like OLD=NEW")
        earlier = swaps.setdefault(old, new)
        if earlier != new:
            raise ConfigError(
                f"--model {old}={earlier} and --model {pair} swap {old!r} for "
                f"two models; a call is replayed as one model: give {old}= once"
            )
    return swaps


def _a(noun: str) -> str:
    """``noun`` with its indefinite article: 'a dict', 'an int'."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"
