"""The end of a LiteLLM stream: the usage that comes after the finish reason,
and a 200 answer with no stream in it. Real LiteLLM calls against servers on
127.0.0.1.

A reader that stops at the chunk carrying the finish reason and closes the
stream has the whole answer; the provider's usage chunk comes right after
it. Closing reads on, briefly, for that usage, so the call is settled as if
read out. A 200 whose body holds no stream event (a proxy's HTML page) is an
answer LiteLLM could not read: it raises, and the call is charged its hold.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import litellm
import pytest

from conftest import SpanCapture
from governor import Cache, Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM
from governor.telemetry import attributes as attr
from governor.testing import StubBehaviour, StubServer

MODEL = "openai/gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Which planet is known as the red planet?"}]
ANSWER = "Mars is known as the red planet."
IN_PRICE, OUT_PRICE = Decimal("0.15e-6"), Decimal("0.6e-6")
MAX_TOKENS = 50
REPORTED = StubBehaviour(answer=ANSWER, prompt_tokens=31, completion_tokens=9)
MODES = [
    pytest.param(False, "close", id="sync-close"),
    pytest.param(False, "with", id="sync-with"),
    pytest.param(True, "close", id="async-aclose"),
    pytest.param(True, "with", id="async-with"),
]


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[StubServer]:
    monkeypatch.setattr(litellm, "suppress_debug_info", True)
    with StubServer(default=REPORTED) as server:
        yield server


def request(base_url: str) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": MESSAGES,
        "api_base": base_url + "/v1",
        "api_key": "sk-test",
        "max_tokens": MAX_TOKENS,
        "stream": True,
    }


def finished(chunk: Any) -> bool:
    return bool(chunk.choices[0].finish_reason)


def read_to_finish(llm: GovernedLiteLLM, kwargs: dict[str, Any], how: str) -> Any:
    """Read until the finish reason, then close (or leave the with block).

    Returns what the caller got: the chunks up to the finish reason and,
    after the close, anything more the stream still gave.
    """
    stream = llm.completion(**kwargs)
    got: list[Any] = []
    if how == "with":
        with stream:
            for chunk in stream:
                got.append(chunk)
                if finished(chunk):
                    break
    else:
        for chunk in stream:
            got.append(chunk)
            if finished(chunk):
                break
        stream.close()
    return got, list(stream)


async def aread_to_finish(
    llm: GovernedLiteLLM, kwargs: dict[str, Any], how: str
) -> Any:
    """Async form of :func:`read_to_finish`."""
    stream = await llm.acompletion(**kwargs)
    got: list[Any] = []
    if how == "with":
        async with stream:
            async for chunk in stream:
                got.append(chunk)
                if finished(chunk):
                    break
    else:
        async for chunk in stream:
            got.append(chunk)
            if finished(chunk):
                break
        await stream.aclose()
    return got, [chunk async for chunk in stream]


def stop_at_finish(
    llm: GovernedLiteLLM, kwargs: dict[str, Any], how: str, use_async: bool
) -> tuple[list[Any], list[Any]]:
    if use_async:
        got, after = asyncio.run(aread_to_finish(llm, kwargs, how))
    else:
        got, after = read_to_finish(llm, kwargs, how)
    return list(got), list(after)


@pytest.mark.parametrize(("use_async", "how"), MODES)
def test_a_stream_closed_at_its_finish_reason_is_settled_from_its_usage(
    stub: StubServer, capture: SpanCapture, use_async: bool, how: str
) -> None:
    """The provider's usage is read after the close, not handed on; the
    answer is whole, so it is cached as one read out would be."""
    gov = Governor(
        Policy(cache=Cache(embedder="hashing")), tracer_provider=capture.provider
    )
    llm = GovernedLiteLLM(gov)
    with gov.task() as first:
        got, after = stop_at_finish(llm, request(stub.base_url), how, use_async)
    assert "".join(c.choices[0].delta.content or "" for c in got) == ANSWER
    assert after == []
    report = first.report()
    assert (report.input_tokens, report.output_tokens) == (31, 9)
    assert report.cost_usd == 31 * IN_PRICE + 9 * OUT_PRICE
    (span,) = capture.calls()
    assert span.attributes[attr.CALL_COST_ESTIMATED] is False
    with gov.task() as second:
        stop_at_finish(llm, request(stub.base_url), how, use_async)
    assert second.report().cache_hits == 1
    assert len(stub.requests) == 1


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_usage_litellm_counted_after_the_finish_reason_stays_estimated(
    stub: StubServer, capture: SpanCapture, use_async: bool
) -> None:
    """A provider that sends no usage: the usage chunk read after the close
    is LiteLLM's own count, settled as a local count, as on a full read."""
    stub.set_behaviour("gpt-4o-mini", StubBehaviour(answer=ANSWER, usage={}))
    gov = Governor(tracer_provider=capture.provider)
    llm = GovernedLiteLLM(gov)
    with gov.task() as task:
        stop_at_finish(llm, request(stub.base_url), "close", use_async)
    prompt = int(litellm.token_counter(model=MODEL, messages=MESSAGES))
    output = int(litellm.token_counter(model=MODEL, text=ANSWER))
    report = task.report()
    assert (report.input_tokens, report.output_tokens) == (prompt, output)
    (span,) = capture.calls()
    assert span.attributes[attr.CALL_COST_ESTIMATED] is True


