"""OpenTelemetry spans and metrics that carry cost.

Attribute names are constants in :mod:`governor.telemetry.attributes`.
"""

from governor.telemetry import attributes as attributes
from governor.telemetry._setup import (
    JsonlSpanExporter,
    configure_metrics,
    configure_tracing,
    read_spans,
)
from governor.telemetry._tracing import Telemetry

__all__ = [
    "JsonlSpanExporter",
    "Telemetry",
    "attributes",
    "configure_metrics",
    "configure_tracing",
    "read_spans",
]
