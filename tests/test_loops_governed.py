"""The loop guard on the call path: graphs and LiteLLM calls that repeat."""

from __future__ import annotations

import asyncio
import operator
import sys
from typing import Annotated, Any, TypedDict

import pytest

from conftest import SpanCapture
from governor import Governor, LoopDetected, Loops, Policy, govern
from governor.adapters.litellm import GovernedLiteLLM
from governor.testing import OfflineAnswer, install_offline_provider

LONG = "I will now run the complete test suite again to see whether it passes today."


def runaway_graph() -> Any:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "examples" / "agents" / "runaway.py"
    spec = importlib.util.spec_from_file_location("runaway_example", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["runaway_example"] = module  # LangGraph resolves hints by module
    spec.loader.exec_module(module)
    return module


def test_runaway_graph_is_stopped_by_default(capture: SpanCapture) -> None:
    """Same tool, same arguments, same result: stopped within a few repeats."""
    module = runaway_graph()
    install_offline_provider(module.offline_responder, speed=0)
    agent = govern(
        module.build_graph(), Governor(module.POLICY, tracer_provider=capture.provider)
    )
    with pytest.raises(LoopDetected) as info:
        agent.invoke(module.task_input())
    assert isinstance(info.value, RecursionError)
    assert info.value.rule == "repeat"
    assert "run_tests" in info.value.evidence[0]
    report = agent.last_report
    assert report is not None
    assert (report.calls, report.stop_reason) == (4, "loop_detected")
    assert info.value.spent_usd == report.cost_usd
    events = [e for e in capture.task().events if e.name == "governor.loop_detected"]
    assert [e.attributes["rule"] for e in events] == ["repeat"]


def chat(gov: Governor, text: str) -> Any:
    return GovernedLiteLLM(gov).completion(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Go on."}],
        mock_response=text,
        max_tokens=40,
    )


def test_near_identical_outputs_stop_the_next_call() -> None:
    """Repeated long outputs stop the task; the paid outputs are still returned."""
    gov = Governor()
    with gov.task() as task:
        # The default allows two near-duplicates in a row; the third is a loop.
        replies = [chat(gov, LONG) for _ in range(4)]
        with pytest.raises(LoopDetected) as info:
            chat(gov, LONG)
    assert info.value.rule == "near_duplicate"
    assert [r.choices[0].message.content for r in replies] == [LONG] * 4
    assert task.report().calls == 4


def test_short_answers_may_repeat() -> None:
    """Short outputs such as 'yes' are never judged as a loop."""
    gov = Governor()
    with gov.task() as task:
        for _ in range(8):
            chat(gov, "yes")
    assert task.report().calls == 8


def test_record_mode_flags_without_stopping(capture: SpanCapture) -> None:
    """With action='record' the loop is an event, and calls go on."""
    gov = Governor(
        Policy(loops=Loops(action="record")), tracer_provider=capture.provider
    )
    with gov.task() as task:
        for _ in range(6):
            chat(gov, LONG)
    assert task.report().calls == 6
    rules = {e.attributes["rule"] for e in capture.task().events}
    assert rules == {"near_duplicate"}


def test_ceiling_on_model_calls() -> None:
    """max_model_calls refuses the call past the ceiling."""
    gov = Governor(Policy(loops=Loops(max_model_calls=2)))
    with gov.task() as task:
        chat(gov, "one")
        chat(gov, "two")
        with pytest.raises(LoopDetected, match="max_model_calls"):
            chat(gov, "three")
    assert task.report().calls == 2


def test_the_ceiling_on_model_calls_holds_for_calls_side_by_side() -> None:
    """Ten threads pass the loop checks before any of them is admitted (the
    budget store is slow): only max_model_calls of them are sent."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from governor.stores import MemoryLedger

    class SlowLedger(MemoryLedger):
        def reserve(self, *args: Any, **kwargs: Any) -> Any:
            time.sleep(0.2)
            return super().reserve(*args, **kwargs)

    gov = Governor(Policy(loops=Loops(max_model_calls=3)), ledger=SlowLedger())
    sent: list[str] = []
    lock = threading.Lock()

    def ask(i: int) -> None:
        try:
            chat(gov, f"question {i}")
        except LoopDetected:
            return
        with lock:
            sent.append(str(i))

    with gov.task() as task, ThreadPoolExecutor(10) as pool:
        list(pool.map(task.bind(ask), range(10)))
    assert (len(sent), task.report().calls) == (3, 3)
    assert task.report().stop_reason == "loop_detected"


def test_a_stopped_task_raises_the_same_error_with_a_fresh_traceback() -> None:
    """Calls after a caught LoopDetected get it again (a copy), its traceback
    as long each time: re-raising one object would grow it (and hold frames)
    per call."""
    import traceback

    gov = Governor(Policy(loops=Loops(max_model_calls=1)))
    errors: list[LoopDetected] = []
    lengths: list[int] = []
    with gov.task():
        chat(gov, "one")
        for _ in range(4):
            try:
                chat(gov, "again")
            except LoopDetected as exc:
                errors.append(exc)
                lengths.append(len(traceback.extract_tb(exc.__traceback__)))
    assert [e.to_dict() for e in errors] == [errors[0].to_dict()] * 4
    assert len(set(lengths[1:])) == 1


def test_escalation_adds_a_hint_to_the_next_call() -> None:
    """With action='escalate', the next LiteLLM call carries the loop hint."""
    seen: list[list[dict[str, Any]]] = []

    def spy(**kwargs: Any) -> Any:
        import litellm

        seen.append(list(kwargs["messages"]))
        return litellm.completion(**kwargs)

    gov = Governor(Policy(loops=Loops(action="escalate")))
    llm = GovernedLiteLLM(gov, completion=spy)
    with gov.task():
        for _ in range(5):
            llm.completion(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "Go on."}],
                mock_response=LONG,
                max_tokens=40,
            )
    assert [m["role"] for m in seen[3]] == ["user"]
    hints = [m for m in seen[4] if m["role"] == "system"]
    assert len(hints) == 1
    assert "stuck in a loop" in hints[0]["content"]


def test_escalation_retries_on_the_configured_stronger_model() -> None:
    """The call after an escalation goes to Loops.escalate_to, once."""
    models: list[str] = []

    def spy(**kwargs: Any) -> Any:
        import litellm

        models.append(kwargs["model"])
        return litellm.completion(**kwargs)

    policy = Policy(loops=Loops(action="escalate", escalate_to="gpt-4o"))
    gov = Governor(policy)
    llm = GovernedLiteLLM(gov, completion=spy)
    with gov.task():
        for _ in range(6):
            llm.completion(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "Go on."}],
                mock_response=LONG,
                max_tokens=40,
            )
    assert models == ["gpt-4o-mini"] * 4 + ["gpt-4o", "gpt-4o-mini"]


def test_rerun_after_a_change_is_not_a_loop() -> None:
    """The same command with a different result each time is legitimate."""
    results = iter(["3 failed", "2 failed", "1 failed", "all passed"])
    gov = Governor()
    llm = GovernedLiteLLM(gov)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "fix it"}]
    with gov.task() as task:
        for i in range(4):
            call = {
                "id": f"c{i}",
                "type": "function",
                "function": {"name": "run_tests", "arguments": "{}"},
            }
            messages = [
                *messages,
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": f"c{i}", "content": next(results)},
            ]
            llm.completion(
                model="gpt-4o-mini",
                messages=messages,
                mock_response="ok",
                max_tokens=20,
            )
    assert task.report().calls == 4


def test_parallel_branches_answering_alike_are_one_observation() -> None:
    """Send branches with identical long answers in one step are not a loop."""
    from test_langgraph_adapter import ScriptedChatModel, fan_out_graph

    graph = govern(fan_out_graph(ScriptedChatModel(answer=LONG)), Governor())
    out = graph.invoke({"items": [str(i) for i in range(6)], "answers": []})
    assert len(out["answers"]) == 6


def test_parallel_branches_on_one_state_are_one_visit() -> None:
    """Self-consistency: five Send branches asking the same thing are no loop."""
    from test_langgraph_adapter import ScriptedChatModel, fan_out_graph

    graph = govern(fan_out_graph(ScriptedChatModel(answer=LONG)), Governor())
    out = graph.invoke({"items": ["same question"] * 5, "answers": []})
    report = graph.last_report
    assert report is not None
    assert (len(out["answers"]), report.calls, report.stop_reason) == (5, 5, None)


def test_offline_answer_import_is_used() -> None:
    """OfflineAnswer carries tool calls for scripted agents."""
    answer = OfflineAnswer(tool_calls=[{"name": "t", "arguments": {}}])
    assert answer.tool_calls[0]["function"]["name"] == "t"


DRAFT = "Draft: the quick brown fox jumps over the lazy dog near the river bank today."
CRITIQUE = (
    "Critique: the draft is too vague; add concrete detail about the fox and dog."
)


def _writer_critic_responder(model: str, messages: Any, tools: Any) -> str:
    """The critic always asks for the same change; the writer ignores it."""
    return CRITIQUE if messages[0]["content"].startswith("You critique") else DRAFT


def _chat_model() -> Any:
    from langchain_litellm import ChatLiteLLM

    from governor.testing import offline_model

    return ChatLiteLLM(model=offline_model("gpt-4o-mini"), max_tokens=60)


def _ping_pong_with_counter() -> Any:
    """Writer and critic; the state carries a revision counter."""
    from langchain_core.messages import HumanMessage
    from langgraph.graph import START, StateGraph

    model = _chat_model()

    def writer(state: RevisionState) -> dict[str, Any]:
        prompt = "You write. " + state.get("critique", "")
        draft = str(model.invoke([HumanMessage(prompt)]).content)
        return {"draft": draft, "revision": state["revision"] + 1}

    def critic(state: RevisionState) -> dict[str, Any]:
        prompt = "You critique. " + state["draft"]
        return {"critique": str(model.invoke([HumanMessage(prompt)]).content)}

    graph = StateGraph(RevisionState)
    graph.add_node("writer", writer)
    graph.add_node("critic", critic)
    graph.add_edge(START, "writer")
    graph.add_edge("writer", "critic")
    graph.add_edge("critic", "writer")
    return graph.compile()


def _ping_pong_on_messages() -> Any:
    """Writer and critic; the state is the message list only."""
    from langchain_core.messages import HumanMessage
    from langgraph.graph import START, StateGraph

    model = _chat_model()

    def turn(instruction: str) -> Any:
        def node(state: MessagesState) -> dict[str, Any]:
            prompt = [HumanMessage(instruction), *state["messages"][-1:]]
            return {"messages": [model.invoke(prompt)]}

        return node

    graph = StateGraph(MessagesState)
    graph.add_node("writer", turn("You write."))
    graph.add_node("critic", turn("You critique."))
    graph.add_edge(START, "writer")
    graph.add_edge("writer", "critic")
    graph.add_edge("critic", "writer")
    return graph.compile()


class RevisionState(TypedDict, total=False):
    draft: str
    critique: str
    revision: int


class MessagesState(TypedDict):
    messages: Annotated[list[Any], operator.add]


@pytest.mark.parametrize(
    ("build", "start"),
    [
        pytest.param(_ping_pong_with_counter, {"revision": 0}, id="counter-in-state"),
        pytest.param(_ping_pong_on_messages, {"messages": ["go"]}, id="messages-only"),
    ],
)
def test_agents_ping_ponging_are_stopped_before_the_recursion_limit(
    build: Any, start: dict[str, Any]
) -> None:
    """Writer and critic repeating themselves in turn: stopped within three laps."""
    install_offline_provider(_writer_critic_responder, speed=0)
    graph = govern(build(), Governor())
    with pytest.raises(LoopDetected) as info:
        graph.invoke(start, {"recursion_limit": 200})
    assert info.value.rule == "near_duplicate"
    report = graph.last_report
    assert report is not None
    assert (report.calls, report.stop_reason) == (5, "loop_detected")


def test_a_writer_answered_with_one_short_critique_is_still_stopped() -> None:
    """A short critique between the drafts keeps their run when it comes back
    the same: stopped on the 4th draft, the 7th output."""

    def responder(model: str, messages: Any, tools: Any) -> str:
        critic = messages[0]["content"].startswith("You critique")
        return "Needs more detail." if critic else DRAFT

    install_offline_provider(responder, speed=0)
    graph = govern(_ping_pong_with_counter(), Governor())
    with pytest.raises(LoopDetected) as info:
        graph.invoke({"revision": 0}, {"recursion_limit": 200})
    assert info.value.rule == "near_duplicate"
    assert graph.last_report is not None
    assert graph.last_report.calls == 7


REFUSAL = "I'm sorry, but I can't assist with that request."
TICKETS = {
    "charged twice": "billing",
    "parcel lost": "shipping",
    "want my money back": "refund",
    "cannot log in": "login",
    "invoice wrong": "billing",
    "feature idea": "other",
    "return item": "refund",
    "late delivery": "shipping",
}


def _cascading_governor(*, refusals: bool) -> tuple[Governor, GovernedLiteLLM]:
    """A governor whose policy cascades from the offline cheap model to the
    premium one; with ``refusals``, a refusal fails the check too."""
    from governor import Cascade
    from governor.cascade import NonEmptyCheck, NotRefusalCheck, Tier

    checks: list[Any] = [NonEmptyCheck()]
    if refusals:
        checks.append(NotRefusalCheck())
    cascade = Cascade(
        tiers=[
            Tier(name="cheap", model="offline/gpt-4o-mini"),
            Tier(name="premium", model="offline/gpt-4o"),
        ],
        checks=checks,
    )
    gov = Governor(Policy(cascade=cascade))
    return gov, GovernedLiteLLM(gov)


def test_a_batch_of_cascades_whose_cheap_tier_refuses_is_not_a_loop() -> None:
    """One task labels eight tickets through a cascade: the cheap tier gives
    the same refusal each time (rejected), the next a one-word label. The
    labels come between the refusals, so these are no near-copies in a row."""

    def responder(model: str, messages: Any, tools: Any) -> str:
        if model == "gpt-4o-mini":
            return REFUSAL
        return TICKETS[messages[-1]["content"].removeprefix("Classify: ")]

    install_offline_provider(responder, speed=0)
    gov, llm = _cascading_governor(refusals=True)
    with gov.task() as task:
        labels = [
            llm.cascade([{"role": "user", "content": f"Classify: {t}"}]).answer.text
            for t in TICKETS
        ]
    assert labels == list(TICKETS.values())
    assert (task.report().calls, task.report().stop_reason) == (16, None)


def test_a_batch_of_cascades_with_one_label_each_time_is_not_a_loop() -> None:
    """The cheap tier refuses every ticket (rejected), the next tier gives the
    same label to each: only the returned labels are judged as outputs, and
    a run of one short label is not a loop."""

    def responder(model: str, messages: Any, tools: Any) -> str:
        return REFUSAL if model == "gpt-4o-mini" else "billing"

    install_offline_provider(responder, speed=0)
    gov, llm = _cascading_governor(refusals=True)
    with gov.task() as task:
        labels = [
            llm.cascade([{"role": "user", "content": f"Classify: {t}"}]).answer.text
            for t in TICKETS
        ]
    assert labels == ["billing"] * len(TICKETS)
    assert (task.report().calls, task.report().stop_reason) == (16, None)


def test_a_loop_of_cascades_returning_one_long_answer_is_still_stopped() -> None:
    """An agent that asks a cascade the same and gets the same long answer
    back, again and again, is stopped by the answers the runs return."""
    from governor import LoopDetected

    answer = (
        "The deployment is still rolling out across all regions and nothing "
        "has changed since the last time you checked on it."
    )
    install_offline_provider(lambda model, messages, tools: answer, speed=0)
    gov, llm = _cascading_governor(refusals=False)
    with pytest.raises(LoopDetected), gov.task() as task:
        for lap in range(30):
            llm.cascade([{"role": "user", "content": f"Status now? ({lap})"}])
    assert task.report().calls < 30


def test_planner_and_executor_with_new_outputs_are_not_stopped() -> None:
    """Turn-taking whose outputs carry new content each lap runs to its end."""
    from langchain_core.messages import HumanMessage
    from langgraph.graph import END, START, StateGraph

    def responder(model: str, messages: Any, tools: Any) -> str:
        text = messages[0]["content"]
        lap = text.count("|")
        if text.startswith("Plan"):
            return (
                f"Plan {lap}: fetch page {lap} of the orders report and count "
                f"the late orders, about {lap * 7 + 3} rows expected there."
            )
        return (
            f"Result {lap}: page {lap} holds {lap * 5 + 1} late orders out of "
            f"{lap * 7 + 3} rows; the oldest dates from week {lap + 20}."
        )

    install_offline_provider(responder, speed=0)
    model = _chat_model()

    def plan(state: MessagesState) -> dict[str, Any]:
        history = "|".join(str(m) for m in state["messages"])
        return {"messages": [model.invoke([HumanMessage("Plan " + history)]).content]}

    def execute(state: MessagesState) -> dict[str, Any]:
        history = "|".join(str(m) for m in state["messages"])
        return {"messages": [model.invoke([HumanMessage("Act " + history)]).content]}

    graph = StateGraph(MessagesState)
    graph.add_node("plan", plan)
    graph.add_node("execute", execute)
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "execute")
    graph.add_conditional_edges(
        "execute", lambda s: END if len(s["messages"]) > 16 else "plan"
    )
    governed = govern(graph.compile(), Governor())
    out = governed.invoke({"messages": ["orders"]}, {"recursion_limit": 100})
    assert len(out["messages"]) == 17
    assert governed.last_report is not None
    assert governed.last_report.stop_reason is None


def _react_graph(
    tools: list[Any], keep_last: int | None = None, state: Any = None
) -> Any:
    """A ReAct agent; with keep_last its prompt is the question plus that tail."""
    from langchain_core.messages import ToolMessage
    from langgraph.graph import START, StateGraph
    from langgraph.prebuilt import ToolNode, tools_condition

    model = _chat_model().bind_tools(tools)

    def agent(state: MessagesState) -> dict[str, Any]:
        messages = state["messages"]
        if keep_last is not None:
            tail = messages[1:][-keep_last:]
            while tail and isinstance(tail[0], ToolMessage):
                tail = tail[1:]
            messages = [messages[0], *tail]
        return {"messages": [model.invoke(messages)]}

    graph = StateGraph(state or MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode(tools))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile()


def _scripted_tool_calls(plan: list[tuple[str, dict[str, Any]]], done: list[str]):
    """A responder asking for plan[i] once i tool calls have returned."""

    def responder(model: str, messages: Any, tools: Any) -> Any:
        if len(done) >= len(plan):
            return "All lookups are done."
        name, args = plan[len(done)]
        return OfflineAnswer(tool_calls=[{"name": name, "arguments": args}])

    return responder


def _population_lookup(done: list[str], cities: int) -> Any:
    """A lookup tool that answers each city anew, scripted to be called for
    ``cities`` cities in turn by the offline model."""
    from langchain_core.tools import tool

    @tool
    def lookup(city: str) -> str:
        """Look up a city's population."""
        done.append(city)
        return f"{city}: population {len(done) * 1000003}"

    plan = [("lookup", {"city": f"City{i:02d}"}) for i in range(cities)]
    install_offline_provider(_scripted_tool_calls(plan, done), speed=0)
    return lookup


def test_react_agent_with_trimmed_history_is_not_stopped() -> None:
    """Keeping the question and the last 20 messages does not look like a loop."""
    from langchain_core.messages import HumanMessage

    done: list[str] = []
    lookup = _population_lookup(done, cities=14)
    graph = govern(_react_graph([lookup], keep_last=20), Governor())
    graph.invoke({"messages": [HumanMessage("populations")]}, {"recursion_limit": 100})
    assert len(done) == 14
    assert graph.last_report is not None
    assert graph.last_report.stop_reason is None


def test_alternating_tools_with_new_results_are_not_stopped() -> None:
    """weather, news, weather, news ... with results that change is work."""
    from langchain_core.messages import HumanMessage
    from langchain_core.tools import tool

    done: list[str] = []

    @tool
    def weather(city: str) -> str:
        """Today's weather in a city."""
        done.append("weather")
        return f"{city}: {len(done) + 10} degrees"

    @tool
    def news(city: str) -> str:
        """Today's headline in a city."""
        done.append("news")
        return f"{city}: headline number {len(done)}"

    plan = [(name, {"city": "Oslo"}) for name in ("weather", "news") * 6]
    install_offline_provider(_scripted_tool_calls(plan, done), speed=0)
    graph = govern(_react_graph([weather, news]), Governor())
    graph.invoke({"messages": [HumanMessage("brief me")]}, {"recursion_limit": 100})
    assert len(done) == 12
    assert graph.last_report is not None
    assert graph.last_report.stop_reason is None


def test_polling_with_changing_results_is_not_stopped() -> None:
    """The same status call whose answer moves on each time runs to its end."""
    from langchain_core.messages import HumanMessage
    from langchain_core.tools import tool

    done: list[str] = []

    @tool
    def job_status(job: str) -> str:
        """The status of a job."""
        done.append(job)
        return f"job {job}: {len(done) * 10}% done"

    plan = [("job_status", {"job": "build-7"})] * 10
    install_offline_provider(_scripted_tool_calls(plan, done), speed=0)
    graph = govern(_react_graph([job_status], keep_last=6), Governor())
    graph.invoke({"messages": [HumanMessage("wait")]}, {"recursion_limit": 100})
    assert len(done) == 10
    assert graph.last_report is not None
    assert graph.last_report.stop_reason is None


def _tool_turn(call_id: str, result: str) -> list[dict[str, Any]]:
    call = {
        "id": call_id,
        "type": "function",
        "function": {"name": "run_tests", "arguments": "{}"},
    }
    return [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call_id, "content": result},
    ]


