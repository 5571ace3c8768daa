"""Closing LiteLLM's own stream inside a governed stream dropped before its end.

A governed LiteLLM stream settles itself when its reader drops it, at what
arrived. LiteLLM's stream inside it (its ``_inner``) stays open: LiteLLM
keeps it in a reference cycle with its logging object, so the provider's
connection streams on, billed, until a cyclic garbage collection. It is
closed here instead, once only, whoever asks first: the dropped stream
itself, or a hang-up from sync code.

A stream may be dropped inside the garbage collector, which may hold the
HTTP pool's lock that closing takes: the closing is handed to a short
daemon thread for a sync stream, and to its event loop for an async one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import MutableMapping
from typing import Any

logger = logging.getLogger(__name__)

_CLAIMED = "_inner_closing"
"""The key a governed stream's state holds once its LiteLLM stream's
closing was handed on (see :func:`close_dropped`)."""

_CLOSING: set[asyncio.Task[None]] = set()
"""Closings of dropped async streams under way, kept until they end."""


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, if any: an async stream's,
    where its LiteLLM stream can be closed."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def close_dropped(
    state: MutableMapping[str, Any], loop: asyncio.AbstractEventLoop | None
) -> None:
    """Close a governed stream's LiteLLM stream, unless it was read out or
    its closing was handed on before.

    ``state`` is the governed stream's ``__dict__``. Safe where the stream
    is collected, the garbage collector included: the closing is handed to
    a thread, or to the async stream's event loop (``loop``).
    """
    inner = state.get("_inner")
    if inner is None or state.get("complete"):
        return
    claim = object()
    if state.setdefault(_CLAIMED, claim) is not claim:
        return  # closed, or being closed, by another
    try:
        if loop is not None:
            loop.call_soon_threadsafe(_aclose_dropped, inner)
            return
        threading.Thread(
            target=_close_quietly,
            args=(inner,),
            name="governor-stream-close",
            daemon=True,
        ).start()
    except RuntimeError:  # the loop closed (its streams with it), or exiting
        logger.debug("could not close a dropped stream", exc_info=True)


def _close_quietly(inner: Any) -> None:
    """Close LiteLLM's stream (a thread of :func:`close_dropped`)."""
    try:
        inner.close()
    except Exception:
        logger.debug("could not close the provider's stream", exc_info=True)


def _aclose_dropped(inner: Any) -> None:
    """On the stream's event loop: start closing LiteLLM's async stream."""
    closing = asyncio.ensure_future(_aclose_quietly(inner))
    _CLOSING.add(closing)
    closing.add_done_callback(_CLOSING.discard)


async def _aclose_quietly(inner: Any) -> None:
    """Close LiteLLM's async stream, the provider's connection with it."""
    try:
        await inner.aclose()
    except Exception:
        logger.debug("could not close the provider's stream", exc_info=True)
