"""What happens on an alert: log, call back, POST a webhook, tighten a budget.

Every action is a hook, a callable taking one :class:`Alert`. Hooks must not
break the call that tripped the alert, so :class:`AnomalyMonitor` catches and
logs whatever a hook raises; the webhook also never raises on its own.
"""

from __future__ import annotations

import atexit
import base64
import collections
import contextlib
import http.client
import json
import logging
import math
import re
import socket
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from governor._errors import ConfigError
from governor._forks import start_over_in_children
from governor._quiet import Quiet
from governor.anomaly._detector import Alert

__all__ = ["AlertHook", "LogHook", "Tighten", "WebhookHook"]

logger = logging.getLogger(__name__)

AlertHook = Callable[[Alert], None]


@dataclass(frozen=True, slots=True)
class Tighten:
    """A request to lower a scope's budget, block the scope, or undo a lowering.

    The governor hands it to the ``on_tighten`` callback given to
    :class:`AnomalyMonitor`. ``"lower"`` multiplies the scope's limits by
    ``factor``; ``"block"`` refuses the scope's calls until someone unblocks
    it. ``"restore"`` comes once the anomaly episode that lowered the scope has
    ended and undoes that lowering: its ``factor`` is the reciprocal of the
    lowering's, so a callback that multiplies limits by ``factor`` restores
    them, and ``alert`` is the alert that lowered the scope.
    """

    scope: str
    mode: Literal["lower", "block", "restore"]
    factor: float
    alert: Alert


class LogHook:
    """Write each alert to this module's logger at a fixed level."""

    def __init__(self, level: int = logging.WARNING) -> None:
        self.level = level

    def __call__(self, alert: Alert) -> None:
        logger.log(self.level, "%s", alert.describe())


