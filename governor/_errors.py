"""The governor's exception tree.

Errors of configuration, policy and running (a refused call, a store that is
down, a closed governor) derive from :class:`GovernorError`; each carries a
stable ``code`` and machine-readable fields, and says in its message what the
user can change to make the error go away. Misuse of a call raises Python's
own errors instead: a wrong argument type or a positional argument where a
keyword is needed raises ``TypeError`` (``Governor({...})``,
``Budget("1")``), as does pickling a Governor or a Task; instrumenting
LiteLLM twice raises ``RuntimeError``. Provider errors are not wrapped.

Every error here survives pickling with its class, message and fields, so
that a process pool, Celery or Ray can re-raise a worker's error in the
parent. Amounts are stored without a positive exponent (``Decimal("200")``,
never ``Decimal("2E+2")``) and written in messages and ``to_dict()`` in plain
notation ("200", "0.000025", "0.0000001"); ``str()`` of an amount under a
millionth still shows an exponent, as Python's Decimal writes it.
"""

from __future__ import annotations

import math
from datetime import datetime
from decimal import Decimal
from typing import Any

__all__ = [
    "BudgetExceeded",
    "ConfigError",
    "GovernorClosed",
    "GovernorError",
    "GovernorHalt",
    "OutputLimitExceeded",
    "PolicyError",
    "PriceUnknown",
    "ScopeBlocked",
    "SlotUnavailable",
    "StoreUnavailable",
    "UngovernedCall",
]


def plain_decimal(value: Decimal) -> Decimal:
    """Return ``value`` with a zero or negative exponent, equal to it.

    ``Decimal("2E+2")`` becomes ``Decimal("200")``; values that are already
    plain, infinities and NaNs come back unchanged.
    """
    if not isinstance(value, Decimal) or not value.is_finite():
        return value
    return Decimal(format(value, "f"))


def decimal_text(value: Decimal) -> str:
    """Write an amount in plain notation, e.g. ``"200"`` or ``"0.000025"``."""
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def _rebuild(cls: type[GovernorError], args: tuple[Any, ...]) -> GovernorError:
    """Recreate an error for unpickling without running its constructor."""
    error = cls.__new__(cls, *args)
    error.args = args
    return error


class GovernorError(Exception):
    """Root of every error raised by llm-governor.

    Subclasses may take any constructor arguments: pickling restores an
    error from its ``args`` and attributes, not by calling ``__init__`` again.
    """

    code: str = "governor_error"

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as class, ``args`` and attributes, bypassing ``__init__``."""
        return (_rebuild, (type(self), self.args), self.__dict__)

    def to_dict(self) -> dict[str, Any]:
        """Return the error's machine-readable fields."""
        return {"code": self.code, "message": str(self)}


class GovernorClosed(GovernorError, RuntimeError):
    """A call or task was started on a Governor after its ``close()``.

    Calls already under way when it closed still finish and are charged;
    nothing new starts on it.
    """

    code = "governor_closed"

    def __init__(self, what: str = "a call") -> None:
        self.what = what
        super().__init__(
            f"{what} was started on a Governor that is closed (Governor.close() "
            "ran, or its with block ended): nothing new starts on it, so its "
            "spend could not be recorded. Close the governor after its last "
            "call, or build a new Governor(policy, ...) for more work."
        )


class ConfigError(GovernorError, ValueError):
    """A setting or argument is invalid; the message names it and the accepted forms."""

    code = "config_error"


class PolicyError(ConfigError):
    """A policy could not be built from the given values."""

    code = "policy_invalid"


class PriceUnknown(GovernorError, LookupError):
    """No usable price is known for a model, so its cost cannot be bounded."""

    code = "price_unknown"

    def __init__(self, model: str, reason: str = "") -> None:
        self.model = model
        self.reason = reason
        detail = f" ({reason})" if reason else ""
        super().__init__(
            f"no price is known for model {model!r}{detail}. Price it with "
            f"Policy(pricing=Pricing(overrides={{{model!r}: Price("
            "input_usd_per_mtok=..., output_usd_per_mtok=...)})), or set "
            "Pricing(default=Price(...)) to admit unpriced models at a default rate."
        )

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "model": self.model}


class GovernorHalt(GovernorError):
    """The governor stopped a task; subclasses say why.

    The task's spend so far is attached as ``spent_usd`` and ``task_id`` so that
    a caller who catches the error can still report it.
    """

    code = "governor_halt"

    def __init__(
        self,
        message: str,
        *,
        task_id: str | None = None,
        spent_usd: Decimal = Decimal(0),
        spent_tokens: int = 0,
    ) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.spent_usd = plain_decimal(spent_usd)
        self.spent_tokens = spent_tokens

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "task_id": self.task_id,
            "spent_usd": decimal_text(self.spent_usd),
            "spent_tokens": self.spent_tokens,
        }


