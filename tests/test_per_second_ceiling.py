"""A model priced per second is held, and kept to, ``Policy.max_call_s``.

Such a call reserves ``max_call_s`` of time before it is sent and is charged
the time it ran. The LiteLLM adapter sends it that limit as its timeout (a
timed-out call is charged its hold), cuts a stream still running past it, and
the engine warns once per model of a call that ran longer all the same.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langgraph.graph import END, START, StateGraph

from governor import (
    Budget,
    BudgetExceeded,
    Governor,
    OutputLimitExceeded,
    Policy,
    Price,
    Pricing,
    govern,
)
from governor.adapters.litellm import GovernedLiteLLM
from governor.testing import (
    StubBehaviour,
    StubServer,
    install_offline_provider,
    offline_model,
)

MAX_CALL_S = 0.3
PER_SECOND = Pricing(overrides={"openai/gpt-4o-mini": Price(usd_per_second="1")})
MESSAGES = [{"role": "user", "content": "hi"}]
ENGINE_LOGGER = "governor._engine"
ADAPTER_LOGGER = "governor.adapters.litellm"


def policy(pricing: Pricing = PER_SECOND, **extra: Any) -> Policy:
    return Policy(max_call_s=MAX_CALL_S, pricing=pricing, **extra)


def stub_params(stub: StubServer) -> dict[str, Any]:
    return {"api_base": stub.base_url + "/v1", "api_key": "sk-test"}


class Recorder:
    """Stands in for ``litellm.completion``: keeps what it was sent."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def completion(self, **kwargs: Any) -> Any:
        import litellm

        self.sent.append(dict(kwargs))
        kwargs.pop("timeout", None)
        return litellm.completion(**kwargs, mock_response="ok")


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        (None, MAX_CALL_S),
        (0.1, 0.1),
        (60, MAX_CALL_S),
        (httpx.Timeout(60.0), MAX_CALL_S),
    ],
)
def test_a_per_second_call_is_sent_max_call_s_as_its_timeout(
    given: Any, sent: float
) -> None:
    """The timeout is max_call_s unless the call set a smaller number; a
    timeout object is replaced (its read timeout is per chunk)."""
    recorder = Recorder()
    gov = Governor(policy())
    llm = GovernedLiteLLM(gov, completion=recorder.completion)
    extra = {} if given is None else {"timeout": given}
    with gov.task():
        llm.completion(model="openai/gpt-4o-mini", messages=MESSAGES, **extra)
    assert recorder.sent[0]["timeout"] == sent


def test_a_call_priced_by_tokens_keeps_its_timeout() -> None:
    """Only a per-second price holds time: a token-priced call is left alone."""
    recorder = Recorder()
    gov = Governor(policy(pricing=Pricing()))
    llm = GovernedLiteLLM(gov, completion=recorder.completion)
    with gov.task():
        llm.completion(model="openai/gpt-4o-mini", messages=MESSAGES)
        llm.completion(model="openai/gpt-4o-mini", messages=MESSAGES, timeout=60)
    assert "timeout" not in recorder.sent[0]
    assert recorder.sent[1]["timeout"] == 60


def test_slow_per_second_calls_time_out_and_the_team_budget_holds() -> None:
    """The user trial's case: calls that run past max_call_s on a team budget.

    Each call holds 0.3 s ($0.30) of the $1 budget, so three run at once and
    the fourth is refused; the provider would take 1 s each. Timed out at
    max_call_s, each is charged its hold and the team stays within $1 (left
    to run, the three would cost $3).
    """
    limit = Decimal("1")
    slow = StubBehaviour(answer="ok", delay_s=1.0)
    with StubServer(default=slow) as stub:
        gov = Governor(policy(budgets=[Budget(scope="team", max_usd=limit)]))
        llm = GovernedLiteLLM(gov)

        def one(_: int) -> tuple[str, Decimal]:
            with gov.task(team="t") as task:
                try:
                    llm.completion(
                        model="openai/gpt-4o-mini",
                        messages=MESSAGES,
                        max_tokens=10,
                        **stub_params(stub),
                    )
                except BudgetExceeded:
                    return "refused", Decimal(0)
                except Exception as exc:
                    return type(exc).__name__, task.report().cost_usd
            return "answered", task.report().cost_usd

        with ThreadPoolExecutor(4) as pool:
            outcomes = list(pool.map(one, range(4)))
    # Each timed out and was charged its hold, 0.3 s at $1 a second.
    assert sorted(outcomes) == [("Timeout", Decimal("0.3"))] * 3 + [
        ("refused", Decimal(0))
    ]
    assert sum(cost for _, cost in outcomes) <= limit


