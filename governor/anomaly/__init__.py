"""Spend anomaly alerts: deviation, burst and peers rules, one alert per episode.

Feed :class:`governor.spend.SpendRecord` values to an :class:`AnomalyMonitor`;
alerts go to hooks (log, callback, webhook, auto-tighten). The
:class:`AnomalyDetector` inside it is pure and can replay traces. See
``docs/anomalies.md``.
"""

from governor.anomaly._actions import AlertHook, LogHook, Tighten, WebhookHook
from governor.anomaly._detector import (
    Alert,
    AnomalyDetector,
    Finding,
    Rule,
    scopes_of,
)
from governor.anomaly._monitor import AnomalyMonitor
from governor.anomaly._settings import ALERT_SCOPES, AlertScope, Anomalies, Metric

__all__ = [
    "ALERT_SCOPES",
    "Alert",
    "AlertHook",
    "AlertScope",
    "Anomalies",
    "AnomalyDetector",
    "AnomalyMonitor",
    "Finding",
    "LogHook",
    "Metric",
    "Rule",
    "Tighten",
    "WebhookHook",
    "scopes_of",
]
