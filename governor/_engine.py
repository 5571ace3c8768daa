"""The governor: admits, refuses and settles model calls under a policy.

The flow of one call is ``begin_call`` (price the worst case, reserve it on
every budget that applies, start the call span) and ``end_call`` (price what
was used, settle it, close the span, record metrics). Adapters drive these two
steps around the real provider call; the async forms differ only in awaiting
the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import itertools
import logging
import math
import os
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypedDict, Unpack

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import SpanKind, TracerProvider

from governor._attribution import current_attribution
from governor._calls import (
    EMBEDDINGS,
    TIME_CUT,
    Admission,
    CallRequest,
    CallResult,
    current_meter,
    priced_name,
    prompt_byte_bound,
)
from governor._errors import (
    BudgetExceeded,
    ConfigError,
    GovernorClosed,
    GovernorError,
    PriceUnknown,
    ScopeBlocked,
    StoreUnavailable,
    decimal_text,
)
from governor._forks import start_over_in_children
from governor._leases import LeaseKeeper
from governor._loopwatch import attempt_answered, loop_watch, nothing_to_judge
from governor._money import NANOS_PER_USD, nanos_to_usd, usd_to_nanos
from governor._recorder import SpendRecorder
from governor._slots import Held, SlotKeeper, releasing_on
from governor._slots import arelease as arelease_slots
from governor._slots import release as release_slots
from governor._task import _CURRENT, Task, TaskReport, new_id, stop_reason_for
from governor.budgets import lines_for, parse_line_key
from governor.budgets._periods import calendar_ttl
from governor.policies import Attribution, Budget, Cache, Policy
from governor.policies._model import as_name
from governor.pricing import Rate, RateCard, Usage
from governor.stores import (
    AsyncLedger,
    Balance,
    FailoverLedger,
    Ledger,
    Line,
    MemoryLedger,
    Refusal,
)
from governor.stores._retry import Retrier
from governor.telemetry import attributes as attr
from governor.telemetry._tracing import (
    AttrValue,
    Telemetry,
    attributes_of,
    attribution_attributes,
    metric_attributes,
)

if TYPE_CHECKING:
    from governor.anomaly import Anomalies, AnomalyMonitor
    from governor.spend import SpendStore
    from governor.stores._redis import RedisLedger

__all__ = ["Governor"]

# Asked for a cached answer once a call has waited for its slots; None if none.
Recheck = Callable[[], Any]

logger = logging.getLogger(__name__)

_UNBOUNDED_OUTPUT_TOKENS = 32_768
_COUNT_MARGIN = 1.05
# How long close() waits for budget steps queued during a store outage.
_DRAIN_S = 5.0
_MESSAGE_SLACK_TOKENS = 8
_WARN_MEMORY = 10_000
_CLOSE_POLL_S = 0.01  # how often close() looks whether calls have settled
_LAST_WRITE_S = 0.25  # the spend writer's time when close() is out of time
_LONGEST_CLOSE_S = 86_400.0  # what close(timeout_s=inf) waits at most
_CLOSE_YIELDS = 3  # turns aclose() gives the loop before it looks
_POLICY_FIXED = (
    "Governor.policy cannot be replaced: the governor's rate card, budget "
    "lines, fan-out caps and cache were built from it. Build a new "
    "Governor(policy, ...), or lay a policy over one task: "
    "gov.task(policy=Policy(...))"
)
# Budget warnings read the store at most this often per line, so they cost no
# store round trip per call; a threshold is announced within this delay.
_WARN_EVERY_S = 1.0
# A line never read for warnings: its first read is due whatever the clock.
_NEVER_READ = (-math.inf, 0, 0)
# Budget lines shared between tasks, per policy budgets and scope values; a
# process with many distinct scope values (users, sessions) forgets them all
# past this many, which only means building them again.
_TEMPLATE_MEMORY = 1_024
# The task id shared task-budget lines are made for, then renamed per task;
# never a real task id (those hold no control characters).
_PLACEHOLDER_TASK_ID = "\x00"
_PLACEHOLDER_TASK_KEY = f"task:{_PLACEHOLDER_TASK_ID}"
# Response caches kept per distinct Cache settings (task overrides may bring
# their own); past this many the oldest other than the governor's goes.
_CACHE_MEMORY = 32
# Rate cards kept per distinct task-override Pricing; past this many the
# oldest made goes (it is made again, from the shared price map, when needed).
_RATE_CARD_MEMORY = 256


class ScopeValues(TypedDict, total=False):
    """The scope values a task takes as keywords: ``gov.task(team="search")``.

    Each is laid over the task's ``attribution``; None sets nothing.
    """

    team: str | None
    feature: str | None
    environment: str | None
    user: str | None
    session: str | None
    org: str | None
    tags: Mapping[str, str]


class Governor:
    """Enforces one policy over every model call made in its tasks.

    Args:
        policy: what to enforce; the default policy prices and records calls
            but limits nothing.
        ledger: the budget store; an in-process :class:`MemoryLedger` unless
            given (use the Redis store to share budgets across processes).
        rate_card: prices; built from ``policy.pricing`` unless given.
        tracer_provider: where spans go (default: the global provider).
        meter_provider: where metrics go (default: the global provider).
        spend: where each call's spend record goes: a SpendStore, or a path or
            URL for ``governor.spend.open_store`` (``.sqlite3``, ``.jsonl``,
            ``redis://``). Records are written by a background thread; call
            :meth:`close` (or use the governor as a context manager) to flush;
            in async code, ``await gov.aclose()`` or ``async with Governor(...)``
            does it without blocking the event loop.
        anomalies: spend-anomaly alerts on the recorded calls (spend above
            a trend baseline by k spreads, bursts; see
            :class:`~governor.anomaly.Anomalies`), as settings or a ready monitor
            (pass it ``on_tighten=governor.apply_tighten`` and, to judge
            calls as they happen, ``clock="live"`` yourself); with
            ``auto_tighten`` set, an alert lowers the scope's budgets or blocks
            its calls (see :meth:`unblock`).

    A governor is safe to share between threads and asyncio tasks. Close it
    when done: :meth:`close` (or ``with Governor(...) as gov:``), or in
    async code :meth:`aclose` (or ``async with Governor(...) as gov:``),
    which does not block the event loop.
    """

    def __init__(
        self,
        policy: Policy | None = None,
        *,
        ledger: Ledger | None = None,
        rate_card: RateCard | None = None,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        spend: SpendStore | str | Path | None = None,
        anomalies: Anomalies | AnomalyMonitor | None = None,
    ) -> None:
        if policy is not None and not isinstance(policy, Policy):
            raise TypeError(
                f"Governor() takes a Policy, got {type(policy).__name__}; wrap it: "
                "Governor(Policy(budgets=[Budget(...)]))"
            )
        self.policy = policy or Policy()
        _check_arguments(ledger, anomalies)
        spend = _spend_target(spend)
        self.ledger: Ledger = self._wrap(ledger)
        if self.policy.cache is not None and self.policy.cache.store == "redis":
            self._redis_bytes_client()  # refuse now, not at the first call
        self.rate_card = rate_card or RateCard(self.policy.pricing)
        self._rate_cards: dict[str, RateCard] = {}
        self._warned_tier_order = False
        self.check_tier_prices(self.policy)
        self._open_tasks: weakref.WeakSet[Task] = weakref.WeakSet()
        self._warned_orphan = False
        self._warned_no_tenant = False
        self._warned_foreign = False
        self._warned_unnamed: set[str] = set()  # scopes said to name no line
        self._warned_streams = False
        self._warned_clash = False
        self._warned_over: set[str] = set()
        self._warned_prompt: set[str] = set()  # models past their prompt hold
        self._warned_slow: set[str] = set()  # per-second models past max_call_s
        # The rate of a model that answered for another, by card and names.
        self._answered: dict[tuple[RateCard, str, str], Rate | None] = {}
        self._closed = False  # set by close(): nothing new starts
        # Seconds since the epoch that budget windows are picked by; a
        # replay sets the recorded calls' time (governor._replay).
        self._wall_clock: Callable[[], float] = time.time
        self._task_lines_kept = False  # a replay's task lines never lapse
        # Calls settling now: their id, and the thread settling them.
        self._settling: dict[str, int] = {}
        self._spend_closed = False
        self._warned_closed = False
        self._close_once = threading.Lock()
        self._task_close_lock = threading.Lock()  # one closer per task
        self.telemetry = Telemetry(tracer_provider, meter_provider)
        self._blocked: set[str] = set()
        self._factors: dict[str, float] = {}
        self._tighten_version = 0
        self.monitor = self._monitor(anomalies)
        self.recorder = _recorder(spend, self.monitor, _redis_prefix(self.ledger))
        # The thresholds announced, per line key and unit ("usd", "tokens").
        self._warned: set[tuple[str, str, float]] = set()
        # Per shared line: when its balance was last read, and its spend
        # (nano-USD, tokens) then plus what this process has settled since.
        self._warn_checked: dict[str, tuple[float, int, int]] = {}
        # Each line's balance as last read for warnings, and when the read began.
        self._warn_read: dict[str, _Read] = {}
        self.slots = SlotKeeper(self.ledger)
        _import_for_calls(self.policy)
        self._leases = LeaseKeeper(self.ledger)
        self._caches: dict[Any, Any] = {}
        # Each Cache object seen, with its cache; the object is held, so its
        # id cannot be reused by another while it is here.
        self._cache_of: dict[int, tuple[Cache, Any]] = {}
        self._embedders: dict[Any, Any] = {}
        self._cache_lock = threading.Lock()
        self._line_templates: dict[
            tuple[int, tuple[tuple[str, str], ...]],
            tuple[float, Any, list[tuple[Budget, Line, datetime | None]]],
        ] = {}
        # Metric labels by operation, model, provider and attribution (held,
        # so its id is not reused while its entry stands).
        self._label_sets: dict[
            tuple[str, str, str | None, int],
            tuple[Attribution, dict[str, AttrValue]],
        ] = {}
        start_over_in_children(self)

    def _forget_parent(self) -> None:
        """In a forked child: a cache lock of its own, and no calls settling.

        A lock a parent thread held at the fork would stay held for good. The
        calls that parent threads were settling settle in the parent: counted
        here, they would keep the child's :meth:`close` waiting its whole
        timeout for threads that are not in the child.
        """
        self._cache_lock = threading.Lock()
        self._settling = {}

    # -- cache -----------------------------------------------------------

    def _redis_bytes_client(self) -> Any:
        """The Redis ledger's server, for a cache with ``store="redis"``."""
        redis_ledger = _redis_ledger(self.ledger)
        if redis_ledger is None:
            raise ConfigError(
                "Cache(store='redis') keeps its entries on the Redis ledger's "
                "server, and this governor has none: build it with "
                "Governor(policy, ledger=RedisLedger(url)), or use "
                "Cache(store='memory')"
            )
        return redis_ledger.connections.bytes_client()

    def cache_for(
        self, policy: Policy, *, verifier: Any = None, embedding: Any = None
    ) -> Any:
        """The response cache of a policy, or None when it sets no cache.

        Policies whose Cache settings are equal share one cache (a task
        override that sets its own Cache gets one per distinct setting, kept
        32 at a time), and caches that name the same embedder share it.
        ``verifier`` confirms semantic hits when the policy names a verifier
        model, and ``embedding`` replaces ``litellm.embedding`` for a
        ``"litellm:<model>"`` embedder (the LiteLLM adapter passes governed
        ones, so both are charged like any call); both are used when the
        cache is first made.
        """
        given = policy.cache
        if given is None:
            return None
        known = self._cache_of.get(id(given))  # the per-call path: no hashing
        if known is not None and known[0] is given:
            return known[1]
        settings = self._cache_settings(given)
        key = _cache_key(settings)
        with self._cache_lock:
            cache = self._caches.get(key)
            if cache is None:
                cache = self._new_cache(settings, verifier, embedding)
                self._keep_cache(key, cache)
            if len(self._cache_of) >= _CACHE_MEMORY:
                self._cache_of.clear()
            self._cache_of[id(given)] = (given, cache)
        return cache

    def _cache_settings(self, settings: Cache) -> Cache:
        """A cache's settings as used: a Redis one under the ledger's prefix."""
        if settings.store != "redis":
            return settings
        return _cache_under_ledger(settings, _redis_prefix(self.ledger))

    def _new_cache(self, settings: Cache, verifier: Any, embedding: Any) -> Any:
        from governor.cache import ResponseCache

        client = None
        if settings.store == "redis":
            client = self._redis_bytes_client()
        return ResponseCache(
            settings,
            redis_client=client,
            embedder=self._shared_embedder(settings, embedding),
            verifier=verifier,
            embedding_call=embedding,
        )

    def _keep_cache(self, key: Any, cache: Any) -> None:
        """Keep a new cache, forgetting the oldest but the governor's own."""
        if len(self._caches) >= _CACHE_MEMORY:
            own = None
            if self.policy.cache is not None:
                own = _cache_key(self._cache_settings(self.policy.cache))
            oldest = next((k for k in self._caches if k != own), None)
            self._caches.pop(oldest, None)
            self._cache_of.clear()  # it may name the cache just dropped
            logger.debug("more than %d distinct cache settings", _CACHE_MEMORY)
        self._caches[key] = cache

    def _shared_embedder(self, settings: Cache, embedding: Any) -> Any:
        """One embedder per ``Cache.embedder`` setting, for the caches naming it.

        None when the cache has no semantic layer (it never loads a model),
        or when the embedder cannot be made: the cache then tries on its
        first lookup, which fails open.
        """
        if not settings.semantic:
            return None
        from governor.cache._embed import make_embedder

        key = _cache_key(settings.embedder)
        embedder = self._embedders.get(key)
        if embedder is None:
            try:
                embedder = make_embedder(settings.embedder, embedding_call=embedding)
            except Exception:
                logger.debug("could not make the cache's embedder", exc_info=True)
                return None
            if len(self._embedders) >= _CACHE_MEMORY:
                self._embedders.clear()  # the caches keep theirs
            self._embedders[key] = embedder
        return embedder

    def record_cache_hit(self, request: CallRequest, hit: Any) -> None:
        """Account for a call answered from cache: cost 0, the saving recorded.

        A hit reserves nothing, but it is a call of its task: it is refused
        as a sent call would be when the task is stopped (by its loop guard,
        or as its run ends), its scope is blocked or a ceiling of ``Loops``
        is passed, and the loop guard judges its prompt and, with the
        ``same_call`` rule, the prompt and answer pair. Budgets never refuse
        a hit: it costs nothing, even in a task whose budget refused a call.
        The answer is not judged against earlier outputs: answers served
        again are alike by nature (a help desk cycling through its common
        questions, a fan-out of one question), not a sign of a loop.

        Raises:
            GovernorHalt: the task may make no more calls; serve nothing.
        """
        task, owns = self._task_for(request)
        step, prompt_key = self._admit_hit(task, owns, request)
        self._serve_hit(task, owns, request, hit, step, prompt_key)

    def _serve_hit(
        self,
        task: Task,
        owns: bool,
        request: CallRequest,
        hit: Any,
        step: int,
        prompt_key: str | None,
    ) -> None:
        """Account for a hit that passed the checks of :meth:`_admit_hit`."""
        saved = usd_to_nanos(hit.saved_usd)
        task.cache_hit(saved)
        if request.operation != EMBEDDINGS and not owns:
            loop_watch(task, self.telemetry).after_hit(hit.text, step, prompt_key)
        named = None if owns else self._named_by_call(task, request)
        call_id = new_id()  # the span's and the spend record's
        provider = self._provider_of(task, hit.model)
        parent = request.parent_span or task.span
        span = self.telemetry.start_span(
            f"{request.operation} {request.model}", parent, {}, kind=SpanKind.CLIENT
        )
        attributes: dict[str, AttrValue] = {
            attr.GEN_AI_OPERATION_NAME: request.operation,
            attr.GEN_AI_REQUEST_MODEL: request.model,
            attr.GEN_AI_RESPONSE_MODEL: hit.model,
            attr.GEN_AI_USAGE_INPUT_TOKENS: 0,
            attr.GEN_AI_USAGE_OUTPUT_TOKENS: 0,
            attr.GEN_AI_USAGE_COST_AMOUNT: 0.0,
            attr.GEN_AI_USAGE_COST_CURRENCY: attr.CURRENCY_USD,
            attr.GEN_AI_USAGE_COST_SOURCE: "cache",
            attr.LLM_COST_TOTAL: 0.0,
            attr.GEN_AI_USAGE_COST: 0.0,
            attr.CACHE_HIT: True,
            attr.CACHE_LAYER: hit.layer,
            attr.CACHE_SIMILARITY: float(hit.similarity),
            attr.CACHE_SAVED_USD: saved / NANOS_PER_USD,
            attr.TASK_ID: task.id,
            **(attributes_of(named) if named else attribution_attributes(task)),
        }
        if span is not None:  # as on a sent call's span; not metric labels
            call: dict[str, AttrValue] = {attr.CALL_ID: call_id}
            if provider:
                call[attr.GEN_AI_PROVIDER_NAME] = provider
            if request.max_output_tokens is not None:
                call[attr.GEN_AI_REQUEST_MAX_TOKENS] = request.max_output_tokens
            self.telemetry.set_attributes(span, call)
        self.telemetry.end_span(span, attributes)
        # The metric keeps the bounded ones: model, operation, team, ...
        self.telemetry.record_cache_hit(attributes, saved / NANOS_PER_USD)
        if self._recording():
            self._record_hit(task, request, hit, named, call_id, provider)
        if owns:
            self._close_owned(task)

    def _admit_hit(
        self, task: Task, owns: bool, request: CallRequest
    ) -> tuple[int, str | None]:
        """The checks a cache hit passes: those of a call that need no hold.

        Budgets are not among them: a hit costs nothing, so a task whose
        budget refused a dearer call (and which falls back to a cheaper
        model, as the refusal advises) is still served.
        """
        try:
            return self._call_checks(task, owns, request)
        except GovernorError as exc:
            self._refused(task, exc.code, request.model)
            if owns:
                self.close_task(task)
            raise

    def _record_hit(
        self,
        task: Task,
        request: CallRequest,
        hit: Any,
        attribution: Attribution | None,
        call_id: str,
        provider: str | None,
    ) -> None:
        self._submit_record(
            task,
            call_id,
            request.model,
            attribution=attribution,
            cache_hit=True,
            saved_usd=hit.saved_usd,
            outcome="cache_hit",
            provider=provider,
        )

    def _provider_of(self, task: Task, model: str) -> str | None:
        """The provider the rate card names for ``model``; None if unpriced."""
        try:
            return self._task_rates(task).rate(model).provider
        except GovernorError:
            return None

    # -- anomalies -------------------------------------------------------

    def _monitor(self, anomalies: Anomalies | AnomalyMonitor | None) -> Any:
        if anomalies is None:
            return None
        from governor.anomaly import AnomalyMonitor

        if isinstance(anomalies, AnomalyMonitor):
            return anomalies
        return AnomalyMonitor(
            anomalies,
            on_tighten=self._tighten,
            restores=True,
            budgets=self.policy.budgets,
            clock="live",  # records are stamped by a wall clock that may step
        )

    def apply_tighten(self, request: Any) -> None:
        """Apply an auto-tighten request (a ``governor.anomaly.Tighten``)."""
        self._tighten(request)

    def _tighten(self, request: Any) -> None:
        """Apply an auto-tighten request from the anomaly monitor."""
        self._tighten_version += 1
        if request.mode == "restore":  # the episode is over: the limit is back
            self._factors.pop(request.scope, None)
            logger.info("spend on %s is back to normal: limit restored", request.scope)
            return
        if request.mode == "block":
            self._blocked.add(request.scope)
        else:
            factor = self._factors.get(request.scope, 1.0) * request.factor
            self._factors[request.scope] = factor
        logger.warning(
            "spend anomaly on %s: %s (auto-tighten)", request.scope, request.mode
        )

    def unblock(self, scope: str) -> bool:
        """Undo auto-tighten for a scope; return whether anything was lifted.

        ``scope`` is ``"kind:value"`` (``"team:search"``, ``"user:u7"``) or
        ``"all"``, as :class:`~governor.ScopeBlocked` and :meth:`tightened`
        name it. Spaces around it and around the kind are ignored and the
        kind may be in any case (kinds are lower-case); the value is taken
        as written. Lifts a block and undoes a lowering of that scope alone.
        A scope neither blocked nor lowered lifts nothing: False, and an INFO
        log line.

        Raises:
            ConfigError: ``scope`` names no scope (``"u7"``, ``""``,
                ``"colour:red"``): the message gives the accepted forms.
        """
        scope = self._scope_to_lift(scope)
        lifted = scope in self._blocked or scope in self._factors
        if not lifted:
            logger.info(
                "gov.unblock(%r): that scope is neither blocked nor lowered, "
                "so nothing was lifted (gov.tightened() lists those that are)",
                scope,
            )
            return False
        self._blocked.discard(scope)
        self._factors.pop(scope, None)
        self._tighten_version += 1
        return True

    def _scope_to_lift(self, scope: str) -> str:
        """``scope`` as :meth:`unblock` keys it; ConfigError if it names none."""
        if not isinstance(scope, str):
            raise TypeError(f"unblock() takes a scope as text, got {scope!r}")
        from governor.anomaly import ALERT_SCOPES
        from governor.policies._model import name_problem

        kind, colon, value = scope.strip().partition(":")
        kind, value = kind.strip().lower(), as_name(value.strip())
        kinds = {*ALERT_SCOPES, *(s.partition(":")[0] for s in self.tightened())}
        if kind == "all" and not colon:
            return "all"
        if colon and kind in kinds - {"all"} and name_problem(value) is None:
            return f"{kind}:{value}"
        raise ConfigError(
            f"gov.unblock({scope!r}) names no scope: give 'kind:value' with "
            f"a kind of {', '.join(sorted(kinds - {'all'}))} (e.g. "
            "'user:u7', 'team:search'), or 'all'; gov.tightened() lists the "
            "scopes blocked or lowered now"
        )

    def tightened(self) -> dict[str, str | float]:
        """The scopes auto-tighten holds now: scope -> "blocked" or a factor.

        A lowered scope maps to the fraction of its limits it keeps (0.5:
        halved); a blocked scope to ``"blocked"`` (also when it is lowered
        too). Sorted by scope; a copy, so changing it changes nothing.
        :meth:`unblock` lifts either.
        """
        factors = self._factors.copy()
        blocked = self._blocked.copy()
        held: dict[str, str | float] = {**factors, **dict.fromkeys(blocked, "blocked")}
        return dict(sorted(held.items()))

    def _check_blocked(
        self, task: Task, request: CallRequest, provider: str | None = None
    ) -> None:
        """Refuse a call charged to a blocked scope: its task's, those its
        metadata names, its model, or its provider (once priced)."""
        if not self._blocked:
            return
        named = self._named_by_call(task, request)
        replaced = set() if named is None else _replaced_scopes(task, named)
        keys = {"all"}
        keys.update(
            f"{k}:{v}" for k, v in task.scope_values.items() if k not in replaced
        )
        keys.update(
            _model_scopes(request.model, provider, lambda n: self._provider(task, n))
        )
        if provider is not None:
            keys.add(f"provider:{provider}")
        if named is not None:
            keys.update(f"{k}:{v}" for k, v in named.scope_values().items())
        for scope in sorted(keys & self._blocked):
            raise ScopeBlocked(
                scope,
                task_id=task.id,
                spent_usd=task.cost_usd,
                spent_tokens=task.tokens,
            )

    def _provider(self, task: Task, model: str) -> str | None:
        """The provider a call to ``model`` goes to, as the task prices it."""
        try:
            return self._task_rates(task).rate(model).provider
        except GovernorError:
            return None

    def _tightened(self, line: Line) -> Line:
        if not self._factors:
            return line  # nothing tightened: every factor is 1.0
        scope = line.key.split("#", 1)[0]
        factor = self._factors.get(scope, 1.0) * self._factors.get("all", 1.0)
        if factor == 1.0:
            return line
        nanos = None if line.limit_nanos is None else int(line.limit_nanos * factor)
        tokens = None if line.limit_tokens is None else int(line.limit_tokens * factor)
        return dataclasses.replace(line, limit_nanos=nanos, limit_tokens=tokens)

    def _wrap(self, ledger: Ledger | None) -> Ledger:
        """Put a networked store behind the policy's failure mode."""
        if ledger is None:
            return MemoryLedger()
        if isinstance(ledger, FailoverLedger):
            return self._adopt(ledger)
        if isinstance(ledger, MemoryLedger):
            return ledger
        if not isinstance(ledger, AsyncLedger):
            return ledger
        return FailoverLedger(
            ledger,
            mode=self.policy.failure_mode,
            on_degraded=self._degraded,
        )

    def _adopt(self, ledger: FailoverLedger) -> FailoverLedger:
        """A caller's FailoverLedger: its mode must agree with the policy's."""
        explicit = "failure_mode" in self.policy.model_fields_set
        if explicit and ledger.mode != self.policy.failure_mode:
            raise ConfigError(
                f"Policy(failure_mode={self.policy.failure_mode!r}) disagrees "
                f"with FailoverLedger(mode={ledger.mode!r}); set one of them, "
                "or pass the bare RedisLedger and let the policy choose"
            )
        if ledger._on_degraded is None:
            ledger._on_degraded = self._degraded
        return ledger

    def _degraded(self, event: str) -> None:
        """The store is down: say so on the current task's span and in metrics."""
        task = _CURRENT.get()
        span = task.span if task else None
        mode = getattr(self.ledger, "mode", self.policy.failure_mode)
        self.telemetry.event(span, event, {"failure_mode": mode})
        self.telemetry.set_attributes(span, {attr.DEGRADED: event})
        self.telemetry.record_degraded(event)

    def flush(self, timeout_s: float | None = None) -> int:
        """Write queued spend records; return how many are still unwritten.

        Every record submitted so far gets a write attempt. While the spend
        store is down they stay in memory and are retried; ``timeout_s``
        keeps retrying up to that many seconds. Budget steps queued while
        the budget store was down (settles, releases) get up to
        ``timeout_s`` (5 s when None) to reach it first; what still waits
        then is logged as a WARNING. A worker that leaves without closing
        the governor (``multiprocessing.Pool``) calls this at the end of
        each job.
        """
        time_left = _TimeLeft(timeout_s)
        unsent = self._drain_store(time_left.stage_s())
        if unsent is not None:
            logger.warning(
                "the budget store does not answer: %d settle(s) totalling $%s "
                "and %d hold release(s) still wait to be written to it; they "
                "are retried in the background while this process lives",
                unsent.settles,
                nanos_to_usd(unsent.nanos),
                unsent.releases,
            )
        if self.recorder is None:
            return 0
        return int(self.recorder.flush(time_left.writer_s()))

    async def aflush(self, timeout_s: float | None = None) -> int:
        """Async form of :meth:`flush`, which never blocks the event loop.

        The same work runs in a worker thread while the loop goes on.
        """
        return await asyncio.to_thread(self.flush, timeout_s)

    def close(self, timeout_s: float | None = None) -> int:
        """Write queued spend records, stop the writer; return how many were lost.

        Budget steps queued while the budget store was down (settles, slot
        releases) get up to ``timeout_s`` (5 s when None) to reach it; what
        is still unwritten then is logged as a WARNING. Only the first close
        does this: closing again (or while another thread closes) returns 0
        at once. A governor closed before ``os.fork()`` is closed in the
        child too.

        Calls under way finish and are charged; a call or task started
        afterwards raises :class:`~governor.GovernorClosed`. Called outside
        an event loop, close first waits, within ``timeout_s``, for the
        calls other threads are making or settling, so their spend records
        are written (not for this thread's own, which cannot progress
        meanwhile); in async code use :meth:`aclose`, which also waits for
        the calls the loop is settling. Alerts the anomaly monitor's webhook
        still has to POST get what is left of ``timeout_s``, or, when None,
        as long as its receiver keeps answering (see ``WebhookHook.close``);
        those left then are dropped with a WARNING.

        With ``timeout_s`` every stage (the wait for calls, the budget
        store, the spend writer, the webhook) shares one deadline, so the
        whole close takes about ``timeout_s`` at most (the spend writer
        gets a quarter of a second even when the others used it all up).
        """
        # On an event loop's thread a wait would block the calls it waits for.
        return self._close(timeout_s, wait=asyncio._get_running_loop() is None)

    def _close(
        self, timeout_s: float | None, *, wait: bool, deadline: float | None = None
    ) -> int:
        """:meth:`close`, waiting for calls under way first when ``wait``.

        With ``timeout_s``, every stage shares one deadline (``deadline``
        when :meth:`aclose` set it before waiting for the loop's calls).
        """
        # Taken by the first close and never released: an atomic "once".
        if not self._close_once.acquire(blocking=False):
            return 0
        self._closed = True
        time_left = _TimeLeft(timeout_s, deadline)
        if wait:
            self._wait_for_calls(time_left.stage_s())
        unsent = self._drain_store(time_left.stage_s())
        recorder = self.recorder
        lost = 0 if recorder is None else int(recorder.close(time_left.writer_s()))
        self.recorder = None
        self._spend_closed = recorder is not None
        if self.monitor is not None:  # after the writer: its last alerts go out
            self.monitor.close(time_left.total_s())
        if unsent is not None:
            self._warn_unsent(unsent, recorder, lost)
        return lost

    async def aclose(self, timeout_s: float | None = None) -> int:
        """Async form of :meth:`close`, which never blocks the event loop.

        The same work as :meth:`close` (queued budget steps get up to
        ``timeout_s``, 5 s when None, to reach the store; the spend writer
        flushes and stops) runs in a worker thread while the loop goes on,
        so calls still settling on the loop can finish meanwhile. Idempotent
        like :meth:`close`. ``async with Governor(...) as gov:`` calls it on
        leaving the block. Cancelled, it stops waiting while the close goes
        on in its thread.
        """
        if self._close_once.locked():
            return 0  # closed, or closing in another thread
        self._closed = True  # nothing new starts while the calls finish
        time_left = _TimeLeft(timeout_s)
        try:
            await self._await_calls(time_left.stage_s())
        except asyncio.CancelledError:
            # Cancelled while waiting: the close still happens, in a thread.
            closer = threading.Thread(
                target=self._close,
                args=(timeout_s,),
                kwargs={"wait": False, "deadline": time_left.deadline},
                name="governor-close",
                daemon=True,
            )
            closer.start()
            raise
        return await asyncio.to_thread(
            self._close, timeout_s, wait=False, deadline=time_left.deadline
        )

    def _wait_for_calls(self, limit_s: float) -> None:
        """Wait up to ``limit_s`` for calls other threads are making or
        settling (this thread's, a stream it holds open, cannot progress
        while it waits)."""
        here = threading.get_ident()
        deadline = time.monotonic() + limit_s
        while self._calls_open(other_than=here) and time.monotonic() < deadline:
            time.sleep(_CLOSE_POLL_S)
        self._warn_still_open()

    async def _await_calls(self, limit_s: float) -> None:
        """Async form of :meth:`_wait_for_calls`, which also waits for the
        calls other tasks of the loop are making (they go on while this one
        waits) and the loop's slot releases (a cancelled call gives its
        slots back in a task of its own)."""
        loop = asyncio.get_running_loop()
        here = threading.get_ident()
        closing = asyncio.current_task()
        for _ in range(_CLOSE_YIELDS):  # cancelled calls start settling
            await asyncio.sleep(0)
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline and (
            self._settling
            or self._leases.open_calls(other_than=here, but_task=closing)
            or releasing_on(loop)
        ):
            await asyncio.sleep(_CLOSE_POLL_S)
        self._warn_still_open()

    def _calls_open(self, other_than: int | None = None) -> int:
        """Admitted calls not settled yet, and calls settling now; with
        ``other_than``, those of other threads than that one."""
        settling = sum(1 for t in list(self._settling.values()) if t != other_than)
        return self._leases.open_calls(other_than=other_than) + settling

    def _warn_still_open(self) -> None:
        left = self._calls_open()
        if left:
            logger.warning(
                "Governor.close(): %d call(s) still under way (a stream kept "
                "open and not read, or a call still waiting for its answer): "
                "they are charged to the budgets when they settle, but their "
                "spend records will not be written; a call that never settles "
                "keeps its hold and fan-out slots until Policy.hold_ttl_s. "
                "Close streams and await calls before closing the governor.",
                left,
            )

    def _drain_store(self, timeout_s: float) -> _Unsent | None:
        """Give queued budget steps a bounded time to reach the store.

        Returns what is still unwritten then, or None when all was written.
        """
        ledger = self.ledger
        if not isinstance(ledger, FailoverLedger):
            return None
        deadline = time.monotonic() + timeout_s
        left = ledger.drain(timeout_s)
        retries = getattr(getattr(ledger.primary, "connections", None), "retries", None)
        slots = 0
        if isinstance(retries, Retrier):
            slots = retries.drain(max(0.0, deadline - time.monotonic()))
        if not (left or slots):
            return None
        return _Unsent(
            ledger.pending_settles,
            ledger.pending_nanos,
            ledger.pending_releases,
            slots,
        )

    def _warn_unsent(
        self, unsent: _Unsent, recorder: SpendRecorder | None, lost: int
    ) -> None:
        """Say what the budget store misses, and where else the spend is."""
        if not unsent.settles:
            logger.warning(
                "closing the governor while the budget store does not answer: "
                "%d hold release(s) and %d slot release(s) are not written to "
                "it. No spend is missing; the holds and slots expire after "
                "Policy.hold_ttl_s.",
                unsent.releases,
                unsent.slots,
            )
            return
        logger.warning(
            "closing the governor while the budget store does not answer: "
            "%d settle(s) totalling $%s, %d hold release(s) and %d slot "
            "release(s) are not written to it. The settled spend is missing "
            "from the budgets unless this process lives until the store "
            "answers%s; holds and slots expire after Policy.hold_ttl_s. Bring "
            "the store back before closing, or add the missing spend to the "
            "budgets by hand.",
            unsent.settles,
            decimal_text(nanos_to_usd(unsent.nanos)),
            unsent.releases,
            unsent.slots,
            _spend_kept(recorder, lost),
        )

    def _recording(self) -> bool:
        """True while spend records are written; after close() say once why not."""
        if self.recorder is not None:
            return True
        if self._spend_closed and not self._warned_closed:
            self._warned_closed = True
            logger.warning(
                "a call was settled after Governor.close(): its spend record "
                "is not written (the ledger is still charged). Close the "
                "governor after its last call and stream. Logged once."
            )
        return False

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "policy" and "policy" in self.__dict__:
            raise AttributeError(_POLICY_FIXED)
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if name == "policy":
            raise AttributeError(_POLICY_FIXED)
        super().__delattr__(name)

    def __reduce__(self) -> Any:
        raise TypeError(
            "a Governor cannot be pickled: it holds locks, store connections and "
            "threads of its process. Send its Policy (which pickles) and build a "
            "Governor in the worker: Governor(policy, ...)"
        )

    def __enter__(self) -> Governor:
        """Return the governor; leaving the block closes it.

        Raises:
            GovernorClosed: the governor was closed already.
        """
        if self._closed:
            raise GovernorClosed("a `with gov:` block")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Governor:
        """Async form of :meth:`__enter__`; leaving the block awaits
        :meth:`aclose`."""
        if self._closed:
            raise GovernorClosed("an `async with gov:` block")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- tasks -----------------------------------------------------------

    @contextlib.contextmanager
    def task(
        self,
        task_id: str | None = None,
        *,
        policy: Policy | None = None,
        attribution: Attribution | None = None,
        **scopes: Unpack[ScopeValues],
    ) -> Iterator[Task]:
        """Run a block as one governed task.

        Args:
            task_id: the task's id; a random one if None.
            policy: an override laid over the governor's policy for this
                task (over the policy of the task around it, for a task
                opened inside another).
            attribution: who and what the spend is charged to; scope values
                given as keywords (``team="search"``) are laid over it.

        Yields:
            The :class:`Task`, whose ``report()`` gives its totals.
        """
        task = self.open_task(task_id, policy=policy, attribution=attribution, **scopes)
        with self._running(task):
            yield task

    @contextlib.contextmanager
    def request_task(self, attribution: Attribution | None = None) -> Iterator[Task]:
        """Run several calls that answer one request, made outside any task,
        as one task: their budget checks see each other's spend.

        Like a one-call task it is not counted among the open tasks, and its
        budget lines live as long as a hold after their last change. Adapters
        use it (a cascade's tiers); code of your own opens :meth:`task`.

        Args:
            attribution: the scope values the calls name (LiteLLM
                ``metadata``), charged as a one-call task would be.
        """
        task = self._request_task(attribution)
        with self._running(task):
            yield task

    @contextlib.asynccontextmanager
    async def arequest_task(
        self, attribution: Attribution | None = None
    ) -> AsyncIterator[Task]:
        """Async form of :meth:`request_task`.

        Leaving the block closes the task with :meth:`aclose_task`, so the
        event loop never waits on the budget store there.
        """
        task = self._request_task(attribution)
        async with self._arunning(task):
            yield task

    def _request_task(self, attribution: Attribution | None) -> Task:
        """The task of :meth:`request_task`, made outside any task."""
        if self._open_tasks:  # a worker thread that did not inherit its task
            self._warn_orphan_call()
        task = self._one_call_task(attribution)
        task.extras["orphan"] = bool(self._open_tasks)
        return task

    @contextlib.contextmanager
    def _running(self, task: Task) -> Iterator[None]:
        """Make ``task`` current for the block; record why it stopped; close it."""
        try:
            with self._made_current(task):
                yield
        finally:
            self.close_task(task)

    @contextlib.asynccontextmanager
    async def _arunning(self, task: Task) -> AsyncIterator[None]:
        """Async form of :meth:`_running`: closes ``task`` by :meth:`aclose_task`."""
        try:
            with self._made_current(task):
                yield
        finally:
            await self.aclose_task(task)

    @contextlib.contextmanager
    def _made_current(self, task: Task) -> Iterator[None]:
        """Make ``task`` current for the block and record why it stopped."""
        outer_context = otel_context.get_current()
        token = _CURRENT.set(task)
        span_token = None
        if task.span is not None:
            span_token = otel_context.attach(trace.set_span_in_context(task.span))
        try:
            yield
        except BaseException as exc:
            task.stop_reason = task.stop_reason or stop_reason_for(exc)
            raise
        finally:
            _restore_current(token, task, span_token, outer_context)

    @contextlib.asynccontextmanager
    async def atask(
        self,
        task_id: str | None = None,
        *,
        policy: Policy | None = None,
        attribution: Attribution | None = None,
        **scopes: Unpack[ScopeValues],
    ) -> AsyncIterator[Task]:
        """Async form of :meth:`task`; the task follows the asyncio task.

        Leaving the block closes the task with :meth:`aclose_task`, so the
        event loop never waits on the budget store there.
        """
        task = self.open_task(task_id, policy=policy, attribution=attribution, **scopes)
        async with self._arunning(task):
            yield task

    def open_task(
        self,
        task_id: str | None = None,
        *,
        policy: Policy | None = None,
        attribution: Attribution | None = None,
        **scopes: Unpack[ScopeValues],
    ) -> Task:
        """Create a task and start its span; pair with :meth:`close_task`.

        The task is not made current: calls join it inside functions bound
        to it (``task.bind(fn)``) or when it is passed to them
        (``CallRequest.task``). To make a block's calls join a task, use
        :meth:`task` or :meth:`atask`.

        Raises:
            GovernorClosed: the governor was closed.
        """
        if self._closed:
            raise GovernorClosed("a task")
        task = self._new_task(task_id, policy, attribution, scopes)
        self._open_tasks.add(task)
        return task

    def _new_task(
        self,
        task_id: str | None,
        policy: Policy | None,
        attribution: Attribution | None,
        scopes: Mapping[str, Any],
        *,
        one_call: bool = False,
    ) -> Task:
        """A started task, not counted as open (one-call tasks are not).

        A one-call task's values are its call's own, so none of them is a
        default its call could replace: that work is skipped for it. A
        sub-task's policy is its parent's (the parent's override included)
        with its own override laid over it; a top-level task's starts from
        the governor's.
        """
        parent = self._own(_CURRENT.get())
        inherited = self.policy if parent is None else parent.policy
        effective = inherited.merged(policy) if policy else inherited
        if policy is not None and policy.loops.escalate_to is not None:
            self._check_escalation_price(effective)  # as Governor() does
        asked = _other_failure_mode(policy, self.policy)
        if asked is not None:
            logger.warning(
                "a task policy sets failure_mode=%r but the governor's ledger "
                "was built for %r; failure_mode applies per Governor, so make "
                "a Governor with that policy instead",
                asked,
                self.policy.failure_mode,
            )
        named = Attribution(**scopes) if scopes else None
        # A sub-task is charged where its parent is (team, user, ...) unless
        # it names its own values, in its policy or when opened: its spend
        # counts against both.
        base = effective.attribution
        own = None if policy is None else _own_values(policy.attribution, self.policy)
        if parent is not None:
            base = base.merged(parent.attribution)
            if own is not None:
                base = base.merged(own)
        base = _attribution(base, attribution, named)
        task = Task(effective, base, task_id=task_id)
        task.extras["ambient"] = current_attribution()  # already in its values
        if one_call:
            task.extras["one_call"] = True
        else:
            # The values a task policy names beyond the governor's are
            # stated; one equal to the governor's default is not (a copy of
            # the governor's policy, or the same file loaded again, names
            # nothing).
            task.extras["defaulted"] = _defaulted(
                effective.attribution, parent, own, attribution, named
            )
        task.owner = self
        task.parent = parent
        task.span = self.telemetry.start_task(task)
        return task

    def close_task(self, task: Task) -> TaskReport:
        """End a task's span with its roll-ups and return its report.

        An interrupt (Ctrl-C) while the budget left is read still ends the
        task's span (without the figure) and is raised. A task closed
        already (by its ``with`` block, say) is not closed again: its report
        comes back as ``task.report()`` gives it, with the budget left read
        at its end, and its span and the ledger are left alone.
        """
        if not self._closing(task):
            return task.report()
        try:
            task.budget_left_usd = self._budget_left(task)
        except BaseException:
            self._end_task(task)
            raise
        return self._end_task(task)

    async def aclose_task(self, task: Task) -> TaskReport:
        """Async form of :meth:`close_task`: reads the budget left by the
        ledger's async steps, without blocking the event loop.

        A cancellation during that read still ends the task's span (without
        the figure) and is raised. A task closed already is not closed again,
        as with :meth:`close_task`.
        """
        if not self._closing(task):
            return task.report()
        try:
            task.budget_left_usd = await self._abudget_left(task)
        except BaseException:
            self._end_task(task)
            raise
        return self._end_task(task)

    def _closing(self, task: Task) -> bool:
        """Mark a task closed; warn of streams it leaves unread.

        Return False, doing nothing, when the task is closed already (two
        threads closing one task: only the first ends its span).
        """
        with self._task_close_lock:
            if task.closed:
                return False
            task.closed = True
        self._open_tasks.discard(task)
        unread = task.unread_streams()
        if unread:
            log = logger.debug if self._warned_streams else logger.warning
            self._warned_streams = True
            log(
                "task %s closed with %d stream(s) not read to the end: they "
                "are charged when read out, closed or dropped, after this "
                "report; use 'with llm.completion(..., stream=True) as s:' "
                "(warned once)",
                task.id,
                unread,
            )
        return True

    def _end_task(self, task: Task) -> TaskReport:
        """End a closed task's span with its report and return the report."""
        report = task.report()
        self.telemetry.end_task(task.span, report)
        return report

    def _close_owned(self, task: Task, *, read: bool = True) -> None:
        """Close a one-call task; its report is only needed for telemetry.

        With ``read=False`` its budget left is not read from the ledger.
        """
        if task.span is None and task.stop_reason is None:
            return
        if read:
            self.close_task(task)
        elif self._closing(task):
            self._end_task(task)

    async def _aclose_owned(self, task: Task) -> None:
        """Async form of :meth:`_close_owned`."""
        if task.span is not None or task.stop_reason is not None:
            await self.aclose_task(task)

    # -- calls -----------------------------------------------------------

    def begin_call(
        self, request: CallRequest, *, recheck: Recheck | None = None
    ) -> Admission:
        """Reserve a call's worst case or raise; see the module docstring.

        ``recheck`` is asked for a cached answer when the call had to wait
        for a fan-out slot: another call may have stored it meanwhile. When
        it returns one, the call is served from it (recorded as a cache hit,
        nothing reserved, its slots given back) and the admission comes back
        settled, with the hit in ``served``.
        """
        admission = self._plan(request)
        admission.held = self._take_slots(admission, self.slots.acquire)
        admission.started_at = time.monotonic()  # a slot's wait is not call time
        if recheck is not None and admission.held.wait_s > 0:
            try:
                hit = recheck()
            except BaseException:
                release_slots(admission.held)
                raise
            if hit is not None:
                release_slots(admission.held)
                return self._served(admission, hit)
        try:
            refusal = self.ledger.reserve(*admission.hold())
            if refusal is not None and self._recount(admission):
                refusal = self.ledger.reserve(*admission.hold())
            admitted = self._admit_or_refuse(admission, refusal)
            self._leases.add(admitted)
            return admitted
        except StoreUnavailable as exc:
            release_slots(admission.held)
            self._slot_refused(admission, exc)
            raise
        except Exception:
            release_slots(admission.held)
            raise
        except BaseException:
            self._reserve_cut(admission)
            raise

    def _reserve_cut(self, admission: Admission) -> None:
        """Undo a reserve that an interrupt (Ctrl-C, ``SystemExit``) cut short.

        The reserve may have run before the interrupt arrived, so the hold is
        released (a release of a hold never made is a no-op, and keeps a late
        reserve of the id from holding anything); then the slots go back. A
        one-call task is closed without reading the store.
        """
        self._leases.discard(admission)
        self._close_cut(admission)
        try:
            release = functools.partial(self.ledger.release, admission.call_id)
            self._step_again("release", admission.call_id, release)
        finally:
            release_slots(admission.held)

    async def abegin_call(
        self, request: CallRequest, *, recheck: Recheck | None = None
    ) -> Admission:
        """Async form of :meth:`begin_call` (``recheck`` runs in a thread)."""
        ledger = self.ledger
        if not isinstance(ledger, AsyncLedger):
            return self.begin_call(request, recheck=recheck)
        admission = self._plan(request)
        try:
            admission.held = await self.slots.aacquire(
                admission.task, _charged_values(admission)
            )
        except GovernorError as exc:
            self._slot_refused(admission, exc)
            raise
        except BaseException:  # its run ended, or it was cancelled, while it waited
            self._close_cut(admission)
            raise
        admission.started_at = time.monotonic()  # a slot's wait is not call time
        if recheck is not None and admission.held.wait_s > 0:
            try:
                hit = await asyncio.to_thread(recheck)
            except BaseException:
                await arelease_slots(admission.held)
                raise
            if hit is not None:
                await arelease_slots(admission.held)
                return self._served(admission, hit)
        try:
            refusal = await ledger.areserve(*admission.hold())
            if refusal is not None and self._recount(admission):
                refusal = await ledger.areserve(*admission.hold())
            admitted = self._admit_or_refuse(admission, refusal)
            self._leases.add(admitted)
            return admitted
        except asyncio.CancelledError:
            # The reserve script may have run before the cancellation arrived.
            # A caller cancelled again (anyio, Starlette) is cut off at the
            # shield while the hold's release goes on: the slots still go back.
            self._leases.discard(admission)
            self._close_cut(admission)
            try:
                await asyncio.shield(ledger.arelease(admission.call_id))
            finally:
                await arelease_slots(admission.held)
            raise
        except StoreUnavailable as exc:
            await arelease_slots(admission.held)
            self._slot_refused(admission, exc)
            raise
        except BaseException:
            await arelease_slots(admission.held)
            raise

    def _close_cut(self, admission: Admission) -> None:
        """Give the loop guard back the count of a call cut off before it was
        sent, and close its one-call task."""
        _unsent(admission)
        if admission.owns_task and not admission.task.closed:
            self._close_owned(admission.task, read=False)

    def _served(self, admission: Admission, hit: Any) -> Admission:
        """Serve an admitted call from cache instead of reserving for it."""
        step, prompt_key = admission.extras.get("checks", (0, None))
        admission.settled = True
        admission.served = hit
        request = admission.request
        self._serve_hit(
            admission.task, admission.owns_task, request, hit, step, prompt_key
        )
        return admission

    def _take_slots(self, admission: Admission, acquire: Any) -> Held:
        """The call's fan-out slots; a call refused or cut off while it
        waited for them is unsent (its run ended, or an interrupt)."""
        try:
            held: Held = acquire(admission.task, _charged_values(admission))
        except GovernorError as exc:
            self._slot_refused(admission, exc)
            raise
        except BaseException:
            self._close_cut(admission)
            raise
        return held

    def _slot_refused(self, admission: Admission, error: GovernorError) -> None:
        """Record a call refused before it was sent (no slot, no store)."""
        _unsent(admission)
        named = admission.extras.get("attribution")
        self._refused(admission.task, error.code, admission.request.model, named)
        if admission.owns_task:
            self.close_task(admission.task)

    def end_call(self, admission: Admission, result: CallResult) -> Decimal:
        """Settle a call at its actual cost; return that cost in dollars."""
        if admission.settled:
            return Decimal(0)
        nanos, usage, cost_source = self._price_or_hold(admission, result)
        nanos, tokens = _storable(nanos, usage)
        self._settling[admission.call_id] = threading.get_ident()  # close waits
        # Settle and record before the slots go back: a slot release that
        # cannot reach its store must not cost the call its record.
        try:
            try:
                self.ledger.settle(admission.call_id, admission.keys, nanos, tokens)
            except Exception:
                raise
            except BaseException:  # an interrupt (Ctrl-C): the call was made
                self._settle_cut(admission, result, (nanos, tokens), usage, cost_source)
                raise
            return self._finish(admission, result, nanos, usage, cost_source)
        finally:
            try:
                release_slots(admission.held)
            finally:
                self._settling.pop(admission.call_id, None)

    def _settle_cut(
        self,
        admission: Admission,
        result: CallResult,
        charge: tuple[int, int],
        usage: Usage,
        cost_source: str,
    ) -> None:
        """Account a call whose settle an interrupt (Ctrl-C) cut short.

        As :meth:`aend_call` does for a cancellation: the call was made, so it
        is charged to its task, span, metrics and spend record, and a
        one-call task is closed without reading the store. The settle may or
        may not have reached the store, so it is sent again (a settle is
        idempotent per hold id): the hold is replaced by the spend, once.
        """
        nanos, tokens = charge
        try:
            self._account(admission, result, nanos, usage, cost_source)
            if admission.owns_task:
                self._close_owned(admission.task, read=False)
        finally:
            settle = functools.partial(
                self.ledger.settle, admission.call_id, admission.keys, nanos, tokens
            )
            self._step_again("settle", admission.call_id, settle)

    def _step_again(self, what: str, call_id: str, step: Callable[[], None]) -> None:
        """Send again a budget step that an interrupt cut short.

        A failure is logged, not raised: the interrupt is what the caller
        must see.
        """
        try:
            step()
        except Exception:
            logger.warning(
                "the %s of call %s, cut short by an interrupt, could not be "
                "sent again; its hold stays on the budgets until it expires "
                "(Policy.hold_ttl_s)",
                what,
                call_id,
                exc_info=True,
            )

    def _price_or_hold(
        self, admission: Admission, result: CallResult
    ) -> tuple[int, Usage, str]:
        """Price a finished call; one that cannot be priced is charged its hold."""
        self._leases.discard(admission)
        try:
            return self._price(admission, result)
        except BaseException:
            self._settle_at_hold(admission, result)
            raise

    def _settle_at_hold(self, admission: Admission, result: CallResult) -> None:
        """A call that cannot be priced is charged its hold, the worst case.

        The call was made, so releasing the hold would under-count; keeping
        it would leak the reservation and the fan-out slot until its lease.
        """
        nanos, tokens = admission.hold_nanos, admission.hold_tokens
        try:
            self.ledger.settle(admission.call_id, admission.keys, nanos, tokens)
        finally:
            try:
                self._finish(admission, result, nanos, _hold_usage(admission), "hold")
            finally:
                release_slots(admission.held)

    async def aend_call(self, admission: Admission, result: CallResult) -> Decimal:
        """Async form of :meth:`end_call`."""
        if admission.settled:
            return Decimal(0)
        ledger = self.ledger
        if not isinstance(ledger, AsyncLedger):
            return self.end_call(admission, result)
        nanos, usage, cost_source = self._price_or_hold(admission, result)
        nanos, tokens = _storable(nanos, usage)
        self._settling[admission.call_id] = threading.get_ident()  # close waits
        try:
            try:
                await ledger.asettle(admission.call_id, admission.keys, nanos, tokens)
            except asyncio.CancelledError:
                # Cut off while settling: the settle may have run (and the
                # failover queues it to make sure), so the call is recorded.
                # The store, too slow for the caller, is not read again.
                self._account(admission, result, nanos, usage, cost_source)
                if admission.owns_task:
                    self._close_owned(admission.task, read=False)
                raise
            return await self._afinish(admission, result, nanos, usage, cost_source)
        finally:
            try:
                # Runs to the end even when the caller is cancelled again here.
                await arelease_slots(admission.held)
            finally:
                self._settling.pop(admission.call_id, None)

    # -- steps -----------------------------------------------------------

    def _plan(self, request: CallRequest) -> Admission:
        _check_request(request)
        task, owns = self._task_for(request)
        prompt_key = None
        try:
            step, prompt_key = self._call_checks(task, owns, request)
            rate = self._task_rates(task).rate(request.priced_model, request.prices)
            if self._blocked and rate.provider:
                self._check_blocked(task, request, rate.provider)
        except GovernorError as exc:
            _not_sent(task, prompt_key)
            self._refused(task, exc.code, request.model)
            if isinstance(exc, PriceUnknown):  # no call span names the model
                self._refusal_event(task, {"model": request.model}, exc.code)
            if owns:
                self.close_task(task)
            raise
        bound = request.prompt_tokens
        if bound is None:
            bound = prompt_byte_bound(
                request.messages,
                request.extra_prompt,
                model=request.priced_model,
                window_tokens=rate.max_input_tokens,
            )
            if rate.max_input_tokens:  # no provider bills past its window
                bound = min(bound, _billed_window(request, rate.max_input_tokens))
        max_out = _output_ceiling(request, rate, task.policy)
        max_out, counted = _room_in_window(request, rate, max_out, bound)
        if counted is not None:  # the hold takes the count, as _recount would
            bound = min(bound, _held_count(counted))
        out_total = max_out * request.choices
        pairs = self._budget_lines(task)
        named = None if owns else self._named_by_call(task, request)
        if named is not None:
            replaced = _replaced_scopes(task, named)
            if replaced:  # a call's own value beats the policy's default
                pairs = [pair for pair in pairs if pair[0].scope not in replaced]
            pairs = pairs + self._named_lines(task, named, pairs)
        admission = Admission(
            call_id=new_id(),
            task=task,
            owns_task=owns,
            request=request,
            rate=rate,
            max_output_tokens=max_out,
            hold_nanos=self._worst_nanos(rate, bound, out_total, task),
            hold_tokens=bound + out_total,
            lines=tuple([line for _, line in pairs]),
            budgets=tuple([budget for budget, _ in pairs]),
            started_at=time.monotonic(),
            stopped_before=task.stop_reason is not None,
        )
        if named is not None:
            admission.extras["attribution"] = named
        admission.extras["checks"] = (step, prompt_key)
        if counted is not None:
            admission.extras["counted"] = True
        meter = current_meter()
        if meter is not None:
            admission.extras["meter"] = meter
        return admission

    def _call_checks(
        self, task: Task, owns: bool, request: CallRequest
    ) -> tuple[int, str | None]:
        """A run that is ending, a blocked scope, then the loop guard (a
        stopped task, the prompt, the ceilings); the call's step and prompt
        digest for the guard."""
        if task.ending is not None:
            raise task.ending()
        self._check_blocked(task, request)
        step = request.step if request.step is not None else task.model_calls + 1
        prompt_key = None
        if request.operation != EMBEDDINGS and not (
            owns and nothing_to_judge(task.policy.loops, request.messages)
        ):
            watch = loop_watch(task, self.telemetry)
            prompt_key = watch.before_call(request.messages, step, request.branch)
        return step, prompt_key

    def _named_by_call(self, task: Task, request: CallRequest) -> Attribution | None:
        """The task's attribution plus what the call names that the task lacks.

        A call inside a task may name a tenant of its own, in LiteLLM
        ``metadata={"team": ...}`` or in an ``attribute()`` block entered
        after the task opened, when the task names none: the call is then
        charged to that tenant's budgets and records as well as the task's,
        and its cache partition is the tenant's. Where the two disagree the
        task wins (it is the explicit context), with a warning logged once,
        unless the task holds that value only as the policy's default
        (``Attribution(environment="prod")``): a value the call names beats a
        default inside a task as it does outside one.
        """
        ambient = _since_opened(current_attribution(), task.extras.get("ambient"))
        given = request.attribution
        if ambient is not None:
            given = {**ambient.scope_values(), **(given or {})}
        if not given and ambient is None:
            return None
        values = task.scope_values
        defaulted: frozenset[str] = task.extras.get("defaulted", frozenset())
        added = {
            k: v
            for k, v in (given or {}).items()
            if k not in values or (k in defaulted and values[k] != v)
        }
        clashes = sorted(
            k
            for k, v in (given or {}).items()
            if k not in defaulted and values.get(k, v) != v
        )
        if clashes:
            self._warn_clash(task, given or {}, clashes)
        held = task.attribution.tags
        ambient_tags = ambient.tags if ambient is not None else {}
        tags = {k: v for k, v in ambient_tags.items() if k not in held}
        if not added and not tags:
            return None
        return task.attribution.merged(Attribution(**added, tags=tags))

    def _warn_clash(
        self, task: Task, given: Mapping[str, str], clashes: list[str]
    ) -> None:
        if self._warned_clash:
            return
        self._warned_clash = True
        logger.warning(
            "a call inside task %s names %s (in its metadata or an attribute() "
            "block), which the task sets otherwise; the task's values are "
            "charged. Open one task per tenant, or leave them out of the task "
            "to name them per call. Logged once.",
            task.id,
            ", ".join(f"{k}={given[k]!r}" for k in clashes),
        )

    def _named_lines(
        self,
        task: Task,
        named: Attribution,
        pairs: list[tuple[Budget, Line]],
    ) -> list[tuple[Budget, Line]]:
        """Budget lines of the scopes a call names beyond its task's."""
        taken = {line.key for _, line in pairs}
        moment = datetime.fromtimestamp(self._wall_clock(), UTC)
        specs = lines_for(task.policy.budgets, named.scope_values(), task.id, moment)
        extra = [(spec.budget, self._tightened(spec.line())) for spec in specs]
        return [(budget, line) for budget, line in extra if line.key not in taken]

    def check_tier_prices(self, policy: Policy) -> None:
        """Refuse a cascade tier or an escalation model that nothing prices,
        before any call is made.

        Raises:
            ConfigError: a tier's model, or ``Loops.escalate_to``, is not in
                the price map, the policy's pricing has no override or
                default for it and (for a tier) the tier's ``params`` set no
                price of their own.
        """
        self._check_escalation_price(policy)
        if policy.cascade is None:
            return
        from governor.cascade._prices import tier_rates

        self._check_tier_order(tier_rates(self.rate_card_for(policy), policy.cascade))

    def _check_escalation_price(self, policy: Policy) -> None:
        """Refuse a ``Loops.escalate_to`` model that nothing prices: the
        escalated retry would fail mid-task with PriceUnknown."""
        model = policy.loops.escalate_to
        if model is None:
            return
        try:
            self.rate_card_for(policy).rate(model)
        except (PriceUnknown, ConfigError) as exc:
            raise ConfigError(f"Loops.escalate_to {model!r}: {exc}") from exc

    def _check_tier_order(self, rates: Sequence[tuple[str, Rate]]) -> None:
        """Warn once when a tier costs more per token than the one after it."""
        if self._warned_tier_order:
            return
        for (name, rate), (later, next_rate) in itertools.pairwise(rates):
            if rate.usd_per_second is not None or next_rate.usd_per_second is not None:
                continue  # priced by time: no per-token order to compare
            price = rate.input_per_token + rate.output_per_token
            next_price = next_rate.input_per_token + next_rate.output_per_token
            if price > next_price:
                self._warned_tier_order = True
                logger.warning(
                    "cascade tier %r costs more per token than the tier after "
                    "it, %r: a cascade tries tiers in order, so it pays for the "
                    "dearer one first. List the tiers cheapest first. Logged once.",
                    name,
                    later,
                )
                return

    def rate_card_for(self, policy: Policy) -> RateCard:
        """The prices a task under ``policy`` pays (its pricing override, if any).

        The governor's own card serves every policy that prices as the
        governor's does; a task override's pricing gets a card of its own,
        made once per distinct pricing and kept among the last
        ``_RATE_CARD_MEMORY`` made (a service pricing each tenant its own way
        keeps no card per tenant for good).
        """
        pricing = policy.pricing
        if pricing is self.policy.pricing or pricing == self.policy.pricing:
            return self.rate_card
        key = pricing.model_dump_json()
        card = self._rate_cards.get(key)
        if card is None:
            if len(self._rate_cards) >= _RATE_CARD_MEMORY:  # the oldest made
                oldest = next(iter(list(self._rate_cards)), "")  # a copy: threads
                self._rate_cards.pop(oldest, None)
            card = self._rate_cards.setdefault(key, RateCard(pricing))
        return card

    def _task_for(self, request: CallRequest) -> tuple[Task, bool]:
        if self._closed:
            raise GovernorClosed("a call")
        task = self._joined_task(request)
        if task is not None:
            return task, False
        if self._open_tasks:
            self._warn_orphan_call()
        given = request.attribution
        return self._one_call_task(Attribution(**given) if given else None), True

    def _one_call_task(self, attribution: Attribution | None) -> Task:
        """A task of its own for calls made outside any task (not kept open)."""
        return self._new_task(None, None, attribution, {}, one_call=True)

    def _joined_task(self, request: CallRequest) -> Task | None:
        """The task a call joins: its own, else this governor's current one."""
        if request.task is not None:
            return request.task
        task = _CURRENT.get()
        if task is None or task.owner not in (None, self):
            return None
        if task.closed:
            _warn_late_call(task)
        return task

    def policy_for(self, request: CallRequest) -> Policy:
        """The policy a call runs under (its task's, else the governor's)."""
        task = self._joined_task(request)
        return task.policy if task is not None else self.policy

    def scope_values_for(self, request: CallRequest) -> dict[str, str]:
        """The scope values a call is charged to, as its task would have them.

        For a call outside a task: the policy's attribution, the ambient
        ``attribute()`` context and the request's own (LiteLLM ``metadata``).
        The cache partitions by these, so a tenant named only in
        ``metadata`` never reads another tenant's answers.
        """
        task = self._joined_task(request)
        if task is not None:
            named = self._named_by_call(task, request)
            return named.scope_values() if named else dict(task.scope_values)
        given = request.attribution
        own = Attribution(**given) if given else None
        return _attribution(self.policy.attribution, own).scope_values()

    def cache_partition_for(
        self, request: CallRequest, settings: Cache
    ) -> dict[str, str] | None:
        """The cache partition of a call, or None when it must skip the cache.

        A call outside any task while tasks are open (a worker thread that
        did not inherit its task), or inside another governor's task (whose
        tenant this governor does not charge it to), that names none of the
        scopes the cache partitions by would share one empty partition with
        every such call, whatever tenant it serves: it is neither served nor
        stored.
        """
        values = self.scope_values_for(request)
        if not settings.partition_by or any(s in values for s in settings.partition_by):
            return values
        joined = self._joined_task(request)
        if joined is None and _CURRENT.get() is not None:
            return None  # another governor's task; its warning is logged once
        orphan = joined.extras.get("orphan") if joined is not None else True
        if self._open_tasks and orphan:
            self._warn_orphan_call()
            return None
        self._warn_no_tenant(settings)
        return values

    def _warn_no_tenant(self, settings: Cache) -> None:
        """A cached call that names no tenant shares the unnamed partition."""
        if self._warned_no_tenant:
            return
        self._warned_no_tenant = True
        logger.warning(
            "a model call names none of the scopes the response cache "
            "partitions by (%s): it reads and fills one partition shared by "
            "every task and call that names none, whoever they serve. Name the "
            "tenant (gov.task(org=..., team=...), Policy(attribution=...) or the "
            "call's metadata), or set Cache(partition_by=()) to share on "
            "purpose. Logged once.",
            ", ".join(settings.partition_by),
        )

    def _own(self, task: Task | None) -> Task | None:
        """``task`` when this governor may nest a task under it; None for
        another governor's task (its lines, limits and ledger are that
        governor's), with a warning logged once."""
        if task is None or task.owner in (None, self):
            return task
        if not self._warned_foreign:
            self._warned_foreign = True
            logger.warning(
                "a task or call of governor %r started inside task %s of another "
                "governor (%r): it is governed by its own governor alone, not "
                "counted in that task nor held to its budgets, and a call of it "
                "that names no tenant its response cache partitions by is "
                "neither served from nor stored in that cache. Make the calls "
                "through the governor that opened the task (one Governor per "
                "process is the usual setup). Logged once.",
                self.policy.name,
                task.id,
                task.owner.policy.name if task.owner is not None else None,
            )
        return None

    def _warn_orphan_call(self) -> None:
        """A call outside any task while tasks are open: likely a worker thread."""
        if self._warned_orphan:
            return
        self._warned_orphan = True
        logger.warning(
            "a model call ran outside any governed task while %d task(s) are "
            "open; it is charged to a task of its own, not to theirs, and "
            "when it names no tenant the response cache partitions by, it is "
            "neither served from nor stored in the cache. If it belongs to one "
            "of those tasks: threads do not inherit the current task, so "
            "submit task.bind(fn) to the executor (or "
            "contextvars.copy_context().run). If the open tasks are other "
            "requests' (a web server), open a task for this one too, or name "
            "its tenant (governor.attribute(...) or the call's metadata). "
            "Logged once.",
            len(self._open_tasks),
        )

    def _task_rates(self, task: Task) -> RateCard:
        card = task.extras.get("rate_card")
        if card is None:
            card = task.extras["rate_card"] = self.rate_card_for(task.policy)
        return card

    def _worst_nanos(
        self, rate: Rate, prompt_tokens: int, max_out: int, task: Task
    ) -> int:
        return rate.worst_case_nanos(
            prompt_tokens=prompt_tokens,
            max_output_tokens=max_out,
            max_duration_s=task.policy.max_call_s if rate.usd_per_second else 0.0,
        )

    def _recount(self, admission: Admission) -> bool:
        """Replace the byte bound by an exact count; True if it shrank the hold."""
        counter = admission.request.count_prompt_tokens
        if counter is None or admission.extras.get("counted"):
            return False  # nothing to count, or counted when planned
        exact = _held_count(counter())
        old = admission.hold_tokens
        out_total = admission.max_output_tokens * admission.request.choices
        admission.hold_nanos = self._worst_nanos(
            admission.rate, exact, out_total, admission.task
        )
        admission.hold_tokens = exact + out_total
        return admission.hold_tokens < old

    def _count_held_prompt(self, admission: Admission) -> None:
        """Before a call is charged its hold (cut off after it was sent),
        count its prompt where the hold still has the byte bound: the output
        ceiling stays, but the prompt is charged as counted (with the margin
        that keeps the count an upper bound), not as its bytes allow."""
        held = admission.hold_nanos, admission.hold_tokens
        if not self._recount(admission):
            admission.hold_nanos, admission.hold_tokens = held

    def _admit_or_refuse(
        self, admission: Admission, refusal: Refusal | None
    ) -> Admission:
        task = admission.task
        if refusal is not None:
            self._refuse(admission, refusal)
        admission.extras["finished_mark"] = task.admit()
        admission.span = self._start_call_span(admission)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "task %s: reserved %s nano-USD for %s",
                task.id,
                admission.hold_nanos,
                admission.request.model,
            )
        return admission

    def _refuse(self, admission: Admission, refusal: Refusal) -> None:
        task = admission.task
        _unsent(admission)
        balance = refusal.balance
        named = admission.extras.get("attribution")
        self._refused(
            task,
            BudgetExceeded.code,
            admission.request.model,
            named,
            stops=not admission.request.skippable,
        )
        if refusal.unit == "usd":
            limit = nanos_to_usd(balance.limit_nanos or 0)
            spent = nanos_to_usd(balance.spent_nanos)
            reserved = nanos_to_usd(balance.reserved_nanos)
            requested = nanos_to_usd(admission.hold_nanos)
        else:
            limit = Decimal(balance.limit_tokens or 0)
            spent = Decimal(balance.spent_tokens)
            reserved = Decimal(balance.reserved_tokens)
            requested = Decimal(admission.hold_tokens)
        holds_block = spent + requested <= limit
        error = BudgetExceeded(
            scope=balance.key,
            unit=refusal.unit,
            limit=limit,
            spent=spent,
            reserved=reserved,
            requested=requested,
            model=admission.request.model,
            task_id=task.id,
            task_spent_usd=task.cost_usd,
            task_spent_tokens=task.tokens,
            advice=_refusal_advice(admission, refusal.unit),
            holds_note=_holds_note(refusal, holds_block, task.policy.hold_ttl_s),
            holds_lapse_s=_holds_lapse_s(refusal, holds_block, task.policy),
            resets_at=parse_line_key(balance.key).resets_at,
        )
        facts: dict[str, AttrValue] = {
            "scope": balance.key,
            "unit": refusal.unit,
            "model": admission.request.model,
            "requested": float(requested),
            "left": float(error.left),
        }
        self._refusal_event(task, facts, BudgetExceeded.code)
        if admission.owns_task:
            self.close_task(task)
        raise error

    def _refusal_event(
        self, task: Task, facts: dict[str, AttrValue], reason: str
    ) -> None:
        """Put a refusal on its task's span: a ``governor.refused`` event
        with the refused call's facts and the ``reason`` (the error code)."""
        self.telemetry.event(task.span, attr.EVENT_REFUSED, {**facts, "reason": reason})

    def _refused(
        self,
        task: Task,
        reason: str,
        model: str,
        attribution: Attribution | None = None,
        *,
        stops: bool = True,
    ) -> None:
        task.refuse(reason, stops=stops)
        charged_to = (
            attributes_of(attribution) if attribution else attribution_attributes(task)
        )
        self.telemetry.record_refusal(
            {attr.GEN_AI_REQUEST_MODEL: model, "reason": reason, **charged_to}
        )
        if self._recording():
            self._submit_record(
                task,
                new_id(),
                model,
                attribution=attribution,
                outcome="refused",
                stop_reason=reason,
                provider=self._provider_of(task, model),
            )

    def _price(
        self, admission: Admission, result: CallResult
    ) -> tuple[int, Usage, str]:
        if result.charge_hold:
            self._count_held_prompt(admission)
            return admission.hold_nanos, _hold_usage(admission), "hold"
        usage = result.usage or Usage()
        self._check_over_ceiling(admission, usage)
        self._check_over_prompt(admission, usage)
        if usage.total_tokens == 0 and admission.rate.usd_per_second is None:
            return 0, usage, admission.rate.source
        rate = admission.rate
        other = self._answered_rate(admission, result.response_model)
        if other is not None and other.cost_nanos(usage) > rate.cost_nanos(usage):
            rate = other
        # Only a rate priced per second reads the call's duration.
        duration = None
        if rate.usd_per_second is not None:
            duration = time.monotonic() - admission.started_at
            self._check_over_time(admission, duration)
        return rate.cost_nanos(usage, duration_s=duration), usage, rate.source

    def _answered_rate(self, admission: Admission, answered: str | None) -> Rate | None:
        """The rate of the model the response names, where the rate card
        prices it differently from the one requested (a proxy that answers
        with another model bills that one); else None.

        None for the same name, a name the card cannot price, a call that
        sets its own prices or is priced per second, and a dated variant of
        a model the policy overrides. The call is settled at the dearer of
        the two; a pair is logged once. Each pair is looked up once.
        """
        request = admission.request
        rate = admission.rate
        if (
            not answered
            or answered in (request.model, request.model.rpartition("/")[2])
            or request.prices
        ):
            return None  # the name asked for (an Azure deployment's, say)
        if rate.usd_per_second is not None:
            return None
        card = self._task_rates(admission.task)
        key = (card, request.priced_model, answered)
        if key in self._answered:
            return self._answered[key]
        found = _other_rate(card, request, rate, answered)
        if len(self._answered) >= 1024:
            self._answered.clear()
        self._answered[key] = found
        if found is not None:
            logger.warning(
                "a call to %s was answered by %s, which the rate card prices "
                "differently (a proxy or router answering with another "
                "model); it is charged at the dearer of the two. Request the "
                "model that answers, or override the price of %s in "
                "Pricing.overrides if it is right. Logged once per pair.",
                request.model,
                answered,
                request.model,
            )
        return found

    def _check_over_time(self, admission: Admission, duration_s: float) -> None:
        """Say so when a call priced per second ran past ``Policy.max_call_s``.

        Its hold covered only that much time; it is charged its wall time
        (that is the bill), so it can overrun the budget it was admitted
        under. Logged once a model; not for a stream an adapter cut at the
        limit (the ``time_cut`` extra), whose adapter says so itself.
        """
        limit = admission.task.policy.max_call_s
        model = admission.request.model
        if duration_s <= limit or model in self._warned_slow:
            return
        if not admission.rate.usd_per_second or admission.extras.get(TIME_CUT):
            return
        self._warned_slow.add(model)
        logger.warning(
            "a call to %s, priced per second, ran %.1f s, %.1f s past "
            "Policy.max_call_s (%g s), the time its call held; it is charged "
            "the time it ran, which can overrun its budgets. Raise max_call_s "
            "to the longest call the model makes, or give its client a "
            "timeout of at most max_call_s (the LiteLLM adapter sends "
            "timeout=max_call_s, which a custom provider may ignore). Logged "
            "once per model.",
            model,
            duration_s,
            duration_s - limit,
            limit,
        )

    def _check_over_ceiling(self, admission: Admission, usage: Usage) -> None:
        """Say so when a provider reports more output than the ceiling sent.

        The call is charged what the provider reports (that is the bill), so
        it can overrun the budget it was admitted under; logged once a model.
        """
        ceiling = admission.max_output_tokens * admission.request.choices
        model = admission.request.model
        if usage.completion_tokens <= ceiling or model in self._warned_over:
            return
        if admission.request.operation == EMBEDDINGS:
            return
        self._warned_over.add(model)
        request = admission.request
        sent = f"max_tokens={admission.max_output_tokens}"
        if request.choices > 1:  # the ceiling is max_tokens for each choice
            sent += f" x n={request.choices}"
        if usage.estimated:  # the figure is the governor's, not the provider's
            logger.warning(
                "a call to %s that was sent %s is charged %d output tokens, "
                "marked estimated: the provider's usage was missing, partial or "
                "malformed, and the figure is a local count of the answer or "
                "comes from what of that usage was usable (such as its "
                "total_tokens less the prompt). It can overrun its budgets; a "
                "local count may run high for a model whose tokenizer is not "
                "known. Logged once per model.",
                model,
                sent,
                usage.completion_tokens,
            )
            return
        logger.warning(
            "the provider reported %d output tokens for a call to %s that was "
            "sent %s; it is charged as reported, which can overrun its "
            "budgets. Check that the provider honours max_tokens (a proxy may "
            "drop it). Logged once per model.",
            usage.completion_tokens,
            model,
            sent,
        )

    def _check_over_prompt(self, admission: Admission, usage: Usage) -> None:
        """Say so when a provider reports more prompt tokens than were held.

        The hold took the prompt's byte bound, or its local count plus the
        margin; a provider or proxy that adds to the prompt (a system prompt
        of its own) bills more. The call is charged what the provider reports
        (that is the bill), so it can overrun the budget it was admitted
        under; logged once a model. Not for usage counted locally.
        """
        held = _held_prompt_tokens(admission)
        if usage.prompt_tokens <= held or usage.estimated:
            return  # within the hold, or the governor's own figure
        model = admission.request.model
        if model in self._warned_prompt:
            return
        self._warned_prompt.add(model)
        logger.warning(
            "the provider reported %d prompt tokens for a call to %s whose "
            "hold allowed %d for its prompt; it is charged as reported, which "
            "can overrun its budgets. A provider or proxy that adds to the "
            "prompt (a system prompt of its own) bills tokens the hold never "
            "counted: send the prompt as the provider sees it (put what the "
            "proxy adds in the messages), or leave room in the budgets for "
            "what it adds. Logged once per model.",
            usage.prompt_tokens,
            model,
            held,
        )

    def _finish(
        self,
        admission: Admission,
        result: CallResult,
        nanos: int,
        usage: Usage,
        cost_source: str,
    ) -> Decimal:
        settled_at = time.monotonic()  # any read started later counts this call
        cost = self._account(admission, result, nanos, usage, cost_source)
        # An interrupt during the warnings' reads still closes a one-call task.
        try:
            amounts = (nanos, _settled_tokens(usage))
            self._check_warnings(admission, amounts, settled_at)
        finally:
            if admission.owns_task:
                self._close_owned(admission.task)
        return cost

    async def _afinish(
        self,
        admission: Admission,
        result: CallResult,
        nanos: int,
        usage: Usage,
        cost_source: str,
    ) -> Decimal:
        """Async form of :meth:`_finish`: balances are read by async steps.

        The call is accounted for first: a cancellation during those reads
        skips only the warnings, and a one-call task is still closed.
        """
        settled_at = time.monotonic()  # any read started later counts this call
        cost = self._account(admission, result, nanos, usage, cost_source)
        try:
            amounts = (nanos, _settled_tokens(usage))
            await self._acheck_warnings(admission, amounts, settled_at)
        finally:
            if admission.owns_task:
                await self._aclose_owned(admission.task)
        return cost

    def _account(
        self,
        admission: Admission,
        result: CallResult,
        nanos: int,
        usage: Usage,
        cost_source: str,
    ) -> Decimal:
        """Charge a settled call to its task, span, metrics and spend record."""
        admission.settled = True
        task = admission.task
        request = admission.request
        # A one-call task's output is its guard's first, which no rule can
        # judge a loop (each compares an output with earlier ones), and the
        # task ends with this call: observing it would only cost time (words
        # and shingles of the whole answer). A call that another call of the
        # task overtook (asyncio.gather, threads) did not follow it: like
        # answers among them are fan-out, not a loop.
        judged = (
            request.operation != EMBEDDINGS
            and not admission.owns_task
            and not task.overtaken(admission.extras.get("finished_mark", -1))
        )
        # Settled first: a loop this output reveals is reported with its cost.
        task.settle(
            nanos=nanos,
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
        )
        if judged:
            step = request.step if request.step is not None else task.model_calls
            loop_watch(task, self.telemetry).after_call(
                result.output_text,
                step,
                request.node,
                admission.extras.get("checks", (0, None))[1],
                outputs=not request.skippable,  # a cascade's: after_answer
            )
        elif request.skippable:  # a cascade attempt after_answer must not judge
            attempt_answered(result.output_text, judged=False)
        meter = admission.extras.get("meter")
        if meter is not None:
            meter.add(nanos, usage.prompt_tokens + usage.completion_tokens)
        cost = nanos_to_usd(nanos)
        cost_f = nanos / NANOS_PER_USD  # the same double as float(cost)
        duration = time.monotonic() - admission.started_at
        self._close_call_span(admission, result, usage, cost_f, cost_source)
        self.telemetry.record_call(
            self._labels(admission),
            cost_usd=cost_f,
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
            duration_s=duration,
            error=result.error,
        )
        if self._recording():
            self._record(admission, usage, cost, duration, result.error)
        return cost

    def _record(
        self,
        admission: Admission,
        usage: Usage,
        cost: Decimal,
        duration_s: float,
        error: BaseException | None,
    ) -> None:
        self._submit_record(
            admission.task,
            admission.call_id,
            admission.request.model,
            attribution=admission.extras.get("attribution"),
            provider=admission.rate.provider,
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            audio_input_tokens=usage.audio_input_tokens,
            audio_output_tokens=usage.audio_output_tokens,
            audio_cache_read_tokens=usage.audio_cache_read_tokens,
            cost_usd=cost,
            cost_estimated=bool(usage.estimated),
            outcome=_outcome(error),
            stop_reason=_own_stop(admission),
            latency_s=duration_s,
        )

    def _submit_record(
        self,
        task: Task,
        call_id: str,
        model: str,
        attribution: Attribution | None = None,
        **fields: Any,
    ) -> None:
        """Queue one spend record with the task's attribution for the writer."""
        from governor.spend import SpendRecord

        attribution = attribution or task.attribution
        try:
            record = SpendRecord(
                ts=datetime.now(UTC),
                task_id=task.id,
                call_id=call_id,
                model=model,
                team=attribution.team,
                feature=attribution.feature,
                environment=attribution.environment,
                user=attribution.user,
                session=attribution.session,
                org=attribution.org,
                tags=dict(attribution.tags),
                **fields,
            )
        except (TypeError, ValueError):
            logger.warning("could not build a spend record", exc_info=True)
            return
        if self.recorder is not None:
            self.recorder.submit(record)

    # -- budget lines ----------------------------------------------------

    def _lines(self, task: Task) -> list[Line]:
        return [line for _, line in self._budget_lines(task)]

    def _budget_lines(self, task: Task) -> list[tuple[Budget, Line]]:
        """The task's budget lines, recomputed only when a window rolls over."""
        if not task.policy.budgets and task.parent is None:
            return []
        cached = task.extras.get("lines")
        now = self._wall_clock()
        if (
            cached is not None
            and now < cached[0]
            and cached[2] == self._tighten_version
        ):
            return cached[1]  # type: ignore[no-any-return]
        valid_until, shared = self._shared_lines(
            task.policy.budgets, task.scope_values, now
        )
        moment: datetime | None = None
        pairs = []
        for budget, line, resets_at in shared:
            if budget.scope == "task":
                key = f"task:{task.id}{line.key[len(_PLACEHOLDER_TASK_KEY) :]}"
                line = _line_as(line, key, self._task_line_ttl(task, line))
            elif resets_at is not None:
                # A calendar window's line lives the rest of the window plus
                # one period, counted from now.
                if moment is None:
                    moment = datetime.fromtimestamp(now, UTC)
                ttl_s = calendar_ttl(budget.period, resets_at, moment)
                line = _line_as(line, line.key, ttl_s)
            pairs.append((budget, self._tightened(line)))
        if task.parent is not None:
            taken = {line.key for _, line in pairs}
            pairs.extend(self._parent_task_lines(task, taken))
        task.extras["lines"] = (valid_until, pairs, self._tighten_version)
        return pairs

    def _warn_unnamed(
        self, budgets: Sequence[Budget], scope_values: Mapping[str, str]
    ) -> None:
        """Say once per scope that a budget of it charges nothing for a task
        that names no value of that scope (the budget is silently skipped)."""
        missing = sorted(
            {b.scope for b in budgets if b.scope != "task" and b.key is None}
            - scope_values.keys()
            - self._warned_unnamed
        )
        if not missing:
            return
        self._warned_unnamed.update(missing)
        for scope in missing:
            logger.warning(
                "a task names no %(scope)s, so the policy's "
                "Budget(scope=%(quoted)s) charges nothing for it unless its "
                "calls name one. Give the %(scope)s per task (gov.task("
                "%(scope)s=...)), around calls (with governor.attribute("
                "%(scope)s=...)), on the policy (Attribution(%(scope)s=...)), or "
                "per call under the metadata key %(quoted)s (metadata={"
                "%(quoted)s: ...}). Logged once per scope.",
                {"scope": scope, "quoted": repr(scope)},
            )

    def _task_line_ttl(self, task: Task, line: Line) -> float | None:
        """A one-call task's line lives as long as a hold, not a day.

        Its id is random and never used again, so keeping the line for a day
        (for a task id a retry may reuse) would only fill the store: one
        line per call made outside a task. A replay keeps its task lines
        while it runs: its recorded tasks may pause for days.
        """
        if task.extras.get("one_call") and line.ttl_s is not None:
            return min(line.ttl_s, task.policy.hold_ttl_s)
        return None if self._task_lines_kept else line.ttl_s

    def _shared_lines(
        self, budgets: Sequence[Budget], scope_values: Mapping[str, str], now: float
    ) -> tuple[float, list[tuple[Budget, Line, datetime | None]]]:
        """The lines of these budgets for these scope values, with each
        calendar window's reset, worked out once per window and shared by the
        tasks that have them (one-call tasks would otherwise work them out on
        every call). Task lines are made for a placeholder task id."""
        key = (id(budgets), tuple(scope_values.items()))
        entry = self._line_templates.get(key)
        if entry is not None and entry[1] is budgets and now < entry[0]:
            return entry[0], entry[2]
        moment = datetime.fromtimestamp(now, UTC)
        specs = lines_for(budgets, scope_values, _PLACEHOLDER_TASK_ID, moment)
        if len(specs) < len(budgets):  # worked out once per template, not call
            self._warn_unnamed(budgets, scope_values)
        shared = [(s.budget, s.line(), s.window.resets_at) for s in specs]
        resets = [s.window.resets_at.timestamp() for s in specs if s.window.resets_at]
        rolling = any(s.window.window_s is not None for s in specs)
        valid_until = now if rolling else min(resets, default=float("inf"))
        if not rolling:
            if len(self._line_templates) >= _TEMPLATE_MEMORY:
                self._line_templates.clear()
            self._line_templates[key] = (valid_until, budgets, shared)
        return valid_until, shared

    def _parent_task_lines(
        self, task: Task, taken: set[str]
    ) -> list[tuple[Budget, Line]]:
        """A sub-agent's calls also count against its parent task's budgets."""
        parent = task.parent
        if parent is None:
            return []
        return [
            (budget, line)
            for budget, line in self._budget_lines(parent)
            if line.key.startswith("task:") and line.key not in taken
        ]

    def _budget_left(self, task: Task) -> Decimal | None:
        """The USD room the task's tightest line has left, or None when no
        USD budget applies to it (or the ledger could not be read).

        A line the ledger has not seen yet (the task's own line before its
        first admitted call) has its whole limit left.
        """
        try:
            left: Decimal | None = None
            for line in self._lines(task):
                left = _tighter(left, line, self.ledger.balance(line.key))
        except GovernorError:
            logger.debug("no budget balance for task %s", task.id, exc_info=True)
            return None
        return left

    async def _abudget_left(self, task: Task) -> Decimal | None:
        """Async form of :meth:`_budget_left`."""
        try:
            left: Decimal | None = None
            for line in self._lines(task):
                left = _tighter(left, line, await self._abalance(line.key))
        except GovernorError:
            logger.debug("no budget balance for task %s", task.id, exc_info=True)
            return None
        return left

    async def _abalance(self, key: str) -> Balance | None:
        """A line's balance, by the ledger's async step when it has one."""
        ledger = self.ledger
        if isinstance(ledger, AsyncLedger):
            return await ledger.abalance(key)
        return ledger.balance(key)

    def _check_warnings(
        self, admission: Admission, amounts: tuple[int, int], settled_at: float
    ) -> None:
        """Warn once per line, unit and threshold crossed, reading each line
        rarely; ``amounts`` is what the call settled (nano-USD, tokens), by
        ``settled_at`` (monotonic seconds)."""
        for budget, line in self._warn_due(admission, amounts):
            read_at = time.monotonic()
            try:
                balance = self.ledger.balance(line.key)
            except GovernorError:
                continue
            read = _Read(balance, read_at)
            self._warn_crossed(admission, budget, line, read, (amounts, settled_at))

    async def _acheck_warnings(
        self, admission: Admission, amounts: tuple[int, int], settled_at: float
    ) -> None:
        """Async form of :meth:`_check_warnings`."""
        for budget, line in self._warn_due(admission, amounts):
            read_at = time.monotonic()
            try:
                balance = await self._abalance(line.key)
            except GovernorError:
                continue
            read = _Read(balance, read_at)
            self._warn_crossed(admission, budget, line, read, (amounts, settled_at))

    def _warn_due(
        self, admission: Admission, amounts: tuple[int, int]
    ) -> list[tuple[Budget, Line]]:
        """The call's shared lines with warnings that are due a read now.

        A line is read at most once a second, unless what this process has
        settled on it since its last read may have crossed a threshold not
        yet announced (in either unit): a crossing inside that second is not
        left for a later call, which may never come (the next ones refused).
        """
        now = time.monotonic()
        if len(self._warn_checked) > _WARN_MEMORY:
            self._forget_idle_lines()
        due: list[tuple[Budget, Line]] = []
        for budget, line in zip(admission.budgets, admission.lines, strict=True):
            if budget.scope == "task" or not budget.warn_at:
                continue
            if not line.limit_nanos and not line.limit_tokens:
                continue
            # Taken out and put back: the dict's order is the lines' last use.
            read_at, nanos, tokens = self._warn_checked.pop(line.key, _NEVER_READ)
            spent = (nanos + amounts[0], tokens + amounts[1])
            recent = now - read_at < _WARN_EVERY_S
            if recent and not self._may_cross(budget, line, spent):
                self._warn_checked[line.key] = (read_at, *spent)
                continue
            self._warn_checked[line.key] = (now, *spent)
            due.append((budget, line))
        return due

    def _forget_idle_lines(self) -> None:
        """Forget the least recently used half of the lines read for warnings.

        Session and user lines pile up in a long-lived process. The lines in
        use keep their announced thresholds, so a team's 80% is not said
        again because ten thousand sessions came and went; a line forgotten
        and used again may have a threshold announced twice.
        """
        idle = list(self._warn_checked)[: len(self._warn_checked) // 2]
        for key in idle:
            del self._warn_checked[key]
            self._warn_read.pop(key, None)
        self._warned = {w for w in self._warned if w[0] in self._warn_checked}

    def _may_cross(self, budget: Budget, line: Line, spent: tuple[int, int]) -> bool:
        """Whether a line's estimated spend (nano-USD, tokens) reaches a
        threshold not yet announced for it."""
        return any(
            used >= fraction * limit and (line.key, unit, fraction) not in self._warned
            for unit, used, limit in _warn_units(line, spent)
            for fraction in budget.warn_at
        )

    def _warn_crossed(
        self,
        admission: Admission,
        budget: Budget,
        line: Line,
        read: _Read,
        settled: tuple[tuple[int, int], float],
    ) -> None:
        """Announce the thresholds of ``budget`` a line's spend has crossed.

        ``settled`` is what the call settled (nano-USD, tokens) and when.
        When a read shows less spend than the line's last read held, plus
        this call's spend if it settled after that read began (a rolling
        window let spend go, or the line was reset), the thresholds the line
        was below before this call are armed again: the next crossing of
        each is announced again. (Not against this process's running
        estimate: another thread's read may hold this call's spend already.)
        """
        balance = read.balance
        if balance is None:
            return
        amounts, settled_at = settled
        read_at = self._warn_checked.get(line.key, (time.monotonic(), 0, 0))[0]
        spent = (balance.spent_nanos, balance.spent_tokens)
        last = self._warn_read.get(line.key)
        self._warn_checked[line.key] = (read_at, *spent)
        self._warn_read[line.key] = _Read(balance, read.at)
        for unit, used, limit in _warn_units(line, spent):
            index = 0 if unit == "usd" else 1
            before = None
            if last is not None and used < _expected(last, index, amounts, settled_at):
                # This call's spend taken off: where the line stood before it.
                before = (used - amounts[index]) / limit
            crossed = self._crossed(budget, (line.key, unit), used / limit, before)
            if crossed:  # one line however many thresholds one call crossed
                self._announce(admission, line.key, unit, (used, limit), crossed)

    def _crossed(
        self,
        budget: Budget,
        line_unit: tuple[str, str],
        used: float,
        before: float | None,
    ) -> list[float]:
        """The thresholds newly crossed by a line's ``used`` fraction of a unit,
        marked announced; those above ``before`` (given after a drop in spend)
        are armed again first."""
        crossed = []
        for fraction in budget.warn_at:
            warned = (*line_unit, fraction)
            if before is not None and before < fraction:
                self._warned.discard(warned)
            if used >= fraction and warned not in self._warned:
                self._warned.add(warned)
                crossed.append(fraction)
        return crossed

    def _announce(
        self,
        admission: Admission,
        key: str,
        unit: str,
        figures: tuple[int, int],
        crossed: list[float],
    ) -> None:
        """Log one warning and add a span event per threshold crossed."""
        for fraction in crossed:
            self.telemetry.event(
                admission.task.span,
                attr.EVENT_WARNING,
                {"scope": key, "unit": unit, "fraction": fraction},
            )
        used, limit = figures
        past = format(max(crossed) * 100, "g")
        if unit == "usd":
            logger.warning(
                "budget %s has used %.0f%% of its limit (past its warn_at %s%%)",
                key,
                used / limit * 100,
                past,
            )
            return
        logger.warning(
            "budget %s has used %.0f%% of its token limit (%d of %d tokens, "
            "past its warn_at %s%%)",
            key,
            used / limit * 100,
            used,
            limit,
            past,
        )

    # -- spans -----------------------------------------------------------

    def _start_call_span(self, admission: Admission) -> Any:
        if not self.telemetry.tracing():
            return None  # no tracer provider: no span, nothing to build
        request = admission.request
        parent = request.parent_span or admission.task.span
        name = f"{request.operation} {request.model}"
        span = self.telemetry.start_span(name, parent, {}, kind=SpanKind.CLIENT)
        if span is None or not span.is_recording():
            return span  # no tracer configured: skip building attributes
        attributes: dict[str, AttrValue] = {
            attr.GEN_AI_OPERATION_NAME: request.operation,
            attr.GEN_AI_REQUEST_MODEL: request.model,
            attr.TASK_ID: admission.task.id,
            attr.CALL_ID: admission.call_id,
            attr.CALL_RESERVED_USD: admission.hold_nanos / NANOS_PER_USD,
            attr.FANOUT_WAIT_S: admission.held.wait_s,
            **_call_attribution_attributes(admission),
        }
        if admission.rate.provider:
            attributes[attr.GEN_AI_PROVIDER_NAME] = admission.rate.provider
        if request.operation != "embeddings":  # an embedding writes nothing
            attributes[attr.GEN_AI_REQUEST_MAX_TOKENS] = admission.max_output_tokens
        self.telemetry.set_attributes(span, attributes)
        self.telemetry.event(
            span,
            attr.EVENT_RESERVED,
            {
                "usd": admission.hold_nanos / NANOS_PER_USD,
                "tokens": admission.hold_tokens,
                "max_output_tokens": admission.max_output_tokens,
            },
        )
        return span

    def _close_call_span(
        self,
        admission: Admission,
        result: CallResult,
        usage: Usage,
        cost_f: float,
        cost_source: str,
    ) -> None:
        span = admission.span
        if span is None or not span.is_recording():
            if span is not None:
                span.end()
            return
        # A hold charge's usage is an estimate too; "hold" says which kind.
        estimated = usage.estimated and cost_source != "hold"
        source = "estimated" if estimated else cost_source
        attributes: dict[str, AttrValue] = {
            attr.GEN_AI_USAGE_INPUT_TOKENS: usage.prompt_tokens,
            attr.GEN_AI_USAGE_OUTPUT_TOKENS: usage.completion_tokens,
            attr.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: usage.cache_read_tokens,
            attr.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: usage.cache_write_tokens,
            attr.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: usage.reasoning_tokens,
            attr.GEN_AI_USAGE_COST_AMOUNT: cost_f,
            attr.GEN_AI_USAGE_COST_CURRENCY: attr.CURRENCY_USD,
            attr.GEN_AI_USAGE_COST_SOURCE: source,
            attr.LLM_COST_TOTAL: cost_f,
            attr.GEN_AI_USAGE_COST: cost_f,
            attr.CALL_COST_ESTIMATED: usage.estimated,
        }
        if result.response_model:
            attributes[attr.GEN_AI_RESPONSE_MODEL] = result.response_model
        if result.finish_reasons:  # a string array, as the conventions say
            attributes[attr.GEN_AI_RESPONSE_FINISH_REASONS] = tuple(
                result.finish_reasons
            )
        self.telemetry.event(
            admission.span,
            attr.EVENT_SETTLED,
            {"usd": cost_f, "tokens": usage.total_tokens},
        )
        self.telemetry.end_span(admission.span, attributes, result.error)

    def _labels(self, admission: Admission) -> Mapping[str, AttrValue]:
        """A call's metric labels, made once per operation, model (as metrics
        name it: the models past the cap share one entry), provider and
        (frozen) attribution, and shared by the tasks that have them: every
        call outside a task is a task of its own."""
        model = self.telemetry.metric_model(admission.request.model)
        if "attribution" in admission.extras:  # a tenant named by the call
            return self._new_labels(admission, model)
        request, attribution = admission.request, admission.task.attribution
        key = (request.operation, model, admission.rate.provider, id(attribution))
        entry = self._label_sets.get(key)
        if entry is None or entry[0] is not attribution:
            if len(self._label_sets) >= _TEMPLATE_MEMORY:
                self._label_sets.clear()
            labels = self._new_labels(admission, model)
            entry = self._label_sets[key] = (attribution, labels)
        return entry[1]

    def _new_labels(self, admission: Admission, model: str) -> dict[str, AttrValue]:
        """A call's metric labels: model, operation, provider, bounded attribution."""
        labels: dict[str, AttrValue] = {
            attr.GEN_AI_OPERATION_NAME: admission.request.operation,
            attr.GEN_AI_REQUEST_MODEL: model,
        }
        if admission.rate.provider:
            labels[attr.GEN_AI_PROVIDER_NAME] = admission.rate.provider
        labels.update(_call_attribution_attributes(admission))
        return metric_attributes(labels)


def _check_arguments(ledger: Any, anomalies: Any) -> None:
    """Refuse a ledger or anomaly setting of the wrong kind, before any call."""
    if ledger is not None and not callable(getattr(ledger, "reserve", None)):
        hint = (
            f"build one: ledger=RedisLedger({ledger!r})"
            if isinstance(ledger, str)
            else "pass RedisLedger(url) or MemoryLedger()"
        )
        raise ConfigError(
            f"Governor(ledger=...) takes a ledger, got {type(ledger).__name__}; "
            f"{hint} (from governor.stores)"
        )
    if anomalies is not None:
        from governor.anomaly import Anomalies, AnomalyMonitor

        if not isinstance(anomalies, Anomalies | AnomalyMonitor):
            raise ConfigError(
                "Governor(anomalies=...) takes Anomalies(...) or an "
                f"AnomalyMonitor, got {type(anomalies).__name__}; e.g. "
                "anomalies=Anomalies(webhook_url=...)"
            )


def _spend_target(spend: Any) -> Any:
    """The spend target as the recorder takes it (a path-like object as a
    Path); one of the wrong kind is refused at construction, as at call time
    each of its records would be lost, with only a warning."""
    if spend is None or isinstance(spend, str | Path):
        return spend
    if isinstance(spend, os.PathLike):
        path = os.fspath(spend)
        if isinstance(path, str):
            return Path(path)
    if callable(getattr(spend, "record_many", None)):
        return spend
    raise TypeError(
        "Governor(spend=...) takes a path (str or path-like: a .sqlite3 or "
        ".jsonl file), a Redis URL (redis://...) or a spend store object with "
        "the governor.spend.SpendStore methods (record, record_many, query); "
        f"got {type(spend).__name__} {spend!r}. E.g. "
        "spend='.governor/spend.sqlite3' or spend=SQLiteSpendStore(path)"
    )


def _other_failure_mode(override: Policy | None, base: Policy) -> str | None:
    """The failure mode a task override sets when it is not the governor's.

    Read from the override itself, not the merge: a merge drops a field set
    to its default ("closed"), which the override asks for all the same.
    """
    if override is None or "failure_mode" not in override.model_fields_set:
        return None
    mode = override.failure_mode
    return None if mode == base.failure_mode else mode


def _own_stop(admission: Admission) -> str | None:
    """Why the task was stopped, when it was stopped while this call was
    under way; None for a call admitted after the stop (a fallback)."""
    return None if admission.stopped_before else admission.task.stop_reason


def _import_for_calls(policy: Policy) -> None:
    """Import now the modules the policy's first calls would import.

    A child forked while a parent thread was importing a module waits for
    good on that module's import lock; a module imported here, before any
    call, cannot be half-imported at a fork.
    """
    fanout = policy.fanout
    if fanout.max_inflight_calls or fanout.scope_caps or fanout.max_branches:
        import governor.stores._semaphore
    if policy.cache is not None:
        import governor.cache  # noqa: F401


def _close_limit_s(timeout_s: float) -> float:
    """A close timeout as a wait the clock and the queues can take: NaN and
    negative ones are 0, infinite or huge ones a day."""
    try:
        seconds = float(timeout_s)
    except OverflowError:  # an int past a float's range, either way
        seconds = math.inf if timeout_s > 0 else -math.inf
    if math.isnan(seconds) or seconds < 0:
        return 0.0
    return min(seconds, _LONGEST_CLOSE_S)


class _TimeLeft:
    """The time a close has left: one deadline for all its stages.

    Without a timeout each stage keeps its own default (``_DRAIN_S`` for the
    waits, None, meaning the stage's own rule, for the writer and webhook).
    """

    __slots__ = ("deadline",)

    def __init__(self, timeout_s: float | None, deadline: float | None = None) -> None:
        if deadline is None and timeout_s is not None:
            deadline = time.monotonic() + _close_limit_s(timeout_s)
        self.deadline = deadline

    def stage_s(self) -> float:
        """Seconds a waiting stage may take."""
        left = self.total_s()
        return _DRAIN_S if left is None else left

    def total_s(self) -> float | None:
        """Seconds left before the deadline (0 once past), or None."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def writer_s(self) -> float | None:
        """Seconds for the spend writer: what is left, but never so little
        that a store that answers cannot take the queued records."""
        left = self.total_s()
        return None if left is None else max(left, _LAST_WRITE_S)


@dataclasses.dataclass(frozen=True, slots=True)
class _Unsent:
    """Budget steps that close() could not write to the store."""

    settles: int
    nanos: int
    releases: int
    slots: int


def _spend_kept(recorder: SpendRecorder | None, lost: int) -> str:
    """Where the spend of unwritten settles is still recorded, for the warning."""
    if recorder is None or recorder.store is None:
        return " (no spend store is set: this warning is its only record)"
    if lost:
        return (
            f" (the spend store {recorder.where} did not take {lost} spend "
            "record(s) either: this warning may be its only record)"
        )
    return f" (its calls are in the spend records, in {recorder.where})"


def _recorder(
    spend: SpendStore | str | Path | None, monitor: Any, ledger_prefix: str | None
) -> SpendRecorder | None:
    """The spend writer; a Redis URL opens a store under the ledger's prefix."""
    observers = [monitor.observe] if monitor is not None else []
    if spend is None:
        return SpendRecorder(None, observers=observers) if observers else None
    if isinstance(spend, str | Path):
        from governor.spend import open_store
        from governor.spend._open import is_redis_target

        prefix = ledger_prefix if is_redis_target(str(spend)) else None
        return SpendRecorder(open_store(spend, prefix=prefix), observers=observers)
    return SpendRecorder(spend, observers=observers)


def _redis_ledger(ledger: Ledger) -> RedisLedger | None:
    """The Redis ledger behind ``ledger`` (a failover's primary), or None."""
    module = sys.modules.get("governor.stores._redis")  # unloaded: no Redis ledger
    store = getattr(ledger, "primary", ledger)
    redis_ledger_type: type[RedisLedger] | None = getattr(module, "RedisLedger", None)
    if redis_ledger_type is None or not isinstance(store, redis_ledger_type):
        return None
    return store


def _redis_prefix(ledger: Ledger) -> str | None:
    """The key prefix of the Redis ledger behind ``ledger``, or None."""
    redis_ledger = _redis_ledger(ledger)
    return redis_ledger.prefix if redis_ledger is not None else None


def _cache_under_ledger(settings: Cache, ledger_prefix: str | None) -> Cache:
    """A Redis cache's settings with its keys under the ledger's prefix.

    Deployments that share one Redis keep apart by their ledger prefix; a
    cache whose ``key_prefix`` is not set follows it (``<prefix>cache``, so
    the default ledger prefix keeps the default ``governor:cache``). A
    ``key_prefix`` set explicitly is kept.
    """
    if ledger_prefix is None or "key_prefix" in settings.model_fields_set:
        return settings
    return settings.model_copy(update={"key_prefix": f"{ledger_prefix}cache"})


def _since_opened(
    ambient: Attribution | None, opened: Attribution | None
) -> Attribution | None:
    """The ambient values set since the task opened (inner blocks' own).

    Values the task was opened with are already its own, or were overridden
    by it on purpose; only what a block entered later names counts.
    """
    if ambient is None or ambient is opened:
        return None
    if opened is None:
        return ambient
    before, tags_before = opened.scope_values(), opened.tags
    values = {k: v for k, v in ambient.scope_values().items() if before.get(k) != v}
    tags = {k: v for k, v in ambient.tags.items() if tags_before.get(k) != v}
    if not values and not tags:
        return None
    return Attribution(**values, tags=tags)


def _cache_key(value: Any) -> Any:
    """``value`` itself as a map key (equal settings, one key), or its identity
    when it cannot be hashed (a callable that is not hashable)."""
    try:
        hash(value)
    except TypeError:
        return ("id", id(value))
    return value


def _line_as(line: Line, key: str, ttl_s: float | None) -> Line:
    """``line`` under another key or lifetime."""
    if type(line) is Line:
        return Line(key, line.limit_nanos, line.limit_tokens, ttl_s)
    return dataclasses.replace(line, key=key, ttl_s=ttl_s)


def _warn_late_call(task: Task) -> None:
    """Say, once per task, that a call joined it after its block ended."""
    if task.extras.get("late_call_warned"):
        return
    task.extras["late_call_warned"] = True
    logger.warning(
        "a call joined task %s after the task ended: something started in its "
        "block (an asyncio task, a thread, a generator) outlived it. The call "
        "is charged to the task and its budgets, but the task's report and "
        "span were already taken. Await what a task starts before leaving "
        "its block. Logged once per task.",
        task.id,
    )


def _not_sent(task: Task, prompt_key: str | None) -> None:
    """Give the loop guard back the count of a call refused before it was sent.

    A call with a prompt key passed the guard's checks, which counted it
    toward ``Loops.max_model_calls``; the ceiling counts the calls sent and
    the cache hits only.
    """
    watch = task.extras.get("loop_watch")
    if prompt_key is not None and watch is not None:
        watch.not_sent()


def _unsent(admission: Admission) -> None:
    """:func:`_not_sent` for an admission's call, once: its checks are taken."""
    _not_sent(admission.task, admission.extras.pop("checks", (0, None))[1])


def _check_request(request: CallRequest) -> None:
    """Refuse requests whose numbers cannot be reserved for."""
    ceiling = request.max_output_tokens
    if ceiling is not None and not _positive_int(ceiling):
        raise ConfigError(
            f"max_tokens must be a positive whole number, got {ceiling!r}; leave "
            "it out to use Policy.default_max_output_tokens"
        )
    if not _positive_int(request.choices):
        raise ConfigError(f"n must be a positive whole number, got {request.choices!r}")


def _positive_int(value: object) -> bool:
    """A whole number of 1 or more; True and False are not numbers here (the
    provider would be sent ``true``)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _attribution(base: Attribution, *given: Attribution | None) -> Attribution:
    """A task's attribution: the policy's, the ambient context's, then ``given``."""
    for part in (current_attribution(), *given):
        if part is not None:
            base = base.merged(part)
    return base


# The largest amount a ledger keeps exactly (Redis counts in doubles).
_MAX_AMOUNT = 2**53 - 1


def _call_attribution_attributes(admission: Admission) -> dict[str, AttrValue]:
    """The span attributes of whom a call is charged to (its own tenant, if named)."""
    named = admission.extras.get("attribution")
    return attributes_of(named) if named else attribution_attributes(admission.task)


def _storable(nanos: int, usage: Usage) -> tuple[int, int]:
    """A settle's amounts, held to what a ledger stores exactly.

    Only a provider reporting absurd usage (10^15 tokens, some $9 million)
    gets here; refusing the settle would lose the answer and leak the hold,
    so the amount is capped, which still exhausts any real budget.
    """
    tokens = usage.total_tokens
    if nanos <= _MAX_AMOUNT and tokens <= _MAX_AMOUNT:
        return nanos, tokens
    charged = min(nanos, _MAX_AMOUNT), min(tokens, _MAX_AMOUNT)
    logger.warning(
        "a call reported usage worth %d nano-USD and %d tokens, beyond what "
        "a ledger stores exactly (%d); it is charged %d nano-USD and %d tokens",
        nanos,
        tokens,
        _MAX_AMOUNT,
        *charged,
    )
    return charged


def _settled_tokens(usage: Usage) -> int:
    """The tokens a settle charges for ``usage`` (as :func:`_storable`)."""
    return min(usage.total_tokens, _MAX_AMOUNT)


class _Read(NamedTuple):
    """A line's balance as read for warnings, and when the read began."""

    balance: Balance | None
    at: float


def _expected(
    last: _Read, index: int, amounts: tuple[int, int], settled_at: float
) -> int:
    """The spend a line holds at least, in one unit (0: nano-USD, 1: tokens):
    what its last read held, plus this call's spend if it settled after that
    read began (else the read held it already)."""
    balance = last.balance
    if balance is None:
        return 0
    held = (balance.spent_nanos, balance.spent_tokens)[index]
    return held + (amounts[index] if settled_at > last.at else 0)


def _warn_units(line: Line, spent: tuple[int, int]) -> Iterator[tuple[str, int, int]]:
    """Each limited unit of a line: its name, the spend given, its limit."""
    if line.limit_nanos:
        yield "usd", spent[0], line.limit_nanos
    if line.limit_tokens:
        yield "tokens", spent[1], line.limit_tokens


def _refusal_advice(admission: Admission, unit: str) -> str | None:
    """Advice for calls the generic budget advice does not fit, else None."""
    if admission.request.operation == EMBEDDINGS:
        return (
            "Raise the budget's limit, embed fewer or shorter inputs per call, "
            "or pick a cheaper embedding model."
        )
    if unit == "usd" and admission.rate.usd_per_second is not None:
        return (
            f"{admission.rate.model!r} is priced per second, so each call holds "
            f"Policy.max_call_s ({admission.task.policy.max_call_s:g} s) of "
            "time: raise the budget's limit or lower max_call_s."
        )
    if (
        admission.request.max_output_tokens is None
        and admission.request.can_set_max_tokens
    ):
        return _default_output_advice(admission)
    return None


def _default_output_advice(admission: Admission) -> str:
    """Why a call that set no max_tokens held so much output: the policy's
    default, or the model's maximum output where that is lower."""
    held = admission.max_output_tokens
    choices = admission.request.choices
    each = f" for each of its {choices} choices" if choices > 1 else ""
    if held < admission.task.policy.default_max_output_tokens:
        where = (
            f"{held} tokens of output{each}, the model's maximum output (lower "
            "than Policy.default_max_output_tokens)"
        )
        lower = f"set Policy.default_max_output_tokens below {held}"
    else:
        where = f"Policy.default_max_output_tokens ({held}) of output{each}"
        lower = "lower that default"
    return (
        f"The call set no max_tokens, so it held {where}: pass a smaller "
        f"max_tokens on the call, {lower}, raise the budget's limit, or pick a "
        "cheaper model."
    )


def _holds_note(refusal: Refusal, holds_block: bool, hold_ttl_s: float) -> str | None:
    """When the room held by calls in flight comes back, if holds blocked the
    call (it would fit without them), else None.

    A worker that stopped mid-call (killed, frozen) keeps its holds until
    their leases lapse: say when, so a refusal that lasts is explained.
    """
    balance = refusal.balance
    if refusal.unit == "usd":
        reserved = balance.reserved_nanos
    else:
        reserved = balance.reserved_tokens
    if not holds_block or reserved <= 0:
        return None
    lapse_s = refusal.holds_lapse_s
    if lapse_s is not None:
        when = f"at the latest in {math.ceil(lapse_s)} s unless renewed"
    else:
        when = f"Policy.hold_ttl_s ({hold_ttl_s:g} s) after its last renewal"
    return (
        "Those holds end with their calls; a worker that stopped mid-call "
        f"keeps its hold until it lapses, {when}."
    )


def _holds_lapse_s(refusal: Refusal, holds_block: bool, policy: Policy) -> float | None:
    """Seconds until the latest hold keeping the call out lapses at the
    latest; a store that does not know gives ``hold_ttl_s``, the bound."""
    if not holds_block:
        return None
    if refusal.holds_lapse_s is None:
        return policy.hold_ttl_s
    return refusal.holds_lapse_s


def _hold_usage(admission: Admission) -> Usage:
    """The tokens of a call's hold, as estimated usage (the worst case)."""
    prompt = _held_prompt_tokens(admission)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=admission.hold_tokens - prompt,
        estimated=True,
    )


