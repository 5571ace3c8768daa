"""Cost spans exported over OTLP to a real Arize Phoenix, read back by REST.

Phoenix runs from its own virtual environment, because its dependencies clash
with ours (it pins ``tenacity<9.2``). Point ``GOVERNOR_PHOENIX_VENV`` at one:

    python -m venv "$GOVERNOR_PHOENIX_VENV"
    "$GOVERNOR_PHOENIX_VENV/bin/pip" install arize-phoenix

Without it the tests skip and say so, except under CI (``CI`` set), where they
fail. Phoenix listens on 127.0.0.1 (HTTP 6006, gRPC 4327 when free) with its
data in a temporary folder, telemetry and external resources off.

The task checked is a real governed one: two LiteLLM calls (offline mock
provider) through ``GovernedLiteLLM``, exported over OTLP/HTTP, and over
OTLP/gRPC as ``configure_tracing`` sets it up from ``OTEL_EXPORTER_OTLP_*``
(the ``test`` extra installs opentelemetry-exporter-otlp-proto-grpc).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

pytestmark = pytest.mark.slow

ENV_PHOENIX_VENV = "GOVERNOR_PHOENIX_VENV"
HTTP_PORT, GRPC_PORT = 6006, 4327  # ../shared/NOTES.md section 4
START_TIMEOUT_S = 180.0  # a cold start runs migrations: 10 s idle, 30 s loaded
READ_TIMEOUT_S = 30.0

SpansFactory = Callable[[TracerProvider], None]


def _port(preferred: int) -> int:
    """``preferred`` when nothing listens on it (any interface), else a free one."""
    # Phoenix's gRPC server binds [::], so probe the dual-stack address when
    # the machine has IPv6, else every IPv4 interface.
    family, host = (
        (socket.AF_INET6, "::") if socket.has_ipv6 else (socket.AF_INET, "0.0.0.0")
    )
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, preferred))
            return preferred
        except OSError:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
            return port


def _phoenix_binary() -> Path:
    """The ``phoenix`` script of GOVERNOR_PHOENIX_VENV, or skip (fail under CI)."""
    venv = os.environ.get(ENV_PHOENIX_VENV)
    binary = Path(venv) / "bin" / "phoenix" if venv else None
    if binary is not None and binary.is_file():
        return binary
    reason = (
        f"{ENV_PHOENIX_VENV} is {'unset' if not venv else repr(venv)} or has no "
        "bin/phoenix; create it with: python -m venv DIR && "
        "DIR/bin/pip install arize-phoenix, then set "
        f"{ENV_PHOENIX_VENV}=DIR"
    )
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the Phoenix integration test: {reason}")
    pytest.skip(reason)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.loads(reply.read())


@dataclass(frozen=True)
class Phoenix:
    """A running Phoenix server and how to send spans to it and read them back."""

    url: str
    grpc_port: int

    def export_and_fetch(
        self, spans_factory: SpansFactory, *, project: str | None = None
    ) -> list[dict[str, Any]]:
        """Run ``spans_factory``, export its spans, return what Phoenix stored.

        ``spans_factory`` gets a TracerProvider whose resource routes spans to
        a project of their own; every span it finishes is exported once, and
        the call returns when Phoenix's REST API lists all of them, as the
        API's span dictionaries (``name``, ``context``, ``parent_id``,
        ``span_kind``, ``attributes``...).
        """
        project = project or f"governor-test-{uuid.uuid4().hex[:10]}"
        resource = Resource.create(
            {
                "service.name": "llm-governor-tests",
                "openinference.project.name": project,
            }
        )
        captured = InMemorySpanExporter()
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(SimpleSpanProcessor(captured))
        try:
            spans_factory(provider)
        finally:
            provider.shutdown()
        finished = captured.get_finished_spans()
        exporter = OTLPSpanExporter(endpoint=f"{self.url}/v1/traces", timeout=10)
        result = exporter.export(finished)
        exporter.shutdown()
        assert result is SpanExportResult.SUCCESS
        wanted = {format(span.context.span_id, "016x") for span in finished}
        return self.read_back(project, wanted)

    def read_back(self, project: str, wanted: set[str]) -> list[dict[str, Any]]:
        """The spans of ``project`` whose span IDs are ``wanted``, once all are in."""
        url = f"{self.url}/v1/projects/{project}/spans?limit=1000"
        deadline = time.monotonic() + READ_TIMEOUT_S
        found: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            try:
                found = _get_json(url)["data"]
            except urllib.error.HTTPError as exc:
                if exc.code != 404:  # 404 until the project's first span lands
                    raise
            if wanted <= {span["context"]["span_id"] for span in found}:
                return [s for s in found if s["context"]["span_id"] in wanted]
            time.sleep(0.2)
        raise AssertionError(f"Phoenix listed {len(found)} of {len(wanted)} spans")


def _wait_until_healthy(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            pytest.fail(f"Phoenix exited with {process.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"Phoenix did not answer {url}/healthz in {START_TIMEOUT_S} s")


@pytest.fixture(scope="session")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Phoenix]:
    """A Phoenix server on 127.0.0.1 with a throwaway working folder."""
    binary = _phoenix_binary()
    work = tmp_path_factory.mktemp("phoenix")
    http_port, grpc_port = _port(HTTP_PORT), _port(GRPC_PORT)
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    env.update(
        PHOENIX_HOST="127.0.0.1",
        PHOENIX_PORT=str(http_port),
        # Phoenix binds gRPC on every interface whatever PHOENIX_HOST says.
        PHOENIX_GRPC_PORT=str(grpc_port),
        PHOENIX_WORKING_DIR=str(work),
        PHOENIX_TELEMETRY_ENABLED="false",
        PHOENIX_ALLOW_EXTERNAL_RESOURCES="false",
    )
    log_path = work / "phoenix.log"
    url = f"http://127.0.0.1:{http_port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(binary), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            _wait_until_healthy(process, url, log_path)
            yield Phoenix(url, grpc_port)
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# litellm's offline mock reports 10 input and 20 output tokens per call, which
# gpt-4o-mini prices at $0.15 / $0.60 per million: $0.0000135 a call.
CALL_COST_USD = 0.0000135
COMMON = {
    "governor.task.id": "task-phoenix-1",
    "governor.team": "search",
    "governor.feature": "answers",
    "governor.environment": "ci",
}
CALL_ATTRIBUTES: dict[str, Any] = {
    **COMMON,
    "gen_ai.operation.name": "chat",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.response.model": "gpt-4o-mini",
    "gen_ai.provider.name": "openai",
    "gen_ai.usage.input_tokens": 10,
    "gen_ai.usage.output_tokens": 20,
    "gen_ai.usage.cost.amount": CALL_COST_USD,
    "gen_ai.usage.cost.currency": "USD",
    "gen_ai.usage.cost.source": "price_map",
    "llm.cost.total": CALL_COST_USD,
    "gen_ai.usage.cost": CALL_COST_USD,
}
TASK_ATTRIBUTES: dict[str, Any] = {
    **COMMON,
    "governor.task.cost_usd": 2 * CALL_COST_USD,
    "governor.task.tokens": 60,
    "governor.task.calls": 2,
    "governor.task.stop_reason": "completed",
}


def governed_task(provider: TracerProvider) -> None:
    """A real governed task: two LiteLLM calls through the governor."""
    from governor import Attribution, Governor, Policy
    from governor.adapters.litellm import GovernedLiteLLM

    attribution = Attribution(team="search", feature="answers", environment="ci")
    gov = Governor(Policy(attribution=attribution), tracer_provider=provider)
    llm = GovernedLiteLLM(gov)
    with gov.task("task-phoenix-1"):
        for _ in range(2):
            llm.completion(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "Where is the Louvre?"}],
                mock_response="In Paris.",
                max_tokens=50,
            )


@pytest.fixture(scope="module")
def stored(phoenix: Phoenix) -> dict[str, list[dict[str, Any]]]:
    """The governed task as Phoenix stored it, spans grouped by name."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in phoenix.export_and_fetch(governed_task):
        by_name.setdefault(span["name"], []).append(span)
    return by_name


