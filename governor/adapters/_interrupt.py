"""Ctrl-C ends the sync graph runs the main thread is waiting on, at once.

A sync LangGraph run executes its nodes on worker threads. When Ctrl-C
raises ``KeyboardInterrupt`` in the main thread, LangGraph waits for those
threads before the error reaches the governed graph, and until then the
nodes' model calls would still be sent and paid for. While the main thread
runs a governed sync run (or a batch of them), a SIGINT handler placed in
front of the one already installed marks those runs as ending first, so
their calls from then on are refused, then hands the signal on unchanged.

The handler only assigns an attribute per task: a signal handler runs
between two bytecodes of the main thread, which may hold any lock.
"""

from __future__ import annotations

import contextvars
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from governor._task import Task

__all__ = ["InterruptScope", "register", "unshare"]

_RUNS: contextvars.ContextVar[list[Task] | None] = contextvars.ContextVar(
    "governor_interruptible_runs", default=None
)


def register(task: Task) -> None:
    """Add a sync run's task to the interrupt scope it starts under, if any.

    Runs started in a batch's worker threads, or by a node of a governed run
    (a sub-agent), see the scope through their copied context.
    """
    runs = _RUNS.get()
    if runs is not None:
        runs.append(task)


class InterruptScope:
    """While open on the main thread, SIGINT ends its runs before it is raised.

    ``end`` marks one task as ending. Opened on another thread, or when the
    SIGINT handler is not a Python function (ignored, or the default of a
    process that never installed Python's), it does nothing.

    Args:
        end: marks a task's run as ending, so that its calls are refused.
        tasks: the runs known when the scope opens.
    """

    def __init__(
        self, end: Callable[[Task], None], tasks: tuple[Task, ...] = ()
    ) -> None:
        self.tasks: list[Task] = list(tasks)
        self._end = end
        self._previous: Callable[[int, FrameType | None], Any] | None = None

    def open(self) -> bool:
        """Place the handler; whether it was placed."""
        if threading.current_thread() is not threading.main_thread():
            return False
        previous = signal.getsignal(signal.SIGINT)
        if not callable(previous):
            return False
        try:
            signal.signal(signal.SIGINT, self._on_interrupt)
        except ValueError:  # not the main interpreter
            return False
        self._previous = previous
        return True

    def close(self) -> None:
        """Put the previous handler back, unless another replaced this one."""
        previous, self._previous = self._previous, None
        if previous is None:
            return
        if threading.current_thread() is not threading.main_thread():
            return  # a stream finalized elsewhere: the handler only chains on
        if signal.getsignal(signal.SIGINT) == self._on_interrupt:
            signal.signal(signal.SIGINT, previous)

    def context(self) -> contextvars.Context:
        """A copy of the current context in which new runs join this scope.

        A scope that is not open leaves the copy as it is: its runs join
        the scope they run under, if any.
        """
        copied = contextvars.copy_context()
        if self._previous is not None:
            copied.run(_RUNS.set, self.tasks)
        return copied

    def shared(self) -> contextvars.Token[list[Task] | None] | None:
        """Let runs started in the current context join this open scope.

        Returns the token to reset with :func:`unshare`, or None when the
        scope is not open.
        """
        if self._previous is None:
            return None
        return _RUNS.set(self.tasks)

    def _on_interrupt(self, signum: int, frame: FrameType | None) -> Any:
        for task in list(self.tasks):
            self._end(task)
        previous = self._previous
        if previous is None:  # closed while the signal was on its way
            previous = signal.default_int_handler
        return previous(signum, frame)


def unshare(token: contextvars.Token[list[Task] | None] | None) -> None:
    """Undo :meth:`InterruptScope.shared`."""
    if token is not None:
        _RUNS.reset(token)
