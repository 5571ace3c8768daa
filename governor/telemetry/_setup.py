"""Exporter setup: OTLP by the standard OTEL_* variables, and a JSONL file.

The application owns its tracer provider; these helpers build one for users
who have none, and a JSONL exporter the CLI can read back.
"""

from __future__ import annotations

import importlib
import json
import logging
import numbers
import os
import threading
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

__all__ = [
    "DEFAULT_SERVICE_NAME",
    "JsonlSpanExporter",
    "configure_metrics",
    "configure_tracing",
    "read_spans",
    "service_name_from_env",
]

logger = logging.getLogger(__name__)

ENV_OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
"""Base URL of an OTLP/HTTP receiver; ``/v1/traces`` is appended (OTel spec)."""
ENV_OTLP_TRACES_ENDPOINT = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
"""Full URL of an OTLP/HTTP traces receiver; wins over the base URL."""
ENV_OTLP_METRICS_ENDPOINT = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
"""Full URL of an OTLP/HTTP metrics receiver; wins over the base URL."""
ENV_OTLP_PROTOCOL = "OTEL_EXPORTER_OTLP_PROTOCOL"
"""``http/protobuf`` (the default) or ``grpc``; ``..._TRACES_PROTOCOL`` and
``..._METRICS_PROTOCOL`` win over it for their signal."""
ENV_TRACES_FILE = "GOVERNOR_TRACES_FILE"
"""Path of a JSONL file that receives every span, one JSON object per line."""
DEFAULT_SERVICE_NAME = "llm-governor"
"""``service.name`` when neither the caller nor the environment names one."""


def service_name_from_env() -> str | None:
    """The service name the standard OTel variables set, or None.

    ``OTEL_SERVICE_NAME`` wins over ``service.name`` in
    ``OTEL_RESOURCE_ATTRIBUTES``, as the OpenTelemetry specification says.
    """
    name = str(OTELResourceDetector().detect().attributes.get(SERVICE_NAME) or "")
    if name.strip():
        return name.strip()
    # A blank OTEL_SERVICE_NAME is no name: it must not hide the resource's.
    return _resource_attribute(os.environ.get("OTEL_RESOURCE_ATTRIBUTES", ""))


def _resource_attribute(text: str, key: str = SERVICE_NAME) -> str | None:
    """``key``'s value in an ``OTEL_RESOURCE_ATTRIBUTES`` text, or None."""
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if sep and name.strip() == key and unquote(value).strip():
            return unquote(value).strip()
    return None


def _resource(service_name: str | None) -> Resource:
    """A resource named by the argument, else the environment, else the default."""
    name = service_name or service_name_from_env() or DEFAULT_SERVICE_NAME
    return Resource.create({SERVICE_NAME: name})


def configure_tracing(
    *,
    service_name: str | None = None,
    otlp_endpoint: str | None = None,
    jsonl_path: str | Path | None = None,
    exporters: Sequence[SpanExporter] = (),
) -> TracerProvider:
    """Build a tracer provider that exports the governor's spans.

    Args:
        service_name: the ``service.name`` resource attribute; when None,
            ``OTEL_SERVICE_NAME`` (or ``service.name`` in
            ``OTEL_RESOURCE_ATTRIBUTES``) names the service, else
            ``"llm-governor"``.
        otlp_endpoint: full OTLP/HTTP traces URL; when None, the standard
            ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``
            variables decide, and with neither set nothing goes over OTLP.
        jsonl_path: a file to append spans to as JSON lines; defaults to
            ``GOVERNOR_TRACES_FILE`` when set.
        exporters: further exporters, each behind its own batch processor.

    Returns:
        A provider to pass as ``Governor(tracer_provider=...)``. Call its
        ``shutdown()`` (or ``force_flush()``) before the process exits.
    """
    provider = TracerProvider(resource=_resource(service_name))
    for exporter in _exporters(otlp_endpoint, jsonl_path, exporters):
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _exporters(
    otlp_endpoint: str | None,
    jsonl_path: str | Path | None,
    extra: Sequence[SpanExporter],
) -> list[SpanExporter]:
    chosen = list(extra)
    wants_otlp = otlp_endpoint or os.environ.get(ENV_OTLP_TRACES_ENDPOINT)
    if wants_otlp or os.environ.get(ENV_OTLP_ENDPOINT):
        exporter_class = _otlp_class(
            "traces", "trace_exporter", "OTLPSpanExporter", http=bool(otlp_endpoint)
        )
        chosen.append(exporter_class(endpoint=otlp_endpoint))
    path = jsonl_path or os.environ.get(ENV_TRACES_FILE)
    if path:
        chosen.append(JsonlSpanExporter(path))
    return chosen


