"""Govern LiteLLM calls: ``completion``, ``acompletion`` (streams included) and
``embedding``, ``aembedding``.

Two ways in:

* :class:`GovernedLiteLLM` wraps calls explicitly:
  ``GovernedLiteLLM(gov).completion(model=..., messages=...)``.
* :func:`instrument` replaces those four LiteLLM functions for the whole
  process, which governs code that already calls them, LiteLLM's
  ``Router`` and LangChain's ``ChatLiteLLM`` without editing call sites. It
  cannot reach code that bound the functions before instrumenting
  (``from litellm import completion`` at import time); see docs/adapters.md.

LiteLLM's own callbacks cannot refuse or rewrite a request, which is why the
governor wraps the functions instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import inspect
import json
import logging
import os
import random
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, TypeGuard

import httpx

from governor._calls import (
    CHARGED_ATTRIBUTE,
    TIME_CUT,
    Admission,
    CallRequest,
    CallResult,
    SpendMeter,
    metering,
    priced_name,
    prompt_byte_bound,
)
from governor._engine import Governor
from governor._errors import (
    ConfigError,
    GovernorClosed,
    GovernorError,
    GovernorHalt,
    PolicyError,
    UngovernedCall,
)
from governor._leases import note_reader
from governor._loopwatch import loop_watch, tool_call_output
from governor._money import nanos_to_usd
from governor._slots import Held
from governor._slots import arelease as arelease_slots
from governor._slots import release as release_slots
from governor._task import Task, current_task
from governor.adapters._ceiling import TIME, OutputCeiling
from governor.adapters._closing import close_dropped, running_loop
from governor.adapters._embeddings import embedding_request, embedding_result
from governor.adapters._refusals import note_refusal, raise_refusals
from governor.adapters._tokens import (
    NOT_SENT_ATTRIBUTE,
    count_prompt_tokens,
    countable_prompt,
    interrupted_after_sending,
    read_usage,
    settled_usage,
    total_tokens_of,
)
from governor.policies import Attribution, Policy
from governor.policies._base import thawed
from governor.pricing import (
    RateCard,
    Usage,
    usage_from_response,
    usage_from_stream_chunks,
)
from governor.pricing._ratecard import (
    CALL_PRICE_NAMES,
    call_price_fields,
    is_call_price,
)
from governor.telemetry import attributes as attr
from governor.telemetry._content import capture_content

if TYPE_CHECKING:
    from governor.cascade import CascadeResult

__all__ = [
    "GovernedLiteLLM",
    "Instrumentation",
    "active_instrumentation",
    "instrument",
    "raise_refusals",
]

# Cascade runners kept per client (one per distinct cascade policy object).
_RUNNER_MEMORY = 64

logger = logging.getLogger(__name__)

# LiteLLM fetches its price map over the network at import unless told not to
# (shared NOTES, section 1); the governor prices from the bundled copy.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm  # noqa: E402  (must follow the environment default above)
from litellm.integrations.custom_logger import CustomLogger  # noqa: E402

# The thread and asyncio task of a governed wrapper while it runs, so an
# instrumented inner call on the same thread or task (LiteLLM calling itself)
# is not governed twice. Other threads and tasks inherit the value with the
# context (LiteLLM's success callbacks run there) but are not inside: a model
# call a callback makes (an LLM judge) is governed.
_INSIDE: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "governor_inside_litellm", default=None
)


def _here() -> tuple[int, int]:
    # asyncio.current_task() raises outside a running loop: asking for the
    # loop first spares a sync call that exception (about a microsecond).
    loop = asyncio._get_running_loop()
    task = asyncio.current_task(loop) if loop is not None else None
    return threading.get_ident(), id(task) if task is not None else 0


def _inside() -> bool:
    """True inside a governed call, on its own thread and task."""
    where = _INSIDE.get()
    return where is not None and where == _here()


# Set while a cascade runs, or while the cache's verifier asks its model: a
# call refused by a budget is skipped (a tier, a check) and the task goes on,
# so the refusal must not mark the task stopped; nor is such a call rewritten
# by a loop guard's escalation hint.
_SKIPPABLE: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "governor_skippable", default=False
)


class GovernedLiteLLM:
    """LiteLLM's ``completion``, ``acompletion``, ``embedding`` and
    ``aembedding`` under a governor.

    Each call is reserved before it is sent and settled after it returns.
    Outside a task, each call is a task of its own. Requests without
    ``max_tokens`` are sent with the policy's ``default_max_output_tokens``
    (less where the prompt leaves less room in the model's context window);
    streams always ask the provider for usage (its usage chunk reaches only
    a caller that asked for it too). Embedding calls reserve their
    input and nothing for output. ``callables`` names the judges, checks and
    estimators a cascade policy refers to by name.
    """

    def __init__(
        self,
        governor: Governor,
        *,
        completion: Callable[..., Any] | None = None,
        acompletion: Callable[..., Any] | None = None,
        embedding: Callable[..., Any] | None = None,
        aembedding: Callable[..., Any] | None = None,
        callables: Mapping[str, Callable[..., Any]] | None = None,
    ) -> None:
        self.governor = _governor(governor, "GovernedLiteLLM")
        self._callables = dict(callables or {})
        self._completion = _watching(completion or litellm.completion, "completion")
        self._acompletion = _watching(acompletion or litellm.acompletion, "acompletion")
        self._embedding = embedding or litellm.embedding
        self._aembedding = aembedding or litellm.aembedding
        self._runners: dict[int, tuple[Any, Any]] = {}
        self._cooldowns: Any = None
        self._positional: dict[str, tuple[str, ...]] = {}

    def __reduce__(self) -> Any:
        raise TypeError(
            "a GovernedLiteLLM cannot be pickled: it holds a Governor, which "
            "belongs to its process. Send the Policy (which pickles) and build "
            "one in the worker: GovernedLiteLLM(Governor(policy, ...))"
        )

    def __repr__(self) -> str:
        return (
            f"<GovernedLiteLLM governor={id(self.governor):#x} "
            f"policy={self.governor.policy.name!r}>"
        )

    def completion(self, *args: Any, **kwargs: Any) -> Any:
        """Governed ``litellm.completion``; same arguments, same return value.

        With ``fallbacks=[...]`` each model tried is a governed call of its
        own, reserved and charged at its own price. LiteLLM's ``num_retries``
        (or ``litellm.num_retries``) retries are made here, each attempt a
        governed call of its own (see :func:`_retried`).
        """
        runner = kwargs.pop(_BATCH_RUNNER, None)
        if runner is not None:  # sent by litellm.batch_completion on its threads
            return runner(self.completion, *args, **kwargs)
        if _inside():
            return self._completion(*args, **kwargs)
        try:
            *earlier, last = _fallback_attempts(self._named("completion", args, kwargs))
            for attempt in earlier:
                try:
                    return _retried(self._complete, attempt)
                except GovernorError:
                    raise
                except Exception as exc:  # a provider error: try the next model
                    _falling_back(attempt, exc)
            return _retried(self._complete, last)
        except GovernorError as exc:
            _refused(exc, self.governor)
            raise

    async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
        """Governed ``litellm.acompletion``; same arguments, same return value.

        Fallbacks and ``num_retries`` are governed as in :meth:`completion`.
        """
        if _inside():
            return await self._acompletion(*args, **kwargs)
        try:
            *earlier, last = _fallback_attempts(
                self._named("acompletion", args, kwargs)
            )
            for attempt in earlier:
                try:
                    return await _aretried(self._acomplete, attempt)
                except GovernorError:
                    raise
                except Exception as exc:  # a provider error: try the next model
                    _falling_back(attempt, exc)
            return await _aretried(self._acomplete, last)
        except GovernorError as exc:
            _refused(exc, self.governor)
            raise

    def embedding(self, *args: Any, **kwargs: Any) -> Any:
        """Governed ``litellm.embedding``; same arguments, same return value."""
        if _inside():
            return self._embedding(*args, **kwargs)
        try:
            return self._embed(self._named("embedding", args, kwargs))
        except GovernorError as exc:
            _refused(exc, self.governor)
            raise

    def _embed(self, kwargs: dict[str, Any]) -> Any:
        request = self._embedding_request(kwargs)
        admission = self.governor.begin_call(request)
        _no_sdk_retries(kwargs, embedding=True)
        token = _INSIDE.set(_here())
        try:
            response = self._embedding(**kwargs)
        except BaseException as exc:
            self.governor.end_call(admission, _failed(request, exc))
            raise
        finally:
            _INSIDE.reset(token)
        self.governor.end_call(admission, embedding_result(request, response))
        return response

    async def aembedding(self, *args: Any, **kwargs: Any) -> Any:
        """Governed ``litellm.aembedding``; same arguments, same return value."""
        if _inside():
            return await self._aembedding(*args, **kwargs)
        try:
            return await self._aembed(self._named("aembedding", args, kwargs))
        except GovernorError as exc:
            _refused(exc, self.governor)
            raise

    async def _aembed(self, kwargs: dict[str, Any]) -> Any:
        request = self._embedding_request(kwargs)
        admission = await self.governor.abegin_call(request)
        _no_sdk_retries(kwargs, embedding=True)
        token = _INSIDE.set(_here())
        try:
            response = await self._aembedding(**kwargs)
        except BaseException as exc:
            await self.governor.aend_call(admission, _failed(request, exc))
            raise
        finally:
            _INSIDE.reset(token)
        await self.governor.aend_call(admission, embedding_result(request, response))
        return response

    def _named(
        self, call: str, args: Sequence[Any], kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """The arguments of ``call`` as keywords, named as its function names
        them (read once per function)."""
        names = self._positional.get(call)
        if names is None:
            names = self._positional[call] = self._positional_names(call)
        return _named(call, args, kwargs, names)

    def _positional_names(self, call: str) -> tuple[str, ...]:
        """What the function wrapped for ``call`` takes by position.

        LiteLLM's ``aembedding(*args, **kwargs)`` hands them to ``embedding``,
        whose names it takes. A function whose first two are not the model
        and the messages (or input) is taken to accept only those two.
        """
        names = _positionals(getattr(self, f"_{call}"))
        if names is None and call == "aembedding":
            names = _positionals(self._embedding)
        second = "input" if call.endswith("embedding") else "messages"
        if not names or names[:2] != ("model", second):
            return ("model", second)
        return names

    def _embedding_request(self, kwargs: Mapping[str, Any]) -> CallRequest:
        return embedding_request(
            kwargs,
            parent_span=_parent_span(),
            attribution=_metadata_attribution(kwargs.get("metadata")),
            provider=_provider(kwargs),
            prices=_call_prices(kwargs),
        )

    def cascade(self, messages: list[dict[str, Any]], **kwargs: Any) -> CascadeResult:
        """Answer with the policy's cascade: cheapest tier whose answer passes.

        ``kwargs`` are LiteLLM arguments shared by every tier (a tier's own
        ``params`` win). Each attempt is a governed call, reserved and settled
        on the task's budgets; a tier that does not fit is skipped. Outside a
        task, the whole run is one task of its own, so the task budget bounds
        the cascade, not each tier.

        Returns:
            The :class:`governor.cascade.CascadeResult`; ``result.answer.raw``
            is LiteLLM's response of the accepted tier, and ``cost_usd``
            counts every governed call made during the run on its behalf (an
            LLM judge's too).

        Raises:
            CascadeExhausted: no tier gave an acceptable answer.
            CascadeBudgetExceeded: no tier fitted the budget left.
        """
        runner, request = self._cascade_setup(messages, kwargs, "cascade")
        answers = _RunAnswers()

        def call(tier: Any, request: dict[str, Any]) -> Any:
            return self._tier_call(tier, request, answers)

        with self._request_task(kwargs), _cascading(self.governor) as spend:
            request = _cascade_hinted(request)
            result = runner.run(
                request,
                call=call,
                context_window=self._context_window,
                count_tokens=_tier_tokens,
                prompt_text=_last_user_text(messages),
                rest_key=_tier_rest_key,
                from_cache=_from_cache,
            )
            answers.store(result)
            done: CascadeResult = self._on_result(result, spend, request)
            return done

    async def acascade(
        self, messages: list[dict[str, Any]], **kwargs: Any
    ) -> CascadeResult:
        """Async form of :meth:`cascade`."""
        runner, request = self._cascade_setup(messages, kwargs, "acascade")
        answers = _RunAnswers()

        async def call(tier: Any, request: dict[str, Any]) -> Any:
            return await self._atier_call(tier, request, answers)

        async with self._arequest_task(kwargs):
            with _cascading(self.governor) as spend:
                request = _cascade_hinted(request)
                result = await runner.arun(
                    request,
                    call=call,
                    context_window=self._context_window,
                    count_tokens=_tier_tokens,
                    prompt_text=_last_user_text(messages),
                    rest_key=_tier_rest_key,
                    from_cache=_from_cache,
                )
                await answers.astore(result)
                done: CascadeResult = self._on_result(result, spend, request)
                return done

    def _request_task(self, kwargs: Mapping[str, Any]) -> Any:
        """The current task, else one task for this whole cascade run.

        Its attribution is what a one-call task would get: the scope values
        in the call's ``metadata``.
        """
        if current_task() is not None:
            return contextlib.nullcontext()
        return self.governor.request_task(_cascade_attribution(kwargs))

    def _arequest_task(self, kwargs: Mapping[str, Any]) -> Any:
        """Async form of :meth:`_request_task`: the task it opens is closed
        without blocking the event loop on the budget store.
        """
        if current_task() is not None:
            return contextlib.nullcontext()
        return self.governor.arequest_task(_cascade_attribution(kwargs))

    def _cascade_setup(
        self, messages: list[dict[str, Any]], kwargs: dict[str, Any], name: str
    ) -> tuple[Any, dict[str, Any]]:
        """Check a cascade call's arguments; ``name`` is the method called."""
        messages = _as_messages(name, messages)
        task = current_task()
        policy = (task.policy if task else self.governor.policy).cascade
        if policy is None:
            raise ConfigError(
                f"{name}() needs a policy with a Cascade: "
                "Policy(cascade=Cascade(tiers=[...]))"
            )
        if "model" in kwargs:
            raise ConfigError(
                f"{name}(model={kwargs['model']!r}): a cascade sends each tier's "
                f"own model, so a model given to {name}() would be ignored. Leave "
                "model= out, or call completion(model=...) to ask one model; to "
                "use this model in the cascade, add it as a Tier"
            )
        if "fallbacks" in kwargs:
            from governor.policies._cascade import FALLBACKS_IN_CASCADE

            raise ConfigError(f"{name}(fallbacks=...): {FALLBACKS_IN_CASCADE}")
        if kwargs.get("stream"):
            raise ConfigError(
                f"{name}() cannot stream: each tier's whole answer must be "
                f"checked before it is accepted. Call {name}() without "
                "stream=True, then stream result.answer.text to your client, or "
                "use completion(stream=True) on one model."
            )
        return self._runner(policy), {**kwargs, "messages": messages}

    def _runner(self, policy: Any) -> Any:
        """The runner of a cascade policy; all share this client's cooldowns.

        A task's policy override makes a new Cascade object per task, so the
        runners are kept by identity, a few at a time, and a model resting
        after failures rests for every task.
        """
        from governor.cascade import CascadeRunner, CooldownRegistry

        entry = self._runners.get(id(policy))
        if entry is not None and entry[0] is policy:
            return entry[1]
        task = current_task()
        self.governor.check_tier_prices(task.policy if task else self.governor.policy)
        if self._cooldowns is None:
            self._cooldowns = CooldownRegistry()
        runner = CascadeRunner(
            policy,
            callables=self._callables,
            cooldowns=self._cooldowns,
            on_attempt=self._on_attempt,
        )
        if len(self._runners) >= _RUNNER_MEMORY:
            self._runners.clear()
        self._runners[id(policy)] = (policy, runner)
        return runner

    def _tier_call(
        self, tier: Any, request: dict[str, Any], answers: _RunAnswers
    ) -> Any:
        """One attempt of a cascade run; its answer is stored in the response
        cache only if the run accepts it (see :class:`_RunAnswers`)."""
        response, cost = self._complete(_tier_kwargs(tier, request), answers)
        return _answer(response, cost)

    async def _atier_call(
        self, tier: Any, request: dict[str, Any], answers: _RunAnswers
    ) -> Any:
        """Async form of :meth:`_tier_call`."""
        response, cost = await self._acomplete(_tier_kwargs(tier, request), answers)
        return _answer(response, cost)

    def _context_window(self, tier: Any) -> int | None:
        try:
            window: int | None = _rates(self.governor).rate(tier.model).max_input_tokens
        except GovernorError:
            return None
        return window

    def _on_attempt(self, attempt: Any) -> None:
        """One child span per attempt, sent or skipped, with its verdict."""
        task = current_task()
        parent = task.span if task else None
        attributes: dict[str, Any] = {
            attr.CASCADE_TIER: attempt.tier,
            attr.GEN_AI_REQUEST_MODEL: attempt.model,
            attr.CASCADE_OUTCOME: attempt.outcome,
            attr.CASCADE_REASON: _span_reason(attempt),
            attr.CASCADE_SENT: attempt.sent,
            attr.CASCADE_CHECKS: ", ".join(
                f"{c.check}:{'pass' if c.passed else 'fail'}" for c in attempt.checks
            ),
        }
        if attempt.cost_usd is not None or attempt.sent:
            # Not the call's cost name: the call span under it already has
            # that, and dashboards summing it over spans would count twice.
            # A sent attempt that failed free (a 429) says 0, not nothing.
            cost = attempt.cost_usd if attempt.cost_usd is not None else 0
            attributes[attr.CASCADE_ATTEMPT_COST_USD] = float(cost)
        if attempt.error_kind:
            attributes[attr.CASCADE_ERROR_KIND] = attempt.error_kind
        self.governor.telemetry.event(parent, "governor.cascade.attempt", attributes)
        failed = attempt.outcome == "error"
        self.governor.telemetry.timed_span(
            f"governor.cascade.attempt {attempt.tier}",
            parent,
            attributes,
            start_ns=attempt.started_ns,
            end_ns=attempt.ended_ns,
            error=(attempt.error_kind or "error") if failed else None,
        )

    def _on_result(
        self, result: Any, spend: _RunSpend, request: Mapping[str, Any]
    ) -> Any:
        """Count the calls made on the run's behalf in its cost, and put the
        final tier and the saving against the premium tier on the task."""
        others = nanos_to_usd(spend.meter.nanos) - result.attempts_cost_usd
        other = others if others > 0 else Decimal(0)  # not -0 or 0E-7
        result = dataclasses.replace(result, other_cost_usd=other)
        task = current_task()
        if task is None:
            return result
        premium = task.policy.cascade or self.governor.policy.cascade
        saved = _premium_saving(self.governor, premium, result, request)
        self.governor.telemetry.set_attributes(
            task.span,
            {
                attr.CASCADE_FINAL_TIER: result.tier.name,
                attr.CASCADE_ACCEPTED: result.accepted,
            },
        )
        spend.saving_added = True  # an error from here on must not count again
        _add_saving(self.governor, task, saved)
        answer = result.answer
        if not answer.tool_calls:  # a tool call is judged by its result
            watch = loop_watch(task, self.governor.telemetry)
            watch.after_answer(answer.text, task.model_calls)
        return result

    def _complete(
        self, kwargs: dict[str, Any], run: _RunAnswers | None = None
    ) -> tuple[Any, Decimal]:
        """One governed call; ``run`` is the cascade run it is a tier of."""
        kwargs = _escalated(kwargs)
        request = _request(kwargs)
        cache, lookup = self._lookup(kwargs, request)
        if lookup is not None and lookup.hit:
            if run is None or run.fresh(lookup):
                self.governor.record_cache_hit(request, lookup)
                return _cached_response(lookup, kwargs), Decimal(0)
            lookup = self._missed_again(cache, kwargs, request)
        recheck = _recheck(cache, lookup, run)
        admission = self.governor.begin_call(request, recheck=recheck)
        if admission.served is not None:  # stored while this call waited
            return _cached_response(admission.served, kwargs), Decimal(0)
        wants_usage = _asks_for_usage(kwargs)
        token = _INSIDE.set(_here())
        try:  # anything failing from here on settles the admitted call
            _apply(admission, kwargs)
            response = self._completion(**kwargs)
        except BaseException as exc:
            result = _failed(request, exc, admission)
            _charged(exc, self.governor.end_call(admission, result))
            raise
        finally:
            _INSIDE.reset(token)
        if kwargs.get("stream"):
            saver = _Saver(cache, lookup, kwargs)
            stream = _SyncStream(self.governor, admission, response, saver, wants_usage)
            return _as_litellm_stream(stream), Decimal(0)
        try:
            result = _result(response, request, admission)
        except Exception as exc:  # answered, but unreadable: charge the hold
            _charged(exc, self.governor.end_call(admission, _unread(exc)))
            raise
        if cache is None:
            return response, self.governor.end_call(admission, result)
        saver = _Saver(cache, lookup, kwargs)
        if run is not None:  # a cascade tier's answer waits for the run's verdict
            cost = self.governor.end_call(admission, result)
            run.keep(response, saver, result, cost)
            return response, cost
        with _slots_kept(admission, saver):  # stored before the slots go back
            cost = self.governor.end_call(admission, result)
            saver.save(result, cost, _message(response))
        return response, cost

    async def _acomplete(
        self, kwargs: dict[str, Any], run: _RunAnswers | None = None
    ) -> tuple[Any, Decimal]:
        """Async form of :meth:`_complete`."""
        kwargs = _escalated(kwargs)
        request = _request(kwargs)
        cache, lookup = await self._alookup(kwargs, request)
        if lookup is not None and lookup.hit:
            if run is None or run.fresh(lookup):
                self.governor.record_cache_hit(request, lookup)
                return _cached_response(lookup, kwargs, is_async=True), Decimal(0)
            lookup = self._missed_again(cache, kwargs, request)
        admission = await self.governor.abegin_call(
            request, recheck=_recheck(cache, lookup, run)
        )
        if admission.served is not None:  # stored while this call waited
            hit = admission.served
            return _cached_response(hit, kwargs, is_async=True), Decimal(0)
        wants_usage = _asks_for_usage(kwargs)
        token = _INSIDE.set(_here())
        try:  # anything failing from here on settles the admitted call
            _apply(admission, kwargs)
            response = await self._acompletion(**kwargs)
        except BaseException as exc:
            result = _failed(request, exc, admission)
            _charged(exc, await self.governor.aend_call(admission, result))
            raise
        finally:
            _INSIDE.reset(token)
        if kwargs.get("stream"):
            saver = _Saver(cache, lookup, kwargs)
            stream = _AsyncStream(
                self.governor, admission, response, saver, wants_usage
            )
            return _as_litellm_stream(stream), Decimal(0)
        try:
            result = _result(response, request, admission)
        except Exception as exc:  # answered, but unreadable: charge the hold
            _charged(exc, await self.governor.aend_call(admission, _unread(exc)))
            raise
        if cache is None:
            return response, await self.governor.aend_call(admission, result)
        saver = _Saver(cache, lookup, kwargs)
        if run is not None:  # a cascade tier's answer waits for the run's verdict
            cost = await self.governor.aend_call(admission, result)
            run.keep(response, saver, result, cost)
            return response, cost
        async with _aslots_kept(admission, saver):  # stored before they go back
            cost = await self.governor.aend_call(admission, result)
            message = _message(response)  # a store (Redis) and an embedding block
            await asyncio.to_thread(saver.save, result, cost, message)
        return response, cost

    async def _alookup(
        self, kwargs: Mapping[str, Any], request: CallRequest
    ) -> tuple[Any, Any]:
        """:meth:`_lookup` off the event loop: embedding and Redis block."""
        if self.governor.policy_for(request).cache is None or _skips_cache(
            kwargs, request
        ):
            return None, None
        return await asyncio.to_thread(self._lookup, kwargs, request)

    def _lookup(
        self, kwargs: Mapping[str, Any], request: CallRequest
    ) -> tuple[Any, Any]:
        """The policy's cache and its answer for this request, if it has one.

        The partition is the attribution the call is charged to, so a tenant
        given only in ``metadata=`` is kept apart like one given by a task. A
        request the cache must neither serve nor store (see
        :func:`_skips_cache`, and a call outside its task that names no
        tenant) gets no cache.
        """
        policy = self.governor.policy_for(request)
        if policy.cache is None or _skips_cache(kwargs, request):
            return None, None
        partition = self.governor.cache_partition_for(request, policy.cache)
        if partition is None:
            return None, None
        named = policy.cache.verifier
        verifier = self._model_verifier(named) if isinstance(named, str) else None
        cache = self.governor.cache_for(
            policy, verifier=verifier, embedding=self.embedding
        )
        return cache, cache.lookup(**_cache_request(kwargs), partition=partition)

    def _missed_again(
        self, cache: Any, kwargs: Mapping[str, Any], request: CallRequest
    ) -> Any:
        """A miss for a hit its cascade run was served already: the model is
        asked, and an answer the run accepts is stored under this request's
        own keys (a later run then finds it)."""
        from governor.cache import CacheMiss

        policy = self.governor.policy_for(request)
        partition = None
        if policy.cache is not None:
            partition = self.governor.cache_partition_for(request, policy.cache)
        keys = cache.keys(**_cache_request(kwargs), partition=partition)
        return CacheMiss("served_in_run", keys, storable=keys.write)

    def _model_verifier(self, model: str) -> Callable[[str, str, str], bool]:
        """Ask ``model`` whether a cached answer fits a new question.

        The question goes through this governed client, so it is charged to
        the current task's budgets and shows on its spans; it is never
        served from or stored in the cache. Anything but a "yes" refuses.
        """

        def verify(question: str, cached_question: str, cached_answer: str) -> bool:
            prompt = _VERIFY_PROMPT.format(
                question=question, cached=cached_question, answer=cached_answer
            )
            # A budget that cannot pay for the check refuses the hit only.
            token = _SKIPPABLE.set(True)
            try:
                response = self.completion(
                    model=model,
                    messages=[{"role": "user", "content": prompt}],
                    max_tokens=3,
                    temperature=0,
                    cache={"no-cache": True, "no-store": True},
                )
            finally:
                _SKIPPABLE.reset(token)
            text = str(response.choices[0].message.content or "")
            return text.strip().lower().startswith("yes")

        return verify


_VERIFY_PROMPT = (
    "A cache holds an answer to an earlier question. Does that answer fully "
    "and correctly answer the new question? Reply with one word, yes or no.\n"
    "Earlier question: {cached}\nCached answer: {answer}\n"
    "New question: {question}"
)


class _Saver:
    """Stores a successful answer in the cache after a miss."""

    def __init__(self, cache: Any, lookup: Any, kwargs: Mapping[str, Any]) -> None:
        self.cache = cache
        self.lookup = lookup
        self.model = str(kwargs["model"])

    def save(
        self, result: CallResult, cost: Decimal, message: dict[str, Any] | None
    ) -> None:
        if self.cache is None or self.lookup is None or message is None:
            return
        if result.error is not None or not getattr(self.lookup, "storable", False):
            return
        usage = result.usage or Usage()
        self.cache.store(
            self.lookup,
            message=message,
            model=result.response_model or self.model,
            cost_usd=cost,
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
        )

    def keeps_slots(self) -> bool:
        """True when the call's fan-out slots must wait for its answer's store.

        A call that waited for one of them looks in the cache again (see
        :func:`_recheck`) and must find the answer there. Only a miss the
        cache was read for is looked at again; the store of one it was not
        read for (``no-cache``) may embed the question through this governor,
        a call that would wait for the very slots held here.
        """
        lookup = self.lookup
        if self.cache is None or not getattr(lookup, "storable", False):
            return False
        return bool(getattr(getattr(lookup, "keys", None), "read", False))


@contextlib.contextmanager
def _slots_kept(admission: Admission, saver: _Saver) -> Iterator[None]:
    """Give the call's fan-out slots back when the block ends, not when the
    call is settled in it: its answer is stored in between.

    A call queued behind a cap looks in the cache again once it has a slot,
    so a burst of repeated requests pays for its first wave only. The slots
    go back however the block ends; a call whose answer nobody would look
    for (see :meth:`_Saver.keeps_slots`) gives them back as it settles.
    """
    if not saver.keeps_slots():
        yield
        return
    held = admission.held
    admission.held = Held([], held.wait_s)  # the settle gives back none
    try:
        yield
    finally:
        release_slots(held)


@contextlib.asynccontextmanager
async def _aslots_kept(admission: Admission, saver: _Saver) -> AsyncIterator[None]:
    """Async form of :func:`_slots_kept`; a cancellation cannot keep the
    slots taken."""
    if not saver.keeps_slots():
        yield
        return
    held = admission.held
    admission.held = Held([], held.wait_s)
    try:
        yield
    finally:
        await arelease_slots(held)


class _RunAnswers:
    """The response cache's side of one cascade run.

    A tier's answer is stored only once the run accepts it: a rejected one
    is never served, neither to a later tier of the run (tiers that differ
    only in sampling parameters share a semantic scope) nor to later runs.
    A cached answer served to one attempt is not served to another of the
    same run: the run's samples stay its own, and a check that compares
    them (agreement) never counts one answer twice.
    """

    def __init__(self) -> None:
        self._served: set[str] = set()
        self._answered: list[tuple[Any, _Saver, CallResult, Decimal]] = []

    def fresh(self, hit: Any) -> bool:
        """True, noting it as served, for a hit this run has not been served."""
        key = str(hit.key)
        if key in self._served:
            return False
        self._served.add(key)
        return True

    def keep(
        self, response: Any, saver: _Saver, result: CallResult, cost: Decimal
    ) -> None:
        """Hold a tier's answer until the run's verdict."""
        self._answered.append((response, saver, result, cost))

    def _accepted(self, result: Any) -> tuple[Any, _Saver, CallResult, Decimal] | None:
        """The call that made the answer the run accepted; None for an answer
        not accepted, or served from the cache."""
        if not result.accepted:
            return None
        raw = result.answer.raw
        return next((kept for kept in self._answered if kept[0] is raw), None)

    def store(self, result: Any) -> None:
        """Store the answer the run accepted, if a tier's call made it."""
        accepted = self._accepted(result)
        if accepted is not None:
            response, saver, settled, cost = accepted
            saver.save(settled, cost, _message(response))

    async def astore(self, result: Any) -> None:
        """Async form of :meth:`store`: a store (Redis) and an embedding block."""
        if self._accepted(result) is not None:
            await asyncio.to_thread(self.store, result)


class Instrumentation:
    """A process-wide patch of LiteLLM; undo it with :meth:`uninstrument`.

    Usable as a context manager: ``with instrument(gov):`` or
    ``with Instrumentation(gov):``, which installs the patch on entry (with
    the same check as :func:`instrument`); leaving the block puts LiteLLM's
    own functions back. Only one governor can instrument LiteLLM at a time.
    """

    _lock = threading.Lock()
    _active: Instrumentation | None = None

    def __init__(
        self, governor: Governor, *, ungoverned: UngovernedMode = "warn"
    ) -> None:
        self.governor = _governor(governor, "instrument")
        self.ungoverned = _ungoverned_mode(ungoverned)
        self._original = self._functions()
        self._governed = self._govern(self._original)
        self._others: dict[str, Any] = {}

    def __repr__(self) -> str:
        state = "installed" if Instrumentation._active is self else "not installed"
        return (
            f"<Instrumentation {state} governor={id(self.governor):#x} "
            f"policy={self.governor.policy.name!r}>"
        )

    @staticmethod
    def _functions() -> tuple[Any, Any, Any, Any]:
        """LiteLLM's functions as they are now."""
        return (
            litellm.completion,
            litellm.acompletion,
            litellm.embedding,
            litellm.aembedding,
        )

    def _govern(self, functions: tuple[Any, Any, Any, Any]) -> GovernedLiteLLM:
        completion, acompletion, embedding, aembedding = functions
        return GovernedLiteLLM(
            self.governor,
            completion=completion,
            acompletion=acompletion,
            embedding=embedding,
            aembedding=aembedding,
        )

    def _install(self) -> None:
        """Patch LiteLLM, unless this object has already patched it."""
        with Instrumentation._lock:
            active = Instrumentation._active
            if active is self:
                return
            if self.governor._closed:
                raise GovernorClosed("instrument(gov)")
            if active is not None:
                same = active._governed.governor is self._governed.governor
                whose = "this governor" if same else "another governor"
                raise RuntimeError(
                    f"LiteLLM is already instrumented by {whose}; instrument "
                    "once (one `with instrument(gov):` block, or one "
                    "instrument(gov) at start-up), or call uninstrument() on "
                    "the active one first (governor.adapters.litellm."
                    "active_instrumentation() returns it)"
                )
            current = self._functions()
            if current != self._original:  # patched since: govern them as they are
                self._original = current
                self._governed = self._govern(current)
            litellm.completion = self._governed.completion
            litellm.acompletion = self._governed.acompletion
            litellm.embedding = self._governed.embedding
            litellm.aembedding = self._governed.aembedding
            self._guard_others()
            self._carry_into_batches()
            Instrumentation._active = self
        _warn_early_bound(self._original)
        if self.ungoverned != "allow":
            unbatched = {n: f for n, f in self._others.items() if n not in _BATCH}
            _warn_early_bound_ungoverned(unbatched, self.ungoverned)

    def _guard_others(self) -> None:
        """Put a warning or a refusal in front of LiteLLM's ungoverned
        functions (see ``ungoverned``). The Responses functions are guarded
        in every mode: a governor refusal of the chat completion LiteLLM
        makes for them is raised as itself (see :meth:`_guarded`)."""
        for name, instead in _UNGOVERNED.items():
            if self.ungoverned == "allow" and name not in _RESPONSES:
                continue
            function = getattr(litellm, name, None)
            if function is None:
                continue
            self._others[name] = function
            setattr(litellm, name, self._guarded(name, instead, function))

    def _carry_into_batches(self) -> None:
        """Make LiteLLM's batch functions send each request in the caller's
        task (see :meth:`_batched`), in every ``ungoverned`` mode."""
        for name in _BATCH:
            function = getattr(litellm, name, None)
            if function is None:
                continue
            self._others[name] = function
            setattr(litellm, name, self._batched(name, function))

    def _batched(self, name: str, function: Any) -> Any:
        """``function``, a LiteLLM batch function, with each request it sends
        governed in the caller's task.

        The batch functions call ``litellm.completion`` on threads of their
        own, which do not inherit the current task: each call would be a
        task of its own, outside the caller's budgets and attribution. They
        pass their keyword arguments on to each call, so a runner that enters
        the caller's task (:meth:`Task.bind`), or outside a task the caller's
        context (``governor.attribute``), goes with them and the governed
        ``completion`` runs the call in it. LiteLLM's in-process vLLM batch
        (a ``vllm/`` model) sends no ``completion`` call: it falls under the
        ungoverned-call rule.
        """

        @functools.wraps(function)
        def batched(*args: Any, **kwargs: Any) -> Any:
            if _in_process_batch(name, args, kwargs):
                self._ungoverned_call(name, _BATCH_INSTEAD, args, kwargs)
            elif not _inside():
                _carry_runner(kwargs, _runner_here())
            return function(*args, **kwargs)

        return batched

    def _guarded(self, name: str, instead: str | None, function: Any) -> Any:
        """``function`` behind this instrumentation's ungoverned-call rule.

        A refusal by this governor that LiteLLM wrapped in an error of its
        own (its Responses bridge raises ``APIConnectionError``) is raised
        as itself, so ``except BudgetExceeded`` catches it.
        """
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def guarded_async(*args: Any, **kwargs: Any) -> Any:
                self._ungoverned_call(name, instead, args, kwargs)
                try:
                    return await function(*args, **kwargs)
                except Exception as exc:
                    refusal = _refusal_in(exc, self.governor)
                    if refusal is None:
                        raise
                raise refusal

            return guarded_async

        @functools.wraps(function)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            self._ungoverned_call(name, instead, args, kwargs)
            try:
                return function(*args, **kwargs)
            except Exception as exc:
                refusal = _refusal_in(exc, self.governor)
                if refusal is None:
                    raise
            raise refusal

        return guarded

    def _ungoverned_call(
        self,
        name: str,
        instead: str | None,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
    ) -> None:
        """Refuse the call, or warn of it once per function per process.

        LiteLLM calling itself inside a governed call (its ``num_retries``
        retrying through ``completion_with_retries``) passes, and so does a
        Responses call LiteLLM sends as a chat completion, which is governed.
        """
        if self.ungoverned == "allow" or _inside():
            return
        if name in _RESPONSES and _bridged_to_chat(args, kwargs):
            return
        if self.ungoverned == "refuse":
            raise UngovernedCall(name, instead)
        function = self._others.get(name)
        with Instrumentation._lock:
            if _WARNED_UNGOVERNED.get(name) is function:
                return
            _WARNED_UNGOVERNED[name] = function
        logger.warning(
            "litellm.%s() is not governed: its calls are sent and billed but "
            "reserved against no budget and charged nothing.%s "
            "instrument(gov, ungoverned='refuse') refuses them; "
            "ungoverned='allow' silences this warning (given once per function).",
            name,
            f" Use {instead} instead." if instead else "",
        )

    def uninstrument(self) -> None:
        """Put LiteLLM's own functions back."""
        with Instrumentation._lock:
            if Instrumentation._active is not self:
                return
            (
                litellm.completion,
                litellm.acompletion,
                litellm.embedding,
                litellm.aembedding,
            ) = self._original
            for name, function in self._others.items():
                setattr(litellm, name, function)
            self._others = {}
            Instrumentation._active = None

    def __enter__(self) -> Instrumentation:
        """Install the patch, unless :func:`instrument` already did."""
        self._install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstrument()


UngovernedMode = Literal["warn", "refuse", "allow"]

# LiteLLM's paid functions that the governor does not govern, and what to call
# instead where a governed function does the same job.
_UNGOVERNED: dict[str, str | None] = {
    "text_completion": "litellm.completion() with messages",
    "atext_completion": "litellm.acompletion() with messages",
    "responses": "litellm.completion(), or pass use_chat_completions_api=True",
    "aresponses": "litellm.acompletion(), or pass use_chat_completions_api=True",
    "completion_with_retries": (
        "litellm.completion() with num_retries=, a retry loop of your own "
        "(tenacity) or the cascade's Retry, where each attempt is governed"
    ),
    "acompletion_with_retries": (
        "litellm.acompletion() with num_retries=, a retry loop of your own "
        "(tenacity) or the cascade's Retry, where each attempt is governed"
    ),
    "image_generation": None,
    "aimage_generation": None,
    "image_edit": None,
    "aimage_edit": None,
    "transcription": None,
    "atranscription": None,
    "speech": None,
    "aspeech": None,
    "rerank": None,
    "arerank": None,
    "video_generation": None,
    "avideo_generation": None,
}


_RESPONSES = ("responses", "aresponses")

# LiteLLM's batch functions: each sends its requests through
# litellm.completion on threads of its own, which are governed in the
# caller's task by a runner passed to each call under this keyword.
_BATCH = (
    "batch_completion",
    "batch_completion_models",
    "batch_completion_models_all_responses",
)
_BATCH_RUNNER = "governor_batch_runner"
_BATCH_INSTEAD = "litellm.completion() in threads started with task.bind"


def _in_process_batch(
    name: str, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> bool:
    """True for a ``batch_completion`` LiteLLM runs in process (a ``vllm/``
    model), which sends no ``litellm.completion`` call to govern."""
    if name != "batch_completion":
        return False
    model = args[0] if args else kwargs.get("model")
    return isinstance(model, str) and model.split("/", 1)[0] == "vllm"


def _carry_runner(kwargs: dict[str, Any], runner: Callable[..., Any]) -> None:
    """Pass ``runner`` to each call a batch function makes.

    ``batch_completion_models(deployments=[...])`` copies the other keyword
    arguments into the deployment dicts it is given, where one already there
    wins: a runner left there by an earlier batch would be reused, and the
    caller's dicts would keep it. It is given copies of the caller's dicts,
    and the runner goes in its ``kwargs`` mapping, which overrides them.
    """
    deployments = kwargs.get("deployments")
    if deployments is not None:
        kwargs["deployments"] = [
            dict(d) if isinstance(d, Mapping) else d for d in deployments
        ]
        kwargs["kwargs"] = {**(kwargs.get("kwargs") or {}), _BATCH_RUNNER: runner}
    else:
        kwargs[_BATCH_RUNNER] = runner


def _runner_here() -> Callable[..., Any]:
    """A function that runs ``function(*args, **kwargs)`` in the current
    task (or, outside a task, in a copy of the current context), on any
    thread."""
    task = current_task()
    if task is not None:
        return task.bind(_call)
    carried = contextvars.copy_context()

    def run(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return carried.copy().run(function, *args, **kwargs)

    return run


def _call(function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    return function(*args, **kwargs)


# The ungoverned functions already warned of in this process, by name: the
# warning is given once per function, whichever instrumentation sees it (a
# function LiteLLM's was replaced by since is warned of again).
_WARNED_UNGOVERNED: dict[str, Any] = {}


def _bridged_to_chat(args: Sequence[Any], kwargs: Mapping[str, Any]) -> bool:
    """Whether LiteLLM sends this Responses call as a chat completion.

    It does for providers without a Responses API of their own, and for any
    provider with ``use_chat_completions_api=True``; the chat completion goes
    through the governed ``litellm.completion``. LiteLLM's own decision is
    asked when it has one; else the provider's Responses config is looked
    up. When LiteLLM cannot tell, the call is taken as sent directly (not
    governed).
    """
    if kwargs.get("use_chat_completions_api") is True:
        return True
    model = kwargs.get("model", args[1] if len(args) > 1 else None)
    if not isinstance(model, str):
        return False
    decided = _litellm_bridge_decision(model, kwargs)
    if decided is not None:
        return decided
    return _bridged_by_config(model, kwargs)


_BRIDGE_DECISION_PARAMS = (
    "model",
    "custom_llm_provider",
    "use_chat_completions_api",
    "model_info",
    "api_base",
)


def _bridge_decision_function() -> Callable[..., Any] | None:
    """LiteLLM's ``_will_bridge_to_chat_completions``, if this LiteLLM has
    one taking the parameters it is called with here."""
    try:
        from litellm.responses import main as responses_main

        decide = getattr(responses_main, "_will_bridge_to_chat_completions", None)
        if decide is None:
            return None
        params = tuple(inspect.signature(decide).parameters)
    except Exception:
        return None
    return decide if params == _BRIDGE_DECISION_PARAMS else None


def _litellm_bridge_decision(model: str, kwargs: Mapping[str, Any]) -> bool | None:
    """LiteLLM's own answer to whether it bridges this call, or None when
    this LiteLLM has no such function or it fails."""
    decide = _bridge_decision_function()
    if decide is None:
        return None
    api_base = kwargs.get("api_base")
    api_base = api_base if isinstance(api_base, str) else None
    try:
        provider = _responses_provider(model, kwargs, api_base)
        answer = decide(
            model,
            provider,
            bool(kwargs.get("use_chat_completions_api")),
            kwargs.get("model_info"),
            api_base,
        )
    except Exception:
        return None
    return answer if isinstance(answer, bool) else None


def _responses_provider(
    model: str, kwargs: Mapping[str, Any], api_base: str | None
) -> str:
    """The provider LiteLLM's ``responses()`` resolves for ``model``; a
    provider that logs in to resolve (GitHub Copilot) is taken as named."""
    given = kwargs.get("custom_llm_provider")
    if isinstance(given, str) and given:
        return given
    try:
        from litellm.litellm_core_utils.get_llm_provider_logic import (
            declared_authenticating_provider,
        )
    except ImportError:
        declared = None
    else:
        declared = declared_authenticating_provider(model)
    if isinstance(declared, str):
        return declared
    with _no_banner():
        _, provider, _, _ = litellm.get_llm_provider(model, api_base=api_base)
    return str(provider)


def _bridged_by_config(model: str, kwargs: Mapping[str, Any]) -> bool:
    """Whether the provider has no Responses config in LiteLLM (then the
    call is bridged); False when that cannot be looked up."""
    try:
        from litellm.utils import ProviderConfigManager

        with _no_banner():
            _, provider, _, _ = litellm.get_llm_provider(
                model, custom_llm_provider=kwargs.get("custom_llm_provider")
            )
        config = ProviderConfigManager.get_provider_responses_api_config(
            provider=provider, model=model
        )
    except Exception:
        return False
    return config is None


def _ungoverned_mode(value: object) -> UngovernedMode:
    """``value`` if it is an ungoverned-call mode; else a ConfigError."""
    if value == "warn" or value == "refuse" or value == "allow":
        return value
    raise ConfigError(
        f"instrument(ungoverned={value!r}) is not a mode: give 'warn' (log "
        "ungoverned LiteLLM calls once per function), 'refuse' (raise "
        "UngovernedCall before sending them) or 'allow'"
    )


def _early_bound(functions: Sequence[Any]) -> list[str]:
    """The ``module.name`` of every module outside LiteLLM and the governor
    that holds one of ``functions`` under a name of its own."""
    by_id = {id(function): function for function in functions}
    found = []
    for module_name, module in list(sys.modules.items()):
        if module_name.partition(".")[0] in ("litellm", "governor"):
            continue
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for attribute, value in list(namespace.items()):
            if id(value) in by_id and by_id[id(value)] is value:
                found.append(f"{module_name}.{attribute}")
    return sorted(found)


def _warn_early_bound_ungoverned(
    originals: Mapping[str, Any], mode: UngovernedMode
) -> None:
    """Warn of modules that hold LiteLLM's ungoverned functions under a name
    of their own (``from litellm import text_completion`` before
    instrumenting): their calls through that name bypass ``ungoverned``."""
    found = _early_bound(list(originals.values()))
    if found:
        logger.warning(
            "%s %s LiteLLM's own ungoverned function, bound before "
            "instrument(): calls through %s bypass ungoverned=%r (%s). Call "
            "it through the module (import litellm; litellm.text_completion"
            "(...)), or instrument before that module is imported.",
            ", ".join(found),
            "holds" if len(found) == 1 else "hold",
            "that name" if len(found) == 1 else "those names",
            mode,
            "they are sent without being refused"
            if mode == "refuse"
            else "they are sent without a warning",
        )


def _warn_early_bound(originals: Sequence[Any]) -> None:
    """Warn of modules that hold LiteLLM's own functions under a name of
    their own (``from litellm import completion`` before instrumenting):
    their calls through that name bypass the patch."""
    found = _early_bound(originals)
    if found:
        logger.warning(
            "%s %s LiteLLM's own function, bound before instrument(): calls "
            "through %s are not governed. Call it through the module "
            "(import litellm; litellm.completion(...)), or instrument before "
            "that module is imported.",
            ", ".join(found),
            "holds" if len(found) == 1 else "hold",
            "that name" if len(found) == 1 else "those names",
        )


def _span_reason(attempt: Any) -> str:
    """An attempt's reason as its span may show it: unless message content
    is captured, its brief form, which quotes no request or answer."""
    if capture_content():
        return str(attempt.reason or "")
    return str(attempt.brief or attempt.reason or "")


def _governor(given: object, where: str) -> Governor:
    """``given`` if it is a Governor; else a TypeError saying what to pass."""
    if isinstance(given, Governor):
        return given
    hint = "Governor(policy)" if isinstance(given, Policy) else "Governor(Policy(...))"
    raise TypeError(
        f"{where}() takes a Governor, got {type(given).__name__}; pass {hint}, "
        "and close it (gov.close()) when the process is done with it"
    )


def instrument(
    governor: Governor, *, ungoverned: UngovernedMode = "warn"
) -> Instrumentation:
    """Govern every ``litellm.completion``, ``acompletion``, ``embedding`` and
    ``aembedding`` call in this process.

    Args:
        governor: the governor that reserves and charges the calls.
        ungoverned: what a call of a LiteLLM function the governor does not
            govern (``responses``, ``text_completion``, ``image_generation``
            and the others docs/adapters.md lists) does: ``"warn"`` logs a
            WARNING once per function and sends it, ``"refuse"`` raises
            :class:`governor.UngovernedCall` before it is sent, ``"allow"``
            sends it silently.

    Returns:
        The :class:`Instrumentation`; call ``uninstrument()`` (or use it as a
        context manager) to restore LiteLLM.

    Raises:
        ConfigError: ``ungoverned`` is not one of the three values.
        GovernorClosed: the governor was closed; every call it governed
            would be refused, so build a new Governor.
        RuntimeError: LiteLLM is already instrumented; call
            ``uninstrument()`` on :func:`active_instrumentation` first.
    """
    instrumentation = Instrumentation(governor, ungoverned=ungoverned)
    instrumentation._install()
    return instrumentation


def active_instrumentation() -> Instrumentation | None:
    """Return the :class:`Instrumentation` that has patched LiteLLM now, or
    None when LiteLLM is not instrumented.

    Its ``governor`` is the Governor its calls are charged to; its
    ``uninstrument()`` puts LiteLLM's own functions back (before
    instrumenting with another governor, say).
    """
    return Instrumentation._active


# -- request and response ------------------------------------------------

# Request parts that the provider bills as prompt tokens besides the messages.
_PROMPT_PARTS = ("tools", "functions", "response_format")


def _named(
    call: str, args: Sequence[Any], kwargs: dict[str, Any], names: Sequence[str]
) -> dict[str, Any]:
    """LiteLLM's positional arguments of ``call`` as keywords.

    ``names`` are the parameters the wrapped function takes by position,
    ``(model, messages, ...)`` or ``(model, input, ...)``.
    """
    if len(args) > len(names):
        raise TypeError(
            f"{call}() got {len(args)} positional arguments, but the function "
            f"it wraps takes {len(names)} by position ({', '.join(names)}): "
            "pass the others by name, such as timeout=..."
        )
    named = dict(kwargs)
    if args:  # most calls pass keywords alone
        for name, value in zip(names, args, strict=False):
            if name in named:
                raise TypeError(f"{call}() got multiple values for argument {name!r}")
            named[name] = value
    if "model" not in named or names[1] not in named:
        raise TypeError(f"{call}() needs model= and {names[1]}=")
    if names[1] == "messages":
        named["messages"] = _as_messages(call, named["messages"])
    else:
        _check_input(call, named[names[1]])
    return named


def _as_messages(call: str, messages: Any) -> Any:
    """The messages as the governor reads them, or a TypeError before they are
    read (a string would otherwise fail deep inside as an AttributeError).

    Dicts and objects with ``.get`` (LiteLLM's ``Message``) are kept; a
    pydantic message with a role (the OpenAI SDK's ``ChatCompletionMessage``)
    is taken as its dict, as LiteLLM takes it.
    """
    if type(messages) is list and all(type(m) is dict for m in messages):
        return messages  # the usual case, checked cheaply (every call)
    example = "[{'role': 'user', 'content': 'hi'}]"
    if isinstance(messages, str | bytes | Mapping) or not isinstance(
        messages, Sequence
    ):
        raise TypeError(
            f"{call}() messages= must be a list of message dicts such as "
            f"{example}, got {type(messages).__name__}"
        )
    if all(callable(getattr(m, "get", None)) for m in messages):
        return messages
    return [_as_message(call, index, m) for index, m in enumerate(messages)]


def _as_message(call: str, index: int, message: Any) -> Any:
    if callable(getattr(message, "get", None)):
        return message
    dump = getattr(message, "model_dump", None)
    fields = dump(exclude_none=True) if callable(dump) else None
    if isinstance(fields, dict) and "role" in fields:
        return fields
    hint = (
        " (a LangChain message: convert the list with "
        "langchain_core.messages.convert_to_openai_messages)"
        if isinstance(fields, dict) and "type" in fields
        else ""
    )
    raise TypeError(
        f"{call}() messages= must be a list of message dicts such as "
        f"[{{'role': 'user', 'content': 'hi'}}]; messages[{index}] is "
        f"{type(message).__name__}{hint}"
    )


def _check_input(call: str, value: Any) -> None:
    """Refuse an embedding input that is neither a string nor a list."""
    if isinstance(value, str) or (
        isinstance(value, Sequence) and not isinstance(value, bytes)
    ):
        return
    raise TypeError(
        f"{call}() input= must be a string or a list of strings (or of token "
        f"ids), got {type(value).__name__}"
    )


def _positionals(function: Callable[..., Any]) -> tuple[str, ...] | None:
    """The parameters ``function`` takes by position, in order; None when it
    takes ``*args`` alone."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):  # no signature to read
        return ()
    positional = (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )
    names = tuple(p.name for p in parameters if p.kind in positional)
    if not names and any(
        p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters
    ):
        return None
    return names


def _fallback_attempts(kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """The request, then one per entry of its ``fallbacks`` (LiteLLM's form).

    LiteLLM would run the fallbacks inside the first call, all charged at
    the first model's price; here each is a call of its own. An entry is a
    model name or a mapping of ``model`` and parameters to change.
    """
    fallbacks = kwargs.pop("fallbacks", None)
    if not fallbacks:
        return [kwargs]
    changes = [dict(e) if isinstance(e, Mapping) else {"model": e} for e in fallbacks]
    return [kwargs, *({**kwargs, **change} for change in changes)]


def _falling_back(attempt: Mapping[str, Any], error: Exception) -> None:
    logger.info(
        "%s failed (%s); trying the next of its fallbacks",
        attempt.get("model"),
        type(error).__name__,
    )


# Set while the governor makes a call's LiteLLM retries itself (see _retried).
_RETRYING: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "governor_retrying_litellm", default=False
)
# Marks LiteLLM's retry functions once they step aside for the governor.
_STEPS_ASIDE = "_governor_steps_aside"


def _own_retries(kwargs: Mapping[str, Any], *, is_async: bool) -> int:
    """The retries LiteLLM would make around this call, for the governor to
    make instead; 0 where it leaves them to LiteLLM.

    Read as LiteLLM's ``@client`` wrapper reads them: the call's
    ``num_retries``, else ``litellm.num_retries`` (a sync call's ``0`` falls
    back to the global too, an async one's does not). A call LiteLLM's
    Router makes (its metadata names a ``model_group``) is left alone: the
    Router retries by calling again, each attempt governed. So is a call
    with a ``retry_policy``, which LiteLLM applies per error type.
    """
    given = kwargs.get("num_retries")
    if is_async:
        wanted = litellm.num_retries if given is None else given
    else:
        wanted = given or litellm.num_retries
    if not wanted or isinstance(wanted, bool) or not isinstance(wanted, int):
        return 0  # most calls: no retries asked for
    buckets = (kwargs.get("metadata"), kwargs.get("litellm_metadata"))
    if kwargs.get("retry_policy") or any(
        isinstance(bucket, Mapping) and "model_group" in bucket for bucket in buckets
    ):
        return 0
    return max(wanted, 0)


def _retryable(error: BaseException) -> bool:
    """True for an error LiteLLM retries (``openai.APIError``, its timeout
    and connection errors: LiteLLM's own errors derive from them), never for
    a governor refusal, in whatever error it was raised, nor for a failure
    after LiteLLM's agentic follow-up rounds were served (sent again, they
    would be paid again)."""
    import openai  # LiteLLM's own dependency

    if any(isinstance(cause, GovernorError) for cause in _causes(error)):
        return False
    try:
        from litellm.litellm_core_utils.agentic_followup_failure import (
            is_agentic_followup_failure,
        )
    except ImportError:  # an older LiteLLM, without follow-up rounds
        pass
    else:
        if is_agentic_followup_failure(error):
            return False
    return isinstance(
        error, (openai.APIError, openai.Timeout, openai.APIConnectionError)
    )


# The waits between governed num_retries attempts, in seconds (as the
# OpenAI SDK waits between its own retries).
_RETRY_FIRST_S = 0.5
_RETRY_MOST_S = 8.0
_RETRY_AFTER_MOST_S = 60.0


def _retry_plan(kwargs: Mapping[str, Any], retries: int) -> dict[str, Any]:
    """tenacity's settings for ``retries`` retries, waiting as the OpenAI
    SDK's own retries (which LiteLLM's sent ``max_retries=num_retries``) do:
    the provider's ``Retry-After`` when it gives one (60 s at most), else an
    exponential backoff from 0.5 s to 8 s with some jitter."""
    import tenacity

    from governor.cascade._classify import retry_after_s

    def wait(state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        asked = None if error is None else retry_after_s(error)
        if asked is not None:
            return min(asked, _RETRY_AFTER_MOST_S)
        doubled = _RETRY_FIRST_S * 2.0 ** min(state.attempt_number - 1, 16)
        return float(
            min(doubled, _RETRY_MOST_S) + random.uniform(0, _RETRY_FIRST_S / 2)
        )

    def before_sleep(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        logger.info(
            "%s failed (%s); retrying it (retry %d of %d, num_retries)",
            kwargs.get("model"),
            type(error).__name__,
            state.attempt_number,
            retries,
        )

    return {
        "stop": tenacity.stop_after_attempt(retries + 1),
        "retry": tenacity.retry_if_exception(_retryable),
        "wait": wait,
        "before_sleep": before_sleep,
        "reraise": True,
    }


def _attempt_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """One attempt's arguments: no ``num_retries``, so LiteLLM neither
    retries nor sets the SDK's ``max_retries`` from it (the governor's 0,
    or the caller's own ``max_retries``, is sent)."""
    return {k: v for k, v in kwargs.items() if k != "num_retries"}


def _retried(
    complete: Callable[[dict[str, Any]], tuple[Any, Decimal]],
    kwargs: dict[str, Any],
) -> Any:
    """``complete(kwargs)``'s answer, with LiteLLM's retries made here.

    LiteLLM's ``num_retries`` retries inside one call (its ``@client``
    wrapper calls ``completion_with_retries``, and the SDK is sent
    ``max_retries=num_retries``): requests no budget held and no charge
    counted. Here each attempt is a governed call, reserved and charged
    (a failed one as :func:`_failed` says), and retried on the errors
    LiteLLM retries (:func:`_retryable`), never on a refusal. A stream is
    retried only for an error raised before it is returned.
    """
    retries = _own_retries(kwargs, is_async=False)
    if not retries:
        return complete(kwargs)[0]
    import tenacity

    _retries_step_aside()
    token = _RETRYING.set(True)
    try:
        for attempt in tenacity.Retrying(**_retry_plan(kwargs, retries)):
            with attempt:
                return complete(_attempt_kwargs(kwargs))[0]
    finally:
        _RETRYING.reset(token)
    raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover


async def _aretried(
    acomplete: Callable[[dict[str, Any]], Any], kwargs: dict[str, Any]
) -> Any:
    """:func:`_retried` for ``acompletion``."""
    retries = _own_retries(kwargs, is_async=True)
    if not retries:
        return (await acomplete(kwargs))[0]
    import tenacity

    _retries_step_aside()
    token = _RETRYING.set(True)
    try:
        async for attempt in tenacity.AsyncRetrying(**_retry_plan(kwargs, retries)):
            with attempt:
                return (await acomplete(_attempt_kwargs(kwargs)))[0]
    finally:
        _RETRYING.reset(token)
    raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover


def _retries_step_aside() -> None:
    """Make LiteLLM's ``completion_with_retries`` and its async form step
    aside inside a governed call whose retries the governor makes.

    LiteLLM's wrapper still retries an attempt sent without ``num_retries``
    while ``litellm.num_retries`` is set; there, the stand-in raises the
    attempt's own error instead, for the governor to retry. Everywhere else
    it calls LiteLLM's function as it is.
    """
    if not litellm.num_retries:
        return
    with Instrumentation._lock:
        for name in ("completion_with_retries", "acompletion_with_retries"):
            function = getattr(litellm, name, None)
            if function is None or getattr(function, _STEPS_ASIDE, False):
                continue
            stand_in = _stepping_aside(function)
            setattr(stand_in, _STEPS_ASIDE, True)
            setattr(litellm, name, stand_in)


def _stepping_aside(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function``, raising the error being handled (the failed attempt's)
    when called inside a governed call whose retries the governor makes."""
    if inspect.iscoroutinefunction(function):

        @functools.wraps(function)
        async def astep_aside(*args: Any, **kwargs: Any) -> Any:
            failure = sys.exc_info()[1]
            if failure is not None and _RETRYING.get() and _inside():
                raise failure
            return await function(*args, **kwargs)

        return astep_aside

    @functools.wraps(function)
    def step_aside(*args: Any, **kwargs: Any) -> Any:
        failure = sys.exc_info()[1]
        if failure is not None and _RETRYING.get() and _inside():
            raise failure
        return function(*args, **kwargs)

    return step_aside


def _request(kwargs: Mapping[str, Any]) -> CallRequest:
    model = str(kwargs["model"])
    messages = _sent_messages(kwargs, model)
    _check_stream_options(kwargs.get("stream_options"))
    max_tokens = _largest(kwargs, "max_tokens", "max_completion_tokens")
    extra = {k: kwargs[k] for k in _PROMPT_PARTS if k in kwargs} or None

    def count() -> int:
        return count_prompt_tokens(model, messages, extra)

    return CallRequest(
        model=model,
        messages=messages,
        max_output_tokens=max_tokens,
        stream=bool(kwargs.get("stream")),
        count_prompt_tokens=count if countable_prompt(messages) else None,
        extra_prompt=extra,
        parent_span=_parent_span(),
        attribution=_metadata_attribution(kwargs.get("metadata")),
        choices=1 if (n := _largest(kwargs, "n", "best_of")) is None else n,
        provider=_provider(kwargs),
        skippable=_SKIPPABLE.get(),
        **_pricing(kwargs),
    )


def _pricing(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """How a call is priced: the prices it sets (:func:`_call_prices`), or,
    for an Azure deployment that sets none, the ``base_model`` it is priced
    as from the price map (a deployment's name is any name its owner chose,
    so the map's row for it, if any, says nothing of its price)."""
    if _DEPLOYMENT_KWARGS.isdisjoint(kwargs) or _provider(kwargs) not in _AZURE:
        return {"prices": _call_prices(kwargs)}
    if _PRICE_KWARGS.isdisjoint(kwargs) and not _deployment_prices(kwargs):
        found = _base_model_entry(kwargs)
        if found is not None:
            return {"prices": None, "price_as": found[0]}
    return {"prices": _call_prices(kwargs)}


_AZURE = frozenset({"azure", "azure_ai"})


def _sent_messages(kwargs: Mapping[str, Any], model: str) -> list[Any]:
    """The messages to reserve and count: ``messages``, or those in
    ``extra_body`` where they are the larger prompt.

    ``extra_body`` is merged into the body LiteLLM sends, so messages there
    replace the prompt the server reads; which one wins depends on the
    route, so the larger (by its byte bound) is taken.
    """
    messages = list(kwargs["messages"])
    if "extra_body" not in kwargs:
        return messages  # most calls
    body = kwargs.get("extra_body")
    other = body.get("messages") if isinstance(body, Mapping) else None
    if not isinstance(other, list | tuple) or not other:
        return messages
    if not all(isinstance(m, Mapping) for m in other):
        return messages
    size = functools.partial(prompt_byte_bound, extra=None, model=model)
    return list(other) if size(other) > size(messages) else messages


# Providers LiteLLM places models at, by model and API base (bounded).
_PROVIDERS: dict[tuple[str, object], str] = {}
_PROVIDER_MEMORY = 1024


def _provider(kwargs: Mapping[str, Any]) -> str | None:
    """The provider LiteLLM sends the call to, so that it is priced as
    ``provider/model`` (an override keyed that way prices a bare name too).

    The provider the call names (``custom_llm_provider``), else the one
    ``litellm.get_llm_provider`` places the model at, looked up once per
    model and API base. A model LiteLLM cannot place (its call fails the
    same way) is priced as written, and asked about again next time: a model
    registered later may be placed then.
    """
    named = kwargs.get("custom_llm_provider")
    if named:
        return str(named)
    model = kwargs.get("model")
    if not isinstance(model, str):
        return None
    base = kwargs.get("api_base") or kwargs.get("base_url")
    key = (model, base)
    found = _PROVIDERS.get(key)
    if found is None:
        try:
            with _no_banner():
                found = str(litellm.get_llm_provider(model=model, api_base=base)[1])
        except Exception:  # LiteLLM raises its own errors (and others) here
            return None
        if len(_PROVIDERS) >= _PROVIDER_MEMORY:
            _PROVIDERS.clear()
        _PROVIDERS[key] = found
    return found


def _price_kwargs() -> frozenset[str]:
    """The price keywords LiteLLM honours on a call that the governor reads."""
    try:
        from litellm.types.utils import CustomPricingLiteLLMParams
    except ImportError:  # a LiteLLM without per-call pricing types
        return CALL_PRICE_NAMES
    fields = getattr(CustomPricingLiteLLMParams, "model_fields", None)
    if not isinstance(fields, Mapping):
        return CALL_PRICE_NAMES
    return frozenset(name for name in fields if is_call_price(name))


_PRICE_KWARGS = _price_kwargs()


def _call_prices(kwargs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The prices a call sets for itself, as LiteLLM reads them; None if none.

    A Router deployment's prices (its ``litellm_params`` or ``model_info``)
    are registered in ``litellm.model_cost`` under the deployment's id,
    which the Router puts in the call's metadata; prices given on the call
    itself (the Router passes ``litellm_params`` on) win over them. A call
    that sets no prices and names a ``base_model`` (an Azure deployment's
    model) is priced as that model, as LiteLLM prices it.
    """
    own = None
    if not _PRICE_KWARGS.isdisjoint(kwargs):
        own = {k: v for k, v in kwargs.items() if k in _PRICE_KWARGS and v is not None}
    if _DEPLOYMENT_KWARGS.isdisjoint(kwargs):
        return own or None  # no Router deployment or base model to look up
    deployment = _deployment_prices(kwargs)
    if deployment:
        own = {**deployment, **(own or {})}
    return own or _base_model_prices(kwargs)


# Where a call names its Router deployment or its base model.
_DEPLOYMENT_KWARGS = frozenset(
    {"metadata", "litellm_metadata", "base_model", "model_info"}
)


def _deployment_prices(kwargs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The prices LiteLLM registered for the Router deployment making a call.

    The deployment's ``model_info`` (in the call's metadata) names its id;
    the entry ``litellm.model_cost`` holds under that id is taken only when
    it is the Router's registration of that deployment: it carries the id
    (a price map row does not), names the call's provider if it names one,
    and has the prices the deployment's ``model_info`` states. Like LiteLLM,
    a deployment that states no prices is priced as its model: an id that
    happens to name another model (``gpt-4o-mini``, an embedding model)
    does not price the call.
    """
    info = _model_info(kwargs, "id")
    if info is None:
        return None
    ident = info["id"]
    stated = call_price_fields(info)
    entry = litellm.model_cost.get(ident) if isinstance(ident, str) else None
    if not stated or not isinstance(entry, Mapping) or entry.get("id") != ident:
        return None
    registered = call_price_fields(entry)
    if any(registered.get(k) != v for k, v in stated.items()):
        return None
    provider = entry.get("litellm_provider")
    if provider is not None and provider != _provider(kwargs):
        return None
    return registered


def _model_info(kwargs: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    """The deployment ``model_info`` that gives ``name``, where LiteLLM reads
    it: the call's ``litellm_metadata``, then its ``metadata``."""
    for where in ("litellm_metadata", "metadata"):
        metadata = kwargs.get(where)
        if not metadata or not isinstance(metadata, Mapping):  # most calls: none
            continue
        info = metadata.get("model_info")
        if isinstance(info, Mapping) and info.get(name) is not None:
            return info
    return None


def _base_model(kwargs: Mapping[str, Any]) -> str | None:
    """The ``base_model`` a call is priced as, where LiteLLM reads it: the
    call's own ``base_model`` (a Router passes a deployment's on), then the
    ``model_info`` given on the call, then its metadata's ``model_info`` (a
    deployment's ``model_info``)."""
    given = kwargs.get("base_model")
    if given is None:
        info = kwargs.get("model_info")
        given = info.get("base_model") if isinstance(info, Mapping) else None
    if given is None:
        for where in ("metadata", "litellm_metadata"):
            metadata = kwargs.get(where)
            info = metadata.get("model_info") if isinstance(metadata, Mapping) else None
            if isinstance(info, Mapping) and info.get("base_model") is not None:
                given = info["base_model"]
                break
    return given if isinstance(given, str) and given else None


def _base_model_prices(kwargs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The prices of the call's ``base_model`` in ``litellm.model_cost``
    (under the call's provider first, as LiteLLM looks it up); None when it
    names none or LiteLLM's map does not price it."""
    found = _base_model_entry(kwargs)
    return None if found is None else found[1]


def _base_model_entry(kwargs: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The price map's name and prices for the call's ``base_model``."""
    base = _base_model(kwargs)
    if base is None:
        return None
    provider = _provider(kwargs)
    names = [base]
    if provider and not base.startswith(f"{provider}/"):
        names.insert(0, f"{provider}/{base}")
    if "/" in base:
        names.append(base.split("/", 1)[1])
    for name in names:
        entry = litellm.model_cost.get(name)
        if isinstance(entry, Mapping):
            prices = call_price_fields(entry)
            if any(k in prices for k in _PRICING_FIELDS):
                return name, prices
    return None


# Prices without which an entry prices nothing of a call.
_PRICING_FIELDS = (
    "input_cost_per_token",
    "output_cost_per_token",
    "tiered_pricing",
    "cost_per_second",
    "input_cost_per_second",
    "output_cost_per_second",
)


def _check_stream_options(options: object) -> None:
    """Refuse stream options the governor could not add usage to, before
    the call is admitted (a hold taken then would be left behind)."""
    if options is None or isinstance(options, Mapping):
        return
    raise ConfigError(
        f"stream_options must be a mapping such as {{'include_usage': True}}, "
        f"got {type(options).__name__} {options!r}"
    )


def _largest(kwargs: Mapping[str, Any], *names: str) -> Any:
    """The largest value given for ``names``, here or in ``extra_body``.

    The provider obeys one of them (which depends on the model and the SDK),
    so the ceiling reserved is the largest; a value that is not a whole
    number is returned as it is, for the request check to refuse.
    """
    body = kwargs.get("extra_body")
    if body is None and len(names) == 1:  # the usual case, cheaply
        return kwargs.get(names[0])
    places = (kwargs, body) if isinstance(body, Mapping) else (kwargs,)
    given = [p[n] for p in places for n in names if p.get(n) is not None]
    if len(given) < 2:
        return given[0] if given else None
    wrong = [v for v in given if not isinstance(v, int) or isinstance(v, bool)]
    return wrong[0] if wrong else max(given)


def _parent_span() -> Any:
    """The graph step this call runs in, when a governed graph runs it."""
    task = current_task()
    resolver = task.extras.get("parent_span") if task else None
    return resolver() if resolver else None


def _metadata_attribution(metadata: Any) -> dict[str, str] | None:
    """Scope values from LiteLLM's ``metadata={"team": ...}``, if any.

    Raises:
        PolicyError: ``metadata`` is given but is not a mapping (a string
            such as ``"team=a"`` would be dropped, and LiteLLM fails on it).
    """
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise PolicyError(
            f"metadata must be a dict such as {{'team': 'search'}}, got "
            f"{type(metadata).__name__} {metadata!r}"
        )
    found = Attribution.values_in(metadata)
    return found or None


def _cascade_attribution(kwargs: Mapping[str, Any]) -> Attribution | None:
    """What a cascade's task is charged to: its ``metadata``'s scope values."""
    named = _metadata_attribution(kwargs.get("metadata"))
    return Attribution(**named) if named else None


def _escalated(kwargs: dict[str, Any]) -> dict[str, Any]:
    """After a loop verdict with action 'escalate': one retry, stronger, hinted.

    The hint goes into the messages and the call goes to ``Loops.escalate_to``,
    or to the tier after the current model in the policy's cascade. A cascade
    attempt is never rewritten (its tier's model is the one priced, checked
    and reported): a cascade run takes the hint itself when it starts (see
    :func:`_cascade_hinted`), and a verdict reached during a run waits for
    the task's next call.
    """
    if _SKIPPABLE.get():
        return kwargs
    task = current_task()
    watch = task.extras.get("loop_watch") if task else None
    hint = watch.take_hint() if watch is not None else None
    if not hint or task is None:
        return kwargs
    hinted = {**kwargs, "messages": [*kwargs["messages"], _hint_message(hint)]}
    stronger = task.policy.loops.escalate_to or _next_tier(task, str(kwargs["model"]))
    if stronger:
        hinted["model"] = stronger
    return hinted


def _cascade_hinted(request: dict[str, Any]) -> dict[str, Any]:
    """A cascade run consumes a pending loop escalation: the hint goes into
    the messages every tier is sent, and no tier's model is changed (the
    cascade's own tiers are the stronger models it escalates to)."""
    task = current_task()
    watch = task.extras.get("loop_watch") if task else None
    hint = watch.take_hint() if watch is not None else None
    if not hint:
        return request
    return {**request, "messages": [*request["messages"], _hint_message(hint)]}


def _hint_message(hint: str) -> dict[str, str]:
    return {"role": "system", "content": hint}


def _next_tier(task: Any, model: str) -> str | None:
    cascade = task.policy.cascade
    if cascade is None:
        return None
    models = [tier.model for tier in cascade.tiers]
    if model in models and models.index(model) + 1 < len(models):
        return str(models[models.index(model) + 1])
    return None


def _cache_request(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A call's arguments as the response cache keys them: its model, its
    messages and every other parameter."""
    return {
        "model": str(kwargs["model"]),
        "messages": kwargs["messages"],
        "params": {k: v for k, v in kwargs.items() if k not in ("model", "messages")},
    }


def _refused(error: GovernorError, governor: Governor) -> None:
    """Ready a governed call's refusal to be raised: not retried by the
    Router, marked as ``governor``'s, kept for a ``raise_refusals`` block."""
    _not_retried(error)
    _raised_by(error, governor)
    note_refusal(error)


# What LiteLLM's Router reads on a failed attempt's error as the retries it
# may make (see _not_retried).
_RETRIES_ATTRIBUTE = "num_retries"


def _not_retried(error: GovernorError) -> None:
    """Mark a governor refusal as one LiteLLM's Router must not retry.

    The Router reads an error's ``num_retries`` as the retries it allows
    (it stamps a deployment's own setting there): 0 raises the refusal at
    once, with no backoff, instead of asking again for the same budget. Its
    fallbacks still run, each a governed call of its own.
    """
    with contextlib.suppress(AttributeError):  # a type that takes no attributes
        setattr(error, _RETRIES_ATTRIBUTE, 0)


# Where a governed call's refusal names the governor that raised it, so an
# instrumentation finds its own refusal inside an error LiteLLM wrapped it in.
_RAISED_BY_ATTRIBUTE = "_governor_raised_by"


def _raised_by(error: GovernorError, governor: Governor) -> None:
    """Mark a refusal as raised by ``governor`` (kept by id, not referenced)."""
    with contextlib.suppress(AttributeError):  # a type that takes no attributes
        setattr(error, _RAISED_BY_ATTRIBUTE, id(governor))


def _refusal_in(error: BaseException, governor: Governor) -> GovernorError | None:
    """The refusal by ``governor`` that ``error`` was raised from, if any.

    LiteLLM's Responses bridge raises whatever its chat completion raised as
    its own ``APIConnectionError``; the refusal is then in its chain.
    """
    for cause in _causes(error):
        if isinstance(cause, GovernorError) and getattr(
            cause, _RAISED_BY_ATTRIBUTE, None
        ) == id(governor):
            return cause
    return None


class _NoRetries(int):
    """Zero SDK retries in a form LiteLLM's OpenAI embedding path keeps.

    That path reads ``max_retries or litellm.DEFAULT_MAX_RETRIES``, which
    turns a plain 0 into 2 (three requests for one reserved call). This
    zero is truthy, so it passes through, and the OpenAI client is built (or
    set) with no retries; as a number it is 0 everywhere.
    """

    def __bool__(self) -> bool:
        return True


_NO_RETRIES = _NoRetries(0)


def _no_sdk_retries(kwargs: dict[str, Any], *, embedding: bool = False) -> None:
    """Turn the provider SDK's own retries off unless the call asks for them.

    The OpenAI client retries a timeout twice: requests the governor never
    reserved. Retry around the governed call instead, where each attempt is
    held and charged. An embedding is sent :data:`_NO_RETRIES`, also in
    place of a caller's own ``max_retries=0``, which LiteLLM would turn
    into 2 (see :class:`_NoRetries`).
    """
    given = kwargs.get("max_retries")
    if embedding and (given is None or (_is_seconds(given) and given == 0)):
        kwargs["max_retries"] = _NO_RETRIES
    elif given is None:
        kwargs["max_retries"] = 0


def _time_limit(admission: Admission, kwargs: dict[str, Any]) -> None:
    """Send a call priced per second a timeout of ``Policy.max_call_s``.

    Such a call held that much time and is charged the time it runs: left
    to run longer, it would overrun the budgets it was admitted under. Timed
    out, it is charged its hold (see :func:`_failed`). A smaller number the
    caller set is kept; a larger one, or a timeout object, is replaced.
    """
    if not admission.rate.usd_per_second:
        return
    limit = admission.task.policy.max_call_s
    given = kwargs.get("timeout")
    if _is_seconds(given) and 0 < given <= limit:
        return
    kwargs["timeout"] = limit


def _is_seconds(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _asks_for_usage(kwargs: Mapping[str, Any]) -> bool:
    """True when the caller's own ``stream_options`` ask for the usage chunk."""
    options = kwargs.get("stream_options")
    return isinstance(options, Mapping) and options.get("include_usage") is True


def _apply(admission: Admission, kwargs: dict[str, Any]) -> None:
    """Send the ceiling the governor reserved for, and ask streams for usage.

    The usage chunk that a stream then ends with is passed on only to a
    caller that asked for it (see :meth:`_StreamSettler._held_back`).

    ``cache=False`` (the governor's opt-out) is sent in LiteLLM's form, which
    takes only a mapping there; the SDK's retries are off unless the caller
    set ``max_retries``. A call priced per second is sent a timeout of
    ``Policy.max_call_s`` (see :func:`_time_limit`).
    """
    _no_sdk_retries(kwargs)
    _time_limit(admission, kwargs)
    flag = kwargs.get("cache")
    if flag is True:
        del kwargs["cache"]
    elif flag is False:
        kwargs["cache"] = {"no-cache": True, "no-store": True}
    if admission.request.max_output_tokens is None:
        kwargs["max_tokens"] = admission.max_output_tokens
    if kwargs.get("stream"):
        options = dict(kwargs.get("stream_options") or {})
        options["include_usage"] = True
        kwargs["stream_options"] = options


def _result(
    response: Any, request: CallRequest, admission: Admission | None = None
) -> CallResult:
    """What an answer settles at; with its ``admission``, what a local
    count cannot see is charged at the hold (see :func:`settled_usage`)."""
    usage_obj = _usage_of(response)
    reported = read_usage(
        lambda: usage_from_response(usage_obj) if usage_obj is not None else None,
        request.model,
        lambda: usage_obj,
    )
    # The answer's text is counted only when the provider reported no output.
    counts_output = reported is None or reported.completion_tokens <= 0
    usage = settled_usage(
        reported,
        model=request.model,
        messages=request.messages,
        text=_all_output(response) if counts_output else None,
        extra_prompt=request.extra_prompt,
        reported_total=lambda: total_tokens_of(usage_obj),
        hold=_held(admission) if admission is not None else None,
    )
    choices = getattr(response, "choices", None) or ()
    reasons = tuple(
        str(reason) for choice in choices if (reason := choice.get("finish_reason"))
    )
    message = getattr(choices[0], "message", None) if choices else None
    return CallResult(
        usage=usage,
        response_model=getattr(response, "model", None),
        finish_reasons=reasons,
        output_text=_judged(message),
    )


def _held(admission: Admission) -> tuple[int, int]:
    """A call's hold as (prompt tokens, output tokens), for what a local
    count cannot see (see :func:`settled_usage`)."""
    output = admission.max_output_tokens * admission.request.choices
    return admission.hold_tokens - output, output


def _streamed_total(chunks: Sequence[Any]) -> int:
    """The ``total_tokens`` of the last chunk that carries a usage, or 0."""
    return total_tokens_of(_streamed_usage(chunks))


def _streamed_usage(chunks: Sequence[Any]) -> Any:
    """The usage of the last chunk that carries one, as sent, or None."""
    for chunk in reversed(chunks):
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            return usage
    return None


def _usage_of(response: Any) -> Any:
    """``response.usage``, or None.

    LiteLLM's ModelResponse keeps ``usage`` among its Pydantic extra fields,
    which ``getattr`` reaches only after a failed lookup (over a
    microsecond); it is read from there when nothing else would answer first.
    """
    extra = getattr(response, "__pydantic_extra__", None)
    if (
        isinstance(extra, dict)
        and "usage" in extra
        and _usage_is_extra(type(response))
        and "usage" not in getattr(response, "__dict__", ())
    ):
        return extra["usage"]
    return getattr(response, "usage", None)


def _usage_is_extra(cls: type) -> bool:
    """True when no class of ``cls`` defines ``usage`` (so only an instance's
    own fields, or its extras, can hold it); looked up once per class."""
    known = _USAGE_IS_EXTRA.get(cls)
    if known is None:
        known = not any("usage" in vars(klass) for klass in cls.__mro__)
        _USAGE_IS_EXTRA[cls] = known
    return known


# Response classes seen, and whether ``usage`` can only be an extra field.
_USAGE_IS_EXTRA: dict[type, bool] = {}


def _judged(message: Any) -> str | None:
    """The output the loop guard compares: the first answer's text, or its
    text and tool calls.

    An agent that writes the same preamble before each new tool call is
    making progress: an answer that calls tools is judged by its calls and
    their results (the repetition rules), not by its words, and only the
    same-call rule compares the answer itself, calls included.
    """
    content = getattr(message, "content", None)
    text = content if isinstance(content, str) else None
    calls = getattr(message, "tool_calls", None)
    return tool_call_output(text, calls) if calls else text


def _all_output(response: Any) -> str | None:
    """Everything the answer generated: each choice's text and tool calls.

    Only used to count the output of an answer that reports no usage.
    """
    parts: list[str] = []
    for choice in getattr(response, "choices", None) or ():
        message = getattr(choice, "message", None)
        content = getattr(message, "content", None)
        if isinstance(content, str):
            parts.append(content)
        for call in getattr(message, "tool_calls", None) or ():
            function = getattr(call, "function", None)
            parts.append(str(getattr(function, "name", "") or ""))
            parts.append(str(getattr(function, "arguments", "") or ""))
    return "\n".join(p for p in parts if p) or None


# -- cache ---------------------------------------------------------------


def _skips_cache(kwargs: Mapping[str, Any], request: CallRequest) -> bool:
    """Requests the cache neither serves nor stores, before any key is made.

    ``n`` above 1 asks for several answers, and a cache keeps one; LiteLLM's
    ``caching=False`` turns its own cache off for the call, and so this one.
    A stream LiteLLM's Responses bridge asked for reads LiteLLM's own stream
    machinery (its logging object, the provider's raw stream), which a
    replayed answer has only the shape of.
    """
    return (
        request.choices != 1
        or kwargs.get("caching") is False
        or _bridged_stream(kwargs)
    )


def _message(response: Any) -> dict[str, Any] | None:
    """The first choice's message as a plain dict, or None if it has none.

    None too unless every choice finished with "stop": an answer cut by
    ``max_tokens`` ("length") or by a filter is not one to serve again.
    """
    choices = getattr(response, "choices", None) or ()
    if any(getattr(c, "finish_reason", None) != "stop" for c in choices):
        return None
    message = getattr(choices[0], "message", None) if choices else None
    if message is None or getattr(message, "tool_calls", None):
        return None  # answers that call tools depend on the tools' results
    content = getattr(message, "content", None)
    if not isinstance(content, str):
        return None
    return {"role": "assistant", "content": content}


def _cached_response(
    hit: Any, kwargs: Mapping[str, Any], is_async: bool = False
) -> Any:
    """LiteLLM's own response types, built from a cache hit."""
    from governor.cache import areplay_chunks, replay_chunks

    if kwargs.get("stream"):
        usage = _asks_for_usage(kwargs)  # a last chunk of zero usage, if asked
        options = kwargs.get("stream_options")
        if is_async:
            chunks = _aiter_chunks(areplay_chunks(hit, include_usage=usage))
            return _Replay(chunks, hit.model, options)
        return _Replay(
            (
                litellm.ModelResponseStream(**chunk)
                for chunk in replay_chunks(hit, include_usage=usage)
            ),
            hit.model,
            options,
        )
    response = litellm.ModelResponse(
        choices=[{"index": 0, "message": hit.message, "finish_reason": "stop"}],
        model=hit.model,
        usage={"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    )
    response._hidden_params["cache_hit"] = True
    response._hidden_params[_CACHED_USAGE] = {
        "prompt_tokens": hit.saved_input_tokens,
        "completion_tokens": hit.saved_output_tokens,
    }
    return response


class _Replay(litellm.CustomStreamWrapper):  # type: ignore[misc]  # litellm is untyped
    """A cached answer replayed as a stream, in LiteLLM's own stream type.

    It is a ``litellm.CustomStreamWrapper`` like every governed stream (the
    only stream type the Router wraps and the Responses bridge takes), made
    with LiteLLM's constructor, so it has the attributes LiteLLM's callers
    read: ``model``, ``response_id`` (known from the first chunk on),
    ``custom_llm_provider`` (None: no provider answered), ``chunks`` (the
    chunks yielded so far, for ``litellm.stream_chunk_builder``) and hidden
    params with ``cache_hit``. Reading yields the replayed chunks as they
    are (sync or async, as made), with no LiteLLM logging: nothing was sent.
    """

    completion_stream: Any
    response_id: str | None
    chunks: list[Any]

    def __init__(
        self, chunks: Any, model: str, stream_options: Mapping[str, Any] | None
    ) -> None:
        super().__init__(
            completion_stream=chunks,
            model=model,
            logging_obj=_ReplayLogging(),
            custom_llm_provider=None,
            stream_options=dict(stream_options) if stream_options else None,
        )
        self._hidden_params["cache_hit"] = True

    def _seen(self, chunk: Any) -> Any:
        if self.response_id is None:
            self.response_id = getattr(chunk, "id", None)
        self.chunks.append(chunk)
        return chunk

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self.completion_stream is None:  # closed
            raise StopIteration
        return self._seen(next(self.completion_stream))

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        if self.completion_stream is None:  # closed
            raise StopAsyncIteration
        return self._seen(await anext(self.completion_stream))

    def __enter__(self) -> _Replay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> _Replay:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def close(self) -> None:
        """Stop replaying."""
        chunks, self.completion_stream = self.completion_stream, None
        closer = getattr(chunks, "close", None)
        if closer is not None:
            closer()

    async def aclose(self) -> None:
        """Stop replaying (async)."""
        chunks, self.completion_stream = self.completion_stream, None
        closer = getattr(chunks, "aclose", None)
        if closer is not None:
            await closer()
        elif (close := getattr(chunks, "close", None)) is not None:
            close()  # a sync replay closed from async code

    def __del__(self) -> None:
        """Nothing: a replay holds no connection and no call to settle."""


class _ReplayLogging:
    """What LiteLLM's stream constructor (and the Router, which builds its
    own stream around this one) reads of a call's logging object: a replay
    made no call, so there is nothing in it."""

    def __init__(self) -> None:
        self.model_call_details: dict[str, Any] = {}
        self.optional_params: dict[str, Any] = {}


async def _aiter_chunks(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[Any]:
    async for chunk in chunks:
        yield litellm.ModelResponseStream(**chunk)


# -- cascades ------------------------------------------------------------

# Where a response served from the cache keeps the tokens of the call that
# first bought it (its own usage is zero: nothing was spent again).
_CACHED_USAGE = "governor_cached_usage"


def _rates(governor: Governor) -> RateCard:
    """The prices of the current task (its pricing override), else the governor's."""
    task = current_task()
    return governor.rate_card_for(task.policy if task else governor.policy)


def _premium_saving(
    governor: Governor, cascade: Any, result: Any, request: Mapping[str, Any]
) -> Decimal:
    """What the accepted answer would have cost on the last tier, less what
    the cascade spent on every attempt.

    The last tier is priced as its own call would be: under its provider,
    with the prices its ``params`` (or the request) set; when the last tier
    gave the answer, what its call cost is the measure. A last tier priced
    per second is priced for as long as the accepted attempt took. An answer
    returned although no check passed (``on_all_rejected="return"``) saved
    nothing: the run adds minus what it spent, as a run that found no answer
    does. An answer served from the cache is priced by the tokens of the call
    that first bought it: the premium call it stands in for was avoided all
    the same.
    """
    spent: Decimal = result.cost_usd
    if cascade is None:
        return Decimal(0)
    if not result.accepted:
        return -spent
    paid: Decimal | None = result.answer.cost_usd
    if result.tier.name == cascade.tiers[-1].name and paid:
        return paid - spent  # the last tier answered: its call is the measure
    try:
        usage = _answer_usage(result.answer.raw)
        if usage is None:
            return Decimal(0)
        last = _tier_kwargs(cascade.tiers[-1], request)
        name = priced_name(str(last["model"]), _provider(last))
        premium = _rates(governor).rate(name, _call_prices(last))
        duration = _accepted_seconds(result) if premium.usd_per_second else None
        would_cost = premium.cost(usage, duration_s=duration).usd
    except GovernorError:
        return Decimal(0)
    return would_cost - spent


def _accepted_seconds(result: Any) -> float | None:
    """How long the accepted attempt took, in seconds; None if not timed."""
    for attempt in reversed(result.attempts):
        answered = attempt.outcome in ("accepted", "rejected")  # a cached one too
        if answered and attempt.tier == result.tier.name:
            started: int | None = attempt.started_ns
            ended: int | None = attempt.ended_ns
            if started is None or ended is None:
                return None
            return max(ended - started, 0) / 1e9
    return None


def _answer_usage(response: Any) -> Usage | None:
    """The tokens an answer took to make: a cache hit's are the original call's.

    A response served from the cache reports zero usage (nothing was spent
    again); the tokens it was first bought with ride in its hidden params.
    """
    hidden = getattr(response, "_hidden_params", None) or {}
    usage_obj = hidden.get(_CACHED_USAGE) or getattr(response, "usage", None)
    return None if usage_obj is None else usage_from_response(usage_obj)


def _tier_kwargs(tier: Any, request: Mapping[str, Any]) -> dict[str, Any]:
    """One tier's request: shared arguments, the tier's own, no SDK retries."""
    return {
        **request,
        **thawed(tier.params),
        "model": tier.model,
        "num_retries": 0,
        "max_retries": 0,
    }


def _tier_rest_key(tier: Any, request: Mapping[str, Any]) -> str:
    """Where and with what key the tier is called: a key's failure rests only it."""
    from governor.cascade import cooldown_key

    return cooldown_key(tier.model, _tier_kwargs(tier, request))


def _tier_tokens(tier: Any, request: Mapping[str, Any]) -> int:
    """The prompt and the output ceiling this tier is sent (its own params win)."""
    extra = {k: request[k] for k in _PROMPT_PARTS if k in request}
    prompt = count_prompt_tokens(tier.model, request["messages"], extra)
    ceiling = dict(tier.params).get("max_tokens") or request.get("max_tokens")
    return prompt + int(ceiling or 0)


def _answer(response: Any, cost: Decimal) -> Any:
    from governor.cascade import Answer

    choices = list(getattr(response, "choices", None) or [])
    texts = [str(c.message.content or "") for c in choices]
    return Answer(
        text=texts[0] if texts else "",
        model=str(getattr(response, "model", "") or ""),
        cost_usd=cost,
        samples=tuple(texts[1:]),
        tool_calls=_tool_calls(choices[0] if choices else None),
        raw=response,
    )


def _from_cache(answer: Any) -> bool:
    """True for a tier's answer served from a cache: nothing was sent."""
    hidden = getattr(answer.raw, "_hidden_params", None) or {}
    return bool(hidden.get("cache_hit"))


def _tool_calls(choice: Any) -> tuple[Any, ...]:
    """The first choice's tool calls, for the checks to judge."""
    from governor.cascade import ToolCall

    message = getattr(choice, "message", None)
    return tuple(
        ToolCall(
            name=str(getattr(function, "name", "") or ""),
            arguments=str(getattr(function, "arguments", "") or ""),
        )
        for call in getattr(message, "tool_calls", None) or ()
        if (function := getattr(call, "function", None)) is not None
    )


def _recheck(
    cache: Any, lookup: Any, run: _RunAnswers | None = None
) -> Callable[[], Any] | None:
    """Look again, once the call waited for a slot, for an answer another
    call stored meanwhile (see :meth:`Governor.begin_call`); a cascade tier
    is not served an answer its ``run`` was served already."""
    if cache is None or lookup is None:
        return None

    def again() -> Any:
        found = cache.recheck(lookup)
        if not found.hit or (run is not None and not run.fresh(found)):
            return None
        return found

    return again


def _last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return str(message["content"])
    return ""


# -- streams -------------------------------------------------------------

# A stream closed after its answer's finish reason is read on this far, for
# the usage chunk the provider sends last (right after the finish reason):
# a few chunks (LiteLLM's usage chunk and its end), for at most this long.
_TAIL_CHUNKS = 4
_TAIL_SECONDS = 1.0

# What reading past a stream's last chunk gives, instead of StopIteration.
_END = object()


def _no_stream_events(inner: Any, model: str) -> Exception:
    """LiteLLM's error for a 200 stream answer that held no stream event."""
    headers = getattr(inner, "_response_headers", None)
    kind = headers.get("content-type") if isinstance(headers, Mapping) else None
    sent = f" (Content-Type: {kind})" if kind else ""
    error: Exception = litellm.InternalServerError(
        message=(
            f"Empty or invalid response from LLM endpoint: the stream's answer"
            f"{sent} held no server-sent event the client could read, so no "
            "answer arrived. Check that api_base points at the model server "
            "and that no proxy in between answers with its own page."
        ),
        llm_provider=str(getattr(inner, "custom_llm_provider", None) or ""),
        model=model,
    )
    return error


class _TailReader:
    """Reads a sync stream's last chunks on a helper thread, within a time.

    A read blocks until the provider sends, so the reads run on a thread the
    closing caller waits for at most ``_TAIL_SECONDS``. A thread still
    reading then owns the stream: it closes it when its read returns.
    """

    def __init__(self, source: Iterator[Any], close: Callable[[], None]) -> None:
        self.chunks: list[Any] = []
        self.ended = False
        self._source = source
        self._close = close
        self._lock = threading.Lock()
        self._done = False
        self._late = False

    def read(self) -> bool:
        """Read the tail; True when it is the caller's to use (and to close)."""
        context = contextvars.copy_context()
        thread = threading.Thread(
            target=context.run,
            args=(self._run,),
            name="governor-stream-tail",
            daemon=True,
        )
        thread.start()
        try:
            thread.join(_TAIL_SECONDS)
        finally:
            with self._lock:
                self._late = not self._done
        return not self._late

    def _run(self) -> None:
        try:
            for _ in range(_TAIL_CHUNKS):
                chunk = next(self._source, _END)
                if chunk is _END:
                    self.ended = True
                    break
                self.chunks.append(chunk)
        except Exception:
            logger.debug("could not read a stream's last chunks", exc_info=True)
        finally:
            self._stop()

    def _stop(self) -> None:
        """Done reading; close the stream if the caller no longer waits."""
        with self._lock:
            self._done = True
            late = self._late
        if late:
            logger.debug(
                "a stream's last chunks came after %.1f s; closed late", _TAIL_SECONDS
            )
            self._close()


class _StreamSettler:
    """Collects chunks and turns them into usage at the end of a stream.

    Every chunk is kept for settlement. A chunk with no choices (the usage
    chunk the governor asked for) is held back from a caller whose own
    ``stream_options`` did not ask for usage: code reading
    ``chunk.choices[0]`` would fail on it.
    """

    def __init__(
        self,
        governor: Governor,
        admission: Admission,
        inner: Any,
        saver: _Saver,
        wants_usage: bool,
    ) -> None:
        self.governor = governor
        self.admission = admission
        self.saver = saver
        self.chunks: list[Any] = []
        self.error: BaseException | None = None
        self.complete = False  # read to its end: only then is the answer whole
        self._inner = inner
        self._wants_usage = wants_usage
        self._ceiling = _StreamCeiling(admission)
        admission.task.open_streams[admission.call_id] = self

    def _held_back(self, chunk: Any) -> bool:
        """Keep ``chunk`` for settlement; True if the caller must not get it."""
        self.chunks.append(chunk)
        return not self._wants_usage and not getattr(chunk, "choices", None)

    def _check_answered(self) -> None:
        """Raise when LiteLLM's stream got nothing from the provider.

        LiteLLM keeps every chunk it receives (its ``chunks`` list) before
        handing one on. A 200 whose body holds no stream event at all (an
        HTML page from a proxy, an empty body) leaves that list empty, yet
        LiteLLM ends such a stream quietly with a made-up "stop" chunk. The
        error raised instead is LiteLLM's own for an unreadable answer, so
        the call is charged its hold (see :func:`_unparsed_answer`), as the
        same body is when not streamed.
        """
        received = getattr(self._inner, "chunks", None)
        if isinstance(received, list) and not received:
            raise _no_stream_events(self._inner, self.admission.request.model)

    def _answer_finished(self) -> bool:
        """True when the caller stopped reading after every choice's finish
        reason: only the provider's closing chunks (its usage) are left."""
        if self.admission.settled or self.complete or self.error is not None:
            return False
        finished = _stream_finish_reasons(self.chunks)
        return len(finished) >= self.admission.request.choices

    def _keep_tail(self, tail: Sequence[Any], ended: bool) -> None:
        """Settle as read out when the stream's tail was read to its end.

        A tail that did not end (a bound reached, a read failed or timed
        out) or brought nothing leaves the call as the caller read it.
        """
        if ended and tail:
            self.chunks.extend(tail)
            self.complete = True
        else:
            logger.debug(
                "a stream closed after its finish reason did not end within "
                "%d chunks or %.1f s; it is settled from what was read",
                _TAIL_CHUNKS,
                _TAIL_SECONDS,
            )

    def end(self, result: CallResult) -> None:
        """Settle the call, then store its answer, then give its slots back."""
        with _slots_kept(self.admission, self.saver):
            self.settle(self.governor.end_call(self.admission, result), result)

    def settle(self, cost: Decimal, result: CallResult) -> None:
        """After settling, keep a complete answer in the cache.

        Complete: read to its end, with a "stop" finish (not "length", not
        a stream that ended without one) and no tool calls, which the text
        kept here would leave out.
        """
        message = self._to_cache(result)
        if message is not None:
            self.saver.save(result, cost, message)

    def _to_cache(self, result: CallResult) -> dict[str, Any] | None:
        """The settled stream's answer to keep in the cache, or None."""
        self.admission.task.open_streams.pop(self.admission.call_id, None)
        text = result.output_text
        whole = self.complete and result.error is None and text
        if whole and self.saver.cache is not None and _stopped_plainly(self.chunks):
            return {"role": "assistant", "content": text}
        return None

    def result(self) -> CallResult:
        if not self.chunks and self.error is not None:
            return _failed(self.admission.request, self.error)
        text = "".join(_delta_text(c) for c in self.chunks)
        request = self.admission.request
        reported = None
        if not self._counted_by_litellm():
            reported = read_usage(
                lambda: usage_from_stream_chunks(self.chunks),
                request.model,
                lambda: _streamed_usage(self.chunks),
            )
        output = "".join(part for c in self.chunks for part in _delta_parts(c))
        usage = settled_usage(
            reported,
            model=request.model,
            messages=request.messages,
            text=output,
            extra_prompt=request.extra_prompt,
            reported_total=self._reported_total,
            hold=_held(self.admission),
        )
        model = next(
            (
                getattr(c, "model", None)
                for c in self.chunks
                if getattr(c, "model", None)
            ),
            None,
        )
        return CallResult(
            usage=usage,
            response_model=model,
            finish_reasons=_stream_finish_reasons(self.chunks),
            error=self.error,
            output_text=text or None,
        )

    def _reported_total(self) -> int:
        """The provider's ``total_tokens`` for the stream, or 0.

        LiteLLM's last usage chunk adds the total up again from the two
        sides, so a provider that sent only a total is read from the chunks
        LiteLLM received.
        """
        received = getattr(self._inner, "chunks", None)
        own = _streamed_total(self.chunks)
        if not isinstance(received, list):
            return own
        return max(own, _streamed_total(received))

    def _counted_by_litellm(self) -> bool:
        """True when LiteLLM made the stream's usage up from its own count.

        Asked for usage, LiteLLM's stream wrapper ends every stream read to
        its end with a usage chunk: the provider's numbers or, when none of
        the chunks it received (its ``chunks`` list, which it computes that
        usage from) carried any, its own token count. Such usage is settled
        as missing: counted here and marked estimated.
        """
        received = getattr(self._inner, "chunks", None)
        if not self.complete or not isinstance(received, list):
            return False
        return not any(_carries_usage(chunk) for chunk in received)


def _carries_usage(chunk: Any) -> bool:
    """True when a chunk LiteLLM received carried the provider's usage."""
    usage = getattr(chunk, "usage", None)
    if usage is None:
        hidden = getattr(chunk, "_hidden_params", None)
        usage = hidden.get("usage") if isinstance(hidden, Mapping) else None
    # LiteLLM marks a stream it had no usage for with UnreportedUsage.
    return usage is not None and type(usage).__name__ != "UnreportedUsage"


def _stream_finish_reasons(chunks: Sequence[Any]) -> tuple[str, ...]:
    """Each choice's last finish reason, in choice order (as for an answer)."""
    reasons: dict[int, str] = {}
    for chunk in chunks:
        for position, choice in enumerate(getattr(chunk, "choices", None) or ()):
            reason = getattr(choice, "finish_reason", None)
            index = getattr(choice, "index", None)
            if reason:
                reasons[index if isinstance(index, int) else position] = str(reason)
    return tuple(reasons[index] for index in sorted(reasons))


def _add_saving(governor: Governor, task: Task, usd: Decimal) -> None:
    """Add a cascade run's saving to its task's, and show the task's sum once
    a run has added something (a run that saved exactly nothing sets none)."""
    total = task.add_cascade_saving(usd)
    if usd:
        saved = {attr.CASCADE_SAVED_USD: float(total)}
        governor.telemetry.set_attributes(task.span, saved)


@dataclasses.dataclass(slots=True)
class _RunSpend:
    """What one cascade run's governed calls cost, and whether the run's
    saving is already on its task."""

    meter: SpendMeter
    saving_added: bool = False


@contextlib.contextmanager
def _cascading(governor: Governor) -> Iterator[_RunSpend]:
    """Run a cascade: budget refusals skip tiers, and a stop names its task.

    A tier refused by a budget must not mark the task stopped (the cascade
    goes on), and a cascade's own stop carries the task id as call refusals
    do, and what every governed call of the run cost (a judge's included).
    A run that ended without an answer saved nothing against the premium
    tier and spent what it spent: the task's saving goes down by that much,
    whatever ended it (``CascadeExhausted``, a check that raised, a budget or
    call-limit stop, a provider error the cascade does not handle, a
    cancellation or timeout). The exception goes on unchanged.
    """
    token = _SKIPPABLE.set(True)
    try:
        with metering() as meter:
            spend = _RunSpend(meter)
            try:
                yield spend
            except BaseException as exc:
                _unanswered(governor, spend, exc)
                raise
    finally:
        _SKIPPABLE.reset(token)


_COUNTED = "_governor_cascade_counted"
"""Set on an exception a cascade run has accounted for."""


def _unanswered(governor: Governor, spend: _RunSpend, exc: BaseException) -> None:
    """Account for a cascade run that raised ``exc``: name the task on a
    stop, and take what the run spent off the task's saving, once."""
    task = current_task()
    if isinstance(exc, GovernorHalt) and exc.task_id is None and task is not None:
        exc.task_id = task.id
    spent = nanos_to_usd(spend.meter.nanos)
    from governor.cascade import CascadeBudgetExceeded, CascadeExhausted

    # A run nested in this one's check (its own meter) that ended in
    # CascadeExhausted has taken its spend off already: that exception is
    # not this run's, and only this run's own calls count here.
    if isinstance(exc, CascadeExhausted) and not getattr(exc, _COUNTED, False):
        # Both fields are the run's spend (docs/errors.md), not the task's.
        exc.spent_usd = spent = max(exc.spent_usd, spent)
        exc.spent_tokens = max(exc.spent_tokens, spend.meter.tokens)
        if isinstance(exc, CascadeBudgetExceeded) and task is not None:
            # Its tiers' refusals were counted without stopping the task
            # (skippable); the run's own stop is recorded as a plain budget
            # refusal's would be, caught or not, and not counted again.
            task.mark_stopped(exc.code)
    with contextlib.suppress(AttributeError):  # a type that takes no attributes
        setattr(exc, _COUNTED, True)
    if task is not None and spent > 0 and not spend.saving_added:
        spend.saving_added = True
        _add_saving(governor, task, -spent)


def _charged(error: BaseException, cost: Decimal) -> None:
    """Note a failed call's charge on its exception (for cascade accounting)."""
    with contextlib.suppress(AttributeError):  # a type that takes no attributes
        setattr(error, CHARGED_ATTRIBUTE, cost)


def _unread(error: BaseException) -> CallResult:
    """An answer that came back but could not be read: it may be billed in full."""
    return CallResult(error=error, charge_hold=True)


def _failed(
    request: CallRequest, error: BaseException, admission: Admission | None = None
) -> CallResult:
    """A call that raised: a cancelled or timed-out one is charged its hold.

    The request reached the provider, which may answer it in full and bill
    it although nobody reads the answer; only the hold bounds that bill. So
    is a call whose answer was cut off (see :func:`_answer_cut`), and one
    that failed after LiteLLM was seen to send it for a reason other than an
    error answer (see :func:`_failed_after_sending`). A call that LiteLLM was
    seen to stop before sending (see :func:`_watching`), or that never got a
    connection (see :func:`_not_connected`), is charged nothing. A 200
    answer with no choices that reports its usage is settled at that usage,
    with the call's ``admission`` (see :func:`_answer_without_choices`).
    """
    if _not_sent(error):
        return CallResult(error=error)
    sent = _seen_sending(error)
    body = _answer_body(error)
    causes = _causes(error)
    cut = _answer_cut(causes)
    if not cut and _not_connected(causes):
        return CallResult(error=error)
    if admission is not None and _no_choices(causes):
        try:
            answered = _answer_without_choices(body, request, admission)
        except Exception:  # never lose the settle over a body: hold it
            logger.warning("could not read an answer with no choices", exc_info=True)
            answered = None
        if answered is not None:
            return dataclasses.replace(answered, error=error)
    if (
        not cut
        and not interrupted_after_sending(error)
        and not _unparsed_answer(error, causes, request)
        and not (sent and _failed_after_sending(causes, request))
    ):
        return CallResult(error=error)
    return CallResult(error=error, charge_hold=True)


def _seen_sending(error: BaseException) -> bool:
    """True when the call's own watch saw LiteLLM's pre-call hook run before
    ``error`` was raised; the mark is taken off, as :func:`_not_sent` does."""
    sent = getattr(error, _SENT_ATTRIBUTE, False) is True
    with contextlib.suppress(AttributeError):
        delattr(error, _SENT_ATTRIBUTE)
    return sent


def _failed_after_sending(
    causes: Sequence[BaseException], request: CallRequest
) -> bool:
    """True when a call LiteLLM sent failed other than by an error answer.

    The request went out, so the provider may answer and bill it in full
    (LiteLLM raising from its own logging after the answer came, at
    interpreter shutdown say). An error answer (an HTTP status error in the
    chain), a request the HTTP client could not write (a bad URL or
    header), a connection closed before any answer, and JSON of the
    request that did not parse stay free. ``causes`` is :func:`_causes` of
    the error.
    """
    if any(_status_error(cause) or isinstance(cause, _UNWRITTEN) for cause in causes):
        return False
    if any(
        type(cause).__name__ == "ServerDisconnectedError"
        or any(text in str(cause).lower() for text in _NO_ANSWER_TEXTS)
        for cause in causes
    ):
        return False
    return not any(
        isinstance(cause, json.JSONDecodeError) and _sent(cause.doc, request)
        for cause in causes
    )


# httpx's errors for a request it could not put on the wire.
_UNWRITTEN = (httpx.UnsupportedProtocol, httpx.InvalidURL, httpx.LocalProtocolError)


def _status_error(error: BaseException) -> bool:
    """True for an error raised for a provider's error answer: httpx's status
    error, or an SDK's that carries the HTTP response it was raised for
    (OpenAI's ``APIStatusError``)."""
    if isinstance(error, httpx.HTTPStatusError):
        return True
    response = getattr(error, "response", None)
    return isinstance(response, httpx.Response) and any(
        kind.__name__ == "APIStatusError" for kind in type(error).__mro__
    )


def _not_sent(error: BaseException) -> bool:
    """True when the call's own watch saw it stop before sending.

    The mark is taken off, so a governed call further out (a stand-in that
    called this client) does not read it as its own.
    """
    unsent = getattr(error, NOT_SENT_ATTRIBUTE, False) is True
    with contextlib.suppress(AttributeError):
        delattr(error, NOT_SENT_ATTRIBUTE)
    return unsent


# -- did the request go out? ---------------------------------------------

# Providers whose LiteLLM route (its OpenAI one) calls the input callbacks
# from its pre-call logging before it sends, and, for ``acompletion``, sends
# only from the coroutine the caller awaits: the part LiteLLM runs in a
# worker thread (which a cancelled caller does not stop) only builds the
# request. Routes outside it (a provider whose async call runs in that
# thread, a custom handler) keep the conservative hold.
_HOOKED_PROVIDERS = frozenset({"openai", "custom_openai"})

# Set by the watch on an exception raised after LiteLLM's pre-call hook ran:
# the request was handed to the network (see :func:`_failed_after_sending`).
_SENT_ATTRIBUTE = "governor_request_sent"

# LiteLLM's own chat functions live here (the public one and the Python one
# behind it); a function from elsewhere is a stand-in or another wrapper.
_LITELLM_MODULES = ("litellm.main", "litellm.chat_completions.dispatch")


class _Sending:
    """Whether LiteLLM reached its pre-call hook in one governed call, and
    the answer's body its post-call hook was given (``answer``).

    A mark also marks the call this one runs inside (LiteLLM calling itself
    while a governed call is under way), which sends through it.
    """

    __slots__ = ("_outer", "answer", "seen")

    def __init__(self, outer: _Sending | None) -> None:
        self._outer = outer
        self.seen = False
        self.answer: object = None

    def mark(self) -> None:
        self.seen = True
        if self._outer is not None:
            self._outer.mark()

    def answered(self, body: object) -> None:
        self.answer = body
        if self._outer is not None:
            self._outer.answered(body)


# The watch of the LiteLLM call running in this context. LiteLLM runs part
# of ``acompletion`` in a worker thread with a copy of the caller's context,
# which holds the same watch.
_SENDING: contextvars.ContextVar[_Sending | None] = contextvars.ContextVar(
    "governor_litellm_sending", default=None
)


class _PreCallHook(CustomLogger):  # type: ignore[misc]  # litellm is untyped (mypy skips it)
    """LiteLLM input callback: the watched call is about to send its request.

    LiteLLM calls input callbacks from its handlers' pre-call logging, right
    before the HTTP request; outside a watched call it does nothing.
    """

    def log_pre_api_call(self, model: Any, messages: Any, kwargs: Any) -> None:
        sending = _SENDING.get()
        if sending is not None:
            sending.mark()

    def log_post_api_call(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        """Keep the provider's answer as LiteLLM got it, before it is read,
        for an answer LiteLLM then rejects (see :func:`_answer_body`).

        Only a JSON object's text is kept: LiteLLM also logs the text of the
        error it then raises, and a stream, here.
        """
        sending = _SENDING.get()
        if sending is None or not isinstance(kwargs, dict):
            return
        body = kwargs.get("original_response")
        if isinstance(body, str) and body.lstrip().startswith("{"):
            sending.answered(body)


_PRE_CALL_HOOK = _PreCallHook()


def _watching(function: Callable[..., Any], name: str) -> Callable[..., Any]:
    """LiteLLM's own ``completion`` or ``acompletion``, watched for sending.

    A call that fails before LiteLLM's pre-call hook has its exception
    marked as not sent (:data:`NOT_SENT_ATTRIBUTE`), on a route where that
    hook is known to come first (:func:`_hooked_route`). Any other function
    (a stand-in) is returned as it is: nothing says whether it sent.
    """
    if not any(
        getattr(sys.modules.get(m), name, None) is function for m in _LITELLM_MODULES
    ):
        return function
    if name == "acompletion":

        @functools.wraps(function)  # its signature tells positionals apart
        async def awatched(*args: Any, **kwargs: Any) -> Any:
            sending, token = _start_watch()
            try:
                return await function(*args, **kwargs)
            except BaseException as exc:
                _note_sending(exc, sending, args, kwargs)
                raise
            finally:
                _SENDING.reset(token)

        return awatched

    @functools.wraps(function)
    def watched(*args: Any, **kwargs: Any) -> Any:
        sending, token = _start_watch()
        try:
            return function(*args, **kwargs)
        except BaseException as exc:
            _note_sending(exc, sending, args, kwargs)
            raise
        finally:
            _SENDING.reset(token)

    return watched


def _start_watch() -> tuple[_Sending, contextvars.Token[_Sending | None]]:
    """A new watch, current in this context; the hook put back if removed.

    Two threads may both put it back at once; called twice, it marks twice.
    """
    callbacks = getattr(litellm, "input_callback", None)
    if isinstance(callbacks, list) and _PRE_CALL_HOOK not in callbacks:
        callbacks.append(_PRE_CALL_HOOK)
    sending = _Sending(_SENDING.get())
    return sending, _SENDING.set(sending)


def _hook_installed() -> bool:
    callbacks = getattr(litellm, "input_callback", None)
    return isinstance(callbacks, list) and _PRE_CALL_HOOK in callbacks


def _note_sending(
    error: BaseException,
    sending: _Sending,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
) -> None:
    """Mark ``error`` as raised before sending when that is known for sure.

    The mark is set either way, which overrides one that a call LiteLLM
    made inside this one left.
    """
    try:
        unsent = (
            not sending.seen
            and not args
            and _hook_installed()
            and _hooked_route(kwargs)
        )
    except Exception:  # never in place of the call's own error: not known
        logger.debug("could not tell whether a LiteLLM call was sent", exc_info=True)
        unsent = False
    if unsent:
        logger.debug(
            "LiteLLM call to %s stopped before sending its request (%s); "
            "its hold is released",
            kwargs.get("model"),
            type(error).__name__,
        )
    with contextlib.suppress(AttributeError):  # a type that takes no attributes
        setattr(error, NOT_SENT_ATTRIBUTE, unsent)
        setattr(error, _SENT_ATTRIBUTE, sending.seen)
        setattr(error, _ANSWER_ATTRIBUTE, sending.answer)


def _hooked_route(kwargs: Mapping[str, Any]) -> bool:
    """True when LiteLLM sends this request on a route that calls the pre-call
    hook first and sends only from the caller's task (:data:`_HOOKED_PROVIDERS`).

    LiteLLM's own fallbacks may take the call elsewhere, and a LiteLLM that
    may serve the call natively (its Rust bridge) is not relied on.
    """
    model = kwargs.get("model")
    if not isinstance(model, str) or kwargs.get("fallbacks"):
        return False
    if getattr(litellm, "model_fallbacks", None):
        return False
    try:
        with _no_banner():
            provider = litellm.get_llm_provider(
                model=model,
                custom_llm_provider=kwargs.get("custom_llm_provider"),
                api_base=kwargs.get("api_base") or kwargs.get("base_url"),
            )[1]
    except Exception:  # a model LiteLLM cannot place: not known
        return False
    return provider in _HOOKED_PROVIDERS and _python_route()


def _python_route() -> bool:
    """False when this LiteLLM may serve chat calls (or the Responses calls
    its chat route bridges to) natively, out of sight of its Python hooks."""
    try:
        from litellm.rust_bridge import catalog
    except ImportError:  # a LiteLLM without native routes
        return True
    try:
        routes = (catalog.Route.CHAT_COMPLETIONS, catalog.Route.RESPONSES)
        return not any(catalog.rust_might_handle(r, catalog.RULES) for r in routes)
    except Exception:  # a catalog of another shape: not known
        return False


# What LiteLLM says of a 200 answer it could not read: malformed usage, and
# a body that is not JSON at all (an HTML page sent as text/html). The error
# raised for a stream with no event in it (_no_stream_events) says so too.
_UNREADABLE = ("Invalid response object", "Empty or invalid response from LLM")

# What LiteLLM says of a 200 answer with no list of choices (none, or null).
# It raises its own APIError (status 500), which its exception mapping wraps
# in an InternalServerError that carries an HTTP response LiteLLM made up:
# no provider's status error is in the chain.
_NO_CHOICES = (
    "provider returned a response with no 'choices'",
    "provider returned 'choices' that is not a list",
)

# Set by the watch on an exception: the answer's body LiteLLM's post-call
# hook was given, if any (see :func:`_answer_without_choices`).
_ANSWER_ATTRIBUTE = "governor_answer_body"


def _no_choices(causes: Sequence[BaseException]) -> bool:
    """True when LiteLLM rejected a 200 answer for having no choices.

    A provider's error answer whose text says the same has httpx's status
    error in its chain and is not one. ``causes`` is :func:`_causes` of the
    error.
    """
    if any(isinstance(cause, httpx.HTTPStatusError) for cause in causes):
        return False
    return any(words in str(cause) for cause in causes for words in _NO_CHOICES)


def _answer_body(error: BaseException) -> object:
    """The answer's body the call's own watch noted on ``error``, or None;
    the note is taken off, as :func:`_seen_sending` does."""
    body = getattr(error, _ANSWER_ATTRIBUTE, None)
    with contextlib.suppress(AttributeError):
        delattr(error, _ANSWER_ATTRIBUTE)
    return body


def _answer_without_choices(
    body: object, request: CallRequest, admission: Admission
) -> CallResult | None:
    """What a 200 answer with no choices settles at, or None for its hold.

    The provider answered and reports what it billed: a body whose usage
    reads is settled at it as an answer with an empty list of choices is
    (see :func:`_result`: a side left out or zero is counted locally, and
    there is no output text to count). A body that is not JSON, has no
    usage or usage in no known shape gives None: the call is charged its
    hold, as an unreadable answer is.
    """
    if not isinstance(body, str):
        return None
    try:
        body = json.loads(body)
    except ValueError:  # a body LiteLLM logged cut short or redacted
        return None
    usage = body.get("usage") if isinstance(body, Mapping) else None
    if not isinstance(usage, Mapping) or not usage:
        return None
    try:
        reported = usage_from_response(usage)
    except ConfigError as exc:
        logger.warning(
            "the provider's answer for model %s has no choices and its usage is "
            "not usable (%s); the call is charged its hold",
            request.model,
            exc,
        )
        return None
    model = body.get("model") if isinstance(body, Mapping) else None
    return CallResult(
        usage=settled_usage(
            reported,
            model=request.model,
            messages=request.messages,
            text=None,
            extra_prompt=request.extra_prompt,
            reported_total=lambda: total_tokens_of(usage),
            hold=_held(admission),
        ),
        response_model=model if isinstance(model, str) else None,
    )


def _unparsed_answer(
    error: BaseException, causes: Sequence[BaseException], request: CallRequest
) -> bool:
    """LiteLLM got an answer it could not read (malformed usage, a body or a
    first stream event that is not JSON, no choices: see :func:`_no_choices`).

    It raises that as a server error (status 500), yet the provider answered
    and may bill it: such a call is charged its hold, like an answer read but
    unusable. A provider's error answer (a 429, a 5xx, whatever its body)
    has httpx's status error in the exception's chain and stays free, as
    does JSON that LiteLLM failed to decode before sending (a tool call's
    arguments in the messages), told by its text. ``causes`` is
    :func:`_causes` of ``error``.
    """
    if any(words in str(error) for words in _UNREADABLE):
        return True
    if _no_choices(causes):
        return True
    if any(isinstance(cause, httpx.HTTPStatusError) for cause in causes):
        return False
    return any(
        isinstance(cause, json.JSONDecodeError) and not _sent(cause.doc, request)
        for cause in causes
    )


# Errors that end a request before it is sent: no connection was made.
# (aiohttp's connect failure is named: LiteLLM's aiohttp transport raises it
# as httpx's ConnectError, with the aiohttp error as its cause.)
_NOT_CONNECTED = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_NOT_CONNECTED_NAMES = frozenset({"ClientConnectorError"})

# Errors that cut an answer off while it was read: the request went out and
# the connection dropped or stalled (LiteLLM's aiohttp transport raises
# aiohttp's as httpx's ReadError; http.client's and requests' are named).
_CUT_ANSWER = (httpx.RemoteProtocolError, httpx.ReadError, httpx.ReadTimeout)
_CUT_ANSWER_NAMES = frozenset(
    {"ClientPayloadError", "IncompleteRead", "ChunkedEncodingError"}
)
_CUT_ANSWER_TEXTS = ("peer closed connection", "incomplete chunked read")
# A connection closed before any answer came (httpx's "Server disconnected
# without sending a response", aiohttp's ServerDisconnectedError) is most
# often a kept-alive connection the server had closed while idle: the
# request never reached the provider, so it stays free as before.
_NO_ANSWER_TEXTS = ("without sending a response",)


def _not_connected(causes: Sequence[BaseException]) -> bool:
    """True when the chain shows no connection was made (refused, DNS, a
    connect or pool timeout); an answer cut off is told apart first."""
    return any(
        isinstance(cause, _NOT_CONNECTED)
        or type(cause).__name__ in _NOT_CONNECTED_NAMES
        for cause in causes
    )


def _answer_cut(causes: Sequence[BaseException]) -> bool:
    """True when the request went out and its answer was cut off: the
    connection closed, failed or stalled while the answer was read.

    The provider may have answered, and billed, in full. An error answer (a
    4xx or 5xx, its status error in the chain) is not cut off, whatever
    failed while its body was read.
    """
    if any(isinstance(cause, httpx.HTTPStatusError) for cause in causes):
        return False
    names = {type(cause).__name__ for cause in causes}
    if names & _CUT_ANSWER_NAMES:
        return True
    if "ServerDisconnectedError" in names or any(
        text in str(cause).lower() for cause in causes for text in _NO_ANSWER_TEXTS
    ):
        return False
    return any(
        isinstance(cause, _CUT_ANSWER)
        or type(cause).__name__ in _CUT_ANSWER_NAMES
        or any(text in str(cause).lower() for text in _CUT_ANSWER_TEXTS)
        for cause in causes
    )


def _causes(error: BaseException) -> list[BaseException]:
    """The error and every exception it was raised from or while handling."""
    found: list[BaseException] = []
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or any(current is seen for seen in found):
            continue
        found.append(current)
        pending += [current.__cause__, current.__context__]
    return found


def _sent(text: str, request: CallRequest) -> bool:
    """True when ``text`` is part of the request: JSON the caller sent."""
    return bool(text.strip()) and any(
        text in part for part in _texts((request.messages, request.extra_prompt))
    )


def _texts(value: Any) -> Iterator[str]:
    """Every string in a request part: messages, tools, response format."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _texts(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _texts(item)
    elif callable(getattr(value, "model_dump", None)):
        yield from _texts(value.model_dump())


def _stopped_plainly(chunks: Sequence[Any]) -> bool:
    """True when a stream's last finish reason is "stop" and no chunk called
    a tool."""
    finish = None
    for chunk in chunks:
        for choice in getattr(chunk, "choices", None) or ():
            delta = getattr(choice, "delta", None)
            if getattr(delta, "tool_calls", None) or getattr(
                delta, "function_call", None
            ):
                return False
            finish = getattr(choice, "finish_reason", None) or finish
    return finish == "stop"


def _delta_text(chunk: Any) -> str:
    for choice in getattr(chunk, "choices", None) or []:
        delta = getattr(choice, "delta", None)
        content = getattr(delta, "content", None)
        if content:
            return str(content)
    return ""


class _StreamCeiling:
    """Cuts a LiteLLM stream that runs far past its reserved output, or (priced
    per second) past ``Policy.max_call_s``.

    The ceiling is the shared one (see ``governor.adapters._ceiling``): the
    chunk that passes it is served, and the next read ends the stream.
    """

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._ceiling = OutputCeiling(admission)

    def passed(self, chunk: Any) -> bool:
        """Add a chunk's output; True once the output or the time passes the
        limit."""
        ceiling = self._ceiling
        if not ceiling.passed(_delta_parts(chunk)):
            return False
        if ceiling.reason == TIME and ceiling.max_call_s is not None:
            # The engine need not warn of the overrun: it is said here.
            self._admission.extras[TIME_CUT] = True
            _warn_out_of_time(ceiling.model, ceiling.elapsed_s, ceiling.max_call_s)
        else:
            _warn_cut_off(ceiling.model, ceiling.reserved_tokens, ceiling.chars)
        return True


_CUT_OFF_WARNED: set[str] = set()
_OUT_OF_TIME_WARNED: set[str] = set()


def _warn_out_of_time(model: str, elapsed_s: float, max_call_s: float) -> None:
    if model in _OUT_OF_TIME_WARNED:
        return
    _OUT_OF_TIME_WARNED.add(model)
    logger.warning(
        "a stream from %s, priced per second, was still running after %.2f s, "
        "past Policy.max_call_s (%g s) that its call held: the governor closed "
        "the stream to keep the call near its budget (it is charged the time "
        "it ran). Raise max_call_s if calls to this model take longer. Logged "
        "once per model.",
        model,
        elapsed_s,
        max_call_s,
    )


def _warn_cut_off(model: str, reserved: int, streamed: int) -> None:
    if model in _CUT_OFF_WARNED:
        return
    _CUT_OFF_WARNED.add(model)
    logger.warning(
        "a stream from %s sent %d characters for the %d output tokens "
        "reserved for it: the provider ignores max_tokens, so the governor "
        "closed the stream to keep the call near its budget. Check that the "
        "provider (or a proxy) passes max_tokens on. Logged once per model.",
        model,
        streamed,
        reserved,
    )


def _delta_parts(chunk: Any) -> Iterator[str]:
    """The output a chunk carries: each choice's text, reasoning, tool calls
    and legacy function call, as the provider bills them all."""
    for choice in getattr(chunk, "choices", None) or ():
        delta = getattr(choice, "delta", None)
        for text in (
            getattr(delta, "content", None),
            getattr(delta, "reasoning_content", None),
        ):
            if isinstance(text, str) and text:
                yield text
        calls = list(getattr(delta, "tool_calls", None) or ())
        legacy = getattr(delta, "function_call", None)
        functions = [getattr(c, "function", None) for c in calls] + [legacy]
        for function in functions:
            for piece in (
                getattr(function, "name", None),
                getattr(function, "arguments", None),
            ):
                if isinstance(piece, str) and piece:
                    yield piece


class _HungUp(RuntimeError):
    """Read from a stream that the governed run owning it hung up on."""

    def __init__(self, model: str) -> None:
        super().__init__(
            f"the {model} stream was closed because the governed run reading "
            "it ended (its stream was closed early, or another branch failed); "
            "nothing more can be read from it: run the graph again for a new "
            "answer"
        )


def _hand_on_usage(served: Any, held: Any) -> None:
    """Put the usage of a chunk held back from the caller (see
    :meth:`_StreamSettler._held_back`) in the hidden params of the chunk
    served before it, as LiteLLM does for a stream whose caller did not ask
    for usage: the Router counts a stream's tokens from there. Done once the
    stream ended and the call settled: LiteLLM may keep the served chunk in
    the list the settlement tells a provider's usage from its own by."""
    usage = getattr(held, "usage", None)
    hidden = getattr(served, "_hidden_params", None)
    if usage is not None and isinstance(hidden, dict):
        hidden["usage"] = usage


class _SyncStream(_StreamSettler):
    """Passes a LiteLLM stream through and settles when it ends or is dropped.

    It is an iterator like LiteLLM's own stream. A stream closed early is
    charged for what arrived; one dropped without being read is charged its
    prompt (estimated), since the request was sent. It holds no reference
    cycle, so dropping it settles at once, and closes LiteLLM's stream (which
    LiteLLM keeps in a reference cycle) so that the provider stops. It is
    settled exactly once, even when hung up from another thread while a
    reader waits on the provider.
    """

    def __init__(
        self,
        governor: Governor,
        admission: Admission,
        inner: Any,
        saver: _Saver,
        wants_usage: bool,
    ) -> None:
        super().__init__(governor, admission, inner, saver, wants_usage)
        self._source: Iterator[Any] | None = None
        self._settling = threading.Lock()  # one settlement, whichever thread
        self._reading = threading.Lock()  # held while a reader waits on a chunk
        self._hung_up = False
        self._served: Any = None  # the last chunk handed to the caller

    def __iter__(self) -> _SyncStream:
        return self

    def __next__(self) -> Any:
        chunk = self._read()
        while self._held_back(chunk):
            held = chunk
            try:  # settled first: the served chunk may be one LiteLLM kept
                chunk = self._read()
            finally:
                if self.admission.settled:
                    _hand_on_usage(self._served, held)
        self._served = chunk
        if self._ceiling.passed(chunk):
            self.close()  # the chunk is served; the next read ends the stream
        return chunk

    def _read(self) -> Any:
        """The provider's next chunk; settles the call when the stream ends.

        A stream of a run that is ending (see ``Task.ending``) is hung up on
        at its read: it may have opened after the run hung up on the others.
        """
        if self.admission.task.ending is not None and not self._hung_up:
            self.hang_up()
        if self.admission.settled:
            self._check_hung_up()
            raise StopIteration
        if self._source is None:
            self._source = iter(self._inner)
        try:
            chunk = self._next_chunk(self._source)
            self._check_answered()
        except BaseException as exc:
            self.error = exc
            self._finish()
            self._check_hung_up(exc)
            raise
        if chunk is _END:
            self.complete = True
            self._finish()
            raise StopIteration
        return chunk

    def _next_chunk(self, source: Iterator[Any]) -> Any:
        """Wait for the provider's next chunk, unless the run hung up."""
        with self._reading:
            self._check_hung_up()
            return next(source, _END)

    def _check_hung_up(self, cause: BaseException | None = None) -> None:
        """Raise for a reader of a stream its run hung up on: the answer is
        cut off, and must not pass for a whole one."""
        if not self._hung_up or isinstance(cause, _HungUp):
            return
        if cause is None or isinstance(cause, Exception):
            raise _HungUp(self.admission.request.model) from cause

    def close(self) -> None:
        """Stop reading: close the provider's stream, settle what arrived.

        A stream whose answer has finished (every choice's finish reason
        read) is first read on, a few chunks and at most a second, for the
        usage the provider sends after it; those chunks are kept for
        settlement, never handed to the caller.
        """
        if self._answer_finished() and self._source is not None:
            tail = _TailReader(self._source, self._inner_closer())
            if not tail.read():
                self._finish()  # the tail's thread closes the stream
                return
            self._keep_tail(tail.chunks, tail.ended)
        self._close_inner()
        self._finish()

    def _inner_closer(self) -> Callable[[], None]:
        """Close LiteLLM's stream without holding on to this wrapper."""
        close = getattr(self._inner, "close", None)

        def closer() -> None:
            if callable(close):
                with contextlib.suppress(Exception):
                    close()

        return closer

    def hang_up(self) -> None:
        """Close the stream for a run that ended without reading it out.

        Safe from any thread. A reader waiting on the provider in another
        thread (a graph's node) is cut off at once: the provider's stream is
        closed under it, what arrived is settled, and its next read raises.
        """
        self._hung_up = True
        if not self._reading.acquire(blocking=False):
            self._cut_off()
            return
        try:
            self.close()
        finally:
            self._reading.release()

    async def ahang_up(self) -> None:
        """Async form of :meth:`hang_up`, in a worker thread: settling may
        read the stream's tail and reach the budget store."""
        await asyncio.to_thread(self.hang_up)

    def _cut_off(self) -> None:
        """Settle what arrived and close the provider's stream under a reader
        waiting in another thread; its tail is not read (the reader holds it)."""
        with self._settling:
            if self.admission.settled:
                return
            result = self.result()
            self._close_inner()
            self.end(result)

    def __enter__(self) -> _SyncStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _close_inner(self) -> None:
        """Close LiteLLM's stream, so the provider stops generating and billing.

        Left open, the connection streams the whole answer, and the garbage
        collector closing it later can deadlock on the HTTP pool's lock.
        """
        close = getattr(self._inner, "close", None)
        if self.admission.settled or not callable(close):
            return
        try:
            close()
        except Exception:
            logger.debug("could not close the provider's stream", exc_info=True)

    def __del__(self) -> None:
        """Dropped before its end: settle what arrived, close the provider's
        stream (on a thread: this may run inside the garbage collector, which
        may hold the HTTP pool's lock that closing takes)."""
        if self.admission.settled:
            return
        try:
            self._finish()
        except Exception:
            logger.debug("could not settle an abandoned stream", exc_info=True)
        finally:
            close_dropped(self.__dict__, None)

    def _finish(self) -> None:
        with self._settling:
            if self.admission.settled:
                return
            result = self.result()
            self.end(result)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# LiteLLM's Responses API bridge marks the chat completion it makes for a
# Responses call with this keyword.
_BRIDGE_MARK = "_skip_responses_api_bridge"


def _bridged_stream(kwargs: Mapping[str, Any]) -> bool:
    """True for a stream LiteLLM's Responses bridge asked for."""
    return bool(kwargs.get("stream")) and bool(kwargs.get(_BRIDGE_MARK))


def _as_litellm_stream(stream: _SyncStream | _AsyncStream) -> Any:
    """``stream`` in LiteLLM's own stream type (see :class:`_BridgeStream`).

    LiteLLM's callers of ``completion()`` handle a stream only when it is
    ``isinstance(..., litellm.CustomStreamWrapper)``: the Responses bridge
    takes nothing else, and the Router wraps nothing else in the wrapper
    that reads the first chunk inside the attempt (so a stream failing
    before it is retried or falls back), turns a failure before content
    into a fallback and after it into the provider's error, and counts the
    stream's usage for the deployment. Each attempt is its own governed
    call, settled once by its own stream.
    """
    inner = stream._inner
    if not isinstance(inner, litellm.CustomStreamWrapper):
        return stream
    return _bridge_stream_type(type(inner))(stream)


# The bridge stream type made for each LiteLLM stream type met.
_BRIDGE_TYPES: dict[type, type] = {}


def _bridge_stream_type(base: type) -> type:
    """A subclass of LiteLLM's stream type ``base`` that is a
    :class:`_BridgeStream`, made when first needed."""
    made = _BRIDGE_TYPES.get(base)
    if made is None:
        made = type("GovernedCustomStreamWrapper", (_BridgeStream, base), {})
        made = _BRIDGE_TYPES.setdefault(base, made)
    return made


# What a bridged stream answers itself; every other attribute is LiteLLM's.
_BRIDGE_OWN = frozenset(
    {
        "_governed",
        "hang_up",
        "ahang_up",
        "__class__",
        "__iter__",
        "__next__",
        "__aiter__",
        "__anext__",
        "close",
        "aclose",
        "__enter__",
        "__exit__",
        "__aenter__",
        "__aexit__",
        "__repr__",
        "__reduce_ex__",
    }
)


class _BridgeStream:
    """A governed stream in the type LiteLLM's callers require (see
    :func:`_as_litellm_stream`).

    Made as a subclass of ``litellm.CustomStreamWrapper`` by
    :func:`_bridge_stream_type` (LiteLLM's ``__init__`` is not run). Reading,
    closing and hanging up go through the governed stream, which settles
    the call; every other attribute (``logging_obj``, ``chunks``, hidden
    params, the methods the bridge and the Router call to log and bill)
    reads and writes LiteLLM's own stream.
    """

    def __init__(self, governed: _SyncStream | _AsyncStream) -> None:
        object.__setattr__(self, "_governed", governed)

    def __getattribute__(self, name: str) -> Any:
        if name in _BRIDGE_OWN:
            return object.__getattribute__(self, name)
        return getattr(object.__getattribute__(self, "_governed")._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._governed._inner, name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._governed._inner, name)

    def __repr__(self) -> str:
        return f"<governed {self._governed._inner!r}>"

    def __iter__(self) -> _BridgeStream:
        return self

    def __next__(self) -> Any:
        governed = self._governed
        if not isinstance(governed, _SyncStream):
            raise TypeError(
                "this stream came from acompletion()/aresponses(): read it "
                "with 'async for', not 'for' or next()"
            )
        return next(governed)

    def __aiter__(self) -> _BridgeStream:
        return self

    async def __anext__(self) -> Any:
        governed = self._governed
        if not isinstance(governed, _AsyncStream):
            raise TypeError(
                "this stream came from completion()/responses(): read it "
                "with 'for', not 'async for' or anext()"
            )
        return await anext(governed)

    def close(self) -> None:
        """Stop reading: close the provider's stream, settle what arrived."""
        governed = self._governed
        if isinstance(governed, _SyncStream):
            governed.close()
        else:
            governed.hang_up()

    async def aclose(self) -> None:
        """Stop reading (async): close the provider's stream, settle."""
        governed = self._governed
        if isinstance(governed, _AsyncStream):
            await governed.aclose()
        else:
            governed.close()

    def hang_up(self) -> None:
        """Close the stream for a run that ended without reading it out."""
        self._governed.hang_up()

    async def ahang_up(self) -> None:
        """Async form of :meth:`hang_up`."""
        await self._governed.ahang_up()

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(
            "a governed stream cannot be pickled: it holds an open connection "
            "and its call's reservation. Read it out in this process and send "
            "the answer (or stream_chunk_builder's result) instead"
        )

    def __enter__(self) -> _BridgeStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> _BridgeStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        """Nothing: the governed stream settles when it is dropped."""


class _AsyncStream(_StreamSettler):
    """Async form of :class:`_SyncStream`."""

    def __init__(
        self,
        governor: Governor,
        admission: Admission,
        inner: Any,
        saver: _Saver,
        wants_usage: bool,
    ) -> None:
        # Where LiteLLM's async stream can be closed from sync code (see
        # hang_up) or once dropped.
        self._loop = running_loop()
        super().__init__(governor, admission, inner, saver, wants_usage)
        self._source: AsyncIterator[Any] | None = None
        self._served: Any = None  # the last chunk handed to the caller

    def __aiter__(self) -> _AsyncStream:
        return self

    async def __anext__(self) -> Any:
        note_reader(self.admission)
        chunk = await self._aread()
        while self._held_back(chunk):
            held = chunk
            try:  # settled first: the served chunk may be one LiteLLM kept
                chunk = await self._aread()
            finally:
                if self.admission.settled:
                    _hand_on_usage(self._served, held)
        self._served = chunk
        if self._ceiling.passed(chunk):
            await self.aclose()  # the chunk is served; the next read ends it
        return chunk

    async def _aread(self) -> Any:
        """The provider's next chunk; settles the call when the stream ends."""
        if self.admission.settled:
            raise StopAsyncIteration
        if self._source is None:
            self._source = aiter(self._inner)
        try:
            chunk = await anext(self._source, _END)
            self._check_answered()
        except BaseException as exc:
            self.error = exc
            await self._afinish()
            raise
        if chunk is _END:
            self.complete = True
            await self._afinish()
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        """Stop reading: close the provider's stream, settle what arrived.

        A stream whose answer has finished is first read on, as
        :meth:`_SyncStream.close` does.
        """
        try:
            if self._answer_finished() and self._source is not None:
                await self._aread_tail(self._source)
        finally:
            await self._aclose_inner()
            await self._afinish()

    async def _aread_tail(self, source: AsyncIterator[Any]) -> None:
        """Read the chunks after the finish reason, a few within a second."""
        tail: list[Any] = []
        ended = False
        try:
            async with asyncio.timeout(_TAIL_SECONDS):
                for _ in range(_TAIL_CHUNKS):
                    chunk = await anext(source, _END)
                    if chunk is _END:
                        ended = True
                        break
                    tail.append(chunk)
        except Exception:  # a failed read, or TimeoutError: settle as read
            logger.debug("could not read a stream's last chunks", exc_info=True)
        self._keep_tail(tail, ended)

    def hang_up(self) -> None:
        """Settle what arrived for a run that ended without reading it out.

        The provider's async stream can only be closed on its event loop:
        the closing is handed to it (:meth:`ahang_up` waits for it instead).
        """
        if self.admission.settled:
            return
        try:
            self.end(self.result())
        finally:
            close_dropped(self.__dict__, self._loop)

    async def ahang_up(self) -> None:
        """Close the stream for a run that ended without reading it out."""
        await self.aclose()

    async def __aenter__(self) -> _AsyncStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _aclose_inner(self) -> None:
        """Close LiteLLM's stream, so the provider stops generating and billing."""
        close = getattr(self._inner, "aclose", None)
        if self.admission.settled or not callable(close):
            return
        try:
            await close()
        except Exception:
            logger.debug("could not close the provider's stream", exc_info=True)

    def __del__(self) -> None:
        """Dropped before its end: settle what arrived, and have the stream's
        event loop close the provider's stream (see :meth:`hang_up`)."""
        try:
            self.hang_up()
        except Exception:
            logger.debug("could not settle an abandoned stream", exc_info=True)

    async def _afinish(self) -> None:
        if self.admission.settled:
            return
        result = self.result()
        async with _aslots_kept(self.admission, self.saver):  # stored first
            cost = await self.governor.aend_call(self.admission, result)
            message = self._to_cache(result)
            if message is not None:  # a store (Redis) and an embedding block
                await asyncio.to_thread(self.saver.save, result, cost, message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# Provider look-ups the governor makes on its own account are questions: a
# model LiteLLM cannot place is an answer, not a failure to announce. LiteLLM
# prints a banner on stdout then (breaking a program that prints JSON there)
# unless litellm.suppress_debug_info is set; it is set while any look-up runs
# and put back as found once none does.
_BANNER_LOCK = threading.Lock()
_banner_quiet = {"depth": 0, "saved": False}


@contextlib.contextmanager
def _no_banner() -> Iterator[None]:
    """Keep LiteLLM's "Provider List" banner off stdout in the block."""
    with _BANNER_LOCK:
        if _banner_quiet["depth"] == 0:
            _banner_quiet["saved"] = bool(litellm.suppress_debug_info)
            litellm.suppress_debug_info = True
        _banner_quiet["depth"] += 1
    try:
        yield
    finally:
        with _BANNER_LOCK:
            _banner_quiet["depth"] -= 1
            if _banner_quiet["depth"] == 0:
                litellm.suppress_debug_info = _banner_quiet["saved"]
