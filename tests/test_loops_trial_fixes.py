"""Loop guard fixes from a user trial: ceilings after an escalation, calls
queued for a fan-out slot, and the wording of ceiling and in-flight messages."""

from __future__ import annotations

import asyncio
import operator
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Annotated, Any, TypedDict

import pytest

from governor import Fanout, Governor, LoopDetected, Loops, Policy, govern
from governor.adapters.litellm import GovernedLiteLLM
from governor.loops import LoopGuard

LONG = (
    "I do not have enough information in the provided context to answer "
    "that question, sorry."
)


class Spy:
    """Sends each call on to LiteLLM's mock and records its model."""

    def __init__(self) -> None:
        self.models: list[str] = []
        self._lock = threading.Lock()

    def _seen(self, kwargs: dict[str, Any]) -> None:
        with self._lock:
            self.models.append(str(kwargs["model"]))

    def completion(self, **kwargs: Any) -> Any:
        import litellm

        self._seen(kwargs)
        return litellm.completion(**kwargs)

    async def acompletion(self, **kwargs: Any) -> Any:
        import litellm

        self._seen(kwargs)
        return await litellm.acompletion(**kwargs)


def _llm(gov: Governor, spy: Spy) -> GovernedLiteLLM:
    return GovernedLiteLLM(gov, completion=spy.completion, acompletion=spy.acompletion)


# -- 1. a ceiling still passed after its escalation stops the task -----------


def test_an_escalated_model_call_ceiling_stops_after_the_escalated_call() -> None:
    """max_model_calls=5 with action='escalate': call 6 escalates, call 7 goes
    to escalate_to with the hint, call 8 is refused (it was never stopped)."""
    spy = Spy()
    policy = Policy(
        loops=Loops(max_model_calls=5, action="escalate", escalate_to="gpt-4o")
    )
    gov = Governor(policy)
    llm = _llm(gov, spy)
    with gov.task() as task, pytest.raises(LoopDetected) as info:
        for i in range(50):
            llm.completion(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"What is {i} times {i + 3}?"}],
                mock_response=f"It is {i * (i + 3)}.",
                max_tokens=20,
            )
    assert spy.models == ["gpt-4o-mini"] * 6 + ["gpt-4o"]
    assert (info.value.rule, info.value.limit) == ("max_model_calls", 5)
    report = task.report()
    assert (report.calls, report.stop_reason) == (7, "loop_detected")


def test_an_escalated_step_ceiling_stops_at_the_next_step() -> None:
    """max_steps escalates once, then the next node run is stopped."""
    guard = LoopGuard(Loops(max_steps=3, action="escalate"))
    verdicts = [guard.check_ceilings(steps=n) for n in range(1, 7)]
    assert [v and (v.rule, v.action) for v in verdicts] == [
        None,
        None,
        None,
        ("max_steps", "escalate"),
        ("max_steps", "stop"),
        None,
    ]


def test_an_escalated_wall_time_ceiling_lets_one_call_go_then_stops() -> None:
    """Past max_wall_s: the next call is the escalated one, the one after stops."""
    guard = LoopGuard(Loops(max_wall_s=1, action="escalate"))
    timeline = [(1, 0.5), (2, 1.5), (3, 2.0), (4, 2.5)]
    verdicts = [guard.check_ceilings(model_calls=n, elapsed_s=t) for n, t in timeline]
    assert [v and (v.rule, v.action, v.message) for v in verdicts] == [
        None,
        ("max_wall_s", "escalate", "the task ran 1.50 s, over max_wall_s of 1 s"),
        None,
        ("max_wall_s", "stop", "the task ran 2.50 s, over max_wall_s of 1 s"),
    ]


def test_ceilings_passed_together_wait_for_the_escalated_call() -> None:
    """Two ceilings passed at one check give one escalation, not a stop of the
    escalated call by the second."""
    guard = LoopGuard(Loops(max_model_calls=2, max_wall_s=1, action="escalate"))
    verdicts = [
        guard.check_ceilings(model_calls=n, elapsed_s=n / 2) for n in range(1, 6)
    ]
    assert [v and (v.rule, v.action) for v in verdicts] == [
        None,
        None,
        ("max_model_calls", "escalate"),
        None,
        ("max_model_calls", "stop"),
    ]


class _Polls(TypedDict):
    n: Annotated[list[int], operator.add]