def _held_prompt_tokens(admission: Admission) -> int:
    """The prompt's part of a call's hold: all of it but the output's."""
    output = admission.max_output_tokens * admission.request.choices
    return admission.hold_tokens - output


def _other_rate(
    card: RateCard, request: CallRequest, rate: Rate, answered: str
) -> Rate | None:
    """The card's rate for ``answered`` where it prices that model
    differently from ``rate`` (see :meth:`Governor._answered_rate`)."""
    name = request.model.rpartition("/")[2]
    dated = answered.rpartition("/")[2].removeprefix(name + "-")
    if rate.source == "override" and dated != answered and _is_date(dated):
        return None
    try:
        other = card.rate(priced_name(answered, request.provider))
    except Exception:  # a name the card cannot price keeps the requested price
        return None
    if other.source == "default" or other.usd_per_second is not None:
        return None
    return None if _prices_of(other) == _prices_of(rate) else other


def _is_date(text: str) -> bool:
    """True for a model's date suffix: 2024-07-18, 20241022 or 0613."""
    digits = text.replace("-", "")
    return digits.isdigit() and len(digits) in (4, 8) and len(text) in (4, 8, 10)


def _prices_of(rate: Rate) -> tuple[Any, ...]:
    """What a rate charges, without the name that priced it."""
    return (
        rate.input_per_token,
        rate.output_per_token,
        rate.cache_read_per_token,
        rate.cache_write_per_token,
        rate.reasoning_per_token,
        rate.tiers,
        rate.audio_input_per_token,
        rate.audio_output_per_token,
        rate.audio_cache_read_per_token,
    )


