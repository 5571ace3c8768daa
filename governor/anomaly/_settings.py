"""Settings of spend anomaly alerts, as a frozen policy part."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any, Literal, Self, get_args

from pydantic import Field, ValidationInfo, field_validator, model_validator

from governor._errors import ConfigError, PolicyError
from governor.policies._base import PolicyModel

__all__ = ["ALERT_SCOPES", "AlertScope", "Anomalies", "Metric"]

Metric = Literal["usd", "tokens"]
AlertScope = Literal[
    "all",
    "team",
    "feature",
    "environment",
    "model",
    "provider",
    "user",
    "session",
    "org",
]
ALERT_SCOPES: tuple[str, ...] = get_args(AlertScope)

_MICROSECOND = 1e-6


class Anomalies(PolicyModel):
    """When spend per interval is unusual for a scope, and what to do about it.

    Two rules run on every scope and metric. The *deviation* rule alerts when
    an interval's spend so far exceeds a baseline level plus ``k`` times a
    spread, both from the last ``window_intervals`` closed intervals: with
    ``deviation_baseline="trend"`` (the default) the level is the median of
    the last ``level_intervals`` intervals carried forward by the window's
    slope (never below the window mean) and the spread is that of
    interval-to-interval changes (never above the window's standard
    deviation), so a drifting baseline neither widens the threshold nor
    alerts as it drifts; with ``"mean"`` they are the window's mean and standard
    deviation. The *burst* rule alerts when the last ``burst_window_s``
    seconds spent at least ``burst_factor`` times the baseline rate and, when
    ``burst_peak_factor`` is set, that multiple of the scope's usual peak
    burst-window spend. Neither fires before ``min_history_intervals``
    intervals have closed.
    """

    interval_s: float = Field(
        default=60.0, gt=0, description="seconds per interval the rules sum over"
    )
    window_intervals: int = Field(
        default=30, ge=2, description="closed intervals in the rolling baseline"
    )
    min_history_intervals: int = Field(
        default=10,
        ge=2,
        description="closed intervals needed before any rule fires (<= window)",
    )
    k: float = Field(
        default=4.0,
        gt=0,
        description="multiples of the baseline spread above the baseline level",
    )
    count_noise: bool = Field(
        default=True,
        description=(
            "allow for the noise of call counts: the spread is at least "
            "sqrt(level x typical call) and the threshold adds (k**2 - 1) / 6 "
            "typical calls (also for the burst rule); False: level + k x spread "
            "only"
        ),
    )
    deviation_baseline: Literal["trend", "mean"] = Field(
        default="trend",
        description=(
            "'trend': recent level and spread of interval-to-interval changes; "
            "'mean': the window's mean and standard deviation"
        ),
    )
    level_intervals: int = Field(
        default=5,
        ge=1,
        description=(
            "latest closed intervals whose median is the 'trend' baseline's "
            "level (capped at the window)"
        ),
    )
    burst_window_s: float = Field(
        default=10.0, gt=0, description="seconds the burst rule looks back"
    )
    burst_factor: float = Field(
        default=5.0,
        gt=1,
        description="multiple of the baseline rate that counts as a burst",
    )
    burst_peak_factor: float | None = Field(
        default=None,
        gt=0,
        description=(
            "when set, a burst must also exceed this multiple of the median, over "
            "the window, of each interval's peak burst-window spend (for bursty "
            "scopes); None: off"
        ),
    )
    peers: bool = Field(
        default=True,
        description=(
            "judge a scope value with less than min_history_intervals of history "
            "(a new user) against the typical established value of its kind"
        ),
    )
    metrics: tuple[Metric, ...] = Field(
        default=("usd", "tokens"), description="'usd', 'tokens' or both"
    )
    scopes: tuple[AlertScope, ...] = Field(
        default=("all", "team", "feature"),
        description=f"scopes watched separately, from {', '.join(ALERT_SCOPES)}",
    )
    max_series: int = Field(
        default=10_000,
        ge=1,
        description=(
            "scope-and-metric series kept in memory; past it the least recently "
            "seen one whose scope has no open anomaly episode is dropped, with "
            "its baseline (one series per metric for each scope value)"
        ),
    )
    min_usd_per_interval: Decimal = Field(
        default=Decimal(0),
        ge=0,
        description="US dollars an interval (or burst window) must reach to alert",
    )
    min_tokens_per_interval: int = Field(
        default=0,
        ge=0,
        description="tokens an interval (or burst window) must reach to alert",
    )
    cooldown_s: float = Field(
        default=300.0,
        ge=0,
        description=(
            "seconds without a rule firing that end a scope's anomaly episode "
            "(at least one interval); one alert per scope per episode"
        ),
    )
    log_level: Literal["INFO", "WARNING", "ERROR"] = Field(
        default="WARNING", description="level of the log line each alert writes"
    )
    webhook_url: str | None = Field(
        default=None, description="an http(s) URL each alert is POSTed to as JSON"
    )
    webhook_timeout_s: float = Field(
        default=5.0, gt=0, description="seconds a webhook POST may take"
    )
    auto_tighten: Literal["off", "lower", "block"] = Field(
        default="off",
        description="'lower' the alerting scope's budget, 'block' it, or 'off'",
    )
    tighten_scopes: tuple[AlertScope, ...] = Field(
        default=get_args(AlertScope)[1:],
        description=(
            "scopes auto_tighten may lower or block; 'all' (every call in the "
            "process) only when listed here"
        ),
    )
    tighten_factor: float = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="fraction of its limit a lowered budget keeps (0 < f < 1)",
    )

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # The URL may carry a token in its path or query, or a password.
        from governor.anomaly._actions import _redact

        for name, value in super().__repr_args__():
            shown = name == "webhook_url" and isinstance(value, str)
            yield name, _redact(value) if shown else value

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        # The checks the webhook makes when built, here so that a bad URL is
        # refused naming this field; a PolicyError so that the message shows
        # the URL redacted, never its password, path or query.
        if value is None:
            return value
        from governor.anomaly._actions import _split_credentials

        try:
            _split_credentials(value)
        except ConfigError as exc:
            raise PolicyError(str(exc)) from None
        return value

    @field_validator("interval_s", "burst_window_s", "cooldown_s")
    @classmethod
    def _whole_microseconds(cls, value: float, info: ValidationInfo) -> float:
        # Times are counted in whole microseconds, the resolution of spend
        # timestamps: a duration that rounds to none would divide by zero.
        if value == 0 and info.field_name == "cooldown_s":
            return value
        if value < _MICROSECOND:
            zero = " (or 0)" if info.field_name == "cooldown_s" else ""
            raise ValueError(
                f"must be at least {_MICROSECOND:f} seconds{zero}, the "
                "resolution of spend timestamps; give seconds, e.g. 60"
            )
        return value

    @field_validator("scopes", "metrics")
    @classmethod
    def _no_repeats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if repeated := sorted({v for v in value if value.count(v) > 1}):
            raise ValueError(
                f"names {', '.join(map(repr, repeated))} more than once, which "
                "would count every call as many times; list each once"
            )
        return value

    @model_validator(mode="after")
    def _history_fits(self) -> Self:
        if self.min_history_intervals > self.window_intervals:
            raise ValueError("min_history_intervals must not exceed window_intervals")
        if not self.metrics or not self.scopes:
            raise ValueError("metrics and scopes must each name at least one entry")
        return self
