"""The LangGraph adapter: every model call in a governed graph is governed."""

from __future__ import annotations

import asyncio
import logging
import operator
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Annotated, Any, TypedDict

import litellm
import pytest
from _inflight import Peak
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableLambda
from langchain_litellm import ChatLiteLLM
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import Send
from opentelemetry.sdk.trace import SpanProcessor

from conftest import SpanCapture
from governor import Budget, BudgetExceeded, Governor, Policy, govern
from governor.adapters.litellm import instrument
from governor.telemetry import attributes as attr

GPT4O_IN = Decimal("2.5e-6")
GPT4O_OUT = Decimal("10e-6")


class ScriptedChatModel(BaseChatModel):
    """A LangChain chat model standing in for gpt-4o, with fixed usage."""

    answer: str = "ok"
    prompt_tokens: int = 12
    completion_tokens: int = 8

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _get_ls_params(self, stop: Any = None, **kwargs: Any) -> Any:
        return {"ls_provider": "openai", "ls_model_name": "gpt-4o", "ls_max_tokens": 64}

    def _usage(self) -> Any:
        return {
            "input_tokens": self.prompt_tokens,
            "output_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
    ) -> ChatResult:
        message = AIMessage(content=self.answer, usage_metadata=self._usage())
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
    ) -> Iterator[ChatGenerationChunk]:
        for word in self.answer.split():
            yield ChatGenerationChunk(message=AIMessageChunk(content=word + " "))
        last = AIMessageChunk(content="", usage_metadata=self._usage())
        yield ChatGenerationChunk(message=last)


CALL_COST = 12 * GPT4O_IN + 8 * GPT4O_OUT


class FanState(TypedDict):
    items: list[str]
    answers: Annotated[list[str], operator.add]


def fan_out_graph(model: BaseChatModel) -> Any:
    def fan(state: FanState) -> list[Send]:
        return [Send("worker", {"items": [i], "answers": []}) for i in state["items"]]

    def worker(state: FanState) -> dict[str, list[str]]:
        reply = model.invoke(state["items"][0])
        return {"answers": [str(reply.content)]}

    graph = StateGraph(FanState)
    graph.add_node("worker", worker)
    graph.add_conditional_edges(START, fan, ["worker"])
    graph.add_edge("worker", END)
    return graph.compile()


def test_every_send_branch_is_charged(capture: SpanCapture) -> None:
    """Each fan-out branch's model call is reserved, settled and summed."""
    gov = Governor(tracer_provider=capture.provider)
    graph = govern(fan_out_graph(ScriptedChatModel()), gov)
    out = graph.invoke({"items": ["a", "b", "c"], "answers": []})
    assert out["answers"] == ["ok", "ok", "ok"]
    report = graph.last_report
    assert report is not None
    assert (report.calls, report.cost_usd) == (3, CALL_COST * 3)


def test_call_spans_nest_under_node_spans_under_the_task(
    capture: SpanCapture,
) -> None:
    """Model-call spans are children of their node step, under the task span."""
    gov = Governor(tracer_provider=capture.provider)
    govern(fan_out_graph(ScriptedChatModel()), gov).invoke(
        {"items": ["a", "b"], "answers": []}
    )
    task = capture.task()
    nodes = {s.context.span_id: s for s in capture.named("governor.node worker")}
    calls = capture.named("chat gpt-4o")
    assert len(nodes) == 2
    assert len(calls) == 2
    assert {c.parent.span_id for c in calls if c.parent} == set(nodes)
    assert {n.parent.span_id for n in nodes.values() if n.parent} == {
        task.context.span_id
    }
    assert task.attributes[attr.TASK_COST_USD] == float(CALL_COST * 2)


