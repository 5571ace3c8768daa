"""Govern a compiled LangGraph graph: ``govern(graph, governor)``.

Each invocation of the wrapped graph is one governed task. The governor rides
on LangChain's callback system, which reaches every chat model and LLM call in
every node, Send branch and subgraph, whether or not the node passes its
config on. The run's handler is also set in a configure hook that LangChain
adds to every callback manager made in the run's context, so a node that
passes callbacks of its own (which replace the inherited ones) is governed
too. The callback handler is marked ``raise_error`` so that a refusal stops
the graph before the refused call is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import inspect
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Iterator,
    Mapping,
    Sequence,
)
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any
from uuid import UUID

from langchain_core.callbacks import (
    AsyncCallbackHandler,
    BaseCallbackHandler,
    BaseCallbackManager,
)
from langchain_core.language_models import BaseLanguageModel
from langchain_core.messages import BaseMessage
from langchain_core.outputs import LLMResult
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import var_child_runnable_config
from langchain_core.tracers.context import register_configure_hook
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.errors import GraphBubbleUp, GraphInterrupt
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span

from governor._calls import TIME_CUT, Admission, CallRequest, CallResult
from governor._engine import Governor
from governor._errors import (
    ConfigError,
    GovernorError,
    OutputLimitExceeded,
    PolicyError,
)
from governor._loopwatch import loop_watch, state_digest, tool_call_output
from governor._task import _CURRENT, Task, TaskReport, stop_reason_for
from governor.adapters._ceiling import TIME, OutputCeiling
from governor.adapters._interrupt import InterruptScope, register, unshare
from governor.adapters._tokens import (
    count_prompt_tokens,
    countable_prompt,
    interrupted_after_sending,
    read_usage,
    settled_usage,
)
from governor.policies import Attribution, Policy
from governor.policies._model import name_problem
from governor.pricing import Usage, usage_from_response
from governor.pricing._types import USAGE_PARTS
from governor.telemetry import attributes as attr
from governor.telemetry._tracing import AttrValue

__all__ = [
    "AsyncGovernorCallbackHandler",
    "GovernedGraph",
    "GovernorCallbackHandler",
    "govern",
]

logger = logging.getLogger(__name__)

_HANDLER_NAMES = frozenset({"GovernorCallbackHandler", "AsyncGovernorCallbackHandler"})


class _QuietRefusals(logging.Filter):
    """Drops LangChain's warning about a refusal a governor handler raised.

    LangChain logs every exception a callback raises, even one it then
    re-raises (``raise_error``). A refusal reaches the caller as the
    exception itself, so the warning only repeats it, once per refused call.
    Any other error in the handlers is still logged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not isinstance(args, tuple) or len(args) != 3:
            return True
        handler, _event, error = args
        if handler not in _HANDLER_NAMES or not isinstance(error, str):
            return True
        name = error.split("(", 1)[0]
        return name != _RunEnded.__name__ and name not in _governor_error_names()


def _governor_error_names() -> set[str]:
    names: set[str] = set()
    pending: list[type[BaseException]] = [GovernorError]
    while pending:
        error = pending.pop()
        names.add(error.__name__)
        pending.extend(error.__subclasses__())
    return names


logging.getLogger("langchain_core.callbacks.manager").addFilter(_QuietRefusals())


# Runnable methods that would run the graph around the governor if they were
# passed through to it; each is either wrapped above or refused.
_UNGOVERNED_RUNS = frozenset(
    {
        "astream_log",
        "atransform",
        "transform",
        "stream_events",
        "with_retry",
        "with_fallbacks",
        "pipe",
        "bind",
        "with_listeners",
        "with_alisteners",
        "with_types",
        "assign",
        "pick",
        "as_tool",
        "map",
    }
)


_CLOSED = "closed"
"""The stop reason of a streamed run whose reader stopped reading early."""

_INTERRUPTED = "interrupted"
"""The stop reason of a run paused by ``interrupt()`` or at a breakpoint."""

_ENDING_NODES = "ending_nodes"
"""Task extra of a sync run: the top-level nodes whose error ends it."""

_FAILURE = "failure"
"""Task extra: the node error that ended a sync run."""

_NS_SEP = "|"
"""Separates the graph levels of a LangGraph checkpoint namespace."""

_SETTLE_WAIT_S = 5.0
"""How long a run's end waits for model calls that a node's thread is
opening or settling, so that the task's report counts them."""

_SETTLE_POLL_S = 0.002
"""How often an async run's end looks whether those calls are done."""

_REPORTS_KEPT = 1000
"""How many reports a governed graph keeps: its last finished invocations'."""

_HASH_ESCAPE = "%23"
"""What each ``#`` of a thread id becomes in the session it names."""

_UNNAMED_THREADS: list[str] = []
"""The first thread id that could name no session (warned about once)."""
_UNNAMED_LOCK = threading.Lock()


def govern(graph: Any, governor: Governor | Policy | None = None) -> GovernedGraph:
    """Wrap a compiled graph so that every invocation is a governed task.

    Args:
        graph: a compiled LangGraph graph (anything with invoke/stream), or
            one bound with ``with_config``: its bound metadata and thread id
            count as if passed at each call.
        governor: a :class:`Governor`, or a :class:`Policy` to build one.

    Returns:
        A :class:`GovernedGraph`, with the graph's ways to run it (it is not a
        LangChain Runnable: to use it as a node of another graph, add the
        compiled graph there instead).

    Raises:
        ConfigError: ``graph`` is not runnable, such as a ``StateGraph`` not
            yet compiled, or is a :class:`GovernedGraph` already.
    """
    _check_runnable(graph)
    if governor is None or isinstance(governor, Policy):
        governor = Governor(governor)
    return GovernedGraph(graph, governor)


_MISPLACED_WARNED: set[str] = set()  # the places said once each


def _warn_misplaced_task_id(config: Mapping[str, Any]) -> None:
    """Say once that a ``task_id`` outside ``config["metadata"]`` is not read
    (each run then gets a task of its own, with a budget of its own)."""
    configurable = config.get("configurable")
    places = [
        place
        for place, found in (
            ('config["task_id"]', "task_id" in config),
            (
                'config["configurable"]["task_id"]',
                isinstance(configurable, Mapping) and "task_id" in configurable,
            ),
        )
        if found
    ]
    if not places or places[0] in _MISPLACED_WARNED:
        return
    _MISPLACED_WARNED.add(places[0])
    logger.warning(
        "%s is not read: a governed run takes its task id from "
        'config["metadata"]["task_id"], so this run is a new task with a '
        "budget of its own. Move it into the metadata. Logged once per place.",
        places[0],
    )


def _check_runnable(graph: Any) -> None:
    """Refuse what cannot be invoked now, rather than at the first invoke,
    and a graph governed already (each call would be charged twice)."""
    if isinstance(graph, GovernedGraph):
        raise ConfigError(
            "govern() got a graph that is governed already; each call would be "
            "charged twice, once per wrapper. Govern the compiled graph once: "
            "use the GovernedGraph you have, or govern(agent.graph, governor) "
            "for another governor"
        )
    if callable(getattr(graph, "invoke", None)) and callable(
        getattr(graph, "stream", None)
    ):
        return
    kind = type(graph).__name__
    if callable(getattr(graph, "compile", None)):
        raise ConfigError(
            f"govern() got a {kind} that is not compiled; call .compile() "
            "first: govern(builder.compile(), governor)"
        )
    raise ConfigError(
        f"govern() needs a compiled LangGraph graph (an object with invoke and "
        f"stream), got {kind}"
    )