def _output_ceiling(request: CallRequest, rate: Rate, policy: Policy) -> int:
    if request.operation == EMBEDDINGS:
        return 0
    if request.max_output_tokens is not None:
        return request.max_output_tokens
    model_max = rate.max_output_tokens
    if request.can_set_max_tokens:
        default = policy.default_max_output_tokens
        return min(default, model_max) if model_max else default
    return model_max or _UNBOUNDED_OUTPUT_TOKENS


def _room_in_window(
    request: CallRequest, rate: Rate, ceiling: int, bound: int
) -> tuple[int, int | None]:
    """The output ceiling cut to the room the prompt leaves in the model's
    context window, where the ceiling is the governor's own default; with
    the prompt's token count when one was taken (else None).

    A provider refuses a request whose prompt and ``max_tokens`` together
    pass the window (OpenAI's ``context_length_exceeded``), though it takes
    the same call without ``max_tokens``. The window is LiteLLM's
    ``max_input_tokens``, the whole context for OpenAI's and Anthropic's
    models. A ceiling the caller set is kept as written. Only a prompt
    whose byte bound (``bound``) may not leave the room is counted; one
    that cannot be (image or file parts) keeps the default. A prompt that
    leaves less than ``_LEAST_ROOM_TOKENS`` keeps the default too: the
    provider refuses it as too long, which context-window fallbacks act on.
    """
    window = rate.max_input_tokens
    if (
        not window
        or bound + ceiling <= window
        or request.max_output_tokens is not None
        or not request.can_set_max_tokens
        or request.operation == EMBEDDINGS
    ):
        return ceiling, None
    taken = None
    prompt = request.prompt_tokens
    if prompt is None:
        if request.count_prompt_tokens is None:
            return ceiling, None
        try:
            prompt = taken = request.count_prompt_tokens()
        except Exception:  # a model LiteLLM cannot count keeps the default
            logger.debug("no token count for %s", request.model, exc_info=True)
            return ceiling, None
    room = window - prompt - _MESSAGE_SLACK_TOKENS
    if room < min(ceiling, _LEAST_ROOM_TOKENS):
        # Too little room for a useful answer: sent as before, the provider
        # refuses it as too long, and a context-window fallback (a Router's,
        # a cascade's next tier) moves the call to a bigger window, where a
        # cut would have bought a few tokens of answer.
        return ceiling, taken
    return min(ceiling, room), taken


