"""Webhook deadlines, queue, redirects and credentials; unblock and tightened.

Every webhook test talks to a real HTTP receiver on 127.0.0.1 (http.server
in a thread).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conftest import free_port
from governor import ConfigError, Governor, Policy, ScopeBlocked
from governor.anomaly import Alert, Anomalies, AnomalyMonitor, Tighten, WebhookHook
from governor.spend import SpendRecord

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LOGGER = "governor.anomaly._actions"
ROOT = Path(__file__).resolve().parent.parent


class Seen:
    """One request a receiver got."""

    def __init__(self, method: str, path: str, headers: Any, body: bytes) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body

    def scope(self) -> str:
        return str(json.loads(self.body)["alert"]["scope"])


Answer = Callable[[BaseHTTPRequestHandler, "Receiver"], None]


class Receiver:
    """An HTTP server on 127.0.0.1 that records requests and answers with
    ``answer``; ``release`` ends any wait an answer makes."""

    def __init__(self, answer: Answer) -> None:
        self.seen: list[Seen] = []
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                seen = Seen(self.command, self.path, self.headers, body)
                receiver.seen.append(seen)
                answer(self, receiver)

            do_POST = do_GET = _record

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def reply(handler: BaseHTTPRequestHandler, status: int, **headers: str) -> None:
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.send_header("Content-Length", "0")
    handler.end_headers()


@pytest.fixture
def serve() -> Iterator[Callable[[Answer], Receiver]]:
    """Start receivers; each is closed after the test."""
    started: list[Receiver] = []

    def start(answer: Answer) -> Receiver:
        started.append(Receiver(answer))
        return started[-1]

    yield start
    for receiver in started:
        receiver.close()


def answer_204(handler: BaseHTTPRequestHandler, receiver: Receiver) -> None:
    reply(handler, 204)


def hang_then_204(handler: BaseHTTPRequestHandler, receiver: Receiver) -> None:
    """Say nothing until released (or 30 s), then 204."""
    receiver.release.wait(30)
    reply(handler, 204)


def drip_headers(handler: BaseHTTPRequestHandler, receiver: Receiver) -> None:
    """Send the status line, then one header line every 0.2 s for 6 s."""
    handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
    handler.wfile.flush()
    for n in range(30):
        if receiver.release.wait(0.2):
            return
        try:
            handler.wfile.write(f"X-Drip-{n}: .\r\n".encode())
            handler.wfile.flush()
        except OSError:
            return  # the client hung up
    handler.wfile.write(b"Content-Length: 0\r\n\r\n")


def drip_body(size: int, every_s: float) -> Answer:
    """An answer of 200 with a ``size``-byte body sent one byte every
    ``every_s`` (until released)."""

    def answer(handler: BaseHTTPRequestHandler, receiver: Receiver) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(size))
        handler.end_headers()
        for _ in range(size):
            try:
                handler.wfile.write(b"x")
                handler.wfile.flush()
            except OSError:
                return  # the client hung up
            if receiver.release.wait(every_s):
                return

    return answer


def an_alert(scope: str = "team:search") -> Alert:
    return Alert(
        scope=scope,
        metric="usd",
        rule="burst",
        ts=T0,
        interval_start=T0,
        observed=Decimal("0.5"),
        threshold=Decimal("0.1"),
        baseline_mean=Decimal("0.12"),
        baseline_std=Decimal("0.01"),
    )


def wait_for(check: Callable[[], bool], within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


# -- 1. webhook_timeout_s bounds the whole POST -------------------------------


def test_a_receiver_that_drips_its_answer_is_cut_off_at_the_timeout(
    serve: Callable[[Answer], Receiver], caplog: pytest.LogCaptureFixture
) -> None:
    """A header line every 0.2 s never trips a per-read timeout of 1 s; the
    POST is still cut off about 1 s after it started (6 s before)."""
    receiver = serve(drip_headers)
    hook = WebhookHook(receiver.url(), timeout_s=1.0, blocking=True)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        hook(an_alert())
    took_s = time.monotonic() - started
    assert 0.9 < took_s < 2.5, took_s
    assert "timed out" in caplog.text
    assert "webhook_timeout_s=1 s" in caplog.text


def test_a_receiver_that_drips_its_body_is_cut_off_at_the_timeout(
    serve: Callable[[Answer], Receiver], caplog: pytest.LogCaptureFixture
) -> None:
    """A byte of the body every 0.1 s, well within the per-read timeout: the
    POST is still cut off at timeout_s in all (10 s before) and logged."""
    receiver = serve(drip_body(100, 0.1))
    hook = WebhookHook(receiver.url(), timeout_s=0.5, blocking=True)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        hook(an_alert())
    took_s = time.monotonic() - started
    assert took_s < 2.5, f"the POST took {took_s:.1f} s with timeout_s=0.5"
    assert len(receiver.seen) == 1
    assert [record.getMessage() for record in caplog.records] == [
        f"anomaly webhook POST to http://127.0.0.1:{receiver.port}/... failed: "
        "timed out: no whole answer within webhook_timeout_s=0.5 s; the alert "
        "was dropped"
    ]


def test_a_background_post_to_a_dripping_receiver_ends_at_the_timeout(
    serve: Callable[[Answer], Receiver], caplog: pytest.LogCaptureFixture
) -> None:
    """The background thread is freed at the timeout too: close() finds
    nothing unsent and nothing under way."""
    receiver = serve(drip_body(100, 0.1))
    hook = WebhookHook(receiver.url(), timeout_s=0.5)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        hook(an_alert())
        assert hook.close(timeout_s=5.0) == 0
    assert len(receiver.seen) == 1
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1, messages
    expected = "failed: timed out: no whole answer within webhook_timeout_s=0.5 s"
    assert expected in messages[0]


def test_a_body_dripped_within_the_timeout_is_read_whole(
    serve: Callable[[Answer], Receiver], caplog: pytest.LogCaptureFixture
) -> None:
    """Keeping the socket to cut does not cut a POST that ends in time."""
    receiver = serve(drip_body(5, 0.01))
    hook = WebhookHook(receiver.url(), timeout_s=5.0, blocking=True)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        hook(an_alert())
    assert len(receiver.seen) == 1
    assert caplog.records == []


# -- 2. a bounded queue, and no long wait at exit ------------------------------


def test_a_full_queue_drops_the_oldest_alerts_with_a_warning(
    serve: Callable[[Answer], Receiver], caplog: pytest.LogCaptureFixture
) -> None:
    """While a POST hangs, at most max_queued alerts wait; the oldest go."""
    receiver = serve(hang_then_204)
    hook = WebhookHook(receiver.url(), timeout_s=10.0, max_queued=2)
    hook(an_alert("user:u1"))
    wait_for(lambda: len(receiver.seen) == 1)  # u1 is under way, hanging
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for n in range(2, 6):
            hook(an_alert(f"user:u{n}"))
    (warning,) = caplog.records  # one a minute at most
    assert "full (max_queued=2), so the oldest was dropped (1 dropped so far)" in (
        warning.getMessage()
    )
    receiver.release.set()
    assert hook.close(timeout_s=10) == 2  # u2 and u3, dropped from the full queue
    assert [seen.scope() for seen in receiver.seen] == ["user:u1", "user:u4", "user:u5"]


def test_alerts_queued_for_a_hung_receiver_do_not_hold_the_exit(
    serve: Callable[[Answer], Receiver], tmp_path: Path
) -> None:
    """Six alerts for a receiver that never answers, no close(): the process
    exits about one timeout after its last line (six timeouts before), and
    says which alerts it dropped."""
    receiver = serve(hang_then_204)
    script = tmp_path / "alerts.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import logging
            from datetime import UTC, datetime
            from decimal import Decimal
            from governor.anomaly import Alert, WebhookHook

            logging.basicConfig(level=logging.WARNING)
            t0 = datetime(2026, 12, 1, tzinfo=UTC)
            hook = WebhookHook({receiver.url()!r}, timeout_s=1.0)
            for n in range(6):
                hook(Alert(f"user:u{{n}}", "usd", "burst", t0, t0, Decimal(1),
                     Decimal(0), Decimal(0), Decimal(0)))
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    dropped = re.search(
        r"(\d) alert\(s\) were not POSTed within ([\d.]+) s of close and were "
        r"dropped( \(one POST is still under way\))?",
        done.stderr,
    )
    assert dropped is not None, done.stderr
    unsent, waited_s, under_way = dropped.groups()
    # The exit waited one POST's timeout in all (six timeouts before: >= 6 s),
    # as the hook's own clock measured it, whatever the process's teardown.
    assert 1.0 <= float(waited_s) < 3.0, done.stderr
    before = done.stderr[: dropped.start()]  # the POST under way may fail after
    timed_out = before.count("; the alert was dropped")
    counted = timed_out + int(unsent)
    # The POST under way may time out, and say so, just before close reports
    # it as still under way: it is counted once either way.
    assert counted == 6 or (under_way is not None and counted == 5), done.stderr


def test_closing_the_governor_sends_the_monitors_queued_alerts(
    serve: Callable[[Answer], Receiver],
) -> None:
    """gov.close() waits for the webhook's queued POST, as monitor.close() does."""

    def slow_204(handler: BaseHTTPRequestHandler, receiver: Receiver) -> None:
        time.sleep(0.5)
        receiver.seen[-1].path = "answered"
        reply(handler, 204)

    receiver = serve(slow_204)
    settings = Anomalies(
        window_intervals=5,
        min_history_intervals=5,
        metrics=("tokens",),
        scopes=("all",),
        burst_factor=1000,
        webhook_url=receiver.url(),
    )
    # A monitor on record time, as the history fed below is dated.
    gov = Governor(Policy(), anomalies=AnomalyMonitor(settings, clock="records"))
    for minute in range(6):
        gov.monitor.observe(
            SpendRecord(
                ts=T0 + timedelta(minutes=minute, seconds=1),
                task_id="t",
                call_id=f"c{minute}",
                model="gpt-4o-mini",
                input_tokens=1000 if minute == 5 else 100,
            )
        )
    gov.close()
    assert [seen.path for seen in receiver.seen] == ["answered"]


