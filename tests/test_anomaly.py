"""The anomaly detector: deviation and burst rules, scopes, settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from conftest import replaying
from governor import ScopeBlocked
from governor._errors import PolicyError
from governor.adapters.litellm import GovernedLiteLLM
from governor.anomaly import (
    ALERT_SCOPES,
    Alert,
    Anomalies,
    AnomalyDetector,
    AnomalyMonitor,
    Finding,
    scopes_of,
)
from governor.spend import SpendRecord
from governor.testing import install_offline_provider

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def settings(**changes: object) -> Anomalies:
    """Tokens only, one scope, a five-interval window, no cooldown, no burst.

    k = 2 with no count-noise allowance, so thresholds are level + 2 spreads.
    """
    values: dict[str, object] = {
        "k": 2.0,
        "count_noise": False,
        "interval_s": 60,
        "window_intervals": 5,
        "min_history_intervals": 5,
        "metrics": ("tokens",),
        "scopes": ("all",),
        "cooldown_s": 0,
        "burst_factor": 1000,
    }
    values.update(changes)
    return Anomalies(**values)  # type: ignore[arg-type]  # mixed value types by field


def at(interval: int, second: float = 1.0) -> datetime:
    """A time ``second`` seconds into interval ``interval`` after T0."""
    return T0 + timedelta(seconds=60 * interval + second)


def history(detector: AnomalyDetector, values: list[int], scope: str = "all") -> None:
    """Feed one observation per interval, starting at interval 0."""
    for i, tokens in enumerate(values):
        assert detector.observe(scope, at(i), usd=Decimal(0), tokens=tokens) == []


def tokens(detector: AnomalyDetector, ts: datetime, amount: int) -> list[Alert]:
    """Feed ``amount`` tokens on scope 'all' at ``ts``."""
    return detector.observe("all", ts, usd=Decimal(0), tokens=amount)


# History 90, 110, 90, 110, 90: mean 98, sample std sqrt(120) = 10.95,
# so with k = 2 the threshold is 119.9 tokens per interval.
BASE = [90, 110, 90, 110, 90]


def test_no_rule_fires_before_enough_history() -> None:
    """With fewer closed intervals than min_history_intervals nothing alerts."""
    detector = AnomalyDetector(settings())
    history(detector, BASE[:4])
    assert tokens(detector, at(4), 10_000) == []


def test_deviation_rule_reports_the_numbers() -> None:
    """An interval above mean + k std alerts with its baseline."""
    detector = AnomalyDetector(settings())
    history(detector, BASE)
    (alert,) = tokens(detector, at(5), 150)
    assert (alert.rule, alert.scope, alert.metric) == ("deviation", "all", "tokens")
    assert (alert.observed, alert.threshold) == (Decimal(150), Decimal(120))
    assert (alert.baseline_mean, alert.baseline_std) == (Decimal(98), Decimal(11))
    assert alert.interval_start == at(5, 0)


def test_deviation_rule_is_quiet_below_the_threshold() -> None:
    """119 tokens against a threshold of 119.9 does not alert."""
    detector = AnomalyDetector(settings())
    history(detector, BASE)
    assert tokens(detector, at(5), 119) == []


def test_deviation_fires_when_the_running_sum_crosses() -> None:
    """The alert comes with the call that takes the interval over, not at its end."""
    detector = AnomalyDetector(settings())
    history(detector, BASE)
    assert tokens(detector, at(5, 1), 60) == []
    (alert,) = tokens(detector, at(5, 20), 60)
    assert (alert.ts, alert.observed) == (at(5, 20), Decimal(120))


def test_deviation_fires_once_per_interval() -> None:
    """Further calls in an interval that already alerted add no alert."""
    detector = AnomalyDetector(settings())
    history(detector, BASE)
    tokens(detector, at(5, 1), 150)
    assert tokens(detector, at(5, 2), 150) == []


@pytest.mark.parametrize(("cooldown_s", "expected"), [(0, 1), (300, 0)])
def test_cooldown_suppresses_repeats(cooldown_s: float, expected: int) -> None:
    """A second spike within cooldown_s of the first does not alert again."""
    detector = AnomalyDetector(settings(cooldown_s=cooldown_s))
    history(detector, BASE)
    tokens(detector, at(5), 1000)
    assert len(tokens(detector, at(6), 5000)) == expected


def test_silent_intervals_count_as_zero() -> None:
    """Intervals with no calls enter the baseline as zero spend."""
    detector = AnomalyDetector(settings())
    history(detector, [100] * 5)
    (alert,) = tokens(detector, at(8), 200)
    # Window after the gap: 100, 100, 0, 0, 0.
    assert alert.baseline_mean == Decimal(40)


def test_floor_silences_small_spikes() -> None:
    """An interval under min_tokens_per_interval never alerts."""
    detector = AnomalyDetector(settings(min_tokens_per_interval=1000))
    history(detector, BASE)
    assert tokens(detector, at(5), 150) == []


def burst_detector() -> AnomalyDetector:
    """600 tokens per interval, so a 10 s window expects 100 (burst at 500)."""
    detector = AnomalyDetector(settings(k=100, burst_factor=5))
    history(detector, [600] * 5)
    return detector


def test_burst_rule_fires_on_a_concentrated_spike() -> None:
    """600 tokens within 4 s exceeds five times the 10 s baseline."""
    detector = burst_detector()
    assert tokens(detector, at(5, 1), 300) == []
    (alert,) = tokens(detector, at(5, 5), 300)
    assert (alert.rule, alert.observed, alert.threshold) == (
        "burst",
        Decimal(600),
        Decimal(500),
    )


def test_burst_rule_ignores_the_same_spend_spread_out() -> None:
    """The same 600 tokens 29 s apart is no burst."""
    detector = burst_detector()
    tokens(detector, at(5, 1), 300)
    assert tokens(detector, at(5, 30), 300) == []


def test_usd_alerts_carry_exact_dollars() -> None:
    """The usd metric reports observed and baseline as Decimal dollars."""
    detector = AnomalyDetector(settings(metrics=("usd",)))
    for i in range(5):
        detector.observe("all", at(i), usd=Decimal("0.001"), tokens=0)
    (alert,) = detector.observe("all", at(5), usd=Decimal("0.01"), tokens=0)
    assert (alert.metric, alert.observed, alert.baseline_mean) == (
        "usd",
        Decimal("0.01"),
        Decimal("0.001"),
    )


def test_scopes_are_watched_separately() -> None:
    """A spike on one scope does not alert another."""
    detector = AnomalyDetector(settings())
    history(detector, BASE, scope="team:a")
    history(detector, BASE, scope="team:b")
    alerts = detector.observe("team:a", at(5), usd=Decimal(0), tokens=500)
    alerts += detector.observe("team:b", at(5), usd=Decimal(0), tokens=100)
    assert [a.scope for a in alerts] == ["team:a"]


def test_least_recent_series_is_dropped_past_max_series() -> None:
    """Past max_series the oldest scope's history is forgotten."""
    detector = AnomalyDetector(settings(), max_series=2)
    history(detector, BASE, scope="team:a")
    detector.observe("team:b", at(5), usd=Decimal(0), tokens=1)
    detector.observe("team:c", at(5), usd=Decimal(0), tokens=1)
    assert detector.observe("team:a", at(5), usd=Decimal(0), tokens=500) == []