_LEAST_ROOM_TOKENS = 256
"""The least room for output the governor cuts its default ceiling to."""


def _held_count(counted: int) -> int:
    """The prompt tokens held for a local ``counted``: tokenizer counts of
    other providers' models are approximations, so a margin keeps the count
    an upper bound."""
    return math.ceil(counted * _COUNT_MARGIN) + _MESSAGE_SLACK_TOKENS


def _charged_values(admission: Admission) -> Mapping[str, str] | None:
    """The scope values a call is charged to when they are not its task's."""
    named = admission.extras.get("attribution")
    return None if named is None else named.scope_values()


def _billed_window(request: CallRequest, window_tokens: int) -> int:
    """The most prompt tokens a provider bills for ``request``: one context
    window, or one per input of an embedding batch (each input is read on
    its own, so a batch of ten 3,000-token texts bills 30,000)."""
    if request.operation == EMBEDDINGS:
        return window_tokens * max(1, len(request.messages))
    return window_tokens


def _defaulted(
    policy_attribution: Attribution,
    parent: Task | None,
    own: Attribution | None,
    *given: Attribution | None,
) -> frozenset[str]:
    """The scopes a new task holds only as the policy's defaults.

    Those are the scopes of ``Attribution`` on the policy (and a parent's
    such defaults) that nothing explicit names: the task's arguments, an
    ``attribute()`` block around it, a parent's own values, values its own
    policy adds. A call may name another value of these scopes.
    """
    defaulted = set(policy_attribution.scope_values())
    if parent is not None:
        inherited: frozenset[str] = parent.extras.get("defaulted", frozenset())
        defaulted = (defaulted | inherited) - (set(parent.scope_values) - inherited)
    for part in (own, current_attribution(), *given):
        if part is not None:
            defaulted -= set(part.scope_values())
    return frozenset(defaulted)