def test_trimmed_prompts_do_not_recount_old_results() -> None:
    """A prompt cut to its last turns carries old results at new places."""
    gov = Governor()
    llm = GovernedLiteLLM(gov)
    question = {"role": "user", "content": "fix it"}
    history: list[dict[str, Any]] = []
    with gov.task() as task:
        for i in range(12):
            history += _tool_turn(f"c{i}", f"{12 - i} tests failed")
            llm.completion(
                model="gpt-4o-mini",
                messages=[question, *history[-16:]],
                mock_response="ok",
                max_tokens=20,
            )
    assert (task.report().calls, task.report().stop_reason) == (12, None)


def test_reused_call_ids_with_the_same_result_are_still_repeats() -> None:
    """A fake that reuses one call id: each new copy of the result counts."""
    gov = Governor()
    llm = GovernedLiteLLM(gov)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "fix it"}]
    with gov.task() as task, pytest.raises(LoopDetected) as info:
        for _ in range(10):
            messages += _tool_turn("call_1", "1 failed")
            llm.completion(
                model="gpt-4o-mini",
                messages=messages,
                mock_response="ok",
                max_tokens=20,
            )
    assert info.value.rule == "repeat"
    assert task.report().calls == 3


class AskState(MessagesState):
    question: str


def test_react_agent_with_a_fixed_state_field_is_not_stopped() -> None:
    """A fixed `question` beside the messages: new tool results, no loop."""
    from langchain_core.messages import HumanMessage

    done: list[str] = []
    lookup = _population_lookup(done, cities=12)
    graph = govern(_react_graph([lookup], state=AskState), Governor())
    graph.invoke(
        {"messages": [HumanMessage("populations")], "question": "populations"},
        {"recursion_limit": 100},
    )
    assert len(done) == 12
    assert graph.last_report is not None
    assert graph.last_report.stop_reason is None


