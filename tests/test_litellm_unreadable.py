"""Answers LiteLLM cannot read are charged their hold; error answers are free.

A 200 answer whose body (or first stream event) is not JSON was answered by
the provider, which may bill it: the call is charged its hold. A provider's
error answer (a 429 or a 5xx, whatever its body says) is not billed, and
neither is a request LiteLLM could not build (JSON in the caller's own
messages that does not parse), which was never sent.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator, Mapping
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import litellm
import openai
import pytest

from governor import Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM
from governor.policies import Price, Pricing

MESSAGES = [{"role": "user", "content": "Name three primary colours."}]
IN_PRICE, OUT_PRICE = Decimal("0.15e-6"), Decimal("0.6e-6")
MAX_TOKENS = 100

# path -> (status, content type, body)
ANSWERS: Mapping[str, tuple[int, str, bytes]] = {
    "truncated": (200, "application/json", b'{"id": "x", "choices": [{"mess'),
    "html": (200, "text/html", b"<html>gateway</html>"),
    "html-as-json": (200, "application/json", b"<html>gateway</html>"),
    "empty": (200, "application/json", b""),
    "garbage-event": (200, "text/event-stream", b"data: {not json\n\n"),
    "429": (429, "application/json", b'{"error": {"message": "slow down"}}'),
    "500-truncated": (500, "application/json", b'{"error": {"mess'),
    "502-html": (502, "text/html", b"<html>bad gateway</html>"),
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.paths.append(self.path)
        status, kind, body = ANSWERS[self.path.split("/")[1]]
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    paths: list[str]


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    """A server answering each path with a fixed, raw HTTP answer."""
    monkeypatch.setattr(litellm, "suppress_debug_info", True)
    server = _Server(("127.0.0.1", 0), _Handler)
    server.paths = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def call(server: _Server, answer: str, *, stream: bool, use_async: bool) -> Any:
    """One governed call to ``answer``; returns the task's report."""
    gov = Governor()
    llm = GovernedLiteLLM(gov)
    host, port = server.server_address[:2]
    kwargs: dict[str, Any] = {
        "model": "openai/gpt-4o-mini",
        "messages": MESSAGES,
        "api_base": f"http://{host!s}:{port}/{answer}/v1",
        "api_key": "sk-test",
        "max_tokens": MAX_TOKENS,
        "stream": stream,
    }

    async def acall() -> None:
        response = await llm.acompletion(**kwargs)
        if stream:
            [chunk async for chunk in response]

    with gov.task() as task, pytest.raises(openai.APIError):
        if use_async:
            asyncio.run(acall())
        else:
            response = llm.completion(**kwargs)
            if stream:
                list(response)
    return task.report()


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(
    ("answer", "stream"),
    [
        ("truncated", False),
        ("html", False),
        ("html-as-json", False),
        ("empty", False),
        ("garbage-event", True),
    ],
)
def test_an_unreadable_answer_is_charged_its_hold(
    server: _Server, answer: str, stream: bool, use_async: bool
) -> None:
    """A 200 LiteLLM raised on (a server error, status 500) costs the hold."""
    report = call(server, answer, stream=stream, use_async=use_async)
    assert len(server.paths) == 1
    assert report.output_tokens == MAX_TOKENS
    assert report.input_tokens > 0
    assert report.cost_usd == report.input_tokens * IN_PRICE + MAX_TOKENS * OUT_PRICE


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("answer", ["429", "500-truncated", "502-html"])
def test_an_error_answer_stays_free_whatever_its_body(
    server: _Server, answer: str, stream: bool, use_async: bool
) -> None:
    """A 429 or 5xx is not billed, even when its body is not JSON either."""
    report = call(server, answer, stream=stream, use_async=use_async)
    assert len(server.paths) == 1
    assert (report.input_tokens, report.cost_usd) == (0, Decimal(0))


def test_json_in_the_request_that_does_not_parse_is_free(server: _Server) -> None:
    """LiteLLM decodes a tool call's arguments to build an Anthropic request;
    when they are not JSON it raises before sending, so nothing is billed."""
    model = "anthropic/claude-3-5-haiku-20241022"
    price = Price(input_usd_per_mtok=1, output_usd_per_mtok=5)
    gov = Governor(Policy(pricing=Pricing(overrides={model: price})))
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "lookup", "arguments": "{not json"},
    }
    messages = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "red"},
    ]
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {}}}
    host, port = server.server_address[:2]
    with gov.task() as task, pytest.raises(litellm.BadRequestError):
        GovernedLiteLLM(gov).completion(
            model=model,
            messages=messages,
            tools=[tool],
            api_base=f"http://{host!s}:{port}/truncated",
            api_key="sk-test",
            max_tokens=MAX_TOKENS,
        )
    assert server.paths == []
    assert task.report().cost_usd == Decimal(0)


def _error(status: int | None) -> BaseException:
    """A provider error LiteLLM raised while failing to decode a body; with
    ``status``, the body came with that error status."""
    sent = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    answer = httpx.Response(status or 200, request=sent, text="<html>oops</html>")
    with pytest.raises(openai.APIError) as caught:
        try:
            if status is not None:
                answer.raise_for_status()
            json.loads(answer.text)
        except (httpx.HTTPStatusError, json.JSONDecodeError):
            try:
                json.loads(answer.text)
            except json.JSONDecodeError as exc:
                raise litellm.InternalServerError(
                    "unreadable", "openai", "gpt-4o-mini"
                ) from exc
    return caught.value


@pytest.mark.parametrize(("status", "charged"), [(None, True), (502, False)])
def test_an_error_status_in_the_chain_keeps_an_undecodable_body_free(
    status: int | None, charged: bool
) -> None:
    """A body that does not parse is an unreadable answer only when no error
    status came with it."""
    from governor.adapters.litellm import _failed, _request

    request = _request({"model": "gpt-4o-mini", "messages": MESSAGES})
    assert _failed(request, _error(status)).charge_hold is charged
