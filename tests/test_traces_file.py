"""A JSONL traces file that cannot be written: one warning per outage."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from governor.telemetry import read_spans
from governor.telemetry._setup import JsonlSpanExporter

LOGGER = "governor.telemetry._setup"


def test_an_unwritable_traces_file_warns_once_per_outage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Fail twice, recover, fail again: two warnings, no tracebacks."""
    path = tmp_path / "traces.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonlSpanExporter(path)))
    tracer = provider.get_tracer("test")

    def span(name: str) -> None:
        with tracer.start_as_current_span(name):
            pass

    with caplog.at_level(logging.INFO, logger=LOGGER):
        path.mkdir()  # a folder where the file should be: every write fails
        span("lost-1")
        span("lost-2")
        shutil.rmtree(path)
        span("written")
        path.unlink()
        path.mkdir()
        span("lost-3")
        span("lost-4")
    records = [r for r in caplog.records if r.name == LOGGER]
    warnings = [r for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert all(r.exc_info is None for r in records)
    assert str(path) in warnings[0].getMessage()
    (recovered,) = [r.getMessage() for r in records if r.levelno == logging.INFO]
    assert "2 span(s) were lost meanwhile" in recovered
    shutil.rmtree(path)
    span("written-again")
    assert [s["name"] for s in read_spans(path)] == ["written-again"]
