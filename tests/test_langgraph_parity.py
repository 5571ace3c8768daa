"""A governed graph behaves alike whichever way it is run: sync or async,
one input or a batch.

The model streams below come from the stub server, 400 words at 10 ms a
word: reading one out takes four seconds, so a run that waits for it is
told from one that hangs up on it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Annotated, Any, TypedDict

import litellm
import pytest
from langchain_core.callbacks import BaseCallbackHandler, CallbackManager
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableLambda
from langchain_litellm import ChatLiteLLM
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import RetryPolicy
from test_langgraph_adapter import ScriptedChatModel

from conftest import SpanCapture
from governor import Budget, Governor, Policy, current_task, govern
from governor.adapters.litellm import instrument
from governor.stores import Balance, Line, Refusal
from governor.stores._memory import MemoryLedger
from governor.testing import StubBehaviour, StubServer

WORDS = 400
SLOW = StubBehaviour(
    answer=" ".join(f"word{i}" for i in range(WORDS)), chunk_delay_s=0.01
)
READ_OUT_S = WORDS * 0.01


class Chat(TypedDict):
    messages: Annotated[list[Any], add_messages]


def _chat_model(stub: StubServer) -> ChatLiteLLM:
    return ChatLiteLLM(
        model="openai/gpt-4o-mini",
        api_base=stub.base_url + "/v1",
        api_key="sk-stub",
        streaming=True,
        max_tokens=WORDS,
        max_retries=0,
    )


def _talk_graph(stub: StubServer, *side: tuple[str, Any, RetryPolicy | None]) -> Any:
    """A graph whose node "talk" asks the stub, with ``side`` branches
    (name, function, retry policy) run in parallel with it."""
    model = _chat_model(stub)

    def talk(state: Chat) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    builder = StateGraph(Chat)
    builder.add_node("talk", talk)
    builder.add_edge(START, "talk")
    builder.add_edge("talk", END)
    for name, function, retry in side:
        builder.add_node(name, function, retry_policy=retry)
        builder.add_edge(START, name)
        builder.add_edge(name, END)
    return builder.compile()


QUESTION = {"messages": [("user", "Write an essay.")]}


# -- 1. a sync run hangs up on its model streams before it waits for them --


def test_closing_a_sync_graph_stream_hangs_up_its_model_stream() -> None:
    """close() after the first message returns at once, and the provider
    stops: the report charges the few tokens that arrived."""
    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))
    with StubServer(default=SLOW) as stub:
        graph = govern(_talk_graph(stub), gov)
        with instrument(gov):
            stream = graph.stream(QUESTION, stream_mode="messages")
            for _ in stream:
                break
            started = time.monotonic()
            stream.close()
            took = time.monotonic() - started
        assert stub.streams_finished == 0
    report = graph.last_report
    assert report is not None
    assert took < READ_OUT_S / 4
    assert report.stop_reason == "closed"
    assert 0 < report.output_tokens < WORDS / 4
    assert gov.ledger.balance(f"task:{report.task_id}").reserved_nanos == 0


def _streaming() -> None:
    """Wait until the current task has a model stream open."""
    task = current_task()
    assert task is not None
    deadline = time.monotonic() + 10
    while not task.open_streams and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_failing_branch_stops_the_model_stream_of_a_sync_invoke() -> None:
    """A parallel branch raises while the model streams: the stream is hung
    up then, and the caller gets the branch's error, not the hang-up."""
    failed_at: list[float] = []

    def fail(state: Chat) -> dict[str, Any]:
        _streaming()
        time.sleep(0.2)
        failed_at.append(time.monotonic())
        raise ValueError("the search branch failed")

    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))
    with StubServer(default=SLOW) as stub:
        graph = govern(_talk_graph(stub, ("search", fail, None)), gov)
        with instrument(gov), pytest.raises(ValueError, match="search branch"):
            graph.invoke(QUESTION)
        took = time.monotonic() - failed_at[0]
        assert stub.streams_finished == 0
    report = graph.last_report
    assert report is not None
    assert took < READ_OUT_S / 4
    assert report.stop_reason == "error:ValueError"
    assert 0 < report.output_tokens < WORDS / 2


