"""Parts of a governor that start over in a forked child.

A fork copies the process's memory but only the thread that forked: the
background threads of a governor's parts (spend writer, lease keeper,
queued-settle drainer, retries, webhook) are not in the child, and a lock
one of them held at the fork stays held there. Servers that import the app
once and fork workers (gunicorn --preload, Celery prefork) would lose the
child's records and renewals without a word. Parts with no thread of their
own but a lock that other threads take (the in-memory ledger, the anomaly
monitor, the Redis connections) would deadlock the child the same way. Each
such part registers here and its ``_forget_parent()`` runs in the child right
after the fork.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol

__all__ = ["start_over_in_children"]


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


if hasattr(os, "register_at_fork"):  # not on Windows, which cannot fork
    os.register_at_fork(after_in_child=_in_child)
