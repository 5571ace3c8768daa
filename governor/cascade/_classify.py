"""Sort provider exceptions into the failures a cascade handles.

Classification goes by class name along the exception's MRO, and then by a
``status_code`` attribute, so LiteLLM, the OpenAI SDK and httpx errors are
recognised without importing any of them on the governor's import path.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime

from governor._errors import BudgetExceeded, GovernorError
from governor.cascade._types import ErrorKind

__all__ = ["RETRYABLE", "classify_error", "retry_after_s"]

RETRYABLE: frozenset[ErrorKind] = frozenset(
    {"rate_limit", "server", "timeout", "connection"}
)
"""Kinds worth sending to the same model again after a wait."""

# Most specific first: LiteLLM's ContextWindowExceededError and
# ContentPolicyViolationError are BadRequestErrors, its Timeout is an
# APIConnectionError in the OpenAI SDK's tree. A content-policy refusal is
# its own kind: the prompt was flagged, and another tier's filter may let it
# through, but no change to the arguments will.
_BY_NAME: tuple[tuple[str, ErrorKind], ...] = (
    ("ContextWindowExceededError", "context_window"),
    ("ContentPolicyViolationError", "content_policy"),
    ("RateLimitError", "rate_limit"),
    ("Timeout", "timeout"),
    ("APITimeoutError", "timeout"),
    ("TimeoutException", "timeout"),
    ("TimeoutError", "timeout"),
    ("ServiceUnavailableError", "server"),
    ("InternalServerError", "server"),
    ("BadGatewayError", "server"),
    ("APIConnectionError", "connection"),
    ("ConnectError", "connection"),
    ("ConnectionError", "connection"),
    ("AuthenticationError", "auth"),
    ("PermissionDeniedError", "auth"),
    ("NotFoundError", "not_found"),
    # Last: any other 400 (an unsupported parameter, a malformed message),
    # including LiteLLM's subclasses not named above, and a 422: the
    # provider read the request and rejected it as sent, as with a 400.
    ("BadRequestError", "bad_request"),
    ("UnprocessableEntityError", "bad_request"),
)


def classify_error(exc: BaseException) -> ErrorKind | None:
    """Return the kind of provider failure, or None for one to propagate.

    Errors of the governor itself are never provider failures, except
    :class:`~governor.BudgetExceeded` raised by a reservation inside the
    call, which counts as ``"budget"``.
    """
    if isinstance(exc, BudgetExceeded):
        return "budget"
    if isinstance(exc, GovernorError):
        return None
    names = {cls.__name__ for cls in type(exc).__mro__}
    if _MISSING_KEY.search(str(exc)) and not names & _PROVIDER_SAID:
        return "auth"  # the client found no key: retrying cannot help
    for name, kind in _BY_NAME:
        if name in names:
            return kind
    return _by_status(getattr(exc, "status_code", None))


_MISSING_KEY = re.compile(
    r"Missing credentials\. Please pass an `api_key`"
    r"|api_key client option must be set"
)
"""The OpenAI SDK's words when it has no API key: LiteLLM raises them as an
InternalServerError (a 500, retried), though no request was sent."""

_PROVIDER_SAID: frozenset[str] = frozenset(
    {"RateLimitError", "AuthenticationError", "PermissionDeniedError"}
)
"""Errors a provider answered with, whatever their text quotes."""


def _by_status(status: object) -> ErrorKind | None:
    if not isinstance(status, int):
        return None
    if status == 429:
        return "rate_limit"
    if status == 408:
        return "timeout"
    if status >= 500:
        return "server"
    return None


def retry_after_s(
    exc: BaseException, *, now: Callable[[], float] = time.time
) -> float | None:
    """Return the wait a provider asked for, in seconds, if it asked for one.

    Reads ``retry-after-ms`` and ``retry-after`` (seconds or an HTTP date)
    from the exception's response headers or LiteLLM's copy of them. A value
    that is not a finite number of seconds at least zero, nor a valid HTTP
    date (``nan``, ``inf``, ``-5``, text), counts as not given: the runner
    then waits its own backoff. A date already past asks for no wait (0.0).
    """
    for headers in _header_sources(exc):
        millis = _lookup(headers, "retry-after-ms")
        if millis is not None and (value := _seconds(millis)) is not None:
            return value / 1000
        raw = _lookup(headers, "retry-after")
        if raw is not None and (value := _seconds_or_date(raw, now)) is not None:
            return value
    return None


def _header_sources(exc: BaseException) -> list[Mapping[str, str]]:
    sources: list[Mapping[str, str]] = []
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is not None:
        sources.append(headers)
    litellm_headers = getattr(exc, "litellm_response_headers", None)
    if litellm_headers is not None:
        sources.append(litellm_headers)
    return sources


def _lookup(headers: Mapping[str, str], name: str) -> str | None:
    try:
        value = headers.get(name)
    except (AttributeError, TypeError):
        return None
    if value is None:
        # A plain dict is case-sensitive; httpx.Headers is not.
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return None if value is None else str(value)


def _seconds(text: str) -> float | None:
    """A delay in the header's units: a finite number, zero or more; else None.

    ``float`` reads ``nan``, ``inf`` and ``1e999`` (infinite) too: a wait of
    NaN would make ``time.sleep`` raise and ``asyncio.sleep`` never return.
    """
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _seconds_or_date(raw: str, now: Callable[[], float]) -> float | None:
    seconds = _seconds(raw)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": HTTP dates are always GMT
        when = when.replace(tzinfo=UTC)
    try:
        left = when.timestamp() - now()
    except (OverflowError, OSError, ValueError):
        return None
    return max(left, 0.0) if math.isfinite(left) else None
