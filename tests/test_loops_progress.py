"""Loops seen whatever the history's length, and work that must go on.

A history trimmed to the question and its last messages once hid the
same-result rule; results that differ only in the id of the item each call
acts on (a ticket, an order, a new user) were taken for the same result; a
graph node that polls without calling a model was stopped on its fourth
visit; and two tools taking turns, each answering the same, were never
stopped.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, TypedDict

import pytest
from test_loops_governed import _react_graph, _scripted_tool_calls

from governor import Governor, LoopDetected, Loops, Policy, govern
from governor._loopwatch import loop_watch, tool_call_output
from governor.adapters.litellm import GovernedLiteLLM
from governor.loops import LoopGuard
from governor.testing import OfflineAnswer, install_offline_provider, offline_model

# -- a trimmed history -------------------------------------------------------


def _searches_with_trimmed_history(keep: int | None, calls: int = 40) -> int:
    """Queries that all find nothing, with new call ids; returns calls made."""
    sent = {"n": 0}

    def responder(model: str, messages: Any, tools: Any) -> Any:
        sent["n"] += 1
        args = json.dumps({"query": f"weather attempt {sent['n']}"})
        call = {
            "id": f"call_{sent['n']}",
            "type": "function",
            "function": {"name": "search", "arguments": args},
        }
        return OfflineAnswer(tool_calls=[call])

    install_offline_provider(responder, speed=0)
    gov = Governor()
    llm = GovernedLiteLLM(gov)
    question = {"role": "user", "content": "What is the weather in Paris?"}
    history: list[dict[str, Any]] = []
    with gov.task(), pytest.raises(LoopDetected) as info:
        for _ in range(calls):
            prompt = [question, *(history[-keep:] if keep else history)]
            answer = llm.completion(model=offline_model("gpt-4o-mini"), messages=prompt)
            made = [c.model_dump() for c in answer.choices[0].message.tool_calls]
            history.append({"role": "assistant", "content": None, "tool_calls": made})
            history += [
                {"role": "tool", "tool_call_id": c["id"], "content": "no results"}
                for c in made
            ]
    assert info.value.rule == "same_result"
    return sent["n"]


@pytest.mark.parametrize("keep", [None, 20, 6, 2])
def test_a_trimmed_history_does_not_hide_the_same_result(keep: int | None) -> None:
    """Question + last N messages: stopped on the 12th call, as with it all."""
    assert _searches_with_trimmed_history(keep) == 12


def test_a_react_agent_trimming_its_history_is_stopped_alike() -> None:
    """A ReAct graph that keeps the last 6 messages: stopped after 12 calls."""
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
    graph = govern(_react_graph([search], keep_last=6), Governor())
    with pytest.raises(LoopDetected) as info:
        graph.invoke({"messages": [HumanMessage("weather?")]}, {"recursion_limit": 200})
    assert info.value.rule == "same_result"
    assert len(done) == 12


def test_send_branches_each_finding_nothing_are_fan_out() -> None:
    """Twelve branches, each searching its own query in vain, side by side."""
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from test_langgraph_adapter import ScriptedChatModel, fan_out_graph

    class SearchingModel(ScriptedChatModel):
        def invoke(self, input: Any, *args: Any, **kwargs: Any) -> Any:
            call_id = f"call-{uuid.uuid4().hex[:8]}"
            call = {"id": call_id, "name": "search", "args": {"q": str(input)}}
            prompt = [
                HumanMessage(str(input)),
                AIMessage("", tool_calls=[call]),
                ToolMessage("no results", tool_call_id=call_id),
            ]
            return super().invoke(prompt, *args, **kwargs)

    graph = govern(fan_out_graph(SearchingModel(answer="Nothing found.")), Governor())
    items = [f"question {i}" for i in range(14)]
    out = graph.invoke({"items": items, "answers": []})
    assert graph.last_report is not None
    assert (len(out["answers"]), graph.last_report.stop_reason) == (14, None)


# -- item ids in results -----------------------------------------------------


def _verdicts(guard: LoopGuard, calls: list[tuple[str, Any, str]]) -> list[Any]:
    return [
        guard.on_tool_call(name, args, result, step=step)
        for step, (name, args, result) in enumerate(calls, 1)
    ]


@pytest.mark.parametrize(
    ("name", "args", "result"),
    [
        (
            "close_ticket",
            lambda i: {"ticket": 4500 + i},
            lambda i: f"Closed #{4500 + i}",
        ),
        (
            "refund",
            lambda i: {"order_id": str(1234500 + i)},
            lambda i: f"Refund issued for order {1234500 + i}",
        ),
        ("create_user", lambda i: {"name": f"u{i}"}, lambda i: f"id={uuid.uuid4()}"),
        (
            "process",
            lambda i: {"item": str(uuid.UUID(int=i))},
            lambda i: f"processed {uuid.UUID(int=i)}",
        ),
    ],
    ids=["ticket-counter", "order-number", "new-uuid", "uuid-echo"],
)
def test_results_naming_each_calls_item_are_progress(
    name: str, args: Any, result: Any
) -> None:
    """A new ticket, order or user each call is work, not the same result."""
    guard = LoopGuard(Loops())
    calls = [(name, args(i), result(i)) for i in range(40)]
    assert [v for v in _verdicts(guard, calls) if v is not None] == []


@pytest.mark.parametrize(
    "result",
    [
        lambda i: "order 1234567 not found",  # the same item every time
        lambda i: f"Error 503, request_id={uuid.uuid4()}",  # a request's id
        lambda i: f"no results as of {1735689600 + i}",  # a clock
        lambda i: f"attempt #{i}: no results",  # the attempt's number
    ],
    ids=["same-item", "request-id", "epoch", "attempt-counter"],
)
def test_ids_that_name_no_new_item_are_still_the_same_result(result: Any) -> None:
    """Masked tokens that number requests, attempts or moments stay masked."""
    guard = LoopGuard(Loops())
    calls = [
        ("lookup", {"q": "order 1234567", "attempt": i}, result(i)) for i in range(30)
    ]
    verdicts = _verdicts(guard, calls)
    first = next(i for i, v in enumerate(verdicts) if v is not None)
    assert (first + 1, verdicts[first].rule) == (12, "same_result")


def test_a_react_agent_closing_tickets_one_by_one_is_not_stopped() -> None:
    """Fifteen tickets, each answered 'Closed ticket #N', run to their end."""
    from langchain_core.messages import HumanMessage
    from langchain_core.tools import tool

    done: list[int] = []

    @tool
    def close_ticket(ticket: int) -> str:
        """Close a ticket."""
        done.append(ticket)
        return f"Closed ticket #{ticket}"

    plan = [("close_ticket", {"ticket": 4500 + i}) for i in range(15)]
    install_offline_provider(_scripted_tool_calls(plan, done), speed=0)
    graph = govern(_react_graph([close_ticket]), Governor())
    graph.invoke({"messages": [HumanMessage("close them")]}, {"recursion_limit": 100})
    assert graph.last_report is not None
    assert (len(done), graph.last_report.stop_reason) == (15, None)


def test_the_same_result_message_reads_well_for_one_argument() -> None:
    """One call made again and again: 'with the same arguments'."""
    loops = Loops(max_repeats=None, max_cycle_repeats=None, max_stale_steps=None)
    guard = LoopGuard(loops)
    verdicts = _verdicts(guard, [("ls", {"path": "."}, "a.py")] * 12)
    assert verdicts[-1] is not None
    assert "12 times in a row, with the same arguments" in verdicts[-1].message


# -- tools taking turns ------------------------------------------------------


def _search_then_read(i: int) -> tuple[str, Any, str]:
    if i % 2 == 0:
        return ("search", {"q": "weather paris", "ts": f"00:{i:02d}"}, "no results")
    return ("read_url", {"url": "https://w.example/paris", "attempt": i}, "404")


def test_two_tools_taking_turns_with_nothing_new_are_stopped() -> None:
    """search -> 'no results', read_url -> '404', again and again."""
    guard = LoopGuard(Loops())
    verdicts = _verdicts(guard, [_search_then_read(i) for i in range(60)])
    first = next(i for i, v in enumerate(verdicts) if v is not None)
    # Each tool came back the same 12 times, as one tool alone would have to.
    assert first + 1 == 24
    verdict = verdicts[first]
    assert (verdict.rule, verdict.setting) == ("same_result", "max_same_result_repeats")
    assert "a cycle of 2 tool calls" in verdict.message
    assert len(verdict.evidence) == 2


def test_two_tools_called_side_by_side_with_nothing_new_are_stopped() -> None:
    """Both tools in each answer: counted once per answer, stopped on the 12th."""
    guard = LoopGuard(Loops())
    flagged = []
    for answer in range(1, 30):
        for name, args, result in (_search_then_read(0), _search_then_read(1)):
            verdict = guard.on_tool_call(
                name, {**args, "n": answer}, result, step=answer, turn=answer
            )
            if verdict is not None:
                flagged.append(answer)
    assert flagged[0] == 12


def test_tools_taking_turns_with_a_new_result_are_not_stopped() -> None:
    """write_file 'saved', then tests whose result moves on: work goes on."""
    guard = LoopGuard(Loops())
    calls = []
    for i in range(40):
        calls.append(("write_file", {"path": f"f{i}.py"}, "saved"))
        calls.append(("run_tests", {}, f"{40 - i} failed"))
    assert [v for v in _verdicts(guard, calls) if v is not None] == []


# -- nodes ---------------------------------------------------------------------


class JobState(TypedDict):
    job_id: str
    status: str


def _polling_graph(polls: list[int], ready_after: int, model: Any = None) -> Any:
    """One node that checks a job and comes back to itself until it is done."""
    from langgraph.graph import END, START, StateGraph

    def poll(state: JobState) -> dict[str, str]:
        polls.append(1)
        if model is not None:
            model.invoke("Is the job done yet?")
        return {"status": "done" if len(polls) >= ready_after else "pending"}

    graph = StateGraph(JobState)
    graph.add_node("poll", poll)
    graph.add_edge(START, "poll")
    graph.add_conditional_edges(
        "poll", lambda s: END if s["status"] == "done" else "poll"
    )
    return graph.compile()


def test_a_node_polling_without_model_calls_is_not_stopped() -> None:
    """Ten free visits of one node with one state: no spend, no loop."""
    polls: list[int] = []
    graph = govern(_polling_graph(polls, ready_after=10), Governor())
    out = graph.invoke({"job_id": "j1", "status": "pending"}, {"recursion_limit": 100})
    assert (out["status"], len(polls)) == ("done", 10)
    assert graph.last_report is not None
    assert graph.last_report.stop_reason is None


def _paid_polls(loops: Loops) -> tuple[list[int], Any]:
    from test_langgraph_adapter import ScriptedChatModel

    polls: list[int] = []
    model = ScriptedChatModel(answer="Not yet.")
    graph = govern(
        _polling_graph(polls, ready_after=10, model=model),
        Governor(Policy(loops=loops)),
    )
    out = graph.invoke({"job_id": "j1", "status": "pending"}, {"recursion_limit": 100})
    return polls, out


def test_a_node_that_pays_a_model_call_each_visit_is_still_stopped() -> None:
    """The same state each visit, and a paid call in each: a loop, and the
    advice names the node to list in exempt_tools."""
    with pytest.raises(LoopDetected) as info:
        _paid_polls(Loops(max_identical_calls=None))
    assert info.value.rule == "repeat"
    assert "exempt_tools=('poll',)" in str(info.value)


def test_raising_max_repeats_alone_leaves_a_paid_poll_to_the_stale_rule() -> None:
    """The repeat message says so, and the stale rule then stops the poll."""
    with pytest.raises(LoopDetected) as info:
        _paid_polls(Loops(max_identical_calls=None))
    assert (
        "(exempt_tools=('poll',)). Raising Loops.max_repeats (now 2) alone is "
        "not enough: max_stale_steps also bounds a repeated visit."
    ) in str(info.value)
    with pytest.raises(LoopDetected) as info:
        _paid_polls(Loops(max_identical_calls=None, max_repeats=10))
    assert info.value.rule == "stale"


def test_a_node_listed_in_exempt_tools_is_not_judged() -> None:
    """exempt_tools takes node names: a paid poll may come back to its state."""
    polls, out = _paid_polls(Loops(exempt_tools=("poll",), max_identical_calls=None))
    assert (out["status"], len(polls)) == ("done", 10)


# -- answers that only call tools -------------------------------------------


def test_the_same_tool_call_answer_to_the_same_prompt_is_stopped() -> None:
    """same_call compares an answer's calls (names, arguments), not ids."""
    gov = Governor()
    with gov.task() as task:
        watch = loop_watch(task, gov.telemetry)
        for n in range(12):
            calls = [{"id": f"c{n}", "name": "lookup", "args": {"q": "x"}}]
            watch.after_call(tool_call_output(None, calls), n + 1, None, "prompt-1")
        assert watch.stopped is not None
    assert (watch.stopped.rule, watch.stopped.setting) == (
        "same_call",
        "max_identical_calls",
    )
    assert 'lookup({"q":"x"})' in str(watch.stopped)


