"""Whether prompt and answer text may go into telemetry, and its stand-ins.

The OpenTelemetry GenAI semantic conventions make content capture opt-in:
spans and events carry no prompt, answer or tool text unless
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``. Without it, a
text is shown by a short digest, so two records of one text can still be
matched without revealing it.
"""

from __future__ import annotations

import hashlib
import os
import traceback
from collections.abc import Sequence

__all__ = [
    "ENV_CAPTURE_CONTENT",
    "capture_content",
    "content_digest",
    "content_free_exception",
]

ENV_CAPTURE_CONTENT = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
"""``true`` (any case) lets prompt and answer text into spans and events."""

DIGEST_BYTES = 6
"""A digest of 12 hex digits: enough to tell a task's repeated items apart."""


def capture_content() -> bool:
    """True when the environment opts in to text in telemetry (read each time)."""
    return os.environ.get(ENV_CAPTURE_CONTENT, "").strip().lower() == "true"


def content_digest(text: str) -> str:
    """A short, unsalted digest of a text: equal texts give equal digests."""
    data = text.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).hexdigest()


def content_free_exception(error: BaseException) -> dict[str, str] | None:
    """Exception event attributes without the text an error message quotes.

    Returns None for an error whose message quotes no prompt or answer text,
    or when content capture is on: such an error is recorded as it is. A
    :class:`governor.loops.LoopDetected` quotes the repeated outputs or tool
    calls; its message and the last line of its stack trace are replaced by
    its rule and the digests of its evidence.
    """
    evidence = _evidence(error)
    if evidence is None or capture_content():
        return None
    rule = getattr(error, "rule", "")
    digests = ", ".join(content_digest(item) for item in evidence)
    message = (
        f"loop detected by rule {rule!r} ({len(evidence)} repeated item(s), "
        f"digests {digests}; set {ENV_CAPTURE_CONTENT}=true to record the text)"
    )
    kind = type(error)
    frames = "".join(traceback.format_tb(error.__traceback__))
    stacktrace = (
        f"Traceback (most recent call last):\n{frames}"
        f"{kind.__module__}.{kind.__qualname__}: {message}\n"
    )
    return {"exception.message": message, "exception.stacktrace": stacktrace}


def _evidence(error: BaseException) -> Sequence[str] | None:
    from governor.loops import LoopDetected

    if isinstance(error, LoopDetected):
        return error.evidence
    return None
