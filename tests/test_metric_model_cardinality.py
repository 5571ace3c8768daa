"""Metrics name a bounded number of models; spans and events keep the name.

The model is as the caller sends it: a gateway passing client-chosen names,
per-job fine-tune ids priced by ``Pricing(default=...)`` or many refused
unknown models made a series each, passed the SDK's cardinality limit, and
sent every later point, whatever its team, to one overflow series. Past the
cap (lowered here to 3) new models are counted as ``other``.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from conftest import SpanCapture
from governor import BudgetExceeded, Governor, Policy, PriceUnknown
from governor.adapters.litellm import GovernedLiteLLM
from governor.policies import Budget, Price, Pricing
from governor.telemetry import _tracing
from governor.telemetry import attributes as attr

MESSAGES = [{"role": "user", "content": "hi"}]
JOB = "openai/ft:gpt-4o-mini:acme:job-{}"
# litellm's mock reports 10 prompt and 20 completion tokens: at 1 and 2 USD
# per million tokens, a call costs 50,000 nano-USD.
CALL_USD = 50_000 / 1_000_000_000
DEFAULT_PRICE = Pricing(default=Price(input_usd_per_mtok=1, output_usd_per_mtok=2))
WARNED = "Spans still carry the full model name"


@pytest.fixture(autouse=True)
def three_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_tracing, "METRIC_MODELS_MAX", 3)


def governed(
    policy: Policy, reader: InMemoryMetricReader, capture: SpanCapture
) -> tuple[Governor, GovernedLiteLLM]:
    gov = Governor(
        policy,
        meter_provider=MeterProvider(metric_readers=[reader]),
        tracer_provider=capture.provider,
    )
    return gov, GovernedLiteLLM(gov)


def series(reader: InMemoryMetricReader, name: str) -> dict[tuple[Any, ...], Any]:
    """A metric's points by (model, team[, token type]): sum or count."""
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[tuple[Any, ...], Any] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != name:
                    continue
                for point in metric.data.data_points:
                    labels = point.attributes
                    key = (labels[attr.GEN_AI_REQUEST_MODEL], labels[attr.TEAM])
                    if "gen_ai.token.type" in labels:
                        key += (labels["gen_ai.token.type"],)
                    found[key] = getattr(point, "value", None) or point.count
    return found


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and WARNED in r.getMessage()
    ]


def test_models_past_the_cap_are_other_with_their_team(
    capture: SpanCapture, caplog: pytest.LogCaptureFixture
) -> None:
    """Fine-tune ids at a default price: the 4th model on is ``other``, each
    point keeps its team, the sums are whole, and the spans keep the name."""
    reader = InMemoryMetricReader()
    gov, llm = governed(Policy(pricing=DEFAULT_PRICE), reader, capture)
    teams = ["a", "a", "b", "b", "c", "c", "a"]
    models = [JOB.format(i) for i in range(6)] + [JOB.format(0)]
    with caplog.at_level(logging.WARNING, logger="governor"):
        for team, model in zip(teams, models, strict=True):
            with gov.task(team=team):
                llm.completion(
                    model=model, messages=MESSAGES, mock_response="ok", max_tokens=10
                )
    gov.close()
    first = JOB.format(0), JOB.format(1), JOB.format(2)
    assert series(reader, "governor.cost") == {
        (first[0], "a"): 2 * CALL_USD,
        (first[1], "a"): CALL_USD,
        (first[2], "b"): CALL_USD,
        ("other", "b"): CALL_USD,
        ("other", "c"): 2 * CALL_USD,
    }
    assert series(reader, "governor.tokens")[("other", "c", "input")] == 20
    assert series(reader, "governor.tokens")[("other", "c", "output")] == 40
    durations = series(reader, "gen_ai.client.operation.duration")
    assert sorted(durations.items()) == [
        ((first[0], "a"), 2),
        ((first[1], "a"), 1),
        ((first[2], "b"), 1),
        (("other", "b"), 1),
        (("other", "c"), 2),
    ]
    spans = Counter(s.attributes[attr.GEN_AI_REQUEST_MODEL] for s in capture.calls())
    assert spans == Counter(models)
    (warned,) = warnings_of(caplog)
    assert "metrics have named 3 distinct models" in warned
    assert repr(JOB.format(3)) in warned
    assert "gen_ai.request.model='other'" in warned


def test_refused_unknown_models_are_bounded_and_named_on_the_task(
    capture: SpanCapture, caplog: pytest.LogCaptureFixture
) -> None:
    """Unpriced models: refusals past the cap count as ``other`` for their
    team, and each task span has a refused event naming the model."""
    reader = InMemoryMetricReader()
    gov, llm = governed(Policy(), reader, capture)
    with caplog.at_level(logging.WARNING, logger="governor"):
        for i in range(5):
            with pytest.raises(PriceUnknown), gov.task(team="r" if i < 4 else "good"):
                llm.completion(
                    model=f"client-supplied-{i}",
                    messages=MESSAGES,
                    mock_response="ok",
                    max_tokens=10,
                )
    gov.close()
    assert series(reader, "governor.refusals") == {
        ("client-supplied-0", "r"): 1,
        ("client-supplied-1", "r"): 1,
        ("client-supplied-2", "r"): 1,
        ("other", "r"): 1,
        ("other", "good"): 1,
    }
    tasks = sorted(capture.named("governor.task"), key=lambda s: s.start_time or 0)
    events = [[(e.name, dict(e.attributes or {})) for e in s.events] for s in tasks]
    assert events == [
        [
            (
                attr.EVENT_REFUSED,
                {"model": f"client-supplied-{i}", "reason": "price_unknown"},
            )
        ]
        for i in range(5)
    ]
    assert not capture.calls()
    assert len(warnings_of(caplog)) == 1


def test_budget_refusal_event_names_its_reason(capture: SpanCapture) -> None:
    """The budget refusal's event carries the same ``reason`` key."""
    reader = InMemoryMetricReader()
    policy = Policy(budgets=[Budget(max_usd="0.000001")])
    gov, llm = governed(policy, reader, capture)
    with pytest.raises(BudgetExceeded), gov.task(team="a"):
        llm.completion(
            model="gpt-4o-mini", messages=MESSAGES, mock_response="ok", max_tokens=10
        )
    gov.close()
    ((name, facts),) = [
        (e.name, dict(e.attributes or {})) for e in capture.task().events
    ]
    assert (name, facts["reason"], facts["model"]) == (
        attr.EVENT_REFUSED,
        "budget_exceeded",
        "gpt-4o-mini",
    )


def test_label_sets_share_one_entry_past_the_cap(capture: SpanCapture) -> None:
    """The per-model cache of metric labels grows with the named models only."""
    reader = InMemoryMetricReader()
    gov, llm = governed(Policy(pricing=DEFAULT_PRICE), reader, capture)
    with gov.task(team="a"):
        for i in range(8):
            llm.completion(
                model=JOB.format(i),
                messages=MESSAGES,
                mock_response="ok",
                max_tokens=10,
            )
    gov.close()
    models = {key[1] for key in gov._label_sets}
    assert models == {JOB.format(0), JOB.format(1), JOB.format(2), "other"}
    assert series(reader, "governor.cost")[("other", "a")] == 5 * CALL_USD