def record(**changes: object) -> SpendRecord:
    """A call of 100 + 50 tokens for team search with no feature."""
    values: dict[str, object] = {
        "ts": at(5),
        "task_id": "t",
        "call_id": "c",
        "model": "gpt-4o-mini",
        "input_tokens": 100,
        "output_tokens": 50,
        "team": "search",
    }
    values.update(changes)
    return SpendRecord(**values)  # type: ignore[arg-type]  # mixed value types by field


def test_scopes_of_skips_unset_attributes() -> None:
    """A record counts towards 'all' and each attribute it sets."""
    scopes = scopes_of(record(), ["all", "team", "feature", "model"])
    assert scopes == ["all", "team:search", "model:gpt-4o-mini"]


def test_org_is_a_scope() -> None:
    """Anomalies may watch org; a record counts towards its org's scope."""
    watched = Anomalies(scopes=("all", "org")).scopes
    scopes = scopes_of(record(org="acme"), watched)
    assert ("org" in ALERT_SCOPES, scopes) == (True, ["all", "org:acme"])
    assert scopes_of(record(), ["org"]) == []


def org_spike(monitor: AnomalyMonitor, org: str) -> None:
    """A quiet 20 minutes of spend for ``org``, then a burst."""
    start = datetime(2026, 12, 1, tzinfo=UTC)
    calls = [(start + timedelta(minutes=m), 150, "0.001") for m in range(20)]
    calls += [
        (start + timedelta(minutes=20, seconds=i), 7000, "0.05") for i in range(40)
    ]
    for i, (ts, amount, usd) in enumerate(calls):
        monitor.observe(
            record(
                ts=ts,
                call_id=f"c{i}",
                input_tokens=amount,
                output_tokens=0,
                cost_usd=Decimal(usd),
                org=org,
            )
        )


