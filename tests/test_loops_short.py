"""Loops that no output or tool-call repeat shows: short answers, new arguments.

A model fed its own short answer again and again ("Retrying now.") and a
search that answers "no results" to query after query were only stopped by
the budget or LangGraph's recursion limit. Independent short answers (map
branches, a chat answering "OK." to different asks) and a few queries that
find nothing must still run to their end.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

import pytest
from test_loops_governed import (
    MessagesState,
    _chat_model,
    _react_graph,
    _scripted_tool_calls,
)

from governor import Governor, LoopDetected, Loops, Policy, govern
from governor.loops import LoopGuard
from governor.testing import install_offline_provider

RETRY = "Retrying now."


def _self_loop_graph() -> Any:
    """One node that calls the model on the whole history until it says DONE."""
    from langgraph.graph import END, START, StateGraph

    model = _chat_model()

    def retry(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    def route(state: MessagesState) -> str:
        return END if "DONE" in str(state["messages"][-1].content) else "retry"

    graph = StateGraph(MessagesState)
    graph.add_node("retry", retry)
    graph.add_edge(START, "retry")
    graph.add_conditional_edges("retry", route)
    return graph.compile()


def _short_ping_pong_graph() -> Any:
    """Writer and critic on the whole history, answering in two words each."""
    from langgraph.graph import START, StateGraph

    model = _chat_model()

    def writer(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("writer", writer)
    graph.add_node("critic", writer)
    graph.add_edge(START, "writer")
    graph.add_edge("writer", "critic")
    graph.add_edge("critic", "writer")
    return graph.compile()


def test_node_fed_its_own_short_answer_is_stopped_on_the_fifth_call() -> None:
    """'Retrying now.' four times in the history: the fifth call is refused."""
    from langchain_core.messages import HumanMessage

    install_offline_provider(lambda model, messages, tools: RETRY, speed=0)
    graph = govern(_self_loop_graph(), Governor())
    with pytest.raises(LoopDetected) as info:
        graph.invoke(
            {"messages": [HumanMessage("Book the flight.")]}, {"recursion_limit": 200}
        )
    assert (info.value.rule, info.value.setting) == (
        "repeated_turns",
        "max_repeated_turns",
    )
    assert info.value.evidence == (RETRY,)
    report = graph.last_report
    assert report is not None
    assert (report.calls, report.stop_reason) == (4, "loop_detected")


def test_agents_taking_turns_with_short_answers_are_stopped() -> None:
    """'Fix it.' / 'Done now.' in turn, fed back: a cycle of two turns."""
    from langchain_core.messages import HumanMessage

    def responder(model: str, messages: Any, tools: Any) -> str:
        return "Fix it." if len(messages) % 2 == 0 else "Done now."

    install_offline_provider(responder, speed=0)
    graph = govern(_short_ping_pong_graph(), Governor())
    with pytest.raises(LoopDetected) as info:
        graph.invoke({"messages": [HumanMessage("go")]}, {"recursion_limit": 200})
    assert info.value.rule == "repeated_turns"
    assert "cycle of 2 turns" in str(info.value)
    report = graph.last_report
    assert report is not None
    assert report.calls == 5


def test_search_with_new_queries_and_no_results_is_stopped() -> None:
    """'no results' for query after query: stopped after 11 repeats, not 60."""
    from langchain_core.messages import HumanMessage
    from langchain_core.tools import tool

    done: list[str] = []

    @tool
    def search(query: str) -> str:
        """Search the web."""
        done.append(query)
        return "no results"

    plan = [("search", {"query": f"weather attempt {n}"}) for n in range(60)]
    install_offline_provider(_scripted_tool_calls(plan, done), speed=0)
    graph = govern(_react_graph([search]), Governor())
    with pytest.raises(LoopDetected) as info:
        graph.invoke({"messages": [HumanMessage("weather?")]}, {"recursion_limit": 200})
    assert (info.value.rule, info.value.setting) == (
        "same_result",
        "max_same_result_repeats",
    )
    assert "12 different arguments" in str(info.value)
    assert len(done) == 12
    report = graph.last_report
    assert report is not None
    assert (report.calls, report.stop_reason) == (12, "loop_detected")


def _three_empty_searches(loops: Loops) -> tuple[list[str], Any]:
    from langchain_core.messages import HumanMessage
    from langchain_core.tools import tool

    done: list[str] = []

    @tool
    def search(query: str) -> str:
        """Search the web."""
        done.append(query)
        return "no results"

    queries = ["weather Oslo today", "Oslo forecast", "current temperature Oslo"]
    plan = [("search", {"query": q}) for q in queries]
    install_offline_provider(_scripted_tool_calls(plan, done), speed=0)
    graph = govern(_react_graph([search]), Governor(Policy(loops=loops)))
    graph.invoke({"messages": [HumanMessage("weather?")]}, {"recursion_limit": 50})
    return done, graph.last_report


def test_three_queries_that_find_nothing_then_an_answer_are_not_stopped() -> None:
    """A few queries that all come back empty are normal; the rule sees them."""
    done, report = _three_empty_searches(Loops())
    assert len(done) == 3
    assert (report.calls, report.stop_reason) == (4, None)
    # The same run at the strictest setting is stopped, so the rule is engaged.
    with pytest.raises(LoopDetected, match="same_result"):
        _three_empty_searches(Loops(max_same_result_repeats=1))


class ReviewState(TypedDict):
    items: list[str]
    labels: Annotated[list[str], operator.add]


def _map_graph() -> Any:
    """One Send branch per review, each asking the model for a one-word label."""
    from langchain_core.messages import HumanMessage
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Send

    model = _chat_model()

    def fan(state: ReviewState) -> list[Any]:
        return [Send("label", {"items": [i], "labels": []}) for i in state["items"]]

    def label(state: ReviewState) -> dict[str, list[str]]:
        reply = model.invoke([HumanMessage(f"Label this review: {state['items'][0]}")])
        return {"labels": [str(reply.content)]}

    graph = StateGraph(ReviewState)
    graph.add_node("label", label)
    graph.add_conditional_edges(START, fan, ["label"])
    graph.add_edge("label", END)
    return graph.compile()


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({}, id="defaults"),
        pytest.param(
            {"max_repeated_turns": 1, "min_output_words": 0}, id="strictest-turns"
        ),
    ],
)
def test_map_branches_answering_the_same_word_are_not_stopped(
    settings: dict[str, Any],
) -> None:
    """Eight reviews labelled 'positive': independent calls, not a loop."""
    install_offline_provider(lambda model, messages, tools: "positive", speed=0)
    graph = govern(_map_graph(), Governor(Policy(loops=Loops(**settings))))
    out = graph.invoke({"items": [f"review {i}" for i in range(8)], "labels": []})
    assert out["labels"] == ["positive"] * 8
    report = graph.last_report
    assert report is not None
    assert (report.calls, report.stop_reason) == (8, None)


ASKS = [
    "Remember that my name is Ana.",
    "Remember that I live in Oslo.",
    "Remember that I like green tea.",
    "What do you know about me?",
    "Remember that my cat is called Tom.",
    "And now?",
]


def _chat_graph() -> Any:
    """A user node feeding scripted asks, and an assistant on the whole history."""
    from langchain_core.messages import HumanMessage
    from langgraph.graph import END, START, StateGraph

    model = _chat_model()

    def user(state: MessagesState) -> dict[str, Any]:
        asked = sum(isinstance(m, HumanMessage) for m in state["messages"])
        return {"messages": [HumanMessage(ASKS[asked])]}

    def assistant(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    def route(state: MessagesState) -> str:
        asked = sum(isinstance(m, HumanMessage) for m in state["messages"])
        return END if asked == len(ASKS) else "user"

    graph = StateGraph(MessagesState)
    graph.add_node("user", user)
    graph.add_node("assistant", assistant)
    graph.add_edge(START, "user")
    graph.add_edge("user", "assistant")
    graph.add_conditional_edges("assistant", route)
    return graph.compile()


def _chat_responder(model: str, messages: Any, tools: Any) -> str:
    last = messages[-1]["content"]
    if last.startswith("Remember"):
        return "OK."
    return "You are Ana, you live in Oslo and you like green tea."


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({}, id="defaults"),
        pytest.param({"max_repeated_turns": 1}, id="strictest-turns"),
    ],
)
def test_chat_answering_ok_to_different_asks_is_not_stopped(
    settings: dict[str, Any],
) -> None:
    """'OK.' three times in a row, each to a new ask: the user brings news."""
    install_offline_provider(_chat_responder, speed=0)
    graph = govern(_chat_graph(), Governor(Policy(loops=Loops(**settings))))
    out = graph.invoke({"messages": []}, {"recursion_limit": 50})
    answers = [str(m.content) for m in out["messages"][1::2]]
    assert answers.count("OK.") == 4
    report = graph.last_report
    assert report is not None
    assert (report.calls, report.stop_reason) == (6, None)


# -- the guard alone ----------------------------------------------------------


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def _answer(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def test_prompt_ending_in_repeated_answers_fires_after_max_repeated_turns() -> None:
    """Three answers in the history pass; the fourth identical one is a loop."""
    guard = LoopGuard(Loops())
    prompt = [_user("Book the flight.")]
    verdicts = []
    for step in range(1, 6):
        verdicts.append(guard.on_prompt(prompt, step=step))
        prompt.append(_answer(" Retrying   now. " if step % 2 else RETRY))
    assert verdicts[:4] == [None] * 4
    assert verdicts[4] is not None
    assert (verdicts[4].rule, verdicts[4].repeats, verdicts[4].steps) == (
        "repeated_turns",
        3,
        (5,),
    )


def test_turns_with_an_exempt_tool_never_repeat() -> None:
    """A status poll the policy exempts is not a loop in the prompt either."""
    call = {"name": "job_status", "args": {"job": "7"}, "id": "c"}
    turn = [
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c", "content": "pending"},
    ]
    prompt = [_user("wait for job 7"), *turn * 6]
    assert LoopGuard(Loops()).on_prompt(prompt, step=7) is not None
    exempt = LoopGuard(Loops(exempt_tools=("job_status",)))
    assert exempt.on_prompt(prompt, step=7) is None


def test_repeated_turns_in_record_mode_need_a_fresh_run() -> None:
    """Flagged once, the same repeated turn is flagged again 3 turns later."""
    guard = LoopGuard(Loops(action="record"))
    prompt = [_user("go")]
    flagged = []
    for step in range(1, 12):
        if guard.on_prompt(prompt, step=step) is not None:
            flagged.append(step)
        prompt.append(_answer(RETRY))
    assert flagged == [5, 8, 11]


def test_same_result_counts_calls_in_a_row_whatever_the_arguments() -> None:
    """Another tool's call, or another result, starts the count again."""
    guard = LoopGuard(Loops(max_same_result_repeats=3))
    for n in range(3):
        assert guard.on_tool_call("search", {"q": f"a{n}"}, "none", step=n) is None
    assert guard.on_tool_call("fetch", {"url": "x"}, "page", step=3) is None
    for n in range(4):
        assert guard.on_tool_call("search", {"q": f"b{n}"}, "none", step=4) is None
    verdict = guard.on_tool_call("search", {"q": "b4"}, "none", step=5)
    assert verdict is not None
    assert (verdict.rule, verdict.repeats) == ("same_result", 4)