class BudgetExceeded(GovernorHalt):
    """A call was refused before it was sent because it could cross a budget.

    Attributes:
        scope: the budget's scope key, e.g. ``"task:3f2a..."`` or ``"team:search"``.
        unit: ``"usd"`` or ``"tokens"``.
        limit: the budget's limit in that unit.
        spent: what was already settled against it.
        reserved: what other in-flight calls hold.
        requested: the worst case this call needed.
        model: the model of the refused call.
        left: what is left of the limit after spend and holds, never below
            zero.
        holds_lapse_s: when the room held by calls in flight keeps the call
            out, the whole seconds until the latest of those holds lapses
            unless renewed (a call that ends gives its room back sooner);
            None otherwise.
        resets_at: when the budget's calendar window (day, week, month)
            ends and a new one starts with nothing spent; None for total,
            rolling and task budgets.

    ``holds_note``, when given, says when the room held by calls in flight
    comes back; it goes in the message before the advice.

    :attr:`in_flight_only` tells a refusal that waiting can cure (the room
    is held by calls in flight, which give back what they do not spend)
    from a spent budget: an HTTP service may answer the first with 503 and
    Retry-After, the second with 429 or 402.
    """

    code = "budget_exceeded"
    # Read by errors pickled before these fields existed.
    holds_lapse_s: int | None = None
    resets_at: datetime | None = None

    def __init__(
        self,
        *,
        scope: str,
        unit: str,
        limit: Decimal,
        spent: Decimal,
        reserved: Decimal,
        requested: Decimal,
        model: str,
        task_id: str | None = None,
        task_spent_usd: Decimal = Decimal(0),
        task_spent_tokens: int = 0,
        advice: str | None = None,
        holds_note: str | None = None,
        holds_lapse_s: float | None = None,
        resets_at: datetime | None = None,
    ) -> None:
        self.scope = scope
        self.unit = unit
        self.limit = plain_decimal(limit)
        self.spent = plain_decimal(spent)
        self.reserved = plain_decimal(reserved)
        self.requested = plain_decimal(requested)
        self.model = model
        self.holds_lapse_s = (
            None if holds_lapse_s is None else max(math.ceil(holds_lapse_s), 0)
        )
        self.resets_at = resets_at
        note = f"{holds_note} " if holds_note else ""
        message = (
            f"budget {scope} ({unit}) would be exceeded by a call to {model!r}: "
            f"needs up to {decimal_text(self.requested)} {unit} (the most it "
            f"can cost), {self._room_text()}. The call was not sent. "
            f"{note}{advice or _budget_advice(unit)}"
        )
        super().__init__(
            message,
            task_id=task_id,
            spent_usd=task_spent_usd,
            spent_tokens=task_spent_tokens,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "scope": self.scope,
            "unit": self.unit,
            "limit": decimal_text(self.limit),
            "spent": decimal_text(self.spent),
            "reserved": decimal_text(self.reserved),
            "requested": decimal_text(self.requested),
            "left": decimal_text(self.left),
            "model": self.model,
            "in_flight_only": self.in_flight_only,
            "holds_lapse_s": self.holds_lapse_s,
            "resets_at": None if self.resets_at is None else self.resets_at.isoformat(),
        }

    @property
    def left(self) -> Decimal:
        """What is left of the limit after spend and holds, never below zero."""
        return max(self.limit - self.spent - self.reserved, Decimal(0))

    @property
    def in_flight_only(self) -> bool:
        """True when the call would fit once the calls in flight settle: the
        refusal is for room they hold, not for spend.

        The stores name a budget of the call that lacks room by its spend
        alone when one does, so this (spent plus requested is within the
        limit of the budget named) holds only when every budget of the call
        would fit once the calls in flight settle.
        """
        return self.spent + self.requested <= self.limit

    def _room_text(self) -> str:
        """What is left of the budget, never below zero, and any overrun."""
        limit, spent, reserved, left = self.limit, self.spent, self.reserved, self.left
        room = f"{decimal_text(left)} left" if left > 0 else "nothing left"
        figures = [f"spent {decimal_text(spent)}"]
        if spent > limit:
            figures.append(f"over its limit by {decimal_text(spent - limit)}")
        if reserved or spent <= limit:
            figures.append(f"reserved by calls in flight {decimal_text(reserved)}")
        return f"{room} of {decimal_text(limit)} ({', '.join(figures)})"


def _budget_advice(unit: str) -> str:
    """What the user can change to get past a refusal in ``unit``."""
    if unit == "tokens":
        return (
            "Raise the budget's token limit (Budget.max_tokens), lower the "
            "call's max_tokens, or shorten the prompt."
        )
    return "Raise the budget's limit, lower max_tokens, or pick a cheaper model."


