"""The cascade runner: one I/O-free core, a thin sync and a thin async driver.

The core is a generator. It decides what happens next and *yields* an effect
(ask the budget whether a tier fits, call a tier, sleep); the driver performs
it, with the caller's functions, and sends the result back (or throws the
call's exception in). The sync and async drivers differ only in how they
perform effects, so the cascade's rules exist once.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, TypeAlias, TypeVar

from governor._calls import CHARGED_ATTRIBUTE
from governor._errors import BudgetExceeded, ConfigError
from governor.cascade._checks import (
    AllOf,
    Check,
    _not_awaitable,
    build_check,
    finite_real,
    refuse_async,
    resolve_callable,
)
from governor.cascade._classify import RETRYABLE, classify_error, retry_after_s
from governor.cascade._complexity import Estimator, heuristic_complexity, start_tier
from governor.cascade._cooldown import CooldownRegistry, cooldown_key
from governor.cascade._errors import CascadeBudgetExceeded, CascadeExhausted
from governor.cascade._types import (
    Answer,
    Attempt,
    CascadeResult,
    ErrorKind,
    shown,
)
from governor.policies._base import mask_credentials
from governor.policies._cascade import Cascade, Retry, Tier

__all__ = ["CascadeRunner", "WaitStrategy"]

logger = logging.getLogger(__name__)

R = TypeVar("R")
Fit: TypeAlias = "bool | BudgetExceeded"
"""A budget probe's answer: True fits; False or the refusal does not."""
WaitStrategy = Callable[[int], float]
"""Seconds to wait before retry number ``n`` (1-based) of one tier."""
ContextWindow = Callable[[Tier], "int | None"]
CountTokens = Callable[[Tier, Any], int]
RestKey = Callable[[Tier, Any], str]
FromCache = Callable[[Answer], bool]

# Kinds after which the model itself is suspect and rests for cooldown_s.
_COOL_ON: frozenset[ErrorKind] = frozenset(RETRYABLE | {"auth", "not_found"})
# Kinds a person must fix (a key, a model name): a fallback on them is logged.
_WHAT_TO_FIX: dict[ErrorKind, str] = {
    "auth": "check the API key and its permissions for this model",
    "not_found": "check the model's name and that the account can use it",
}
# Why a tier was skipped without being sent, for the summary of a run that
# found no answer: each kind counted apart.
_SKIPPED_BECAUSE = {
    "budget": "the budget could not cover them",
    "cooldown": "their model was resting after recent failures (cooldown)",
    "fallback_cycle": "their model had already failed in this run",
    "context_window": "the request does not fit their context window",
}


@dataclass(frozen=True, slots=True)
class _Fits:
    tier: Tier


@dataclass(frozen=True, slots=True)
class _Call:
    tier: Tier


@dataclass(frozen=True, slots=True)
class _Sleep:
    seconds: float


_Effect: TypeAlias = "_Fits | _Call | _Sleep"
_Steps: TypeAlias = "Generator[_Effect, Any, CascadeResult]"


def tenacity_wait(retry: Retry) -> WaitStrategy:
    """Build the bounded exponential backoff with jitter from tenacity's parts."""
    import tenacity  # a light import, kept off the ``import governor`` path

    strategy = tenacity.wait_exponential(
        multiplier=retry.backoff_initial_s, max=retry.backoff_max_s
    ) + tenacity.wait_random(0, retry.jitter_s)

    def wait(retry_number: int) -> float:
        # Wait strategies read only attempt_number, so no Retrying object.
        state = tenacity.RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = retry_number
        return float(strategy(state))

    return wait


def _tier_rest_key(tier: Tier, request: Any) -> str:
    return cooldown_key(tier.model, tier.params)