# -- 3. redirects are reported, not followed -----------------------------------


def test_a_redirect_is_not_followed_and_is_logged(
    serve: Callable[[Answer], Receiver], caplog: pytest.LogCaptureFixture
) -> None:
    """A 302 would turn the POST into a bodiless GET: it is logged instead,
    with the Location redacted and the fix."""

    def redirect(handler: BaseHTTPRequestHandler, receiver: Receiver) -> None:
        if handler.path == "/hook":
            reply(handler, 302, Location="/final/T000/SECRET-TOKEN")
        else:
            reply(handler, 204)

    receiver = serve(redirect)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        WebhookHook(receiver.url(), blocking=True)(an_alert())
    assert [(seen.method, seen.path) for seen in receiver.seen] == [("POST", "/hook")]
    (record,) = caplog.records
    message = record.getMessage()
    assert "answered 302" in message
    assert f"redirect to http://127.0.0.1:{receiver.port}/..." in message
    assert "Set webhook_url to the final URL" in message
    assert "SECRET-TOKEN" not in message


# -- 4. credentials: sent as basic auth, never logged --------------------------


def test_credentials_in_the_url_are_sent_as_basic_auth(
    serve: Callable[[Answer], Receiver], caplog: pytest.LogCaptureFixture
) -> None:
    """alice:s3cret@ goes out as an Authorization header, not as the host."""
    receiver = serve(answer_204)
    url = f"http://alice:s3cret@127.0.0.1:{receiver.port}/ok"
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        WebhookHook(url, blocking=True)(an_alert())
    (seen,) = receiver.seen
    assert seen.headers["Authorization"] == "Basic " + base64.b64encode(
        b"alice:s3cret"
    ).decode("ascii")
    assert (seen.path, seen.scope(), caplog.text) == ("/ok", "team:search", "")


