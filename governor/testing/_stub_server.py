"""A local OpenAI-compatible HTTP server for tests of real HTTP paths.

``StubServer`` listens on 127.0.0.1 (a free port) and answers
``POST /v1/chat/completions`` like the OpenAI API, plain or as a server-sent
event stream, with per-model behaviour set by the test: the answer, the usage
numbers it reports, an error status (``429`` with ``Retry-After``, ``503``,
...) and a delay. It records every request so a test can assert what was sent::

    with StubServer({"gpt-4o": StubBehaviour(status=503)}) as stub:
        litellm.completion(
            model="openai/gpt-4o-mini",
            api_base=stub.base_url + "/v1",
            api_key="sk-test",
            messages=[{"role": "user", "content": "hi"}],
        )
        assert stub.requests[0].body["model"] == "gpt-4o-mini"
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from governor._errors import ConfigError

__all__ = ["StubBehaviour", "StubRequest", "StubServer"]

logger = logging.getLogger(__name__)

_HOST = "127.0.0.1"
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    429: "rate_limit_exceeded",
    500: "server_error",
    503: "service_unavailable",
}


@dataclass(frozen=True, kw_only=True)
class StubBehaviour:
    """How the stub answers one model.

    Attributes:
        answer: the assistant text returned (split into word pieces on streams).
        prompt_tokens: reported prompt tokens; ``None`` counts whitespace
            separated words of every message plus 3 per message.
        completion_tokens: reported completion tokens; ``None`` counts the
            answer's words.
        status: HTTP status to answer with; anything but 200 returns an
            OpenAI-style error body.
        retry_after_s: sent as the ``Retry-After`` header on error answers.
        fail_times: with an error ``status``, only the first ``fail_times``
            requests for this model fail and later ones succeed; ``None``
            fails every request.
        delay_s: seconds to wait before answering.
        usage: the ``usage`` object to report instead of the counts above,
            sent as given (to test providers that report partial, zero or
            malformed usage); an empty mapping leaves ``usage`` out, as some
            OpenAI-compatible servers do.
        chunk_delay_s: seconds to wait before each streamed chunk, as a model
            generating; a client that closes its stream early stops it.
    """

    answer: str = "stub answer"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    status: int = 200
    retry_after_s: float | None = None
    fail_times: int | None = None
    delay_s: float = 0.0
    usage: Mapping[str, Any] | None = None
    chunk_delay_s: float = 0.0

    def __post_init__(self) -> None:
        if self.status not in {s.value for s in HTTPStatus}:
            raise ConfigError(
                f"StubBehaviour.status={self.status!r} is not an HTTP status code"
            )
        for name in ("prompt_tokens", "completion_tokens", "fail_times"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"StubBehaviour.{name}={value!r} must be >= 0")
        for name in ("delay_s", "chunk_delay_s"):
            if getattr(self, name) < 0:
                raise ConfigError(
                    f"StubBehaviour.{name}={getattr(self, name)!r} must be >= 0"
                )


@dataclass(frozen=True, kw_only=True)
class StubRequest:
    """One request the stub received, with its JSON body decoded."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    status: int

    @property
    def model(self) -> str | None:
        """The ``model`` field of the body, if any."""
        model = self.body.get("model")
        return model if isinstance(model, str) else None


