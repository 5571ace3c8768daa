"""Warnings about a Redis ledger that may not hold its budgets.

Two ways a Redis ledger can let spend run past a limit without any error:

* **Eviction.** A server with ``maxmemory`` set and a ``maxmemory-policy``
  other than ``noeviction`` drops keys when it fills up: a budget line comes
  back at zero, the line index forgets lines, a hold keeps its room for good.
  :func:`eviction_warning` reads the server's memory settings once (``INFO
  memory``, else ``CONFIG GET``; either may be refused by ACLs, and then
  nothing is said) and words the warning.
* **Workers that disagree on a limit.** Each reserve checks the limit its own
  worker sends and stores it on the line, so two workers sharing a prefix
  with different policies each admit calls up to their own limit.
  :class:`LimitWatch` words a warning once per line per process when the
  reserve script reports that another writer stored a different limit.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Final

import redis
import redis.asyncio as aredis

from governor.stores._base import Line

__all__ = [
    "LimitWatch",
    "aread_memory_settings",
    "eviction_warning",
    "read_memory_settings",
]

logger = logging.getLogger("governor.stores._redis")

_LINES_REMEMBERED: Final = 1024
"""Lines a process remembers having warned about (oldest forgotten first)."""

_UNREADABLE: Final = (redis.exceptions.ResponseError,)
"""Replies that say the settings cannot be read here (ACLs, a renamed
command): the check then says nothing."""


def _settings(info: Mapping[Any, Any], policy_name: str) -> tuple[int, str] | None:
    """``(maxmemory, policy)`` from an INFO or CONFIG GET reply, if both are there."""
    limit, policy = info.get("maxmemory"), info.get(policy_name)
    if limit is None or policy is None:
        return None
    try:
        return int(limit), str(policy)
    except (TypeError, ValueError):
        return None


def read_memory_settings(client: redis.Redis) -> tuple[int, str] | None:
    """The server's ``maxmemory`` and ``maxmemory-policy``, or None if unreadable.

    ``INFO memory`` first (managed services that disable ``CONFIG`` allow
    it), then ``CONFIG GET``. A refusal of both gives None; a connection
    error is raised, so that the caller can try again later.
    """
    try:
        found = _settings(client.info("memory"), "maxmemory_policy")
    except _UNREADABLE:
        found = None
    if found is not None:
        return found
    try:
        return _settings(client.config_get("maxmemory*"), "maxmemory-policy")
    except _UNREADABLE:
        return None


async def aread_memory_settings(client: aredis.Redis) -> tuple[int, str] | None:
    """Async form of :func:`read_memory_settings`."""
    try:
        found = _settings(await client.info("memory"), "maxmemory_policy")
    except _UNREADABLE:
        found = None
    if found is not None:
        return found
    try:
        return _settings(await client.config_get("maxmemory*"), "maxmemory-policy")
    except _UNREADABLE:
        return None


def eviction_warning(url: str, settings: tuple[int, str] | None) -> str | None:
    """The warning for a server that may evict budget keys, or None.

    None when the settings could not be read, when ``maxmemory`` is 0 (no
    limit, so nothing is evicted) and under ``noeviction``.
    """
    if settings is None:
        return None
    limit, policy = settings
    if limit == 0 or policy == "noeviction":
        return None
    if policy.startswith("volatile"):
        lost = (
            "keys with an expiry: a budget line (its spend comes back at zero, "
            "so calls its budget should refuse are admitted) and a settled "
            "hold id (a settle replayed after an outage charges again)"
        )
    else:
        lost = (
            "any key: a budget line (its spend comes back at zero, so calls "
            "its budget should refuse are admitted), the line index (`governor "
            "budget status` and `budget reset` no longer see its lines until "
            "their next reserve) and a hold (its room stays reserved; `budget "
            "reset` zeroes spend only)"
        )
    return (
        f"budget store: the Redis at {url} has maxmemory {limit} bytes with "
        f"maxmemory-policy {policy}, so when it fills up it evicts {lost}. Set "
        "maxmemory-policy noeviction on it (a full Redis then refuses writes, "
        "which Policy.failure_mode handles, instead of forgetting spend), or "
        "give the budgets a Redis of their own."
    )


def _limit_text(nanos: int | None, tokens: int | None) -> str:
    parts = []
    if nanos is not None:
        usd = Decimal(nanos).scaleb(-9).normalize()
        parts.append(f"${usd:f}")
    if tokens is not None:
        parts.append(f"{tokens:,} tokens")
    return " and ".join(parts) or "no limit"


def _int_or_none(value: Any) -> int | None:
    return None if value in ("", None) else int(value)


class LimitWatch:
    """Warn once per line per process of limits another writer stored.

    ``writer`` is this process's id on the lines (the field ``lw``): the
    reserve script reports a line only when its stored limits differ from
    the ones sent and were written by another writer, so a process that
    changes its own limits (auto-tighten, and its restore) is not reported.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.writer = uuid.uuid4().hex[:8]
        self._warned: dict[str, None] = {}
        self._lock = threading.Lock()

    def start_over(self) -> None:
        """In a forked child: an id and a memory of its own."""
        self.writer = uuid.uuid4().hex[:8]
        self._warned = {}
        self._lock = threading.Lock()

    def check(self, others: Sequence[Any], lines: Sequence[Line]) -> None:
        """Warn of each line in ``others`` (flat: index, stored ln, stored lt)."""
        for at in range(0, len(others) - 2, 3):
            line = lines[int(others[at]) - 1]
            if not self._first(line.key):
                continue
            theirs = _limit_text(
                _int_or_none(others[at + 1]), _int_or_none(others[at + 2])
            )
            ours = _limit_text(line.limit_nanos, line.limit_tokens)
            logger.warning(
                "budget line %r: this worker's policy gives it a limit of %s, "
                "but another worker (or governor) sharing the prefix %r had "
                "stored %s. Each reserve enforces the limit its own worker "
                "sends and stores it for `governor budget status`, so every "
                "worker admits calls up to its own limit and the status shows "
                "whichever reserved last. Run one policy on every worker that "
                "shares the prefix (restart every worker after changing a "
                "limit), and give different apps different prefixes. Logged "
                "once per line per process.",
                line.key,
                ours,
                self.prefix,
                theirs,
            )

    def _first(self, key: str) -> bool:
        with self._lock:
            if key in self._warned:
                return False
            if len(self._warned) >= _LINES_REMEMBERED:
                del self._warned[next(iter(self._warned))]
            self._warned[key] = None
            return True
