"""webhook_timeout_s bounds reading the answer's body too, not only its head.

Each receiver is a real HTTP server on 127.0.0.1 (http.server in a thread)
that answers 200 at once and then sends its body one byte at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from governor.anomaly import Alert, WebhookHook

LOGGER = "governor.anomaly._actions"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class DripReceiver:
    """Answers 200 with a ``size``-byte body, one byte every ``every_s``."""

    def __init__(self, size: int, every_s: float) -> None:
        self.posts = 0
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts += 1
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                for _ in range(size):
                    try:
                        self.wfile.write(b"x")
                        self.wfile.flush()
                    except OSError:
                        return  # the client hung up
                    if receiver.release.wait(every_s):
                        return

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """End any drip, stop serving and free the port."""
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slow_drip() -> Iterator[DripReceiver]:
    """100 bytes, one every 0.1 s: 10 s for the whole body."""
    receiver = DripReceiver(size=100, every_s=0.1)
    yield receiver
    receiver.close()


@pytest.fixture
def quick_drip() -> Iterator[DripReceiver]:
    """5 bytes, one every 0.01 s: the whole body well within any timeout."""
    receiver = DripReceiver(size=5, every_s=0.01)
    yield receiver
    receiver.close()


def an_alert() -> Alert:
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


def test_a_receiver_that_drips_its_body_is_cut_off_at_the_timeout(
    slow_drip: DripReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """Each byte comes well within the per-read timeout, but the POST is
    cut off at timeout_s in all and logged as timed out."""
    hook = WebhookHook(slow_drip.url, timeout_s=0.5, blocking=True)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        hook(an_alert())
    took_s = time.monotonic() - started
    assert took_s < 2.5, f"the POST took {took_s:.1f} s with timeout_s=0.5"
    assert slow_drip.posts == 1
    assert [record.getMessage() for record in caplog.records] == [
        f"anomaly webhook POST to http://127.0.0.1:"
        f"{slow_drip.server.server_address[1]}/... failed: timed out: no whole "
        "answer within webhook_timeout_s=0.5 s; the alert was dropped"
    ]


def test_a_background_post_to_a_dripping_receiver_ends_at_the_timeout(
    slow_drip: DripReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """The background thread is freed at the timeout too: close() finds
    nothing unsent and nothing under way."""
    hook = WebhookHook(slow_drip.url, timeout_s=0.5)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        hook(an_alert())
        assert hook.close(timeout_s=5.0) == 0
    assert slow_drip.posts == 1
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1, messages
    expected = "failed: timed out: no whole answer within webhook_timeout_s=0.5 s"
    assert expected in messages[0]


def test_a_body_dripped_within_the_timeout_is_read_whole(
    quick_drip: DripReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """Keeping the socket to cut does not cut a POST that ends in time."""
    hook = WebhookHook(quick_drip.url, timeout_s=5.0, blocking=True)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        hook(an_alert())
    assert quick_drip.posts == 1
    assert caplog.records == []
