"""Loop evidence quotes outputs and tool calls: telemetry gets it only on opt-in.

The GenAI semantic conventions keep prompt and answer text out of spans
unless OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true. The loop
event and a LoopDetected recorded on a graph step's span show the evidence
by digests instead; the error raised to the caller keeps its text.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from test_loops_short import _self_loop_graph

from conftest import SpanCapture
from governor import Budget, Governor, LoopDetected, Loops, Policy, govern
from governor.adapters.litellm import GovernedLiteLLM
from governor.telemetry._content import ENV_CAPTURE_CONTENT, content_digest
from governor.testing import install_offline_provider

SECRET = "SSN 123-45-6789 of patient Alice"
ANSWER = f"I cannot find {SECRET} here, retrying the lookup with the same parameters"


@pytest.fixture(autouse=True)
def no_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_CAPTURE_CONTENT, raising=False)


def looping_task(capture: SpanCapture) -> LoopDetected:
    """A task whose model gives the same answer each time, until stopped."""
    install_offline_provider(lambda model, messages, tools: ANSWER, speed=0)
    gov = Governor(
        Policy(budgets=[Budget(max_usd="1")], loops=Loops()),
        tracer_provider=capture.provider,
    )
    llm = GovernedLiteLLM(gov)
    messages = [{"role": "user", "content": f"look up {SECRET}"}]
    with pytest.raises(LoopDetected) as info, gov.task("loopy"):
        for _ in range(30):
            reply = llm.completion(
                model="offline/gpt-4o-mini", messages=messages, max_tokens=60
            )
            text = reply.choices[0].message.content
            messages = [*messages, {"role": "assistant", "content": text}]
    return info.value


def loop_event(capture: SpanCapture) -> dict[str, Any]:
    (event,) = [e for e in capture.task().events if e.name == "governor.loop_detected"]
    return dict(event.attributes or {})


def telemetry_text(spans: list[ReadableSpan]) -> str:
    """Every attribute of every span and event, as one string."""
    return json.dumps(
        [
            [dict(s.attributes or {}), [dict(e.attributes or {}) for e in s.events]]
            for s in spans
        ],
        default=str,
    )


def test_loop_event_shows_evidence_by_digest_only(capture: SpanCapture) -> None:
    """No answer text in any span; the event keeps rule, action, steps, digests."""
    error = looping_task(capture)
    assert SECRET in error.evidence[0]  # the caller still reads the evidence
    assert SECRET not in telemetry_text(capture.spans)
    event = loop_event(capture)
    assert "evidence" not in event
    assert (event["rule"], event["action"]) == (error.rule, "stop")
    assert event["steps"] == ",".join(str(s) for s in error.steps)
    assert event["evidence_count"] == len(error.evidence)
    expected = tuple(content_digest(item) for item in error.evidence)
    assert event["evidence_digests"] == expected


def test_loop_event_carries_evidence_on_opt_in(
    capture: SpanCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true (any case) adds it."""
    monkeypatch.setenv(ENV_CAPTURE_CONTENT, "True")
    error = looping_task(capture)
    event = loop_event(capture)
    assert event["evidence"] == "; ".join(error.evidence)
    assert SECRET in event["evidence"]
    assert len(event["evidence_digests"]) == event["evidence_count"]


def run_self_loop(capture: SpanCapture) -> tuple[LoopDetected, ReadableSpan]:
    """A graph node fed its own answer until stopped; its step span's error."""
    from langchain_core.messages import HumanMessage

    answer = f"Checking {SECRET} again."
    install_offline_provider(lambda model, messages, tools: answer, speed=0)
    graph = govern(_self_loop_graph(), Governor(tracer_provider=capture.provider))
    with pytest.raises(LoopDetected) as info:
        graph.invoke(
            {"messages": [HumanMessage("Find the record.")]}, {"recursion_limit": 50}
        )
    failed = [
        s
        for s in capture.named("governor.node ")
        if any(e.name == "exception" for e in s.events)
    ]
    return info.value, failed[-1]


def test_step_span_records_loop_detected_without_its_evidence(
    capture: SpanCapture,
) -> None:
    """The exception event on the step span names the rule and digests."""
    error, span = run_self_loop(capture)
    assert SECRET in str(error)
    assert SECRET not in telemetry_text(capture.spans)
    (event,) = [e for e in span.events if e.name == "exception"]
    attributes = dict(event.attributes or {})
    assert attributes["exception.type"] == "governor.loops._errors.LoopDetected"
    message = str(attributes["exception.message"])
    assert repr(error.rule) in message
    assert content_digest(error.evidence[0]) in message
    stacktrace = str(attributes["exception.stacktrace"])
    assert stacktrace.startswith("Traceback (most recent call last):")
    assert stacktrace.rstrip().endswith(message)


def test_step_span_records_the_whole_error_on_opt_in(
    capture: SpanCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With content capture on, the exception event is the SDK's own."""
    monkeypatch.setenv(ENV_CAPTURE_CONTENT, "true")
    error, span = run_self_loop(capture)
    (event,) = [e for e in span.events if e.name == "exception"]
    assert (event.attributes or {})["exception.message"] == str(error)