class OutputLimitExceeded(GovernorHalt):
    """A streamed answer ran far past what its call reserved.

    The model (or a proxy in front of it) ignored ``max_tokens``, or a model
    priced per second streamed past ``Policy.max_call_s``, so the governor
    stopped reading the stream: generation stops with the connection, and
    the call is charged for what arrived (or the time it ran).

    Attributes:
        model: the model that ran past its limit.
        reserved_tokens: the output tokens the call was admitted with.
        streamed_chars: the output characters received when it was stopped.
        max_call_s: for a model priced per second stopped for time, the
            seconds its call held; None when it was stopped for its output.
    """

    code = "output_limit_exceeded"

    def __init__(
        self,
        *,
        model: str,
        reserved_tokens: int,
        streamed_chars: int,
        task_id: str | None = None,
        max_call_s: float | None = None,
    ) -> None:
        self.model = model
        self.reserved_tokens = reserved_tokens
        self.streamed_chars = streamed_chars
        self.max_call_s = max_call_s
        if max_call_s is not None:
            message = (
                f"a stream from {model!r}, priced per second, was still running "
                f"past Policy.max_call_s ({max_call_s:g} s), the time its call "
                "held, so the governor stopped it. The call was charged for the "
                "time it ran. Raise max_call_s if calls to this model take longer."
            )
        else:
            message = (
                f"a stream from {model!r} sent {streamed_chars} characters for "
                f"the {reserved_tokens} output tokens reserved for it, so the "
                "governor stopped it: the model ignores max_tokens. The call was "
                "charged for what arrived. Check that max_tokens reaches the "
                "provider (set it on the chat model, and on any proxy in between)."
            )
        super().__init__(message, task_id=task_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "model": self.model,
            "reserved_tokens": self.reserved_tokens,
            "streamed_chars": self.streamed_chars,
            "max_call_s": self.max_call_s,
        }


class ScopeBlocked(GovernorHalt):
    """Calls for a scope were blocked after a spend anomaly (auto-tighten).

    Attributes:
        scope: the blocked scope, e.g. ``"team:search"``, ``"model:gpt-4o"``
            or ``"all"``; pass it to ``gov.unblock()``.
    """

    code = "scope_blocked"

    def __init__(
        self,
        scope: str,
        *,
        task_id: str | None = None,
        spent_usd: Decimal = Decimal(0),
        spent_tokens: int = 0,
    ) -> None:
        self.scope = scope
        super().__init__(
            f"calls for {scope} are blocked after a spend anomaly "
            f"(Anomalies(auto_tighten='block')). Look at the alert, then call "
            f"gov.unblock({scope!r}) on the Governor that blocked them to let "
            "calls through again.",
            task_id=task_id,
            spent_usd=spent_usd,
            spent_tokens=spent_tokens,
        )

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "scope": self.scope}


class SlotUnavailable(GovernorError, TimeoutError):
    """No concurrency slot came free within the wait allowed.

    Attributes:
        key: the semaphore's key.
        limit: its number of slots.
        timeout_s: how long the caller waited.
    """

    code = "slot_unavailable"

    def __init__(
        self,
        key: str,
        limit: int,
        timeout_s: float | None,
        *,
        blocking_loop: bool = False,
    ) -> None:
        self.key = key
        self.limit = limit
        self.timeout_s = timeout_s
        message = _slot_message(key, limit, timeout_s)
        if blocking_loop and timeout_s != 0:
            message += (
                " The wait blocked the thread of a running event loop, so no "
                "call on that loop could finish and free its slot meanwhile: "
                "in async code use the async API (acompletion, ainvoke), or "
                "run the blocking call in a thread (asyncio.to_thread)."
            )
        super().__init__(message)

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "key": self.key,
            "limit": self.limit,
            "timeout_s": self.timeout_s,
        }


def _slot_message(key: str, limit: int, timeout_s: float | None) -> str:
    cap = f"Raise the cap ({_setting(key)})"
    busy = f"the one slot of {key!r}" if limit == 1 else f"all {limit} slots of {key!r}"
    if timeout_s == 0:
        return (
            f"{busy} {'is' if limit == 1 else 'are'} busy and Fanout(on_cap='refuse') "
            f"does not wait. {cap}, set Fanout(on_cap='wait') to queue for a "
            "slot, or run fewer calls at once."
        )
    return (
        f"{busy} stayed busy for {timeout_s} s. {cap}, "
        "wait longer (Fanout.wait_timeout_s), or run fewer calls at once."
    )


def _setting(key: str) -> str:
    """The Fanout setting that sized the semaphore named ``key``."""
    if key.startswith("branches:"):
        return "Fanout.max_branches"
    if key.startswith("task:"):
        return "Fanout.max_inflight_calls"
    return "Fanout.scope_caps"


class StoreUnavailable(GovernorError, ConnectionError):
    """The budget store could not be reached and the policy fails closed.

    Attributes:
        cause: what failed, without the advice (None when not known).
        advice: what to change to bring the store back, without the
            failure-mode advice (None when not known).
    """

    code = "store_unavailable"
    cause: str | None = None
    advice: str | None = None


class UngovernedCall(GovernorError, RuntimeError):
    """A LiteLLM function the governor cannot govern was called while
    ``instrument(gov, ungoverned="refuse")`` was active; nothing was sent.

    Attributes:
        function: the LiteLLM function's name, such as ``"responses"``.
    """

    code = "ungoverned_call"

    def __init__(self, function: str, instead: str | None = None) -> None:
        self.function = function
        use = f"call {instead} instead, or " if instead else ""
        super().__init__(
            f"litellm.{function}() is not governed (no budget reserves or "
            "charges it), so instrument(gov, ungoverned='refuse') refused it "
            f"before it was sent: {use}instrument with ungoverned='warn' to let "
            "such calls through with a warning"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "function": self.function}