def test_call_cost_attributes_come_back_unchanged(
    stored: dict[str, list[dict[str, Any]]],
) -> None:
    """Every cost and attribution attribute of a call span reads back as sent."""
    for span in stored["chat gpt-4o-mini"]:
        got = {key: span["attributes"].get(key) for key in CALL_ATTRIBUTES}
        assert got == CALL_ATTRIBUTES


def test_task_totals_come_back_unchanged(
    stored: dict[str, list[dict[str, Any]]],
) -> None:
    """The governor.task span keeps its cost, tokens, calls and stop reason."""
    (task,) = stored["governor.task"]
    got = {key: task["attributes"].get(key) for key in TASK_ATTRIBUTES}
    assert got == TASK_ATTRIBUTES


def test_call_costs_add_up_to_the_task_cost(
    stored: dict[str, list[dict[str, Any]]],
) -> None:
    """In the backend, the calls' costs sum to the task's cost."""
    calls = stored["chat gpt-4o-mini"]
    (task,) = stored["governor.task"]
    total = sum(
        Decimal(str(c["attributes"]["gen_ai.usage.cost.amount"])) for c in calls
    )
    assert total == Decimal(str(task["attributes"]["governor.task.cost_usd"]))


def test_calls_are_children_of_the_task(
    stored: dict[str, list[dict[str, Any]]],
) -> None:
    """Both call spans hang under the task span in the same trace."""
    (task,) = stored["governor.task"]
    parents = {
        (c["parent_id"], c["context"]["trace_id"]) for c in stored["chat gpt-4o-mini"]
    }
    assert parents == {(task["context"]["span_id"], task["context"]["trace_id"])}