class WebhookHook:
    """POST each alert as JSON to a URL; never raises into the caller.

    By default the POST runs on a background thread so that the governed
    call which tripped the alert does not wait for it; ``blocking=True`` posts
    in the caller's thread. Failures (refused connection, timeout, HTTP error
    status, a redirect) are logged at WARNING and the alert is dropped.

    Each POST has ``timeout_s`` in all, from connecting to the last byte of
    the answer: a receiver that answers slowly, or drips its answer, is cut
    off then (only a host name that takes longer to look up can hold it
    longer). Redirects are not followed: a ``3xx`` answer is logged with its
    ``Location``; set the URL to the final one. A user name and password in
    the URL (``https://user:pass@host/hook``) are sent as HTTP basic auth
    (an ``Authorization`` header in ``headers`` wins). Log lines show the URL
    redacted: the scheme, host and port only (``https://hooks.slack.com/...``):
    no user name or password, path, parameters or query.

    At most ``max_queued`` alerts wait for the background thread; past that
    the oldest waiting one is dropped, with a WARNING (at most one a minute,
    with the count). The thread is a daemon: the interpreter's exit does not
    wait for it beyond one ``timeout_s``, given at exit to alerts still
    waiting (see :meth:`close`).

    Args:
        url: an ``http://`` or ``https://`` URL.
        timeout_s: seconds one POST may take in all.
        headers: extra request headers, e.g. an authorisation token.
        blocking: post in the caller's thread.
        max_queued: alerts that may wait for the background thread.

    Raises:
        ConfigError: the URL is not an http(s) URL with a host, or
            ``timeout_s`` or ``max_queued`` is not above 0.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        headers: Mapping[str, str] | None = None,
        blocking: bool = False,
        max_queued: int = 1000,
    ) -> None:
        _check_limits(timeout_s, max_queued)
        self.url = url
        self.timeout_s = timeout_s
        self.max_queued = max_queued
        self._target, auth = _split_credentials(url)
        self._shown = _redact(url)
        self._headers = {"Content-Type": "application/json"}
        if auth is not None:
            self._headers["Authorization"] = auth
        for name, value in (headers or {}).items():
            if name.lower() == "authorization":
                self._headers.pop("Authorization", None)
            self._headers[name] = value
        self._blocking = blocking
        self._dropped = 0  # alerts dropped from a full queue, in all
        self._overflowed = 0  # of those, since the last close
        self._quiet = Quiet()
        self._start_over()
        start_over_in_children(self)
        _LIVE.add(self)

    def _start_over(self) -> None:
        """A fresh queue and no thread (at start, and in a forked child)."""
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._queue: collections.deque[bytes] = collections.deque()
        self._worker: threading.Thread | None = None
        self._posting = False
        self._posted = 0  # POSTs ended, sent or not

    def _forget_parent(self) -> None:
        """In a forked child: the parent's thread is not here, so start over.

        Alerts the parent had queued stay the parent's to send.
        """
        self._start_over()

    def __repr__(self) -> str:
        return f"WebhookHook({self._shown!r}, timeout_s={self.timeout_s!r})"

    def __call__(self, alert: Alert) -> None:
        body = json.dumps({"alert": alert.to_json_dict()}).encode()
        if self._blocking:
            self._post(body)
            return
        with self._lock:
            dropped = 0
            while len(self._queue) >= self.max_queued:
                self._queue.popleft()
                dropped += 1
            self._queue.append(body)
            self._dropped += dropped
            self._overflowed += dropped
            total = self._dropped
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._work, name="governor-webhook", daemon=True
                )
                self._worker.start()
        if dropped:
            self._warn_dropped(total)

    def _warn_dropped(self, total: int) -> None:
        if self._quiet.due("dropped") is None:
            return
        logger.warning(
            "anomaly webhook %s: the queue of alerts waiting to be POSTed is "
            "full (max_queued=%d), so the oldest was dropped (%d dropped so "
            "far): the receiver is slow or does not answer (each POST may take "
            "webhook_timeout_s=%g s). Check the receiver, or lower the timeout",
            self._shown,
            self.max_queued,
            total,
            self.timeout_s,
        )

    def _work(self) -> None:
        """Post the queued alerts one by one; end when none is left."""
        while True:
            with self._lock:
                if not self._queue:
                    self._worker = None
                    self._changed.notify_all()
                    return
                body = self._queue.popleft()
                self._posting = True
            try:
                self._post(body)
            finally:
                with self._lock:
                    self._posting = False
                    self._posted += 1
                    self._changed.notify_all()

    def _post(self, body: bytes) -> None:
        request = urllib.request.Request(
            self._target, data=body, headers=self._headers, method="POST"
        )
        watch = _Watch(self.timeout_s)
        opener = urllib.request.build_opener(
            _NoRedirects(), _WatchedHTTP(watch), _WatchedHTTPS(watch)
        )
        reason: str | None = None
        try:
            with opener.open(request, timeout=self.timeout_s) as reply:
                reply.read(_MAX_ANSWER)
        except urllib.error.HTTPError as exc:
            self._warn_status(exc)
            return
        except Exception as exc:
            # URLError, timeouts, malformed replies: an alert channel failing
            # must never fail the governed call.
            reason = self._scrub(str(exc))
        finally:
            watch.finish()
        if watch.expired:  # cut off: what came may end early without an error
            reason = (
                "timed out: no whole answer within "
                f"webhook_timeout_s={self.timeout_s:g} s"
            )
        if reason is not None:
            logger.warning(
                "anomaly webhook POST to %s failed: %s; the alert was dropped",
                self._shown,
                reason,
            )

    def _warn_status(self, exc: urllib.error.HTTPError) -> None:
        """Log an error or redirect status; the alert is not sent."""
        location = exc.headers.get("Location") if exc.headers else None
        if 300 <= exc.code < 400 and location:
            logger.warning(
                "anomaly webhook POST to %s was answered %d %s, a redirect to "
                "%s; the alert was dropped: redirects are not followed (the "
                "alert would be sent on as a GET without its body). Set "
                "webhook_url to the final URL",
                self._shown,
                exc.code,
                exc.reason,
                _redact(urljoin(self._target, location)),
            )
            return
        logger.warning(
            "anomaly webhook POST to %s failed: HTTP Error %d: %s; the alert "
            "was dropped",
            self._shown,
            exc.code,
            exc.reason,
        )

    def _scrub(self, text: str) -> str:
        """``text`` with the URL and its path, as sent, redacted."""
        path = urlsplit(self._target).path
        text = text.replace(self._target, self._shown)
        return text.replace(path, urlsplit(self._shown).path) if len(path) > 1 else text

    def close(self, timeout_s: float | None = None) -> int:
        """Wait for queued POSTs; return how many alerts were dropped unsent.

        With ``timeout_s`` None, waits while the receiver keeps answering:
        up to one POST's timeout after the last POST ended, and at most
        ``_CLOSE_MOST_S`` in all, so a slow but working receiver gets every
        alert and a hung one holds close for one timeout. With ``timeout_s``
        given, waits that long in all. What is still waiting then is dropped
        with a WARNING; the count returned also holds the alerts dropped from
        a full queue since the last close. A later alert starts a new thread.
        At the interpreter's exit each hook with alerts waiting gets one
        POST's timeout in all.
        """
        renews = timeout_s is None
        wait_s = self.timeout_s if timeout_s is None else max(timeout_s, 0.0)
        start = time.monotonic()
        with self._lock:
            deadline, posted = start + wait_s, self._posted
            while self._queue or self._posting:
                if renews and self._posted != posted:  # still answering
                    posted = self._posted
                    deadline = min(time.monotonic() + wait_s, start + _CLOSE_MOST_S)
                left_s = deadline - time.monotonic()
                if left_s <= 0:
                    break
                self._changed.wait(left_s)
            unsent = len(self._queue)
            self._queue.clear()
            under_way = self._posting
            overflowed, self._overflowed = self._overflowed, 0
        if unsent or under_way:
            logger.warning(
                "anomaly webhook %s: %d alert(s) were not POSTed within %.3g s "
                "of close and were dropped%s: the receiver is slow or does "
                "not answer",
                self._shown,
                unsent,
                time.monotonic() - start,
                " (one POST is still under way)" if under_way else "",
            )
        return unsent + overflowed

    def _pending(self) -> bool:
        return bool(self._queue or self._posting)


# The most of an answer read; the rest is not needed.
_MAX_ANSWER = 65536
# How often a POST past its deadline is cut again until it has ended (its
# connection may not be open yet when the deadline comes).
_CUT_EVERY_S = 0.05

_LIVE: weakref.WeakSet[WebhookHook] = weakref.WeakSet()
# The longest close() waits for a receiver that keeps answering.
_CLOSE_MOST_S = 60.0


@atexit.register
def _close_at_exit() -> None:
    """Give alerts still waiting one POST's timeout, then let the process go."""
    for hook in list(_LIVE):
        if hook._pending():
            hook.close(hook.timeout_s)