def test_same_result_rule_can_be_turned_off() -> None:
    """max_same_result_repeats=None leaves changing arguments alone."""
    guard = LoopGuard(Loops(max_same_result_repeats=None))
    verdicts = [
        guard.on_tool_call("search", {"q": str(n)}, "none", step=n) for n in range(30)
    ]
    assert verdicts == [None] * 30


def test_a_conversation_looping_outside_any_task_is_stopped() -> None:
    """Plain LiteLLM calls, one task each, are judged on the prompt they send."""
    from governor.adapters.litellm import GovernedLiteLLM

    gov = Governor()
    llm = GovernedLiteLLM(gov)
    messages: list[dict[str, str]] = [{"role": "user", "content": "Fetch the page."}]
    sent = 0
    with pytest.raises(LoopDetected) as stopped:
        for _ in range(20):
            llm.completion(
                model="gpt-4o-mini",
                messages=messages,
                mock_response=RETRY,
                max_tokens=10,
            )
            sent += 1
            messages += [
                {"role": "assistant", "content": RETRY},
                {"role": "user", "content": "Try again."},
            ]
    assert (stopped.value.rule, sent) == ("repeated_turns", 4)


def test_calls_gathered_side_by_side_are_fan_out_not_a_loop() -> None:
    """Six like answers from asyncio.gather in one task: no loop is reported."""
    import asyncio

    from governor.adapters.litellm import GovernedLiteLLM

    answer = "The capital of France is Paris, a city on the river Seine."
    gov = Governor()

    async def main() -> Any:
        llm = GovernedLiteLLM(gov)
        async with gov.atask() as task:
            await asyncio.gather(
                *(
                    llm.acompletion(
                        model="gpt-4o-mini",
                        messages=[{"role": "user", "content": f"Question {i}?"}],
                        mock_response=answer,
                        mock_delay=0.05,
                        max_tokens=30,
                    )
                    for i in range(6)
                )
            )
        return task.report()

    report = asyncio.run(main())
    assert (report.calls, report.peak_inflight, report.stop_reason) == (6, 6, None)