def test_fan_out_stops_at_the_budget(capture: SpanCapture) -> None:
    """A budget too small for all branches raises and never overspends."""
    budget = Decimal("0.002")
    gov = Governor(Policy(budgets=[Budget(max_usd=budget)]))
    graph = govern(fan_out_graph(ScriptedChatModel()), gov)
    with pytest.raises(BudgetExceeded) as info:
        graph.invoke({"items": [str(i) for i in range(30)], "answers": []})
    report = graph.last_report
    assert report is not None
    assert report.cost_usd <= budget
    assert report.stop_reason == "budget_exceeded"
    assert info.value.task_id == report.task_id


def test_subgraph_calls_are_charged_to_the_parent_task() -> None:
    """A compiled subgraph used as a node is governed as part of the task."""
    inner = fan_out_graph(ScriptedChatModel())

    def prepare(state: FanState) -> dict[str, Any]:
        return {}

    outer = StateGraph(FanState)
    outer.add_node("prepare", prepare)
    outer.add_node("inner", inner)
    outer.add_edge(START, "prepare")
    outer.add_edge("prepare", "inner")
    outer.add_edge("inner", END)
    graph = govern(outer.compile(), Governor())
    graph.invoke({"items": ["x", "y"], "answers": []})
    report = graph.last_report
    assert report is not None
    assert report.calls == 2


def test_async_invoke_and_streams_are_tasks() -> None:
    """ainvoke, stream and astream each run as one governed task."""
    graph = govern(fan_out_graph(ScriptedChatModel()), Governor())
    asyncio.run(graph.ainvoke({"items": ["a"], "answers": []}))
    list(graph.stream({"items": ["a", "b"], "answers": []}))

    async def consume() -> None:
        async for _ in graph.astream({"items": ["a", "b", "c"], "answers": []}):
            pass

    asyncio.run(consume())
    assert [r.calls for r in graph.reports] == [1, 2, 3]
    assert len({r.task_id for r in graph.reports}) == 3


def test_batch_runs_one_task_per_input() -> None:
    """batch and abatch give each input its own task."""
    graph = govern(fan_out_graph(ScriptedChatModel()), Governor())
    graph.batch([{"items": ["a"], "answers": []}, {"items": ["b"], "answers": []}])
    asyncio.run(graph.abatch([{"items": ["c"], "answers": []}]))
    assert [r.calls for r in graph.reports] == [1, 1, 1]


def test_batch_runs_its_inputs_at_once_in_order_with_the_callers_attribution() -> None:
    """batch overlaps its invocations, keeps input order, carries attribution."""
    import time

    from governor import attribute

    running = Peak()

    class Slow(ScriptedChatModel):
        def _generate(
            self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
        ) -> ChatResult:
            with running.held():
                time.sleep(0.1)
            result = super()._generate(messages, stop, **kwargs)
            result.generations[0].message.content = str(messages[-1].content)
            return result

    graph = govern(fan_out_graph(Slow()), Governor())
    inputs = [{"items": [str(i)], "answers": []} for i in range(4)]
    with attribute(team="search"):
        out = graph.batch(inputs, {"max_concurrency": 3})
    assert [o["answers"] for o in out] == [["0"], ["1"], ["2"], ["3"]]
    assert running.peak == 3
    assert {r.attribution.get("team") for r in graph.reports} == {"search"}


def test_caller_config_passes_through() -> None:
    """The caller's callbacks still fire and metadata sets task id and team."""
    seen: list[str] = []

    class Recorder(BaseCallbackHandler):
        def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
            seen.append("chat")

    graph = govern(fan_out_graph(ScriptedChatModel()), Governor())
    config: Any = {
        "callbacks": [Recorder()],
        "metadata": {"task_id": "job-7", "team": "research"},
        "configurable": {"thread_id": "thread-1"},
    }
    graph.invoke({"items": ["a", "b"], "answers": []}, config)
    report = graph.last_report
    assert report is not None
    assert seen == ["chat", "chat"]
    assert report.task_id == "job-7"
    assert report.attribution == {"team": "research", "session": "thread-1"}


