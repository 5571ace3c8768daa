"""Tasks: one governed unit of work and its running totals."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from governor._attribution import _AMBIENT
from governor._errors import ConfigError, GovernorError, decimal_text, plain_decimal
from governor._money import nanos_to_usd

if TYPE_CHECKING:
    from governor._engine import Governor
    from governor.policies import Attribution, Policy

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

__all__ = ["Task", "TaskReport", "current_task", "new_id", "stop_reason_for"]

_CURRENT: contextvars.ContextVar[Task | None] = contextvars.ContextVar(
    "governor_current_task", default=None
)

# The call being started in this thread or asyncio task: its task, and how
# many of the task's calls had finished when it began waiting for its slots
# (see Task.starting).
_STARTED: contextvars.ContextVar[tuple[weakref.ref[Task], int] | None] = (
    contextvars.ContextVar("governor_call_started", default=None)
)


# Ids need to be unique, not secret: a PRNG seeded from the OS once per process
# (and again in each forked child) avoids a getrandom() system call per call,
# which costs over 100 us in some sandboxes. The hex of the id's 16 bytes is
# the same text as formatting the number, at half the cost.
_RNG = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _RNG.seed(os.urandom(32)))


def new_id() -> str:
    """Return a random 128-bit id as 32 hex digits."""
    return _RNG.getrandbits(128).to_bytes(16, "big").hex()


def stop_reason_for(exc: BaseException) -> str:
    """The stop reason a task records when ``exc`` ends it."""
    if isinstance(exc, GovernorError):
        return exc.code
    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
        return "cancelled"  # Ctrl-C in a sync task, like cancelling an async one
    if isinstance(exc, GeneratorExit):
        return "closed"  # a generator holding the task, closed by its reader
    return f"error:{type(exc).__name__}"


def _checked_id(task_id: object) -> str:
    """A caller's task id: a non-empty string without '#' or control characters.

    A task id names the task's budget line ("task:<id>"), where '#' would
    start a period window; an empty id would silently get a random one, so
    a retry under the same id would not share the budget.
    """
    if not isinstance(task_id, str):
        raise ConfigError(
            f"task_id must be a string, got {type(task_id).__name__} "
            f"{task_id!r}; pass str(...) or leave it None for a random id"
        )
    bad = not task_id.strip() or "#" in task_id
    if bad or any(ord(ch) < 32 for ch in task_id):
        raise ConfigError(
            f"task_id {task_id!r} is not usable: give a non-empty id without "
            "'#' or control characters, or None for a random id"
        )
    return task_id


def current_task() -> Task | None:
    """Return the task governing the current thread or asyncio task, if any."""
    return _CURRENT.get()


@dataclass(frozen=True, slots=True)
class TaskReport:
    """What one task did and spent, as reported at its end (or so far).

    ``stop_reason`` is None for a task that is running or completed; a task
    the governor stopped holds the code of the error that stopped it
    (``"budget_exceeded"``, ``"loop_detected"``, ...), kept even when the
    code caught that error and went on. A LangGraph run paused by
    ``interrupt()`` or at a breakpoint (``interrupt_before`` /
    ``interrupt_after``) holds ``"interrupted"``, one whose stream reader stopped
    early ``"closed"``, a cancelled one ``"cancelled"``, and one a node's
    exception ended ``"error:<ExceptionClass>"``. Spans and the demo show
    None as ``"completed"``.

    ``budget_left_usd`` is the room left on the tightest USD budget that
    applies to the task (its own, and each shared one it is charged to, such
    as its team's) when it was read: what its next calls could still spend
    then, less whatever other tasks sharing those budgets spend. It is None when
    no budget with ``max_usd`` applies (token limits are not counted in it),
    or when the ledger could not be read. It reads the budgets of the task's
    own scope values: a call that names another team or environment in its
    metadata is charged to that value's budgets, which the figure leaves out.

    ``elapsed_s`` runs from the task's start to its end: a report read after
    the task ended gives the same figure as the one taken at its end.

    Amounts never carry a positive exponent (``Decimal("200")``, not
    ``Decimal("2E+2")``), and the report's repr writes them in plain notation
    (``cost_usd=Decimal('0.0000002')``). ``str()`` of an amount under a
    millionth still shows an exponent (``2E-7``), as Python's Decimal writes
    it: ``format(report.cost_usd, "f")`` writes it plain.
    """

    task_id: str
    policy: str
    calls: int
    refused: int
    cache_hits: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    saved_usd: Decimal
    budget_left_usd: Decimal | None
    stop_reason: str | None
    elapsed_s: float
    attribution: dict[str, str]
    peak_inflight: int = 0

    def __post_init__(self) -> None:
        for name in ("cost_usd", "saved_usd", "budget_left_usd"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, plain_decimal(value))

    def __repr__(self) -> str:
        parts = (f"{f.name}={_field_text(getattr(self, f.name))}" for f in fields(self))
        return f"TaskReport({', '.join(parts)})"

    @property
    def tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


def _field_text(value: object) -> str:
    """A report field as its repr shows it: an amount in plain notation."""
    if isinstance(value, Decimal):
        return f"Decimal('{decimal_text(value)}')"
    return repr(value)


class Task:
    """One governed unit of work: a graph invocation or a governed call.

    Totals are updated under a lock, so branches of one task may run in
    threads and asyncio tasks at once.
    """

    def __init__(
        self,
        policy: Policy,
        attribution: Attribution,
        *,
        task_id: str | None = None,
    ) -> None:
        self.id = new_id() if task_id is None else _checked_id(task_id)
        # Made on first use: most tasks (every call outside a task) stream nothing.
        self._open_streams: weakref.WeakValueDictionary[str, Any] | None = None
        self.parent: Task | None = None
        # The governor that opened the task (None for a task made by hand);
        # another governor's calls do not join it.
        self.owner: Governor | None = None
        self._ended_at: float | None = None  # set when the task is closed
        self.policy = policy
        self.attribution = attribution
        self.started_at = time.monotonic()
        self.stop_reason: str | None = None
        self.span: Any = None
        self.budget_left_usd: Decimal | None = None
        # Set by an adapter whose run is ending while parts of it still run
        # (a sync graph waiting for its nodes): the task's new model calls
        # are refused with the error it makes, before they are sent, and a
        # stream that opens from then on is hung up at its first read.
        self.ending: Callable[[], BaseException] | None = None
        self.extras: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._calls = 0
        self._refused = 0
        self._cache_hits = 0
        self._input_tokens = 0
        self._output_tokens = 0
        self._cost_nanos = 0
        self._saved_nanos = 0
        self._cascade_saved_usd = Decimal(0)
        self._inflight = 0
        self._finished = 0  # calls settled so far
        self.peak_inflight = 0
        self.scope_values = _scope_values(attribution)
        self.span_attributes: dict[str, Any] = {}

    def __reduce__(self) -> Any:
        raise TypeError(
            "a Task cannot be pickled: it is live state of the Governor that "
            "opened it, in this process. Send task.report() (a TaskReport "
            "pickles) for its totals; to charge a worker process's calls to the "
            "same budgets, give its Governor the same Policy and Redis store and "
            "the same scope values (team=..., session=...)"
        )

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return (
            f"<Task id={self.id!r} {state} calls={self._calls} "
            f"cost_usd={decimal_text(self.cost_usd)}>"
        )

    @property
    def closed(self) -> bool:
        """Whether the task has ended; its elapsed time stops when it does."""
        return self._ended_at is not None

    @closed.setter
    def closed(self, value: bool) -> None:
        if not value:
            self._ended_at = None
        elif self._ended_at is None:
            self._ended_at = time.monotonic()

    @property
    def open_streams(self) -> weakref.WeakValueDictionary[str, Any]:
        """Streams of the task not read to the end yet, by call id; weak, so
        a dropped stream still settles when it is collected."""
        streams = self._open_streams
        if streams is None:
            with self._lock:
                if self._open_streams is None:
                    self._open_streams = weakref.WeakValueDictionary()
                streams = self._open_streams
        return streams

    @property
    def inflight(self) -> int:
        """Admitted calls not settled yet, open streams included."""
        return self._inflight

    def unread_streams(self) -> int:
        """How many of the task's streams are not read to the end yet."""
        streams = self._open_streams
        return 0 if streams is None else len(streams)

    @property
    def calls(self) -> int:
        """Model calls admitted so far."""
        return self._calls

    @property
    def cache_hits(self) -> int:
        """Calls answered from the response cache so far."""
        return self._cache_hits

    @property
    def model_calls(self) -> int:
        """Model calls so far: those admitted and those answered from cache."""
        return self._calls + self._cache_hits

    @property
    def cost_nanos(self) -> int:
        """Settled cost so far, in nano-dollars."""
        return self._cost_nanos

    @property
    def cost_usd(self) -> Decimal:
        """Settled cost so far, in dollars."""
        return nanos_to_usd(self._cost_nanos)

    @property
    def tokens(self) -> int:
        """Settled input plus output tokens so far."""
        return self._input_tokens + self._output_tokens

    def elapsed_s(self) -> float:
        """Seconds since the task started; once it has ended, its duration."""
        ended = self._ended_at
        return (time.monotonic() if ended is None else ended) - self.started_at

    def starting(self) -> None:
        """Mark a call of this task, in this thread or asyncio task, as started.

        Called before the call waits for a fan-out slot: a call that waits
        while another of the task runs was started side by side with it,
        whatever the cap lets run at once. :meth:`admit` returns this mark.
        """
        _STARTED.set((weakref.ref(self), self._finished))

    def admit(self) -> int:
        """Count an admitted call; return a mark for :meth:`overtaken`.

        The mark is taken when the call started (see :meth:`starting`), or
        now for a call that waited for no slot.
        """
        started = _STARTED.get()
        with self._lock:
            self._calls += 1
            self._inflight += 1
            self.peak_inflight = max(self.peak_inflight, self._inflight)
            if started is None or started[0]() is not self:
                return self._finished
        _STARTED.set(None)
        return started[1]

    def overtaken(self, mark: int) -> bool:
        """Whether another call finished while the one marked ``mark`` ran.

        Its output then does not follow that call's: they ran side by side
        (``asyncio.gather``, threads), and like answers among them are fan-out.
        A call that waited for a slot while another call of the task ran is
        overtaken too: it was started side by side with that call. A call that
        merely overlaps a long open stream is not overtaken.
        """
        return self._finished != mark

    def settle(self, *, nanos: int, input_tokens: int, output_tokens: int) -> None:
        """Add a finished call's settled spend."""
        with self._lock:
            self._inflight -= 1
            self._finished += 1
            self._cost_nanos += nanos
            self._input_tokens += input_tokens
            self._output_tokens += output_tokens

    def refuse(self, reason: str, *, stops: bool = True) -> None:
        """Count a refused call and, unless it does not stop the task, why."""
        with self._lock:
            self._refused += 1
            if stops:
                self.stop_reason = self.stop_reason or reason

    def mark_stopped(self, reason: str) -> None:
        """Record why the task stopped, unless a reason is already recorded;
        unlike :meth:`refuse`, no refused call is counted."""
        with self._lock:
            self.stop_reason = self.stop_reason or reason

    def cache_hit(self, saved_nanos: int) -> None:
        """Count a call answered from cache and the money it saved."""
        with self._lock:
            self._cache_hits += 1
            self._saved_nanos += saved_nanos

    @property
    def cascade_saved_usd(self) -> Decimal:
        """What the task's cascades saved against their premium tiers so far.

        The sum over every cascade run of the task, as
        :meth:`add_cascade_saving` adds them; negative when they cost more
        than the premium tier would have. The task span's
        ``governor.cascade.saved_vs_premium_usd`` shows it.
        """
        return self._cascade_saved_usd

    def add_cascade_saving(self, usd: Decimal) -> Decimal:
        """Add one cascade run's saving against its premium tier; return the sum.

        A run that returned an answer adds that answer's tokens priced at the
        cascade's last tier, less what the run cost; a run that ended without
        an answer (``CascadeExhausted``, or any other error) adds minus what it
        spent.

        Args:
            usd: the run's saving, negative for a loss.

        Returns:
            The task's saving over all its cascade runs so far.
        """
        with self._lock:
            self._cascade_saved_usd += usd
            return self._cascade_saved_usd

    def bind(self, function: Callable[P, R]) -> Callable[P, R]:
        """Return ``function`` made to run inside this task, in any thread.

        Worker threads do not inherit the current task, so a call made in a
        ``ThreadPoolExecutor`` would be charged to a task of its own. Submit
        ``task.bind(fn)`` instead of ``fn``::

            with gov.task() as task:
                pool.map(task.bind(summarize), pages)

        An ``async def`` function is bound while its coroutine runs, and a
        generator (sync or async) while it runs between its yields,
        wherever it is consumed; so is what a callable object returns.
        Called (or resumed) after the task has ended, the function runs
        outside it, with a warning: each of its calls is charged to a task
        of its own that carries this task's attribution (team, user,
        session, ...), so budgets on those scopes still hold it.

        The function also runs with the context variables as they were where
        it was bound, as ``asyncio.to_thread`` passes them: bound in a
        LangGraph node, a LangChain model it calls in the worker gets the
        node's callbacks, so ``govern()`` governs that call too.
        """
        carried = contextvars.copy_context()
        bound: Callable[..., Any]
        if inspect.isasyncgenfunction(function):
            bound = self._bind_async_generator(function, carried)
        elif inspect.iscoroutinefunction(function):
            bound = self._bind_async(function, carried)
        elif inspect.isgeneratorfunction(function):
            bound = self._bind_generator(function, carried)
        else:
            bound = self._bind_sync(function, carried)
        return bound  # type: ignore[return-value]

    def _bind_sync(
        self, function: Callable[P, R], carried: contextvars.Context
    ) -> Callable[P, R]:
        @functools.wraps(function)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            ended = self._ended_for(function)
            tokens = self._enter_ended() if ended else self._enter(carried)
            try:
                result = function(*args, **kwargs)
            finally:
                self._leave(tokens)
            bound: R = self._bind_result(result, carried, warned=ended)
            return bound

        return run

    def _bind_result(
        self, result: Any, carried: contextvars.Context, *, warned: bool
    ) -> Any:
        """What a callable object returned, bound if its work runs later."""
        if inspect.iscoroutine(result):
            return self._awaited(result, carried, warned=warned)
        if inspect.isgenerator(result):
            return self._driven(result, carried, warned=warned)
        if inspect.isasyncgen(result):
            return self._adriven(result, carried, warned=warned)
        return result

    def _bind_async(
        self, function: Callable[P, Awaitable[R]], carried: contextvars.Context
    ) -> Callable[P, Awaitable[R]]:
        @functools.wraps(function)
        async def run(*args: P.args, **kwargs: P.kwargs) -> R:
            return await self._awaited(function(*args, **kwargs), carried)

        return run

    async def _awaited(
        self,
        awaitable: Awaitable[R],
        carried: contextvars.Context,
        *,
        warned: bool = False,
    ) -> R:
        tokens, _ = self._enter_step(carried, warned=warned, name=awaitable)
        try:
            return await awaitable
        finally:
            self._leave(tokens)

    def _bind_generator(
        self,
        function: Callable[P, Generator[Any, Any, Any]],
        carried: contextvars.Context,
    ) -> Callable[P, Generator[Any, Any, Any]]:
        @functools.wraps(function)
        def run(*args: P.args, **kwargs: P.kwargs) -> Generator[Any, Any, Any]:
            return (yield from self._driven(function(*args, **kwargs), carried))

        return run

    def _driven(
        self,
        inner: Generator[Any, Any, Any],
        carried: contextvars.Context,
        *,
        warned: bool = False,
    ) -> Generator[Any, Any, Any]:
        """Run ``inner`` inside this task at each step; the caller's context
        is left as it was between steps."""
        step: Callable[[Any], Any] = inner.send
        value: Any = None
        ended = warned  # the task ended: warned once
        while True:
            tokens, ended = self._enter_step(carried, warned=ended, name=inner)
            try:
                item = step(value)
            except StopIteration as stop:
                return stop.value
            finally:
                self._leave(tokens)
            try:
                value, step = (yield item), inner.send
            except GeneratorExit:
                tokens, _ = self._enter_step(carried, warned=True, name=inner)
                try:
                    inner.close()
                finally:
                    self._leave(tokens)
                raise
            except BaseException as exc:
                value, step = exc, inner.throw

    def _bind_async_generator(
        self,
        function: Callable[P, AsyncGenerator[Any, Any]],
        carried: contextvars.Context,
    ) -> Callable[P, AsyncGenerator[Any, Any]]:
        @functools.wraps(function)
        def run(*args: P.args, **kwargs: P.kwargs) -> AsyncGenerator[Any, Any]:
            return self._adriven(function(*args, **kwargs), carried)

        return run

    async def _adriven(
        self,
        inner: AsyncGenerator[Any, Any],
        carried: contextvars.Context,
        *,
        warned: bool = False,
    ) -> AsyncGenerator[Any, Any]:
        """:meth:`_driven` for an async generator."""
        step: Callable[[Any], Awaitable[Any]] = inner.asend
        value: Any = None
        ended = warned  # the task ended: warned once
        while True:
            tokens, ended = self._enter_step(carried, warned=ended, name=inner)
            try:
                item = await step(value)
            except StopAsyncIteration:
                return
            finally:
                self._leave(tokens)
            try:
                value, step = (yield item), inner.asend
            except GeneratorExit:
                tokens, _ = self._enter_step(carried, warned=True, name=inner)
                try:
                    await inner.aclose()
                finally:
                    self._leave(tokens)
                raise
            except BaseException as exc:
                value, step = exc, inner.athrow

    def _enter(self, carried: contextvars.Context) -> list[contextvars.Token[Any]]:
        """Set the context variables as they were where the function was
        bound, and make this task current; :meth:`_leave` undoes it."""
        tokens: list[contextvars.Token[Any]] = [
            var.set(value) for var, value in carried.items() if var is not _CURRENT
        ]
        tokens.append(_CURRENT.set(self))
        return tokens

    @staticmethod
    def _leave(tokens: list[contextvars.Token[Any]]) -> None:
        """Put back the context variables :meth:`_enter` set, newest first."""
        for token in reversed(tokens):
            token.var.reset(token)

    def _enter_ended(self) -> list[contextvars.Token[Any]]:
        """Where work bound to this task runs after it ended: in the task it
        is run from when that task is one of this one's ancestors, still
        open (a sub-task ended, its parent's budgets hold the work); else
        outside every task but with this one's attribution, so that each call
        is charged to a task of its own with the same team, user, session,
        ... values and budgets on those scopes still hold it. :meth:`_leave`
        undoes it."""
        running = _CURRENT.get()
        if running is not None and not running.closed and self._descends(running):
            return []
        return [_CURRENT.set(None), _AMBIENT.set(self.attribution)]

    def _descends(self, task: Task) -> bool:
        """Whether ``task`` is this task's parent, or its parent's, ..."""
        parent = self.parent
        while parent is not None:
            if parent is task:
                return True
            parent = parent.parent
        return False

    def _enter_step(
        self, carried: contextvars.Context, *, warned: bool, name: object
    ) -> tuple[list[contextvars.Token[Any]], bool]:
        """Enter this task for a bound step (a generator's next item, a
        coroutine); after the task has ended, enter :meth:`_enter_ended`
        instead (with a warning, unless ``warned`` says it was given).
        Returns the tokens for :meth:`_leave` and whether the task had ended.
        """
        if not self.closed:
            return self._enter(carried), False
        if not warned:
            self._ended_for(name)
        return self._enter_ended(), True

    def _ended_for(self, function: object) -> bool:
        if self.closed:
            logger.warning(
                "%s, bound to task %s, ran after the task ended; its calls are "
                "charged to the parent task it runs in, if one is open there, "
                "else to tasks of their own that still count against the task's "
                "team, user and other shared budgets (%s); never to the ended "
                "task's own budget or report. Finish bound work before its "
                "task's block ends to keep its calls in the task",
                _name_of(function),
                self.id,
                _scopes_text(self.scope_values),
            )
        return self.closed

    def report(self) -> TaskReport:
        """Return the task's totals so far.

        While the task is open, ``budget_left_usd`` is read from the ledger
        (one read per budget line; a line with no spend yet has its whole
        limit left); at its end it is the figure taken then.
        """
        left = self.budget_left_usd
        owner = self.owner
        if not self.closed and owner is not None:
            left = owner._budget_left(self)
        return self._report(left)

    async def areport(self) -> TaskReport:
        """Async form of :meth:`report`: an open task's budget lines are read
        with the ledger's async steps (no Redis round trip blocks the loop).
        """
        left = self.budget_left_usd
        owner = self.owner
        if not self.closed and owner is not None:
            left = await owner._abudget_left(self)
        return self._report(left)

    def _report(self, left: Decimal | None) -> TaskReport:
        with self._lock:
            return TaskReport(
                task_id=self.id,
                policy=self.policy.name,
                calls=self._calls,
                refused=self._refused,
                cache_hits=self._cache_hits,
                input_tokens=self._input_tokens,
                output_tokens=self._output_tokens,
                cost_usd=nanos_to_usd(self._cost_nanos),
                saved_usd=nanos_to_usd(self._saved_nanos),
                budget_left_usd=left,
                stop_reason=self.stop_reason,
                elapsed_s=self.elapsed_s(),
                attribution=_flat_attribution(self.attribution),
                peak_inflight=self.peak_inflight,
            )


# Scope values of the attributions tasks were made with, by identity: most
# tasks share a few attributions (the policy's), and reading one's fields
# costs more than copying a dict. Attributions are frozen; each entry keeps its
# attribution alive, so an id is never reused while its entry stands.
_SCOPE_VALUES: dict[int, tuple[Attribution, dict[str, str]]] = {}
_SCOPE_VALUES_MEMORY = 256


def _scope_values(attribution: Attribution) -> dict[str, str]:
    """``attribution.scope_values()``, as a fresh dict, read once per attribution."""
    entry = _SCOPE_VALUES.get(id(attribution))
    if entry is None or entry[0] is not attribution:
        if len(_SCOPE_VALUES) >= _SCOPE_VALUES_MEMORY:
            _SCOPE_VALUES.clear()
        entry = _SCOPE_VALUES[id(attribution)] = (
            attribution,
            attribution.scope_values(),
        )
    return dict(entry[1])


def _name_of(function: object) -> str:
    """A bound function's name for a log line (its ``__name__``, ``__qualname__``
    for a generator or coroutine object)."""
    name = getattr(function, "__qualname__", None) or getattr(
        function, "__name__", None
    )
    return name if isinstance(name, str) else "a bound function"


def _scopes_text(values: dict[str, str]) -> str:
    """Scope values as ``team=web, user=u1``; ``none named`` when empty."""
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "none named"


def _flat_attribution(attribution: Attribution) -> dict[str, str]:
    flat = attribution.scope_values()
    flat.update({f"tag.{k}": v for k, v in attribution.tags.items()})
    return flat
