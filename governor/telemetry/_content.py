"""Whether prompt and answer text may go into telemetry, and its stand-ins.

The OpenTelemetry GenAI semantic conventions make content capture opt-in:
spans and events carry no prompt, answer or tool text unless
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``. Without it, a
text is shown by a short digest, so two records of one text can still be
matched without revealing it, and an error is recorded without its message,
which may quote the request.
"""

from __future__ import annotations

import hashlib
import os
import re
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
    """Exception event attributes without the text an error message may quote.

    Returns None when content capture is on: the error is then recorded as
    the OpenTelemetry SDK records it, message and chained errors included.

    Otherwise no error's message is recorded, whatever its class: a
    provider's error may quote the request (a 400 that echoes the prompt,
    LiteLLM's "Failed to parse tool call arguments" with the arguments), and
    so may the errors chained to it. ``exception.message`` says so and
    names the facts the error carries that quote nothing: the governor's
    ``code``, an HTTP ``status_code`` and LiteLLM's ``llm_provider``. A
    :class:`governor.loops.LoopDetected` is shown by its rule and the
    digests of its evidence instead. ``exception.stacktrace`` keeps the
    frames (file, line and function, without the source line) of the error
    and of the errors chained to it, each error shown by its class and
    those facts, without added notes.
    """
    if capture_content():
        return None
    try:
        return _content_free(error)
    except Exception:  # never fall back to the SDK's record, which quotes
        return {"exception.message": _LEFT_OUT, "exception.stacktrace": ""}


def _content_free(error: BaseException) -> dict[str, str]:
    evidence = _evidence(error)
    if evidence is not None:
        rule = getattr(error, "rule", "")
        digests = ", ".join(content_digest(item) for item in evidence)
        message = (
            f"loop detected by rule {rule!r} ({len(evidence)} repeated item(s), "
            f"digests {digests}; set {ENV_CAPTURE_CONTENT}=true to record the text)"
        )
    else:
        message = _stand_in(error) + f"; set {ENV_CAPTURE_CONTENT}=true to record it"
    return {
        "exception.message": message,
        "exception.stacktrace": _stacktrace(error, message),
    }


_LEFT_OUT = "message not recorded: it may quote prompt or tool text"
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,40}")
_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


def _stand_in(error: BaseException) -> str:
    """What an error's message is replaced by: its content-free facts."""
    facts = [f"{name}={value}" for name, value in _facts(error)]
    return f"{_LEFT_OUT} ({', '.join(facts)})" if facts else _LEFT_OUT


def _facts(error: BaseException) -> list[tuple[str, str | int]]:
    """The governor's code, an HTTP status and LiteLLM's provider, if present."""
    from governor._errors import GovernorError

    facts: list[tuple[str, str | int]] = []
    code = getattr(error, "code", None) if isinstance(error, GovernorError) else None
    if isinstance(code, str) and _NAME.fullmatch(code):
        facts.append(("code", code))
    try:
        status = getattr(error, "status_code", None)
        provider = getattr(error, "llm_provider", None)
    except Exception:  # a property that fails: leave the facts out
        return facts
    if isinstance(status, int) and 100 <= status <= 599:  # never a bool
        facts.append(("status_code", int(status)))
    if isinstance(provider, str) and _NAME.fullmatch(provider):
        facts.append(("llm_provider", provider))
    return facts


def _stacktrace(error: BaseException, message: str) -> str:
    """The traceback Python prints, with every error's message replaced.

    Each frame is named by file, line and function; its source line is left
    out, as a prompt written into the code would show there.
    """
    blocks: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    line = message
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        frames = "".join(
            f'  File "{frame.f_code.co_filename}", line {line_number}, '
            f"in {frame.f_code.co_name}\n"
            for frame, line_number in traceback.walk_tb(current.__traceback__)
        )
        header = "Traceback (most recent call last):\n" if frames else ""
        blocks.append(f"{header}{frames}{_type_name(current)}: {line}\n")
        if current.__cause__ is not None:
            blocks.append(_CAUSE)
            current = current.__cause__
        elif current.__context__ is not None and not current.__suppress_context__:
            blocks.append(_CONTEXT)
            current = current.__context__
        else:
            current = None
        if current is not None:
            line = _stand_in(current)
    if len(blocks) % 2 == 0:  # a chain that loops back ends with a separator
        blocks.pop()
    return "".join(reversed(blocks))


def _type_name(error: BaseException) -> str:
    """The class as the OpenTelemetry SDK names it in ``exception.type``."""
    kind = type(error)
    module = kind.__module__
    if module and module != "builtins":
        return f"{module}.{kind.__qualname__}"
    return kind.__qualname__


def _evidence(error: BaseException) -> Sequence[str] | None:
    from governor.loops import LoopDetected

    if isinstance(error, LoopDetected):
        return error.evidence
    return None