def test_send_branches_calling_one_tool_alike_are_not_a_loop() -> None:
    """Best-of-N: ten branches each get the same date from the same tool."""
    import uuid

    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from test_langgraph_adapter import ScriptedChatModel, fan_out_graph

    class DatedModel(ScriptedChatModel):
        def invoke(self, input: Any, *args: Any, **kwargs: Any) -> Any:
            call_id = f"call-{uuid.uuid4().hex[:8]}"
            prompt = [
                HumanMessage(str(input)),
                AIMessage(
                    "", tool_calls=[{"id": call_id, "name": "get_date", "args": {}}]
                ),
                ToolMessage("2025-03-14", tool_call_id=call_id),
            ]
            return super().invoke(prompt, *args, **kwargs)

    graph = govern(fan_out_graph(DatedModel(answer=LONG)), Governor())
    out = graph.invoke({"items": ["what day is it?"] * 10, "answers": []})
    assert graph.last_report is not None
    assert (len(out["answers"]), graph.last_report.stop_reason) == (10, None)


def test_a_loop_found_in_an_output_reports_that_output_in_its_spend() -> None:
    """LoopDetected.spent_usd includes the paid call whose output showed it."""
    from langgraph.graph import START, StateGraph
    from test_langgraph_adapter import ScriptedChatModel

    model = ScriptedChatModel(answer=LONG)

    def node(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke("Try again.")]}

    builder = StateGraph(MessagesState)
    builder.add_node("n", node)
    builder.add_edge(START, "n")
    builder.add_edge("n", "n")
    graph = govern(builder.compile(), Governor())
    with pytest.raises(LoopDetected) as info:
        graph.invoke({"messages": []}, {"recursion_limit": 100})
    report = graph.last_report
    assert report is not None
    assert info.value.rule == "near_duplicate"
    assert info.value.spent_usd == report.cost_usd