class SlowToReportFailure(BaseCallbackHandler):
    """Holds up the failing branch after its error is known, so a branch
    the governor cut off finishes failing first."""

    def on_chain_error(self, error: BaseException, **kwargs: Any) -> None:
        if "search branch" in str(error) and kwargs.get("parent_run_id"):
            time.sleep(0.5)


def test_the_failing_branchs_error_is_raised_when_a_cut_off_one_ends_first() -> None:
    """LangGraph raises the first error it sees; the branch hung up on may
    end first, yet the caller gets the error that ended the run."""

    def fail(state: Chat) -> dict[str, Any]:
        _streaming()
        raise ValueError("the search branch failed")

    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))
    with StubServer(default=SLOW) as stub:
        # Bound callbacks join a call's manager after the governor's handler.
        compiled = _talk_graph(stub, ("search", fail, None))
        graph = govern(compiled.with_config(callbacks=[SlowToReportFailure()]), gov)
        with instrument(gov), pytest.raises(ValueError, match="search branch"):
            graph.invoke(QUESTION, {"callbacks": CallbackManager(handlers=[])})
        assert stub.streams_finished == 0
    report = graph.last_report
    assert report is not None
    assert report.stop_reason == "error:ValueError"


def test_a_model_stream_opening_after_a_branch_failed_is_hung_up() -> None:
    """The model call was sent, but its answer starts only after another
    branch failed the run: its stream is hung up at its first token."""
    delayed = dataclasses.replace(SLOW, delay_s=0.5, chunk_delay_s=0.02)
    failed_at: list[float] = []

    def fail(state: Chat) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while not stub.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        failed_at.append(time.monotonic())
        raise ValueError("the search branch failed")

    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))
    with StubServer(default=delayed) as stub:
        graph = govern(_talk_graph(stub, ("search", fail, None)), gov)
        with instrument(gov), pytest.raises(ValueError, match="search branch"):
            graph.invoke(QUESTION)
        took = time.monotonic() - failed_at[0]
        assert len(stub.requests) == 1
        assert stub.streams_finished == 0
    assert took < WORDS * 0.02 / 2


class TricklingChatModel(BaseChatModel):
    """Streams 400 words, one every 10 ms; counts the words it sent."""

    sent: int = 0

    @property
    def _llm_type(self) -> str:
        return "trickling"

    def _get_ls_params(self, stop: Any = None, **kwargs: Any) -> Any:
        return {
            "ls_provider": "openai",
            "ls_model_name": "gpt-4o",
            "ls_max_tokens": 800,
        }

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
    ) -> ChatResult:
        raise NotImplementedError("stream it")

    def _stream(
        self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
    ) -> Iterator[ChatGenerationChunk]:
        for i in range(WORDS):
            time.sleep(0.01)
            self.sent += 1
            yield ChatGenerationChunk(message=AIMessageChunk(content=f"word{i} "))


def test_a_failing_branch_stops_any_chat_models_stream_at_its_next_token() -> None:
    """Not LiteLLM: the stream of a LangChain chat model is stopped at its
    next token once another branch failed the run."""
    model = TricklingChatModel()

    def talk(state: Chat) -> dict[str, Any]:
        return {"messages": ["".join(str(c.content) for c in model.stream("q"))]}

    def fail(state: Chat) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while model.sent < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        raise ValueError("the search branch failed")

    builder = StateGraph(Chat)
    for name, node in (("talk", talk), ("search", fail)):
        builder.add_node(name, node)
        builder.add_edge(START, name)
        builder.add_edge(name, END)
    graph = govern(builder.compile(), Governor(Policy(budgets=[Budget(max_usd=1)])))
    with pytest.raises(ValueError, match="search branch"):
        graph.invoke(QUESTION)
    assert model.sent < WORDS / 4
    report = graph.last_report
    assert report is not None
    assert report.calls == 1
    assert 0 < report.output_tokens < WORDS / 2