# -- raw servers: a stream that stalls, answers that are not streams ---------

# path -> (content type, body) of a 200 answer that is not a stream
NOT_STREAMS = {
    "html": ("text/html", b"<html><body>Bad gateway, try later</body></html>"),
    "json": ("application/json", b'{"status": "ok"}'),
    "empty": ("text/event-stream", b""),
}


def _event(delta: dict[str, Any], finish: str | None) -> bytes:
    chunk = {
        "id": "chatcmpl-tail",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(chunk)}\n\n".encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.paths.append(self.path)
        route = self.path.split("/")[1]
        if route == "stall":
            self._stall()
            return
        kind, body = NOT_STREAMS[route]
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _stall(self) -> None:
        """The answer and its finish reason, then nothing until released."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self.wfile.write(_event({"role": "assistant", "content": ANSWER}, None))
        self.wfile.write(_event({}, "stop"))
        self.wfile.flush()
        self.server.release.wait(10)
        usage = {"prompt_tokens": 31, "completion_tokens": 9, "total_tokens": 40}
        tail = {"id": "chatcmpl-tail", "choices": [], "usage": usage}
        self.wfile.write(f"data: {json.dumps(tail)}\n\ndata: [DONE]\n\n".encode())

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    paths: list[str]
    release: threading.Event

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up on a stalled stream


@pytest.fixture
def raw(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    monkeypatch.setattr(litellm, "suppress_debug_info", True)
    server = _Server(("127.0.0.1", 0), _Handler)
    server.paths = []
    server.release = threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


def raw_url(server: _Server, route: str) -> str:
    host, port = server.server_address[:2]
    return f"http://{host!s}:{port}/{route}"


@pytest.mark.parametrize(("use_async", "how"), MODES)
def test_a_provider_silent_after_the_finish_reason_is_not_waited_for(
    raw: _Server, capture: SpanCapture, use_async: bool, how: str
) -> None:
    """The read after the close is bounded: with no usage in time, the call
    is settled as read, from a local count, and the close returns."""
    gov = Governor(tracer_provider=capture.provider)
    llm = GovernedLiteLLM(gov)
    with gov.task() as task:
        started = time.monotonic()
        got, after = stop_at_finish(llm, request(raw_url(raw, "stall")), how, use_async)
        took = time.monotonic() - started
    assert took < 3
    assert finished(got[-1])
    assert after == []
    output = int(litellm.token_counter(model=MODEL, text=ANSWER))
    assert task.report().output_tokens == output
    (span,) = capture.calls()
    assert span.attributes[attr.CALL_COST_ESTIMATED] is True


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("route", sorted(NOT_STREAMS))
def test_a_200_stream_answer_holding_no_stream_is_charged_its_hold(
    raw: _Server, use_async: bool, route: str
) -> None:
    """LiteLLM would end the stream quietly with a made-up "stop" chunk; it
    raises its error for an unreadable answer instead, and the call costs
    its hold, as the same body does when not streamed."""
    gov = Governor()
    llm = GovernedLiteLLM(gov)
    kwargs = request(raw_url(raw, route))
    got: list[Any] = []

    async def aread() -> None:
        async for chunk in await llm.acompletion(**kwargs):
            got.append(chunk)

    with gov.task() as task, pytest.raises(litellm.InternalServerError) as raised:
        if use_async:
            asyncio.run(aread())
        else:
            got.extend(llm.completion(**kwargs))
    assert got == []
    assert NOT_STREAMS[route][0] in str(raised.value)
    assert len(raw.paths) == 1
    report = task.report()
    assert report.output_tokens == MAX_TOKENS
    assert report.input_tokens > 0
    assert report.cost_usd == report.input_tokens * IN_PRICE + MAX_TOKENS * OUT_PRICE