def test_the_same_answers_one_after_another_are_still_a_loop() -> None:
    """The same six answers in sequence are stopped as before."""
    from governor.adapters.litellm import GovernedLiteLLM

    answer = "The capital of France is Paris, a city on the river Seine."
    gov = Governor()
    llm = GovernedLiteLLM(gov)
    with pytest.raises(LoopDetected), gov.task():
        for i in range(6):
            llm.completion(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"Question {i}?"}],
                mock_response=answer,
                max_tokens=30,
            )


def test_a_chat_whose_asks_differ_only_by_an_id_is_not_a_loop() -> None:
    """ "Cancel order <uuid>" answered "Done." each time: new asks, not a loop."""
    import uuid

    from governor.adapters.litellm import GovernedLiteLLM

    gov = Governor()
    llm = GovernedLiteLLM(gov)
    history: list[dict[str, str]] = [{"role": "system", "content": "Order bot."}]
    for _ in range(8):
        history.append({"role": "user", "content": f"Cancel order {uuid.uuid4()}"})
        llm.completion(
            model="gpt-4o-mini", messages=history, mock_response="Done.", max_tokens=5
        )
        history.append({"role": "assistant", "content": "Done."})
    assert len(history) == 17


def test_a_loop_beside_an_open_stream_is_still_stopped() -> None:
    """A stream left open does not hide the calls that follow one another."""
    from governor.adapters.litellm import GovernedLiteLLM

    answer = "The capital of France is Paris, a city on the river Seine."
    gov = Governor()
    llm = GovernedLiteLLM(gov)
    sent = 0
    with pytest.raises(LoopDetected), gov.task():
        stream = llm.completion(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Tell a long story."}],
            mock_response="Once upon a time there was a governor.",
            max_tokens=50,
            stream=True,
        )
        next(iter(stream))
        for i in range(10):
            llm.completion(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"Continue {i}."}],
                mock_response=answer,
                max_tokens=30,
            )
            sent += 1
    stream.close()
    assert sent == 4


def test_many_tool_calls_in_one_answer_with_one_result_are_fan_out() -> None:
    """Fourteen e-mails sent in one answer, each "sent": not a same_result loop."""
    from governor.adapters.litellm import GovernedLiteLLM

    calls = [
        {
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": "send_email", "arguments": f'{{"to": "u{i}@x.io"}}'},
        }
        for i in range(14)
    ]
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Tell the whole team."},
        {"role": "assistant", "content": None, "tool_calls": calls},
        *(
            {"role": "tool", "tool_call_id": f"call_{i}", "content": "sent"}
            for i in range(14)
        ),
    ]
    gov = Governor()
    with gov.task() as task:
        GovernedLiteLLM(gov).completion(
            model="gpt-4o-mini", messages=messages, mock_response="Done.", max_tokens=5
        )
    assert (task.report().calls, task.report().stop_reason) == (1, None)
