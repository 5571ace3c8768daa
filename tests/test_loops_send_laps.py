"""The stale rule on graph laps that send many branches again.

Under ``govern()`` every Send branch's visit is judged before its node runs,
with its own input state. The branches of one node in one step are one
observation for the stale rule, so a lap that sends the same inputs again
counts one stale step however wide it is: a map that retries its failed
items, or a poller whose jobs finish one by one, goes on; a fan-out that
brings nothing new is stopped as a one-branch loop would be.
"""

from __future__ import annotations

import operator
import threading
import time
from collections.abc import Callable
from typing import Annotated, Any, TypedDict

import pytest

from governor import Governor, LoopDetected, govern

DOCS = 20


def _model(reply: Callable[[str], str]) -> Any:
    """A chat model answering each prompt with ``reply(prompt)``, a little
    slowly, so parallel branches' calls overlap."""
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, ChatResult

    class ReplyingModel(BaseChatModel):
        @property
        def _llm_type(self) -> str:
            return "replying"

        def _get_ls_params(self, stop: Any = None, **kwargs: Any) -> Any:
            return {"ls_provider": "openai", "ls_model_name": "gpt-4o-mini"}

        def _generate(
            self, messages: list[Any], stop: Any = None, **kwargs: Any
        ) -> ChatResult:
            time.sleep(0.005)
            usage = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}
            text = reply(str(messages[-1].content))
            message = AIMessage(content=text, usage_metadata=usage)
            return ChatResult(generations=[ChatGeneration(message=message)])

    return ReplyingModel()


class Lap(TypedDict):
    lap: int
    todo: list[int]
    results: Annotated[list[tuple[int, str]], operator.add]


def _lap_graph(model: Any, done: Callable[[str], bool], every: bool = False) -> Any:
    """plan -> Send(work, item) for each item to do -> collect -> plan ...:
    ``plan`` counts the laps; ``collect`` keeps the items whose latest answer
    is not done, or with ``every`` all items until every one is done."""
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Send

    def work(state: dict[str, Any]) -> dict[str, Any]:
        reply = model.invoke(f"Work on item {state['item']}")
        return {"results": [(state["item"], str(reply.content))]}

    def collect(state: Lap) -> dict[str, Any]:
        latest = dict(state["results"])
        left = [item for item in state["todo"] if not done(latest[item])]
        return {"todo": state["todo"] if every and left else left}

    builder = StateGraph(Lap)
    builder.add_node("plan", lambda state: {"lap": state["lap"] + 1})
    builder.add_node("work", work)
    builder.add_node("collect", collect)
    builder.add_edge(START, "plan")
    builder.add_conditional_edges(
        "plan", lambda state: [Send("work", {"item": i}) for i in state["todo"]]
    )
    builder.add_edge("work", "collect")
    builder.add_conditional_edges(
        "collect", lambda state: "plan" if state["todo"] else END, ["plan", END]
    )
    return builder.compile()


def test_a_retry_lap_of_twelve_failed_branches_completes() -> None:
    """A map over 20 documents where 12 fail once: the second lap sends
    those 12 again with the same inputs, and they now succeed."""
    asked: dict[str, int] = {}
    lock = threading.Lock()

    def reply(prompt: str) -> str:
        item = int(prompt.split()[-1])
        with lock:
            asked[prompt] = asked.get(prompt, 0) + 1
            first = asked[prompt] == 1
        if item < 12 and first:
            return "ERROR upstream timeout"
        return f"Summary of document {item}: it covers topic {item * 7} in depth."

    graph = govern(
        _lap_graph(_model(reply), lambda said: not said.startswith("ERROR")),
        Governor(),
    )
    out = graph.invoke({"lap": 0, "todo": list(range(DOCS)), "results": []})
    assert (out["lap"], out["todo"]) == (2, [])
    report = graph.last_report
    assert report is not None
    assert (report.calls, report.stop_reason) == (DOCS + 12, None)


def test_polling_eight_jobs_while_the_last_one_progresses_completes() -> None:
    """Seven jobs already finished, the eighth 10% further on each lap: each
    lap sends the same eight questions, and one answer is new every time."""
    progress = [0]
    last = 7

    def reply(prompt: str) -> str:
        if int(prompt.split()[-1]) != last:
            return "finished"
        progress[0] += 10
        return "finished" if progress[0] >= 100 else f"running, {progress[0]}% done"

    graph = govern(
        _lap_graph(_model(reply), lambda said: said == "finished", every=True),
        Governor(),
    )
    out = graph.invoke(
        {"lap": 0, "todo": list(range(8)), "results": []}, {"recursion_limit": 200}
    )
    assert (out["lap"], out["todo"]) == (10, [])
    report = graph.last_report
    assert report is not None
    assert report.stop_reason is None