def test_org_spike_blocks_that_org_only() -> None:
    """With scopes=("org",) and auto_tighten='block', a spiking org is refused."""
    install_offline_provider(speed=0)
    settings = Anomalies(auto_tighten="block", scopes=("org",), cooldown_s=0)
    gov = replaying(settings)
    assert gov.monitor is not None
    org_spike(gov.monitor, "acme")
    llm = GovernedLiteLLM(gov)
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(ScopeBlocked) as info, gov.task(org="acme", team="search"):
        llm.completion(model="offline/gpt-4o-mini", messages=messages)
    with gov.task(org="globex", team="search") as other:
        llm.completion(model="offline/gpt-4o-mini", messages=messages)
    gov.close()
    assert (info.value.scope, other.report().calls) == ("org:acme", 1)


def test_cache_hits_count_no_tokens() -> None:
    """A cache hit adds no tokens, so it cannot trip the token rules."""
    detector = AnomalyDetector(settings(scopes=("team",)))
    history(detector, [1] * 5, scope="team:search")
    assert detector.observe_record(record(cache_hit=True, outcome="cache_hit")) == []
    assert len(detector.observe_record(record())) == 1


def test_alert_json_is_strings_and_iso_times() -> None:
    """Alert.to_json_dict gives decimal strings and ISO 8601 times."""
    detector = AnomalyDetector(settings())
    history(detector, BASE)
    (alert,) = tokens(detector, at(5), 150)
    data = alert.to_json_dict()
    assert (data["observed"], data["ts"]) == ("150", "2026-12-01T12:05:01+00:00")
    assert data["message"].startswith("spend anomaly (deviation) on all: 150 tokens")


def test_history_longer_than_window_is_refused() -> None:
    """min_history_intervals above window_intervals is a PolicyError."""
    with pytest.raises(PolicyError, match="min_history_intervals must not exceed"):
        Anomalies(window_intervals=5, min_history_intervals=6)


def test_webhook_url_must_be_http() -> None:
    """Only http and https webhook URLs are accepted."""
    with pytest.raises(PolicyError, match="webhook_url"):
        Anomalies(webhook_url="ftp://127.0.0.1/hook")


def test_every_setting_is_described() -> None:
    """Each field carries a description for error messages and docs."""
    missing = [n for n, f in Anomalies.model_fields.items() if not f.description]
    assert missing == []


def test_defaults_match_the_documentation() -> None:
    """k = 4 with count noise over a 30-interval window of 60 s, burst at 5x."""
    s = Anomalies()
    assert (s.k, s.count_noise, s.peers) == (4.0, True, True)
    assert (s.window_intervals, s.interval_s) == (30, 60.0)
    assert (s.burst_factor, s.burst_window_s, s.cooldown_s) == (5.0, 10.0, 300.0)


# A conv-like ramp over a 30-interval window: +100 tokens per interval with a
# little jitter. Its window std (~870) is almost all drift; the changes from
# one interval to the next barely vary.
RAMP = [1000 + 100 * i + (7 if i % 2 else -7) for i in range(30)]