@dataclass
class _Run:
    """Mutable bookkeeping of one run; private to the core."""

    tiers: tuple[Tier, ...]
    rest_key: Callable[[Tier], str]
    from_cache: FromCache | None = None
    attempts: list[Attempt] = field(default_factory=list)
    history: list[tuple[Tier, Answer]] = field(default_factory=list)
    sent: int = 0
    failed_models: set[str] = field(default_factory=set)
    refusal: BudgetExceeded | None = None
    pending: Attempt | None = None
    skips: Counter[str] = field(default_factory=Counter)
    out_of_attempts: bool = False
    last_error: Exception | None = None


class CascadeRunner:
    """Runs requests through a :class:`~governor.policies.Cascade`.

    The runner does no I/O itself: the caller hands it a ``call`` function
    that sends one request to one tier and returns an :class:`Answer` (or
    raises the provider's exception), and optional probes for the budget and
    the context window. One runner may serve many concurrent runs; the
    cooldown registry is shared between them.

    Args:
        policy: the cascade to run.
        callables: named judges, user checks and estimators the policy
            refers to by name.
        cooldowns: the registry of resting models; a private one by default.
            Share one per process so later runs skip a failing model.
        wait: seconds to wait before retry ``n`` of a tier; by default
            tenacity's exponential backoff with jitter from ``policy.retry``.
        clock_ns: wall clock for attempt timestamps, epoch nanoseconds.
        on_attempt: called with each attempt as soon as it is recorded, e.g.
            to end the attempt's span; it must not raise.
    """

    def __init__(
        self,
        policy: Cascade,
        *,
        callables: Mapping[str, Callable[..., Any]] | None = None,
        cooldowns: CooldownRegistry | None = None,
        wait: WaitStrategy | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        on_attempt: Callable[[Attempt], None] | None = None,
    ) -> None:
        known = dict(callables or {})
        self.policy = policy
        self.cooldowns = cooldowns or CooldownRegistry()
        self._wait = wait or tenacity_wait(policy.retry)
        self._clock_ns = clock_ns
        self._on_attempt = on_attempt
        default = AllOf(tuple(build_check(s, known) for s in policy.checks))
        self._checks: dict[str, AllOf] = {
            tier.name: default
            if tier.checks is None
            else AllOf(tuple(build_check(s, known) for s in tier.checks))
            for tier in policy.tiers
        }
        self._estimator = self._build_estimator(known)

    def _build_estimator(
        self, known: Mapping[str, Callable[..., Any]]
    ) -> Estimator | None:
        precall = self.policy.precall
        if precall is None:
            return None
        if precall.estimator == "heuristic" and "heuristic" not in known:
            return heuristic_complexity
        estimator: Estimator = resolve_callable(precall.estimator, known)
        refuse_async(
            estimator,
            f"pre-call estimator {precall.estimator!r}",
            "return its complexity score from a plain def",
        )
        return estimator

    def checks_for(self, tier: Tier) -> tuple[Check, ...]:
        """Return the checks a tier's answers must pass, in order."""
        return self._checks[tier.name].checks

    # -- drivers ---------------------------------------------------------

    def run(
        self,
        request: R,
        *,
        call: Callable[[Tier, R], Answer],
        fits: Callable[[Tier, R], Fit] | None = None,
        context_window: ContextWindow | None = None,
        count_tokens: Callable[[Tier, R], int] | None = None,
        prompt_text: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rest_key: Callable[[Tier, R], str] | None = None,
        from_cache: FromCache | None = None,
    ) -> CascadeResult:
        """Run one request through the cascade, blocking.

        Args:
            request: the caller's request, passed through to its functions.
            call: sends ``request`` to ``tier`` and returns its answer, or
                raises the provider's exception. It should reserve and settle
                the attempt against the task's budget.
            fits: says whether the tier's worst case fits the remaining
                budget: True, or False / the BudgetExceeded refusal.
            context_window: the tier's context window in tokens, or None
                when unknown (``Tier.context_window_tokens`` wins).
            count_tokens: the tokens ``request`` needs in ``tier``'s window.
            prompt_text: the prompt, for pre-call complexity estimation.
            sleep: waits between retries; tests pass a recorder.
            rest_key: the key a failing tier's model rests under in the
                cooldown registry; by default :func:`cooldown_key` of the
                tier's model and params. Give the call's own endpoint and
                API key too when the request carries them.
            from_cache: says whether ``call`` served an answer from a cache
                instead of sending the request: its attempt is recorded with
                ``sent=False`` and uses none of ``Retry.max_attempts``.

        Returns:
            The accepted answer, its tier and every attempt.

        Raises:
            CascadeBudgetExceeded: no tier fitted the budget; nothing was sent.
            CascadeExhausted: no tier gave an answer the policy accepts.
        """
        steps = self._steps(
            request, context_window, count_tokens, prompt_text, rest_key, from_cache
        )
        to_send: Any = None
        error: Exception | None = None
        while True:
            try:
                effect = steps.throw(error) if error else steps.send(to_send)
            except StopIteration as stop:
                result: CascadeResult = stop.value
                return result
            to_send, error = None, None
            if isinstance(effect, _Sleep):
                sleep(effect.seconds)
            elif isinstance(effect, _Fits):
                to_send = True if fits is None else fits(effect.tier, request)
            else:
                try:
                    to_send = call(effect.tier, request)
                except Exception as exc:  # handed to the core, which classifies it
                    error = exc

    async def arun(
        self,
        request: R,
        *,
        call: Callable[[Tier, R], Awaitable[Answer]],
        fits: Callable[[Tier, R], Fit | Awaitable[Fit]] | None = None,
        context_window: ContextWindow | None = None,
        count_tokens: Callable[[Tier, R], int] | None = None,
        prompt_text: str | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        rest_key: Callable[[Tier, R], str] | None = None,
        from_cache: FromCache | None = None,
    ) -> CascadeResult:
        """Run one request through the cascade without blocking the loop.

        The same as :meth:`run`, with an async ``call``; ``fits`` may be sync
        or async and ``sleep`` defaults to :func:`asyncio.sleep`.
        """
        import asyncio

        do_sleep = sleep or asyncio.sleep
        steps = self._steps(
            request, context_window, count_tokens, prompt_text, rest_key, from_cache
        )
        to_send: Any = None
        error: Exception | None = None
        while True:
            try:
                effect = steps.throw(error) if error else steps.send(to_send)
            except StopIteration as stop:
                result: CascadeResult = stop.value
                return result
            to_send, error = None, None
            if isinstance(effect, _Sleep):
                await do_sleep(effect.seconds)
            elif isinstance(effect, _Fits):
                verdict = True if fits is None else fits(effect.tier, request)
                to_send = await verdict if inspect.isawaitable(verdict) else verdict
            else:
                try:
                    to_send = await call(effect.tier, request)
                except Exception as exc:  # handed to the core, which classifies it
                    error = exc

    # -- the core --------------------------------------------------------

    def _steps(
        self,
        request: Any,
        context_window: ContextWindow | None,
        count_tokens: CountTokens | None,
        prompt_text: str | None,
        rest_key: RestKey | None,
        from_cache: FromCache | None = None,
    ) -> _Steps:
        complexity, start = self._plan(prompt_text)
        key = rest_key or _tier_rest_key
        run = _Run(
            tiers=self.policy.tiers[start:],
            rest_key=lambda tier: key(tier, request),
            from_cache=from_cache,
        )
        probes = (request, context_window, count_tokens)
        found = yield from self._walk(run, run.tiers, probes, last_unchecked=True)
        if found is None and self._below_start_wanted(run, start):
            # Pre-call tiering saves money; it must not stop a request that a
            # cheaper tier could answer within the budget.
            lower = self.policy.tiers[:start]
            logger.debug(
                "cascade tiers from %s up do not fit the budget; trying the "
                "tiers below it",
                run.tiers[0].name,
            )
            run.tiers = (*run.tiers, *lower)
            found = yield from self._walk(run, lower, probes, last_unchecked=False)
        if found is not None:
            return self._result(run, *found, True, start, complexity)
        return self._give_up(run, start, complexity)

    def _walk(
        self,
        run: _Run,
        tiers: tuple[Tier, ...],
        probes: tuple[Any, ContextWindow | None, CountTokens | None],
        *,
        last_unchecked: bool,
    ) -> Generator[_Effect, Any, tuple[Tier, Answer] | None]:
        """Try ``tiers`` in order; return the first accepted tier and answer."""
        request, context_window, count_tokens = probes
        for position, tier in enumerate(tiers):
            is_last = last_unchecked and position == len(tiers) - 1
            if run.sent >= self.policy.retry.max_attempts:
                run.out_of_attempts = True
                return None
            skip = self._precheck(tier, request, run, context_window, count_tokens)
            if skip is not None:
                self._record(run, skip)
                continue
            fit = yield _Fits(tier)
            if fit is not True:
                self._skip_budget(run, tier, fit)
                continue
            answer = yield from self._try_tier(tier, run)
            if answer is None:
                continue
            if self._judge(tier, answer, run, is_last):
                return tier, answer
        return None

    @staticmethod
    def _below_start_wanted(run: _Run, start: int) -> bool:
        """Pre-call tiering skipped cheaper tiers, and those tried gave nothing
        because the budget could not cover them: the cheaper ones may fit."""
        return (
            start > 0
            and run.skips["budget"] > 0
            and not run.history
            and not run.out_of_attempts
        )

    def _plan(self, prompt_text: str | None) -> tuple[float | None, int]:
        precall = self.policy.precall
        if self._estimator is None or precall is None or prompt_text is None:
            return None, 0
        name = precall.estimator
        estimate = _not_awaitable(f"estimator {name}", self._estimator(prompt_text))
        complexity = finite_real(estimate)
        if complexity is None:
            raise ConfigError(
                f"pre-call estimator {name!r} returned {shown(estimate)}; an "
                "estimator must return a finite number, the prompt's complexity "
                "in [0, 1], e.g. 0.4"
            )
        start = min(
            start_tier(complexity, precall.thresholds), len(self.policy.tiers) - 1
        )
        logger.debug(
            "cascade pre-call complexity %.3f, start tier %d", complexity, start
        )
        return complexity, start

    def _precheck(
        self,
        tier: Tier,
        request: Any,
        run: _Run,
        context_window: ContextWindow | None,
        count_tokens: CountTokens | None,
    ) -> Attempt | None:
        resting = self.cooldowns.remaining_s(run.rest_key(tier))
        if resting > 0:
            run.skips["cooldown"] += 1
            return _skip(tier, f"cooldown: model rests {resting:.1f} s more")
        if run.rest_key(tier) in run.failed_models:
            run.skips["fallback_cycle"] += 1
            return _skip(tier, "fallback cycle: this model already failed in this run")
        window = tier.context_window_tokens
        if window is None and context_window is not None:
            window = context_window(tier)
        if window is not None and count_tokens is not None:
            needed = count_tokens(tier, request)
            if needed > window:
                run.skips["context_window"] += 1
                reason = f"context_window: needs {needed} tokens, window {window}"
                return _skip(tier, reason, "context_window")
        return None

    def _skip_budget(self, run: _Run, tier: Tier, fit: Any) -> None:
        run.skips["budget"] += 1
        if isinstance(fit, BudgetExceeded):
            run.refusal = run.refusal or fit
            reason = f"budget: {fit}"
        else:
            reason = "budget: the tier's worst case does not fit the remaining budget"
        self._record(run, _skip(tier, reason, "budget"))

    def _try_tier(
        self, tier: Tier, run: _Run
    ) -> Generator[_Effect, Any, Answer | None]:
        retries = 0
        while True:
            run.sent += 1
            started = self._clock_ns()
            try:
                answer: Answer = yield _Call(tier)
            except Exception as exc:
                kind = classify_error(exc)
                if kind is None:
                    exc.add_note(self._attempts_note(run, tier))
                    raise
                if kind == "budget":
                    run.sent -= 1  # refused by the reservation: never sent
                    self._skip_budget(run, tier, exc)
                    return None
                run.last_error = exc
                wait = self._retry_wait(kind, exc, retries, run, tier)
                self._record_error(run, tier, kind, exc, wait, started)
                if wait is None:
                    self._after_failure(run, tier, kind, exc)
                    return None
                retries += 1
                yield _Sleep(wait)
                continue
            run.history.append((tier, answer))
            sent = run.from_cache is None or not run.from_cache(answer)
            if not sent:
                run.sent -= 1  # served from a cache: no request went out
            run.pending = _sent(tier, answer, started, self._clock_ns(), sent)
            return answer

    def _retry_wait(
        self, kind: ErrorKind, exc: Exception, retries: int, run: _Run, tier: Tier
    ) -> float | None:
        retry = self.policy.retry
        if kind not in RETRYABLE or retries >= retry.max_retries_per_tier:
            return None
        # A retry never takes the attempts the later tiers need to be tried
        # once: a healthy last tier must stay reachable.
        later = (
            len(run.tiers) - 1 - next(i for i, t in enumerate(run.tiers) if t is tier)
        )
        if run.sent + later >= retry.max_attempts:
            return None
        backoff = self._wait(retries + 1)
        asked = retry_after_s(exc) if kind == "rate_limit" else None
        if asked is None:
            return backoff
        if asked > retry.max_retry_after_s:
            return None
        return max(asked, backoff)

    def _after_failure(
        self, run: _Run, tier: Tier, kind: ErrorKind, exc: Exception
    ) -> None:
        if kind not in _COOL_ON:
            return  # the request, not the model, was at fault
        key = run.rest_key(tier)
        run.failed_models.add(key)
        retry = self.policy.retry
        rest = retry.cooldown_s
        if kind == "rate_limit":
            rest = max(rest, retry_after_s(exc) or 0.0)
        rest = min(rest, retry.max_cooldown_s)
        resting = self.cooldowns.remaining_s(key) > 0
        self.cooldowns.cool(key, rest)
        logger.debug(
            "cascade cools %s for %.1f s after %s", mask_credentials(key), rest, kind
        )
        if kind in _WHAT_TO_FIX and not resting:
            self._warn_fallback(run, tier, kind, exc, rest)

    def _warn_fallback(
        self, run: _Run, tier: Tier, kind: ErrorKind, exc: Exception, rest: float
    ) -> None:
        """A key or a model name is wrong: say so once per rest, not at debug."""
        then = "no tier left" if tier is run.tiers[-1] else "falling back"
        logger.warning(
            "cascade tier %r: model %s failed with %s (%s: %s); %s, and the "
            "model rests %.0f s for calls with the same key and endpoint. To "
            "fix: %s.",
            tier.name,
            tier.model,
            kind,
            type(exc).__name__,
            _first_line(exc),
            then,
            rest,
            _WHAT_TO_FIX[kind],
        )

    def _judge(self, tier: Tier, answer: Answer, run: _Run, is_last: bool) -> bool:
        pending = run.pending
        assert pending is not None, "a judged answer always has its attempt"
        if is_last and not self.policy.check_last_tier:
            self._record(run, replace(pending, reason="last tier: accepted unchecked"))
            return True
        earlier = [a for t, a in run.history[:-1]]
        try:
            results = tuple(self._checks[tier.name].results(answer, earlier))
        except Exception as exc:  # a bug in a check: say what was paid
            exc.add_note(self._attempts_note(run, tier, pending))
            raise
        failed = [r for r in results if not r.passed]
        if failed:
            reason = f"{failed[0].check}: {failed[0].reason}"
            self._record(
                run,
                replace(
                    pending,
                    outcome="rejected",
                    reason=reason,
                    brief=f"{failed[0].check}: failed",
                    checks=results,
                ),
            )
            return False
        reason = f"{len(results)} checks passed"
        self._record(run, replace(pending, reason=reason, checks=results))
        return True

    def _give_up(
        self, run: _Run, start: int, complexity: float | None
    ) -> CascadeResult:
        names = [t.name for t in run.tiers]
        spent = sum((a.cost_usd for a in run.attempts if a.cost_usd), Decimal(0))
        if run.history and self.policy.on_all_rejected == "return":
            tier, answer = run.history[-1]
            return self._result(run, tier, answer, False, start, complexity)
        if run.skips["budget"] and run.sent == 0 and not run.history:
            raise CascadeBudgetExceeded(
                run.attempts, tiers=names, refusal=run.refusal, spent_usd=spent
            )
        exhausted = CascadeExhausted(
            run.attempts,
            reason=self._summary(run),
            tiers=names,
            spent_usd=spent,
            advice=_advice(run.attempts, run.out_of_attempts),
        )
        if run.last_error is not None:
            raise exhausted from run.last_error
        raise exhausted

    def _summary(self, run: _Run) -> str:
        """Why a run found no answer: its end, then each kind of failure counted."""
        if run.out_of_attempts:
            parts = [f"Retry.max_attempts ({self.policy.retry.max_attempts}) reached"]
        elif run.history:
            parts = ["every answer failed its checks"]
        else:
            parts = ["every tier failed or was skipped"]
        failed = _tiers_failed(run.attempts)
        if run.history and failed:
            parts.append(f"{failed} tier(s) failed with a provider error")
        parts.extend(
            f"{run.skips[kind]} tier(s) skipped because {why}"
            for kind, why in _SKIPPED_BECAUSE.items()
            if run.skips[kind]
        )
        return "; ".join(parts)

    # -- records ---------------------------------------------------------

    def _record(self, run: _Run, attempt: Attempt) -> None:
        run.attempts.append(attempt)
        logger.debug("cascade attempt %s", attempt.describe())
        if self._on_attempt is not None:
            self._on_attempt(attempt)

    def _record_error(
        self,
        run: _Run,
        tier: Tier,
        kind: ErrorKind,
        exc: Exception,
        wait: float | None,
        started: int,
    ) -> None:
        if wait is not None:
            then = "retrying"
        elif tier is run.tiers[-1]:
            then = "no tier left"
        else:
            then = "falling back"
        reason = f"{kind}: {type(exc).__name__}: {_first_line(exc)}; {then}"
        brief = f"{kind}: {type(exc).__name__}; {then}"
        asked = retry_after_s(exc) if kind == "rate_limit" else None
        if asked is not None:
            reason += f" (Retry-After {asked:g} s)"
            brief += f" (Retry-After {asked:g} s)"
        attempt = Attempt(
            tier=tier.name,
            model=tier.model,
            outcome="error",
            reason=reason,
            brief=brief,
            sent=True,
            cost_usd=_charged_usd(exc),
            error_kind=kind,
            wait_s=wait or 0.0,
            started_ns=started,
            ended_ns=self._clock_ns(),
        )
        self._record(run, attempt)

    def _attempts_note(
        self, run: _Run, tier: Tier, checked: Attempt | None = None
    ) -> str:
        done = "; ".join(a.describe() for a in run.attempts) or "none"
        if checked is None:
            return f"raised by cascade tier {tier.name!r}; earlier attempts: {done}"
        cost = "" if checked.cost_usd is None else f", cost {checked.cost_usd} USD"
        how = "sent and paid" if checked.sent else "served from a cache"
        return (
            f"raised by a check of cascade tier {tier.name!r} (its answer was "
            f"{how}{cost}); earlier attempts: {done}"
        )

    def _result(
        self,
        run: _Run,
        tier: Tier,
        answer: Answer,
        accepted: bool,
        start: int,
        complexity: float | None,
    ) -> CascadeResult:
        return CascadeResult(
            answer=answer,
            tier=tier,
            accepted=accepted,
            attempts=tuple(run.attempts),
            start_tier=start,
            complexity=complexity,
        )


