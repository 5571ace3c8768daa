"""A model call made inside another governed call, on its thread or task: a
LiteLLM callback or a custom provider calling a model. It is governed (reserved
and charged) and takes no fan-out slot; the call a governed wrapper hands on
to an instrumented LiteLLM is not governed twice."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import litellm
import pytest
from litellm.integrations.custom_logger import CustomLogger

from governor import Budget, Fanout, Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM, instrument
from governor.testing import (
    StubBehaviour,
    StubServer,
    install_offline_provider,
    offline_model,
)

MODEL = "gpt-4o-mini"
ONE_SLOT = Fanout(max_inflight_calls=1, wait_timeout_s=2)


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer({MODEL: StubBehaviour(answer="fine")}) as server:
        yield server


class _Moderator(CustomLogger):  # type: ignore[misc]  # litellm is untyped
    """A pre-call guardrail that asks the model about each request first."""

    def __init__(self, base: dict[str, Any]) -> None:
        super().__init__()
        self.base = base

    def log_pre_api_call(self, model: str, messages: Any, kwargs: Any) -> None:
        if "moderate" not in str(messages):
            litellm.completion(
                model=f"openai/{MODEL}",
                max_tokens=20,
                messages=[{"role": "user", "content": "moderate: " + str(messages)}],
                **self.base,
            )


@pytest.fixture
def callbacks_put_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """LiteLLM copies ``litellm.callbacks`` into its per-event lists on the
    first call: every list is put back, or the guardrail would run later."""
    for name in [n for n in dir(litellm) if n.endswith("callback")] + ["callbacks"]:
        monkeypatch.setattr(litellm, name, list(getattr(litellm, name)))


@pytest.mark.usefixtures("callbacks_put_back")
def test_a_guardrail_s_model_call_is_charged_and_takes_no_slot(
    stub: StubServer,
) -> None:
    base = {"api_base": stub.base_url + "/v1", "api_key": "sk-test"}
    litellm.callbacks = [_Moderator(base)]
    policy = Policy(fanout=ONE_SLOT, budgets=[Budget(max_usd="1")])
    gov = Governor(policy)
    with instrument(gov), gov.task() as task:
        for i in range(3):
            litellm.completion(
                model=f"openai/{MODEL}",
                max_tokens=20,
                messages=[{"role": "user", "content": f"q{i}"}],
                **base,
            )
    report = task.report()
    assert (len(stub.requests), report.calls) == (6, 6)
    assert report.cost_usd > Decimal(0)


def test_a_provider_that_calls_a_model_is_charged_for_both() -> None:
    """The offline provider's responder asks another model, as a custom
    provider that delegates would."""

    def responder(model: str, messages: list[dict[str, Any]], tools: Any) -> Any:
        if messages[-1]["content"] == "outer":
            inner = litellm.completion(
                model=offline_model("gpt-4o"),
                max_tokens=5,
                messages=[{"role": "user", "content": "inner"}],
            )
            return "outer answer, after " + inner.choices[0].message.content
        return None

    provider = install_offline_provider(responder, speed=0)
    provider.clear_calls()
    gov = Governor(Policy(fanout=ONE_SLOT))
    try:
        with instrument(gov), gov.task() as task:
            litellm.completion(
                model=offline_model(MODEL),
                max_tokens=5,
                messages=[{"role": "user", "content": "outer"}],
            )
    finally:
        install_offline_provider(speed=0)  # no responder for later tests
    assert (len(provider.calls), task.report().calls) == (2, 2)


def test_a_governed_wrapper_under_instrument_is_one_call_each() -> None:
    install_offline_provider(speed=0)
    gov = Governor(Policy(fanout=ONE_SLOT))
    llm = GovernedLiteLLM(gov)
    messages = [{"role": "user", "content": "hi"}]
    with instrument(gov), gov.task() as task:
        llm.completion(model=offline_model(MODEL), max_tokens=5, messages=messages)
        asyncio.run(
            llm.acompletion(model=offline_model(MODEL), max_tokens=5, messages=messages)
        )
        llm.embedding(model=offline_model("text-embedding-3-small"), input=["a text"])
    assert task.report().calls == 3
