"""Running a test's body in a forked child, with hang guards.

A child reports by its exit status: 0 when its body returned, 1 when it
raised (its traceback on stderr). A child that hangs (a lock copied held
across the fork) dumps its threads' stacks and is killed, and the test
fails instead of hanging.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def in_child(body: Callable[[], None], *, limit_s: float) -> None:
    """Fork; run ``body`` in the child; fail here if it raised or hung."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's report is its exit status
        code = 1
        try:
            faulthandler.dump_traceback_later(limit_s - 2, exit=True)
            body()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    status = wait_or_kill(pid, limit_s)
    assert status is not None, f"the child hung for {limit_s} s: killed"
    assert os.waitstatus_to_exitcode(status) == 0, "the child failed: see stderr"


def wait_or_kill(pid: int, limit_s: float) -> int | None:
    """The child's wait status, or None if it had to be killed."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


@contextmanager
def held_by_another_thread(lock: Any, *, limit_s: float) -> Iterator[None]:
    """Hold ``lock`` in a second thread for the duration of the block."""
    taken = threading.Event()
    done = threading.Event()

    def hold() -> None:
        with lock:
            taken.set()
            done.wait()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert taken.wait(limit_s)
    try:
        yield
    finally:
        done.set()
        thread.join()