def test_phoenix_shows_calls_as_llm_spans(
    stored: dict[str, list[dict[str, Any]]],
) -> None:
    """gen_ai attributes alone make Phoenix list the calls as LLM spans with tokens."""
    kinds = {
        (c["span_kind"], c["attributes"].get("llm.token_count.total"))
        for c in stored["chat gpt-4o-mini"]
    }
    assert kinds == {("LLM", 30)}


class _ErrorRecords(logging.Handler):
    """Keeps the ERROR records logged to it: an OTLP exporter's failed exports."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _grpc_environment(
    monkeypatch: pytest.MonkeyPatch, grpc_port: int, project: str
) -> None:
    """The variables docs/tracing/README.md gives gRPC users, and a project."""
    for name in (
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
        "OTEL_EXPORTER_OTLP_INSECURE",
        "GOVERNOR_TRACES_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{grpc_port}")
    # Seconds (exporter 1.45): a broken export fails the test in about 5 s.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "5")
    monkeypatch.setenv(
        "OTEL_RESOURCE_ATTRIBUTES", f"openinference.project.name={project}"
    )


def test_grpc_export_from_the_environment_keeps_the_costs(
    phoenix: Phoenix, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OTEL_EXPORTER_OTLP_PROTOCOL=grpc, as Jaeger and Tempo users set it, sends
    the task's spans over OTLP/gRPC through configure_tracing, costs unchanged."""
    from governor.telemetry import configure_tracing

    project = f"governor-grpc-{uuid.uuid4().hex[:10]}"
    _grpc_environment(monkeypatch, phoenix.grpc_port, project)
    captured = InMemorySpanExporter()
    errors = _ErrorRecords()
    otlp_logger = logging.getLogger("opentelemetry.exporter.otlp")
    otlp_logger.addHandler(errors)
    try:
        provider = configure_tracing(exporters=[captured])
        try:
            governed_task(provider)
        finally:
            provider.shutdown()  # the batch processors export what they hold
    finally:
        otlp_logger.removeHandler(errors)
    assert not errors.records, f"OTLP/gRPC export: {errors.records[0].getMessage()}"
    finished = captured.get_finished_spans()
    wanted = {format(span.context.span_id, "016x") for span in finished}
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in phoenix.read_back(project, wanted):
        by_name.setdefault(span["name"], []).append(span)
    calls, (task,) = by_name["chat gpt-4o-mini"], by_name["governor.task"]
    assert [{k: c["attributes"].get(k) for k in CALL_ATTRIBUTES} for c in calls] == [
        CALL_ATTRIBUTES,
        CALL_ATTRIBUTES,
    ]
    assert {k: task["attributes"].get(k) for k in TASK_ATTRIBUTES} == TASK_ATTRIBUTES