def _replaced_scopes(task: Task, named: Attribution) -> set[str]:
    """The scopes whose policy default a call's own value replaces."""
    defaulted: frozenset[str] = task.extras.get("defaulted", frozenset())
    values = named.scope_values()
    held = task.scope_values
    return {k for k in defaulted if values.get(k, held.get(k)) != held.get(k)}


def _own_values(named: Attribution, base: Policy) -> Attribution:
    """The values a sub-task's policy names beyond the governor's: those it
    sets, not None and not the governor policy's own (a copy of that policy
    with other limits names nothing new)."""
    held = base.attribution
    values = {
        field: getattr(named, field)
        for field in named.model_fields_set
        if field != "tags"
        and getattr(named, field) is not None
        and getattr(named, field) != getattr(held, field)
    }
    tags = {k: v for k, v in named.tags.items() if held.tags.get(k) != v}
    return Attribution(**values, tags=tags) if tags else Attribution(**values)


def _restore_current(
    token: contextvars.Token[Task | None],
    task: Task,
    span_token: contextvars.Token[otel_context.Context] | None,
    outer_context: otel_context.Context,
) -> None:
    """Put back the task and span that were current before ``task``.

    A block left in another asyncio task than the one that entered it (an
    exit stack closed at the end of a streamed web response) runs in another
    context, where the tokens cannot reset: there the outer values are set.
    """
    try:
        _CURRENT.reset(token)
    except ValueError:
        if _CURRENT.get() is task:
            outer = token.old_value
            _CURRENT.set(None if outer is contextvars.Token.MISSING else outer)
        if span_token is not None and trace.get_current_span() is task.span:
            otel_context.attach(outer_context)
        return
    if span_token is not None:
        otel_context.detach(span_token)


