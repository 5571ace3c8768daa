"""LiteLLM calls are settled at what the provider bills, not what it shows.

* An answer that names another model than the one requested (a proxy that
  answers with another) is charged at the dearer of the two prices; a
  dated variant of the same price, or a name no price map knows, keeps the
  requested price.
* Without usage from the provider, what a local count cannot see is
  charged at the call's hold: the output of a reasoning model (its hidden
  reasoning is billed as output), and a prompt with image parts.
* A call that failed after LiteLLM sent it, for a reason other than an
  error answer (LiteLLM's own logging at interpreter shutdown), is charged
  its hold; an error answer stays free.
* Messages in ``extra_body`` (which replace the prompt the server reads)
  and ``best_of`` are reserved for.

Real LiteLLM calls go to a small OpenAI-compatible server on 127.0.0.1
started here; a ``MOCK{...}`` directive in the prompt sets the answer.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import litellm
import pytest

from governor import Budget, BudgetExceeded, Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM
from governor.pricing import RateCard

ENGINE = "governor._engine"
CARD = RateCard()


class Handler(BaseHTTPRequestHandler):
    """Chat and text completions. The directive's keys: ``out`` (output
    tokens per choice), ``prompt`` (prompt tokens), ``model`` (the model the
    answer names), ``usage`` ("none" sends none), ``status`` (an error
    answer)."""

    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.bodies.append(body)
        found = re.search(r"MOCK(\{.*?\})", json.dumps(body).replace('\\"', '"'))
        how = json.loads(found.group(1)) if found else {}
        if how.get("status"):
            return self._send(how["status"], {"error": {"message": "no"}})
        out = min(how.get("out", 5), int(body.get("max_tokens") or 10**6))
        choices = max(int(body.get("n") or 1), int(body.get("best_of") or 1))
        usage = {
            "prompt_tokens": how.get("prompt", 10),
            "completion_tokens": out * choices,
            "total_tokens": how.get("prompt", 10) + out * choices,
        }
        model = how.get("model", body.get("model"))
        if "prompt" in body:  # a text completion
            answer: dict[str, Any] = {
                "id": "t",
                "object": "text_completion",
                "created": 1,
                "model": model,
                "choices": [
                    {"index": 0, "text": "word " * out, "finish_reason": "length"}
                ],
            }
        else:
            answer = {
                "id": "c",
                "object": "chat.completion",
                "created": 1,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "word " * out},
                        "finish_reason": "stop",
                    }
                ],
            }
        if how.get("usage") != "none":
            answer["usage"] = usage
        if body.get("stream"):
            return self._stream(answer, out)
        return self._send(200, answer)

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, answer: dict[str, Any], out: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        base = {"id": "c", "object": "chat.completion.chunk", "created": 1}
        base["model"] = answer["model"]
        for _ in range(out):
            delta = {"role": "assistant", "content": "word "}
            chunk = {**base, "choices": [{"index": 0, "delta": delta}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        end = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        self.wfile.write(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode())
        self.wfile.flush()
        self.close_connection = True


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.bodies: list[dict[str, Any]] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    running = Server()
    thread = threading.Thread(target=running.serve_forever, daemon=True)
    thread.start()
    try:
        yield running
    finally:
        running.shutdown()
        running.server_close()


def _say(**how: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"hi MOCK{json.dumps(how)}"}]


def _call(
    server: Server, budget: str = "10", **kwargs: Any
) -> tuple[Any, Governor, Any]:
    """One governed call in a task of its own; the response, the governor
    and the task's report."""
    gov = Governor(Policy(budgets=[Budget(max_usd=budget)]))
    client = GovernedLiteLLM(gov)
    kwargs.setdefault("model", "openai/gpt-4o-mini")
    try:
        with gov.task() as task:
            response = client.completion(api_base=server.base, api_key="k", **kwargs)
            if kwargs.get("stream"):
                for _ in response:
                    pass
        return response, gov, task.report()
    finally:
        gov.close()


def _cost(model: str, prompt: int, output: int) -> Decimal:
    rate = CARD.rate(model)
    return prompt * rate.input_per_token + output * rate.output_per_token


# -- the model that answered ------------------------------------------------


def test_an_answer_from_a_dearer_model_is_charged_at_its_price(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=ENGINE):
        response, _, report = _call(
            server, messages=_say(model="o1", out=100), max_tokens=100
        )
    assert response.model == "o1"
    assert report.cost_usd == _cost("o1", 10, 100)
    warned = [r for r in caplog.records if "was answered by o1" in r.getMessage()]
    assert len(warned) == 1
    _, _, report = _call(  # the dearer is the requested one
        server, model="openai/o1", messages=_say(model="gpt-4o-mini", out=100)
    )
    assert report.cost_usd == _cost("o1", 10, 100)


