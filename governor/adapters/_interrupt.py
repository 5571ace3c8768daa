"""Ctrl-C ends the sync graph runs the main thread is waiting on, at once.

A sync LangGraph run executes its nodes on worker threads. When Ctrl-C
raises ``KeyboardInterrupt`` in the main thread, LangGraph waits for those
threads before the error reaches the governed graph, and until then the
nodes' model calls would still be sent and paid for.

One module-level SIGINT handler serves every open scope. It is placed in
front of the program's own handler when the first scope opens on the main
thread, and put back when the last one closes there. It calls the program's
handler first: only when that raises (``KeyboardInterrupt``, as Python's
default does) are the runs of the open scopes marked as ending, so their
calls from then on are refused. A handler that only asks for a graceful stop
(sets a flag, or cancels an asyncio task) leaves the runs to finish.

The handler takes no lock and only assigns an attribute per task: a signal
handler runs between two bytecodes of the main thread, which may hold any
lock. A scope closed on another thread only leaves the registry; a handler
left in place with no scope open only hands the signal on.
"""

from __future__ import annotations

import contextvars
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from governor._task import Task

__all__ = ["InterruptScope", "register", "unshare"]

_Handler = Callable[[int, FrameType | None], Any]

_RUNS: contextvars.ContextVar[list[Task] | None] = contextvars.ContextVar(
    "governor_interruptible_runs", default=None
)

# The open scopes, by id. Changed under _LOCK; the handler only copies it
# (one C-level step under the GIL), never taking the lock.
_OPEN: dict[int, InterruptScope] = {}
_LOCK = threading.Lock()
# The program's handlers found each time ours was placed while scopes were
# open, oldest first: the signal is handed to the newest, and the newest is
# put back when the last scope closes. A program handler placed over ours
# that calls ours back (it saved it, to chain to it) is the newest; called
# back from it, ours hands the signal to the one before.
_captured: list[_Handler] = []
# The captured handler a program handler chaining back to the governor's
# is handed the signal to: the one before the handler now running (only the
# main thread runs signal handlers).
_next = -1


def register(task: Task) -> None:
    """Add a sync run's task to the interrupt scope it starts under, if any.

    Runs started in a batch's worker threads, or by a node of a governed run
    (a sub-agent), see the scope through their copied context.
    """
    runs = _RUNS.get()
    if runs is not None:
        runs.append(task)


class InterruptScope:
    """While open on the main thread, a SIGINT that raises ends its runs first.

    ``end`` marks one task as ending. Opened on another thread, or when the
    SIGINT handler is not a Python function (ignored, or the default of a
    process that never installed Python's), it does nothing. It may be
    closed on any thread, in any order with other scopes.

    Args:
        end: marks a task's run as ending, so that its calls are refused.
        tasks: the runs known when the scope opens.
    """

    def __init__(
        self, end: Callable[[Task], None], tasks: tuple[Task, ...] = ()
    ) -> None:
        self.tasks: list[Task] = list(tasks)
        self._end = end
        self._open = False

    def open(self) -> bool:
        """Join the handler's scopes, placing it if needed; whether it did."""
        if threading.current_thread() is not threading.main_thread():
            return False
        with _LOCK:
            if not _place_handler():
                return False
            _OPEN[id(self)] = self
        self._open = True
        return True

    def close(self) -> None:
        """Leave the scopes; the last one closed on the main thread puts the
        program's handler back, unless another has replaced the governor's."""
        if not self._open:
            return
        self._open = False
        with _LOCK:
            _OPEN.pop(id(self), None)
            if _OPEN or threading.current_thread() is not threading.main_thread():
                return  # closed elsewhere: the handler left in place only chains
            _restore_handler()

    def context(self) -> contextvars.Context:
        """A copy of the current context in which new runs join this scope.

        A scope that is not open leaves the copy as it is: its runs join
        the scope they run under, if any.
        """
        copied = contextvars.copy_context()
        if self._open:
            copied.run(_RUNS.set, self.tasks)
        return copied

    def shared(self) -> contextvars.Token[list[Task] | None] | None:
        """Let runs started in the current context join this open scope.

        Returns the token to reset with :func:`unshare`, or None when the
        scope is not open.
        """
        if not self._open:
            return None
        return _RUNS.set(self.tasks)

    def _end_runs(self) -> None:
        for task in list(self.tasks):
            self._end(task)


def _place_handler() -> bool:
    """Put the governor's handler in front of the program's; called under
    _LOCK on the main thread. False when SIGINT is ignored or left to the
    C default, or signals cannot be set here."""
    current = signal.getsignal(signal.SIGINT)
    if current is _on_interrupt:
        return True
    if not callable(current):
        return False
    try:
        signal.signal(signal.SIGINT, _on_interrupt)
    except ValueError:  # not the main interpreter
        return False
    _captured.append(current)
    return True


def _restore_handler() -> None:
    """Put the program's handler back if the governor's is still the one in
    place; called under _LOCK on the main thread with no scope open."""
    if signal.getsignal(signal.SIGINT) is not _on_interrupt:
        _captured.clear()
        return  # the program replaced it: leave the program's choice
    previous = _captured[-1] if _captured else signal.default_int_handler
    signal.signal(signal.SIGINT, previous)
    _captured.clear()


def _on_interrupt(signum: int, frame: FrameType | None) -> Any:
    """Hand the signal to the program's handler; if it raises, end the open
    scopes' runs before the error goes on.

    Called back by a program handler that chains to the governor's (it
    saved it, and a later scope captured that handler), it hands the signal
    to the handler captured before that one, or raises KeyboardInterrupt
    when there is none, rather than to the same one in a loop. A second
    signal arriving while a handler runs starts again from the newest.
    """
    global _next
    handlers = _captured or [signal.default_int_handler]
    # A signal handler's caller is the frame it interrupted; a handler
    # calling this one as a function is its caller instead.
    chained = sys._getframe(1) is not frame
    at = _next if chained else len(handlers) - 1
    previous = handlers[at] if at >= 0 else signal.default_int_handler
    outer, _next = _next, at - 1
    try:
        return previous(signum, frame)
    except BaseException:
        for scope in list(_OPEN.values()):
            scope._end_runs()
        raise
    finally:
        _next = outer


def unshare(token: contextvars.Token[list[Task] | None] | None) -> None:
    """Undo :meth:`InterruptScope.shared`."""
    if token is not None:
        _RUNS.reset(token)