def configure_metrics(
    *,
    service_name: str | None = None,
    otlp_endpoint: str | None = None,
    export_interval_s: float = 60.0,
    readers: Sequence[MetricReader] = (),
) -> MeterProvider:
    """Build a meter provider that exports the governor's cost metrics.

    Args:
        service_name: the ``service.name`` resource attribute; when None,
            ``OTEL_SERVICE_NAME`` (or ``service.name`` in
            ``OTEL_RESOURCE_ATTRIBUTES``) names the service, else
            ``"llm-governor"``.
        otlp_endpoint: full OTLP/HTTP metrics URL; when None, the standard
            ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``
            variables decide, and with neither set nothing goes over OTLP.
        export_interval_s: how often metrics are pushed.
        readers: further metric readers (an in-memory reader in tests).

    Returns:
        A provider to pass as ``Governor(meter_provider=...)``; call its
        ``shutdown()`` before the process exits.

    Raises:
        ConfigError: ``export_interval_s`` is not a positive number of
            seconds, or the OTLP protocol cannot be used (see below).
    """
    _check_interval(export_interval_s)
    chosen = list(readers)
    wants = otlp_endpoint or os.environ.get(ENV_OTLP_METRICS_ENDPOINT)
    if wants or os.environ.get(ENV_OTLP_ENDPOINT):
        exporter_class = _otlp_class(
            "metrics", "metric_exporter", "OTLPMetricExporter", http=bool(otlp_endpoint)
        )
        exporter = exporter_class(endpoint=otlp_endpoint)
        interval_ms = float(export_interval_s) * 1000
        chosen.append(
            PeriodicExportingMetricReader(exporter, export_interval_millis=interval_ms)
        )
    return MeterProvider(resource=_resource(service_name), metric_readers=chosen)


def _check_interval(export_interval_s: object) -> None:
    """Refuse an export interval the metric reader cannot run with."""
    from governor._errors import ConfigError

    number = isinstance(export_interval_s, (numbers.Real, Decimal))
    if isinstance(export_interval_s, bool) or not number:
        usable = False
    else:
        usable = 0 < float(export_interval_s) < float("inf")  # type: ignore[arg-type]
    if not usable:
        raise ConfigError(
            f"export_interval_s={export_interval_s!r} is not a number of seconds "
            "above 0: pass how often metrics are pushed, such as 60.0"
        )


def _otlp_class(signal: str, module: str, name: str, *, http: bool = False) -> Any:
    """The OTLP exporter class the ``OTEL_EXPORTER_OTLP_*PROTOCOL`` setting picks.

    The setting is read in any case (``HTTP/PROTOBUF`` is ``http/protobuf``).
    ``http/protobuf`` (the default) ships with the governor; ``grpc`` needs
    the ``opentelemetry-exporter-otlp-proto-grpc`` package. ``http`` (an
    OTLP/HTTP URL passed in code) wins over the environment.

    Raises:
        ConfigError: the protocol is unknown, or gRPC is asked for and its
            exporter is not installed.
    """
    from governor._errors import ConfigError

    key = f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL"
    protocol = (
        os.environ.get(key) or os.environ.get(ENV_OTLP_PROTOCOL) or "http/protobuf"
    ).strip()
    if http:
        if protocol.lower() != "http/protobuf":
            logger.info(
                "%s asks for OTLP %r, but the endpoint given in code is an "
                "OTLP/HTTP URL: it is sent over HTTP (unset the endpoint "
                "argument to use the environment's protocol and endpoint)",
                key if os.environ.get(key) else ENV_OTLP_PROTOCOL,
                protocol,
            )
        protocol = "http/protobuf"
    transports = {"http/protobuf": "http", "grpc": "grpc"}
    transport = transports.get(protocol.lower())  # the spec's values, any case
    if transport is None:
        raise ConfigError(
            f"OTLP protocol {protocol!r} (from {key} or {ENV_OTLP_PROTOCOL}) is "
            "not supported: use 'http/protobuf' (the default) or 'grpc'"
        )
    path = f"opentelemetry.exporter.otlp.proto.{transport}.{module}"
    try:
        found = importlib.import_module(path)
    except ImportError as exc:
        raise ConfigError(
            f"OTLP protocol {protocol!r} needs its exporter: pip install "
            "opentelemetry-exporter-otlp-proto-grpc (or unset the protocol to "
            "send OTLP/HTTP, port 4318)"
        ) from exc
    return getattr(found, name)


