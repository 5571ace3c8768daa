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
    ``GovernorError``) and the block then raises a provider error (the
    Router's, after its fallbacks), or an error with that refusal among its
    causes, the latest refusal is raised instead, chained from that error
    (its ``__cause__``), so ``except BudgetExceeded`` catches it and the
    traceback shows both. An error of the block's own code (a ``KeyError``,
    even one raised while handling a refusal it caught, or an error it
    raised ``from None``) is raised as itself; one it raised ``from`` the
    refusal counts as hiding it. Wrap the Router call alone: a refusal the
    block's code caught is still raised in place of a later provider error
    in the same block. An
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


# How deep the causes of an error are searched for a refusal.
_CHAIN_MOST = 16
# Where the errors of a provider call come from: LiteLLM wraps every
# provider's failure in its own exception types (some subclass openai's).
_PROVIDER_MODULES = ("litellm", "openai", "httpx")


def _hidden_in(
    error: BaseException, refusals: list[GovernorError]
) -> GovernorError | None:
    """The refusal ``error`` hides, or None.

    ``error`` hides a refusal that is among its causes (or, for provider
    errors, the errors they were raised while handling), or, when it is a
    provider error (LiteLLM's, as the Router raises after its fallbacks),
    the latest refusal made in the block: the Router does not always quote
    it. The block's own code raising its own error while handling a refusal
    it caught (a ``KeyError`` of its handler, ``raise ... from None``)
    hides none.
    """
    chain: list[BaseException] = []
    link: BaseException | None = error
    while link is not None and len(chain) < _CHAIN_MOST and link not in chain:
        chain.append(link)
        link = link.__cause__ or _context_of(link)
    for refusal in reversed(refusals):
        if refusal in chain:
            return refusal
    if refusals and _from_a_provider(error):
        return refusals[-1]
    return None


def _context_of(error: BaseException) -> BaseException | None:
    """The error ``error`` was raised while handling, when that says it
    hides it: only a provider error's, as the Router re-raises its first
    failure while handling a fallback's. The block's own code raising an
    error in an ``except`` for the refusal (a ``KeyError`` of its handler)
    does not hide the refusal; one raised ``from`` it does (its cause)."""
    if error.__suppress_context__ or not _from_a_provider(error):
        return None
    return error.__context__


def _from_a_provider(error: BaseException) -> bool:
    """Whether ``error`` is a provider call's, as LiteLLM raises them."""
    module = type(error).__module__ or ""
    return module.split(".", 1)[0] in _PROVIDER_MODULES
