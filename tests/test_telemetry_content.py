"""Loop evidence and error messages quote prompts: telemetry gets them on opt-in.

The GenAI semantic conventions keep prompt and answer text out of spans
unless OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true. The loop
event and a LoopDetected recorded on a graph step's span show the evidence
by digests instead; a provider's error, whose message may quote the request,
is recorded by its class, status and provider. The errors raised to the
caller keep their text.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import litellm
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from test_loops_short import _self_loop_graph

from conftest import SpanCapture
from governor import Budget, Governor, LoopDetected, Loops, Policy, govern
from governor.adapters.litellm import GovernedLiteLLM
from governor.policies import Price, Pricing
from governor.telemetry import Telemetry
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


class _EchoingServer(ThreadingHTTPServer):
    daemon_threads = True
    requests: list[str]


class _Echo(BaseHTTPRequestHandler):
    """An OpenAI-compatible server whose 400 quotes the request, as some do."""

    protocol_version = "HTTP/1.1"
    server: _EchoingServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests.append(body.decode())
        error = {"message": "Invalid request: " + body.decode()[:400]}
        answer = json.dumps({"error": {**error, "type": "invalid_request_error"}})
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer.encode())

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def echoing(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The API base of a local server that answers every request with a 400
    quoting it; nothing leaves the machine."""
    monkeypatch.setattr(litellm, "suppress_debug_info", True)
    server = _EchoingServer(("127.0.0.1", 0), _Echo)
    server.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    yield f"http://{host!s}:{port}"
    server.shutdown()
    server.server_close()


def exported_text(spans: list[ReadableSpan]) -> str:
    """Everything a span exporter sends of each span, as one string."""
    return json.dumps(
        [
            [
                s.name,
                s.status.description,
                dict(s.attributes or {}),
                [[e.name, dict(e.attributes or {})] for e in s.events],
            ]
            for s in spans
        ],
        default=str,
    )


def exception_event(spans: list[ReadableSpan]) -> dict[str, Any]:
    """The attributes of the one exception event among the spans."""
    (event,) = [e for s in spans for e in s.events if e.name == "exception"]
    return dict(event.attributes or {})


def call_echoed(capture: SpanCapture, api_base: str) -> litellm.BadRequestError:
    """A governed call whose provider answers 400, quoting the prompt."""
    gov = Governor(tracer_provider=capture.provider)
    with pytest.raises(litellm.BadRequestError) as info, gov.task("echoed"):
        GovernedLiteLLM(gov).completion(
            model="openai/gpt-4o-mini",
            messages=[{"role": "user", "content": f"look up {SECRET}"}],
            api_base=f"{api_base}/v1",
            api_key="sk-test",
            max_tokens=20,
        )
    return info.value


def test_a_provider_error_quoting_the_prompt_stays_off_the_spans(
    capture: SpanCapture, echoing: str
) -> None:
    """A 400 that quotes the request is recorded by class, status and provider:
    neither its message nor its stack trace (nor any chained error's) is sent."""
    error = call_echoed(capture, echoing)
    assert SECRET in str(error)  # the caller still reads the whole error
    assert SECRET not in exported_text(capture.spans)
    event = exception_event(capture.calls())
    assert event["exception.type"] == "litellm.exceptions.BadRequestError"
    message = str(event["exception.message"])
    assert "status_code=400" in message
    assert "llm_provider=openai" in message
    assert ENV_CAPTURE_CONTENT in message
    stacktrace = str(event["exception.stacktrace"])
    assert stacktrace.startswith("Traceback (most recent call last):")
    assert stacktrace.rstrip().endswith(f"BadRequestError: {message}")
    assert "direct cause" in stacktrace or "During handling" in stacktrace
    (call,) = capture.calls()
    assert call.status.description == "BadRequestError"


def test_tool_arguments_litellm_cannot_parse_stay_off_the_spans(
    capture: SpanCapture, echoing: str
) -> None:
    """LiteLLM quotes tool-call arguments that are not JSON in its error; the
    request is never sent, and the arguments reach no span."""
    model = "anthropic/claude-3-5-haiku-20241022"
    price = Price(input_usd_per_mtok=1, output_usd_per_mtok=5)
    gov = Governor(
        Policy(pricing=Pricing(overrides={model: price})),
        tracer_provider=capture.provider,
    )
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "lookup", "arguments": "{" + SECRET},
    }
    messages = [
        {"role": "user", "content": "Find the record."},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "none"},
    ]
    with pytest.raises(litellm.BadRequestError) as info, gov.task("tool-args"):
        GovernedLiteLLM(gov).completion(
            model=model,
            messages=messages,
            api_base=echoing,
            api_key="sk-test",
            max_tokens=20,
        )
    assert SECRET in str(info.value)
    assert SECRET not in exported_text(capture.spans)
    event = exception_event(capture.calls())
    assert "llm_provider=anthropic" in str(event["exception.message"])


def test_a_provider_error_is_recorded_whole_on_opt_in(
    capture: SpanCapture, echoing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With content capture on, the exception event is the SDK's own."""
    monkeypatch.setenv(ENV_CAPTURE_CONTENT, "true")
    error = call_echoed(capture, echoing)
    event = exception_event(capture.calls())
    assert event["exception.message"] == str(error)
    assert SECRET in str(event["exception.stacktrace"])


class _Quoting(Exception):
    """An error that carries LiteLLM's content-free fields."""

    status_code = 422
    llm_provider = "acme"


def _raise_chained() -> BaseException:
    try:
        try:
            json.loads("{" + SECRET)
        except ValueError as exc:
            raise _Quoting(f"could not parse {SECRET}") from exc
    except _Quoting as exc:
        exc.add_note(f"while sending {SECRET}")
        try:
            raise RuntimeError(f"retry failed for {SECRET}")
        except RuntimeError as last:
            return last
    raise AssertionError("unreachable")


def test_chained_errors_and_notes_are_recorded_without_their_text(
    capture: SpanCapture,
) -> None:
    """Each error of a chain keeps its frames and class; no message, no note."""
    error = _raise_chained()
    telemetry = Telemetry(capture.provider)
    span = telemetry.start_span("chat m", None, {})
    telemetry.end_span(span, {}, error)
    assert SECRET not in exported_text(capture.spans)
    stacktrace = str(exception_event(capture.spans)["exception.stacktrace"])
    lines = [line for line in stacktrace.splitlines() if not line.startswith(" ")]
    assert lines[-1].startswith("RuntimeError: message not recorded")
    assert any(
        line.startswith("json.decoder.JSONDecodeError: message not recorded")
        for line in lines
    )
    quoting = f"{__name__}._Quoting: message not recorded"
    assert f"{quoting}: it may quote prompt or tool text " in stacktrace
    assert "(status_code=422, llm_provider=acme)" in stacktrace
    assert stacktrace.count("Traceback (most recent call last):") == 3
    assert "_raise_chained" in stacktrace  # the frames are kept, by file and line
    assert "raise RuntimeError" not in stacktrace  # but not their source lines
