"""Governed streams through ``litellm.Router`` under ``instrument(gov)``.

The Router handles a chat stream only when it is LiteLLM's own stream type
(``litellm.CustomStreamWrapper``): it reads the first chunk inside the
attempt, so a stream that fails before it is retried or falls back; it
raises the provider's error for a stream that fails after content; and it
counts the stream's tokens in the model group's usage. Governed streams are
handed on as that type, so all of this works as it does ungoverned, and each
attempt is still a governed call of its own, settled once.

Real LiteLLM and a real Router send to a small server on 127.0.0.1 started
here, whose URL path picks what it does.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import litellm
import pytest

from governor import Budget, Governor, Policy
from governor.adapters.litellm import instrument
from governor.spend import SpendRecord, SQLiteSpendStore

PROMPT, COMPLETION = 11, 7
MAX_TOKENS = 50
PIECES = ["Hello", " there", " my", " friend"]
ANSWER = "".join(PIECES)
MESSAGES = [{"role": "user", "content": "hi"}]


class Handler(BaseHTTPRequestHandler):
    """Streams OpenAI chat chunks. The path's first part picks the stream:
    ``ok`` sends it whole, ``cut0`` answers 200 and drops the connection
    before the first chunk, ``cut`` drops it after two chunks, ``flaky`` is
    ``cut0`` for its first request and ``ok`` after."""

    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        mode = self.path.strip("/").split("/")[0]
        with self.server.lock:
            self.server.requests.append(mode)
            first = self.server.requests.count(mode) == 1
        if mode == "flaky":
            mode = "cut0" if first else "ok"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        drop_at = {"cut0": 0, "cut": 2}.get(mode)
        for index, event in enumerate(_events(body)):
            if index == drop_at:
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            data = f"data: {event}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def _events(body: dict[str, Any]) -> Iterator[str]:
    base = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": body["model"],
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return json.dumps({**base, "choices": [choice]})

    yield chunk({"role": "assistant", "content": PIECES[0]})
    for piece in PIECES[1:]:
        yield chunk({"content": piece})
    yield chunk({}, "stop")
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {
            "prompt_tokens": PROMPT,
            "completion_tokens": COMPLETION,
            "total_tokens": PROMPT + COMPLETION,
        }
        yield json.dumps({**base, "choices": [], "usage": usage})
    yield "[DONE]"


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.requests: list[str] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def base(self, mode: str) -> str:
        return f"{self.url}/{mode}/v1"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.setattr(litellm, "suppress_debug_info", True)
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _deployment(name: str, model: str, api_base: str) -> dict[str, Any]:
    params = {"model": model, "api_base": api_base, "api_key": "sk-test"}
    return {"model_name": name, "litellm_params": params}


def _read(router: litellm.Router, model: str, is_async: bool) -> list[str]:
    """The text of each chunk the caller reads off a Router stream."""
    if not is_async:
        stream = router.completion(
            model=model, messages=MESSAGES, max_tokens=MAX_TOKENS, stream=True
        )
        return [_text(chunk) for chunk in stream]

    async def read() -> list[str]:
        stream = await router.acompletion(
            model=model, messages=MESSAGES, max_tokens=MAX_TOKENS, stream=True
        )
        return [_text(chunk) async for chunk in stream]

    return asyncio.run(read())


def _text(chunk: Any) -> str:
    return str(chunk.choices[0].delta.content or "") if chunk.choices else ""


def _records(gov: Governor, store: SQLiteSpendStore) -> list[SpendRecord]:
    gov.close()
    return sorted(store.query(), key=lambda rec: rec.ts)


def _check_charged(failed: SpendRecord, answered: SpendRecord, model: str) -> None:
    """The dropped attempt is charged its hold (its answer was cut off while
    it was read, see docs/adapters.md); the answered one what was reported."""
    assert failed.outcome == "error"
    assert failed.output_tokens == MAX_TOKENS
    assert failed.cost_usd > 0
    assert answered.model == model
    assert answered.outcome == "ok"
    assert (answered.input_tokens, answered.output_tokens) == (PROMPT, COMPLETION)
    assert not answered.cost_estimated


@pytest.mark.parametrize("is_async", [False, True])
def test_a_stream_dropped_before_its_first_chunk_falls_back(
    server: Server, tmp_path: Path, is_async: bool
) -> None:
    router = litellm.Router(
        model_list=[
            _deployment("smart", "openai/gpt-4o", server.base("cut0")),
            _deployment("cheap", "openai/gpt-4o-mini", server.base("ok")),
        ],
        fallbacks=[{"smart": ["cheap"]}],
        num_retries=0,
    )
    store = SQLiteSpendStore(tmp_path / "spend.sqlite3")
    gov = Governor(Policy(budgets=[Budget(max_usd="1")]), spend=store)
    with instrument(gov), gov.task() as task:
        texts = _read(router, "smart", is_async)

    assert "".join(texts) == ANSWER
    assert server.requests == ["cut0", "ok"]
    assert task.report().calls == 2
    failed, answered = _records(gov, store)
    assert failed.model == "openai/gpt-4o"
    _check_charged(failed, answered, "openai/gpt-4o-mini")
    assert task.report().cost_usd == failed.cost_usd + answered.cost_usd


@pytest.mark.parametrize("is_async", [False, True])
def test_a_stream_dropped_before_its_first_chunk_is_retried(
    server: Server, tmp_path: Path, is_async: bool
) -> None:
    router = litellm.Router(
        model_list=[_deployment("g", "openai/gpt-4o-mini", server.base("flaky"))],
        num_retries=1,
        retry_after=0,
    )
    store = SQLiteSpendStore(tmp_path / "spend.sqlite3")
    gov = Governor(Policy(budgets=[Budget(max_usd="1")]), spend=store)
    with instrument(gov), gov.task() as task:
        texts = _read(router, "g", is_async)

    assert "".join(texts) == ANSWER
    assert server.requests == ["flaky", "flaky"]
    assert task.report().calls == 2
    failed, answered = _records(gov, store)
    _check_charged(failed, answered, "openai/gpt-4o-mini")


@pytest.mark.parametrize("is_async", [False, True])
def test_a_stream_dropped_after_content_raises_what_it_raises_ungoverned(
    server: Server, tmp_path: Path, is_async: bool
) -> None:
    """LiteLLM's internal ``MidStreamFallbackError`` never reaches the
    caller: ``except litellm.APIConnectionError`` keeps working."""

    def read() -> tuple[type[BaseException], list[str]]:
        router = litellm.Router(
            model_list=[
                _deployment("smart", "openai/gpt-4o", server.base("cut")),
                _deployment("cheap", "openai/gpt-4o-mini", server.base("ok")),
            ],
            fallbacks=[{"smart": ["cheap"]}],
            num_retries=0,
        )
        texts: list[str] = []

        async def aread() -> None:
            stream = await router.acompletion(
                model="smart", messages=MESSAGES, max_tokens=MAX_TOKENS, stream=True
            )
            async for chunk in stream:
                texts.append(_text(chunk))

        try:
            if is_async:
                asyncio.run(aread())
            else:
                stream = router.completion(
                    model="smart", messages=MESSAGES, max_tokens=MAX_TOKENS, stream=True
                )
                texts.extend(_text(chunk) for chunk in stream)
        except Exception as exc:
            return type(exc), texts
        raise AssertionError("the cut stream did not fail")

    ungoverned, ungoverned_texts = read()
    store = SQLiteSpendStore(tmp_path / "spend.sqlite3")
    gov = Governor(Policy(budgets=[Budget(max_usd="1")]), spend=store)
    with instrument(gov), gov.task() as task:
        governed, governed_texts = read()

    assert issubclass(ungoverned, litellm.APIConnectionError)
    assert governed is ungoverned
    assert governed_texts == ungoverned_texts == PIECES[:2]
    assert task.report().calls == 1
    (cut,) = _records(gov, store)
    assert (cut.model, cut.outcome) == ("openai/gpt-4o", "error")
    assert cut.cost_usd > 0  # what arrived, estimated


def test_the_routers_group_usage_counts_governed_streams(server: Server) -> None:
    """LiteLLM counts a stream's tokens for its group from the final chunk
    the caller reads (an async stream's; a sync stream counts no tokens)."""
    deployment = _deployment("g", "openai/gpt-4o-mini", server.base("ok"))
    deployment["litellm_params"].update(tpm=100_000, rpm=1_000)
    router = litellm.Router(
        model_list=[deployment], routing_strategy="usage-based-routing-v2"
    )

    expected = (3 * (PROMPT + COMPLETION), 3)

    async def run() -> tuple[int | None, int | None]:
        for _ in range(3):
            stream = await router.acompletion(
                model="g", messages=MESSAGES, max_tokens=MAX_TOKENS, stream=True
            )
            assert "".join([_text(chunk) async for chunk in stream]) == ANSWER
        deadline = time.monotonic() + 5
        while True:  # LiteLLM records a stream's usage in the background
            usage: tuple[int | None, int | None] = await router.health().usage("g")
            if usage == expected or time.monotonic() > deadline:
                return usage
            await asyncio.sleep(0.05)

    gov = Governor(Policy(budgets=[Budget(max_usd="1")]))
    with instrument(gov), gov.task() as task:
        usage = asyncio.run(run())

    assert usage == expected
    assert task.report().calls == 3


def test_a_governed_stream_refuses_to_be_pickled_with_a_clear_error() -> None:
    """It is LiteLLM's stream type now, whose own pickling fails obscurely."""
    import pickle

    from governor import Governor
    from governor.adapters.litellm import GovernedLiteLLM

    llm = GovernedLiteLLM(Governor())
    stream = llm.completion(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "x"}],
        mock_response="hi there",
        max_tokens=5,
        stream=True,
    )
    with pytest.raises(TypeError, match="governed stream cannot be pickled"):
        pickle.dumps(stream)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == "hi there"