def test_streamed_chat_model_is_settled_from_final_usage() -> None:
    """A node that streams its model is charged the usage of the final chunk."""
    model = ScriptedChatModel(answer="one two three")

    def node(state: FanState) -> dict[str, list[str]]:
        text = "".join(str(c.content) for c in model.stream("hi"))
        return {"answers": [text]}

    graph = StateGraph(FanState)
    graph.add_node("node", node)
    graph.add_edge(START, "node")
    graph.add_edge("node", END)
    governed = govern(graph.compile(), Governor())
    governed.invoke({"items": [], "answers": []})
    report = governed.last_report
    assert report is not None
    assert report.cost_usd == CALL_COST


def test_direct_litellm_calls_in_nodes_are_governed_once(
    capture: SpanCapture,
) -> None:
    """With LiteLLM instrumented, plain and ChatLiteLLM calls count once each."""
    chat = ChatLiteLLM(
        model="gpt-4o-mini", model_kwargs={"mock_response": "hi"}, max_tokens=20
    )

    def node(state: FanState) -> dict[str, list[str]]:
        litellm.completion(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            mock_response="plain",
            max_tokens=20,
        )
        return {"answers": [str(chat.invoke("hello").content)]}

    graph = StateGraph(FanState)
    graph.add_node("node", node)
    graph.add_edge(START, "node")
    graph.add_edge("node", END)
    gov = Governor(tracer_provider=capture.provider)
    with instrument(gov):
        governed = govern(graph.compile(), gov)
        governed.invoke({"items": [], "answers": []})
    report = governed.last_report
    assert report is not None
    assert report.calls == 2
    (node_span,) = capture.named("governor.node node")
    calls = capture.calls()
    assert [c.parent.span_id for c in calls if c.parent] == [
        node_span.context.span_id
    ] * 2


def test_unpriced_chat_model_is_refused() -> None:
    """A chat model whose name has no price stops the graph by default."""
    from governor import PriceUnknown

    class Nameless(ScriptedChatModel):
        def _get_ls_params(self, stop: Any = None, **kwargs: Any) -> Any:
            return {"ls_provider": "acme", "ls_model_name": "acme-large"}

    graph = govern(fan_out_graph(Nameless()), Governor())
    with pytest.raises(PriceUnknown, match="acme-large"):
        graph.invoke({"items": ["a"], "answers": []})


def test_async_graph_waits_for_call_slots_without_blocking() -> None:
    """In ainvoke, a call cap makes branches wait on the event loop, not block."""
    from governor import Fanout

    class SlowModel(ScriptedChatModel):
        async def _agenerate(
            self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
        ) -> ChatResult:
            await asyncio.sleep(0.05)
            return self._generate(messages, stop, **kwargs)

    model = SlowModel()

    def fan(state: FanState) -> list[Send]:
        return [Send("worker", {"items": [i], "answers": []}) for i in state["items"]]

    async def worker(state: FanState) -> dict[str, list[str]]:
        reply = await model.ainvoke(state["items"][0])
        return {"answers": [str(reply.content)]}

    builder = StateGraph(FanState)
    builder.add_node("worker", worker)
    builder.add_conditional_edges(START, fan, ["worker"])
    builder.add_edge("worker", END)
    policy = Policy(fanout=Fanout(max_inflight_calls=2))
    graph = govern(builder.compile(), Governor(policy))
    out = asyncio.run(graph.ainvoke({"items": list("abcdef"), "answers": []}))
    report = graph.last_report
    assert report is not None
    assert len(out["answers"]) == 6
    assert (report.calls, report.peak_inflight) == (6, 2)