def test_a_constant_preamble_before_new_tool_calls_is_not_a_loop() -> None:
    """'Let me look up the next record ...' before each new lookup is work."""
    from langchain_core.messages import HumanMessage
    from langchain_core.tools import tool

    done: list[int] = []
    preamble = "Let me look up the next record in the database to gather more facts."

    @tool
    def lookup(i: int) -> str:
        """Look up a record."""
        done.append(i)
        return f"record {i}: value {i * i}"

    def responder(model: str, messages: Any, tools: Any) -> Any:
        if len(done) >= 12:
            return "All records were checked."
        args = {"i": len(done)}
        return OfflineAnswer(
            text=preamble, tool_calls=[{"name": "lookup", "arguments": args}]
        )

    install_offline_provider(responder, speed=0)
    graph = govern(_react_graph([lookup]), Governor())
    graph.invoke({"messages": [HumanMessage("check them")]}, {"recursion_limit": 100})
    assert graph.last_report is not None
    assert (len(done), graph.last_report.stop_reason) == (12, None)


def test_the_same_prompt_answered_the_same_way_is_stopped() -> None:
    """A node sending a fixed prompt that gets 'Retrying now.' each time."""
    from langgraph.graph import START, StateGraph
    from test_langgraph_adapter import ScriptedChatModel

    model = ScriptedChatModel(answer="Retrying now.")

    def node(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke("do it")]}

    builder = StateGraph(MessagesState)
    builder.add_node("n", node)
    builder.add_edge(START, "n")
    builder.add_edge("n", "n")
    graph = govern(builder.compile(), Governor())
    with pytest.raises(LoopDetected) as info:
        graph.invoke({"messages": []}, {"recursion_limit": 1000})
    report = graph.last_report
    assert report is not None
    assert (info.value.rule, info.value.setting, report.calls) == (
        "same_call",
        "max_identical_calls",
        12,  # the first answer, 10 allowed repeats of it, and the one that stops
    )


