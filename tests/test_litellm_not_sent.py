"""LiteLLM calls cut off before their request went out are charged nothing.

Real LiteLLM calls against a server on 127.0.0.1. ``acompletion`` prepares
its request in a worker thread before the provider's coroutine sends it; a
call cancelled there (a sibling task failed, a ``gather`` was cancelled)
never reaches the provider, and its hold is released. A call cut off after
LiteLLM's pre-call hook, which its OpenAI route runs right before the HTTP
request, may have been sent: it is charged its hold, as is a call on a route
where nothing says so (another provider, a stand-in function).
"""

from __future__ import annotations

import asyncio
import gc
import operator
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Annotated, Any, TypedDict

import litellm
import pytest
from langchain_litellm import ChatLiteLLM
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send
from litellm.integrations.custom_logger import CustomLogger

from governor import Budget, Governor, Policy, TaskReport, current_task, govern
from governor.adapters.litellm import _PRE_CALL_HOOK, GovernedLiteLLM, instrument
from governor.testing import StubBehaviour, StubServer

MODEL = "openai/gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Which planet is known as the red planet?"}]
MAX_TOKENS = 50
CALLS = 20
IN_PRICE, OUT_PRICE = Decimal("0.15e-6"), Decimal("0.6e-6")
ANSWER = StubBehaviour(answer="Mars.", prompt_tokens=17, completion_tokens=2)

# The request LiteLLM prepared for a call cancelled before sending is a
# provider coroutine that nothing awaits; Python warns when it is collected.
pytestmark = pytest.mark.filterwarnings(
    "ignore:coroutine '.*' was never awaited:RuntimeWarning"
)


@pytest.fixture(autouse=True)
def _collect_unsent() -> Iterator[None]:
    """Collect those coroutines here, where their warning is expected."""
    yield
    gc.collect()


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[StubServer]:
    monkeypatch.setattr(litellm, "suppress_debug_info", True)
    with StubServer(default=ANSWER) as server:
        yield server


