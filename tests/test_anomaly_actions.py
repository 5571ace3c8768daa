"""Alert actions: log, callback, webhook to a local server, auto-tighten."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from conftest import free_port
from governor.anomaly import (
    Alert,
    Anomalies,
    AnomalyMonitor,
    Tighten,
    WebhookHook,
)
from governor.spend import SpendRecord

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class Receiver:
    """A webhook endpoint on 127.0.0.1 that records POSTed JSON bodies."""

    def __init__(self, status: int = 204, delay_s: float = 0.0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.status = status
        self.delay_s = delay_s
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                time.sleep(receiver.delay_s)
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop serving and free the port."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver answering 204."""
    server = Receiver()
    yield server
    server.close()


def quiet_settings(**changes: object) -> Anomalies:
    """Tokens on scope 'all' (tightened when on), five minutes of history."""
    values: dict[str, object] = {
        "window_intervals": 5,
        "min_history_intervals": 5,
        "metrics": ("tokens",),
        "scopes": ("all",),
        "tighten_scopes": ("all",),
        "burst_factor": 1000,
    }
    values.update(changes)
    return Anomalies(**values)  # type: ignore[arg-type]  # mixed value types by field


def call(minute: int, tokens: int) -> SpendRecord:
    """One call of ``tokens`` input tokens, ``minute`` minutes after T0."""
    return SpendRecord(
        ts=T0 + timedelta(minutes=minute, seconds=1),
        task_id="t",
        call_id=f"c{minute}",
        model="gpt-4o-mini",
        input_tokens=tokens,
    )


def spike(monitor: AnomalyMonitor) -> list[Alert]:
    """Five quiet minutes of 100 tokens, then 1000: one deviation alert."""
    for minute in range(5):
        assert monitor.observe(call(minute, 100)) == []
    return monitor.observe(call(5, 1000))


def an_alert() -> Alert:
    """A fixed alert for hook tests."""
    return Alert(
        scope="team:search",
        metric="usd",
        rule="burst",
        ts=T0,
        interval_start=T0,
        observed=Decimal("0.5"),
        threshold=Decimal("0.1"),
        baseline_mean=Decimal("0.12"),
        baseline_std=Decimal("0.01"),
    )


def test_webhook_posts_the_alert_as_json(receiver: Receiver) -> None:
    """The webhook POSTs {"alert": ...} with the alert's fields."""
    hook = WebhookHook(receiver.url)
    hook(an_alert())
    hook.close()
    (body,) = receiver.bodies
    assert body["alert"]["scope"] == "team:search"
    assert (body["alert"]["rule"], body["alert"]["observed"]) == ("burst", "0.5")


def test_webhook_to_a_closed_port_logs_and_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A refused connection is logged at WARNING, not raised."""
    hook = WebhookHook(f"http://127.0.0.1:{free_port()}/hook", blocking=True)
    with caplog.at_level(logging.WARNING, logger="governor.anomaly._actions"):
        hook(an_alert())
    assert "anomaly webhook POST to http://127.0.0.1:" in caplog.text


def test_webhook_error_status_logs_and_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An HTTP 500 answer is logged at WARNING, not raised."""
    server = Receiver(status=500)
    with caplog.at_level(logging.WARNING, logger="governor.anomaly._actions"):
        WebhookHook(server.url, blocking=True)(an_alert())
    server.close()
    assert "HTTP Error 500" in caplog.text


def test_webhook_timeout_logs_and_returns(caplog: pytest.LogCaptureFixture) -> None:
    """A POST slower than timeout_s is abandoned and logged."""
    server = Receiver(delay_s=1.0)
    with caplog.at_level(logging.WARNING, logger="governor.anomaly._actions"):
        WebhookHook(server.url, timeout_s=0.2, blocking=True)(an_alert())
    server.close()
    assert "timed out" in caplog.text


def test_monitor_posts_to_the_configured_webhook(receiver: Receiver) -> None:
    """Anomalies(webhook_url=...) makes the monitor POST each alert."""
    monitor = AnomalyMonitor(quiet_settings(webhook_url=receiver.url))
    spike(monitor)
    monitor.close()
    assert [b["alert"]["observed"] for b in receiver.bodies] == ["1000"]


def test_monitor_logs_each_alert(caplog: pytest.LogCaptureFixture) -> None:
    """Every alert is logged at the configured level."""
    with caplog.at_level(logging.ERROR, logger="governor.anomaly._actions"):
        spike(AnomalyMonitor(quiet_settings(log_level="ERROR")))
    (entry,) = caplog.records
    assert entry.levelno == logging.ERROR
    assert entry.getMessage().startswith("spend anomaly (deviation) on all: 1000")


def test_callback_hook_receives_the_returned_alerts() -> None:
    """A callback hook sees exactly the alerts observe returns."""
    seen: list[Alert] = []
    alerts = spike(AnomalyMonitor(quiet_settings(), hooks=[seen.append]))
    assert seen == alerts
    assert len(alerts) == 1