def test_an_escalated_step_ceiling_stops_a_governed_graph() -> None:
    """A node that loops to itself without a model call, max_steps=3 with
    action='escalate': stopped at the 5th node run, not at LangGraph's
    recursion limit."""
    from langgraph.graph import START, StateGraph

    ran: list[int] = []

    def poll(state: _Polls) -> dict[str, list[int]]:
        ran.append(len(ran) + 1)
        return {"n": [1]}

    builder = StateGraph(_Polls)
    builder.add_node("poll", poll)
    builder.add_edge(START, "poll")
    builder.add_edge("poll", "poll")
    agent = govern(
        builder.compile(), Policy(loops=Loops(max_steps=3, action="escalate"))
    )
    with pytest.raises(LoopDetected) as info:
        agent.invoke({"n": []}, {"recursion_limit": 100})
    assert (info.value.rule, ran) == ("max_steps", [1, 2, 3, 4])


def test_in_record_mode_a_ceiling_flags_once_and_stops_nothing() -> None:
    """As docs/loops.md says: record mode flags each ceiling once, no more."""
    spy = Spy()
    gov = Governor(Policy(loops=Loops(max_model_calls=2, action="record")))
    llm = _llm(gov, spy)
    with gov.task() as task:
        for i in range(6):
            llm.completion(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"Question {i}?"}],
                mock_response=f"Answer {i}.",
                max_tokens=20,
            )
    guard = task.extras["loop_watch"].guard
    assert [(v.rule, v.action) for v in guard.verdicts] == [
        ("max_model_calls", "record")
    ]
    assert (task.report().calls, task.report().stop_reason) == (6, None)


# -- 2. calls queued for a fan-out slot ---------------------------------------


def _ask(llm: GovernedLiteLLM, i: int) -> Any:
    return llm.acompletion(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": f"Question {i}?"}],
        mock_response=LONG,
        mock_delay=0.01,
        max_tokens=30,
    )


def test_gathered_calls_under_a_cap_of_one_are_fan_out() -> None:
    """Twenty gathered calls, one slot: they were started side by side, so
    their like answers are no loop, and the task's next call goes on."""
    gov = Governor(Policy(fanout=Fanout(max_inflight_calls=1)))
    llm = _llm(gov, Spy())

    async def main() -> Any:
        async with gov.atask() as task:
            replies = await asyncio.gather(*(_ask(llm, i) for i in range(20)))
            await _ask(llm, 99)
        return replies, task.report()

    replies, report = asyncio.run(main())
    assert [r.choices[0].message.content for r in replies] == [LONG] * 20
    assert (report.calls, report.peak_inflight, report.stop_reason) == (21, 1, None)


def test_threaded_calls_under_a_cap_of_one_are_fan_out() -> None:
    """Twenty items over eight bound threads, one slot: no LoopDetected."""
    gov = Governor(Policy(fanout=Fanout(max_inflight_calls=1)))
    llm = _llm(gov, Spy())

    def ask(i: int) -> str:
        reply = llm.completion(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"Question {i}?"}],
            mock_response=LONG,
            mock_delay=0.01,
            max_tokens=30,
        )
        return str(reply.choices[0].message.content)

    with gov.task() as task, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(task.bind(ask), range(20)))
    assert answers == [LONG] * 20
    assert (task.report().calls, task.report().stop_reason) == (20, None)


def test_calls_one_after_another_under_a_cap_are_still_judged() -> None:
    """The cap does not hide a sequential loop: the 5th like answer's next
    call is refused, as without a cap."""
    gov = Governor(Policy(fanout=Fanout(max_inflight_calls=1)))
    llm = _llm(gov, Spy())
    sent = 0
    with gov.task(), pytest.raises(LoopDetected) as info:
        for i in range(10):
            llm.completion(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"Question {i}?"}],
                mock_response=LONG,
                max_tokens=30,
            )
            sent += 1
    assert (info.value.rule, sent) == ("near_duplicate", 4)