def test_branch_cap_limits_parallel_steps() -> None:
    """Fanout.max_branches caps how many Send branches run at once."""
    import threading
    import time

    from governor import Fanout

    running = {"now": 0, "peak": 0}
    lock = threading.Lock()

    class Tracking(ScriptedChatModel):
        def _generate(
            self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
        ) -> ChatResult:
            with lock:
                running["now"] += 1
                running["peak"] = max(running["peak"], running["now"])
            time.sleep(0.05)
            with lock:
                running["now"] -= 1
            return super()._generate(messages, stop, **kwargs)

    policy = Policy(fanout=Fanout(max_branches=2))
    graph = govern(fan_out_graph(Tracking()), Governor(policy))
    out = graph.invoke({"items": list("abcdef"), "answers": []})
    assert len(out["answers"]) == 6
    assert running["peak"] == 2


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
def test_branch_cap_with_a_subgraph_node_does_not_deadlock(mode: str) -> None:
    """A subgraph node holds its graph's slot; its inner nodes have their own.

    With one cap for both levels, the inner worker waited for the slot its
    own parent node held until wait_timeout_s, and the graph failed.
    """
    from governor import Fanout

    inner = fan_out_graph(ScriptedChatModel())
    outer = StateGraph(FanState)
    outer.add_node("sub", inner)
    outer.add_edge(START, "sub")
    outer.add_edge("sub", END)
    policy = Policy(fanout=Fanout(max_branches=1, wait_timeout_s=2))
    graph = govern(outer.compile(), Governor(policy))
    state = {"items": list("abc"), "answers": []}
    run = graph.invoke if mode == "invoke" else lambda s: asyncio.run(graph.ainvoke(s))
    out = run(state)
    report = graph.last_report
    assert report is not None
    assert (out["answers"], report.calls) == (["ok", "ok", "ok"], 3)


def test_branch_cap_refuses_when_asked() -> None:
    """With on_cap='refuse', a step wider than max_branches stops the graph."""
    from governor import Fanout
    from governor.stores import SlotUnavailable

    class Slow(ScriptedChatModel):
        def _generate(
            self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
        ) -> ChatResult:
            import time

            time.sleep(0.05)
            return super()._generate(messages, stop, **kwargs)

    policy = Policy(fanout=Fanout(max_branches=1, on_cap="refuse"))
    graph = govern(fan_out_graph(Slow()), Governor(policy))
    with pytest.raises(SlotUnavailable) as refused:
        graph.invoke({"items": list("abcd"), "answers": []})
    report = graph.last_report
    assert report is not None
    assert report.stop_reason == "slot_unavailable"
    assert "Raise the cap (Fanout.max_branches)" in str(refused.value)


@pytest.mark.parametrize(
    "name", ["with_types", "assign", "pick", "with_retry", "pipe", "transform"]
)
def test_methods_that_would_run_the_graph_ungoverned_are_refused(name: str) -> None:
    """A Runnable built on the inner graph would bypass the governor."""
    graph = govern(fan_out_graph(ScriptedChatModel()), Governor())
    with pytest.raises(AttributeError, match=f"GovernedGraph.{name} is not supported"):
        getattr(graph, name)
    assert callable(graph.get_graph)


def test_a_model_reporting_zero_usage_is_charged_a_local_count() -> None:
    """usage_metadata with zeros is counted like no usage, as in the LiteLLM path."""
    import litellm

    model = ScriptedChatModel(
        answer="Paris is the capital.", prompt_tokens=0, completion_tokens=0
    )
    graph = govern(fan_out_graph(model), Governor())
    graph.invoke({"items": ["Capital of France?"], "answers": []})
    report = graph.last_report
    assert report is not None
    prompt = litellm.token_counter(
        model="gpt-4o", messages=[{"role": "user", "content": "Capital of France?"}]
    )
    answer = litellm.token_counter(model="gpt-4o", text="Paris is the capital.")
    assert (report.input_tokens, report.output_tokens) == (prompt, answer)
    assert report.cost_usd == prompt * GPT4O_IN + answer * GPT4O_OUT


class TraceState(TypedDict):
    answers: Annotated[list[str], operator.add]


