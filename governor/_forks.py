"""Parts of a governor that start over in a forked child.

A fork copies the process's memory but only the thread that forked: the
background threads of a governor's parts (spend writer, lease keeper,
queued-settle drainer, retries, webhook) are not in the child, and a lock
one of them held at the fork stays held there. Servers that import the app
once and fork workers (gunicorn --preload, Celery prefork) would lose the
child's records and renewals without a word. Parts with no thread of their
own but a lock that other threads take (the in-memory ledger, the anomaly
monitor, the Redis connections, the response cache's stores and embedders)
would deadlock the child the same way. Each such part registers here and its
``_forget_parent()`` runs in the child right after the fork.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Protocol

__all__ = ["finish_before_forks", "start_over_in_children"]

# How long os.fork() waits for a write in flight to finish; then it goes on.
_FORK_WAIT_S = 10.0


class _StartsOver(Protocol):
    def _forget_parent(self) -> None: ...


_PARTS: weakref.WeakSet[_StartsOver] = weakref.WeakSet()


def start_over_in_children(part: _StartsOver) -> None:
    """Call ``part._forget_parent()`` in each child forked while it lives.

    The part is held weakly, so registering does not keep it alive.
    """
    _PARTS.add(part)


def _in_child() -> None:
    for part in list(_PARTS):
        part._forget_parent()


class _Guarded(Protocol):
    _fork_lock: threading.Lock


_GUARDED: weakref.WeakSet[_Guarded] = weakref.WeakSet()
_HELD: list[threading.Lock] = []


def finish_before_forks(part: _Guarded) -> None:
    """Make ``os.fork()`` wait for ``part._fork_lock``, held across the fork.

    For work that a child must not inherit half done: a SQLite write in a
    transaction at the fork leaves the child's own connection to the file
    locked out for good. The part holds the lock around such work; a fork
    waits for it (up to ``_FORK_WAIT_S``), then both sides release it.
    """
    _GUARDED.add(part)


def _before_fork() -> None:
    for part in list(_GUARDED):
        lock = part._fork_lock
        if lock.acquire(timeout=_FORK_WAIT_S):
            _HELD.append(lock)


def _after_fork() -> None:
    while _HELD:
        _HELD.pop().release()


if hasattr(os, "register_at_fork"):  # not on Windows, which cannot fork
    os.register_at_fork(after_in_child=_in_child)
    os.register_at_fork(
        before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork
    )
