"""The thread that renews long calls' leases ends once no call is open, so a
closed governor leaves no thread behind holding its ledger."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from typing import Any

from governor import Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM
from governor.stores import MemoryLedger

MESSAGES = [{"role": "user", "content": "What is the capital of Peru?"}]


def renewer(gov: Governor) -> threading.Thread | None:
    """The governor's own lease thread, if it has one."""
    return gov._leases._thread


def ended(thread: threading.Thread | None, limit_s: float = 10.0) -> bool:
    """Hang guard: whether ``thread`` ends within ``limit_s``."""
    if thread is not None:
        thread.join(limit_s)
    return thread is None or not thread.is_alive()


def test_no_lease_thread_outlives_the_calls_of_closed_governors() -> None:
    ledgers: list[weakref.ref[MemoryLedger]] = []
    threads: list[threading.Thread | None] = []
    for _ in range(5):
        ledger = MemoryLedger()
        ledgers.append(weakref.ref(ledger))
        with Governor(Policy(hold_ttl_s=900), ledger=ledger) as gov, gov.task():
            GovernedLiteLLM(gov).completion(
                model="gpt-4o-mini", messages=MESSAGES, mock_response="Lima"
            )
            threads.append(renewer(gov))
        del gov, ledger
    assert [thread is not None for thread in threads] == [True] * 5
    assert [ended(thread) for thread in threads] == [True] * 5
    assert collected(ledgers) == [None] * 5


def collected(
    refs: list[weakref.ref[MemoryLedger]], limit_s: float = 10.0
) -> list[Any]:
    """What ``refs`` still point to once collected, or after ``limit_s``
    (a hang guard): LiteLLM's logging threads may hold the last call's
    objects a moment after it returns."""
    deadline = time.monotonic() + limit_s
    while True:
        gc.collect()  # a governor's own reference cycles
        gone = all(ref() is None for ref in refs)  # holds none while it sleeps
        if gone or time.monotonic() > deadline:
            return [ref() for ref in refs]
        time.sleep(0.05)


def test_a_call_still_open_keeps_its_renewer() -> None:
    """The thread stays while a call is under way: its hold must not lapse."""
    gov = Governor(Policy(hold_ttl_s=900))
    llm = GovernedLiteLLM(gov)
    with gov.task():
        stream = llm.completion(
            model="gpt-4o-mini", messages=MESSAGES, mock_response="Lima", stream=True
        )
        next(iter(stream))
        thread = renewer(gov)
        time.sleep(0.1)
        assert thread is not None
        assert thread.is_alive()
        for _ in stream:
            pass
    assert ended(thread)
    gov.close()