def _traced_graphs(gov: Governor, capture: SpanCapture, *, use_async: bool) -> Any:
    """An outer graph whose node opens a user span and runs a governed sub-agent."""
    tracer = capture.provider.get_tracer("user-code")
    inner = StateGraph(TraceState)
    inner.add_node("work", lambda s: {"answers": ["inner"]})
    inner.add_edge(START, "work")
    inner.add_edge("work", END)
    sub_agent = govern(inner.compile(), gov)

    def outer_node(state: TraceState) -> dict[str, list[str]]:
        with tracer.start_as_current_span("tool.http"):
            out = sub_agent.invoke({"answers": []})
        return {"answers": out["answers"]}

    async def outer_anode(state: TraceState) -> dict[str, list[str]]:
        with tracer.start_as_current_span("tool.http"):
            out = await sub_agent.ainvoke({"answers": []})
        return {"answers": out["answers"]}

    outer = StateGraph(TraceState)
    outer.add_node("outer", outer_anode if use_async else outer_node)
    outer.add_edge(START, "outer")
    outer.add_edge("outer", END)
    return govern(outer.compile(), gov)


@pytest.mark.parametrize("use_async", [False, True])
def test_spans_opened_inside_a_node_join_the_task_trace(
    capture: SpanCapture, use_async: bool
) -> None:
    """A user span and a sub-agent's task inside a node are in the task's trace."""
    gov = Governor(tracer_provider=capture.provider)
    graph = _traced_graphs(gov, capture, use_async=use_async)
    if use_async:
        asyncio.run(graph.ainvoke({"answers": []}))
    else:
        graph.invoke({"answers": []})
    tasks = capture.named("governor.task")
    (user_span,) = capture.named("tool.http")
    outer_task = next(t for t in tasks if t.parent is None)
    inner_task = next(t for t in tasks if t.parent is not None)
    trace_id = outer_task.context.trace_id
    assert {user_span.context.trace_id, inner_task.context.trace_id} == {trace_id}
    assert inner_task.parent.span_id == user_span.context.span_id


class Chat(TypedDict):
    messages: Annotated[list[Any], add_messages]


def test_a_graph_stream_stopped_early_reports_its_model_call() -> None:
    """Stop reading astream mid-answer: the run hangs up on the model's stream
    and its report charges what arrived, as the ledger does."""
    from governor.testing import StubBehaviour, StubServer

    slow = StubBehaviour(answer=" ".join(["word"] * 200), chunk_delay_s=0.005)
    with StubServer(default=slow) as stub:
        model = ChatLiteLLM(
            model="openai/gpt-4o-mini",
            api_base=stub.base_url + "/v1",
            api_key="sk-stub",
            streaming=True,
            max_retries=0,
        )

        async def llm(state: Chat) -> dict[str, Any]:
            return {"messages": [await model.ainvoke(state["messages"])]}

        builder = StateGraph(Chat)
        builder.add_node("llm", llm)
        builder.add_edge(START, "llm")
        builder.add_edge("llm", END)
        gov = Governor(Policy(budgets=[Budget(max_usd=1)]))
        agent = govern(builder.compile(), gov)

        async def main() -> None:
            stream = agent.astream(
                {"messages": [("user", "Write an essay.")]}, stream_mode="messages"
            )
            async for _ in stream:
                break
            await stream.aclose()

        with instrument(gov):
            asyncio.run(main())
        report = agent.last_report
        assert report is not None
        assert report.output_tokens > 0
        line = gov.ledger.balance(f"task:{report.task_id}")
        assert line is not None
        assert Decimal(line.spent_nanos) / 10**9 == report.cost_usd
        assert line.reserved_nanos == 0
        assert stub.streams_finished == 0


