"""Spans reach a real OTLP/HTTP receiver with every cost attribute intact."""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest
from opentelemetry import trace
from opentelemetry.util._once import Once

from conftest import SpanCapture
from governor import Budget, BudgetExceeded, Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM
from governor.telemetry import attributes as attr
from governor.telemetry import configure_tracing, read_spans
from governor.testing._otlp import OtlpReceiver

MESSAGES = [{"role": "user", "content": "Summarise the plot of Hamlet."}]
CALL_COST = 10 * Decimal("0.15e-6") + 20 * Decimal("0.6e-6")


def test_governed_task_arrives_over_otlp_attribute_by_attribute() -> None:
    """A task and its calls are exported over OTLP/HTTP and decode exactly."""
    with OtlpReceiver() as receiver:
        provider = configure_tracing(
            service_name="governor-test", otlp_endpoint=receiver.endpoint
        )
        gov = Governor(
            Policy(budgets=[Budget(max_usd="0.00004")]), tracer_provider=provider
        )
        llm = GovernedLiteLLM(gov)
        with (
            pytest.raises(BudgetExceeded),
            gov.task("otlp-1", team="lit", feature="qa"),
        ):
            for _ in range(5):
                llm.completion(
                    model="gpt-4o-mini",
                    messages=MESSAGES,
                    mock_response="A prince hesitates.",
                    max_tokens=20,
                )
        provider.shutdown()
        calls = receiver.named("chat gpt-4o-mini")
        (task,) = receiver.named("governor.task")

    assert len(calls) == 2
    call = calls[0].attributes
    assert call[attr.GEN_AI_OPERATION_NAME] == "chat"
    assert call[attr.GEN_AI_PROVIDER_NAME] == "openai"
    assert call[attr.GEN_AI_REQUEST_MODEL] == "gpt-4o-mini"
    assert call[attr.GEN_AI_RESPONSE_MODEL] == "gpt-4o-mini"
    assert call[attr.GEN_AI_USAGE_INPUT_TOKENS] == 10
    assert call[attr.GEN_AI_USAGE_OUTPUT_TOKENS] == 20
    assert call[attr.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 0
    assert call[attr.GEN_AI_USAGE_COST_AMOUNT] == float(CALL_COST)
    assert call[attr.GEN_AI_USAGE_COST_CURRENCY] == "USD"
    assert call[attr.GEN_AI_USAGE_COST_SOURCE] == "price_map"
    assert call[attr.LLM_COST_TOTAL] == float(CALL_COST)
    assert call[attr.GEN_AI_USAGE_COST] == float(CALL_COST)
    assert (call[attr.TEAM], call[attr.FEATURE], call[attr.TASK_ID]) == (
        "lit",
        "qa",
        "otlp-1",
    )
    assert [name for name, _ in calls[0].events] == [
        attr.EVENT_RESERVED,
        attr.EVENT_SETTLED,
    ]
    assert task.attributes[attr.TASK_COST_USD] == float(CALL_COST * 2)
    assert task.attributes[attr.TASK_CALLS] == 2
    assert task.attributes[attr.TASK_STOP_REASON] == "budget_exceeded"
    assert [name for name, _ in task.events] == [attr.EVENT_REFUSED]
    assert {c.parent_span_id for c in calls} == {task.span_id}
    assert task.resource["service.name"] == "governor-test"


def test_spans_can_go_to_a_jsonl_file(tmp_path: object) -> None:
    """The JSONL exporter writes spans the CLI can read back."""
    from pathlib import Path

    path = Path(str(tmp_path)) / "spans.jsonl"
    provider = configure_tracing(jsonl_path=path)
    gov = Governor(tracer_provider=provider)
    GovernedLiteLLM(gov).completion(
        model="gpt-4o-mini", messages=MESSAGES, mock_response="x", max_tokens=20
    )
    provider.shutdown()
    spans = read_spans(path)
    names = sorted(s["name"] for s in spans)
    assert names == ["chat gpt-4o-mini", "governor.task"]
    (call,) = [s for s in spans if s["name"].startswith("chat")]
    assert call["attributes"][attr.GEN_AI_USAGE_COST_AMOUNT] == float(CALL_COST)


def test_exporter_failure_never_breaks_a_call() -> None:
    """With the receiver unreachable, governed calls still succeed."""
    provider = configure_tracing(otlp_endpoint="http://127.0.0.1:9/v1/traces")
    gov = Governor(tracer_provider=provider)
    with gov.task() as task:
        GovernedLiteLLM(gov).completion(
            model="gpt-4o-mini", messages=MESSAGES, mock_response="x", max_tokens=20
        )
    provider.force_flush(timeout_millis=2000)
    assert task.report().cost_usd == CALL_COST


@pytest.fixture
def no_global_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenTelemetry's global tracer provider is unset, and is restored after
    the test (the API lets a process set it only once)."""
    monkeypatch.delenv("OTEL_PYTHON_TRACER_PROVIDER", raising=False)
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    monkeypatch.setattr(trace, "_TRACER_PROVIDER_SET_ONCE", Once())


def test_a_global_provider_set_later_traces_the_next_call(
    no_global_provider: None, capture: SpanCapture
) -> None:
    """A Governor built without a tracer provider uses a global one set after
    it from the next call on, not a second later."""
    gov = Governor()
    llm = GovernedLiteLLM(gov)
    for task_id in ("before", "after"):
        if task_id == "after":
            trace.set_tracer_provider(capture.provider)
        with gov.task(task_id):
            llm.completion(
                model="gpt-4o-mini", messages=MESSAGES, mock_response="x", max_tokens=20
            )
    tasks = [s.attributes[attr.TASK_ID] for s in capture.named("governor.task")]
    assert tasks == ["after"]
    (call,) = capture.calls()
    assert call.attributes[attr.TASK_ID] == "after"


@pytest.fixture
def no_service_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Neither OTEL_SERVICE_NAME nor OTEL_RESOURCE_ATTRIBUTES is set."""
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    return monkeypatch


def test_service_name_defaults_to_llm_governor(
    no_service_env: pytest.MonkeyPatch,
) -> None:
    """With nothing set, spans come from the service "llm-governor"."""
    provider = configure_tracing()
    assert provider.resource.attributes["service.name"] == "llm-governor"


def test_otel_service_name_names_the_service(
    no_service_env: pytest.MonkeyPatch,
) -> None:
    """`export OTEL_SERVICE_NAME=my-agent`, as docs/tracing/ says, is obeyed."""
    no_service_env.setenv("OTEL_SERVICE_NAME", "my-agent")
    provider = configure_tracing()
    assert provider.resource.attributes["service.name"] == "my-agent"


def test_a_blank_otel_service_name_is_no_name(
    no_service_env: pytest.MonkeyPatch,
) -> None:
    """OTEL_SERVICE_NAME="  " falls back to the default, not a blank service."""
    no_service_env.setenv("OTEL_SERVICE_NAME", "  ")
    provider = configure_tracing()
    assert provider.resource.attributes["service.name"] == "llm-governor"


def test_resource_attributes_name_the_service(
    no_service_env: pytest.MonkeyPatch,
) -> None:
    """service.name in OTEL_RESOURCE_ATTRIBUTES is used, with the other pairs."""
    no_service_env.setenv(
        "OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs,deployment=prod"
    )
    attributes = configure_tracing().resource.attributes
    assert (attributes["service.name"], attributes["deployment"]) == (
        "from-attrs",
        "prod",
    )


def test_otel_service_name_wins_over_resource_attributes(
    no_service_env: pytest.MonkeyPatch,
) -> None:
    """OTEL_SERVICE_NAME beats service.name in OTEL_RESOURCE_ATTRIBUTES (spec)."""
    no_service_env.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs")
    no_service_env.setenv("OTEL_SERVICE_NAME", "my-agent")
    provider = configure_tracing()
    assert provider.resource.attributes["service.name"] == "my-agent"


def test_explicit_service_name_wins_over_the_environment(
    no_service_env: pytest.MonkeyPatch,
) -> None:
    """configure_tracing(service_name=...) beats OTEL_SERVICE_NAME."""
    no_service_env.setenv("OTEL_SERVICE_NAME", "my-agent")
    provider = configure_tracing(service_name="explicit")
    assert provider.resource.attributes["service.name"] == "explicit"


def test_the_protocol_setting_is_obeyed_or_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """grpc without its exporter and http/json are refused, not sent as HTTP."""
    import importlib.util

    from governor import ConfigError
    from governor.telemetry import configure_metrics

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(ConfigError, match=r"'http/json'.*not supported"):
        configure_tracing()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf")
    configure_metrics().shutdown()  # the per-signal setting wins
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    if importlib.util.find_spec("opentelemetry.exporter.otlp.proto.grpc") is None:
        with pytest.raises(ConfigError, match="pip install opentelemetry-exporter"):
            configure_tracing()
    else:
        configure_tracing().shutdown()


def test_an_endpoint_given_in_code_is_sent_over_http(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """otlp_endpoint= takes an OTLP/HTTP URL whatever the environment asks,
    and says so when the environment asked for another protocol."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with caplog.at_level(logging.INFO, logger="governor.telemetry._setup"):
        provider = configure_tracing(otlp_endpoint="http://127.0.0.1:9/v1/traces")
    provider.shutdown()
    assert [r.getMessage()[:63] for r in caplog.records] == [
        "OTEL_EXPORTER_OTLP_PROTOCOL asks for OTLP 'grpc', but the endpo"
    ]


def test_the_protocol_setting_is_read_in_any_case(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTP/PROTOBUF is http/protobuf; an unknown value in capitals is refused."""
    from governor import ConfigError
    from governor.telemetry import configure_metrics

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "HTTP/PROTOBUF")
    configure_tracing().shutdown()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", " Http/Protobuf ")
    configure_metrics().shutdown()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "HTTP/JSON")
    with pytest.raises(ConfigError, match=r"'HTTP/JSON'.*not supported"):
        configure_tracing()


@pytest.mark.parametrize("interval", [0, -5.0, float("nan"), float("inf"), True, "60"])
def test_an_unusable_metrics_interval_is_refused_with_the_fix(
    interval: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """export_interval_s must be seconds above 0, with or without an endpoint."""
    from governor import ConfigError
    from governor.telemetry import configure_metrics

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(ConfigError, match=r"export_interval_s=.*such as 60\.0"):
        configure_metrics(export_interval_s=interval)  # type: ignore[arg-type]
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    with pytest.raises(ConfigError, match=r"not a number of seconds above 0"):
        configure_metrics(export_interval_s=interval)  # type: ignore[arg-type]
    configure_metrics(export_interval_s=0.5).shutdown()


def test_any_real_number_of_seconds_is_a_metrics_interval() -> None:
    """numpy's integers, fractions and decimals are seconds as well as floats."""
    from fractions import Fraction

    import numpy as np

    from governor.telemetry import configure_metrics

    for interval in (np.int64(30), Fraction(1, 2), Decimal("30"), 30):
        configure_metrics(
            otlp_endpoint="http://127.0.0.1:9/v1/metrics", export_interval_s=interval
        ).shutdown()  # type: ignore[arg-type]