def test_a_model_call_started_after_a_branch_failed_is_not_sent() -> None:
    """A branch that reaches its model call after another branch failed
    the run is refused before sending: the run does not wait for it."""

    def fail(state: Chat) -> dict[str, Any]:
        raise ValueError("the search branch failed")

    def late(state: Chat) -> dict[str, Any]:
        time.sleep(0.3)
        return {"messages": [model.invoke(state["messages"])]}

    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))
    with StubServer(default=SLOW) as stub:
        model = _chat_model(stub)
        builder = StateGraph(Chat)
        for name, node in (("search", fail), ("late", late)):
            builder.add_node(name, node)
            builder.add_edge(START, name)
            builder.add_edge(name, END)
        graph = govern(builder.compile(), gov)
        started = time.monotonic()
        with instrument(gov), pytest.raises(ValueError, match="search branch"):
            graph.invoke(QUESTION)
        took = time.monotonic() - started
        assert stub.requests == []
    assert took < READ_OUT_S / 4


def test_a_model_call_started_after_the_reader_closed_is_not_sent() -> None:
    """A node that reaches its model call while close() waits for it is
    refused before sending: close() returns without reading an answer."""
    model_ready = threading.Event()

    def quick(state: Chat) -> dict[str, Any]:
        return {}

    def late(state: Chat) -> dict[str, Any]:
        model_ready.wait(5)
        return {"messages": [model.invoke(state["messages"])]}

    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))
    with StubServer(default=SLOW) as stub:
        model = _chat_model(stub)
        builder = StateGraph(Chat)
        for name, node in (("quick", quick), ("late", late)):
            builder.add_node(name, node)
            builder.add_edge(START, name)
            builder.add_edge(name, END)
        graph = govern(builder.compile(), gov)
        with instrument(gov):
            stream = graph.stream(QUESTION, stream_mode="updates")
            assert next(stream) == {"quick": None}
            threading.Timer(0.2, model_ready.set).start()
            started = time.monotonic()
            stream.close()
            took = time.monotonic() - started
        assert stub.requests == []
    assert took < READ_OUT_S / 4
    report = graph.last_report
    assert report is not None
    assert report.stop_reason == "closed"


def test_a_branch_error_that_is_retried_leaves_other_branches_alone() -> None:
    """A node with a retry policy may still succeed: its first error must
    not cut the model answer of the branch beside it."""
    attempts: list[int] = []

    def flaky(state: Chat) -> dict[str, Any]:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("try again")
        return {}

    retry = RetryPolicy(max_attempts=2, initial_interval=0.01, jitter=False)
    short = StubBehaviour(
        answer=" ".join(f"w{i}" for i in range(60)), chunk_delay_s=0.01
    )
    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))
    with StubServer(default=short) as stub:
        graph = govern(_talk_graph(stub, ("flaky", flaky, retry)), gov)
        with instrument(gov):
            out = graph.invoke(QUESTION)
        assert stub.streams_finished == 1
    assert len(attempts) == 2
    assert str(out["messages"][-1].content).split() == [f"w{i}" for i in range(60)]


class SlowSettleLedger(MemoryLedger):
    """A memory ledger whose settle takes a while, like a distant store;
    it notes every hold it settles."""

    def __init__(self) -> None:
        super().__init__()
        self.settled: list[str] = []

    def settle(
        self, hold_id: str, keys: Sequence[str], nanos: int, tokens: int
    ) -> None:
        self.settled.append(hold_id)
        time.sleep(0.3)
        super().settle(hold_id, keys, nanos, tokens)


