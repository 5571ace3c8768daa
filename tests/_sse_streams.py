"""A local OpenAI-style SSE server that says whether its client hung up.

It streams ``chunks`` words (" w0", " w1", ...), 20 ms apart, then a chunk
with the finish reason; each request's record counts the chunks sent and
says how the stream ended. Tests of streams a reader stops early use it to
see whether the provider's connection was closed.
"""

from __future__ import annotations

import gc
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHUNKS = 200
HANG_GUARD_S = 60.0

_ENVELOPE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0}


class SSEStream:
    """What the server did for one streamed request."""

    def __init__(self) -> None:
        self.sent = 0
        self.how = ""  # "hung up" or "finished"
        self.ended = threading.Event()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: SSEServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        size = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(size))
        record = SSEStream()
        self.server.streams.append(record)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for i in range(self.server.chunks):
                delta = {"content": f" w{i}"}
                choice = {"index": 0, "delta": delta, "finish_reason": None}
                self._event({**_ENVELOPE, "model": body["model"], "choices": [choice]})
                record.sent = i + 1
                self.server.stopped.wait(0.02)
            last = {"index": 0, "delta": {}, "finish_reason": "stop"}
            self._event({**_ENVELOPE, "model": body["model"], "choices": [last]})
            self._write(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            record.how = "finished"
        except OSError:  # BrokenPipeError, ConnectionResetError
            record.how = "hung up"
        finally:
            self.close_connection = True
            record.ended.set()

    def _event(self, data: dict[str, Any]) -> None:
        self._write(f"data: {json.dumps(data)}\n\n".encode())

    def _write(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


class SSEServer(ThreadingHTTPServer):
    """An OpenAI-style server streaming ``chunks`` words, 20 ms apart."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.chunks = CHUNKS
        self.streams: list[SSEStream] = []
        self.stopped = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def only_stream(self) -> SSEStream:
        """The one stream served, once it ended (a hang guard, no timing)."""
        (stream,) = self.streams
        assert stream.ended.wait(HANG_GUARD_S), "the provider's stream never ended"
        return stream


@contextmanager
def serving_without_gc() -> Iterator[SSEServer]:
    """The server, with the garbage collector off: only the governor can
    close a connection that LiteLLM keeps in a reference cycle."""
    sse = SSEServer()
    thread = threading.Thread(target=sse.serve_forever, daemon=True)
    thread.start()
    gc.disable()
    try:
        yield sse
    finally:
        gc.enable()
        gc.collect()
        sse.stopped.set()
        sse.shutdown()
        sse.server_close()