def _tighter(
    left: Decimal | None, line: Line, balance: Balance | None
) -> Decimal | None:
    """The smaller of ``left`` and a line's USD room; None while neither limits.

    The room is the line's limit (what the next reservation is checked
    against) less its spend and holds; a line without a balance yet has
    spent nothing, so its whole limit is left.
    """
    if line.limit_nanos is None:
        return left
    used = 0 if balance is None else balance.spent_nanos + balance.reserved_nanos
    room = nanos_to_usd(max(line.limit_nanos - used, 0))
    return room if left is None else min(left, room)


def _model_scopes(
    model: str, provider: str | None, provider_of: Callable[[str], str | None]
) -> set[str]:
    """The model scopes a call counts as: the name asked for and, once the
    provider is known, the same model with and without its provider prefix
    (``openai/gpt-4o-mini`` is ``gpt-4o-mini``), so a block on either holds.
    A prefixed name counts as the bare one only where the bare name goes to
    the same provider (``provider_of``): ``azure/gpt-4o`` is a deployment of
    its own, not ``gpt-4o``."""
    scopes = {f"model:{model}"}
    if provider is None:
        return scopes
    head, slash, bare = model.partition("/")
    if slash and head == provider and bare:
        if provider_of(bare) == provider:
            scopes.add(f"model:{bare}")
    else:
        scopes.add(f"model:{provider}/{model}")
    return scopes


def _outcome(error: BaseException | None) -> str:
    """A finished call's spend outcome: the caller stopping it is not an error."""
    if error is None:
        return "ok"
    if isinstance(error, asyncio.CancelledError | KeyboardInterrupt | GeneratorExit):
        return "cancelled"
    return "error"