@pytest.fixture
def callbacks(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """LiteLLM's input callbacks, restored after the test."""
    monkeypatch.setattr(litellm, "input_callback", list(litellm.input_callback))
    return litellm.input_callback  # type: ignore[no-any-return]


def request(stub: StubServer, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": MESSAGES,
        "max_tokens": MAX_TOKENS,
        "api_base": stub.base_url + "/v1",
        "api_key": "sk-test",
        **extra,
    }


def governor() -> Governor:
    return Governor(Policy(budgets=[Budget(max_usd=1)]))


def assert_charged_nothing(report: TaskReport) -> None:
    assert (report.input_tokens, report.output_tokens) == (0, 0)
    assert report.cost_usd == Decimal(0)


def assert_charged_hold(report: TaskReport, calls: int = 1) -> None:
    """The hold: the prompt's upper bound and the whole output ceiling."""
    assert report.output_tokens == calls * MAX_TOKENS
    assert report.input_tokens >= calls * int(
        litellm.token_counter(model="gpt-4o-mini", messages=MESSAGES)
    )
    assert report.cost_usd == (
        report.input_tokens * IN_PRICE + report.output_tokens * OUT_PRICE
    )


async def cancel_at_once(calls: list[Any]) -> None:
    """Start the calls, let each run one step, then cancel them all."""
    together = asyncio.gather(*calls)
    await asyncio.sleep(0)
    together.cancel()
    with pytest.raises(asyncio.CancelledError):
        await together


async def cancelled_before_sending(
    stub: StubServer, acompletion: Any, gov: Governor, **extra: Any
) -> TaskReport:
    """A warm-up call, then ``CALLS`` calls cancelled right after admission."""
    async with gov.atask():
        await acompletion(**request(stub))  # LiteLLM's HTTP client is cached
    async with gov.atask() as task:
        calls = [acompletion(**request(stub, **extra)) for _ in range(CALLS)]
        await asyncio.create_task(cancel_at_once(calls))
    report = task.report()
    assert report.calls > 0  # the calls were admitted before their cancel
    return report


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_calls_cancelled_before_litellm_sent_them_are_charged_nothing(
    stub: StubServer, stream: bool
) -> None:
    """The repro: cancelled while LiteLLM prepared them, no request went out."""
    gov = governor()
    llm = GovernedLiteLLM(gov)
    report = asyncio.run(
        cancelled_before_sending(stub, llm.acompletion, gov, stream=stream)
    )
    assert len(stub.requests) == 1  # the warm-up call only
    assert_charged_nothing(report)
    assert gov.ledger.balance(f"task:{report.task_id}").reserved_nanos == 0


def test_instrumented_litellm_releases_calls_it_never_sent(stub: StubServer) -> None:
    """Code calling ``litellm.acompletion`` (a Router, ChatLiteLLM) is watched too."""
    gov = governor()
    with instrument(gov):
        report = asyncio.run(cancelled_before_sending(stub, litellm.acompletion, gov))
    assert len(stub.requests) == 1
    assert_charged_nothing(report)


class Fan(TypedDict):
    items: list[str]
    answers: Annotated[list[str], operator.add]


class SiblingFailed(Exception):
    pass


def test_langgraph_branches_cancelled_by_a_failed_sibling_are_charged_nothing(
    stub: StubServer,
) -> None:
    """ChatLiteLLM branches of a graph, cancelled when a sibling fails while
    LiteLLM still prepares their requests, leave the run's budget untouched.

    LiteLLM prepares a request in the event loop's default executor; a busy
    executor (one worker, taken) holds every branch there until the sibling
    has failed, as a loaded process would.
    """
    model = ChatLiteLLM(
        model=MODEL,
        api_base=stub.base_url + "/v1",
        api_key="sk-test",
        max_tokens=MAX_TOKENS,
        max_retries=0,
    )
    branches = 8

    async def ask(state: dict[str, str]) -> dict[str, list[str]]:
        if state["item"] == "fail":
            await admitted(branches)
            raise SiblingFailed(state["item"])
        answer = await model.ainvoke([("user", state["item"])])
        return {"answers": [str(answer.content)]}

    async def fan_out(state: Fan) -> list[Send]:  # async: needs no executor
        return [Send("ask", {"item": i}) for i in state["items"]]

    builder = StateGraph(Fan)
    builder.add_node("ask", ask)
    builder.add_conditional_edges(START, fan_out)
    builder.add_edge("ask", END)
    gov = governor()
    graph = govern(builder.compile(), gov)
    items = [f"question {i}" for i in range(branches)] + ["fail"]

    async def run() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
        gate = threading.Event()
        busy = loop.run_in_executor(None, gate.wait, 10)
        try:
            await graph.ainvoke({"items": items, "answers": []})
        finally:
            gate.set()
            await busy

    with instrument(gov), pytest.raises(SiblingFailed):
        asyncio.run(run())
    report = graph.last_report
    assert report is not None
    assert report.calls == branches
    assert stub.requests == []
    assert_charged_nothing(report)


async def admitted(calls: int) -> None:
    """Wait (5 s at most) until the current task has admitted ``calls`` calls."""
    task = current_task()
    assert task is not None
    deadline = time.monotonic() + 5
    while task.report().calls < calls and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def test_another_providers_call_cancelled_early_keeps_its_hold(
    stub: StubServer,
) -> None:
    """Only LiteLLM's OpenAI route is known to hook in before it sends (and
    to send from the caller's task): elsewhere a cancelled call is charged."""
    gov = governor()
    llm = GovernedLiteLLM(gov)

    async def run() -> TaskReport:
        async with gov.atask() as task:
            await cancel_at_once(
                [llm.acompletion(**request(stub, model="anthropic/claude-haiku-4-5"))]
            )
        return task.report()

    report = asyncio.run(run())
    assert report.output_tokens == MAX_TOKENS
    assert report.cost_usd > 0


def test_a_call_cancelled_after_its_request_went_out_is_charged_its_hold(
    stub: StubServer,
) -> None:
    stub.set_behaviour("gpt-4o-mini", StubBehaviour(delay_s=2))
    gov = governor()
    llm = GovernedLiteLLM(gov)

    async def run() -> TaskReport:
        async with gov.atask() as task:
            call = asyncio.ensure_future(llm.acompletion(**request(stub)))
            while not stub.requests:
                await asyncio.sleep(0.01)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        return task.report()

    assert_charged_hold(asyncio.run(run()))


class _Interrupt(CustomLogger):  # type: ignore[misc]
    """Raises ``error`` from LiteLLM's pre-call (or post-call) logging."""

    def __init__(self, error: type[BaseException], *, after: bool = False) -> None:
        super().__init__()
        self.error, self.after = error, after

    def log_pre_api_call(self, model: Any, messages: Any, kwargs: Any) -> None:
        if not self.after:
            raise self.error

    def log_post_api_call(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        if self.after:
            raise self.error


def test_a_sync_call_interrupted_before_sending_is_charged_nothing(
    stub: StubServer, callbacks: list[Any]
) -> None:
    """Ctrl-C in LiteLLM's pre-call logging, ahead of the governor's hook:
    nothing went out."""
    callbacks.insert(0, _Interrupt(KeyboardInterrupt))
    gov = governor()
    with gov.task() as task, pytest.raises(KeyboardInterrupt):
        GovernedLiteLLM(gov).completion(**request(stub))
    assert stub.requests == []
    assert_charged_nothing(task.report())


def test_an_async_call_cancelled_right_before_sending_is_charged_nothing(
    stub: StubServer, callbacks: list[Any]
) -> None:
    callbacks.insert(0, _Interrupt(asyncio.CancelledError))
    gov = governor()

    async def run() -> TaskReport:
        async with gov.atask() as task:
            with pytest.raises(asyncio.CancelledError):
                await GovernedLiteLLM(gov).acompletion(**request(stub))
        return task.report()

    report = asyncio.run(run())
    assert stub.requests == []
    assert_charged_nothing(report)


def test_a_sync_call_interrupted_after_sending_is_charged_its_hold(
    stub: StubServer, callbacks: list[Any]
) -> None:
    """Interrupted once the answer was in but before it was read: charged."""
    callbacks.insert(0, _Interrupt(KeyboardInterrupt, after=True))
    gov = governor()
    with gov.task() as task, pytest.raises(KeyboardInterrupt):
        GovernedLiteLLM(gov).completion(**request(stub))
    assert len(stub.requests) == 1
    assert_charged_hold(task.report())


def test_a_stand_in_cancelled_before_it_sent_keeps_its_hold() -> None:
    """A function that is not LiteLLM's own gives no sign: it is charged."""
    gov = governor()

    async def stand_in(**kwargs: Any) -> Any:
        await asyncio.sleep(10)

    async def run() -> TaskReport:
        async with gov.atask() as task:
            call = GovernedLiteLLM(gov, acompletion=stand_in).acompletion(
                model="gpt-4o-mini", messages=MESSAGES, max_tokens=MAX_TOKENS
            )
            await cancel_at_once([call])
        return task.report()

    assert_charged_hold(asyncio.run(run()))


def test_the_hook_is_put_back_when_litellm_callbacks_are_replaced(
    stub: StubServer, callbacks: list[Any]
) -> None:
    """Replacing ``litellm.input_callback`` does not blind the next call."""
    gov = governor()
    llm = GovernedLiteLLM(gov)
    litellm.input_callback = []
    report = asyncio.run(cancelled_before_sending(stub, llm.acompletion, gov))
    assert_charged_nothing(report)
    # The governor's hook, once; LiteLLM may add its own (a Router's
    # handlers, left by an earlier test, are copied in on the next call).
    hooks = [cb for cb in litellm.input_callback if cb is _PRE_CALL_HOOK]
    assert len(hooks) == 1