def test_a_stream_hung_up_from_another_thread_is_settled_once() -> None:
    """A node's thread reads a stream while the run hangs up on it from the
    caller's thread: the call is settled once, and the reader is told."""
    ledger = SlowSettleLedger()
    gov = Governor(Policy(budgets=[Budget(max_usd=1)]), ledger=ledger)
    seen = threading.Event()
    outcome: list[BaseException | None] = []

    def read(stream: Iterator[Any]) -> None:
        try:
            for count, _ in enumerate(stream):
                if count == 5:
                    seen.set()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    with StubServer(default=SLOW) as stub, instrument(gov), gov.task() as task:
        stream = litellm.completion(
            model="openai/gpt-4o-mini",
            api_base=stub.base_url + "/v1",
            api_key="sk-stub",
            messages=[{"role": "user", "content": "Write an essay."}],
            stream=True,
            max_tokens=WORDS,
        )
        reader = threading.Thread(target=read, args=(stream,))
        reader.start()
        assert seen.wait(5)
        stream.hang_up()
        reader.join(5)
        assert not reader.is_alive()
    assert len(ledger.settled) == 1
    assert task.report().calls == 1
    (error,) = outcome
    assert isinstance(error, RuntimeError)
    assert "governed run reading it ended" in str(error)


# -- 2. the async forms never wait on the store on the event loop ----------


class LoopWatchingLedger(MemoryLedger):
    """A memory ledger that notes each sync method called on a running event
    loop: on a networked store, that call would stall the loop."""

    def __init__(self) -> None:
        super().__init__()
        self.blocking: list[str] = []

    def _note(self, name: str) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self.blocking.append(name)

    def reserve(
        self,
        hold_id: str,
        lines: Sequence[Line],
        nanos: int,
        tokens: int,
        ttl_s: float,
    ) -> Refusal | None:
        self._note("reserve")
        return super().reserve(hold_id, lines, nanos, tokens, ttl_s)

    def settle(
        self, hold_id: str, keys: Sequence[str], nanos: int, tokens: int
    ) -> None:
        self._note("settle")
        super().settle(hold_id, keys, nanos, tokens)

    def release(self, hold_id: str) -> None:
        self._note("release")
        super().release(hold_id)

    def balance(self, key: str) -> Balance | None:
        self._note("balance")
        return super().balance(key)

    async def areserve(
        self,
        hold_id: str,
        lines: Sequence[Line],
        nanos: int,
        tokens: int,
        ttl_s: float,
    ) -> Refusal | None:
        return super().reserve(hold_id, lines, nanos, tokens, ttl_s)

    async def asettle(
        self, hold_id: str, keys: Sequence[str], nanos: int, tokens: int
    ) -> None:
        super().settle(hold_id, keys, nanos, tokens)

    async def arelease(self, hold_id: str) -> None:
        super().release(hold_id)

    async def abalance(self, key: str) -> Balance | None:
        return super().balance(key)


class State(TypedDict):
    answers: Annotated[list[str], lambda old, new: old + new]


class AsyncScriptedModel(ScriptedChatModel):
    """The scripted model, answering on the event loop."""

    async def _agenerate(
        self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
    ) -> ChatResult:
        return self._generate(messages, stop)

    async def _astream(
        self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
    ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._stream(messages, stop):
            yield chunk


def _answer_graph(model: BaseChatModel) -> Any:
    async def answer(state: State) -> dict[str, list[str]]:
        return {"answers": [str((await model.ainvoke("q")).content)]}

    builder = StateGraph(State)
    builder.add_node("answer", answer)
    builder.add_edge(START, "answer")
    builder.add_edge("answer", END)
    return builder.compile()


async def _run(graph: Any, form: str) -> None:
    start: dict[str, list[str]] = {"answers": []}
    if form == "ainvoke":
        await graph.ainvoke(start)
    elif form == "astream":
        async for _ in graph.astream(start):
            pass
    elif form == "astream_events":
        async for _ in graph.astream_events(start):
            pass
    else:
        await graph.abatch([start, start, start])


@pytest.mark.parametrize("form", ["ainvoke", "astream", "astream_events", "abatch"])
def test_async_runs_read_the_store_by_its_async_steps(form: str) -> None:
    """Closing the task reads the budget left without blocking the loop."""
    ledger = LoopWatchingLedger()
    gov = Governor(Policy(budgets=[Budget(max_usd=1)]), ledger=ledger)
    graph = govern(_answer_graph(AsyncScriptedModel()), gov)
    asyncio.run(_run(graph, form))
    reports = graph.reports
    assert len(reports) == (3 if form == "abatch" else 1)
    assert all(r.calls == 1 for r in reports)
    assert all(r.budget_left_usd is not None for r in reports)
    assert ledger.blocking == []


class DrippingChatModel(BaseChatModel):
    """Streams a word every 50 ms, asynchronously."""

    @property
    def _llm_type(self) -> str:
        return "dripping"

    def _get_ls_params(self, stop: Any = None, **kwargs: Any) -> Any:
        return {"ls_provider": "openai", "ls_model_name": "gpt-4o", "ls_max_tokens": 64}

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
    ) -> ChatResult:
        raise NotImplementedError("stream it")

    async def _astream(
        self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
    ) -> AsyncIterator[ChatGenerationChunk]:
        for word in ("one", "two", "three", "four"):
            await asyncio.sleep(0.05)
            yield ChatGenerationChunk(message=AIMessageChunk(content=word + " "))


