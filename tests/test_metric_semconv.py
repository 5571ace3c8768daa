"""Call metrics as the GenAI semantic conventions describe them.

A failed call's duration carries ``error.type``, so failures do not merge
with successes; every call metric names its ``gen_ai.operation.name``;
cache hits and refusals carry the team like cost does (savings by team);
``gen_ai.response.finish_reasons`` is a string array.
"""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from conftest import SpanCapture
from governor import Budget, BudgetExceeded, Cache, Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM
from governor.testing import OfflineAnswer, install_offline_provider

CHAT = "offline/gpt-4o-mini"
EMBEDDER = "offline/text-embedding-3-small"
MESSAGES = [{"role": "user", "content": "What is the boiling point of water?"}]
TENANT = {
    "team": "search",
    "feature": "qa",
    "environment": "prod",
    "org": "acme",
    "user": "user-7",
    "session": "sess-7",
    "tags": {"request_id": "req-7"},
}
BOUNDED = {
    "governor.team": "search",
    "governor.feature": "qa",
    "governor.environment": "prod",
    "governor.org": "acme",
}


def points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    found: list[Any] = []
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    found.extend(metric.data.data_points)
    return found


def governor(
    reader: InMemoryMetricReader,
    policy: Policy | None = None,
    capture: SpanCapture | None = None,
) -> Governor:
    return Governor(
        policy,
        meter_provider=MeterProvider(metric_readers=[reader]),
        tracer_provider=capture.provider if capture else None,
    )


def test_a_failed_call_has_its_own_duration_series_with_error_type() -> None:
    """One success, one server error: two series, the failure's with error.type."""
    fail = {"on": False}
    install_offline_provider(
        lambda model, messages, tools: (
            OfflineAnswer(error="server_error") if fail["on"] else None
        ),
        speed=0,
    )
    reader = InMemoryMetricReader()
    llm = GovernedLiteLLM(governor(reader))
    llm.completion(model=CHAT, messages=MESSAGES, max_tokens=20)
    fail["on"] = True
    with pytest.raises(Exception, match="server_error"):
        llm.completion(model=CHAT, messages=MESSAGES, max_tokens=20, num_retries=0)
    series = {
        p.attributes.get("error.type"): dict(p.attributes)
        for p in points(reader, "gen_ai.client.operation.duration")
    }
    assert set(series) == {None, "InternalServerError"}
    assert all(s["gen_ai.operation.name"] == "chat" for s in series.values())
    (cost,) = points(reader, "governor.cost")
    assert "error.type" not in cost.attributes


def test_call_metrics_name_their_operation() -> None:
    """A chat call and an embedding: gen_ai.operation.name tells them apart."""
    install_offline_provider(speed=0)
    reader = InMemoryMetricReader()
    gov = governor(reader)
    llm = GovernedLiteLLM(gov)
    with gov.task():
        llm.completion(model=CHAT, messages=MESSAGES, max_tokens=20)
        llm.embedding(model=EMBEDDER, input="a short text")
    for name in ("governor.cost", "gen_ai.client.operation.duration"):
        operations = {
            p.attributes["gen_ai.request.model"]: p.attributes["gen_ai.operation.name"]
            for p in points(reader, name)
        }
        assert operations == {CHAT: "chat", EMBEDDER: "embeddings"}, name


def test_cache_hits_count_for_the_team_not_the_user() -> None:
    """Savings by team: hits carry team, feature, environment and org."""
    install_offline_provider(speed=0)
    reader = InMemoryMetricReader()
    gov = governor(reader, Policy(cache=Cache(embedder="hashing")))
    llm = GovernedLiteLLM(gov)
    with gov.task(**TENANT):
        for _ in range(3):  # a whole answer: one cut off at max_tokens is not kept
            llm.completion(model=CHAT, messages=MESSAGES, max_tokens=200)
    (hits,) = points(reader, "governor.cache.hits")
    (saved,) = points(reader, "governor.cache.saved")
    assert hits.value == 2
    assert saved.value > 0
    for point in (hits, saved):
        assert dict(point.attributes) == {
            **BOUNDED,
            "gen_ai.request.model": CHAT,
            "gen_ai.operation.name": "chat",
        }


def test_refusals_count_for_the_team_not_the_user() -> None:
    """A refused call counts for its team, with its reason."""
    install_offline_provider(speed=0)
    reader = InMemoryMetricReader()
    gov = governor(reader, Policy(budgets=[Budget(max_usd="0.000001")]))
    with pytest.raises(BudgetExceeded), gov.task(**TENANT):
        GovernedLiteLLM(gov).completion(model=CHAT, messages=MESSAGES, max_tokens=20)
    (point,) = points(reader, "governor.refusals")
    assert dict(point.attributes) == {
        **BOUNDED,
        "gen_ai.request.model": CHAT,
        "reason": "budget_exceeded",
    }


def test_finish_reasons_are_a_string_array(capture: SpanCapture) -> None:
    """gen_ai.response.finish_reasons is a tuple of strings, not a joined one."""
    install_offline_provider(speed=0)
    gov = governor(InMemoryMetricReader(), capture=capture)
    with gov.task():
        GovernedLiteLLM(gov).completion(model=CHAT, messages=MESSAGES, max_tokens=5)
    (call,) = capture.calls()
    assert call.attributes["gen_ai.response.finish_reasons"] == ("length",)
