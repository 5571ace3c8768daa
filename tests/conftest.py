"""Shared fixtures: offline LiteLLM, in-memory span capture, a governor."""

from __future__ import annotations

import os
import socket

# Before anything imports litellm: price from the bundled map, never fetch it.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("GOVERNOR_OFFLINE_SPEED", "0")

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

pytest_plugins = ["_redis_fixtures"]


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class SpanCapture:
    """Finished spans of one test, with lookups by name."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    @property
    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, prefix: str) -> list[ReadableSpan]:
        return [s for s in self.spans if s.name.startswith(prefix)]

    def calls(self) -> list[ReadableSpan]:
        return [s for s in self.spans if s.name.startswith("chat ")]

    def task(self) -> ReadableSpan:
        (span,) = self.named("governor.task")
        return span


@pytest.fixture
def capture() -> Iterator[SpanCapture]:
    """An in-memory span exporter wired into a tracer provider."""
    capture = SpanCapture()
    yield capture
    capture.provider.shutdown()


# litellm's non-stream mock always reports 10 prompt and 20 completion tokens;
# this is their cost at gpt-4o-mini's prices.
MOCK_COST = Decimal(10) * Decimal("0.15e-6") + Decimal(20) * Decimal("0.6e-6")


class CountingLiteLLM:
    """Real litellm.completion, counting how many requests were sent."""

    def __init__(self) -> None:
        self.sent = 0

    def completion(self, **kwargs: Any) -> Any:
        import litellm

        self.sent += 1
        return litellm.completion(**kwargs)

    async def acompletion(self, **kwargs: Any) -> Any:
        import litellm

        self.sent += 1
        return await litellm.acompletion(**kwargs)


def replaying(settings: Any, policy: Any = None) -> Any:
    """A governor whose anomaly monitor counts records at their own time
    (``clock="records"``), so that a test can feed it a dated history; the
    monitor a governor makes counts them on its live clock."""
    from governor import Governor, Policy
    from governor.anomaly import AnomalyMonitor

    policy = policy or Policy()
    govs: list[Governor] = []
    monitor = AnomalyMonitor(
        settings,
        on_tighten=lambda request: govs[0].apply_tighten(request),
        restores=True,
        budgets=policy.budgets,
    )
    govs.append(Governor(policy, anomalies=monitor))
    return govs[0]