def test_identical_calls_may_be_allowed() -> None:
    """max_identical_calls=None lets a task ask the same thing again."""
    gov = Governor(Policy(loops=Loops(max_identical_calls=None)))
    with gov.task() as task:
        for _ in range(15):
            chat(gov, "yes")
    assert task.report().calls == 15


def test_an_agent_loop_inside_one_node_is_still_stopped() -> None:
    """Calls one node makes in turn are no fan-out: the same failing tool
    result coming back is a repeat even within one graph step."""
    import uuid

    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langgraph.graph import START, StateGraph
    from test_langgraph_adapter import ScriptedChatModel

    model = ScriptedChatModel(answer="I will look it up again.")

    def agent(state: MessagesState) -> dict[str, Any]:
        prompt: list[Any] = [HumanMessage("find record 7")]
        for turn in range(8):
            model.invoke(prompt)
            call_id = f"call-{uuid.uuid4().hex[:8]}"
            call = {"id": call_id, "name": "lookup", "args": {"id": 7}}
            prompt += [
                AIMessage(f"Attempt {turn}.", tool_calls=[call]),
                ToolMessage("Error: record service unavailable", tool_call_id=call_id),
            ]
        return {"messages": []}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_edge(START, "agent")
    graph = govern(builder.compile(), Governor())
    with pytest.raises(LoopDetected) as info:
        graph.invoke({"messages": []})
    assert info.value.rule == "repeat"
    assert "lookup" in info.value.evidence[0]