def test_tool_call_answers_with_other_arguments_go_on() -> None:
    """The same prompt answered with new arguments each time is not alike."""
    gov = Governor()
    with gov.task() as task:
        watch = loop_watch(task, gov.telemetry)
        for n in range(30):
            calls = [{"id": "c", "name": "lookup", "args": {"q": f"x{n}"}}]
            watch.after_call(tool_call_output(None, calls), n + 1, None, "prompt-1")
        assert watch.stopped is None


def test_tool_call_answers_calling_an_exempt_tool_go_on() -> None:
    """A poll of a tool in exempt_tools may be asked for again and again."""
    gov = Governor(Policy(loops=Loops(exempt_tools=("job_status",))))
    with gov.task() as task:
        watch = loop_watch(task, gov.telemetry)
        for n in range(30):
            calls = [{"id": "p", "name": "job_status", "args": {"job": "7"}}]
            watch.after_call(tool_call_output(None, calls), n + 1, None, "prompt-1")
        assert watch.stopped is None


# -- what a repeated tool call's message offers ------------------------------


def _status_polls(loops: Loops, pending: int = 8) -> tuple[int, LoopDetected | None]:
    """An agent polling job_status, "pending" ``pending`` times, then done;
    returns the polls made and the loop that stopped it, if any."""
    polls = {"n": 0}

    def responder(model: str, messages: Any, tools: Any) -> Any:
        if polls["n"] > pending:
            return "The job is done and its result is 42."
        polls["n"] += 1
        call = {"name": "job_status", "arguments": {"job_id": "j-1"}}
        return OfflineAnswer(tool_calls=[call])

    install_offline_provider(responder, speed=0)
    gov = Governor(Policy(loops=loops))
    llm = GovernedLiteLLM(gov)
    model = offline_model("gpt-4o-mini")
    prompt: list[dict[str, Any]] = [{"role": "user", "content": "Wait for job j-1."}]
    try:
        with gov.task():
            for _ in range(pending + 3):
                message = (
                    llm.completion(model=model, messages=prompt).choices[0].message
                )
                if not message.tool_calls:
                    return polls["n"], None
                made = [c.model_dump() for c in message.tool_calls]
                status = "done" if polls["n"] > pending else "pending"
                prompt += [
                    {"role": "assistant", "content": None, "tool_calls": made},
                    *(
                        {"role": "tool", "tool_call_id": c["id"], "content": status}
                        for c in made
                    ),
                ]
    except LoopDetected as error:
        return polls["n"], error
    raise AssertionError("the agent never answered")