class StubServer:
    """An OpenAI-compatible chat server on 127.0.0.1 for one test.

    Use it as a context manager; ``base_url`` is ``http://127.0.0.1:<port>``
    (append ``/v1`` for an OpenAI ``api_base``). Safe to call from several
    threads; each request is served on its own thread.

    :meth:`start` on a server already serving does nothing, so
    ``with StubServer().start() as stub:`` works too. A closed server has
    released its port and cannot serve again: :meth:`start` after
    :meth:`close` raises ``RuntimeError``; build a new ``StubServer``.
    :meth:`close` again does nothing.
    """

    def __init__(
        self,
        behaviours: Mapping[str, StubBehaviour] | None = None,
        *,
        default: StubBehaviour | None = None,
        port: int = 0,
    ) -> None:
        self._behaviours = dict(behaviours or {})
        self._default = default or StubBehaviour()
        self._failures: dict[str, int] = {}
        self._requests: list[StubRequest] = []
        self._streamed_whole = 0
        self._lock = threading.Lock()
        self._server = _Server((_HOST, port), _Handler)
        self._server.stub = self
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def base_url(self) -> str:
        """The server's root URL, without a trailing slash."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def requests(self) -> list[StubRequest]:
        """A snapshot of the requests received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def streams_finished(self) -> int:
        """How many streamed answers were written to their end.

        A stream whose client closed it early stops at the next chunk and
        is not counted.
        """
        with self._lock:
            return self._streamed_whole

    def _stream_finished(self) -> None:
        with self._lock:
            self._streamed_whole += 1

    def set_behaviour(self, model: str, behaviour: StubBehaviour) -> None:
        """Change how ``model`` is answered from the next request on."""
        with self._lock:
            self._behaviours[model] = behaviour
            self._failures.pop(model, None)

    def start(self) -> StubServer:
        """Start serving on a background thread; returns ``self``.

        Does nothing on a server already serving.

        Raises:
            RuntimeError: the server was closed; its port is released, so
                build a new ``StubServer`` to serve again.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError(
                    f"this StubServer ({self.base_url}) was closed and has "
                    "released its port, so it cannot serve again: build a new "
                    "StubServer(...) instead"
                )
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._server.serve_forever,
                    # A short poll keeps close() fast; the default waits 0.5 s.
                    kwargs={"poll_interval": 0.02},
                    name="governor-stub-server",
                    daemon=True,
                )
                self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port; closing again does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread, self._thread = self._thread, None
        if thread is not None:
            self._server.shutdown()
            thread.join()
        self._server.server_close()

    def __enter__(self) -> StubServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _decide(self, model: str) -> tuple[StubBehaviour, int]:
        """Return the behaviour for ``model`` and the status to send now."""
        with self._lock:
            behaviour = self._behaviours.get(model, self._default)
            if behaviour.status == 200 or behaviour.fail_times is None:
                return behaviour, behaviour.status
            failed = self._failures.get(model, 0)
            if failed >= behaviour.fail_times:
                return behaviour, 200
            self._failures[model] = failed + 1
            return behaviour, behaviour.status

    def _record(self, request: StubRequest) -> None:
        with self._lock:
            self._requests.append(request)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    stub: StubServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The base class prints tracebacks to stderr; a client that hung up
        # (e.g. after its own timeout) is normal in tests, anything else is not.
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            logger.debug("stub server: client %s went away: %s", client_address, error)
        else:
            logger.warning("stub server: request failed: %r", error)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        """Answer a chat completion, or 404 for any other path."""
        body = self._read_json()
        if self.path.rstrip("/") not in {"/v1/chat/completions", "/chat/completions"}:
            self._record(body, 404)
            self._send_error(404, f"no route for {self.path}", retry_after_s=None)
            return
        model = str(body.get("model", ""))
        behaviour, status = self.server.stub._decide(model)
        self._record(body, status)
        if behaviour.delay_s > 0:
            time.sleep(behaviour.delay_s)
        if status != 200:
            self._send_error(status, f"stub error for {model}", behaviour.retry_after_s)
        elif body.get("stream"):
            self._send_stream(body, behaviour)
        else:
            self._send_json(200, _completion(body, behaviour))

    def log_message(self, format: str, *args: Any) -> None:
        # The base class writes an access log line to stderr; a library logs.
        logger.debug(format, *args)

    def _read_json(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            parsed = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            return {"_raw": raw.decode("utf-8", "replace")}
        return parsed if isinstance(parsed, dict) else {"_raw": parsed}

    def _record(self, body: dict[str, Any], status: int) -> None:
        self.server.stub._record(
            StubRequest(
                method=self.command,
                path=self.path,
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
                status=status,
            )
        )

    def _send_json(
        self,
        status: int,
        payload: dict[str, Any],
        headers: Mapping[str, str] | None = None,
    ) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_error(
        self, status: int, message: str, retry_after_s: float | None
    ) -> None:
        headers = {} if retry_after_s is None else {"Retry-After": f"{retry_after_s:g}"}
        error = {
            "message": message,
            "type": _ERROR_TYPES.get(status, "api_error"),
            "code": status,
        }
        self._send_json(status, {"error": error}, headers)

    def _send_stream(self, body: dict[str, Any], behaviour: StubBehaviour) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        # No length is known up front: the stream ends when the connection closes.
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        for event in _stream_events(body, behaviour):
            if behaviour.chunk_delay_s:
                time.sleep(behaviour.chunk_delay_s)
            self.wfile.write(f"data: {event}\n\n".encode())
            self.wfile.flush()
        self.server.stub._stream_finished()


def _usage(body: Mapping[str, Any], behaviour: StubBehaviour) -> dict[str, Any]:
    if behaviour.usage is not None:
        return dict(behaviour.usage)
    prompt = behaviour.prompt_tokens
    if prompt is None:
        messages = body.get("messages") or []
        prompt = sum(len(str(m.get("content") or "").split()) + 3 for m in messages)
    completion = behaviour.completion_tokens
    if completion is None:
        completion = len(behaviour.answer.split())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _envelope(body: Mapping[str, Any], kind: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-stub-" + uuid.uuid4().hex[:12],
        "object": kind,
        "created": int(time.time()),
        "model": body.get("model", ""),
    }


def _completion(body: Mapping[str, Any], behaviour: StubBehaviour) -> dict[str, Any]:
    message = {"role": "assistant", "content": behaviour.answer}
    answer = {
        **_envelope(body, "chat.completion"),
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }
    usage = _usage(body, behaviour)
    if usage:
        answer["usage"] = usage
    return answer


def _stream_events(body: Mapping[str, Any], behaviour: StubBehaviour) -> Iterator[str]:
    """Yield the SSE data lines of a streamed answer, ``[DONE]`` last.

    As in the OpenAI API, usage comes only in one extra chunk with no choices,
    and only when ``stream_options.include_usage`` was asked for.
    """
    base = _envelope(body, "chat.completion.chunk")
    options = body.get("stream_options") or {}
    with_usage = bool(options.get("include_usage")) and behaviour.usage != {}
    pieces = re.findall(r"\s*\S+\s*", behaviour.answer) or [behaviour.answer]
    deltas: list[tuple[dict[str, Any], str | None]] = [
        ({"role": "assistant", "content": p} if i == 0 else {"content": p}, None)
        for i, p in enumerate(pieces)
    ]
    deltas.append(({}, "stop"))
    for delta, finish in deltas:
        chunk = {
            **base,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if with_usage:
            chunk["usage"] = None
        yield json.dumps(chunk)
    if with_usage:
        yield json.dumps({**base, "choices": [], "usage": _usage(body, behaviour)})
    yield "[DONE]"