class Asked(TypedDict):
    question: str
    laps: Annotated[int, operator.add]


def _asking_node(model: Any, times: int) -> Any:
    """A node that asks its model the same question up to ``times`` times in
    turn, a hand-written agent loop inside one graph step."""

    def ask(state: Asked) -> dict[str, Any]:
        for _ in range(times):
            model.invoke(state["question"])
        return {}

    return ask


@pytest.mark.parametrize(
    ("answer", "rule", "calls"),
    [
        pytest.param(LONG, "near_duplicate", 4, id="long answer"),
        pytest.param("Retrying now.", "same_call", 12, id="short answer"),
    ],
)
def test_a_loop_of_calls_inside_one_node_run_is_stopped(
    answer: str, rule: str, calls: int
) -> None:
    """Every call a node makes in turn is judged, not only its first: the
    same loop as in a plain task, stopped after as many calls."""
    from langgraph.graph import START, StateGraph
    from test_langgraph_adapter import ScriptedChatModel

    builder = StateGraph(Asked)
    builder.add_node("watch", _asking_node(ScriptedChatModel(answer=answer), 30))
    builder.add_edge(START, "watch")
    graph = govern(builder.compile(), Governor())
    with pytest.raises(LoopDetected) as info:
        graph.invoke({"question": "What is the deployment status?", "laps": 0})
    report = graph.last_report
    assert report is not None
    assert (info.value.rule, report.calls) == (rule, calls)