def _tiers_failed(attempts: Sequence[Attempt]) -> int:
    """How many tiers ended on a provider error (retries of one tier count once)."""
    last: dict[str, Attempt] = {}
    for attempt in attempts:
        if attempt.outcome != "skipped":  # a cached answer, too, ends a failure
            last[attempt.tier] = attempt
    return sum(1 for attempt in last.values() if attempt.outcome == "error")


def _advice(attempts: Sequence[Attempt], out_of_attempts: bool) -> str:
    """What to do, for the failures this run actually saw."""
    kinds = {a.error_kind for a in attempts if a.outcome == "error"}
    steps = []
    if "context_window" in kinds or any(
        a.error_kind == "context_window" for a in attempts
    ):
        steps.append(
            "The request did not fit a tier's context window: shorten the "
            "prompt or lower max_tokens, or add a tier with a larger window."
        )
        kinds.discard("context_window")
    if "content_policy" in kinds:
        steps.append(
            "A provider's content filter refused the request (the prompt or "
            "the answer asked for was flagged): change the prompt, or add a "
            "tier whose provider's content policy allows it. Retrying the same "
            "request gets the same refusal."
        )
        kinds.discard("content_policy")
    if "bad_request" in kinds:
        steps.append(
            "A tier refused the request as invalid (HTTP 400) or could not "
            "process it (HTTP 422): check the request's arguments and each "
            "tier's params against what its model accepts (each attempt names "
            "the provider's message)."
        )
        kinds.discard("bad_request")
    if kinds & set(_WHAT_TO_FIX):
        steps.append(
            "Check the API keys and model names of the tiers that failed "
            "(each attempt names its error)."
        )
    elif kinds:
        steps.append(
            "Tiers failed with provider errors (each attempt names its "
            "error): check the providers' status, or add a tier on another "
            "provider."
        )
    if any(a.error_kind == "budget" for a in attempts):
        steps.append(
            "Tiers were skipped because the budget could not cover them: "
            "raise the budget's limit or lower max_tokens."
        )
    if any(a.outcome == "rejected" for a in attempts):
        steps.append("Relax the checks, or add a more capable tier.")
    if out_of_attempts:
        steps.append("Raise Cascade.retry.max_attempts.")
    return " ".join(steps) or _DEFAULT_ADVICE