class _Watch:
    """Cut one POST off ``timeout_s`` after it starts, whatever it is doing.

    The socket timeout bounds each read and write alone: a receiver that
    sends a byte now and then would hold a POST for ever. A watchdog thread
    shuts the connection's socket down at the deadline, so the read under
    way ends at once. The socket is kept when the connection opens it:
    urllib takes it off the connection once the answer's head is read, and
    the body is read from it after that.
    """

    def __init__(self, timeout_s: float) -> None:
        self.expired = False
        self._connection: http.client.HTTPConnection | None = None
        self._socket: socket.socket | None = None
        self._done = threading.Event()
        threading.Thread(
            target=self._guard,
            args=(timeout_s,),
            name="governor-webhook-watch",
            daemon=True,
        ).start()

    def connection(self, http_class: Any) -> Callable[..., Any]:
        """Wrap ``http_class`` so that the connection it makes is watched."""

        def make(*args: Any, **kwargs: Any) -> Any:
            connection = http_class(*args, **kwargs)
            connect = connection.connect

            def connect_and_keep() -> None:
                connect()
                self._socket = connection.sock

            connection.connect = connect_and_keep
            self._connection = connection
            return connection

        return make

    def finish(self) -> None:
        """The POST has ended: stop watching."""
        self._done.set()

    def _guard(self, timeout_s: float) -> None:
        if self._done.wait(timeout_s):
            return
        self.expired = True
        while not self._done.is_set():
            self._cut()
            self._done.wait(_CUT_EVERY_S)

    def _cut(self) -> None:
        # The connection's socket while it connects (TLS wraps it in another),
        # the one kept from connecting while the answer's body is read.
        for sock in (getattr(self._connection, "sock", None), self._socket):
            if isinstance(sock, socket.socket):
                # The plain socket's shutdown, also under TLS: it ends the read
                # blocked in the other thread; OSError: not connected, closed.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _WatchedHTTP(urllib.request.HTTPHandler):
    """Plain HTTP whose connections a :class:`_Watch` can cut."""

    def __init__(self, watch: _Watch) -> None:
        super().__init__()
        self._watch = watch

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        return super().do_open(self._watch.connection(http_class), req, **kwargs)


