"""A blocked scope refuses every call charged to it, however it is named."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from governor import Governor, Policy, ScopeBlocked
from governor.adapters.litellm import GovernedLiteLLM
from governor.spend import open_store
from governor.testing import install_offline_provider

MESSAGES = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(autouse=True)
def offline() -> None:
    install_offline_provider(lambda model, messages, tools: "red", speed=0)


def _blocked(scope: str) -> tuple[Governor, GovernedLiteLLM]:
    gov = Governor(Policy())
    gov.apply_tighten(SimpleNamespace(scope=scope, mode="block", factor=0.5))
    return gov, GovernedLiteLLM(gov)


def _ask(llm: GovernedLiteLLM, **kwargs: Any) -> Any:
    return llm.completion(messages=MESSAGES, max_tokens=5, **kwargs)


def test_a_user_named_in_call_metadata_inside_a_task_is_blocked() -> None:
    """One task per request, the tenant named per call: its block holds."""
    gov, llm = _blocked("user:mallory")

    with gov.task(team="web"), pytest.raises(ScopeBlocked) as refused:
        _ask(llm, model="offline/gpt-4o-mini", metadata={"user": "mallory"})

    assert refused.value.scope == "user:mallory"
    with gov.task(team="web"):
        _ask(llm, model="offline/gpt-4o-mini", metadata={"user": "alice"})


def test_a_blocked_model_refuses_its_calls_only() -> None:
    gov, llm = _blocked("model:offline/gpt-4o")

    with gov.task(), pytest.raises(ScopeBlocked) as refused:
        _ask(llm, model="offline/gpt-4o")

    assert refused.value.scope == "model:offline/gpt-4o"
    with gov.task():
        _ask(llm, model="offline/gpt-4o-mini")


def test_a_blocked_provider_refuses_its_calls(tmp_path: Path) -> None:
    """Blocked under the provider its spend records name, as the monitor does."""
    spend = tmp_path / "spend.jsonl"
    gov = Governor(Policy(), spend=spend)
    llm = GovernedLiteLLM(gov)
    with gov.task():
        _ask(llm, model="offline/gpt-4o-mini")
    gov.flush()
    (record,) = open_store(spend, existing=True).query()
    provider = record.provider
    assert provider is not None
    gov.apply_tighten(
        SimpleNamespace(scope=f"provider:{provider}", mode="block", factor=0.5)
    )

    with gov.task(), pytest.raises(ScopeBlocked) as refused:
        _ask(llm, model="offline/gpt-4o-mini")

    assert refused.value.scope == f"provider:{provider}"


@pytest.mark.parametrize(
    ("blocked", "asked"),
    [
        ("model:gpt-4o-mini", "openai/gpt-4o-mini"),
        ("model:openai/gpt-4o-mini", "gpt-4o-mini"),
    ],
)
def test_a_blocked_model_holds_with_or_without_its_provider_prefix(
    blocked: str, asked: str
) -> None:
    """The monitor names a model as it was asked for; a block on one spelling
    holds for the other, which LiteLLM sends to the same model."""
    gov, llm = _blocked(blocked)

    with gov.task(), pytest.raises(ScopeBlocked) as refused:
        _ask(llm, model=asked, mock_response="red")

    assert refused.value.scope == blocked
    with gov.task() as task:
        _ask(llm, model="openai/gpt-4o", mock_response="red")
    assert task.report().calls == 1


def test_a_block_on_a_bare_model_leaves_another_providers_deployment() -> None:
    """``azure/gpt-4o`` is an Azure deployment, not OpenAI's ``gpt-4o``: a
    block on the one does not refuse calls to the other."""
    gov, llm = _blocked("model:gpt-4o")

    with gov.task() as task:
        _ask(
            llm,
            model="azure/gpt-4o",
            mock_response="red",
            api_key="k",
            api_base="http://127.0.0.1:9",
            api_version="2024-06-01",
        )
    assert task.report().calls == 1
    with gov.task(), pytest.raises(ScopeBlocked):
        _ask(llm, model="openai/gpt-4o", mock_response="red")