_DEFAULT_ADVICE = (
    "Every tier was skipped: wait for resting models, or add a tier "
    "(each attempt says why it was skipped)."
)


def _skip(tier: Tier, reason: str, kind: ErrorKind | None = None) -> Attempt:
    return Attempt(
        tier=tier.name,
        model=tier.model,
        outcome="skipped",
        reason=reason,
        sent=False,
        error_kind=kind,
    )


def _sent(
    tier: Tier, answer: Answer, started: int, ended: int, sent: bool = True
) -> Attempt:
    """An answered attempt, before its checks; ``sent`` False for an answer
    served from a cache."""
    return Attempt(
        tier=tier.name,
        model=tier.model,
        outcome="accepted",
        reason="",
        sent=sent,
        cost_usd=answer.cost_usd,
        started_ns=started,
        ended_ns=ended,
    )


def _charged_usd(exc: BaseException) -> Decimal | None:
    """What a governed call that raised was charged (a timed-out one may be)."""
    charged = getattr(exc, CHARGED_ATTRIBUTE, None)
    return charged if isinstance(charged, Decimal) and charged > 0 else None


def _first_line(exc: BaseException) -> str:
    """The error's first line, credentials it may echo masked, cut at 200."""
    text = str(exc).strip().splitlines()
    return mask_credentials(text[0])[:200] if text else ""