class _WatchedHTTPS(urllib.request.HTTPSHandler):
    """HTTPS whose connections a :class:`_Watch` can cut."""

    def __init__(self, watch: _Watch) -> None:
        super().__init__()
        self._watch = watch

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        return super().do_open(self._watch.connection(http_class), req, **kwargs)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Turn every redirect into an error: following one would send the
    alert on as a GET without its body."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _check_limits(timeout_s: float, max_queued: int) -> None:
    if not (isinstance(timeout_s, int | float) and 0 < timeout_s < math.inf):
        raise ConfigError(
            f"WebhookHook(timeout_s={timeout_s!r}): give the seconds one POST "
            "may take, a number above 0, e.g. timeout_s=5"
        )
    if (
        isinstance(max_queued, bool)
        or not isinstance(max_queued, int)
        or max_queued < 1
    ):
        raise ConfigError(
            f"WebhookHook(max_queued={max_queued!r}): give how many alerts may "
            "wait to be POSTed, a whole number of at least 1, e.g. max_queued=50"
        )


def _split_credentials(url: str) -> tuple[str, str | None]:
    """The URL without user name and password, and a basic auth header for them.

    Raises:
        ConfigError: the URL is not an http(s) URL with a host and a valid port.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is no number
    except ValueError:
        raise ConfigError(
            f"webhook URL {_redact(url)} cannot be read (a port that is not a "
            "number, or an unclosed '['); give an http:// or https:// URL, e.g. "
            "'https://hooks.example.com/governor', with a '/', '#', '?' or '@' in "
            "a user name or password percent-encoded (%2F, %23, %3F, %40)"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"webhook URL {_redact(url)} is not an http:// or https:// URL with "
            "a host; give one, e.g. 'https://hooks.example.com/governor'"
        )
    if parts.username is None and parts.password is None:
        return url, None
    netloc = parts.netloc.rpartition("@")[2]
    target = urlunsplit(parts._replace(netloc=netloc))
    user = unquote(parts.username or "")
    secret = unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{secret}".encode()).decode("ascii")
    return target, f"Basic {token}"


def _redact(url: str) -> str:
    """``url`` as log lines and errors show it: ``scheme://host[:port]/...``.

    ``https://alice:s3cret@hooks.slack.com/services/T0/B0/XYZ?x=1`` becomes
    ``https://hooks.slack.com/...``: no user info, path, ``;params``, query
    or fragment, where tokens live (Slack's path, Telegram's
    ``/bot<token>/``). When an ``@`` follows the address as read (a
    password holding ``/``, ``#`` or ``?``) the host is hidden too
    (``https://***/...``): part of the password may read as one.
    """
    scheme, sep, rest = url.strip().partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        return "<not an http(s) URL>"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a port that is no number raises ValueError
    except ValueError:
        return f"{scheme}://<unreadable host>/..."
    if "@" in rest and "@" not in parts.netloc:
        return f"{scheme}://***/..."
    host = parts.netloc.rpartition("@")[2]
    if parts.path.strip("/") or parts.query or parts.fragment:
        return f"{scheme}://{host}/..."
    return f"{scheme}://{host}{parts.path}"


_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
