"""The anomaly monitor: detector plus hooks, safe to share between threads."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from governor._forks import start_over_in_children
from governor._quiet import Quiet
from governor.anomaly._actions import AlertHook, LogHook, Tighten, WebhookHook
from governor.anomaly._detector import Alert, AnomalyDetector
from governor.anomaly._settings import Anomalies
from governor.spend._record import SpendRecord
from governor.spend._time import from_us, to_us

if TYPE_CHECKING:
    from governor.policies import Budget

__all__ = ["AnomalyMonitor"]

MonitorClock = Literal["records", "live"]

logger = logging.getLogger(__name__)


class AnomalyMonitor:
    """Feed spend records in; alerts come out through hooks.

    Built from :class:`Anomalies` settings: every alert is logged at
    ``log_level``, POSTed to ``webhook_url`` when set, passed to each hook in
    ``hooks``, and, when ``auto_tighten`` is not ``"off"``, may become a
    :class:`Tighten` request for ``on_tighten``, which runs before the hooks.
    A scope raises one alert per anomaly episode (see :class:`Alert`).
    A hook that raises is logged and skipped: monitoring never breaks the call
    it watches. Hooks run on the thread that feeds the records (in a
    governor, its spend-writer thread), so a hook that does slow work, such
    as paging someone, should hand it to a queue or thread of its own; the
    webhook already posts from its own thread.

    Auto-tighten acts on the narrowest scope that explains an alert (the
    first of ``alert.explained_by`` whose kind is in ``tighten_scopes``, else
    the alert's own scope when its kind is), once: while that scope is
    tightened, further alerts it explains add nothing. With ``"lower"`` and
    ``restores=True`` (as a governor makes its monitor), once every episode
    that holds it tightened has ended, a ``"restore"`` request undoes the
    lowering; a block stays until someone unblocks the scope. Given the
    policy's ``budgets``, ``"lower"`` on a scope that no budget limits sends
    nothing and logs a WARNING saying which budget to add (or to use
    ``"block"``); it never lowers a wider scope instead.

    The monitor keeps at most ``settings.max_series`` scope-and-metric
    series (see :class:`AnomalyDetector` for which one goes past that). When
    it drops series it logs a WARNING, at most once a minute, with how many:
    a scope seen again starts without a baseline.

    Time: with ``clock="records"`` (the default) each record counts at its
    own ``ts``, as when replaying records already written, which must then
    come in time order (see :class:`AnomalyDetector`). With ``clock="live"``
    (as a governor makes its monitor) records count on the monitor's own
    clock, which cannot step: wall time when the monitor was made plus
    ``time.monotonic()`` since. A record counts at that clock less its age
    by the wall clock now (so a step of the wall clock, such as NTP setting
    it back an hour, moves nothing, and a backlog the spend writer catches up
    on keeps its calls' spacing), or at the clock itself when it is stamped
    more than ``max_record_lead_s`` ahead (a host whose clock is ahead): one
    bad timestamp can neither hold an anomaly episode open nor end one. A
    record stamped behind the latest time seen counts in the open interval.

    Thread-safe: the detector runs under a lock, hooks run outside it. A
    monitor made before ``os.fork()`` keeps working in the child, with a copy
    of what the parent had learned at the fork.

    Args:
        settings: rules and actions; the defaults when None.
        hooks: callables taking an :class:`Alert`, called in order.
        on_tighten: receives :class:`Tighten` requests when auto-tighten is
            on; typically lowers, blocks or restores the scope's budget.
        restores: also send ``"restore"`` requests when an episode ends. Off
            by default, so that a callback written for ``"lower"`` and
            ``"block"`` alone never receives one; ``Governor.apply_tighten``
            handles them.
        budgets: the budgets ``on_tighten`` lowers (a policy's ``budgets``),
            so that ``"lower"`` can tell a scope it cannot lower; None: every
            scope is taken to have one.
        clock: ``"records"`` or ``"live"``, as above. Give ``"live"`` to a
            monitor you make for a governor to feed.
        max_record_lead_s: with ``clock="live"``, how far ahead of the wall
            clock a record may be stamped before it counts as seen now.
        monotonic: the monotonic clock, in seconds (for tests).
        wall_time: the wall clock, in seconds since the epoch (for tests).
    """

    def __init__(
        self,
        settings: Anomalies | None = None,
        *,
        hooks: Sequence[AlertHook] = (),
        on_tighten: Callable[[Tighten], None] | None = None,
        restores: bool = False,
        budgets: Iterable[Budget] | None = None,
        clock: MonitorClock = "records",
        max_record_lead_s: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
        wall_time: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or Anomalies()
        self._clock: _LiveClock | None = None
        if clock == "live":
            self._clock = _LiveClock(max_record_lead_s, monotonic, wall_time)
        elif clock != "records":
            raise ValueError(
                f"clock must be 'records' or 'live', got {clock!r}; give 'live' "
                "for a monitor a governor feeds as calls happen"
            )
        self._restores = restores
        self._budgets = None if budgets is None else tuple(budgets)
        # Scopes "lower" had no budget to lower on, with their alerts; logged
        # outside the lock.
        self._unlowered: list[tuple[str, Alert]] = []
        self._detector = AnomalyDetector(
            self.settings, on_episode_end=self._episode_ended
        )
        self._lock = threading.Lock()
        self._webhook: WebhookHook | None = None
        level = logging.getLevelNamesMapping()[self.settings.log_level]
        self._hooks: list[AlertHook] = [LogHook(level)]
        if self.settings.webhook_url:
            self._webhook = WebhookHook(
                self.settings.webhook_url, timeout_s=self.settings.webhook_timeout_s
            )
            self._hooks.append(self._webhook)
        self._hooks.extend(hooks)
        self._on_tighten = on_tighten
        self._ended: list[str] = []
        # Tightened scope -> the alerting scopes whose episodes hold it there,
        # and the alert that tightened it.
        self._held: dict[str, tuple[set[str], Alert]] = {}
        # Series dropped as of the last eviction warning; one a minute at most.
        self._evicted_warned = 0
        self._quiet = Quiet()
        if self.settings.auto_tighten != "off" and on_tighten is None:
            logger.warning(
                "Anomalies(auto_tighten=%r) has no on_tighten callback; "
                "alerts will not tighten any budget",
                self.settings.auto_tighten,
            )
        start_over_in_children(self)

    def _forget_parent(self) -> None:
        """In a forked child: a lock of its own.

        A lock the parent's spend writer held at the fork would stay held for
        good. The baselines learned and the scopes tightened so far stay: the
        child watches the same traffic on from where the parent was.
        """
        self._lock = threading.Lock()

    def observe(self, rec: SpendRecord) -> list[Alert]:
        """Feed one spend record; run the hooks for each alert and return them."""
        with self._lock:
            at = None if self._clock is None else self._clock.place(rec.ts)
            alerts = self._detector.observe_record(rec, at=at)
            ended, self._ended = self._ended, []
            requests = self._requests(alerts, ended)
            unlowered, self._unlowered = self._unlowered, []
            dropped, total = self._evictions_to_report(), self._detector.evicted
        for scope, alert in unlowered:
            _warn_unlowered(scope, alert)
        if dropped:
            logger.warning(
                "anomaly monitor dropped %d scope series (%d in all so far): it "
                "keeps at most max_series=%d (one per metric for each value "
                "of the scopes %s), and a scope seen again starts without a "
                "baseline. Watch fewer scopes (drop one with many one-off "
                "values, such as 'session', from Anomalies.scopes) or raise "
                "Anomalies(max_series=...)",
                dropped,
                total,
                self.settings.max_series,
                ", ".join(self.settings.scopes),
            )
        # Tighten first: a slow hook (a pager with a timeout) must not let a
        # runaway keep spending until it returns.
        if self._on_tighten is not None:
            for request in requests:
                _call_safely(self._on_tighten, request)
        for alert in alerts:
            for hook in self._hooks:
                _call_safely(hook, alert)
        return alerts

    def _evictions_to_report(self) -> int:
        """Series dropped since the last warning, when a warning is due; else 0.

        Called under the lock.
        """
        dropped = self._detector.evicted - self._evicted_warned
        if not dropped or self._quiet.due("evicted") is None:
            return 0
        self._evicted_warned = self._detector.evicted
        return dropped

    def _episode_ended(self, scope: str, ts: datetime) -> None:
        # Called by the detector, under the lock.
        self._ended.append(scope)

    def _requests(self, alerts: list[Alert], ended: list[str]) -> list[Tighten]:
        if self.settings.auto_tighten == "off" or self._on_tighten is None:
            return []
        requests = [r for scope in ended for r in self._release(scope)]
        for alert in alerts:
            requests += self._tighten(alert)
        return requests

    def _release(self, source: str) -> list[Tighten]:
        """Forget an ended episode; restore what no open episode still holds."""
        requests: list[Tighten] = []
        for target, (sources, alert) in list(self._held.items()):
            sources.discard(source)
            if sources:
                continue
            del self._held[target]
            if self.settings.auto_tighten == "lower" and self._restores:
                factor = 1 / self.settings.tighten_factor
                requests.append(Tighten(target, "restore", factor, alert))
        return requests

    def _tighten(self, alert: Alert) -> list[Tighten]:
        """The request an alert makes, if its target is not tightened yet."""
        target = self._target(alert)
        if target is None:
            return []
        if target in self._held:
            self._held[target][0].add(alert.scope)
            return []
        mode: Literal["lower", "block"]
        mode = "block" if self.settings.auto_tighten == "block" else "lower"
        if mode == "lower" and not self._has_budget(target):
            self._unlowered.append((target, alert))
            return []
        self._held[target] = ({alert.scope}, alert)
        return [Tighten(target, mode, self.settings.tighten_factor, alert)]

    def _has_budget(self, scope: str) -> bool:
        """Whether a budget given limits ``scope`` (True when none were given).

        Lowering ``all`` scales every budget's limits, so any limit will do.
        """
        if self._budgets is None:
            return True
        kind, _, value = scope.partition(":")
        return any(
            (budget.max_usd is not None or budget.max_tokens is not None)
            and (
                kind == "all" or (budget.scope == kind and budget.key in (None, value))
            )
            for budget in self._budgets
        )

    def _target(self, alert: Alert) -> str | None:
        """The narrowest scope explaining the alert that may be tightened."""
        for scope in (*alert.explained_by, alert.scope):
            if scope.partition(":")[0] in self.settings.tighten_scopes:
                return scope
        return None

    def close(self, timeout_s: float | None = None) -> int:
        """Let queued webhook POSTs finish; return how many alerts were dropped.

        Waits up to ``timeout_s`` seconds in all, or, when None, as long as
        the receiver keeps answering; alerts still waiting then are dropped
        with a WARNING (see :meth:`WebhookHook.close`). ``Governor.close``
        calls it. The monitor goes on working: a later alert is posted as
        before.
        """
        if self._webhook is None:
            return 0
        return self._webhook.close(timeout_s)


class _LiveClock:
    """Places records on a clock that cannot step (see ``clock="live"``)."""

    __slots__ = ("_anchor_us", "_lead_us", "_monotonic", "_wall")

    def __init__(
        self,
        lead_s: float,
        monotonic: Callable[[], float],
        wall: Callable[[], float],
    ) -> None:
        if not (math.isfinite(lead_s) and lead_s >= 0):
            raise ValueError(
                "max_record_lead_s must be a finite number of seconds, at least "
                f"0, got {lead_s!r}; e.g. 5"
            )
        self._lead_us = round(lead_s * 1_000_000)
        self._monotonic, self._wall = monotonic, wall
        self._anchor_us = _us(wall()) - _us(monotonic())

    def place(self, ts: datetime) -> datetime:
        """The time on this clock at which a record stamped ``ts`` counts."""
        now_us = self._anchor_us + _us(self._monotonic())
        age_us = _us(self._wall()) - to_us(ts)
        if age_us < -self._lead_us:  # stamped ahead: a clock that is off
            return from_us(now_us)
        return from_us(now_us - age_us)


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


def _warn_unlowered(scope: str, alert: Alert) -> None:
    """Say that ``"lower"`` found no budget on ``scope``, and what to do."""
    kind, _, value = scope.partition(":")
    if kind == "all":
        fix = "the policy has no budget with a limit; add one"
    elif kind in ("model", "provider"):
        fix = (
            f"budgets cannot limit {kind} scopes; drop {kind!r} from "
            "Anomalies.tighten_scopes"
        )
    else:
        fix = (
            f"no budget has scope={kind!r} (for every value or key={value!r}); "
            f"add a Budget(scope={kind!r}, max_usd=...) to the policy"
        )
    logger.warning(
        "spend anomaly on %s: auto_tighten='lower' has no budget to lower on "
        "%s, so nothing was tightened: %s, or use auto_tighten='block'",
        alert.scope,
        scope,
        fix,
    )


def _call_safely(hook: Callable[[Any], None], value: object) -> None:
    try:
        hook(value)
    except Exception:
        # Hooks are user code; an alert must never fail the governed call.
        logger.warning("anomaly hook %r failed", hook, exc_info=True)
