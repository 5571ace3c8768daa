"""A 200 answer with no choices is charged; a provider's 5xx stays free.

LiteLLM rejects a 200 whose body has no ``choices`` (or ``"choices": null``)
with an ``InternalServerError`` that carries an HTTP 500 response it made up
itself. The provider answered and may bill it: a body that reports its usage
is charged that usage, one that does not is charged its hold. A provider's
own 5xx error answer stays free, whatever its body says.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator, Mapping
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import litellm
import openai
import pytest

from governor import Budget, Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM, instrument
from governor.policies import Price, Pricing

MODEL = "openai/gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Name three primary colours."}]
IN_PRICE, OUT_PRICE = Decimal("0.15e-6"), Decimal("0.6e-6")
MAX_TOKENS = 500
USAGE = {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}
HEAD = {"id": "x", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini"}
SAYS_NO_CHOICES = "provider returned a response with no 'choices'"

_SERIALIZER_WARNINGS = pytest.mark.filterwarnings(
    "ignore:Pydantic serializer warnings:UserWarning"
)

# path -> (status, body)
ANSWERS: Mapping[str, tuple[int, object]] = {
    "no-choices": (200, {**HEAD, "usage": USAGE}),
    "null-choices": (200, {**HEAD, "choices": None, "usage": USAGE}),
    "no-choices-no-usage": (200, HEAD),
    "no-choices-bad-usage": (200, {**HEAD, "usage": {"tokens": "many"}}),
    "500-says-no-choices": (500, {"error": {"message": SAYS_NO_CHOICES}}),
    # Raw bodies: JSON numbers past a float (1e400 reads as infinity), NaN,
    # and a count no call reaches.
    "no-choices-inf-usage": (
        200,
        '{"id":"x","object":"chat.completion","model":"gpt-4o-mini",'
        '"usage":{"prompt_tokens":1e400,"completion_tokens":5}}',
    ),
    "no-choices-nan-usage": (
        200,
        '{"id":"x","object":"chat.completion","model":"gpt-4o-mini",'
        '"usage":{"prompt_tokens":NaN,"completion_tokens":5}}',
    ),
    "no-choices-huge-usage": (
        200,
        {**HEAD, "usage": {"prompt_tokens": 10**12, "completion_tokens": 5}},
    ),
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.paths.append(self.path)
        status, answer = ANSWERS[self.path.split("/")[1]]
        body = (answer if isinstance(answer, str) else json.dumps(answer)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
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
    """A server answering each path with a fixed JSON body and status."""
    monkeypatch.setattr(litellm, "suppress_debug_info", True)
    server = _Server(("127.0.0.1", 0), _Handler)
    server.paths = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _governor() -> Governor:
    price = Price(input_usd_per_mtok="0.15", output_usd_per_mtok="0.6")
    return Governor(
        Policy(
            budgets=[Budget(max_usd="5")],
            pricing=Pricing(overrides={MODEL: price}),
        )
    )


def call(server: _Server, answer: str, *, use_async: bool) -> Any:
    """One governed call to ``answer``, which raises; returns the report."""
    gov = _governor()
    llm = GovernedLiteLLM(gov)
    host, port = server.server_address[:2]
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "messages": MESSAGES,
        "api_base": f"http://{host!s}:{port}/{answer}/v1",
        "api_key": "sk-test",
        "max_tokens": MAX_TOKENS,
    }
    with gov.task() as task, pytest.raises(openai.InternalServerError):
        if use_async:
            asyncio.run(llm.acompletion(**kwargs))
        else:
            llm.completion(**kwargs)
    assert len(server.paths) == 1
    return task.report()


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("answer", ["no-choices", "null-choices"])
def test_an_answer_without_choices_is_charged_its_usage(
    server: _Server, answer: str, use_async: bool
) -> None:
    """The body's usage is what the provider billed: 1000 in, 500 out."""
    report = call(server, answer, use_async=use_async)
    assert (report.input_tokens, report.output_tokens) == (1000, 500)
    assert report.cost_usd == Decimal("0.00045")
    assert report.cost_usd == 1000 * IN_PRICE + 500 * OUT_PRICE


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(
    "answer",
    [
        "no-choices-no-usage",
        "no-choices-bad-usage",
        # LiteLLM warns as it logs such a body (the test run makes warnings
        # errors, which would change what it raises).
        pytest.param("no-choices-inf-usage", marks=_SERIALIZER_WARNINGS),
        pytest.param("no-choices-nan-usage", marks=_SERIALIZER_WARNINGS),
        "no-choices-huge-usage",
    ],
)
def test_an_answer_without_choices_or_usage_is_charged_its_hold(
    server: _Server, answer: str, use_async: bool
) -> None:
    """Nothing in the body says what was billed: the worst case reserved."""
    report = call(server, answer, use_async=use_async)
    assert report.output_tokens == MAX_TOKENS
    assert report.input_tokens > 0
    hold = report.input_tokens * IN_PRICE + MAX_TOKENS * OUT_PRICE
    assert report.cost_usd == hold > 0


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_a_5xx_that_says_no_choices_stays_free(
    server: _Server, use_async: bool
) -> None:
    """A provider's error answer is not billed, whatever its message says."""
    report = call(server, "500-says-no-choices", use_async=use_async)
    assert (report.input_tokens, report.output_tokens) == (0, 0)
    assert report.cost_usd == Decimal(0)


def test_an_instrumented_call_without_choices_is_charged_its_usage(
    server: _Server,
) -> None:
    """``instrument()`` governs ``litellm.completion`` the same way."""
    gov = _governor()
    host, port = server.server_address[:2]
    with (
        instrument(gov),
        gov.task() as task,
        pytest.raises(openai.InternalServerError),
    ):
        litellm.completion(
            model=MODEL,
            messages=MESSAGES,
            api_base=f"http://{host!s}:{port}/no-choices/v1",
            api_key="sk-test",
            max_tokens=MAX_TOKENS,
        )
    assert task.report().cost_usd == Decimal("0.00045")