def test_log_lines_show_the_url_redacted(caplog: pytest.LogCaptureFixture) -> None:
    """No password, no path, no query in a log: the host and port only."""
    port = free_port()
    url = f"http://alice:s3cret@127.0.0.1:{port}/services/T000/B000/XYZ?token=abc"
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        WebhookHook(url, blocking=True)(an_alert())
    assert f"POST to http://127.0.0.1:{port}/... failed" in caplog.text
    for secret in ("s3cret", "alice", "services", "T000", "XYZ", "token=abc"):
        assert secret not in caplog.text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("ftp://alice:s3cret@127.0.0.1/services/XYZ", "ftp://127.0.0.1/..."),
        ("http://alice:s3cret@127.0.0.1:port/services/XYZ", "<unreadable host>"),
        ("http://alice:s3/cret@127.0.0.1/services/XYZ?t=1", "<unreadable host>"),
        ("http://[::1/services/XYZ", "<unreadable host>"),
        ("https://alice:s3cret@/services/XYZ", "https:///..."),
    ],
)
def test_a_bad_webhook_url_is_refused_redacted(url: str, shown: str) -> None:
    """Refused by Anomalies, naming the field, without the URL's secrets."""
    with pytest.raises(ConfigError, match="webhook_url: webhook URL") as caught:
        Anomalies(webhook_url=url)
    assert shown in str(caught.value)
    for secret in ("s3", "cret", "alice", "services", "XYZ"):
        assert secret not in str(caught.value)


