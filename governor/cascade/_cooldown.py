"""An in-process register of models that failed recently and rest a while."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["CooldownRegistry", "cooldown_key"]


def cooldown_key(model: str, params: Mapping[str, Any] | None = None) -> str:
    """The key a model rests under: the model, where and with what it is called.

    A revoked key or one account's rate limit says nothing about the same
    model called with another key or at another endpoint, so ``api_base``
    (or ``base_url``) and a hash of ``api_key`` are part of the key; the key
    itself never is. With neither, the key is the model's name.

    Args:
        model: the tier's model.
        params: the call's parameters (the tier's laid over the request's).
    """
    given = params or {}
    parts = [model]
    base = given.get("api_base") or given.get("base_url")
    if base:
        parts.append(f"at {base}")
    secret = given.get("api_key")
    if secret:
        digest = hashlib.sha256(str(secret).encode("utf-8")).hexdigest()[:12]
        parts.append(f"key sha256:{digest}")
    return " ".join(parts)


class CooldownRegistry:
    """Which models are cooling down, and until when.

    One registry is meant to be shared by every cascade run of a process, so
    a model that keeps failing is skipped by the next runs too. Models are
    registered by :func:`cooldown_key`: a model called with one API key rests
    apart from the same model called with another. It is thread-safe; the
    clock is injectable so tests never wait.

    Args:
        clock: a monotonic clock in seconds.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def cool(self, model: str, seconds: float) -> None:
        """Rest ``model`` (a cooldown key) for ``seconds``; a longer rest is kept."""
        if seconds <= 0:
            return
        until = self._clock() + seconds
        with self._lock:
            self._until[model] = max(until, self._until.get(model, until))

    def remaining_s(self, model: str) -> float:
        """Return the seconds ``model`` still rests; 0.0 when it is available."""
        with self._lock:
            until = self._until.get(model)
            if until is None:
                return 0.0
            left = until - self._clock()
            if left <= 0:
                del self._until[model]
                return 0.0
            return left

    def clear(self, model: str | None = None) -> None:
        """End the rest of ``model``, or of every model when None."""
        with self._lock:
            if model is None:
                self._until.clear()
            else:
                self._until.pop(model, None)