def test_calls_queued_for_a_slot_are_refused_once_the_task_is_stopped() -> None:
    """One call holds the only slot, four wait for it, then a fifth call's
    prompt shows a loop: the four are refused when their turn comes, unsent."""
    spy = Spy()
    gov = Governor(Policy(fanout=Fanout(max_inflight_calls=1)))
    llm = _llm(gov, spy)
    looping = [{"role": "user", "content": "Deploy the app."}]
    for _ in range(4):
        looping += [
            {"role": "assistant", "content": "Retrying now."},
            {"role": "user", "content": "Try again."},
        ]

    async def call(content: str, delay: float) -> str:
        try:
            await llm.acompletion(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": content}],
                mock_response="Done.",
                mock_delay=delay,
                max_tokens=10,
            )
        except LoopDetected as exc:
            return exc.rule
        return "sent"

    async def loop_call() -> str:
        try:
            await llm.acompletion(
                model="gpt-4o-mini",
                messages=looping,
                mock_response="Retrying now.",
                max_tokens=10,
            )
        except LoopDetected as exc:
            return exc.rule
        return "sent"

    async def main() -> Any:
        async with gov.atask() as task:
            outcomes = await asyncio.gather(
                call("Hold the slot.", 0.1),
                *(call(f"Queued {i}.", 0.0) for i in range(4)),
                loop_call(),
            )
        return outcomes, task.report()

    outcomes, report = asyncio.run(main())
    assert outcomes == ["sent"] + ["repeated_turns"] * 5
    assert len(spy.models) == 1
    assert (report.calls, report.stop_reason) == (1, "loop_detected")


# -- 4. messages ---------------------------------------------------------------


def test_the_wall_time_verdict_reads_like_the_other_ceilings() -> None:
    """Not "wall s reached 1.01492": the seconds run and the setting."""
    verdict = LoopGuard(Loops(max_wall_s=1)).check_ceilings(elapsed_s=1.01492)
    assert verdict is not None
    assert verdict.message == "the task ran 1.01 s, over max_wall_s of 1 s"


def test_a_stop_with_calls_in_flight_says_so() -> None:
    """Eight gathered calls under max_model_calls=5: the sixth is stopped
    while five run, and the error says their cost is still to come."""
    gov = Governor(Policy(loops=Loops(max_model_calls=5)))
    llm = _llm(gov, Spy())

    async def main() -> Any:
        async with gov.atask() as task:
            results = await asyncio.gather(
                *(
                    llm.acompletion(
                        model="gpt-4o-mini",
                        messages=[{"role": "user", "content": f"Item {i}."}],
                        mock_response=f"Done with item {i}.",
                        mock_delay=0.05,
                        max_tokens=10,
                    )
                    for i in range(8)
                ),
                return_exceptions=True,
            )
        return results, task.report()

    results, report = asyncio.run(main())
    errors = [r for r in results if isinstance(r, LoopDetected)]
    assert len(errors) == 3
    error = errors[0]
    assert (error.calls_in_flight, error.spent_usd, error.spent_tokens) == (
        5,
        Decimal(0),
        0,
    )
    assert (
        "The task was stopped with $0 (0 tokens) settled so far; 5 of its calls "
        "were still in flight, whose cost comes on top (the task's report counts "
        "it once they settle)."
    ) in str(error)
    assert report.calls == 5
    assert report.cost_usd > 0


def test_a_stop_with_no_call_in_flight_keeps_its_wording() -> None:
    error = LoopDetected(
        rule="max_model_calls",
        detail="model calls reached 3, over the ceiling of 2",
        setting="max_model_calls",
        limit=2,
        spent_usd=Decimal("0.25"),
        spent_tokens=40,
    )
    assert error.calls_in_flight == 0
    assert "The task was stopped after spending $0.25 (40 tokens)." in str(error)


# -- 3d. ceilings are per task --------------------------------------------------


def test_a_parents_ceilings_do_not_count_its_sub_tasks_calls() -> None:
    """As docs/loops.md says: each sub-task has its own guard and ceilings."""
    spy = Spy()
    gov = Governor(Policy(loops=Loops(max_model_calls=5)))
    llm = _llm(gov, spy)
    with gov.task() as parent:
        for j in range(6):
            with gov.task():
                for i in range(3):
                    llm.completion(
                        model="gpt-4o-mini",
                        messages=[{"role": "user", "content": f"Sub {j}, ask {i}."}],
                        mock_response=f"Answer {j}.{i}.",
                        max_tokens=10,
                    )
    assert (len(spy.models), parent.report().calls, parent.stop_reason) == (
        18,
        0,
        None,
    )