# -- 5. unblock refuses what names nothing, says what it lifted -----------------


def block_and_lower(gov: Governor) -> None:
    gov.apply_tighten(Tighten("user:u7", "block", 0.5, an_alert("user:u7")))
    gov.apply_tighten(Tighten("team:search", "lower", 0.5, an_alert()))


@pytest.mark.parametrize(
    "scope", ["u7", "", " ", "user:", "colour:red", "all:x", "user:a#b", ":u7"]
)
def test_unblock_refuses_a_scope_that_names_nothing(scope: str) -> None:
    gov = Governor(Policy())
    block_and_lower(gov)
    with pytest.raises(ConfigError, match="names no scope: give 'kind:value'"):
        gov.unblock(scope)
    assert gov.tightened() == {"team:search": 0.5, "user:u7": "blocked"}
    gov.close()


@pytest.mark.parametrize("scope", ["user:u7", "user:u7 ", "User:u7", " USER : u7"])
def test_unblock_lifts_a_block_named_with_spaces_or_capitals(scope: str) -> None:
    gov = Governor(Policy())
    block_and_lower(gov)
    assert gov.unblock(scope) is True
    assert gov.tightened() == {"team:search": 0.5}
    assert gov.unblock("team:search") is True
    assert gov.tightened() == {}
    gov.close()


def test_unblock_of_a_scope_not_tightened_returns_false_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gov = Governor(Policy())
    block_and_lower(gov)
    with caplog.at_level(logging.INFO, logger="governor._engine"):
        assert gov.unblock("user:u8") is False
        assert gov.unblock("all") is False
    assert "'user:u8'): that scope is neither blocked nor lowered" in caplog.text
    assert len(gov.tightened()) == 2
    gov.close()


def test_the_scope_a_refusal_names_is_lifted_by_unblock() -> None:
    """ScopeBlocked.scope, as tightened() lists it, goes back into unblock."""
    from governor.adapters.litellm import GovernedLiteLLM

    gov = Governor(Policy())
    block_and_lower(gov)
    llm = GovernedLiteLLM(gov)
    ask = {"model": "gpt-4o-mini", "mock_response": "ok", "max_tokens": 20}
    messages = [{"role": "user", "content": "Hello"}]
    with pytest.raises(ScopeBlocked) as info, gov.task(user="u7"):
        llm.completion(messages=messages, **ask)
    assert gov.tightened()[info.value.scope] == "blocked"
    assert gov.unblock(info.value.scope) is True
    with gov.task(user="u7") as task:
        llm.completion(messages=messages, **ask)
    assert task.report().calls == 1
    gov.close()


def test_close_waits_for_a_slow_receiver_that_keeps_answering(
    serve: Callable[[Answer], Receiver],
) -> None:
    """Thirty alerts to a receiver taking 0.1 s each, with a 0.5 s timeout:
    close() waits past one timeout while POSTs keep ending, and all arrive."""

    def slow_204(handler: BaseHTTPRequestHandler, receiver: Receiver) -> None:
        time.sleep(0.1)
        reply(handler, 204)

    receiver = serve(slow_204)
    hook = WebhookHook(receiver.url(), timeout_s=0.5)
    for n in range(30):
        hook(an_alert(f"user:u{n}"))
    assert hook.close() == 0
    assert len(receiver.seen) == 30


def test_a_burst_of_alerts_to_a_fast_receiver_is_not_dropped(
    serve: Callable[[Answer], Receiver],
) -> None:
    """A hundred alerts at once (one per scope of a wide episode) all go."""
    receiver = serve(lambda handler, receiver: reply(handler, 204))
    hook = WebhookHook(receiver.url(), timeout_s=2.0)
    for n in range(100):
        hook(an_alert(f"user:u{n}"))
    assert hook.close() == 0
    assert sorted(seen.scope() for seen in receiver.seen) == sorted(
        f"user:u{n}" for n in range(100)
    )
