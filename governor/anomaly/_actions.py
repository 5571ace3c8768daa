"""What happens on an alert: log, call back, POST a webhook, tighten a budget.

Every action is a hook, a callable taking one :class:`Alert`. Hooks must not
break the call that tripped the alert, so :class:`AnomalyMonitor` catches and
logs whatever a hook raises; the webhook also never raises on its own.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from governor._forks import start_over_in_children
from governor.anomaly._detector import Alert

__all__ = ["AlertHook", "LogHook", "Tighten", "WebhookHook"]

logger = logging.getLogger(__name__)

AlertHook = Callable[[Alert], None]


@dataclass(frozen=True, slots=True)
class Tighten:
    """A request to lower a scope's budget, block the scope, or undo a lowering.

    The governor hands it to the ``on_tighten`` callback given to
    :class:`AnomalyMonitor`. ``"lower"`` multiplies the scope's limits by
    ``factor``; ``"block"`` refuses the scope's calls until someone unblocks
    it. ``"restore"`` comes once the anomaly episode that lowered the scope has
    ended and undoes that lowering: its ``factor`` is the reciprocal of the
    lowering's, so a callback that multiplies limits by ``factor`` restores
    them, and ``alert`` is the alert that lowered the scope.
    """

    scope: str
    mode: Literal["lower", "block", "restore"]
    factor: float
    alert: Alert


class LogHook:
    """Write each alert to this module's logger at a fixed level."""

    def __init__(self, level: int = logging.WARNING) -> None:
        self.level = level

    def __call__(self, alert: Alert) -> None:
        logger.log(self.level, "%s", alert.describe())


class WebhookHook:
    """POST each alert as JSON to a URL; never raises into the caller.

    By default the POST runs on one background thread so that the governed
    call which tripped the alert does not wait for it; ``blocking=True`` posts
    in the caller's thread. Failures (refused connection, timeout, HTTP error
    status) are logged at WARNING and dropped.

    Args:
        url: an ``http://`` or ``https://`` URL.
        timeout_s: seconds one POST may take.
        headers: extra request headers, e.g. an authorisation token.
        blocking: post in the caller's thread.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        headers: Mapping[str, str] | None = None,
        blocking: bool = False,
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        self._blocking = blocking
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        start_over_in_children(self)

    def _forget_parent(self) -> None:
        """In a forked child: the parent's thread is not here, so start over
        (its executor would take POSTs and never run them)."""
        self._executor = None
        self._lock = threading.Lock()

    def __call__(self, alert: Alert) -> None:
        body = json.dumps({"alert": alert.to_json_dict()}).encode()
        if self._blocking:
            self._post(body)
            return
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="governor-webhook"
                )
            self._executor.submit(self._post, body)

    def _post(self, body: bytes) -> None:
        request = urllib.request.Request(
            self.url, data=body, headers=self._headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as reply:
                reply.read()
        except Exception as exc:
            # URLError (HTTP error statuses too), timeouts, malformed replies:
            # an alert channel failing must never fail the governed call.
            logger.warning("anomaly webhook POST to %s failed: %s", self.url, exc)

    def close(self) -> None:
        """Wait for queued POSTs to finish and stop the background thread."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
