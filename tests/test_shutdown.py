"""Governor.close(): once only, and a warning that says where unwritten spend is."""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from _switched_store import SwitchedStore

from governor import Budget, Governor, Policy
from governor._calls import CallRequest, CallResult
from governor._engine import _LAST_WRITE_S
from governor.pricing import Usage
from governor.spend import JsonlSpendStore
from governor.stores import FailoverLedger

MESSAGES = [{"role": "user", "content": "What is the capital of Peru?"}]
USAGE = Usage(prompt_tokens=10, completion_tokens=5)
UNSENT = "closing the governor while the budget store does not answer"


class CountingLedger(FailoverLedger):
    """Counts how often close() waits for queued steps."""

    drains = 0

    def drain(self, timeout_s: float) -> int:
        self.drains += 1
        return super().drain(timeout_s)


def governor_with_unsent_settle(spend: object = None) -> Governor:
    """A governor whose budget store went down before a call settled."""
    store = SwitchedStore()
    ledger = CountingLedger(store, mode="open", probe_interval_s=60)
    gov = Governor(
        Policy(budgets=[Budget(scope="team", max_usd="1")], failure_mode="open"),
        ledger=ledger,
        spend=spend,  # type: ignore[arg-type]
    )
    store.down = True
    request = CallRequest(model="gpt-4o-mini", messages=MESSAGES, max_output_tokens=20)
    with gov.task(team="search"):
        gov.end_call(gov.begin_call(request), CallResult(usage=USAGE))
    return gov


def close_warnings(
    gov: Governor, caplog: pytest.LogCaptureFixture, *, times: int = 1
) -> list[str]:
    with caplog.at_level(logging.WARNING, logger="governor._engine"):
        for _ in range(times):
            gov.close(timeout_s=0.1)
    return [r.getMessage() for r in caplog.records if r.name == "governor._engine"]


def test_a_second_close_returns_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The second close waits for nothing and warns of nothing again."""
    gov = governor_with_unsent_settle(str(tmp_path / "spend.jsonl"))
    (message,) = close_warnings(gov, caplog, times=2)
    assert UNSENT in message
    assert isinstance(gov.ledger, CountingLedger)
    assert gov.ledger.drains == 1
    assert gov.close() == 0


def test_the_warning_names_the_spend_records_when_they_were_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "spend.jsonl"
    gov = governor_with_unsent_settle(str(path))
    (message,) = close_warnings(gov, caplog)
    assert f"its calls are in the spend records, in {path}" in message
    assert path.read_text().count("\n") == 1


def test_the_warning_says_so_when_the_spend_records_were_lost_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A spend store that fails too (a folder where the file should be)."""
    folder = tmp_path / "spend.jsonl"
    folder.mkdir()
    gov = governor_with_unsent_settle(JsonlSpendStore(folder))
    (message,) = close_warnings(gov, caplog)
    assert "did not take 1 spend record(s) either" in message
    assert "this warning may be its only record" in message
    assert "in the spend records" not in message