class Poll(TypedDict):
    lap: int
    answers: Annotated[list[str], operator.add]


def test_a_stuck_eight_wide_polling_loop_is_stopped_on_its_12th_lap() -> None:
    """Eight branches per lap asking whether their job is finished, each
    answered "Not ready yet." every time: stopped on lap 12, as one node
    asking the eight questions in turn would be, not on lap 2."""
    from langgraph.graph import START, StateGraph
    from langgraph.types import Send

    model = _model(lambda prompt: "Not ready yet.")

    def check(state: dict[str, Any]) -> dict[str, Any]:
        reply = model.invoke(f"Is job {state['job']} finished?")
        return {"answers": [str(reply.content)]}

    builder = StateGraph(Poll)
    builder.add_node("plan", lambda state: {"lap": state["lap"] + 1})
    builder.add_node("check", check)
    builder.add_edge(START, "plan")
    builder.add_conditional_edges(
        "plan", lambda state: [Send("check", {"job": j}) for j in range(8)]
    )
    builder.add_edge("check", "plan")
    laps: list[int] = []
    graph = govern(builder.compile(), Governor())
    with pytest.raises(LoopDetected) as info:
        for chunk in graph.stream({"lap": 0, "answers": []}, {"recursion_limit": 500}):
            if "plan" in chunk:
                laps.append(chunk["plan"]["lap"])
    assert (info.value.rule, laps[-1]) == ("same_call", 12)


class Fixed(TypedDict):
    jobs: list[int]
    answers: Annotated[dict[int, str], lambda old, new: {**old, **new}]


@pytest.mark.parametrize("width", [1, 8])
def test_a_stuck_fan_out_is_stopped_on_the_lap_one_branch_would_be(
    width: int,
) -> None:
    """plan -> Send(check, job) per job -> collect -> plan ..., the state the
    same each lap from the second on: stopped by a repetition rule when
    the fourth lap starts, whether one branch or eight are sent."""
    from langgraph.graph import START, StateGraph
    from langgraph.types import Send

    model = _model(lambda prompt: "Not ready yet.")
    laps = [0]

    def plan(state: Fixed) -> dict[str, Any]:
        laps[0] += 1
        return {}

    def check(state: dict[str, Any]) -> dict[str, Any]:
        reply = model.invoke(f"Is job {state['job']} finished?")
        return {"answers": {state["job"]: str(reply.content)}}

    builder = StateGraph(Fixed)
    builder.add_node("plan", plan)
    builder.add_node("check", check)
    builder.add_node("collect", lambda state: {})
    builder.add_edge(START, "plan")
    builder.add_conditional_edges(
        "plan", lambda state: [Send("check", {"job": j}) for j in state["jobs"]]
    )
    builder.add_edge("check", "collect")
    builder.add_edge("collect", "plan")
    graph = govern(builder.compile(), Governor())
    with pytest.raises(LoopDetected) as info:
        graph.invoke(
            {"jobs": list(range(width)), "answers": {}}, {"recursion_limit": 500}
        )
    assert info.value.rule in ("cycle", "stale")
    assert laps[0] == 3  # the fourth lap's plan is stopped before it runs
    report = graph.last_report
    assert report is not None
    assert report.calls == 3 * width


def test_the_guard_counts_a_group_of_visits_as_one_for_the_stale_rule() -> None:
    """Visits of one group each seen before count one stale step; one new
    visit in a group ends the run, as a new single visit does."""
    from governor.loops import LoopGuard
    from governor.policies import Loops

    guard = LoopGuard(Loops(max_repeats=None, max_cycle_repeats=None))
    for item in range(8):
        assert guard.on_node("work", f"item {item}", step=1, group=1) is None
    for lap in range(2, 6):  # four stale laps: one stale step each
        for item in range(8):
            assert guard.on_node("work", f"item {item}", step=lap, group=lap) is None
    assert guard.on_node("work", "item 0", step=6, group=6) is None  # the fifth
    assert guard.on_node("work", "item 99", step=6, group=6) is None  # new
    for lap in range(7, 12):
        for item in range(8):
            assert guard.on_node("work", f"item {item}", step=lap, group=lap) is None
    verdict = guard.on_node("work", "item 3", step=12, group=12)
    assert verdict is not None
    assert (verdict.rule, verdict.repeats) == ("stale", 6)
    assert (verdict.steps[0], verdict.steps[-1]) == (7, 12)