def _subgraph_loop(model: Any, node: Any = None) -> Any:
    """research -> count -> research ..., research a compiled subgraph whose
    one node (``node``, else one asking the model the state's fixed question
    once) is named ask."""
    from langgraph.graph import END, START, StateGraph

    class Question(TypedDict):
        question: str

    inner = StateGraph(Question)
    inner.add_node("ask", node or _asking_node(model, 1))
    inner.add_edge(START, "ask")
    inner.add_edge("ask", END)
    outer = StateGraph(Asked)
    outer.add_node("research", inner.compile())
    outer.add_node("count", lambda state: {"laps": 1})
    outer.add_edge(START, "research")
    outer.add_edge("research", "count")
    outer.add_edge("count", "research")
    return outer.compile()


def test_a_loop_through_a_subgraph_is_stopped() -> None:
    """A subgraph's steps count from 1 on each of its runs; its runs are
    still told apart, so the same answer each lap is a loop."""
    from test_langgraph_adapter import ScriptedChatModel

    graph = govern(_subgraph_loop(ScriptedChatModel(answer=LONG)), Governor())
    with pytest.raises(LoopDetected) as info:
        graph.invoke({"question": "status?", "laps": 0}, {"recursion_limit": 200})
    report = graph.last_report
    assert report is not None
    assert (info.value.rule, report.calls) == ("near_duplicate", 4)


def test_a_subgraph_node_visited_with_the_same_state_is_stopped() -> None:
    """The node rule tells a subgraph's runs apart too: its node comes back
    with the same state, answered anew each time (no output rule sees it),
    and is stopped on its 4th visit."""
    from test_langgraph_adapter import ScriptedChatModel

    class CountingModel(ScriptedChatModel):
        def invoke(self, input: Any, *args: Any, **kwargs: Any) -> Any:
            self.completion_tokens += 1
            return super().invoke(input, *args, **kwargs)

        def _generate(self, messages: Any, stop: Any = None, **kwargs: Any) -> Any:
            self.answer = f"Answer {self.completion_tokens}."
            return super()._generate(messages, stop, **kwargs)

    # The outer nodes' states change each lap; left out, they break no run.
    policy = Policy(loops=Loops(exempt_tools=("research", "count")))
    graph = govern(_subgraph_loop(CountingModel()), Governor(policy))
    with pytest.raises(LoopDetected) as info:
        graph.invoke({"question": "status?", "laps": 0}, {"recursion_limit": 200})
    report = graph.last_report
    assert report is not None
    assert (info.value.rule, report.calls) == ("repeat", 3)
    assert "ask" in info.value.evidence[0]


def test_a_tool_result_repeated_through_a_subgraph_is_stopped() -> None:
    """The same failing lookup in each run of a subgraph: the tool rules
    tell its runs apart, though each run is step 1 of its graph."""
    import uuid

    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from test_langgraph_adapter import ScriptedChatModel

    model = ScriptedChatModel(answer="I will look it up again.")

    def ask(state: dict[str, Any]) -> dict[str, Any]:
        call_id = f"call-{uuid.uuid4().hex[:8]}"
        call = {"id": call_id, "name": "lookup", "args": {"id": 7}}
        model.invoke(
            [
                HumanMessage(state["question"]),
                AIMessage("", tool_calls=[call]),
                ToolMessage("Error: record service unavailable", tool_call_id=call_id),
            ]
        )
        return {}

    # Left out, the nodes break no run: only the tool rules can stop it.
    policy = Policy(loops=Loops(exempt_tools=("research", "count", "ask")))
    graph = govern(_subgraph_loop(model, ask), Governor(policy))
    with pytest.raises(LoopDetected) as info:
        graph.invoke({"question": "find record 7", "laps": 0}, {"recursion_limit": 200})
    report = graph.last_report
    assert report is not None
    assert (info.value.rule, report.calls) == ("repeat", 3)
    assert "lookup" in info.value.evidence[0]


class Polled(TypedDict):
    log: Annotated[list[str], operator.add]


def _async_scripted_model() -> Any:
    from test_langgraph_adapter import ScriptedChatModel

    class AsyncScriptedModel(ScriptedChatModel):
        """The scripted model, answering ``ainvoke`` on the event loop."""

        async def _agenerate(
            self, messages: list[Any], stop: Any = None, **kwargs: Any
        ) -> Any:
            kwargs.pop("run_manager", None)
            return self._generate(messages, stop, **kwargs)

    return AsyncScriptedModel