def test_a_dated_variant_or_an_unknown_answer_keeps_the_requested_price(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    expected = _cost("gpt-4o-mini", 10, 100)
    with caplog.at_level(logging.WARNING, logger=ENGINE):
        for model in ("gpt-4o-mini-2024-07-18", "not-a-model-anyone-prices", "o1"):
            _, _, report = _call(
                server, messages=_say(model=model, out=100), max_tokens=100
            )
            if model != "o1":
                assert report.cost_usd == expected, model
    assert report.cost_usd == _cost("o1", 10, 100)  # a price that differs


# -- no usage from the provider ---------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_a_reasoning_model_without_usage_is_charged_its_output_hold(
    server: Server, stream: bool
) -> None:
    _, _, report = _call(
        server,
        model="openai/o3-mini",
        messages=_say(out=20, usage="none"),
        max_tokens=2000,
        stream=stream,
    )
    assert report.output_tokens == 2000
    assert report.cost_usd > _cost("o3-mini", 0, 2000)
    _, _, report = _call(  # a model that does not reason: its text counted
        server, messages=_say(out=20, usage="none"), max_tokens=2000, stream=stream
    )
    assert 0 < report.output_tokens < 100


def test_image_parts_without_usage_are_charged_the_prompt_hold(
    server: Server,
) -> None:
    images = [
        {"type": "image_url", "image_url": {"url": f"https://x.invalid/{i}.png"}}
        for i in range(10)
    ]
    text = {"type": "text", "text": 'look MOCK{"out": 20, "usage": "none"}'}
    messages = [{"role": "user", "content": [text, *images]}]
    _, _, report = _call(server, model="openai/gpt-4o", messages=messages)
    assert report.input_tokens >= 10 * 765  # a high-detail image, at the least
    assert report.output_tokens < 100  # the answer's text is counted


# -- a failure after sending ------------------------------------------------


class _ShutDown:
    """LiteLLM's logging executor at interpreter shutdown."""

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("cannot schedule new futures after interpreter shutdown")


def _failing(server: Server, error: type[BaseException], **how: Any) -> Any:
    """The report of a task whose one call raises ``error``."""
    gov = Governor(Policy(budgets=[Budget(max_usd="10")]))
    try:
        with gov.task() as task, pytest.raises(error):
            GovernedLiteLLM(gov).completion(
                model="openai/gpt-4o-mini",
                api_base=server.base,
                api_key="k",
                messages=_say(**how),
                max_tokens=100,
            )
        return task.report()
    finally:
        gov.close()


def test_a_call_that_fails_after_it_was_sent_is_charged_its_hold(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(litellm.utils, "executor", _ShutDown())
    sent = len(server.bodies)
    report = _failing(server, RuntimeError, out=100)
    assert len(server.bodies) == sent + 1
    assert report.output_tokens == 100  # the hold: the whole output ceiling
    assert report.cost_usd >= _cost("gpt-4o-mini", 10, 100)
    # An error answer stays free.
    assert _failing(server, litellm.RateLimitError, status=429).cost_usd == 0


# -- what the request asks for ----------------------------------------------


def test_messages_in_extra_body_are_reserved_for(server: Server) -> None:
    big = [{"role": "user", "content": "lorem ipsum " * 20000}]
    sent = len(server.bodies)
    with pytest.raises(BudgetExceeded):
        _call(
            server,
            budget="0.002",
            messages=_say(out=5),
            max_tokens=10,
            extra_body={"messages": big},
        )
    assert len(server.bodies) == sent  # refused before it was sent


def test_best_of_is_reserved_as_that_many_choices(server: Server) -> None:
    model = "text-completion-openai/gpt-3.5-turbo-instruct"
    one = _cost("gpt-3.5-turbo-instruct", 50, 1000)
    budget = str(one * 2)  # one choice fits, five do not
    _, _, report = _call(
        server, budget, model=model, messages=_say(out=1000), max_tokens=1000
    )
    assert report.calls == 1
    sent = len(server.bodies)
    with pytest.raises(BudgetExceeded):
        _call(
            server,
            budget,
            model=model,
            messages=_say(out=1000),
            max_tokens=1000,
            best_of=5,
        )
    assert len(server.bodies) == sent