@pytest.mark.parametrize(
    ("raised", "rule"),
    [
        ({}, "repeat"),
        ({"max_repeats": 10}, "repeated_turns"),
        ({"max_repeats": 10, "max_repeated_turns": 10}, "stale"),
    ],
)
def test_each_rule_a_repeated_poll_meets_offers_exempt_tools(
    raised: dict[str, int], rule: str
) -> None:
    """Raising the setting that fired only lets the next rule stop the same
    poll: every message offers the tool for exempt_tools and says so."""
    _, error = _status_polls(Loops(**raised))
    assert error is not None
    assert error.rule == rule
    assert error.tools == ("job_status",)
    message = str(error)
    offer = "list the tool in Loops.exempt_tools (exempt_tools=('job_status',))"
    assert offer in message
    assert f"Raising Loops.{error.setting} (now {error.limit}) alone is not" in message
    assert "max_same_result_repeats also bound a repeated tool call" in message


def test_a_poll_listed_in_exempt_tools_runs_to_its_end() -> None:
    """The one setting the messages offer first lets the poll through."""
    polls, error = _status_polls(Loops(exempt_tools=("job_status",)))
    assert (polls, error) == (9, None)


def test_a_near_duplicate_stop_says_what_helps_identical_answers() -> None:
    """Different requests that each get the same answer read as a loop; the
    message offers the setting that helps (the similarity threshold cannot
    tell identical answers apart)."""
    from governor import Governor, LoopDetected, Policy
    from governor.adapters.litellm import GovernedLiteLLM

    answer = "I do not have enough information in the context to answer that."
    gov = Governor(Policy())
    llm = GovernedLiteLLM(gov)
    with pytest.raises(LoopDetected) as info, gov.task():
        for n in range(6):
            llm.completion(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"Question {n}?"}],
                mock_response=answer,
                max_tokens=30,
            )
    message = str(info.value)
    assert "raise Loops.max_near_duplicate_outputs (now 2) or set it to None" in message
    assert "only helps outputs that are alike but not the same" in message