def _polling_fan_out(model: Any, jobs: int) -> Any:
    """plan -> Send(check, job j) for each job -> plan ...: a polling loop
    whose branches each ask whether their job is finished."""
    from langgraph.graph import START, StateGraph
    from langgraph.types import Send

    async def check(state: dict[str, Any]) -> dict[str, Any]:
        reply = await model.ainvoke(f"Is job {state['job']} finished?")
        return {"log": [str(reply.content)]}

    builder = StateGraph(Polled)
    builder.add_node("plan", lambda state: {})
    builder.add_node("check", check)
    builder.add_edge(START, "plan")
    builder.add_conditional_edges(
        "plan", lambda state: [Send("check", {"job": j}) for j in range(jobs)]
    )
    builder.add_edge("check", "plan")
    return builder.compile()


def test_a_fan_out_polling_loop_is_stopped_whichever_branch_ends_first() -> None:
    """Three branches per lap, their calls side by side, a different one
    ending first each lap: each job's question and answer are counted on
    their own, so the loop is stopped on lap 12, as one node asking the
    three questions in turn is."""
    asked: dict[str, int] = {}

    class RotatingModel(_async_scripted_model()):  # type: ignore[misc]
        """Answers "Not ready yet."; job j's n-th answer takes (n + j) % 3
        ticks, so each lap another job's answer comes first."""

        async def _agenerate(
            self, messages: list[Any], stop: Any = None, **kwargs: Any
        ) -> Any:
            question = str(messages[-1].content)
            job = int(question.split()[2])
            lap = asked[question] = asked.get(question, 0) + 1
            await asyncio.sleep(0.02 * ((lap + job) % 3))
            return self._generate(messages, stop, **kwargs)

    model = RotatingModel(answer="Not ready yet.")
    graph = govern(_polling_fan_out(model, jobs=3), Governor())
    with pytest.raises(LoopDetected) as info:
        asyncio.run(graph.ainvoke({"log": []}, {"recursion_limit": 200}))
    report = graph.last_report
    assert report is not None
    assert (info.value.rule, report.calls) == ("same_call", 36)
    assert report.peak_inflight == 3  # the branches' calls ran side by side


def test_a_wide_fan_out_asking_one_question_is_not_a_loop() -> None:
    """Fifteen Send branches asking the same thing in one step, and a node
    gathering fifteen such calls: side by side, they count once."""
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Send

    model = _async_scripted_model()(answer="yes")

    async def ask(state: dict[str, Any]) -> dict[str, Any]:
        replies = await asyncio.gather(*(model.ainvoke("ok?") for _ in range(15)))
        return {"log": [str(r.content) for r in replies]}

    builder = StateGraph(Polled)
    builder.add_node("ask", ask)
    builder.add_node("gather", ask)
    builder.add_conditional_edges(
        START, lambda state: [Send("ask", {}) for _ in range(15)]
    )
    builder.add_edge("ask", "gather")
    builder.add_edge("gather", END)
    graph = govern(builder.compile(), Governor())
    out = asyncio.run(graph.ainvoke({"log": []}))
    report = graph.last_report
    assert report is not None
    assert (len(out["log"]), report.calls, report.stop_reason) == (240, 240, None)


def test_a_fan_out_over_new_items_each_lap_is_not_a_loop() -> None:
    """Branches asking about new items each lap, answered alike, go on."""
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Send
    from test_langgraph_adapter import ScriptedChatModel

    model = ScriptedChatModel(answer="Done.")

    def check(state: dict[str, Any]) -> dict[str, Any]:
        return {"log": [str(model.invoke(f"Process item {state['item']}").content)]}

    def more(state: Polled) -> Any:
        start = len(state["log"])
        if start >= 60:
            return END
        return [Send("check", {"item": start + j}) for j in range(3)]

    builder = StateGraph(Polled)
    builder.add_node("plan", lambda state: {})
    builder.add_node("check", check)
    builder.add_edge(START, "plan")
    builder.add_conditional_edges("plan", more)
    builder.add_edge("check", "plan")
    graph = govern(builder.compile(), Governor())
    out = graph.invoke({"log": []}, {"recursion_limit": 200})
    report = graph.last_report
    assert report is not None
    assert (len(out["log"]), report.stop_reason) == (60, None)


def test_a_task_polling_three_jobs_in_turn_is_stopped() -> None:
    """Outside a graph too: three questions asked in turn, each answered the
    same each time, is a loop once one of them came back 12 times."""
    gov = Governor()
    with gov.task() as task, pytest.raises(LoopDetected) as info:
        for _ in range(20):
            for job in range(3):
                GovernedLiteLLM(gov).completion(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": f"Is job {job} done?"}],
                    mock_response="Not ready yet.",
                    max_tokens=20,
                )
    assert (info.value.rule, task.report().calls) == ("same_call", 36)
    assert "times with only calls between them" in str(info.value)