def test_breaking_out_of_astream_leaves_no_task_current(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After `break`, the next request is its own task, not a child of the
    finished one (it would be charged to the old task's user and budget)."""
    from governor import current_task

    graph = govern(fan_out_graph(ScriptedChatModel()), Governor())

    async def main() -> tuple[Any, Any]:
        async for _ in graph.astream(
            {"items": ["a", "b"], "answers": []}, {"metadata": {"user": "alice"}}
        ):
            break
        await asyncio.sleep(0.05)  # the loop finalizes the generator
        leftover = current_task()
        await graph.ainvoke({"items": ["c"], "answers": []})
        return leftover, graph.last_report

    with caplog.at_level("ERROR"):
        leftover, report = asyncio.run(main())
    assert leftover is None
    assert report is not None
    assert report.attribution == {}
    assert "Failed to detach context" not in caplog.text


def test_branches_refused_a_slot_still_end_their_spans(capture: SpanCapture) -> None:
    """Every opened node span ends, refused branches with an error status."""
    from opentelemetry.trace import StatusCode

    from governor import Fanout
    from governor.stores import SlotUnavailable

    class SlowModel(ScriptedChatModel):
        def _generate(self, *args: Any, **kwargs: Any) -> ChatResult:
            time.sleep(0.2)  # hold the slot while the other branches start
            return super()._generate(*args, **kwargs)

    class Started(SpanProcessor):
        """Counts node spans as they start (the capture sees them end)."""

        def __init__(self) -> None:
            self.names: list[str] = []

        def on_start(self, span: Any, parent_context: Any = None) -> None:
            self.names.append(span.name)

    started = Started()
    capture.provider.add_span_processor(started)
    policy = Policy(fanout=Fanout(max_branches=2, on_cap="refuse"))
    gov = Governor(policy, tracer_provider=capture.provider)
    graph = govern(fan_out_graph(SlowModel()), gov)
    with pytest.raises(SlotUnavailable):
        graph.invoke({"items": [str(i) for i in range(10)], "answers": []})
    workers = capture.named("governor.node worker")
    refused = [s for s in workers if s.status.status_code == StatusCode.ERROR]
    report = graph.last_report
    assert report is not None
    # On a loaded machine LangGraph may cancel branches that had not started
    # when the first refusal came; every branch that started must have ended.
    opened = started.names.count("governor.node worker")
    assert (len(workers), len(refused)) == (opened, opened - report.calls)
    assert opened > report.calls


def test_an_interrupt_is_a_pause_not_an_error(capture: SpanCapture) -> None:
    """interrupt() reports the run as interrupted; its node span is no error."""
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.types import Command, interrupt
    from opentelemetry.trace import StatusCode

    def ask(state: TraceState) -> dict[str, list[str]]:
        answer = interrupt("approve?")
        return {"answers": [str(answer)]}

    builder = StateGraph(TraceState)
    builder.add_node("ask", ask)
    builder.add_edge(START, "ask")
    builder.add_edge("ask", END)
    gov = Governor(tracer_provider=capture.provider)
    graph = govern(builder.compile(checkpointer=InMemorySaver()), gov)
    config: Any = {"configurable": {"thread_id": "t-1"}}
    graph.invoke({"answers": []}, config)
    paused = graph.last_report
    out = graph.invoke(Command(resume="yes"), config)
    resumed = graph.last_report
    assert paused is not None
    assert resumed is not None
    assert (paused.stop_reason, resumed.stop_reason, out["answers"]) == (
        "interrupted",
        None,
        ["yes"],
    )
    first = capture.named("governor.node ask")[0]
    assert first.status.status_code != StatusCode.ERROR
    assert first.attributes[attr.NODE_PAUSED] is True


class StreamState(TypedDict):
    stream: Any


def test_a_stream_returned_in_the_graph_output_is_left_open() -> None:
    """A run that completes keeps the streams it hands out readable."""
    from governor.testing import install_offline_provider, offline_model

    install_offline_provider(speed=0)

    def node(state: StreamState) -> dict[str, Any]:
        stream = litellm.completion(
            model=offline_model("gpt-4o-mini"),
            messages=[{"role": "user", "content": "Write a story."}],
            stream=True,
        )
        return {"stream": stream}

    builder = StateGraph(StreamState)
    builder.add_node("node", node)
    builder.add_edge(START, "node")
    builder.add_edge("node", END)
    gov = Governor()
    with instrument(gov):
        out = govern(builder.compile(), gov).invoke({"stream": None})
        chunks = [c for c in out["stream"] if c.choices]
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.startswith("[offline gpt-4o-mini")


def _callback_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "langchain_core.callbacks.manager"
    ]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_refusal_is_raised_without_langchain_logging_it_as_a_callback_error(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The refusal reaches the caller once, not also as a warning per call."""
    gov = Governor(Policy(budgets=[Budget(max_usd="0.0000001")]))
    graph = govern(fan_out_graph(ScriptedChatModel()), gov)
    state: Any = {"items": ["a"], "answers": []}

    with caplog.at_level(logging.WARNING), pytest.raises(BudgetExceeded):
        if mode == "sync":
            graph.invoke(state)
        else:
            asyncio.run(graph.ainvoke(state))

    assert _callback_warnings(caplog) == []


def test_other_errors_in_the_governor_handlers_are_still_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Only governor refusals are dropped from LangChain's callback log."""
    manager = logging.getLogger("langchain_core.callbacks.manager")
    message = "Error in %s.%s callback: %s"

    with caplog.at_level(logging.WARNING):
        manager.warning(
            message, "GovernorCallbackHandler", "on_llm_end", "KeyError('x')"
        )
        manager.warning(message, "OtherHandler", "on_llm_end", "BudgetExceeded('x')")
        manager.warning(
            message, "GovernorCallbackHandler", "on_llm_end", "BudgetExceeded('x')"
        )

    assert _callback_warnings(caplog) == [
        "Error in GovernorCallbackHandler.on_llm_end callback: KeyError('x')",
        "Error in OtherHandler.on_llm_end callback: BudgetExceeded('x')",
    ]


class PoolState(TypedDict):
    out: list[str]


class AsyncScriptedChatModel(ScriptedChatModel):
    """The scripted model, answering ``ainvoke`` on its caller's event loop."""

    async def _agenerate(
        self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
    ) -> ChatResult:
        return self._generate(messages, stop)


def _pooling_graph(form: str) -> Any:
    """One node that asks five questions from its own thread pool, each
    submitted as ``current_task().bind(...)`` of a sync or async function."""
    from concurrent.futures import ThreadPoolExecutor

    from governor import current_task

    model = AsyncScriptedChatModel()
    prompts = [f"question {i}" for i in range(5)]

    async def ask_async(prompt: str) -> Any:
        return await model.ainvoke(prompt)

    def ask(state: PoolState) -> PoolState:
        task = current_task()
        assert task is not None
        if form == "sync":
            work = task.bind(model.invoke)
        else:  # each worker runs the bound coroutine on an event loop of its own
            bound = task.bind(ask_async)

            def work(prompt: str) -> Any:
                return asyncio.run(bound(prompt))

        with ThreadPoolExecutor(3) as pool:
            return {"out": [str(m.content) for m in pool.map(work, prompts)]}

    async def aask(state: PoolState) -> PoolState:
        return await asyncio.to_thread(ask, state)

    builder = StateGraph(PoolState)
    builder.add_node("ask", RunnableLambda(ask, afunc=aask))
    builder.add_edge(START, "ask")
    builder.add_edge("ask", END)
    return builder.compile()


@pytest.mark.parametrize("form", ["sync", "async"])
@pytest.mark.parametrize("run", ["invoke", "ainvoke"])
def test_calls_a_node_makes_in_its_own_threads_are_governed_through_bind(
    capture: SpanCapture, form: str, run: str
) -> None:
    """task.bind carries the node's LangChain config into the worker, so the
    graph's handler sees the calls there: charged, with spans under the node."""
    gov = Governor(tracer_provider=capture.provider)
    graph = govern(_pooling_graph(form), gov)
    if run == "invoke":
        out = graph.invoke({"out": []})
    else:
        out = asyncio.run(graph.ainvoke({"out": []}))
    report = graph.last_report
    assert report is not None
    assert (out["out"], report.calls) == (["ok"] * 5, 5)
    assert report.cost_usd == CALL_COST * 5
    (node,) = capture.named("governor.node ask")
    calls = capture.named("chat gpt-4o")
    assert {c.parent.span_id for c in calls if c.parent} == {node.context.span_id}