def test_a_cancelled_ainvoke_settles_its_open_calls_by_async_steps() -> None:
    """A node holding a model stream it has not read out is cancelled: the
    call left open is settled without blocking the loop."""
    model = DrippingChatModel()

    async def peek(state: State) -> dict[str, list[str]]:
        stream = model.astream("q")
        first = await anext(stream)
        await asyncio.sleep(10)  # cancelled here, the stream still open
        return {"answers": [str(first.content)]}

    builder = StateGraph(State)
    builder.add_node("peek", peek)
    builder.add_edge(START, "peek")
    builder.add_edge("peek", END)
    ledger = LoopWatchingLedger()
    gov = Governor(Policy(budgets=[Budget(max_usd=1)]), ledger=ledger)
    graph = govern(builder.compile(), gov)

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(graph.ainvoke({"answers": []}), 0.5)

    asyncio.run(main())
    report = graph.last_report
    assert report is not None
    assert report.calls == 1
    assert ledger.blocking == []


# -- 3. abatch honours max_concurrency --------------------------------------


def _counting_graph(delays: dict[str, float], running: list[int]) -> Any:
    """A one-node graph that sleeps its input's delay and counts how many
    runs are in the node at once (``running``: now, peak)."""

    async def wait(state: dict[str, Any]) -> dict[str, Any]:
        running[0] += 1
        running[1] = max(running[1], running[0])
        try:
            await asyncio.sleep(delays[state["name"]])
        finally:
            running[0] -= 1
        if state["name"].startswith("bad"):
            raise ValueError(f"input {state['name']} failed")
        return {"name": state["name"]}

    def sync_wait(state: dict[str, Any]) -> dict[str, Any]:
        time.sleep(delays[state["name"]])
        if state["name"].startswith("bad"):
            raise ValueError(f"input {state['name']} failed")
        return {"name": state["name"]}

    class Named(TypedDict):
        name: str

    builder = StateGraph(Named)
    builder.add_node("wait", RunnableLambda(sync_wait, afunc=wait))
    builder.add_edge(START, "wait")
    builder.add_edge("wait", END)
    return builder.compile()


def test_abatch_runs_at_most_max_concurrency_inputs_at_once() -> None:
    """Six inputs, max_concurrency 2: never more than two runs at a time."""
    names = [f"n{i}" for i in range(6)]
    running = [0, 0]
    graph = govern(_counting_graph(dict.fromkeys(names, 0.05), running), Governor())
    inputs = [{"name": n} for n in names]
    out = asyncio.run(graph.abatch(inputs, {"max_concurrency": 2}))
    assert [o["name"] for o in out] == names
    assert running[1] == 2
    assert len(graph.reports) == 6


# -- 4. one span per node step ----------------------------------------------