class GovernedGraph:
    """A compiled graph whose invocations are governed tasks.

    ``invoke``, ``ainvoke``, ``stream``, ``astream``, ``astream_events``,
    ``batch``, ``abatch``, ``batch_as_completed`` and ``abatch_as_completed``
    take the graph's own arguments; the caller's config passes through with
    the governor's callback added. The task id is ``config["metadata"]
    ["task_id"]`` when given, else a fresh one; attribution keys (``org``,
    ``team``, ``feature``, ``environment``, ``user``, ``session``) in the metadata are
    charged, and ``configurable["thread_id"]`` is the session when none is
    named (each ``#`` written ``%23``; an id that cannot name a session, such
    as ``""``, sets none, with a warning). A run paused at a breakpoint or by
    ``interrupt()`` reports ``"interrupted"``. A config bound to the graph
    (``with_config``) counts too, under the one given at the call, as
    LangChain merges them. Other attributes are the graph's.

    The reports of the last 1,000 finished invocations are kept; older ones
    are dropped, so a long-lived graph does not grow. Under concurrency,
    find an invocation's report in :attr:`reports` by the task id it was
    given (``config["metadata"]["task_id"]``).
    """

    def __init__(self, graph: Any, governor: Governor) -> None:
        self.graph = graph
        self.governor = governor
        self._reports: deque[TaskReport] = deque(maxlen=_REPORTS_KEPT)
        self._lock = threading.Lock()

    def __reduce__(self) -> Any:
        raise TypeError(
            "a GovernedGraph cannot be pickled: it holds a Governor, which "
            "belongs to its process. Send the Policy (which pickles) and govern "
            "the graph in the worker: govern(graph, Governor(policy, ...))"
        )

    @property
    def last_report(self) -> TaskReport | None:
        """The report of the most recently finished invocation."""
        with self._lock:
            return self._reports[-1] if self._reports else None

    @property
    def reports(self) -> list[TaskReport]:
        """Reports of the last 1,000 finished invocations, oldest first;
        filter by ``task_id`` to find one invocation's report."""
        with self._lock:
            return list(self._reports)

    def invoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Any:
        """Run the graph as one governed task and return its output."""
        task, config = self._start(config)
        scope = InterruptScope(_end_interrupted, (task,))
        scope.open()
        shared = scope.shared()
        tokens = _enter(task)
        try:
            output = self.graph.invoke(input, config, **kwargs)
            if _breakpoints_set(self.graph, kwargs):
                _note_pause(task, _paused_at(self.graph, config))
        except BaseException as exc:
            error = _run_error(task, exc)
            task.stop_reason = task.stop_reason or stop_reason_for(error)
            _hang_up(task)
            if error is not exc:
                raise error from None
            raise
        finally:
            _leave(tokens)
            unshare(shared)
            scope.close()
            self._finish(task)
        return output

    async def ainvoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Any:
        """Async form of :meth:`invoke`."""
        task, config = self._start(config, is_async=True)
        tokens = _enter(task)
        try:
            output = await self.graph.ainvoke(input, config, **kwargs)
            if _breakpoints_set(self.graph, kwargs):
                _note_pause(task, await _apaused_at(self.graph, config))
        except BaseException as exc:
            task.stop_reason = task.stop_reason or stop_reason_for(exc)
            await _ahang_up(task)
            raise
        finally:
            _leave(tokens)
            await self._afinish(task)
        return output

    def stream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[Any]:
        """Stream the graph's output as one governed task.

        A reader that stops early (``close()``, or ``break`` and the
        generator's end) hangs up on the model streams still open first:
        closing the graph's stream waits for its running nodes, which are
        then cut off instead of reading their answers out.
        """
        task, config = self._start(config)
        inner: Iterator[Any] | None = None
        completed = False
        # Open while the reader holds the stream: nodes run between reads.
        scope = InterruptScope(_end_interrupted, (task,))
        scope.open()
        last: Any = None
        try:
            inner = self.graph.stream(input, config, **kwargs)
            for last in _with_task(task, inner):
                yield last
            completed = True
            if _breakpoints_set(self.graph, kwargs):
                _note_pause(task, _paused_at(self.graph, config))
        except GeneratorExit:  # the reader stopped before the run ended
            _note_pause(task, _announces_pause(last))
            task.stop_reason = task.stop_reason or _CLOSED
            raise
        except BaseException as exc:
            error = _run_error(task, exc)
            task.stop_reason = task.stop_reason or stop_reason_for(error)
            if error is not exc:
                raise error from None
            raise
        finally:
            scope.close()
            try:
                if not completed:
                    _end_sync_run(task)
                _close(inner)
            finally:
                self._finish(task)

    def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        """Async form of :meth:`stream`."""
        return self._astream_task(
            config, lambda bound: self.graph.astream(input, bound, **kwargs), kwargs
        )

    async def _astream_task(
        self,
        config: RunnableConfig | None,
        source: Callable[[RunnableConfig], AsyncIterator[Any]],
        kwargs: Mapping[str, Any],
    ) -> AsyncIterator[Any]:
        """Run an async stream of the graph as one governed task.

        The task starts when the reader asks for the first item. ``kwargs``
        are the run's own (breakpoints given at the call are read there).
        """
        task, bound = self._start(config, is_async=True)
        items = _awith_task(task, source(bound))
        completed = False
        item: Any = None
        try:
            async for item in items:
                yield item
            completed = True
            if _breakpoints_set(self.graph, kwargs):
                _note_pause(task, await _apaused_at(self.graph, bound))
        except GeneratorExit:  # the reader stopped before the run ended
            _note_pause(task, _announces_pause(item))
            task.stop_reason = task.stop_reason or _CLOSED
            raise
        except BaseException as exc:  # an error, or the reader was cancelled
            task.stop_reason = task.stop_reason or stop_reason_for(exc)
            raise
        finally:
            await items.aclose()
            if not completed:
                await _ahang_up(task)
            await self._afinish(task)

    def batch(
        self,
        inputs: Sequence[Any],
        config: RunnableConfig | Sequence[RunnableConfig] | None = None,
        **kwargs: Any,
    ) -> list[Any]:
        """Invoke once per input, each a task of its own, in worker threads.

        Results come back in input order. ``max_concurrency`` in the config
        bounds the threads, as in LangChain. With ``return_exceptions=True``
        an input that fails gives its exception in its place instead of
        stopping the batch.
        """
        configs = _configs(config, len(inputs))
        keep_errors = bool(kwargs.pop("return_exceptions", False))
        run = self._batch_run(keep_errors, kwargs)
        if len(inputs) <= 1:
            return [run(i, c) for i, c in zip(inputs, configs, strict=True)]
        workers = _max_concurrency(configs, self.graph)
        scope = InterruptScope(_end_interrupted)
        scope.open()
        try:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures = [
                    pool.submit(_run_in, scope.context(), run, item, item_config)
                    for item, item_config in zip(inputs, configs, strict=True)
                ]
                return [future.result() for future in futures]
        finally:
            scope.close()

    def batch_as_completed(
        self,
        inputs: Sequence[Any],
        config: RunnableConfig | Sequence[RunnableConfig] | None = None,
        **kwargs: Any,
    ) -> Iterator[tuple[int, Any]]:
        """Like :meth:`batch`, yielding ``(index, output)`` as each input's
        run completes, fastest first.

        Each input is a task of its own, run in worker threads bounded by
        ``max_concurrency``. Without ``return_exceptions=True`` the first
        failure is raised. A reader that stops early starts no more inputs;
        those already running finish first.
        """
        configs = _configs(config, len(inputs))
        keep_errors = bool(kwargs.pop("return_exceptions", False))
        run = self._batch_run(keep_errors, kwargs)
        workers = _max_concurrency(configs, self.graph)
        scope = InterruptScope(_end_interrupted)
        scope.open()
        try:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures = {
                    pool.submit(_run_in, scope.context(), run, item, item_config): i
                    for i, (item, item_config) in enumerate(
                        zip(inputs, configs, strict=True)
                    )
                }
                try:
                    for future in as_completed(futures):
                        yield futures[future], future.result()
                finally:
                    for future in futures:
                        future.cancel()  # not started yet: never started
        finally:
            scope.close()

    def _batch_run(
        self, keep_errors: bool, kwargs: Mapping[str, Any]
    ) -> Callable[[Any, RunnableConfig | None], Any]:
        """One input's invocation; its error is its result if ``keep_errors``."""

        def run(item: Any, item_config: RunnableConfig | None) -> Any:
            try:
                return self.invoke(item, item_config, **kwargs)
            except Exception as exc:
                if not keep_errors:
                    raise
                return exc

        return run

    async def abatch(
        self,
        inputs: Sequence[Any],
        config: RunnableConfig | Sequence[RunnableConfig] | None = None,
        **kwargs: Any,
    ) -> list[Any]:
        """Async form of :meth:`batch`: inputs run concurrently, at most
        ``max_concurrency`` at once when the config sets it."""
        configs = _configs(config, len(inputs))
        keep_errors = bool(kwargs.pop("return_exceptions", False))
        slots = _slots(_max_concurrency(configs, self.graph))

        async def run(item: Any, item_config: RunnableConfig | None) -> Any:
            async with slots:
                return await self.ainvoke(item, item_config, **kwargs)

        return list(
            await asyncio.gather(
                *(run(i, c) for i, c in zip(inputs, configs, strict=True)),
                return_exceptions=keep_errors,
            )
        )

    async def abatch_as_completed(
        self,
        inputs: Sequence[Any],
        config: RunnableConfig | Sequence[RunnableConfig] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[tuple[int, Any]]:
        """Async form of :meth:`batch_as_completed`.

        Inputs run concurrently, at most ``max_concurrency`` at once. A
        reader that stops early cancels the inputs still running: each
        cancelled run ends as :meth:`ainvoke` does when cancelled.
        """
        configs = _configs(config, len(inputs))
        keep_errors = bool(kwargs.pop("return_exceptions", False))
        slots = _slots(_max_concurrency(configs, self.graph))

        async def run(
            index: int, item: Any, item_config: RunnableConfig | None
        ) -> tuple[int, Any]:
            async with slots:
                try:
                    return index, await self.ainvoke(item, item_config, **kwargs)
                except Exception as exc:
                    if not keep_errors:
                        raise
                    return index, exc

        runs = [
            asyncio.ensure_future(run(index, item, item_config))
            for index, (item, item_config) in enumerate(
                zip(inputs, configs, strict=True)
            )
        ]
        try:
            for next_done in asyncio.as_completed(runs):
                yield await next_done
        finally:
            await _cancel(runs)

    def astream_events(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        """The graph's event stream, run as one governed task."""
        return self._astream_task(
            config,
            lambda bound: self.graph.astream_events(input, bound, **kwargs),
            kwargs,
        )

    def with_config(
        self, config: RunnableConfig | None = None, **kwargs: Any
    ) -> GovernedGraph:
        """The graph with a bound config, still governed by this governor.

        The bound metadata (task id, attribution) and thread id apply to
        every invocation, under the config given at the call. The result
        keeps reports of its own.
        """
        return GovernedGraph(self.graph.with_config(config, **kwargs), self.governor)

    def __getattr__(self, name: str) -> Any:
        if name in _UNGOVERNED_RUNS:
            raise AttributeError(
                f"GovernedGraph.{name} is not supported: it would run the graph "
                "without the governor. Use invoke, ainvoke, stream, astream, "
                "astream_events, batch, abatch, batch_as_completed or "
                "abatch_as_completed, or call it on .graph to run ungoverned "
                "on purpose."
            )
        return getattr(self.graph, name)

    def _start(
        self, config: RunnableConfig | None, *, is_async: bool = False
    ) -> tuple[Task, RunnableConfig]:
        _check_config(config)
        merged: RunnableConfig = {**(config or {})}
        # The graph merges its bound config under this one when it runs; read
        # the same merge here so bound metadata and thread id are governed.
        # Only the metadata is passed on merged: bound callbacks and tags are
        # added again by the graph itself.
        effective = _under(_bound_config(self.graph), merged)
        metadata = dict(effective.get("metadata") or {})
        given = metadata.get("task_id")
        if given is None:
            _warn_misplaced_task_id({**effective, **merged})
        # "" is refused, not random; a thread id given as the task id keeps
        # working: each "#" is written "%23", as in the session it names.
        task_id = None if given is None else str(given).replace("#", _HASH_ESCAPE)
        task = self.governor.open_task(task_id, attribution=_attribution(effective))
        if not is_async:
            register(task)  # Ctrl-C on a batch or an outer run ends it too
        metadata["task_id"] = task.id
        merged["metadata"] = metadata
        handler = GovernorCallbackHandler(self.governor, task)
        task.extras["handler"] = handler
        merged["callbacks"] = _with_handler(merged.get("callbacks"), handler)
        if is_async:
            partner = AsyncGovernorCallbackHandler(handler)
            merged["callbacks"] = _with_handler(merged["callbacks"], partner)
        else:
            # LangGraph cannot cancel a sync node: a run whose node fails
            # waits for its other branches, so their streams are hung up then.
            task.extras[_ENDING_NODES] = _nodes_ending_run(self.graph)
        return task, merged

    def _finish(self, task: Task) -> None:
        handler = task.extras.get("handler")
        if handler is not None:
            handler.abandon_open_calls()
        self._keep(self.governor.close_task(task))

    async def _afinish(self, task: Task) -> None:
        """Async form of :meth:`_finish`: the store is read and written by
        its async steps."""
        handler = task.extras.get("handler")
        try:
            if handler is not None:
                await handler.aabandon_open_calls()
        finally:
            try:
                report = await self.governor.aclose_task(task)
            except BaseException:
                self._keep(task.report())  # closed already: reads no store
                raise
            self._keep(report)

    def _keep(self, report: TaskReport) -> None:
        with self._lock:
            self._reports.append(report)


class _HandlerCore:
    """State and steps shared by the sync and async callback handlers."""

    def __init__(self, governor: Governor, task: Task) -> None:
        self.governor = governor
        self.task = task
        self._lock = threading.Lock()
        self._parents: dict[UUID, UUID | None] = {}
        self._spans: dict[UUID, Span | None] = {}
        self._branches: dict[UUID, tuple[Any, str]] = {}
        self._calls: dict[UUID, Admission] = {}
        self._streamed: dict[UUID, list[str]] = {}
        # Streamed calls whose model said it had finished (a chunk with a
        # finish reason): a node that stops reading there has read it all.
        self._finished: set[UUID] = set()
        self._ceilings: dict[UUID, OutputCeiling] = {}
        self._steps: dict[UUID, tuple[str, str | None]] = {}
        # Calls being opened or settled right now, in neither ``_calls`` nor
        # the task's totals: the run's end waits for them (see abandon_open_calls).
        self._busy = 0
        self._quiet = threading.Condition(self._lock)
        # Model calls LiteLLM governs (ChatLiteLLM under instrument()) that
        # have not ended, each with the task's streams open when it started,
        # until its first token; and the LiteLLM streams watched since then
        # (see _watch_streams).
        self._passing: dict[UUID, frozenset[str] | None] = {}
        self._watched: set[str] = set()
        task.extras["parent_span"] = self.current_span

    # -- graph steps -----------------------------------------------------

    def _node_started(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        metadata: Mapping[str, Any] | None,
        name: str | None,
        inputs: Any = None,
    ) -> bool:
        """Record the run; open a span if it is a node step. True for a step.

        A step is the run named after its node. A runnable inside it may
        carry the node's name too (``add_node("talk", RunnableLambda(talk))``):
        a run within a step of the same node and namespace is part of it.
        """
        span = None
        node = (metadata or {}).get("langgraph_node")
        step_key = None
        if node is not None and name == node and not self._foreign(metadata):
            namespace = (metadata or {}).get("langgraph_checkpoint_ns")
            step_key = (str(node), None if namespace is None else str(namespace))
            if self._within_step(parent_run_id, step_key):
                step_key = None
        is_step = step_key is not None
        if step_key is not None:
            step = int((metadata or {}).get("langgraph_step", 0))
            watch = loop_watch(self.task, self.governor.telemetry)
            watch.on_step(str(node), state_digest(inputs), step, step_key[1])
            attributes: dict[str, AttrValue] = {
                attr.NODE_NAME: str(node),
                attr.NODE_STEP: int((metadata or {}).get("langgraph_step", 0)),
                attr.TASK_ID: self.task.id,
            }
            parent = self._span_for(parent_run_id)
            name = attr.SPAN_NODE_PREFIX + str(node)
            span = self.governor.telemetry.start_span(name, parent, attributes)
        with self._lock:
            self._parents[run_id] = parent_run_id
            self._spans[run_id] = span
            if step_key is not None:
                self._steps[run_id] = step_key
        return is_step

    def _within_step(
        self, run_id: UUID | None, step_key: tuple[str, str | None]
    ) -> bool:
        """True when the run or one above it is the step ``step_key`` names."""
        with self._lock:
            while run_id is not None:
                if self._steps.get(run_id) == step_key:
                    return True
                run_id = self._parents.get(run_id)
        return False

    def _foreign(self, metadata: Mapping[str, Any] | None) -> bool:
        """True for runs of a nested governed graph: its own handler governs."""
        owner = (metadata or {}).get("task_id")
        return owner is not None and owner != self.task.id

    def _branch_slots(self, metadata: Mapping[str, Any] | None) -> Any:
        """The semaphore capping parallel node runs of this graph level.

        A node's ``checkpoint_ns`` names the graph it runs in: empty for the
        top graph, the subgraph node's namespace for a node of a subgraph.
        Each graph run has its own cap, so a subgraph node holding a slot of
        its graph never waits for one its own inner nodes need.
        """
        limit = self.task.policy.fanout.max_branches
        if limit is None:
            return None
        from governor.stores._semaphore import LocalSemaphore

        level = str((metadata or {}).get("checkpoint_ns") or "")
        with self._lock:
            slots = self.task.extras.setdefault("branch_slots", {})
            if level not in slots:
                slots[level] = LocalSemaphore(limit, key=f"branches:{self.task.id}")
            return slots[level]

    def _chain_ended(self, run_id: UUID, error: BaseException | None) -> Any:
        """Close the step span; return the branch slot to give back, if any."""
        with self._lock:
            span = self._spans.pop(run_id, None)
            self._parents.pop(run_id, None)
            slot = self._branches.pop(run_id, None)
            step_key = self._steps.pop(run_id, None)
        if isinstance(error, GraphBubbleUp):  # interrupt(), Command(graph=PARENT)
            if isinstance(error, GraphInterrupt):
                self.task.stop_reason = self.task.stop_reason or _INTERRUPTED
            attributes: dict[str, AttrValue] = {attr.NODE_PAUSED: True}
            error = None  # control flow, not a failure
        else:
            attributes = {}
        if span is not None:
            self.governor.telemetry.end_span(span, attributes, error)
        if error is not None and step_key is not None and self._ends_run(step_key):
            self._run_failed(error)
        return slot

    def _ends_run(self, step_key: tuple[str, str | None]) -> bool:
        """True when this step's error ends a sync run: a node of the top
        graph that no retry policy or error handler takes the error over for."""
        ending = self.task.extras.get(_ENDING_NODES)
        node, namespace = step_key
        if not ending or namespace is None or _NS_SEP in namespace:
            return False
        return node in ending

    def _run_failed(self, error: BaseException) -> None:
        """A node failed the run: hang up the model streams of its other
        branches now, or the graph waits for them to read their answers out.

        The first such error is the run's: a branch cut off here may fail
        before it, and the run raises it instead (see :func:`_run_error`).
        """
        with self._lock:
            self.task.extras.setdefault(_FAILURE, error)
        _end_sync_run(self.task)

    def _branch_refused(self, run_id: UUID, error: BaseException) -> None:
        """End the step's span: LangChain reports no error for a run whose
        start callback raised."""
        self._chain_ended(run_id, error)
        if isinstance(error, GovernorError):
            self.task.refuse(error.code)

    # -- model calls -----------------------------------------------------

    def _call_task(self) -> Task:
        """The task a model call starting now belongs to.

        A node may open a sub-task of the run (``with gov.task(...)``): its
        calls are the sub-task's (its admission, budgets, loop guard, report
        and spend records), as its LiteLLM calls are. Any other task current
        here (another governor's, one outside this run, one closed) leaves
        the call to the run's task.
        """
        current = _CURRENT.get()
        if (
            current is None
            or current is self.task
            or current.owner is not self.governor
            or current.closed
            or not current._descends(self.task)
        ):
            return self.task
        return current

    def _request(
        self,
        serialized: Mapping[str, Any] | None,
        messages: list[dict[str, Any]],
        run_id: UUID,
        parent_run_id: UUID | None,
        metadata: Mapping[str, Any] | None,
        kwargs: Mapping[str, Any],
    ) -> tuple[CallRequest, tuple[str, ...]] | None:
        """The call to reserve, with the model names its chat model stamps on
        every answer (see :func:`_stamped_models`); None for a call this
        handler does not govern.

        The call is the task's current at its start when that is a sub-task
        of the run (see :meth:`_call_task`); the run ending refuses it all
        the same.
        """
        if self._foreign(metadata):
            return None
        if self.task.ending is not None:
            raise self.task.ending()
        if _governed_by_litellm(serialized):
            self._pass_through(run_id)
            return None
        task = self._call_task()
        params = dict(kwargs.get("invocation_params") or {})
        caller = _calling_model()
        settings = _call_settings(params, caller)
        meta = metadata or {}
        step = meta.get("langgraph_step")
        model = _model_name(params, meta, caller)
        if model is None:
            if task.policy.pricing.default is None:
                raise _unnamed_model()
            model = "unnamed"
        tools = params.get("tools")
        extra = {"tools": tools} if tools else None

        def count() -> int:
            return count_prompt_tokens(model, messages, extra)

        request = CallRequest(
            model=model,
            messages=messages,
            max_output_tokens=_max_tokens(settings, meta),
            can_set_max_tokens=False,
            stream=bool(params.get("stream")),
            count_prompt_tokens=count if countable_prompt(messages) else None,
            parent_span=(
                self.current_span()
                if parent_run_id is None  # the node's callbacks, not the run's
                else self._span_for(parent_run_id)
            ),
            extra_prompt=extra,
            task=task,
            step=int(step) if step is not None else None,
            node=meta.get("langgraph_node"),
            branch=meta.get("langgraph_checkpoint_ns"),
            choices=_largest(settings, "n") or 1,
        )
        return request, _stamped_models(caller)

    def _open(
        self, run_id: UUID, request: CallRequest, stamped: tuple[str, ...]
    ) -> None:
        """Reserve the call and add it to the open calls."""
        self._opening()
        try:
            self._admitted(run_id, self.governor.begin_call(request), stamped)
        finally:
            self._done()

    async def _aopen(
        self, run_id: UUID, request: CallRequest, stamped: tuple[str, ...]
    ) -> None:
        """Async form of :meth:`_open`."""
        self._opening()
        try:
            admission = await self.governor.abegin_call(request)
            self._admitted(run_id, admission, stamped)
        finally:
            self._done()

    def _opening(self) -> None:
        """Count a call being opened; refuse it if its run is ending.

        Checked under the lock the run's end collects the open calls with:
        a call the run's end does not wait for is refused here.
        """
        with self._lock:
            ending = self.task.ending
            if ending is not None:
                raise ending()
            self._busy += 1

    def _done(self) -> None:
        """A call counted by :meth:`_opening` or :meth:`_take` is open, or
        settled on its task."""
        with self._lock:
            self._busy -= 1
            self._quiet.notify_all()

    def _admitted(
        self, run_id: UUID, admission: Admission, stamped: tuple[str, ...]
    ) -> None:
        if stamped:  # read back when the call ends (see _answering_model)
            admission.extras[_STAMPED] = stamped
        with self._lock:
            self._calls[run_id] = admission
            self._streamed[run_id] = []
            self._ceilings[run_id] = OutputCeiling(admission)

    def _streamed_text(self, run_id: UUID, token: Any, chunk: Any) -> None:
        """Keep a streamed chunk's output; stop a stream far past its ceiling.

        Raising from the callback ends the model's stream (the handler is
        ``raise_error``): the provider stops with the connection, and
        ``on_llm_error`` charges what arrived. A token reaching a sync run
        that is ending stops its stream the same way: any chat model's, and
        a LiteLLM stream that opened after the run hung up on the others
        (its call was sent before) is hung up on first; the chunk counts as
        arrived.
        """
        if self._passing:
            self._watch_streams(run_id)
        parts = list(_chunk_output(token, chunk))
        ending = self.task.ending
        finished = _finish_reason(chunk) is not None
        with self._lock:
            if finished:
                self._finished.add(run_id)
            pieces = self._streamed.get(run_id)
            ceiling = self._ceilings.get(run_id)
            if pieces is not None:
                pieces.extend(parts)
            passed = (
                ending is None
                and pieces is not None
                and ceiling is not None
                and ceiling.passed(parts)
            )
            admission = self._calls.get(run_id)
        if ending is not None:
            _hang_up(self.task)
            raise ending()
        if not passed or ceiling is None:
            return
        out_of_time = ceiling.reason == TIME
        if out_of_time and admission is not None:
            admission.extras[TIME_CUT] = True  # said here, not by the engine
        raise OutputLimitExceeded(
            model=ceiling.model,
            reserved_tokens=ceiling.reserved_tokens,
            streamed_chars=ceiling.chars,
            task_id=(self.task if admission is None else admission.task).id,
            max_call_s=ceiling.max_call_s if out_of_time else None,
        )

    def _ended(
        self, run_id: UUID, response: LLMResult
    ) -> tuple[Admission, CallResult] | None:
        """Take the call off the open calls, with its result; settling it
        is up to the caller, who then calls :meth:`_done`."""
        self._passed(run_id, None)
        taken = self._take(run_id)
        if taken is None:
            return None
        admission = taken[0]
        try:
            return admission, self._answered(admission, response)
        except BaseException:
            self._done()
            raise

    def _answered(self, admission: Admission, response: LLMResult) -> CallResult:
        """An answered call's result, at the usage the model reported (or a
        local count)."""
        request = admission.request
        stamped = admission.extras.get(_STAMPED, ())
        model = _answering_model(response, request.model, stamped)
        text = _generated_text(response)
        reported = read_usage(lambda: _usage_of(response), request.model)
        usage = _usage_for(request, text, reported)
        return CallResult(
            usage=usage,
            response_model=model,
            finish_reasons=_finish_reasons(response),
            output_text=_judged(response, text),
        )

    def _judge_repeat(self, admission: Admission, result: CallResult) -> None:
        """Give the same-call rule a graph branch's answered call.

        Every call of a branch goes there, also one that ran beside another
        call of the task (which the other output rules leave out): the
        branches of a fan-out finish in any order, and a polling loop made
        of them is stopped only if none of its calls is left out.
        """
        request = admission.request
        checks = admission.extras.get("checks")
        if request.branch is None or not checks:
            return
        step = request.step if request.step is not None else 0
        watch = loop_watch(admission.task, self.governor.telemetry)
        watch.after_branch_call(result.output_text, step, checks[1])

    def _failed(
        self, run_id: UUID, error: BaseException
    ) -> tuple[Admission, CallResult] | None:
        """Take the failed call off the open calls, with its result; settling
        it is up to the caller, who then calls :meth:`_done`."""
        with self._lock:
            finished = run_id in self._finished
        self._passed(run_id, None if finished else error)
        taken = self._take(run_id)
        if taken is None:
            return None
        try:
            if finished and isinstance(error, GeneratorExit):
                return self._read_out(*taken)
            return self._cut_off(*taken, error)
        except BaseException:
            self._done()
            raise

    def _read_out(
        self, admission: Admission, text: str
    ) -> tuple[Admission, CallResult]:
        """A stream its node stopped reading at the model's last chunk (the
        one with a finish reason): it was read out, so it is settled as an
        answer, at a local count of what arrived, not at its hold."""
        return admission, CallResult(usage=_usage_for(admission.request, text))

    def _cut_off(
        self,
        admission: Admission,
        text: str,
        error: BaseException,
        *,
        unread: bool = False,
    ) -> tuple[Admission, CallResult]:
        """A failed call's result: what it streamed, or its hold if it was
        cut off after sending with nothing seen.

        A call hung up on because its run ended (:class:`_RunEnded`) was
        left open by the run, as the calls the run's end finds open are. A
        stream its node stopped reading (``unread``, or ``GeneratorExit``:
        the node broke out of it, dropped or closed it) is charged its hold,
        whatever arrived: the provider's connection belongs to the chat
        model, which may leave it open (ChatLiteLLM's stays open, streaming
        and billed, until the garbage collector closes it), and the governor
        cannot close it.
        """
        if isinstance(error, _RunEnded):
            error = _Abandoned()
        if unread or isinstance(error, GeneratorExit):
            _warn_unread(admission.task, _HELD)
            return admission, CallResult(error=error, charge_hold=True)
        if text:  # a stream cut off: the provider stops with the connection
            usage = _usage_for(admission.request, text)
            return admission, CallResult(usage=usage, error=error)
        # Cut off after sending with nothing seen: it may be billed in full.
        cut_off = interrupted_after_sending(error)
        return admission, CallResult(error=error, charge_hold=cut_off)

    def abandon_open_calls(self) -> None:
        """Settle calls that never reported back (a cancelled invocation).

        What they streamed is charged (as an estimate) and the rest released,
        so a cancelled task does not pin its budget until the holds expire.
        A call another thread is opening, making or settling right now (a
        sync node's, through this handler or the LiteLLM adapter) is waited
        for, up to :data:`_SETTLE_WAIT_S` seconds, so that the task's report
        counts it. Streams left unread are not waited for: the run hung up
        on them, or says it charges them after its report. The LiteLLM
        streams of ChatLiteLLM calls still open are hung up on first (see
        :meth:`_watch_streams`), and a call whose stream the node stopped
        reading is charged its hold (see :meth:`_cut_off`).
        """
        _close_all(self._watched_open())
        deadline = time.monotonic() + _SETTLE_WAIT_S
        while True:
            waited_out = time.monotonic() >= deadline
            for admission, result in self._abandoned():
                self.governor.end_call(admission, result)
            if not self._wait_again(waited_out):
                return
            with self._lock:
                left = deadline - time.monotonic()
                # The task's settles do not notify here: look again soon.
                self._quiet.wait_for(self._changed, min(max(left, 0.0), 0.01))

    async def aabandon_open_calls(self) -> None:
        """Async form of :meth:`abandon_open_calls`, for an event loop."""
        await _aclose_all(self._watched_open())
        deadline = time.monotonic() + _SETTLE_WAIT_S
        while True:
            waited_out = time.monotonic() >= deadline
            for admission, result in self._abandoned():
                await self.governor.aend_call(admission, result)
            if not self._wait_again(waited_out):
                return
            await asyncio.sleep(_SETTLE_POLL_S)

    def _changed(self) -> bool:
        """Under the lock: a call was opened, or none is busy any more."""
        return bool(self._calls) or not (self._busy or self._running())

    def _running(self) -> int:
        """The task's admitted calls still unsettled, less its unread
        streams: calls another thread is making (a sync node's LiteLLM
        call under ``instrument()``) that settle when they return."""
        return max(self.task.inflight - self.task.unread_streams(), 0)

    def _wait_again(self, waited_out: bool) -> bool:
        """True while calls are open or busy (being opened, made or settled
        elsewhere) and the wait for them is not over; a wait that ran out
        leaves them out of the report, with a warning."""
        with self._lock:
            left = max(len(self._calls) + self._busy, self._running())
        if not left:
            return False
        if not waited_out:
            return True
        logger.warning(
            "task %s: %d model call(s) were still being opened or settled "
            "%.0f s after the run ended; the task's report leaves out what "
            "they cost, which its budget lines and spend records still get",
            self.task.id,
            left,
            _SETTLE_WAIT_S,
        )
        return False

    def _abandoned(self) -> list[tuple[Admission, CallResult]]:
        """Take the open calls, each with its result as an abandoned call.

        In a run that completed or that a node's error ended, nothing cut
        an open call off: its node stopped reading its stream (and holds
        it, or its traceback does), so it is charged as such.
        """
        reason = self.task.stop_reason
        unread = reason is None or reason.startswith("error:")
        with self._lock:
            taken = [self._remove(run_id) for run_id in list(self._calls)]
        return [
            self._cut_off(admission, text, _Abandoned(), unread=unread)
            for admission, text in taken
            if admission is not None
        ]

    def _take(self, run_id: UUID) -> tuple[Admission, str] | None:
        """Take an open call off the open calls, with what it streamed, to
        settle it here; it counts as busy until :meth:`_done`.

        The call moves from open to busy at once, so the run's end always
        finds it in one of them: it settles the call itself or waits for it.
        """
        with self._lock:
            admission, text = self._remove(run_id)
            if admission is None:
                return None
            self._busy += 1
            return admission, text

    def _remove(self, run_id: UUID) -> tuple[Admission | None, str]:
        """Under the lock: drop the call's state; its admission, if it was
        open, and what it streamed."""
        self._ceilings.pop(run_id, None)
        self._finished.discard(run_id)
        text = "".join(self._streamed.pop(run_id, []))
        return self._calls.pop(run_id, None), text

    # -- LiteLLM streams of ChatLiteLLM calls (under instrument()) ---------

    def _pass_through(self, run_id: UUID) -> None:
        """A model call that LiteLLM governs starts: note the task's streams
        open now, to tell the call's own stream at its first token."""
        before = frozenset(self.task.open_streams.keys())
        with self._lock:
            self._passing[run_id] = before

    def _watch_streams(self, run_id: UUID) -> None:
        """At the first token of a call LiteLLM governs, watch its stream.

        Its stream is one of the task's LiteLLM streams opened since the
        call started, and read already. A node that stops reading it
        (``break``) drops it; LiteLLM keeps the provider's connection in a
        reference cycle, streaming and billed until the garbage collector
        runs. A dropped stream closes its connection itself (the LiteLLM
        adapter's streams do); the run's end hangs up on the watched streams
        still open, which a node holds unread (see :meth:`_watched_open`).
        """
        with self._lock:
            before = self._passing.get(run_id)
            if before is None:  # not such a call, or watched already
                return
            self._passing[run_id] = None
        open_now = list(self.task.open_streams.items())
        mine = {
            call_id
            for call_id, stream in open_now
            if call_id not in before and getattr(stream, "chunks", None)
        }
        with self._lock:  # streams closed since are done with
            self._watched.intersection_update(call_id for call_id, _ in open_now)
            self._watched.update(mine)

    def _passed(self, run_id: UUID, error: BaseException | None) -> None:
        """A call LiteLLM governs ended: warn if its node stopped reading it
        (its stream closes itself once dropped, see :meth:`_watch_streams`)."""
        if not self._passing:
            return
        with self._lock:
            passing = self._passing.pop(run_id, _NOT_PASSING) is not _NOT_PASSING
        if passing and isinstance(error, GeneratorExit):
            _warn_unread(self.task, _CLOSED_EARLY)

    def _watched_open(self) -> list[Any]:
        """At the run's end, take the watched streams still open, to be hung
        up on: the streams of ChatLiteLLM calls whose nodes stopped reading
        them and still hold them (a completed run leaves other streams open,
        see :func:`_hang_up`). Their watch ends, and a warning says so."""
        with self._lock:
            watched = list(self._watched)
            self._watched.clear()
            self._passing.clear()
        streams = self.task.open_streams
        left = [streams[call_id] for call_id in watched if call_id in streams]
        if left:
            _warn_unread(self.task, _CLOSED_EARLY)
        return left

    def _span_for(self, run_id: UUID | None) -> Span | None:
        """The nearest node span at or above a run, else the task span."""
        with self._lock:
            while run_id is not None:
                span = self._spans.get(run_id)
                if span is not None:
                    return span
                run_id = self._parents.get(run_id)
        span = self.task.span
        return span if isinstance(span, Span) else None

    def current_span(self) -> Span | None:
        """The node span of the code running now (for direct LiteLLM calls)."""
        config = var_child_runnable_config.get() or {}
        manager = config.get("callbacks")
        run_id = getattr(manager, "parent_run_id", None)
        return self._span_for(run_id)


def _timeout(task: Task) -> float:
    fanout = task.policy.fanout
    return 0.0 if fanout.on_cap == "refuse" else fanout.wait_timeout_s


def _chat(messages: list[list[BaseMessage]]) -> list[dict[str, Any]]:
    return [_as_dict(m) for m in (messages[0] if messages else [])]


def _prompts(prompts: list[str]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": p} for p in prompts[:1]]


class GovernorCallbackHandler(_HandlerCore, BaseCallbackHandler):
    """Reserves before, and settles after, every model call of one task.

    Also opens one span per graph node step and caps parallel steps
    (``Fanout.max_branches``). Refusals raise out of the callback
    (``raise_error``), so the refused call or step never runs. Used for
    ``invoke``, ``stream`` and ``batch``.
    """

    raise_error = True
    run_inline = True
    partner: AsyncGovernorCallbackHandler | None = None

    def _deferred(self) -> bool:
        """True when LangChain's async manager calls: the async partner acts.

        The async manager calls a sync handler from a coroutine; the sync
        manager from a plain function. Without a partner this handler acts on
        every event, and so it does for the async manager on another event
        loop than the invocation's (a node's worker thread running a bound
        coroutine with ``asyncio.run``), where the partner does not act.
        """
        if self.partner is None:
            return False
        caller = sys._getframe(2)
        if not caller.f_code.co_flags & inspect.CO_COROUTINE:
            return False
        return self.partner._mine()

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Open a span when a graph node starts a step; take a branch slot."""
        if self._deferred():
            return
        name = kwargs.get("name")
        if not self._node_started(run_id, parent_run_id, metadata, name, inputs):
            return
        slots = self._branch_slots(metadata)
        if slots is None:
            return
        try:
            token = slots.acquire(_timeout(self.task))
        except BaseException as exc:
            self._branch_refused(run_id, exc)
            raise
        with self._lock:
            self._branches[run_id] = (slots, token)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """Close the node span and give back its branch slot."""
        if self._deferred():
            return
        slot = self._chain_ended(run_id, None)
        if slot is not None:
            slot[0].release(slot[1])

    def on_chain_error(
        self, error: BaseException, *, run_id: UUID, **kwargs: Any
    ) -> None:
        """Close the node span with the error and give back its slot."""
        if self._deferred():
            return
        slot = self._chain_ended(run_id, error)
        if slot is not None:
            slot[0].release(slot[1])

    def on_chat_model_start(
        self,
        serialized: dict[str, Any] | None,
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Reserve the call's worst case, or raise to stop it being sent."""
        if self._deferred():
            return
        started = self._request(
            serialized, _chat(messages), run_id, parent_run_id, metadata, kwargs
        )
        if started is not None:
            self._open(run_id, *started)

    def on_llm_start(
        self,
        serialized: dict[str, Any] | None,
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Reserve a completion-style LLM call (prompts, not messages)."""
        if self._deferred():
            return
        started = self._request(
            serialized, _prompts(prompts), run_id, parent_run_id, metadata, kwargs
        )
        if started is not None:
            self._open(run_id, *started)

    def on_llm_new_token(
        self,
        token: str | list[str | dict[str, Any]],
        *,
        run_id: UUID,
        **kwargs: Any,
    ) -> None:
        """Keep streamed output so a stream that ends early can be charged."""
        if self._deferred():
            return
        self._streamed_text(run_id, token, kwargs.get("chunk"))

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        """Settle the call at the usage the model reported (or a local count)."""
        if self._deferred():
            return
        ended = self._ended(run_id, response)
        if ended is not None:
            try:
                self.governor.end_call(*ended)
            finally:
                self._done()
            self._judge_repeat(*ended)

    def on_llm_error(
        self, error: BaseException, *, run_id: UUID, **kwargs: Any
    ) -> None:
        """Settle what a failed or cancelled call streamed, and release the rest."""
        if self._deferred():
            return
        failed = self._failed(run_id, error)
        if failed is not None:
            try:
                self.governor.end_call(*failed)
            finally:
                self._done()


class AsyncGovernorCallbackHandler(AsyncCallbackHandler):
    """The asyncio partner of a :class:`GovernorCallbackHandler`.

    In ``ainvoke``, ``astream`` and ``abatch`` both handlers are attached and
    share one state. Events of async model calls and async nodes, which run on
    the invocation's event loop, are handled here: waiting for a slot and
    talking to a networked store happen without blocking the loop. Events
    from sync code (a sync node in a worker thread, a blocking call) are left
    to the sync handler, because LangChain swallows the errors of async
    handlers run from sync code, and a refusal must always propagate.
    """

    raise_error = True
    run_inline = True

    def __init__(self, core: GovernorCallbackHandler) -> None:
        self.core = core
        self.loop = asyncio.get_running_loop()
        core.partner = self

    def __getattr__(self, name: str) -> Any:
        return getattr(self.core, name)

    def _mine(self) -> bool:
        """True when running on the invocation's loop (the async manager)."""
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    async def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Open a span when a graph node starts a step; take a branch slot."""
        if not self._mine():
            return
        name = kwargs.get("name")
        if not self._node_started(run_id, parent_run_id, metadata, name, inputs):
            return
        slots = self._branch_slots(metadata)
        if slots is None:
            return
        try:
            token = await slots.aacquire(_timeout(self.task))
        except BaseException as exc:  # refused, or cancelled while waiting
            self._branch_refused(run_id, exc)
            raise
        with self._lock:
            self._branches[run_id] = (slots, token)

    async def on_chain_end(
        self,
        outputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Close the node span and give back its branch slot."""
        if not self._mine():
            return
        slot = self._chain_ended(run_id, None)
        if slot is not None:
            await slot[0].arelease(slot[1])

    async def on_chain_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Close the node span with the error and give back its slot."""
        if not self._mine():
            return
        slot = self._chain_ended(run_id, error)
        if slot is not None:
            await slot[0].arelease(slot[1])

    async def on_chat_model_start(
        self,
        serialized: dict[str, Any] | None,
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Reserve the call's worst case, or raise to stop it being sent."""
        if not self._mine():
            return
        started = self._request(
            serialized, _chat(messages), run_id, parent_run_id, metadata, kwargs
        )
        if started is not None:
            await self._aopen(run_id, *started)

    async def on_llm_start(
        self,
        serialized: dict[str, Any] | None,
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Reserve a completion-style LLM call (prompts, not messages)."""
        if not self._mine():
            return
        started = self._request(
            serialized, _prompts(prompts), run_id, parent_run_id, metadata, kwargs
        )
        if started is not None:
            await self._aopen(run_id, *started)

    async def on_llm_new_token(
        self,
        token: str | list[str | dict[str, Any]],
        *,
        chunk: Any = None,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Keep streamed output so a stream that ends early can be charged."""
        if not self._mine():
            return
        self._streamed_text(run_id, token, chunk)

    async def on_llm_end(
        self,
        response: LLMResult,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Settle the call at the usage the model reported (or a local count)."""
        if not self._mine():
            return
        ended = self._ended(run_id, response)
        if ended is not None:
            try:
                await self.governor.aend_call(*ended)
            finally:
                self.core._done()
            self._judge_repeat(*ended)

    async def on_llm_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Settle what a failed or cancelled call streamed, and release the rest."""
        if not self._mine():
            return
        failed = self._failed(run_id, error)
        if failed is not None:
            try:
                await self.governor.aend_call(*failed)
            finally:
                self.core._done()


_RUN_HANDLER: contextvars.ContextVar[GovernorCallbackHandler | None] = (
    contextvars.ContextVar("governor_langgraph_handler", default=None)
)
"""The handler of the governed run whose context this is."""

_RUN_PARTNER: contextvars.ContextVar[AsyncGovernorCallbackHandler | None] = (
    contextvars.ContextVar("governor_langgraph_partner", default=None)
)
"""The async partner of that handler, in an async run."""

# LangChain adds the handlers set here to every callback manager it makes,
# also one for callbacks a node passes itself (``config={"callbacks": [...]}``,
# ``model.with_config(callbacks=...)``), which replace the inherited ones; a
# handler the manager has already (inherited) is not added again. A governed
# run nested in another sets its own, so its calls are governed once, by it.
register_configure_hook(_RUN_HANDLER, inheritable=True)
register_configure_hook(_RUN_PARTNER, inheritable=True)


# -- helpers -------------------------------------------------------------


class _Abandoned(asyncio.CancelledError):
    """The invocation ended while this model call was still open.

    The run was cancelled, its stream closed, or it failed elsewhere: the
    call was cut off, not failed, and its spend record says ``cancelled``,
    as it does for a LiteLLM call cut off the same way.
    """

    interrupted_after_sending = True


class _RunEnded(RuntimeError):
    """A model call or stream of a node still running as its sync run ends.

    A RuntimeError, so that LangGraph's default retry policy does not run
    the node again.
    """

    def __init__(self, task_id: str) -> None:
        super().__init__(
            f"task {task_id}: the graph run ended (its stream was closed early, "
            "a node failed, or Ctrl-C interrupted it) while this node was still "
            "running, so its model call was stopped (or not sent); run the "
            "graph again"
        )


def _with_task(task: Task, items: Iterator[Any]) -> Iterator[Any]:
    """Iterate with the task current, without leaking it between steps."""
    iterator = iter(items)
    while True:
        tokens = _enter(task)
        try:
            item = next(iterator)
        except StopIteration:
            return
        finally:
            _leave(tokens)
        yield item


async def _awith_task(
    task: Task, items: AsyncIterator[Any]
) -> AsyncGenerator[Any, None]:
    """Async form of :func:`_with_task`.

    The task is current only while the graph computes the next item, in the
    reader's context: a reader that breaks out of the loop gets its own
    context back at once, not when the event loop finalizes the generator
    (in another context, where the task could not be reset).
    """
    iterator = aiter(items)
    try:
        while True:
            tokens = _enter(task)
            try:
                item = await anext(iterator)
            except StopAsyncIteration:
                return
            finally:
                _leave(tokens)
            yield item
    finally:
        close = getattr(iterator, "aclose", None)
        if close is not None:
            await close()


def _hang_up(task: Task) -> None:
    """Close the streams of a run that failed or was stopped early.

    A reader that stops reading the graph's stream (or an error) leaves the
    model streams its nodes had open; nobody reads them now, so they are
    closed: the provider stops generating and the task's report includes
    the charge. A run that completes keeps its streams open: a node may
    have returned one in the graph's output for the caller to read (those
    a chat model was reading are closed, see
    :meth:`_HandlerCore._watched_open`).
    """
    _close_all(list(task.open_streams.values()))


async def _ahang_up(task: Task) -> None:
    """Async form of :func:`_hang_up`, which closes async streams too.

    The run has ended, but a sync node's thread may still run: its model
    calls from now on are refused (see :class:`_RunEnded`).
    """
    task.ending = functools.partial(_RunEnded, task.id)
    await _aclose_all(list(task.open_streams.values()))


def _close_all(streams: Sequence[Any]) -> None:
    """Hang up on governed LiteLLM streams: closed, and charged what arrived."""
    for stream in streams:
        try:
            stream.hang_up()
        except Exception:
            logger.warning("could not close a stream left open", exc_info=True)


async def _aclose_all(streams: Sequence[Any]) -> None:
    """Async form of :func:`_close_all`, which closes async streams too."""
    for stream in streams:
        try:
            await stream.ahang_up()
        except Exception:
            logger.warning("could not close a stream left open", exc_info=True)


_NOT_PASSING = object()
"""What a model call that LiteLLM does not govern is noted as (see
:meth:`_HandlerCore._passed`)."""

_HELD = "held"
"""A stream its node stopped reading, charged its hold (no way to close it)."""

_CLOSED_EARLY = "closed early"
"""A LiteLLM stream its node stopped reading, closed by the governor."""

_UNREAD_WARNED: set[str] = set()
"""Which of the two warnings about streams left unread were logged."""


def _warn_unread(task: Task, how: str) -> None:
    """Warn once per process, for each of :data:`_HELD` and
    :data:`_CLOSED_EARLY`, that a node stopped reading a model stream."""
    if how in _UNREAD_WARNED:
        logger.debug("task %s: a model stream was left unread (%s)", task.id, how)
        return
    _UNREAD_WARNED.add(how)
    if how == _HELD:
        logger.warning(
            "task %s: a node stopped reading a model stream before its end "
            "(break, an error, or the stream dropped, closed or left open). "
            "The governor cannot close the provider's connection, which may "
            "go on generating (ChatLiteLLM's does, until the garbage collector "
            "runs), so the call is charged its hold (up to max_tokens), not "
            "what was read. Read model streams to the end; for ChatLiteLLM, "
            "instrument LiteLLM too (instrument(gov)): such a stream is then "
            "closed and charged what arrived (warned once)",
            task.id,
        )
        return
    logger.warning(
        "task %s: a node stopped reading a ChatLiteLLM stream before its end "
        "(break, or the stream dropped or left open); the governor closed the "
        "provider's stream and charged what had arrived, which it can do only "
        "once the stream is dropped or the run ends. Read model streams to the "
        "end, or close them where you stop: 'with contextlib.closing("
        "model.stream(...)) as s:', 'async with contextlib.aclosing("
        "model.astream(...)) as s:' (warned once)",
        task.id,
    )


def _end_interrupted(task: Task) -> None:
    """Ctrl-C reached the main thread waiting on this sync run: refuse the
    model calls its nodes start from now on (see :class:`_RunEnded`).

    Runs inside a signal handler, so it only assigns; the streams are hung
    up at their next read, and when the interrupt reaches the run.
    """
    if task.ending is None:
        task.ending = functools.partial(_RunEnded, task.id)


def _end_sync_run(task: Task) -> None:
    """A sync run is ending while nodes may still run: LangGraph waits for
    them. Hang up their model streams, and refuse the model calls they start
    from now on (see :class:`_RunEnded`)."""
    task.ending = functools.partial(_RunEnded, task.id)
    _hang_up(task)


def _breakpoints_set(graph: Any, kwargs: Mapping[str, Any]) -> bool:
    """True when a run may pause at a static breakpoint of the top graph.

    ``interrupt_before``/``interrupt_after`` given at compile time or at the
    call. LangGraph ends such a pause without an error or a callback, so the
    run's state is read to tell; runs without breakpoints read nothing. A
    breakpoint of a subgraph raises through its parent node, which the
    handler sees (:meth:`_HandlerCore._chain_ended`).
    """
    if not isinstance(getattr(graph, "checkpointer", None), BaseCheckpointSaver):
        return False  # no state of its own to read (a sub-agent, no saver)
    for key in ("interrupt_before", "interrupt_after"):
        if kwargs.get(key):
            return True
    return any(
        getattr(graph, name, None)
        for name in ("interrupt_before_nodes", "interrupt_after_nodes")
    )


_STATE_UNREAD_WARNED: list[bool] = []
"""Set once the warning that a run's state could not be read was logged."""


def _state_config(config: Mapping[str, Any]) -> RunnableConfig:
    """The config that reads the thread's latest state: the run's
    ``configurable`` without the ``checkpoint_id`` it may have started from."""
    configurable = {
        key: value
        for key, value in (config.get("configurable") or {}).items()
        if key != "checkpoint_id"
    }
    return {"configurable": configurable}


def _paused_at(graph: Any, config: Mapping[str, Any]) -> bool | None:
    """True when the run that just returned left nodes to run (it paused at
    a breakpoint), False when it ran to the end, None when unknown."""
    try:
        state = graph.get_state(_state_config(config))
    except Exception as exc:
        _state_unread(exc)
        return None
    return bool(getattr(state, "next", ()))


async def _apaused_at(graph: Any, config: Mapping[str, Any]) -> bool | None:
    """Async form of :func:`_paused_at`."""
    try:
        state = await graph.aget_state(_state_config(config))
    except Exception as exc:
        _state_unread(exc)
        return None
    return bool(getattr(state, "next", ()))


def _state_unread(error: Exception) -> None:
    """Warn once per process that a run's state could not be read."""
    if _STATE_UNREAD_WARNED:
        logger.debug("state unread: %s: %s", type(error).__name__, error)
        return
    _STATE_UNREAD_WARNED.append(True)
    logger.warning(
        "could not read the graph's state to tell whether the run paused at "
        "a breakpoint (interrupt_before/interrupt_after), so its report says "
        "it completed: %s: %s",
        type(error).__name__,
        error,
    )


def _announces_pause(item: Any) -> bool:
    """Whether a streamed item is LangGraph's ``__interrupt__`` update, the
    last a run sends when it pauses (a breakpoint, ``interrupt()``): a
    reader that stops there leaves the thread paused, not cut off.

    The update is a mapping, alone or as the last part of a tuple (a
    subgraph's namespace, the stream mode).
    """
    if isinstance(item, tuple) and item:
        item = item[-1]
    return isinstance(item, Mapping) and "__interrupt__" in item


def _note_pause(task: Task, paused: bool | None) -> None:
    """Mark a run that paused at a static breakpoint ``interrupted``."""
    if paused:
        task.stop_reason = task.stop_reason or _INTERRUPTED


def _run_error(task: Task, error: BaseException) -> BaseException:
    """The error a sync run raises: the node error that ended it.

    When a node fails, the streams of the run's other branches are hung up
    (:meth:`_HandlerCore._run_failed`); a branch cut off that way may finish
    failing before the node does, and LangGraph may raise its error. The
    node's error is the one the caller must see.
    """
    failure = task.extras.get(_FAILURE)
    if isinstance(failure, BaseException) and isinstance(error, Exception):
        return failure
    return error


def _close(items: Iterator[Any] | None) -> None:
    """Close the graph's stream; it returns once its running nodes have."""
    close = getattr(items, "close", None)
    if callable(close):
        close()


def _nodes_ending_run(graph: Any) -> frozenset[str]:
    """The top-level nodes whose error ends a run of ``graph``.

    A node with a retry policy (its own or the graph's) may run again, and
    one with an error handler hands its error on: neither ends the run. An
    object that is not a compiled graph (nor one bound with a config) names
    none.
    """
    pregel = graph
    for _ in range(32):  # bindings nest a few deep; never loop forever
        if pregel is None or isinstance(getattr(pregel, "nodes", None), Mapping):
            break
        pregel = getattr(pregel, "bound", None)
    nodes = getattr(pregel, "nodes", None)
    if not isinstance(nodes, Mapping) or getattr(pregel, "retry_policy", None):
        return frozenset()
    handled = getattr(pregel, "node_error_handler_map", None) or {}
    return frozenset(
        str(name)
        for name, node in nodes.items()
        if not getattr(node, "retry_policy", None) and name not in handled
    )


def _max_concurrency(
    configs: Sequence[RunnableConfig | None], graph: Any
) -> int | None:
    """The batch's ``max_concurrency``: the first config's that sets one,
    else the graph's bound config's; None for no bound."""
    limits = [c.get("max_concurrency") for c in configs if c]
    limits.append(_bound_config(graph).get("max_concurrency"))
    return next((int(n) for n in limits if n), None)


def _slots(limit: int | None) -> contextlib.AbstractAsyncContextManager[Any]:
    """At most ``limit`` holders at once; no bound for None."""
    if limit is None:
        return contextlib.nullcontext()
    return asyncio.Semaphore(limit)


async def _cancel(runs: Sequence[asyncio.Future[Any]]) -> None:
    """Cancel the runs still going and wait for them to end."""
    for run in runs:
        run.cancel()
    await asyncio.gather(*runs, return_exceptions=True)


def _usage_for(request: CallRequest, text: str, reported: Usage | None = None) -> Usage:
    """A call's usage to settle at: what the model reported, its missing
    sides counted locally from the request and the ``text`` it produced."""
    return settled_usage(
        reported,
        model=request.model,
        messages=request.messages,
        text=text,
        extra_prompt=request.extra_prompt,
    )


def _enter(task: Task) -> tuple[Any, ...]:
    """Make the task current, and its span the current OpenTelemetry span.

    Spans the user opens inside a node (a tool's HTTP call, a database
    query), and the task of a graph invoked from a node, then join the
    task's trace instead of starting traces of their own. The task's
    handlers are set for LangChain's configure hook (see :data:`_RUN_HANDLER`).
    """
    span = task.span
    otel_token = None
    if isinstance(span, Span):
        otel_token = otel_context.attach(trace.set_span_in_context(span))
    handler = task.extras.get("handler")
    if not isinstance(handler, GovernorCallbackHandler):
        handler = None
    partner = None if handler is None else handler.partner
    return (
        _CURRENT.set(task),
        otel_token,
        _RUN_HANDLER.set(handler),
        _RUN_PARTNER.set(partner),
    )


def _leave(tokens: tuple[Any, ...]) -> None:
    task_token, otel_token, handler_token, partner_token = tokens
    try:
        if otel_token is not None:
            otel_context.detach(otel_token)
        _CURRENT.reset(task_token)
        _RUN_HANDLER.reset(handler_token)
        _RUN_PARTNER.reset(partner_token)
    except ValueError:
        # A generator resumed in another context; the var is not ours to reset.
        logger.debug("task context was reset in a different context")


def _attribution(config: Mapping[str, Any]) -> Attribution | None:
    """The run's attribution: the metadata's, with the thread id as the
    session when the metadata names none (see :func:`_thread_session`)."""
    metadata = config.get("metadata") or {}
    values = Attribution.values_in(metadata)
    thread = (config.get("configurable") or {}).get("thread_id")
    if thread is None:
        thread = metadata.get("thread_id")
    if thread is not None and "session" not in values:
        session = _thread_session(str(thread))
        if session is not None:
            values["session"] = session
    return Attribution(**values) if values else None


def _thread_session(thread: str) -> str | None:
    """The session a thread id names, or None when it cannot name one.

    LangGraph takes any thread id; a session is a name (see
    :func:`~governor.policies._model.name_problem`). Each ``#`` (which
    separates a budget line's key from its period) is written ``%23``, so
    ``slack#C1#17`` stays a session of its own. An id that is still no name
    (empty, blank, spaces around it, control or invisible characters) sets
    no session, with a warning once per process: the graph runs as it would
    ungoverned, without session budgets.
    """
    session = thread.replace("#", _HASH_ESCAPE)
    problem = name_problem(session)
    if problem is None:
        return session
    with _UNNAMED_LOCK:
        if _UNNAMED_THREADS:
            return None
        _UNNAMED_THREADS.append(thread)
    logger.warning(
        "thread_id %s cannot name a session (a session %s), so runs with such "
        "a thread id are charged to no session and session budgets skip them; "
        "pass metadata={'session': ...} with a valid name if they must apply. "
        "This warning is given once.",
        _short(thread),
        problem,
    )
    return None


def _bound_config(graph: Any) -> RunnableConfig:
    """What the governor reads of the configs bound to a graph, merged.

    A compiled graph keeps ``with_config`` values in ``.config``; a
    RunnableBinding keeps its own in ``.config`` and the graph in ``.bound``.
    Outer configs win, as at run time. Not LangChain's ``merge_configs``:
    that also pulls in the config of the run we are inside, whose task id is
    a parent's.
    """
    layers: list[Mapping[str, Any]] = []
    node = graph
    for _ in range(32):  # bindings nest a few deep; never loop forever
        config = getattr(node, "config", None)
        if isinstance(config, Mapping):
            layers.append(config)
        node = getattr(node, "bound", None)
        if node is None:
            break
    merged: RunnableConfig = {}
    for config in reversed(layers):
        merged = _under(merged, config)
    return merged


def _check_config(config: Any) -> None:
    """Refuse a run config, or its metadata or configurable, that is no dict.

    Raises:
        ConfigError: ``config`` is not a mapping.
        PolicyError: its ``metadata`` (where attribution is read) or
            ``configurable`` is given but is not a mapping.
    """
    if config is None:
        return
    if not isinstance(config, Mapping):
        raise ConfigError(
            f"config must be a dict such as {{'metadata': {{'team': 'search'}}}}, "
            f"got {type(config).__name__} {_short(config)}"
        )
    for key in ("metadata", "configurable"):
        value = config.get(key)
        if value is not None and not isinstance(value, Mapping):
            raise PolicyError(
                f"config[{key!r}] must be a dict such as {{'team': 'search'}}, "
                f"got {type(value).__name__} {_short(value)}"
            )


def _short(value: Any) -> str:
    """``repr(value)``, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _under(bound: Mapping[str, Any], config: Mapping[str, Any]) -> RunnableConfig:
    """Metadata, configurable and max_concurrency of ``config`` over ``bound``."""
    merged: RunnableConfig = {
        "metadata": {**(bound.get("metadata") or {}), **(config.get("metadata") or {})},
        "configurable": {
            **(bound.get("configurable") or {}),
            **(config.get("configurable") or {}),
        },
    }
    limit = config.get("max_concurrency") or bound.get("max_concurrency")
    if limit:
        merged["max_concurrency"] = limit
    return merged


def _with_handler(callbacks: Any, handler: Any) -> Any:
    if callbacks is None:
        return [handler]
    if isinstance(callbacks, list):
        return [*callbacks, handler]
    if isinstance(callbacks, BaseCallbackManager):
        manager = callbacks.copy()
        manager.add_handler(handler, inherit=True)
        return manager
    raise TypeError(
        f"config['callbacks'] must be a list or a callback manager, got "
        f"{type(callbacks).__name__}"
    )


def _run_in(
    context: contextvars.Context,
    function: Callable[[Any, RunnableConfig | None], Any],
    item: Any,
    config: RunnableConfig | None,
) -> Any:
    """Run in the submitting thread's context (its attribution, say)."""
    return context.run(function, item, config)


def _configs(
    config: RunnableConfig | Sequence[RunnableConfig] | None, count: int
) -> list[RunnableConfig | None]:
    if config is None or isinstance(config, Mapping):
        return [config] * count
    configs = list(config)
    if len(configs) != count:
        raise ValueError(f"got {len(configs)} configs for {count} inputs")
    return list(configs)


def _governed_by_litellm(serialized: Mapping[str, Any] | None) -> bool:
    """ChatLiteLLM calls go through litellm.completion; govern them there."""
    from governor.adapters import _registry

    if not _registry.litellm_instrumented():
        return False
    ident = (serialized or {}).get("id") or []
    return "ChatLiteLLM" in ident or "ChatLiteLLMRouter" in ident


def _as_dict(message: BaseMessage) -> dict[str, Any]:
    """The message in OpenAI's shape, with the fields a provider bills: the
    name, the tool calls, a legacy function call, the tool call answered."""
    role = getattr(message, "role", None) or message.type  # a ChatMessage's own
    role = {"human": "user", "ai": "assistant"}.get(role, role)
    entry: dict[str, Any] = {"role": role, "content": message.content}
    extra = message.additional_kwargs
    name = message.name or extra.get("name")
    if name:
        entry["name"] = name
    tool_calls = getattr(message, "tool_calls", None)
    if tool_calls:
        entry["tool_calls"] = tool_calls
    elif extra.get("function_call"):
        entry["function_call"] = extra["function_call"]
    tool_call_id = getattr(message, "tool_call_id", None)
    if tool_call_id:
        entry["tool_call_id"] = tool_call_id
    return entry


def _model_name(
    params: Mapping[str, Any], metadata: Mapping[str, Any], caller: _Caller | None
) -> str | None:
    """The model the call is sent to: a ChatLiteLLM's ``model_kwargs`` model
    (see :func:`_model_kwargs_model`), else the invocation params' name, else
    LangChain's ``ls_model_name``."""
    sent = _model_kwargs_model(params, caller)
    if sent is not None:
        return sent
    for key in ("model", "model_name", "model_id"):
        value = params.get(key)
        if value:
            return str(value)
    value = metadata.get("ls_model_name")
    return str(value) if value else None


def _model_kwargs_model(
    params: Mapping[str, Any], caller: _Caller | None
) -> str | None:
    """The ``model`` in a ChatLiteLLM's ``model_kwargs``, where it is sent.

    ChatLiteLLM merges its ``model_kwargs`` over its own fields, so a model
    named there is the one LiteLLM is asked for, though the invocation params
    name the field's. A model the call names (``bind(model=...)``,
    ``invoke(..., model=...)``) is merged over both and sent instead. None
    for other models, whose ``model_kwargs`` may not be sent that way.
    """
    if caller is None or not _is_chat_litellm(caller.model):
        return None
    named = (_model_kwargs_of(caller.model) or {}).get("model")
    if not named or _call_names_model(params, caller):
        return None
    return str(named)


def _call_names_model(params: Mapping[str, Any], caller: _Caller) -> bool:
    """True when the call names its own model (a ``None`` one is none).

    Read from the call's keyword arguments where they are found; else a model
    in the invocation params other than the model's field is the call's.
    """
    if caller.kwargs is not None:
        return caller.kwargs.get("model") is not None
    model = caller.model
    field = getattr(model, "model_name", None) or getattr(model, "model", None)
    asked = params.get("model")
    return bool(asked) and asked != field


def _is_chat_litellm(model: BaseLanguageModel[Any]) -> bool:
    """True for a ChatLiteLLM (its router included), by class name, so that
    neither ``langchain_litellm`` nor ``langchain_community`` is imported."""
    return any(kind.__name__ == "ChatLiteLLM" for kind in type(model).__mro__)


def _unnamed_model() -> ConfigError:
    return ConfigError(
        "a chat model reported no model name (no 'model' or 'model_name' "
        "parameter, no ls_model_name), so its calls cannot be priced; give the "
        "model a name, or set Pricing(default=Price(...)) to price unnamed models"
    )


_MODEL_FRAMES = 16
"""How many frames above a callback event are searched for the model making
the call (see :func:`_calling_model`)."""


def _call_settings(
    params: Mapping[str, Any], caller: _Caller | None
) -> list[Mapping[str, Any]]:
    """Where a call's settings are read: its invocation params, the
    ``model_kwargs`` in them, and the calling model's own ``model_kwargs``.

    A model may send its ``model_kwargs`` with each request but leave them
    out of the invocation params its callbacks get (ChatLiteLLM does), so
    ``n`` or ``max_completion_tokens`` set there would not be reserved.
    """
    settings: list[Mapping[str, Any]] = [params]
    nested = params.get("model_kwargs")
    if isinstance(nested, Mapping):
        settings.append(nested)
    own = _model_kwargs_of(caller.model) if caller is not None else None
    if own is not None:
        settings.append(own)
    return settings


@dataclasses.dataclass(frozen=True, slots=True)
class _Caller:
    """The LangChain model sending a callback event."""

    model: BaseLanguageModel[Any]
    kwargs: Mapping[str, Any] | None
    """The keyword arguments of its call (``bind``'s and ``invoke``'s), as
    its ``generate`` or ``stream`` got them; None where not found."""


def _calling_model() -> _Caller | None:
    """The LangChain model whose callback event is being handled.

    It is the ``self`` of the frame that sent the event (callbacks run
    inline, in the model's call); None when no model is found.
    """
    frame = sys._getframe(1)
    for _ in range(_MODEL_FRAMES):
        names = frame.f_locals
        owner = names.get("self")
        if isinstance(owner, BaseLanguageModel):
            kwargs = names.get("kwargs")
            return _Caller(owner, kwargs if isinstance(kwargs, Mapping) else None)
        if frame.f_back is None:
            break
        frame = frame.f_back
    return None


def _model_kwargs_of(model: BaseLanguageModel[Any]) -> Mapping[str, Any] | None:
    """The model's own ``model_kwargs``; None when it has none."""
    found = getattr(model, "model_kwargs", None)
    return found if isinstance(found, Mapping) else None


def _largest(settings: Sequence[Mapping[str, Any]], *names: str) -> int | None:
    """The largest whole number set for ``names`` in any of ``settings``.

    A model sends more than one of them (a field and a ``model_kwargs``
    entry, ``max_tokens`` and ``max_completion_tokens``); the provider obeys
    one, which depends on the model, so the worst case is the largest.
    Values that are no positive number are left out.
    """
    given: list[int] = []
    for place in settings:
        for name in names:
            value = place.get(name)
            if value is None or isinstance(value, bool):
                continue
            try:
                number = int(value)
            except (TypeError, ValueError):
                continue
            if number > 0:
                given.append(number)
    return max(given) if given else None


def _max_tokens(
    settings: Sequence[Mapping[str, Any]], metadata: Mapping[str, Any]
) -> int | None:
    """The call's output ceiling: the largest set, LangChain's
    ``ls_max_tokens`` (the model's ``max_tokens``) included."""
    names = ("max_tokens", "max_completion_tokens", "max_output_tokens")
    return _largest([*settings, {"max_tokens": metadata.get("ls_max_tokens")}], *names)


def _messages_of(response: LLMResult) -> Iterator[Any]:
    for generations in response.generations:
        for generation in generations:
            yield getattr(generation, "message", None)


def _response_model(response: LLMResult) -> str | None:
    """The model the provider names in the first message that names one."""
    for message in _messages_of(response):
        meta = getattr(message, "response_metadata", None) or {}
        model = meta.get("model_name") or meta.get("model")
        if model:
            return str(model)
    return None


_STAMPED = "langgraph_stamped_models"
"""Where an admission keeps the models its chat model writes into every
response whatever answered (see :func:`_stamped_models`)."""


def _stamped_models(caller: _Caller | None) -> tuple[str, ...]:
    """The names a chat model writes into every response as the model that
    answered, whatever it was sent to: a ChatLiteLLM's configured model
    (``model``, ``model_name``). Other chat models report what the server
    answered with, so they stamp none."""
    if caller is None or not _is_chat_litellm(caller.model):
        return ()
    fields = ("model", "model_name", "model_id")
    names = (getattr(caller.model, field, None) for field in fields)
    return tuple(name for name in names if isinstance(name, str) and name)


def _answering_model(
    response: LLMResult, requested: str, stamped: tuple[str, ...]
) -> str | None:
    """The model that answered, as the response names it, or None.

    A ChatLiteLLM writes its own configured model into the response
    metadata whatever the provider answered with, so when the call was sent
    to another model (by ``bind(model=...)`` or its ``model_kwargs``) that
    name (one of ``stamped``, read when the call started) names no
    answering model, and the call is not charged as answered by a model it
    was not sent to. Other chat models report the server's answer, which
    is taken as it is.
    """
    named = _response_model(response)
    if not named or named == requested:
        return named
    return None if named in stamped else named


def _usage_of(response: LLMResult) -> Usage | None:
    """The usage the model reported, or None when it reported none.

    LangChain's ``usage_metadata`` is read together with the provider's own
    usage (``token_usage`` in the message's response metadata or in the
    result's ``llm_output``), which may hold parts that LangChain's form
    leaves out, such as ChatLiteLLM's audio tokens: see :func:`_merged_usage`.
    """
    standard = next(
        (
            usage
            for message in _messages_of(response)
            if (usage := getattr(message, "usage_metadata", None))
        ),
        None,
    )
    provided = _provider_usage(response)
    if provided is None:
        return usage_from_response(standard) if standard else None
    if not standard:
        return usage_from_response(provided)
    try:
        detailed = usage_from_response(provided)
    except ConfigError as exc:
        logger.debug("the provider's token_usage is not readable (%s)", exc)
        return usage_from_response(standard)
    return _merged_usage(detailed, usage_from_response(standard))


def _provider_usage(response: LLMResult) -> Any:
    """The provider's usage as the chat model passed it on: the first
    message's ``response_metadata["token_usage"]``, else the result's
    ``llm_output["token_usage"]``; None when neither has one."""
    for message in _messages_of(response):
        meta = getattr(message, "response_metadata", None)
        token_usage = meta.get("token_usage") if isinstance(meta, Mapping) else None
        if token_usage:
            return token_usage
    return (response.llm_output or {}).get("token_usage") or None


def _merged_usage(detailed: Usage, standard: Usage) -> Usage:
    """The provider's usage, or LangChain's parts where the provider gave none.

    Where the two disagree on the prompt or completion tokens, the provider's
    was not one call's usage as sent (a stream's chunks may add up their
    running totals when merged): LangChain's is used. A provider's usage
    with any part (cache, reasoning, audio) is taken whole: a part it gives
    as 0 is 0, not a part left out, and parts of two readings mixed could
    count one token twice (audio read from the cache, and audio input).
    """
    if (detailed.prompt_tokens, detailed.completion_tokens) != (
        standard.prompt_tokens,
        standard.completion_tokens,
    ):
        logger.debug("the provider's token_usage disagrees with usage_metadata")
        return standard
    if any(getattr(detailed, name) for name in USAGE_PARTS):
        return detailed
    filled = dataclasses.replace(
        detailed,
        **{
            name: getattr(detailed, name) or getattr(standard, name)
            for name in USAGE_PARTS
        },
    )
    return filled if _coherent(filled) else detailed


def _coherent(usage: Usage) -> bool:
    """True when each part of the usage fits in the whole it is part of."""
    read, write = usage.cache_read_tokens, usage.cache_write_tokens
    return (
        read + write + usage.audio_input_tokens <= usage.prompt_tokens
        and usage.audio_cache_read_tokens <= read
        and usage.reasoning_tokens + usage.audio_output_tokens
        <= usage.completion_tokens
    )


def _finish_reasons(response: LLMResult) -> tuple[str, ...]:
    """Each answer's finish reason, in answer order, for those that name one.

    Read from the message's response metadata (where a stream's last chunk
    leaves it), else the generation info: ``finish_reason``, or Anthropic's
    ``stop_reason``.
    """
    reasons = (
        _finish_reason(generation)
        for generations in response.generations
        for generation in generations
    )
    return tuple(reason for reason in reasons if reason)


def _finish_reason(generation: Any) -> str | None:
    message = getattr(generation, "message", None)
    places = (
        getattr(message, "response_metadata", None),
        getattr(generation, "generation_info", None),
    )
    for place in places:
        if not isinstance(place, Mapping):
            continue
        for key in ("finish_reason", "stop_reason"):
            reason = place.get(key)
            if isinstance(reason, str) and reason:
                return reason
    return None


def _chunk_output(token: Any, chunk: Any) -> Iterator[str]:
    """The billed output of one streamed chunk: its text (or the text and
    reasoning of content blocks), tool-call chunks and reasoning kept aside."""
    if isinstance(token, str):
        yield from (token,) if token else ()
    elif isinstance(token, list):
        for block in token:
            yield from _block_text(block)
    message = getattr(chunk, "message", None)
    for call in getattr(message, "tool_call_chunks", None) or ():
        for key in ("name", "args"):
            piece = call.get(key) if isinstance(call, Mapping) else None
            if isinstance(piece, str) and piece:
                yield piece
    extra = getattr(message, "additional_kwargs", None)
    reasoning = extra.get("reasoning_content") if isinstance(extra, dict) else None
    if isinstance(reasoning, str) and reasoning:
        yield reasoning


def _block_text(block: Any) -> Iterator[str]:
    if isinstance(block, str):
        yield from (block,) if block else ()
        return
    if not isinstance(block, Mapping):
        return
    for key in ("text", "thinking", "reasoning"):
        piece = block.get(key)
        if isinstance(piece, str) and piece:
            yield piece


def _generated_text(response: LLMResult) -> str:
    return "".join(g.text for gens in response.generations for g in gens)


def _judged(response: LLMResult, text: str) -> str | None:
    """The output the loop guard compares: the text, or the text and calls.

    An agent that writes the same preamble before each new tool call is
    making progress: an answer that calls tools is judged by its calls and
    their results (the repetition rules), not by its words, and only the
    same-call rule compares the answer itself, calls included.
    """
    calls = next(
        (
            found
            for gens in response.generations
            for g in gens
            if (found := getattr(getattr(g, "message", None), "tool_calls", None))
        ),
        None,
    )
    return tool_call_output(text, calls) if calls else text
