"""A governor refusal that a caller of governed LiteLLM calls hid behind
another error, raised as itself.

LiteLLM's Router tries its ``fallbacks`` when a model group fails; when a
fallback is refused by the governor (``BudgetExceeded``, a loop stop, ...)
and none answers, the Router raises the first model group's error, a
provider error, and the refusal is left only in that error's text.
:func:`raise_refusals` wraps such a call: a refusal made by a governed call
inside the block is raised in place of the provider error.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from governor._errors import GovernorError

# The refusals made inside the innermost raise_refusals() block of this
# context, oldest first; None outside any block. Each block has a list of its
# own, so refusals in one call (or one asyncio task, one thread) are never
# raised from another.
_REFUSALS: contextvars.ContextVar[list[GovernorError] | None] = contextvars.ContextVar(
    "governor_refusals_seen", default=None
)


def note_refusal(error: GovernorError) -> None:
    """Keep a governed call's refusal for the :func:`raise_refusals` block
    it was made in, if any."""
    seen = _REFUSALS.get()
    if seen is not None:
        seen.append(error)


@contextlib.contextmanager
def raise_refusals() -> Iterator[None]:
    """Raise a governor refusal that the wrapped call hid behind another
    error.

    Use it around a call that makes governed LiteLLM calls and may raise
    some other error when one of them is refused, such as a
    ``litellm.Router`` with ``fallbacks`` (see docs/adapters.md)::

        with raise_refusals():
            router.completion(model="gpt-a", messages=messages)

    If a governed call inside the block was refused (``BudgetExceeded``,
    ``LoopDetected``, ``ScopeBlocked``, ``SlotUnavailable``, any
    ``GovernorError``) and the block then raises an error that is not a
    ``GovernorError`` but hides that refusal (the Router's provider error,
    which quotes it or has it among its causes), the refusal is raised
    instead, chained from that error (its ``__cause__``), so ``except
    BudgetExceeded`` catches it and the traceback shows both. A refusal
    the block's code caught and moved past is not raised for a later,
    unrelated error. An
    answer, an error with no refusal before it, and a refusal raised as
    itself pass through unchanged. Works the same around ``await``.
    """
    seen: list[GovernorError] = []
    token = _REFUSALS.set(seen)
    try:
        yield
    except GovernorError:
        raise
    except Exception as exc:
        hidden = _hidden_in(exc, seen)
        if hidden is None:
            raise
        raise hidden from exc
    finally:
        _REFUSALS.reset(token)


# Enough of a refusal's message to know it in the text of the error that
# hides it (LiteLLM's Router quotes the fallback's error in its own).
_QUOTED_CHARS = 60
# How deep the causes of an error are searched for a refusal.
_CHAIN_MOST = 16


def _hidden_in(
    error: BaseException, refusals: list[GovernorError]
) -> GovernorError | None:
    """The latest refusal that ``error`` hides: one in its chain of causes,
    or one its text (or a cause's) quotes. A refusal the caller caught and
    moved past is in neither, so an unrelated error is raised as itself."""
    chain: list[BaseException] = []
    link: BaseException | None = error
    while link is not None and len(chain) < _CHAIN_MOST and link not in chain:
        chain.append(link)
        link = link.__cause__ or link.__context__
    texts = [str(link) for link in chain]
    for refusal in reversed(refusals):
        quoted = str(refusal)[:_QUOTED_CHARS]
        if refusal in chain or any(quoted in text for text in texts):
            return refusal
    return None