@pytest.mark.parametrize("use_async", [False, True])
def test_a_node_runnable_named_as_its_node_opens_one_span_a_step(
    capture: SpanCapture, use_async: bool
) -> None:
    """add_node("talk", RunnableLambda(talk)): the lambda's run carries the
    node's name too, yet each step is one span."""
    model = ScriptedChatModel()

    def talk(state: State) -> dict[str, list[str]]:
        return {"answers": [str(model.invoke("q").content)]}

    builder = StateGraph(State)
    builder.add_node("talk", RunnableLambda(talk))
    builder.add_edge(START, "talk")
    builder.add_edge("talk", END)
    graph = govern(builder.compile(), Governor(tracer_provider=capture.provider))
    if use_async:
        asyncio.run(graph.ainvoke({"answers": []}))
    else:
        graph.invoke({"answers": []})
    (node,) = capture.named("governor.node talk")
    (call,) = capture.calls()
    assert call.parent is not None
    assert call.parent.span_id == node.context.span_id


# -- 5. batch_as_completed and abatch_as_completed --------------------------


DELAYS = {"slow": 0.6, "quick": 0.0, "middle": 0.2}


def test_batch_as_completed_yields_each_input_when_its_run_ends() -> None:
    """The quick input comes first, long before the slow one ends; each
    input is a task of its own."""
    graph = govern(_counting_graph(DELAYS, [0, 0]), Governor())
    inputs = [{"name": n} for n in DELAYS]
    started = time.monotonic()
    seen: list[tuple[int, float]] = []
    for index, out in graph.batch_as_completed(inputs):
        assert out == inputs[index]
        seen.append((index, time.monotonic() - started))
    assert [index for index, _ in seen] == [1, 2, 0]
    assert seen[0][1] < DELAYS["slow"] / 2
    assert len({r.task_id for r in graph.reports}) == 3


def test_batch_as_completed_gives_errors_in_place_when_asked() -> None:
    """return_exceptions=True: a failed input yields its error."""
    graph = govern(_counting_graph({"bad": 0.0, "good": 0.2}, [0, 0]), Governor())
    out = dict(
        graph.batch_as_completed(
            [{"name": "good"}, {"name": "bad"}], return_exceptions=True
        )
    )
    assert out[0] == {"name": "good"}
    assert isinstance(out[1], ValueError)
    with pytest.raises(ValueError, match="input bad failed"):
        list(graph.batch_as_completed([{"name": "good"}, {"name": "bad"}]))


def test_abatch_as_completed_yields_each_input_when_its_run_ends() -> None:
    """The async form: fastest first, each input its own task, and
    max_concurrency honoured."""
    running = [0, 0]
    graph = govern(_counting_graph(DELAYS, running), Governor())
    inputs = [{"name": n} for n in DELAYS]

    async def main() -> list[int]:
        return [
            index
            async for index, out in graph.abatch_as_completed(inputs)
            if out == inputs[index]
        ]

    assert asyncio.run(main()) == [1, 2, 0]
    assert running[1] == 3
    assert len({r.task_id for r in graph.reports}) == 3
    running[1] = 0

    async def limited() -> list[int]:
        runs = graph.abatch_as_completed(inputs, {"max_concurrency": 1})
        return [index async for index, _ in runs]

    assert asyncio.run(limited()) == [0, 1, 2]
    assert running[1] == 1


def test_stopping_abatch_as_completed_early_cancels_the_runs_left() -> None:
    """A reader that stops after the first result cancels the others; each
    cancelled run still reports."""
    graph = govern(_counting_graph(DELAYS, [0, 0]), Governor())
    inputs = [{"name": n} for n in DELAYS]

    async def main() -> float:
        runs = graph.abatch_as_completed(inputs)
        async for index, _ in runs:
            assert index == 1
            break
        started = time.monotonic()
        await runs.aclose()
        return time.monotonic() - started

    assert asyncio.run(main()) < DELAYS["middle"]
    reports = graph.reports
    assert len(reports) == 3
    assert sorted(str(r.stop_reason) for r in reports) == [
        "None",
        "cancelled",
        "cancelled",
    ]


# -- a run that is ending refuses late calls, whatever sends them ------------------


