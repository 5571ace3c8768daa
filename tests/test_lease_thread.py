"""The thread that renews long calls' leases ends once no call is open, so a
closed governor leaves no thread behind holding its ledger."""

from __future__ import annotations

import gc
import threading
import time
import weakref

from governor import Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM
from governor.stores import MemoryLedger

MESSAGES = [{"role": "user", "content": "What is the capital of Peru?"}]


def lease_threads() -> int:
    return sum(t.name == "governor-leases" for t in threading.enumerate())


def wait_until_no_lease_thread(limit_s: float = 10.0) -> int:
    """Hang guard: the count once it reaches 0, or after ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while lease_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    return lease_threads()


def test_no_lease_thread_outlives_the_calls_of_closed_governors() -> None:
    assert wait_until_no_lease_thread() == 0  # none left by earlier tests
    ledgers: list[weakref.ref[MemoryLedger]] = []
    for _ in range(5):
        ledger = MemoryLedger()
        ledgers.append(weakref.ref(ledger))
        with Governor(Policy(hold_ttl_s=900), ledger=ledger) as gov, gov.task():
            GovernedLiteLLM(gov).completion(
                model="gpt-4o-mini", messages=MESSAGES, mock_response="Lima"
            )
        del gov, ledger
    assert wait_until_no_lease_thread() == 0
    gc.collect()  # a governor's own reference cycles
    assert [ref() for ref in ledgers] == [None] * 5


def test_a_call_still_open_keeps_its_renewer() -> None:
    """The thread stays while a call is under way: its hold must not lapse."""
    gov = Governor(Policy(hold_ttl_s=900))
    llm = GovernedLiteLLM(gov)
    with gov.task():
        stream = llm.completion(
            model="gpt-4o-mini", messages=MESSAGES, mock_response="Lima", stream=True
        )
        next(iter(stream))
        assert lease_threads() == 1
        for _ in stream:
            pass
    assert wait_until_no_lease_thread() == 0
    gov.close()
