"""The anomaly monitor: detector plus hooks, safe to share between threads."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from governor.anomaly._actions import AlertHook, LogHook, Tighten, WebhookHook
from governor.anomaly._detector import Alert, AnomalyDetector
from governor.anomaly._settings import Anomalies
from governor.spend._record import SpendRecord

__all__ = ["AnomalyMonitor"]

logger = logging.getLogger(__name__)


class AnomalyMonitor:
    """Feed spend records in; alerts come out through hooks.

    Built from :class:`Anomalies` settings: every alert is logged at
    ``log_level``, POSTed to ``webhook_url`` when set, passed to each hook in
    ``hooks``, and, when ``auto_tighten`` is not ``"off"``, turned into a
    :class:`Tighten` request for ``on_tighten``, which runs before the hooks.
    A hook that raises is logged and skipped: monitoring never breaks the call
    it watches. Hooks run on the thread that feeds the records (in a
    governor, its spend-writer thread), so a hook that does slow work, such
    as paging someone, should hand it to a queue or thread of its own; the
    webhook already posts from its own thread.

    Thread-safe: the detector runs under a lock, hooks run outside it.

    Args:
        settings: rules and actions; the defaults when None.
        hooks: callables taking an :class:`Alert`, called in order.
        on_tighten: receives a :class:`Tighten` per alert when auto-tighten
            is on; typically lowers or blocks the scope's budget.
    """

    def __init__(
        self,
        settings: Anomalies | None = None,
        *,
        hooks: Sequence[AlertHook] = (),
        on_tighten: Callable[[Tighten], None] | None = None,
    ) -> None:
        self.settings = settings or Anomalies()
        self._detector = AnomalyDetector(self.settings)
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
        self._tightened_at: dict[str, datetime] = {}
        if self.settings.auto_tighten != "off" and on_tighten is None:
            logger.warning(
                "Anomalies(auto_tighten=%r) has no on_tighten callback; "
                "alerts will not tighten any budget",
                self.settings.auto_tighten,
            )

    def observe(self, rec: SpendRecord) -> list[Alert]:
        """Feed one spend record; run the hooks for each alert and return them."""
        with self._lock:
            alerts = self._detector.observe_record(rec)
        for alert in alerts:
            self._dispatch(alert)
        return alerts

    def _dispatch(self, alert: Alert) -> None:
        # Tighten first: a slow hook (a pager with a timeout) must not let a
        # runaway keep spending until it returns.
        mode = self.settings.auto_tighten
        on_tighten = self._on_tighten
        if mode != "off" and on_tighten is not None and self._covers(alert):
            request = Tighten(alert.scope, mode, self.settings.tighten_factor, alert)
            _call_safely(on_tighten, request)
        for hook in self._hooks:
            _call_safely(hook, alert)

    def _covers(self, alert: Alert) -> bool:
        """Whether the alert's kind of scope may be tightened, and not yet was."""
        kind = alert.scope.partition(":")[0]
        return kind in self.settings.tighten_scopes and self._first(alert)

    def _first(self, alert: Alert) -> bool:
        """Whether an alert may tighten its scope: once per scope per cooldown.

        One spike often trips both rules and both metrics at once; with
        ``"lower"`` each would cut the limit again (a half, then a quarter).
        """
        with self._lock:
            last = self._tightened_at.get(alert.scope)
            since_s = None if last is None else (alert.ts - last).total_seconds()
            if since_s is not None and 0 <= since_s < self.settings.cooldown_s:
                return False
            self._tightened_at[alert.scope] = alert.ts
            return True

    def close(self) -> None:
        """Let queued webhook POSTs finish."""
        if self._webhook is not None:
            self._webhook.close()


def _call_safely(hook: Callable[[Any], None], value: object) -> None:
    try:
        hook(value)
    except Exception:
        # Hooks are user code; an alert must never fail the governed call.
        logger.warning("anomaly hook %r failed", hook, exc_info=True)
