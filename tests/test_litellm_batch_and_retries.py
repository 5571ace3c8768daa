"""LiteLLM's batch functions and the retries hidden inside one call.

Real LiteLLM calls against servers on 127.0.0.1 that count the requests they
get: ``governor.testing.StubServer`` for chat, a small one answering 429 for
embeddings. An embedding is sent once per governed call:
LiteLLM's OpenAI embedding path turns a plain ``max_retries=0`` into 2, so
the SDK's retries (requests the governor never reserved) are kept off in a
form it keeps. ``litellm.batch_completion`` and its kin send each request on
threads of their own; instrumented, each is governed in the caller's task,
on its budgets and with its attribution.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import litellm
import pytest
from _list_spend_store import ListSpendStore

from governor import Budget, Governor, Policy, UngovernedCall, attribute
from governor.adapters.litellm import instrument
from governor.testing import StubBehaviour, StubServer

CHAT = "openai/gpt-4o"
EMBED = "openai/text-embedding-3-large"
MESSAGES = [{"role": "user", "content": "word " * 60}]
# What one chat answer of the server costs at gpt-4o's list prices:
# 50 prompt tokens at $2.50/M and 20 completion tokens at $10/M.
ANSWER_USD = Decimal("0.000325")
ANSWER = StubBehaviour(answer="Mars.", prompt_tokens=50, completion_tokens=20)


class _RateLimitedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _RateLimited

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        with self.server.lock:
            self.server.requests += 1
        data = json.dumps({"error": {"message": "slow down", "type": "rate"}})
        self.send_response(429)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("retry-after", "0")
        self.end_headers()
        self.wfile.write(data.encode())


class _RateLimited(ThreadingHTTPServer):
    """Answers 429 to every request, and counts them.

    For the embedding tests: ``StubServer`` serves chat completions only
    (``/embeddings`` gets a 404, which the OpenAI SDK never retries).
    """

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RateLimitedHandler)
        self.requests = 0
        self.lock = threading.Lock()

    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[StubServer]:
    monkeypatch.setattr(litellm, "suppress_debug_info", True)
    with StubServer(default=ANSWER) as srv:
        yield srv


@pytest.fixture
def rate_limited(monkeypatch: pytest.MonkeyPatch) -> Iterator[_RateLimited]:
    monkeypatch.setattr(litellm, "suppress_debug_info", True)
    srv = _RateLimited()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def _v1(server: StubServer) -> str:
    """The ``api_base`` of ``server``."""
    return server.base_url + "/v1"


def _embed(server: _RateLimited, how: str, **extra: Any) -> None:
    args: dict[str, Any] = {
        "model": EMBED,
        "input": ["a"],
        "api_base": server.base(),
        "api_key": "sk-test",
        **extra,
    }
    if how == "sync":
        litellm.embedding(**args)
    elif how == "async":
        asyncio.run(litellm.aembedding(**args))
    else:
        router = litellm.Router(
            model_list=[
                {
                    "model_name": "emb",
                    "litellm_params": {
                        "model": EMBED,
                        "api_base": server.base(),
                        "api_key": "sk-test",
                    },
                }
            ],
            num_retries=0,
        )
        if how == "router":
            router.embedding(model="emb", input=["a"], **extra)
        else:
            asyncio.run(router.aembedding(model="emb", input=["a"], **extra))


@pytest.mark.parametrize("how", ["sync", "async", "router", "arouter"])
def test_an_embedding_is_sent_once_per_governed_call(
    rate_limited: _RateLimited, how: str
) -> None:
    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))
    with instrument(gov), gov.task() as task:
        with pytest.raises(litellm.RateLimitError):
            _embed(rate_limited, how)
        assert task.report().calls == 1
    gov.close()
    assert rate_limited.requests == 1


@pytest.mark.parametrize("how", ["sync", "async"])
def test_an_embeddings_own_max_retries_is_kept(
    rate_limited: _RateLimited, how: str
) -> None:
    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))
    with instrument(gov), gov.task():
        with pytest.raises(litellm.RateLimitError):
            _embed(rate_limited, how, max_retries=0)
        assert rate_limited.requests == 1
        with pytest.raises(litellm.RateLimitError):
            _embed(rate_limited, how, max_retries=1)  # above 0: the caller's own
    gov.close()
    assert rate_limited.requests == 1 + 2


def _team_governor(team_usd: str) -> tuple[Governor, ListSpendStore]:
    records = ListSpendStore()
    policy = Policy(budgets=[Budget(max_usd=1), Budget(scope="team", max_usd=team_usd)])
    return Governor(policy, spend=records), records


def test_batch_completion_is_charged_to_the_callers_task(server: StubServer) -> None:
    gov, records = _team_governor("1")
    with instrument(gov), gov.task(team="t") as task:
        answers = litellm.batch_completion(
            model=CHAT,
            messages=[MESSAGES] * 5,
            max_tokens=20,
            api_base=_v1(server),
            api_key="sk-test",
        )
        report = task.report()
    gov.close()
    assert [type(a).__name__ for a in answers] == ["ModelResponse"] * 5
    assert report.calls == 5
    assert report.cost_usd == 5 * ANSWER_USD
    assert [r.team for r in records.records] == ["t"] * 5
    assert len(server.requests) == 5


def test_batch_completion_is_held_by_the_callers_team_budget(
    server: StubServer,
) -> None:
    gov, records = _team_governor("0.0005")  # room for one call, not two
    with instrument(gov), gov.task(team="t"):
        answers = litellm.batch_completion(
            model=CHAT,
            messages=[MESSAGES] * 5,
            max_tokens=20,
            api_base=_v1(server),
            api_key="sk-test",
        )
    gov.close()
    kinds = Counter(type(a).__name__ for a in answers)
    assert kinds == {"ModelResponse": 1, "BudgetExceeded": 4}
    assert len(server.requests) == 1
    charged = [r for r in records.records if r.cost_usd]
    assert [(r.team, r.cost_usd) for r in charged] == [("t", ANSWER_USD)]


@pytest.mark.parametrize(
    "name", ["batch_completion_models", "batch_completion_models_all_responses"]
)
def test_batch_completion_models_are_charged_to_the_callers_task(
    server: StubServer, name: str
) -> None:
    gov, records = _team_governor("1")
    with instrument(gov), gov.task(team="t") as task:
        getattr(litellm, name)(
            models=[CHAT] * 3,
            messages=MESSAGES,
            max_tokens=20,
            api_base=_v1(server),
            api_key="sk-test",
        )
        # batch_completion_models returns the first answer; the others
        # finish before it returns (its thread pool waits for them).
        report = task.report()
    gov.close()
    assert report.calls == 3
    assert [r.team for r in records.records] == ["t"] * 3


def test_batch_completion_models_deployments_follow_each_callers_task(
    server: StubServer,
) -> None:
    gov, records = _team_governor("1")
    deployments = [
        {"model": CHAT, "api_base": _v1(server), "api_key": "sk-test"} for _ in range(2)
    ]
    with instrument(gov):
        for team in ("t1", "t2"):  # the same deployment dicts, twice
            with gov.task(team=team) as task:
                litellm.batch_completion_models(
                    deployments=deployments,
                    model_list=[],
                    messages=MESSAGES,
                    max_tokens=20,
                )
                assert task.report().calls == 2
    gov.close()
    assert [r.team for r in records.records] == ["t1"] * 2 + ["t2"] * 2
    # The caller's dicts are left as given: no runner of an ended task in
    # them for a later call to reuse.
    assert [sorted(d) for d in deployments] == [["api_base", "api_key", "model"]] * 2


def test_batch_completion_outside_a_task_keeps_the_callers_attribution(
    server: StubServer,
) -> None:
    gov, records = _team_governor("1")
    with instrument(gov), attribute(team="t"):
        litellm.batch_completion(
            model=CHAT,
            messages=[MESSAGES] * 2,
            max_tokens=20,
            api_base=_v1(server),
            api_key="sk-test",
        )
    gov.close()
    assert [r.team for r in records.records] == ["t"] * 2


def test_refuse_mode_governs_batch_completion_and_refuses_vllm_batches(
    server: StubServer,
) -> None:
    gov, _ = _team_governor("1")
    with instrument(gov, ungoverned="refuse"), gov.task(team="t") as task:
        litellm.batch_completion(
            model=CHAT,
            messages=[MESSAGES] * 2,
            max_tokens=20,
            api_base=_v1(server),
            api_key="sk-test",
        )
        assert task.report().calls == 2
        with pytest.raises(UngovernedCall, match="batch_completion"):
            litellm.batch_completion(model="vllm/some-model", messages=[MESSAGES])
    gov.close()
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    "name", ["completion_with_retries", "acompletion_with_retries"]
)
def test_completion_with_retries_points_at_governed_retries(
    server: StubServer, name: str
) -> None:
    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))
    with (
        instrument(gov, ungoverned="refuse"),
        pytest.raises(UngovernedCall) as refused,
    ):
        call = getattr(litellm, name)(
            model=CHAT, messages=MESSAGES, api_base=_v1(server), api_key="x"
        )
        if asyncio.iscoroutine(call):
            asyncio.run(call)
    gov.close()
    message = str(refused.value)
    assert "retry loop" in message
    assert "each attempt is governed" in message
    assert "with num_retries=" in message
    assert server.requests == []
