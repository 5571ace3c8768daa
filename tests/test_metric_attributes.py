"""Metric points carry bounded attributes only, and no zero cost points.

Users, sessions and tags take a value per person or request: as metric
attributes they made a series each, passed the SDK's cardinality limit and
sent every later point, whatever its team, to one overflow series. Spans
keep them.
"""

from __future__ import annotations

from typing import Any, Literal

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from conftest import SpanCapture
from governor import Governor
from governor.adapters.litellm import GovernedLiteLLM
from governor.telemetry import Telemetry
from governor.testing import OfflineAnswer, install_offline_provider

MODEL = "offline/gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Summarise the meeting notes."}]


def metrics(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    found: dict[str, Any] = {}
    if data is None:
        return found
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found[metric.name] = metric
    return found


def points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    metric = metrics(reader).get(name)
    return list(metric.data.data_points) if metric else []


def governed(
    reader: InMemoryMetricReader, capture: SpanCapture | None = None
) -> tuple[Governor, GovernedLiteLLM]:
    gov = Governor(
        meter_provider=MeterProvider(metric_readers=[reader]),
        tracer_provider=capture.provider if capture else None,
    )
    return gov, GovernedLiteLLM(gov)


def test_metrics_leave_out_users_sessions_and_tags(capture: SpanCapture) -> None:
    """Five users of one team: one series per metric, the spans keep the user."""
    install_offline_provider(speed=0)
    reader = InMemoryMetricReader()
    gov, llm = governed(reader, capture)
    for i in range(5):
        with gov.task(
            team="search",
            feature="qa",
            environment="prod",
            org="acme",
            user=f"user-{i}",
            session=f"sess-{i}",
            tags={"request_id": f"req-{i}"},
        ):
            llm.completion(model=MODEL, messages=MESSAGES, max_tokens=5)
    bounded = {
        "gen_ai.request.model": MODEL,
        "gen_ai.provider.name": "openai",
        "governor.team": "search",
        "governor.feature": "qa",
        "governor.environment": "prod",
        "governor.org": "acme",
    }
    for name in ("governor.cost", "gen_ai.client.operation.duration"):
        (point,) = points(reader, name)
        labels = {k: v for k, v in point.attributes.items() if k in bounded}
        assert labels == bounded, name
        assert not {"governor.user", "governor.session"} & set(point.attributes)
        assert not any(k.startswith("governor.tag.") for k in point.attributes)
    kinds = [
        p.attributes["gen_ai.token.type"] for p in points(reader, "governor.tokens")
    ]
    assert sorted(kinds) == ["input", "output"]
    users = {s.attributes.get("governor.user") for s in capture.calls()}
    assert users == {f"user-{i}" for i in range(5)}


def test_duration_uses_the_semantic_conventions_buckets() -> None:
    """0.01 s doubling to 81.92 s, not the SDK's defaults (0, 5, 10, 25, ... s)."""
    install_offline_provider(speed=0)
    reader = InMemoryMetricReader()
    gov, llm = governed(reader)
    with gov.task():
        llm.completion(model=MODEL, messages=MESSAGES, max_tokens=5)
    (point,) = points(reader, "gen_ai.client.operation.duration")
    assert list(point.explicit_bounds) == [
        0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
        40.96, 81.92,
    ]  # fmt: skip


def failing(kind: Literal["server_error", "timeout"]) -> None:
    install_offline_provider(
        lambda model, messages, tools: OfflineAnswer(error=kind), speed=0
    )


def test_a_failed_call_charged_nothing_adds_no_cost_or_token_points() -> None:
    """A refused request (server error) bills nothing: only its duration counts."""
    failing("server_error")
    reader = InMemoryMetricReader()
    gov, llm = governed(reader)
    with pytest.raises(Exception, match="server_error"), gov.task(team="search"):
        llm.completion(model=MODEL, messages=MESSAGES, max_tokens=20, num_retries=0)
    assert points(reader, "governor.cost") == []
    assert points(reader, "governor.tokens") == []
    (duration,) = points(reader, "gen_ai.client.operation.duration")
    assert duration.count == 1


def test_a_call_charged_its_hold_counts_its_cost(capture: SpanCapture) -> None:
    """A timed-out request may be billed in full: its hold is counted (the
    prompt as counted, which the reservation may have bounded higher)."""
    failing("timeout")
    reader = InMemoryMetricReader()
    gov, llm = governed(reader, capture)
    with pytest.raises(Exception, match="timeout"), gov.task(team="search"):
        llm.completion(model=MODEL, messages=MESSAGES, max_tokens=20, num_retries=0)
    (call,) = capture.calls()
    charged = call.attributes["gen_ai.usage.cost.amount"]
    assert 0 < charged <= call.attributes["governor.call.reserved_usd"]
    assert call.attributes["gen_ai.usage.output_tokens"] == 20
    (cost,) = points(reader, "governor.cost")
    assert cost.value > 0
    assert cost.value == pytest.approx(charged)
    tokens = sum(p.value for p in points(reader, "governor.tokens"))
    assert (
        tokens
        == call.attributes["gen_ai.usage.input_tokens"]
        + (call.attributes["gen_ai.usage.output_tokens"])
    )


def test_record_call_puts_error_type_on_the_duration_only() -> None:
    """error.type keeps failed calls' durations apart; unbounded labels go."""
    reader = InMemoryMetricReader()
    telemetry = Telemetry(meter_provider=MeterProvider(metric_readers=[reader]))
    labels = {
        "gen_ai.request.model": "m",
        "governor.user": "u-1",
        "governor.tag.x": "1",
    }
    telemetry.record_call(
        labels, cost_usd=0.5, input_tokens=3, output_tokens=0, duration_s=0.2
    )
    telemetry.record_call(
        labels,
        cost_usd=0.0,
        input_tokens=0,
        output_tokens=0,
        duration_s=0.1,
        error=TimeoutError("slow"),
    )
    durations = {
        p.attributes.get("error.type"): p.count
        for p in points(reader, "gen_ai.client.operation.duration")
    }
    assert durations == {None: 1, "TimeoutError": 1}
    (cost,) = points(reader, "governor.cost")
    assert dict(cost.attributes) == {"gen_ai.request.model": "m"}
    assert cost.value == 0.5
    (tokens,) = points(reader, "governor.tokens")
    assert dict(tokens.attributes) == {
        "gen_ai.request.model": "m",
        "gen_ai.token.type": "input",
    }


def test_task_stops_description_covers_errors() -> None:
    """A task ended by an exception counts as error:<ExceptionClass>."""
    install_offline_provider(speed=0)
    reader = InMemoryMetricReader()
    gov, llm = governed(reader)
    with pytest.raises(KeyError), gov.task():
        llm.completion(model=MODEL, messages=MESSAGES, max_tokens=5)
        raise KeyError("caller's own bug")
    (point,) = points(reader, "governor.task.stops")
    assert point.attributes["reason"] == "error:KeyError"
    description = metrics(reader)["governor.task.stops"].description
    assert "error:<ExceptionClass>" in description
    assert "closed" in description
    assert "cancelled" in description


class _UsersOwn(RuntimeError):
    """A user's private error: shown by its own name."""


def test_a_private_error_is_shown_by_its_public_class(capture: SpanCapture) -> None:
    """Spans and metrics name the first public class of the governor's own
    private errors: one label per kind, whichever adapter ended the call."""
    from governor.adapters.langgraph import _Abandoned, _RunEnded

    reader = InMemoryMetricReader()
    telemetry = Telemetry(
        capture.provider, meter_provider=MeterProvider(metric_readers=[reader])
    )
    errors = (_Abandoned(), _RunEnded("t-1"), KeyError("k"), _UsersOwn("x"))
    for error in errors:
        span = telemetry.start_span("chat m", None, {})
        telemetry.end_span(span, {}, error)
        telemetry.record_call(
            {},
            cost_usd=0.0,
            input_tokens=0,
            output_tokens=0,
            duration_s=0.1,
            error=error,
        )

    statuses = [span.status.description for span in capture.spans]
    assert statuses == ["CancelledError", "RuntimeError", "KeyError", "_UsersOwn"]
    types = [span.events[0].attributes["exception.type"] for span in capture.spans]
    assert types == [
        "asyncio.exceptions.CancelledError",
        "RuntimeError",
        "KeyError",
        f"{__name__}._UsersOwn",
    ]
    durations = {
        p.attributes.get("error.type"): p.count
        for p in points(reader, "gen_ai.client.operation.duration")
    }
    assert durations == {
        "CancelledError": 1,
        "RuntimeError": 1,
        "KeyError": 1,
        "_UsersOwn": 1,
    }
