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


@pytest.mark.parametrize(
    ("head", "what"),
    [
        (b"SQLite format 3\x00" + b"\x00" * 84, "a SQLite database"),
        (b"\x1f\x8b\x08\x00rest", "gzip-compressed data"),
        (b"PK\x03\x04\x00\x00", "binary data, not text"),
        (b"name,cost\nweb,1\n", "no line at its start opens a JSON object"),
    ],
)
def test_a_traces_file_that_is_not_json_lines_is_refused_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, head: bytes, what: str
) -> None:
    """Spans appended to a database or a binary file would damage it: the
    exporter refuses it by path or by GOVERNOR_TRACES_FILE, and the file
    keeps every byte."""
    from governor import ConfigError
    from governor.telemetry import configure_tracing

    path = tmp_path / "kept.db"
    path.write_bytes(head)
    with pytest.raises(ConfigError) as refused:
        JsonlSpanExporter(path)
    assert f"({what})" in str(refused.value)
    monkeypatch.setenv("GOVERNOR_TRACES_FILE", str(path))
    with pytest.raises(ConfigError, match="GOVERNOR_TRACES_FILE"):
        configure_tracing()
    assert path.read_bytes() == head


def test_a_traces_file_of_spans_or_empty_is_appended_to(tmp_path: Path) -> None:
    """A JSONL file of spans and an empty file are taken as they are."""
    for name, text in (("spans.jsonl", '{"name": "old"}\n'), ("empty.jsonl", "")):
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(JsonlSpanExporter(path)))
        with provider.get_tracer("test").start_as_current_span("new"):
            pass
        names = [span["name"] for span in read_spans(path)]
        assert names == (["old", "new"] if text else ["new"])


@pytest.mark.parametrize(
    "head",
    [
        b'\xef\xbb\xbf{"name": "old"}\n',
        b'ributes": {}}\n{"name": "old"}\n',
        b'{"name": "old"}\n\x00\x00\x00\x00',
    ],
    ids=["byte-order mark", "first line cut short", "zero bytes after a crash"],
)
def test_a_traces_file_of_spans_with_a_rough_start_is_taken(
    tmp_path: Path, head: bytes
) -> None:
    """A JSONL file that a trim, an editor or a crash left rough at its
    start or end is still a file of spans."""
    path = tmp_path / "spans.jsonl"
    path.write_bytes(head)
    JsonlSpanExporter(path)
    assert path.read_bytes() == head


def test_a_traces_path_given_as_a_link_is_taken(tmp_path: Path) -> None:
    """GOVERNOR_TRACES_FILE=/dev/stdout may lead to a log file; a link is
    the user's choice of where spans go, not a file to protect."""
    log = tmp_path / "app.log"
    log.write_text("INFO app starting\n", encoding="utf-8")
    link = tmp_path / "stdout"
    link.symlink_to(log)
    JsonlSpanExporter(link)
    JsonlSpanExporter(Path("/dev/stdout"))
    assert log.read_text(encoding="utf-8") == "INFO app starting\n"
