"""LiteLLM's ``num_retries`` under the governor: each attempt a governed call.

LiteLLM retries a failed call inside that one call (its ``@client`` wrapper
calls ``completion_with_retries``, and the OpenAI SDK is sent
``max_retries=num_retries``), so requests went out that no budget held.
Governed, the retries are made around the call: each attempt is reserved and
charged on its own, and a refusal is never retried. Real LiteLLM calls
against an OpenAI-compatible server on 127.0.0.1 that fails a set number of
requests before it answers, and counts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import litellm
import pytest

from governor import Budget, BudgetExceeded, Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM, instrument

CHAT = "openai/gpt-4o"
MESSAGES = [{"role": "user", "content": "What is the red planet?"}]
# What one answer of the server costs at gpt-4o's list prices: 50 prompt
# tokens at $2.50/M and 20 completion tokens at $10/M.
ANSWER_USD = Decimal("0.000325")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        size = int(self.headers.get("content-length") or 0)
        request = json.loads(self.rfile.read(size) or b"{}")
        with self.server.lock:
            self.server.requests += 1
            failing = self.server.requests <= self.server.failures
        if self.path.startswith("/slow/"):
            time.sleep(1)
        if failing:
            self._send(500, {"error": {"message": "boom", "type": "server_error"}})
            return
        self._send(
            200,
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": request.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "Mars."},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": 50,
                    "completion_tokens": 20,
                    "total_tokens": 70,
                },
            },
        )


class _Server(ThreadingHTTPServer):
    """Answers 500 to its first ``failures`` requests, then 200."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.requests = 0
        self.failures = 0

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out hung up before a slow answer

    def base(self, mode: str = "ok") -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{mode}/v1"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    monkeypatch.setattr(litellm, "suppress_debug_info", True)
    # LiteLLM clears its global num_retries after a failure: set it back.
    monkeypatch.setattr(litellm, "num_retries", None)
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def _instrumented(gov: Governor, api: str) -> Any:
    """LiteLLM instrumented by ``gov`` for the ``instrumented`` api; as it is
    for ``GovernedLiteLLM``."""
    return instrument(gov) if api == "instrumented" else contextlib.nullcontext()


def _complete(gov: Governor, api: str, how: str, **kwargs: Any) -> Any:
    """A chat completion, sync or async, through ``GovernedLiteLLM`` or
    through LiteLLM instrumented by ``gov`` (see :func:`_instrumented`)."""
    if api == "governed":
        client = GovernedLiteLLM(gov)
        complete, acomplete = client.completion, client.acompletion
    else:
        complete, acomplete = litellm.completion, litellm.acompletion
    args = {"model": CHAT, "messages": MESSAGES, "api_key": "sk-test", **kwargs}
    if how == "sync":
        return complete(**args)
    return asyncio.run(acomplete(**args))


def _governor(max_usd: str = "1") -> Governor:
    return Governor(Policy(budgets=[Budget(max_usd=max_usd)]))


APIS = ["governed", "instrumented"]
HOWS = ["sync", "async"]


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("api", APIS)
def test_each_of_num_retries_attempts_is_a_governed_call(
    server: _Server, api: str, how: str
) -> None:
    server.failures = 2
    gov = _governor()
    with _instrumented(gov, api), gov.task() as task:
        answer = _complete(
            gov, api, how, api_base=server.base(), max_tokens=20, num_retries=2
        )
        report = task.report()
    gov.close()
    assert answer.choices[0].message.content == "Mars."
    assert server.requests == 3
    assert report.calls == 3
    assert report.cost_usd == ANSWER_USD  # the two 500 answers are free


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("api", APIS)
def test_litellms_global_num_retries_is_governed_the_same(
    server: _Server, api: str, how: str
) -> None:
    server.failures = 2
    litellm.num_retries = 2  # the fixture puts it back
    gov = _governor()
    with _instrumented(gov, api), gov.task() as task:
        answer = _complete(gov, api, how, api_base=server.base(), max_tokens=20)
        report = task.report()
    gov.close()
    assert answer.choices[0].message.content == "Mars."
    assert server.requests == 3
    assert report.calls == 3
    assert report.cost_usd == ANSWER_USD


@pytest.mark.parametrize("how", HOWS)
def test_the_last_attempts_error_is_raised_once_retries_run_out(
    server: _Server, how: str
) -> None:
    server.failures = 10
    gov = _governor()
    with instrument(gov), gov.task() as task:
        with pytest.raises(litellm.InternalServerError):
            _complete(gov, "instrumented", how, api_base=server.base(), num_retries=2)
        report = task.report()
    gov.close()
    assert server.requests == 3
    assert report.calls == 3
    assert report.cost_usd == 0


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("api", APIS)
def test_a_retry_the_budget_cannot_hold_is_refused_not_retried(
    server: _Server, api: str, how: str
) -> None:
    # A timed-out attempt may be billed: it is charged its hold (1000 output
    # tokens, $0.01 and a little input), and the rest of the $0.015 budget
    # cannot hold the next attempt.
    gov = _governor("0.015")
    with _instrumented(gov, api), gov.task() as task:
        with pytest.raises(BudgetExceeded):
            _complete(
                gov,
                api,
                how,
                api_base=server.base("slow"),
                max_tokens=1000,
                num_retries=2,
                timeout=0.3,
            )
        report = task.report()
    gov.close()
    assert server.requests == 1
    assert report.calls == 1
    assert Decimal("0.01") < report.cost_usd < Decimal("0.015")
