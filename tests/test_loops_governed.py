"""The loop guard on the call path: graphs and LiteLLM calls that repeat."""

from __future__ import annotations

import sys
from typing import Any

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