def ramp_detector(baseline: str = "trend") -> AnomalyDetector:
    """A detector that has seen RAMP, with a 30-interval window."""
    detector = AnomalyDetector(
        settings(
            window_intervals=30, min_history_intervals=30, deviation_baseline=baseline
        )
    )
    history(detector, RAMP)
    return detector


def test_trend_baseline_sees_a_spike_on_a_drifting_baseline() -> None:
    """One step plus 100 over the last interval alerts; mean + 2 std would not."""
    (alert,) = tokens(ramp_detector(), at(30), RAMP[-1] + 200)
    assert alert.rule == "deviation"
    assert alert.threshold < RAMP[-1] + 200 < 4200
    assert tokens(ramp_detector("mean"), at(30), RAMP[-1] + 200) == []


def test_trend_baseline_is_quiet_on_the_ramp_itself() -> None:
    """The ramp's next step does not alert: the level follows the drift."""
    assert tokens(ramp_detector(), at(30), RAMP[-1] + 100) == []


def test_trend_level_never_drops_below_the_window_mean() -> None:
    """After a lull, usual spend is judged against the window, not the lull."""
    detector = AnomalyDetector(settings(window_intervals=10, min_history_intervals=10))
    history(detector, [1000, 1100, 900, 1000, 1050, 0, 0, 0, 0, 0])
    assert tokens(detector, at(10), 1000) == []


def test_trend_baseline_falls_back_to_mean_and_std_on_short_history() -> None:
    """With two closed intervals there are no changes to measure: mean and std."""
    detector = AnomalyDetector(settings(window_intervals=2, min_history_intervals=2))
    history(detector, [90, 110])
    (alert,) = tokens(detector, at(2), 200)
    assert (alert.baseline_mean, alert.baseline_std) == (Decimal(100), Decimal(14))


def bursty(peak_factor: float | None) -> AnomalyDetector:
    """A scope spending its whole 600 tokens per interval within one second.

    Its 10 s windows routinely hold 600 tokens, six times the mean rate.
    """
    detector = AnomalyDetector(
        settings(k=100, burst_factor=5, burst_peak_factor=peak_factor)
    )
    for i in range(5):
        for second in (1.0, 1.5):
            detector.observe("all", at(i, second), usd=Decimal(0), tokens=300)
    return detector


def bursts(detector: AnomalyDetector, amount: int) -> list[Finding]:
    """Feed ``amount`` tokens at second 1 of interval 5; the burst findings only."""
    alerts = tokens(detector, at(5, 1), amount)
    return [f for a in alerts for f in a.findings if f.rule == "burst"]


def test_peak_factor_keeps_a_bursty_scope_quiet_on_its_usual_peaks() -> None:
    """900 tokens in 1 s is 1.5x this scope's usual peak: no burst at 2.5x."""
    assert bursts(bursty(2.5), 900) == []
    assert len(bursts(bursty(None), 900)) == 1


def test_peak_factor_still_catches_a_real_burst_on_a_bursty_scope() -> None:
    """3x the usual peak within the window alerts, with the peak threshold."""
    (alert,) = bursts(bursty(2.5), 1800)
    assert (alert.observed, alert.threshold) == (Decimal(1800), Decimal(1500))


def test_peak_factor_does_not_raise_a_smooth_scopes_threshold() -> None:
    """Spread-out spend has small peaks, so burst_factor x the mean rate rules."""
    detector = AnomalyDetector(settings(k=100, burst_factor=5, burst_peak_factor=2.5))
    for i in range(5):
        for second in range(0, 60, 10):
            detector.observe("all", at(i, second + 0.5), usd=Decimal(0), tokens=100)
    (alert,) = tokens(detector, at(5, 1), 600)
    assert alert.threshold == Decimal(500)


def test_new_settings_default_to_the_trend_baseline_and_no_peak_rule() -> None:
    """New fields have defaults, so existing Anomalies(...) calls keep working."""
    s = Anomalies()
    assert (s.deviation_baseline, s.level_intervals, s.burst_peak_factor) == (
        "trend",
        5,
        None,
    )