class JsonlSpanExporter(SpanExporter):
    """Appends finished spans to a file, one JSON object per line.

    Each line holds ``name``, ``trace_id``, ``span_id``, ``parent_id`` (hex),
    ``start_ns``, ``end_ns``, ``status``, ``attributes`` and ``events``.
    Safe to share between threads.

    A file that cannot be written (a full disk, a folder in its place, no
    permission) loses the spans of each batch that fails; that is logged
    once per outage as a WARNING with the error, and its end once as INFO
    with the number of spans lost meanwhile.
    """

    def __init__(self, path: str | Path) -> None:
        """Append to ``path`` (made, with its folders, if missing).

        Raises:
            ConfigError: ``path`` is an existing file that is not JSON lines
                (a database, a compressed or binary file), which appended
                spans would damage.
        """
        from governor._errors import ConfigError
        from governor._files import not_json_lines

        self.path = Path(path)
        what = not_json_lines(self.path)
        if what is not None:
            raise ConfigError(
                f"the traces file {self.path} is an existing file that is not "
                f"JSON lines ({what}); spans are appended to it, which would "
                "damage it: give a new file name or a .jsonl file of spans "
                f"(jsonl_path= or {ENV_TRACES_FILE})"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._lost = 0  # spans lost in the current outage; 0 while writes work
        self._failing = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Write the spans; a failure is logged and reported, never raised."""
        lines = "".join(json.dumps(_span_dict(s)) + "\n" for s in spans)
        with self._lock:
            try:
                with self.path.open("a", encoding="utf-8") as handle:
                    handle.write(lines)
            except OSError as exc:
                self._failed(exc, len(spans))
                return SpanExportResult.FAILURE
            self._written()
        return SpanExportResult.SUCCESS

    def _failed(self, exc: OSError, spans: int) -> None:
        self._lost += spans
        if self._failing:
            return
        self._failing = True
        logger.warning(
            "could not write spans to %s (%s: %s); the spans of every batch "
            "that fails are lost until it can be written again, which is "
            "logged once",
            self.path,
            type(exc).__name__,
            exc,
        )

    def _written(self) -> None:
        if not self._failing:
            return
        logger.info(
            "spans are written to %s again; %d span(s) were lost meanwhile",
            self.path,
            self._lost,
        )
        self._failing = False
        self._lost = 0

    def shutdown(self) -> None:
        """Nothing to release: the file is opened per batch."""


def read_spans(path: str | Path) -> list[dict[str, Any]]:
    """Read back spans written by :class:`JsonlSpanExporter`."""
    with Path(path).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _span_dict(span: ReadableSpan) -> dict[str, Any]:
    context = span.get_span_context()
    parent = span.parent
    return {
        "name": span.name,
        "trace_id": f"{context.trace_id:032x}" if context else None,
        "span_id": f"{context.span_id:016x}" if context else None,
        "parent_id": f"{parent.span_id:016x}" if parent else None,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "events": [
            {"name": e.name, "attributes": dict(e.attributes or {})}
            for e in span.events
        ],
    }