def test_a_per_second_stream_past_max_call_s_is_cut(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stream whose chunks keep coming is closed once it runs past
    max_call_s, charged about that much time, and warned of once (by the
    adapter, not the engine)."""
    words = " ".join(f"w{i}" for i in range(100))  # 2 s at 0.02 s a chunk
    slow = StubBehaviour(answer=words, chunk_delay_s=0.02)
    # The adapter warns once per model in a process: a model of this test's.
    model = f"openai/self-hosted-{uuid.uuid4().hex[:8]}"
    pricing = Pricing(overrides={model: Price(usd_per_second="1")})
    caplog.set_level(logging.WARNING)
    with StubServer(default=slow) as stub:
        gov = Governor(policy(pricing=pricing))
        llm = GovernedLiteLLM(gov)
        texts: list[str] = []
        costs: list[Decimal] = []
        started = time.monotonic()
        for _ in range(2):
            with gov.task() as task:
                stream = llm.completion(
                    model=model,
                    messages=MESSAGES,
                    max_tokens=500,
                    stream=True,
                    **stub_params(stub),
                )
                text = "".join(
                    c.choices[0].delta.content or "" for c in stream if c.choices
                )
            texts.append(text)
            costs.append(task.report().cost_usd)
        took = time.monotonic() - started
    for text, cost in zip(texts, costs, strict=True):
        assert 0 < len(text.split()) < 50  # cut well before its 100 words
        assert Decimal("0.3") < cost < Decimal("0.6")  # about max_call_s
    assert took < 2
    adapter = [r for r in caplog.records if r.name == ADAPTER_LOGGER]
    assert len(adapter) == 1
    assert "Policy.max_call_s (0.3 s)" in adapter[0].getMessage()
    assert "max_tokens" not in adapter[0].getMessage()
    assert not [r for r in caplog.records if r.name == ENGINE_LOGGER]


def test_a_call_past_max_call_s_is_charged_its_time_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A provider that ignores the timeout (the offline one does) runs on:
    the call is charged the time it ran, and the engine says so once."""
    install_offline_provider(lambda m, msgs, t: (time.sleep(0.45), "ok")[1], speed=0)
    model = offline_model("gpt-4o-mini")
    pricing = Pricing(overrides={model: Price(usd_per_second="1")})
    gov = Governor(policy(pricing=pricing))
    llm = GovernedLiteLLM(gov)
    caplog.set_level(logging.WARNING, logger=ENGINE_LOGGER)
    costs = []
    for _ in range(2):
        with gov.task() as task:
            llm.completion(model=model, messages=MESSAGES, max_tokens=10)
        costs.append(task.report().cost_usd)
    assert all(Decimal("0.45") <= cost < Decimal("0.7") for cost in costs)
    warnings = [r for r in caplog.records if r.name == ENGINE_LOGGER]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert model in message
    assert "past Policy.max_call_s (0.3 s)" in message
    assert "Raise max_call_s" in message


class SlowChatModel(BaseChatModel):
    """A LangChain chat model that streams a short answer slowly."""

    words: int = 100
    gap_s: float = 0.02
    chunks_sent: int = 0

    @property
    def _llm_type(self) -> str:
        return "slow"

    def _get_ls_params(self, stop: Any = None, **kwargs: Any) -> Any:
        return {"ls_provider": "openai", "ls_model_name": "gpt-4o"}

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
    ) -> ChatResult:
        message = AIMessage(content="w " * self.words)
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
    ) -> Iterator[ChatGenerationChunk]:
        for _ in range(self.words):
            time.sleep(self.gap_s)
            self.chunks_sent += 1
            yield ChatGenerationChunk(message=AIMessageChunk(content="w "))


def test_a_langgraph_stream_past_max_call_s_is_stopped() -> None:
    """The LangGraph adapter shares the ceiling: a per-second chat model's
    stream is stopped once it runs past max_call_s, and charged about that."""
    model = SlowChatModel()

    def write(state: dict[str, Any]) -> dict[str, Any]:
        return {"text": "".join(str(c.content) for c in model.stream("essay"))}

    builder = StateGraph(dict)
    builder.add_node("write", write)
    builder.add_edge(START, "write")
    builder.add_edge("write", END)
    pricing = Pricing(overrides={"gpt-4o": Price(usd_per_second="1")})
    graph = govern(builder.compile(), Governor(policy(pricing=pricing)))
    with pytest.raises(OutputLimitExceeded) as stopped:
        graph.invoke({"text": ""})
    report = graph.last_report
    assert report is not None
    assert model.chunks_sent < 50  # of 100, 2 s of them
    assert Decimal("0.3") < report.cost_usd < Decimal("0.6")
    # Stopped for time, and said so: not the max_tokens advice.
    assert stopped.value.max_call_s == pytest.approx(0.3)
    assert "max_tokens" not in str(stopped.value)
    assert "Policy.max_call_s" in str(stopped.value)