def _direct_stream_graph(stub: StubServer, retry: RetryPolicy | None) -> Any:
    """Node "talk" streams straight from LiteLLM (instrumented); node "fail"
    raises 0.5 s in."""
    chunks: list[int] = []

    def talk(state: Chat) -> dict[str, Any]:
        stream = litellm.completion(
            model="openai/gpt-4o-mini",
            api_base=stub.base_url + "/v1",
            api_key="sk-stub",
            messages=[{"role": "user", "content": "Write an essay."}],
            max_tokens=WORDS,
            stream=True,
        )
        chunks.append(sum(1 for _ in stream))
        return {"messages": [("assistant", "done")]}

    def fail(state: Chat) -> dict[str, Any]:
        time.sleep(0.5)
        raise ValueError("the other branch failed")

    builder = StateGraph(Chat)
    builder.add_node("talk", talk, retry_policy=retry)
    builder.add_node("fail", fail)
    for name in ("talk", "fail"):
        builder.add_edge(START, name)
        builder.add_edge(name, END)
    return builder.compile()


def test_a_retried_node_sends_nothing_once_its_sync_run_is_ending() -> None:
    """The hang-up makes LangGraph retry the node; its new call is refused."""
    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))
    retry = RetryPolicy(retry_on=Exception, max_attempts=3, initial_interval=0.1)
    spaced = StubBehaviour(answer=" ".join(["word"] * 10), chunk_delay_s=0.3)
    with StubServer(default=spaced) as stub:
        graph = govern(_direct_stream_graph(stub, retry), gov)
        with instrument(gov):
            _warm(stub)  # the stream opens before the other branch fails
            with pytest.raises(ValueError, match="other branch"):
                graph.invoke(QUESTION)
        time.sleep(0.5)  # a retry sent late would reach the stub by now
        sent = len(stub.requests) - 1
    report = graph.last_report
    assert report is not None
    assert (sent, report.calls) == (1, 1)


def test_a_stream_that_opens_after_the_hang_up_is_stopped_at_its_first_read() -> None:
    """Its answer started after the other branch failed: not read out."""
    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))
    late = dataclasses.replace(SLOW, delay_s=1.0)  # headers after the failure
    with StubServer(default=late) as stub:
        graph = govern(_direct_stream_graph(stub, None), gov)
        started = time.monotonic()
        with instrument(gov), pytest.raises(ValueError, match="other branch"):
            graph.invoke(QUESTION)
        took = time.monotonic() - started
    report = graph.last_report
    assert report is not None
    assert took < 1.0 + READ_OUT_S / 2
    assert report.output_tokens < WORDS / 4


def _warm(stub: StubServer) -> None:
    """One call first, so that LiteLLM's first-call setup is not timed."""
    litellm.completion(
        model="openai/gpt-4o-mini",
        api_base=stub.base_url + "/v1",
        api_key="sk-stub",
        messages=[{"role": "user", "content": "warm up"}],
    )


def test_a_sync_node_still_running_after_a_failed_ainvoke_sends_nothing() -> None:
    """An async run ends at a node's error while a sync node's thread goes on:
    that thread's later model call is refused before it is sent."""
    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))
    late: list[BaseException] = []

    def slow(state: Chat) -> dict[str, Any]:
        time.sleep(0.5)  # still running when the run has failed
        try:
            litellm.completion(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "hi"}],
                mock_response="late",
                max_tokens=5,
            )
        except RuntimeError as exc:
            late.append(exc)
        return {"messages": [("assistant", "late")]}

    async def fail(state: Chat) -> dict[str, Any]:
        raise ValueError("the other branch failed")

    builder = StateGraph(Chat)
    builder.add_node("slow", slow)
    builder.add_node("fail", fail)
    for name in ("slow", "fail"):
        builder.add_edge(START, name)
        builder.add_edge(name, END)
    graph = govern(builder.compile(), gov)

    with instrument(gov):
        with pytest.raises(ValueError, match="other branch"):
            asyncio.run(graph.ainvoke(QUESTION))
        time.sleep(1.0)  # the sync node's thread makes its call meanwhile
    report = graph.last_report
    assert report is not None
    assert [type(e).__name__ for e in late] == ["_RunEnded"]
    assert report.calls == 0