def test_the_warning_says_so_when_no_spend_store_is_set(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gov = governor_with_unsent_settle()
    (message,) = close_warnings(gov, caplog)
    assert "no spend store is set: this warning is its only record" in message


def test_flush_writes_the_settles_queued_while_the_store_was_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Pool worker that only flushes must not lose its queued settles."""
    gov = governor_with_unsent_settle()
    ledger = gov.ledger
    assert isinstance(ledger, CountingLedger)
    store = ledger.primary
    assert isinstance(store, SwitchedStore)
    with caplog.at_level(logging.WARNING, logger="governor._engine"):
        gov.flush(timeout_s=0.1)  # still down: said, and kept
    assert "still wait to be written" in caplog.text
    assert ledger.pending_settles == 1

    store.down = False
    gov.flush(timeout_s=5)
    balance = store.balance("team:search")
    assert balance is not None
    assert (ledger.pending_settles, balance.spent_nanos) == (0, 4_500)
    gov.close()


def test_a_close_with_only_releases_unsent_says_no_spend_is_missing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A refused or cancelled call's release is all that waits: no spend lost."""
    store = SwitchedStore()
    ledger = FailoverLedger(store, mode="closed", probe_interval_s=60)
    gov = Governor(Policy(budgets=[Budget(scope="team", max_usd="1")]), ledger=ledger)
    request = CallRequest(model="gpt-4o-mini", messages=MESSAGES, max_output_tokens=20)
    with gov.task(team="search"):
        admission = gov.begin_call(request)
        store.down = True
        ledger.release(admission.call_id)  # queued: the store is down
    under_way, message = close_warnings(gov, caplog)
    # The admission was never ended here, so close also says it waited.
    assert "1 call(s) still under way" in under_way
    assert "1 hold release(s)" in message
    assert "No spend is missing" in message
    assert "settled spend is missing" not in message


def test_aflush_writes_the_queued_settles_without_blocking_the_loop() -> None:
    """An async worker flushes with aflush: the loop keeps running meanwhile."""
    import asyncio

    gov = governor_with_unsent_settle()
    ledger = gov.ledger
    assert isinstance(ledger, CountingLedger)
    store = ledger.primary
    assert isinstance(store, SwitchedStore)
    store.down = False

    async def main() -> tuple[int, int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        unwritten = await gov.aflush(timeout_s=5)
        ticker.cancel()
        return unwritten, ticks

    unwritten, ticks = asyncio.run(main())
    balance = store.balance("team:search")
    assert balance is not None
    assert (unwritten, ledger.pending_settles, balance.spent_nanos) == (0, 0, 4_500)
    assert ticks > 0
    gov.close()


class SlowLedger(CountingLedger):
    """Uses all the time close() gives it, as a store that never answers does."""

    given_s: list[float]

    def drain(self, timeout_s: float) -> int:
        self.given_s.append(timeout_s)
        time.sleep(timeout_s)
        return super().drain(0.0)


def slow_governor(tmp_path: Path) -> tuple[Governor, SlowLedger, list[float | None]]:
    """A governor whose budget store takes close()'s whole time, and the
    times its spend writer is given."""
    gov = governor_with_unsent_settle(str(tmp_path / "spend.jsonl"))
    ledger = gov.ledger
    assert isinstance(ledger, CountingLedger)
    ledger.__class__ = SlowLedger
    assert isinstance(ledger, SlowLedger)
    ledger.given_s = []
    writer_s: list[float | None] = []
    recorder = gov.recorder
    assert recorder is not None
    close = recorder.close

    def timed_close(timeout: float | None = None) -> int:
        writer_s.append(timeout)
        return close(timeout)

    recorder.close = timed_close  # type: ignore[method-assign]
    return gov, ledger, writer_s


def test_close_stages_share_one_deadline(tmp_path: Path) -> None:
    """A store that takes the whole timeout leaves the writer its minimum,
    not a second full timeout; the record still reaches the spend file."""
    gov, ledger, writer_s = slow_governor(tmp_path)
    assert gov.close(timeout_s=0.4) == 0
    assert ledger.given_s == [pytest.approx(0.4, abs=0.05)]
    assert writer_s == [_LAST_WRITE_S]
    assert (tmp_path / "spend.jsonl").read_text().count("\n") == 1


def test_aclose_counts_its_wait_for_calls_against_the_timeout(
    tmp_path: Path,
) -> None:
    """A call another thread never ends uses up aclose's time: the store
    then gets none of it, not a fresh timeout."""
    import asyncio

    gov, ledger, writer_s = slow_governor(tmp_path)
    request = CallRequest(model="gpt-4o-mini", messages=MESSAGES, max_output_tokens=20)

    begun, done = threading.Event(), threading.Event()

    def open_a_call() -> None:
        with gov.task(team="search"):
            admission = gov.begin_call(request)
            begun.set()
            done.wait(5)  # still under way while aclose waits
            gov.end_call(admission, CallResult(usage=USAGE))

    thread = threading.Thread(target=open_a_call)
    thread.start()
    begun.wait(5)
    asyncio.run(gov.aclose(timeout_s=0.3))
    done.set()
    thread.join(5)
    assert ledger.given_s == [0.0]
    assert writer_s == [_LAST_WRITE_S]


@pytest.mark.parametrize(
    "timeout_s", [math.inf, 1e300, 10**400, math.nan, -5.0, -(10**400)]
)
def test_close_takes_any_timeout_and_writes_the_records(
    timeout_s: float, tmp_path: Path
) -> None:
    """An infinite or huge timeout waits a day at most (it overflowed the
    writer's queue and left the writer running); NaN and negative ones are 0."""
    path = tmp_path / "spend.jsonl"
    gov = governor_with_unsent_settle(str(path))
    ledger = gov.ledger
    assert isinstance(ledger, CountingLedger)
    store = ledger.primary
    assert isinstance(store, SwitchedStore)
    store.down = False  # the store answers: the close is quick
    recorder = gov.recorder
    assert recorder is not None
    assert gov.close(timeout_s=timeout_s) == 0
    assert path.read_text().count("\n") == 1
    recorder._thread.join(10)  # hang guard
    assert not recorder._thread.is_alive()


def test_aclose_waits_for_a_call_another_task_of_the_loop_is_making(
    tmp_path: Path,
) -> None:
    """A call awaited by another asyncio task goes on while aclose waits: its
    spend record is written, not lost as a call of the closing thread."""
    import asyncio

    path = tmp_path / "spend.jsonl"
    gov = Governor(Policy(), spend=str(path))
    request = CallRequest(model="gpt-4o-mini", messages=MESSAGES, max_output_tokens=20)

    async def slow_call(begun: asyncio.Event) -> None:
        with gov.task(team="search"):
            admission = gov.begin_call(request)
            begun.set()
            await asyncio.sleep(0.3)  # the provider answering
            gov.end_call(admission, CallResult(usage=USAGE))

    async def main() -> int:
        begun = asyncio.Event()
        call = asyncio.create_task(slow_call(begun))
        await begun.wait()
        lost = await gov.aclose(timeout_s=5)
        await call
        return lost

    assert asyncio.run(main()) == 0
    assert path.read_text().count("\n") == 1


def test_aclose_does_not_wait_for_a_stream_the_closing_task_holds() -> None:
    """A stream another task opened and handed back (create_task, wait_for)
    is read by the closing task alone: waiting for it would take the whole
    timeout for nothing."""
    import asyncio

    from governor.adapters.litellm import GovernedLiteLLM

    gov = Governor(Policy())
    llm = GovernedLiteLLM(gov)

    async def main() -> float:
        stream = await asyncio.create_task(
            llm.acompletion(
                model="gpt-4o-mini",
                messages=MESSAGES,
                stream=True,
                mock_response="hello world there",
                max_tokens=10,
            )
        )
        async for _chunk in stream:
            break  # held open, unread
        start = time.monotonic()
        await gov.aclose(timeout_s=30)
        waited = time.monotonic() - start
        await stream.aclose()
        return waited

    assert asyncio.run(main()) < 10  # hang guard: it waited the 30 s before


def test_a_close_timeout_past_a_floats_range_keeps_its_sign() -> None:
    from governor._engine import _LONGEST_CLOSE_S, _close_limit_s

    assert (_close_limit_s(10**400), _close_limit_s(-(10**400))) == (
        _LONGEST_CLOSE_S,
        0.0,
    )


def test_aclose_waits_for_a_stream_another_running_task_reads(
    tmp_path: Path,
) -> None:
    """A stream opened by a task that handed it on (a queue) and read by a
    consumer still running goes on while aclose waits: its record is kept."""
    import asyncio

    from governor.adapters.litellm import GovernedLiteLLM
    from governor.testing import StubBehaviour, StubServer

    path = tmp_path / "spend.jsonl"
    gov = Governor(Policy(), spend=str(path))
    llm = GovernedLiteLLM(gov)

    async def main(base: str) -> bool:
        handed: asyncio.Queue[Any] = asyncio.Queue()

        async def producer() -> None:
            stream = await llm.acompletion(
                model="openai/gpt-4o-mini",
                messages=MESSAGES,
                stream=True,
                api_base=base,
                api_key="sk-test",
            )
            await handed.put(stream)

        async def consumer() -> None:
            stream = await handed.get()
            async for _chunk in stream:
                await asyncio.sleep(0.1)  # a slow reader

        reading = asyncio.create_task(consumer())
        await producer()
        await asyncio.sleep(0.05)  # the consumer has started reading
        await gov.aclose(timeout_s=10)
        finished = reading.done()
        await reading
        return finished

    answer = StubBehaviour(answer="one two three four five six")
    with StubServer(default=answer) as server:
        assert asyncio.run(main(server.base_url + "/v1")) is True
    assert path.read_text().count("\n") == 1
