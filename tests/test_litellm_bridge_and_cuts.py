"""LiteLLM's Responses bridge, answers cut off, and the ungoverned-call rule.

* ``litellm.responses(stream=True)`` for a call LiteLLM sends as a chat
  completion takes back only LiteLLM's own stream type: the governed stream
  is handed to it as one, and the call is charged what the provider reported.
* A governor refusal inside ``responses()`` is raised as itself, not as the
  ``APIConnectionError`` LiteLLM's bridge wraps it in.
* A request answered 200 whose body was cut off (the connection dropped) is
  charged its hold, like a timeout; one that never connected stays free, and
  so does an error answer.
* An ungoverned function bound before ``instrument()`` is warned of, and the
  "not governed" warning is given once per function per process.

Real LiteLLM calls go to a small server on 127.0.0.1 started here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
import threading
import types
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import litellm
import openai
import pytest

from governor import Budget, BudgetExceeded, Governor, Policy
from governor.adapters.litellm import instrument
from governor.testing import install_offline_provider

LOGGER = "governor.adapters.litellm"
MODEL = "openai/gpt-4o-mini"
IN_PRICE, OUT_PRICE = Decimal("0.15e-6"), Decimal("0.6e-6")
PROMPT, COMPLETION = 11, 7
REPORTED = PROMPT * IN_PRICE + COMPLETION * OUT_PRICE
HAIKU = "anthropic/claude-haiku-4-5"
HAIKU_REPORTED = (PROMPT * Decimal(1) + COMPLETION * Decimal(5)) / 10**6
MAX_TOKENS = 100


class Handler(BaseHTTPRequestHandler):
    """OpenAI chat completions and Anthropic messages, streamed or not.

    The request's text picks the behaviour: ``cut`` answers 200 and drops
    the connection halfway through the body, ``fail`` answers a 500 whose
    body is cut off the same way.
    """

    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(self.path)
        text = json.dumps(body.get("messages"))
        if "fail" in text:
            return self._send(500, {"error": {"message": "down"}}, cut=True)
        if "cut" in text:
            return self._send(200, self._chat_answer(), cut=True)
        if "drop" in text:  # read the request, close before any answer
            self.close_connection = True
            return self.connection.shutdown(socket.SHUT_RDWR)
        if self.path.endswith("/messages"):
            return self._messages(bool(body.get("stream")))
        if body.get("stream"):
            return self._events([f"data: {json.dumps(c)}" for c in _chat_chunks()])
        return self._send(200, self._chat_answer())

    def _chat_answer(self) -> dict[str, Any]:
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello there"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": PROMPT,
                "completion_tokens": COMPLETION,
                "total_tokens": PROMPT + COMPLETION,
            },
        }

    def _messages(self, stream: bool) -> None:
        if not stream:
            return self._send(404, {"error": {"message": "streams only"}})
        events = [
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-haiku-4-5",
                    "content": [],
                    "stop_reason": None,
                    "usage": {"input_tokens": PROMPT, "output_tokens": 1},
                },
            },
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hello there"},
            },
            {"type": "content_block_stop", "index": 0},
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": COMPLETION},
            },
            {"type": "message_stop"},
        ]
        self._events([f"event: {e['type']}\ndata: {json.dumps(e)}" for e in events])

    def _send(self, status: int, answer: dict[str, Any], cut: bool = False) -> None:
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not cut:
            self.wfile.write(data)
            return
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    def _events(self, events: list[str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        for event in [*events, "data: [DONE]"]:
            self.wfile.write(f"{event}\n\n".encode())
        self.wfile.flush()
        self.close_connection = True


def _chat_chunks() -> list[dict[str, Any]]:
    base = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
    }
    deltas = [{"role": "assistant", "content": "Hello"}, {"content": " there"}]
    chunks = [
        {**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]}
        for d in deltas
    ]
    chunks.append(
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    )
    usage = {
        "prompt_tokens": PROMPT,
        "completion_tokens": COMPLETION,
        "total_tokens": PROMPT + COMPLETION,
    }
    chunks.append({**base, "choices": [], "usage": usage})
    return chunks


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[str] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.setattr(litellm, "suppress_debug_info", True)
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def governor() -> Governor:
    return Governor(Policy(budgets=[Budget(max_usd="1")]))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- B1: streamed Responses calls LiteLLM bridges to chat completions --------


def test_a_bridged_responses_stream_is_read_and_charged_as_reported(
    server: Server,
) -> None:
    gov = governor()
    with instrument(gov, ungoverned="refuse"), gov.task() as task:
        events = list(
            litellm.responses(
                model=MODEL,
                api_base=f"{server.url}/v1",
                api_key="x",
                input="hi",
                stream=True,
                use_chat_completions_api=True,
            )
        )

    assert events[-1].type == "response.completed"
    assert events[-1].response.usage.output_tokens == COMPLETION
    assert server.requests == ["/v1/chat/completions"]
    report = task.report()
    assert (report.calls, report.input_tokens, report.output_tokens) == (1, 11, 7)
    assert report.cost_usd == REPORTED


def test_a_bridged_aresponses_stream_is_read_and_charged_as_reported(
    server: Server,
) -> None:
    async def read() -> list[Any]:
        stream = await litellm.aresponses(
            model=MODEL,
            api_base=f"{server.url}/v1",
            api_key="x",
            input="hi",
            stream=True,
            use_chat_completions_api=True,
        )
        return [event async for event in stream]

    gov = governor()
    with instrument(gov), gov.task() as task:
        events = asyncio.run(read())

    assert events[-1].type == "response.completed"
    assert task.report().calls == 1
    assert task.report().cost_usd == REPORTED


def test_an_anthropic_responses_stream_is_bridged_and_charged_as_reported(
    server: Server,
) -> None:
    gov = governor()
    with instrument(gov, ungoverned="refuse"), gov.task() as task:
        events = list(
            litellm.responses(
                model=HAIKU, api_base=server.url, api_key="x", input="hi", stream=True
            )
        )

    assert events[-1].type == "response.completed"
    assert server.requests == ["/v1/messages"]
    assert task.report().cost_usd == HAIKU_REPORTED


def test_a_bridged_stream_closed_early_settles_the_call(server: Server) -> None:
    async def first_event() -> None:
        stream = await litellm.aresponses(
            model=MODEL,
            api_base=f"{server.url}/v1",
            api_key="x",
            input="hi",
            stream=True,
            use_chat_completions_api=True,
        )
        async for _ in stream:
            break
        await stream.aclose()

    gov = governor()
    with instrument(gov), gov.task() as task:
        asyncio.run(first_event())

    assert task.report().calls == 1
    assert task.report().cost_usd > 0
    assert not task.open_streams


def test_a_bridged_offline_responses_stream_is_governed() -> None:
    install_offline_provider(speed=0)
    gov = governor()

    with instrument(gov, ungoverned="refuse"), gov.task() as task:
        events = list(
            litellm.responses(model="offline/gpt-4o-mini", input="hello", stream=True)
        )

    assert events[-1].type == "response.completed"
    assert task.report().calls == 1
    assert task.report().cost_usd > 0


# -- B2: refusals inside responses() are raised as themselves ---------------


@pytest.mark.parametrize("ungoverned", ["warn", "refuse", "allow"])
def test_a_refusal_inside_responses_is_raised_as_itself(ungoverned: Any) -> None:
    install_offline_provider(speed=0)
    gov = Governor(Policy(budgets=[Budget(max_usd="0.000001")]))

    with (
        instrument(gov, ungoverned=ungoverned),
        gov.task(),
        pytest.raises(BudgetExceeded) as err,
    ):
        litellm.responses(model="offline/gpt-4o-mini", input="hello")

    assert "budget" in str(err.value)


def test_a_refusal_inside_aresponses_is_raised_as_itself() -> None:
    install_offline_provider(speed=0)
    gov = Governor(Policy(budgets=[Budget(max_usd="0.000001")]))

    with instrument(gov), gov.task(), pytest.raises(BudgetExceeded):
        asyncio.run(litellm.aresponses(model="offline/gpt-4o-mini", input="hello"))


# -- B3: answers cut off after the request went out --------------------------


def _complete(base: str, text: str, **kwargs: Any) -> None:
    litellm.completion(
        model=MODEL,
        api_base=base,
        api_key="x",
        messages=[{"role": "user", "content": text}],
        max_tokens=MAX_TOKENS,
        **kwargs,
    )


def test_a_200_cut_off_mid_body_is_charged_its_hold(server: Server) -> None:
    gov = governor()
    with instrument(gov), gov.task() as task:
        for _ in range(2):
            with pytest.raises(openai.OpenAIError):
                _complete(f"{server.url}/v1", "cut")

    assert len(server.requests) == 2
    assert task.report().calls == 2
    assert task.report().cost_usd >= 2 * MAX_TOKENS * OUT_PRICE


def test_an_async_200_cut_off_mid_body_is_charged_its_hold(server: Server) -> None:
    async def call() -> None:
        await litellm.acompletion(
            model=MODEL,
            api_base=f"{server.url}/v1",
            api_key="x",
            messages=[{"role": "user", "content": "cut"}],
            max_tokens=MAX_TOKENS,
        )

    gov = governor()
    with instrument(gov), gov.task() as task, pytest.raises(openai.OpenAIError):
        asyncio.run(call())

    assert task.report().cost_usd >= MAX_TOKENS * OUT_PRICE


@pytest.mark.parametrize("is_async", [False, True])
def test_a_connection_closed_before_any_answer_stays_free(
    server: Server, is_async: bool
) -> None:
    """Most often a kept-alive connection the server had closed while idle:
    the request never reached the provider (as before answers cut off were
    charged)."""

    async def call() -> None:
        await litellm.acompletion(
            model=MODEL,
            api_base=f"{server.url}/v1",
            api_key="x",
            messages=[{"role": "user", "content": "drop"}],
            max_tokens=MAX_TOKENS,
        )

    gov = governor()
    with instrument(gov), gov.task() as task, pytest.raises(openai.OpenAIError):
        if is_async:
            asyncio.run(call())
        else:
            _complete(f"{server.url}/v1", "drop")

    assert task.report().calls == 1
    assert task.report().cost_usd == 0


def test_an_error_answer_cut_off_mid_body_stays_free(server: Server) -> None:
    """A streamed call reads the status first: the 500's status error is in
    the chain, under the error of its cut-off body."""
    gov = governor()
    with instrument(gov), gov.task() as task, pytest.raises(openai.OpenAIError):
        _complete(f"{server.url}/v1", "fail", stream=True)

    assert server.requests == ["/v1/chat/completions"]
    assert task.report().cost_usd == 0


def test_a_refused_connection_stays_free(server: Server) -> None:
    gov = governor()
    with instrument(gov), gov.task() as task, pytest.raises(openai.OpenAIError):
        _complete(f"http://127.0.0.1:{free_port()}/v1", "hi")

    assert task.report().calls == 1
    assert task.report().cost_usd == 0


def test_a_connect_timeout_stays_free(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(litellm, "suppress_debug_info", True)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        queued = [socket.socket() for _ in range(3)]  # fill the backlog
        for sock in queued:
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.connect(("127.0.0.1", port))
        gov = governor()
        try:
            with instrument(gov), gov.task() as task, pytest.raises(litellm.Timeout):
                litellm.completion(
                    model=MODEL,
                    api_base=f"http://127.0.0.1:{port}/v1",
                    api_key="x",
                    messages=[{"role": "user", "content": "hi"}],
                    timeout=0.5,
                )
        finally:
            for sock in queued:
                sock.close()

    assert task.report().cost_usd == 0


def test_a_complete_answer_is_still_charged_as_reported(server: Server) -> None:
    gov = governor()
    with instrument(gov), gov.task() as task:
        _complete(f"{server.url}/v1", "hi")

    assert task.report().cost_usd == REPORTED


# -- B5 and the warning once per process -------------------------------------


def test_an_ungoverned_function_bound_early_is_warned_of(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    early = types.ModuleType("early_text_completion_user")
    early.text_completion = litellm.text_completion  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, early.__name__, early)

    with (
        caplog.at_level(logging.WARNING, logger=LOGGER),
        instrument(Governor(), ungoverned="refuse"),
    ):
        pass

    (warning,) = [
        r.getMessage() for r in caplog.records if "ungoverned function" in r.message
    ]
    assert warning.startswith("early_text_completion_user.text_completion holds")
    assert "bypass ungoverned='refuse'" in warning


def test_no_early_binding_warning_for_ungoverned_functions_under_allow(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    early = types.ModuleType("early_text_completion_user")
    early.text_completion = litellm.text_completion  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, early.__name__, early)

    with (
        caplog.at_level(logging.WARNING, logger=LOGGER),
        instrument(Governor(), ungoverned="allow"),
    ):
        pass

    assert not [r for r in caplog.records if "ungoverned function" in r.message]


def test_not_governed_is_warned_once_per_function_per_process(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def text_completion(*args: Any, **kwargs: Any) -> str:
        return "sent"

    monkeypatch.setattr(litellm, "text_completion", text_completion)

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(3):
            with instrument(Governor()):
                litellm.text_completion(model="m", prompt="p")

    warned = [r for r in caplog.records if "is not governed" in r.message]
    assert len(warned) == 1