def test_failing_hook_does_not_reach_the_caller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A hook that raises is logged and the hooks after it still run."""
    seen: list[Alert] = []

    def broken(alert: Alert) -> None:
        raise RuntimeError("pager down")

    monitor = AnomalyMonitor(quiet_settings(), hooks=[broken, seen.append])
    with caplog.at_level(logging.WARNING, logger="governor.anomaly._monitor"):
        alerts = spike(monitor)
    assert seen == alerts
    assert "pager down" in caplog.text


def test_auto_tighten_sends_a_tighten_request() -> None:
    """With auto_tighten='block' each alert becomes a Tighten for on_tighten."""
    requests: list[Tighten] = []
    settings = quiet_settings(auto_tighten="block", tighten_factor=0.25)
    (alert,) = spike(AnomalyMonitor(settings, on_tighten=requests.append))
    assert requests == [Tighten("all", "block", 0.25, alert)]


def test_auto_tighten_leaves_scope_all_alone_unless_listed() -> None:
    """By default one team's spike never blocks every call in the process."""
    requests: list[Tighten] = []
    settings = quiet_settings(auto_tighten="block", tighten_scopes=("team",))
    alerts = spike(AnomalyMonitor(settings, on_tighten=requests.append))
    assert ([a.scope for a in alerts], requests) == (["all"], [])
    assert "all" not in Anomalies().tighten_scopes
    assert "team" in Anomalies().tighten_scopes


def test_the_tighten_comes_before_the_hooks() -> None:
    """A slow user hook cannot hold back the block that stops a runaway."""
    order: list[str] = []
    settings = quiet_settings(auto_tighten="block")
    monitor = AnomalyMonitor(
        settings,
        hooks=[lambda alert: order.append("hook")],
        on_tighten=lambda request: order.append("tighten"),
    )
    spike(monitor)
    assert order == ["tighten", "hook"]


def test_auto_tighten_off_never_calls_back() -> None:
    """With auto_tighten='off' on_tighten is not called."""
    requests: list[Tighten] = []
    spike(AnomalyMonitor(quiet_settings(), on_tighten=requests.append))
    assert requests == []


def test_auto_tighten_without_callback_warns(caplog: pytest.LogCaptureFixture) -> None:
    """Turning auto-tighten on with nothing to call is logged at construction."""
    with caplog.at_level(logging.WARNING, logger="governor.anomaly._monitor"):
        AnomalyMonitor(quiet_settings(auto_tighten="lower"))
    assert "has no on_tighten callback" in caplog.text


def test_monitor_counts_calls_from_many_threads() -> None:
    """Five threads feeding the same minutes lose no tokens."""
    monitor = AnomalyMonitor(quiet_settings(k=2, count_noise=False))
    barrier = threading.Barrier(5)

    def feed(worker: int) -> None:
        for minute in range(5):
            for i in range(2):
                rec = call(minute, 10)
                monitor.observe(replace(rec, call_id=f"{worker}-{minute}-{i}"))
            barrier.wait()

    threads = [threading.Thread(target=feed, args=(w,)) for w in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Each minute held exactly 100 tokens, so 100 is normal and 101 is not.
    assert monitor.observe(call(5, 100)) == []
    assert len(monitor.observe(call(5, 1))) == 1


def test_one_spike_tripping_two_metrics_lowers_the_budget_once() -> None:
    """Tokens and dollars both alert on one spike; the scope is tightened once."""
    requests: list[Tighten] = []
    settings = quiet_settings(metrics=("tokens", "usd"), auto_tighten="lower")
    monitor = AnomalyMonitor(settings, on_tighten=requests.append)
    for minute in range(5):
        monitor.observe(replace(call(minute, 100), cost_usd=Decimal("0.001")))
    (alert,) = monitor.observe(replace(call(5, 1000), cost_usd=Decimal("0.01")))
    assert [f.metric for f in alert.findings] == ["tokens", "usd"]
    assert [(r.scope, r.mode) for r in requests] == [("all", "lower")]


def test_a_later_spike_after_the_episode_ends_tightens_again() -> None:
    """An episode over, the limit is restored; a later spike lowers it again."""
    requests: list[Tighten] = []
    settings = quiet_settings(auto_tighten="lower", cooldown_s=60)
    monitor = AnomalyMonitor(settings, on_tighten=requests.append, restores=True)
    spike(monitor)
    for minute in range(6, 12):
        monitor.observe(call(minute, 100))
    monitor.observe(call(12, 10_000))
    assert [(r.mode, r.factor) for r in requests] == [
        ("lower", 0.5),
        ("restore", 2.0),
        ("lower", 0.5),
    ]


@pytest.mark.parametrize("url", ["http://", "https:///path", "ftp://host/x", "host"])
def test_a_webhook_url_without_a_host_is_refused(url: str) -> None:
    """A URL no POST can reach fails when the settings are built."""
    from governor import PolicyError

    with pytest.raises(PolicyError, match="with a host"):
        Anomalies(webhook_url=url)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_a_forked_child_posts_its_own_alerts(receiver: Receiver) -> None:
    """The parent's webhook thread is not in a forked child: the child
    starts its own, so its alert is posted (not queued for ever)."""
    hook = WebhookHook(receiver.url)
    hook(an_alert())  # the parent's background thread starts
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's report is its exit status
        code = 1
        try:
            hook(an_alert())
            hook.close()  # waits for the POST
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    hook.close()
    assert os.waitstatus_to_exitcode(status) == 0
    deadline = time.monotonic() + 20
    while len(receiver.bodies) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(receiver.bodies) == 2
