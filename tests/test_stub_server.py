"""The local OpenAI-compatible stub server, driven through real LiteLLM calls."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import litellm
import pytest

from governor._errors import ConfigError
from governor.testing._stub_server import StubBehaviour, StubServer

MESSAGES = [{"role": "user", "content": "Say hello to the test"}]
ANSWER = StubBehaviour(
    answer="Hello from the stub", prompt_tokens=9, completion_tokens=4
)


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[StubServer]:
    """A stub server whose default answer reports 9 prompt and 4 completion tokens."""
    monkeypatch.setattr(litellm, "suppress_debug_info", True)
    with StubServer(default=ANSWER) as server:
        yield server


def _call(stub: StubServer, **kwargs: Any) -> Any:
    kwargs.setdefault("model", "openai/gpt-4o-mini")
    return litellm.completion(
        messages=MESSAGES,
        api_base=stub.base_url + "/v1",
        api_key="sk-test",
        max_retries=0,
        **kwargs,
    )


async def _acall(stub: StubServer, **kwargs: Any) -> Any:
    kwargs.setdefault("model", "openai/gpt-4o-mini")
    return await litellm.acompletion(
        messages=MESSAGES,
        api_base=stub.base_url + "/v1",
        api_key="sk-test",
        max_retries=0,
        **kwargs,
    )


def test_base_url_is_loopback_with_a_free_port(stub: StubServer) -> None:
    """The server listens on 127.0.0.1 on a port picked by the system."""
    host, _, port = stub.base_url.removeprefix("http://").partition(":")
    assert (host, int(port) > 0) == ("127.0.0.1", True)


def test_completion_returns_configured_answer(stub: StubServer) -> None:
    """A plain completion returns the configured answer text."""
    response = _call(stub)
    assert response.choices[0].message.content == "Hello from the stub"


def test_completion_reports_configured_usage(stub: StubServer) -> None:
    """LiteLLM reads the usage numbers the stub was told to report."""
    usage = _call(stub).usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        9,
        4,
        13,
    )


def test_completion_cost_uses_reported_usage(stub: StubServer) -> None:
    """LiteLLM prices the stub's usage at gpt-4o-mini's rate."""
    response = _call(stub)
    expected = sum(
        litellm.cost_per_token(
            model="gpt-4o-mini", prompt_tokens=9, completion_tokens=4
        )
    )
    assert response._hidden_params["response_cost"] == expected


def test_request_is_recorded(stub: StubServer) -> None:
    """The stub records path, model, messages and max_tokens of each request."""
    _call(stub, max_tokens=32)
    (request,) = stub.requests
    assert (
        request.path,
        request.model,
        request.body["messages"],
        request.body["max_tokens"],
    ) == ("/v1/chat/completions", "gpt-4o-mini", MESSAGES, 32)


def test_request_records_authorization_header(stub: StubServer) -> None:
    """The API key arrives as a bearer token in the recorded headers."""
    _call(stub)
    assert stub.requests[0].headers["authorization"] == "Bearer sk-test"


def test_default_usage_counts_words(stub: StubServer) -> None:
    """Without configured numbers usage counts words, plus 3 per message."""
    stub.set_behaviour("gpt-4o", StubBehaviour(answer="one two three"))
    usage = _call(stub, model="openai/gpt-4o").usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (5 + 3, 3)


async def test_async_completion_reports_usage(stub: StubServer) -> None:
    """An async completion reports the configured usage."""
    response = await _acall(stub)
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (9, 4)


def test_stream_final_chunk_carries_usage(stub: StubServer) -> None:
    """With include_usage the last streamed chunk carries the configured usage."""
    chunks = list(_call(stub, stream=True, stream_options={"include_usage": True}))
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (
        9,
        4,
    )


def test_stream_forwards_include_usage(stub: StubServer) -> None:
    """LiteLLM forwards stream_options to the server unchanged."""
    list(_call(stub, stream=True, stream_options={"include_usage": True}))
    assert stub.requests[0].body["stream_options"] == {"include_usage": True}


def test_stream_without_include_usage_has_no_usage(stub: StubServer) -> None:
    """Without include_usage no streamed chunk carries usage."""
    chunks = list(_call(stub, stream=True))
    assert [getattr(c, "usage", None) for c in chunks] == [None] * len(chunks)


def test_stream_pieces_join_to_the_answer(stub: StubServer) -> None:
    """The streamed pieces join to exactly the configured answer."""
    chunks = list(_call(stub, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the stub"


async def test_async_stream_final_chunk_carries_usage(stub: StubServer) -> None:
    """An async stream with include_usage ends with the configured usage."""
    stream = await _acall(stub, stream=True, stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (
        9,
        4,
    )


def test_raw_sse_has_usage_only_in_last_data_event(stub: StubServer) -> None:
    """On the wire, only the chunk before [DONE] has usage, and it has no choices."""
    body = {
        "model": "gpt-4o-mini",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = _post_sse(stub.base_url + "/v1/chat/completions", body)
    chunks = [json.loads(e) for e in events[:-1]]
    assert (events[-1], chunks[-1]["choices"], chunks[-1]["usage"]["total_tokens"]) == (
        "[DONE]",
        [],
        13,
    )
    assert [c["usage"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)


def test_503_raises_service_unavailable(stub: StubServer) -> None:
    """A model set to answer 503 makes LiteLLM raise ServiceUnavailableError."""
    stub.set_behaviour("gpt-4o", StubBehaviour(status=503))
    with pytest.raises(litellm.ServiceUnavailableError):
        _call(stub, model="openai/gpt-4o")


def test_429_raises_rate_limit_with_retry_after(stub: StubServer) -> None:
    """A 429 raises RateLimitError and carries the configured Retry-After header."""
    stub.set_behaviour("gpt-4o", StubBehaviour(status=429, retry_after_s=2))
    with pytest.raises(litellm.RateLimitError) as caught:
        _call(stub, model="openai/gpt-4o")
    assert caught.value.response.headers["retry-after"] == "2"


def test_fail_times_fails_first_requests_only(stub: StubServer) -> None:
    """With fail_times=1 the first request fails and the second succeeds."""
    stub.set_behaviour(
        "gpt-4o", StubBehaviour(status=503, fail_times=1, answer="recovered")
    )
    with pytest.raises(litellm.ServiceUnavailableError):
        _call(stub, model="openai/gpt-4o")
    response = _call(stub, model="openai/gpt-4o")
    assert (response.choices[0].message.content, [r.status for r in stub.requests]) == (
        "recovered",
        [503, 200],
    )


def test_other_models_keep_default_behaviour(stub: StubServer) -> None:
    """A behaviour set for one model leaves other models on the default."""
    stub.set_behaviour("gpt-4o", StubBehaviour(status=503))
    assert _call(stub).choices[0].message.content == "Hello from the stub"


def test_delay_is_applied_before_answering(stub: StubServer) -> None:
    """A delay longer than the client's timeout makes the call time out."""
    stub.set_behaviour("gpt-4o", StubBehaviour(delay_s=1.0))
    with pytest.raises(litellm.Timeout):
        _call(stub, model="openai/gpt-4o", timeout=0.2)


def test_unknown_path_answers_404(stub: StubServer) -> None:
    """A path other than chat completions answers 404 and is recorded."""
    request = urllib.request.Request(
        stub.base_url + "/v1/embeddings", data=b"{}", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    caught.value.close()
    assert (caught.value.code, stub.requests[0].status) == (404, 404)


def test_invalid_behaviour_is_refused() -> None:
    """A status that is not an HTTP status code is refused at construction."""
    with pytest.raises(ConfigError, match="status=999"):
        StubBehaviour(status=999)


def test_close_releases_the_port() -> None:
    """After the context exits, nothing answers on the server's port."""
    with StubServer() as server:
        url = server.base_url
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/v1/chat/completions", data=b"{}", timeout=2)


def _post_sse(url: str, body: dict[str, Any]) -> list[str]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    return [line.removeprefix("data: ") for line in text.split("\n\n") if line]
