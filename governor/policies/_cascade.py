"""Model cascade settings: tiers, acceptance checks, pre-call tiering, fallback.

A :class:`Cascade` is pure data. ``governor.cascade`` turns it into a runner;
see ``docs/cascade.md`` for how a request moves through the tiers.
"""

from __future__ import annotations

import logging
import math
import re
import weakref
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Annotated, Any, Literal, Self

from pydantic import Field, field_validator, model_validator

from governor.policies._base import FieldsError, PolicyModel, masked

__all__ = [
    "AgreementCheck",
    "AnyOfCheck",
    "CallableCheck",
    "Cascade",
    "CheckSpec",
    "JsonCheck",
    "JudgeCheck",
    "LogprobCheck",
    "MatchCheck",
    "NonEmptyCheck",
    "NotRefusalCheck",
    "PreCall",
    "PythonCodeCheck",
    "Retry",
    "Tier",
]

_CALLABLE_REF = (
    "a name registered with the runner (callables={name: fn}) or an import "
    "path 'package.module:attribute'"
)
Normaliser = Literal["text", "choice", "number", "json"]

logger = logging.getLogger(__name__)


FALLBACKS_IN_CASCADE = (
    "LiteLLM's fallbacks would answer inside one tier, charged at that "
    "tier's price; a cascade's later tiers are its fallbacks: add each "
    "fallback model as a Tier"
)
STREAM_IN_CASCADE = (
    "a cascade cannot stream: each tier's whole answer must be checked before "
    "it is accepted. Remove stream and stream_options from the tier's params, "
    "then stream result.answer.text to your client"
)
_DAY_S = 86_400.0
"""The longest wait a retry setting may ask for."""


class _CheckModel(PolicyModel):
    """A check: its ``kind`` always counts as set, since it tells the checks
    apart when read back (a policy printed with only the fields it sets
    would lose it, and its checks could not be read again)."""

    @model_validator(mode="after")
    def _kind_is_set(self) -> Self:
        self.model_fields_set.add("kind")
        return self


class NonEmptyCheck(_CheckModel):
    """Reject an answer whose stripped text is shorter than ``min_chars``."""

    kind: Literal["non_empty"] = Field(
        default="non_empty", description="the literal 'non_empty'"
    )
    min_chars: int = Field(default=1, ge=1, description="a positive character count")


class NotRefusalCheck(_CheckModel):
    """Reject an answer that opens like a refusal ("I can't help with that")."""

    kind: Literal["not_refusal"] = Field(
        default="not_refusal", description="the literal 'not_refusal'"
    )
    extra_patterns: tuple[str, ...] = Field(
        default=(),
        description="regular expressions, matched case-insensitively against the "
        "answer's first 200 characters, added to the built-in refusal phrases",
    )


class JsonCheck(_CheckModel):
    """Accept only an answer that parses as JSON and, if given, fits a schema.

    The schema support is a documented subset of JSON Schema (see
    ``docs/cascade.md``); an unsupported keyword is refused when the check is
    built rather than silently ignored.
    """

    kind: Literal["json"] = Field(default="json", description="the literal 'json'")
    json_schema: Mapping[str, Any] | None = Field(
        default=None,
        description="a JSON Schema object using the supported subset, or None to "
        "only require valid JSON",
    )
    strip_code_fence: bool = Field(
        default=True,
        description="True to accept JSON wrapped in a ```json fenced block",
    )

    @field_validator("json_schema", mode="before")
    @classmethod
    def _json_schema_floats(cls, value: Any) -> Any:
        return json_floats(value)

    @field_validator("json_schema")
    @classmethod
    def _supported(cls, value: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        if value is not None:
            from governor.cascade._schema import check_supported

            check_supported(value)
        return value


class AgreementCheck(_CheckModel):
    """Accept an answer that enough other samples agree with.

    The other samples are the answer's own extra choices (a tier sampled with
    ``n`` > 1) and, with ``include_history``, the answers of cheaper tiers that
    this cascade run already tried.
    """

    kind: Literal["agreement"] = Field(
        default="agreement", description="the literal 'agreement'"
    )
    min_agreeing: int = Field(
        default=1,
        ge=1,
        description="how many other samples must give the same normalised answer",
    )
    normalise: Normaliser = Field(
        default="text",
        description="'text' (case and whitespace folded), 'choice' (a multiple-"
        "choice letter A-J), 'number' (the last number), 'json' (canonical JSON)",
    )
    include_history: bool = Field(
        default=True,
        description="True to count answers of tiers tried earlier in the run",
    )


class JudgeCheck(_CheckModel):
    """Accept an answer a judge scores at least ``min_score``."""

    kind: Literal["judge"] = Field(default="judge", description="the literal 'judge'")
    judge: str = Field(
        min_length=1,
        description=f"the judge: {_CALLABLE_REF}; it takes (answer, history) and "
        "returns a number",
    )
    min_score: float = Field(description="the lowest accepted score, e.g. 7.0")


class LogprobCheck(_CheckModel):
    """Accept an answer whose mean token log-probability is high enough."""

    kind: Literal["logprob"] = Field(
        default="logprob", description="the literal 'logprob'"
    )
    min_mean_logprob: float = Field(
        le=0, description="a natural-log probability <= 0, e.g. -0.3"
    )
    if_missing: Literal["pass", "fail"] = Field(
        default="pass",
        description="'pass' or 'fail' when the provider returned no logprobs",
    )


class MatchCheck(_CheckModel):
    """Accept an answer that a regular expression finds (or does not find)."""

    kind: Literal["match"] = Field(default="match", description="the literal 'match'")
    pattern: str = Field(min_length=1, description="a Python regular expression")
    must_match: bool = Field(
        default=True, description="True to require a match, False to forbid one"
    )

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"is not a valid regular expression: {exc}") from exc
        return value


class PythonCodeCheck(_CheckModel):
    """Accept an answer whose Python code parses (fenced blocks, else the text)."""

    kind: Literal["python"] = Field(
        default="python", description="the literal 'python'"
    )
    require_function: bool = Field(
        default=True, description="True to also require at least one def"
    )


class CallableCheck(_CheckModel):
    """Any user check: a callable taking (answer, history) and returning a result."""

    kind: Literal["callable"] = Field(
        default="callable", description="the literal 'callable'"
    )
    ref: str = Field(
        min_length=1,
        description=f"the check: {_CALLABLE_REF}; it returns a CheckResult or a bool",
    )


class AnyOfCheck(_CheckModel):
    """Accept an answer that passes at least one of the inner checks."""

    kind: Literal["any_of"] = Field(
        default="any_of", description="the literal 'any_of'"
    )
    checks: tuple[CheckSpec, ...] = Field(
        min_length=1, description="a list of check objects, each with a 'kind'"
    )


CheckSpec = Annotated[
    NonEmptyCheck
    | NotRefusalCheck
    | JsonCheck
    | AgreementCheck
    | JudgeCheck
    | LogprobCheck
    | MatchCheck
    | PythonCodeCheck
    | CallableCheck
    | AnyOfCheck,
    Field(discriminator="kind"),
]
AnyOfCheck.model_rebuild()

_DEFAULT_CHECKS: tuple[CheckSpec, ...] = (NonEmptyCheck(), NotRefusalCheck())


class Tier(PolicyModel):
    """One model step of a cascade."""

    name: str = Field(
        min_length=1, description="a unique, non-blank label, e.g. 'cheap'"
    )
    model: str = Field(
        min_length=1,
        description="a model name or a LiteLLM model group, without spaces "
        "around it, e.g. 'gpt-4o-mini'",
    )
    params: Mapping[str, Any] = Field(
        default_factory=dict,
        description="call parameters laid over the request's, e.g. "
        "{'temperature': 0, 'max_tokens': 512}",
    )
    context_window_tokens: int | None = Field(
        default=None,
        gt=0,
        description="the model's context window in tokens; None to use the rate card",
    )
    checks: tuple[CheckSpec, ...] | None = Field(
        default=None,
        description="check objects for this tier's answers; None uses the cascade's",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value, "model": value}
        return value

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # Params may hold a provider key: shown masked, never in clear.
        for name, value in super().__repr_args__():
            yield name, masked(value) if name == "params" else value

    @field_validator("name")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("a tier name must not be blank; name it, e.g. 'cheap'")
        return value

    @field_validator("model")
    @classmethod
    def _a_model(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(
                "a tier's model must not be blank; give the model it calls, "
                "e.g. 'gpt-4o-mini'"
            )
        if value != value.strip():
            raise ValueError(
                f"a tier's model {masked(value)!r} must not start or end with "
                f"spaces (strip it first: {masked(value.strip())!r}): a call "
                "names the model exactly, so no price or provider would know "
                "it with them"
            )
        return value

    @field_validator("params", mode="before")
    @classmethod
    def _params_floats(cls, value: Any) -> Any:
        return json_floats(value)

    @field_validator("params")
    @classmethod
    def _sendable_params(cls, value: Mapping[str, Any]) -> Mapping[str, Any]:
        if "fallbacks" in value:
            raise ValueError(FALLBACKS_IN_CASCADE)
        if value.get("stream") or "stream_options" in value:
            raise ValueError(STREAM_IN_CASCADE)
        if "model" in value:
            raise ValueError(
                f"params sets model {masked(value['model'])!r}, which a tier never "
                "sends: it calls its own model. Set Tier(model=...) instead, "
                "and remove model from params"
            )
        for name, value_problem in _PARAM_CHECKS.items():
            given = value.get(name)
            if given is not None and (problem := value_problem(given)):
                raise ValueError(
                    f"params[{name!r}] is {masked(given)!r}: {name} must be "
                    f"{problem}, or leave it out"
                )
        return value


def json_floats(value: Any) -> Any:
    """``value`` with every Decimal in it (nested too) made a float.

    Params are sent to the provider as JSON and a schema compares JSON
    numbers, and JSON has no Decimal: a Decimal given in Python, or a long
    number a JSON policy file kept exact, would fail to encode at every call.
    """
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, Mapping):
        return {key: json_floats(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(json_floats(item) for item in value)
    return value


def _count(value: Any) -> str | None:
    """Why ``value`` is no count of at least 1 (max_tokens, n); None if it is."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return "a whole number of at least 1"
    return None


def _temperature(value: Any) -> str | None:
    if not _real(value) or value < 0:
        return "a finite number of 0 or more, e.g. 0.2"
    return None


def _top_p(value: Any) -> str | None:
    if not _real(value) or not 0 <= value <= 1:
        return "a number from 0 to 1, e.g. 0.9"
    return None


def _real(value: Any) -> bool:
    """A finite int or float, not a bool."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)


_PARAM_CHECKS = {
    "max_tokens": _count,
    "max_completion_tokens": _count,
    "n": _count,
    "temperature": _temperature,
    "top_p": _top_p,
}
"""Well-known call parameters whose obviously wrong values a provider would
refuse only at call time, after cheaper tiers were paid for."""


class PreCall(PolicyModel):
    """Pick the first tier from an estimate of the prompt's complexity.

    The estimator returns a number in [0, 1]; the cascade starts at the tier
    whose index is how many ``thresholds`` that number reaches.
    """

    estimator: str = Field(
        default="heuristic",
        description=f"'heuristic' for the built-in estimator, or {_CALLABLE_REF}",
    )
    thresholds: tuple[float, ...] = Field(
        min_length=1,
        description="ascending complexities in [0, 1]; a prompt reaching the "
        "i-th threshold starts at tier i + 1, e.g. (0.6,) starts prompts scored "
        "0.6 or more at the second tier",
    )

    @field_validator("thresholds")
    @classmethod
    def _ascending(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 <= t <= 1 for t in value) or list(value) != sorted(value):
            raise ValueError("thresholds must be ascending numbers in [0, 1]")
        return value


class Retry(PolicyModel):
    """Retries, fallback and cooldown for provider errors."""

    max_attempts: int = Field(
        default=6,
        ge=1,
        description="requests sent across all tiers, retries included, at most; "
        "at least the number of tiers, so that each can be tried once",
    )
    max_retries_per_tier: int = Field(
        default=2,
        ge=0,
        description="retries of one tier after a retryable error before falling back",
    )
    backoff_initial_s: float = Field(
        default=0.5,
        ge=0,
        le=_DAY_S,
        description="seconds before the first retry, e.g. 0.5",
    )
    backoff_max_s: float = Field(
        default=8.0,
        ge=0,
        le=_DAY_S,
        description="seconds; the exponential backoff's ceiling, at least "
        "backoff_initial_s (8 by default, or backoff_initial_s when that is "
        "longer)",
    )
    jitter_s: float = Field(
        default=0.5,
        ge=0,
        le=_DAY_S,
        description="seconds; a uniform random wait in [0, jitter_s] is added",
    )
    max_retry_after_s: float = Field(
        default=20.0,
        ge=0,
        le=_DAY_S,
        description="seconds; a longer Retry-After falls back instead of waiting",
    )
    cooldown_s: float = Field(
        default=30.0,
        ge=0,
        le=_DAY_S,
        description="seconds a model that kept failing is skipped by later runs",
    )
    max_cooldown_s: float = Field(
        default=300.0,
        ge=0,
        le=_DAY_S,
        description=(
            "seconds; the longest rest, however long a Retry-After asks "
            "(300 by default, or cooldown_s when that is longer)"
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _caps_follow_long_waits(cls, data: Any) -> Any:
        """Without its cap, a cooldown_s above 300 s (a backoff_initial_s
        above 8 s) is its own cap."""
        if not isinstance(data, Mapping):
            return data
        caps = (
            ("cooldown_s", "max_cooldown_s", 300.0),
            ("backoff_initial_s", "backoff_max_s", 8.0),
        )
        for name, cap, default in caps:
            wait = _seconds(data.get(name, 0)) if cap not in data else None
            if wait is not None and wait > default:
                data = {**data, cap: wait}
        return data

    @model_validator(mode="after")
    def _rest_fits_its_cap(self) -> Self:
        if self.cooldown_s > self.max_cooldown_s:
            raise FieldsError(
                f"cooldown_s ({self.cooldown_s:g}) exceeds max_cooldown_s "
                f"({self.max_cooldown_s:g}); lower cooldown_s or raise "
                "max_cooldown_s",
                ("cooldown_s", "max_cooldown_s"),
            )
        if self.backoff_initial_s > self.backoff_max_s:
            raise FieldsError(
                f"backoff_initial_s ({self.backoff_initial_s:g}) exceeds "
                f"backoff_max_s ({self.backoff_max_s:g}), which caps every "
                "wait, the first too; lower backoff_initial_s or raise "
                "backoff_max_s",
                ("backoff_initial_s", "backoff_max_s"),
            )
        return self


def _seconds(value: Any) -> float | None:
    """``value`` as validation will read it (a number, or text such as "600");
    None when it is neither, for the field's own validation to report."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# Cascades already warned of, by identity. Pydantic runs a model's validators
# again on a validated Cascade handed to a Policy (and on one it built from a
# dict), so one Policy(...) would log the same warning twice.
_WARNED: weakref.WeakValueDictionary[int, Cascade] = weakref.WeakValueDictionary()


class Cascade(PolicyModel):
    """Ordered model tiers, cheapest first, and when to escalate or fall back.

    Example:
        >>> Cascade(
        ...     tiers=[
        ...         Tier(name="cheap", model="gpt-4o-mini"),
        ...         Tier(name="premium", model="gpt-4o"),
        ...     ],
        ...     checks=[NonEmptyCheck(), JsonCheck()],
        ... )
    """

    tiers: tuple[Tier, ...] = Field(
        min_length=1,
        description="Tier objects (or bare model names), cheapest first",
    )
    checks: tuple[CheckSpec, ...] = Field(
        default=_DEFAULT_CHECKS,
        description="check objects every answer must pass; each has a 'kind' of "
        "non_empty, not_refusal, json, agreement, judge, logprob, match, python, "
        "callable or any_of",
    )
    check_last_tier: bool = Field(
        default=False,
        description="True to check the last tier's answers too; False accepts them",
    )
    on_all_rejected: Literal["raise", "return"] = Field(
        default="raise",
        description="when no answer was accepted: 'raise' CascadeExhausted, or "
        "'return' the answer of the most capable tier that answered, flagged "
        "accepted=False",
    )
    precall: PreCall | None = Field(
        default=None, description="a PreCall, or None to always start at tier one"
    )
    retry: Retry = Field(default_factory=Retry, description="a Retry")

    @field_validator("tiers", "checks", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        names = [tier.name for tier in self.tiers]
        if len(set(names)) != len(names):
            raise FieldsError(f"tier names must be unique, got {names}", ("tiers",))
        for position, tier in enumerate(self.tiers):
            for earlier in self.tiers[:position]:
                same = (earlier.model, earlier.params, earlier.checks)
                if same == (tier.model, tier.params, tier.checks):
                    raise FieldsError(
                        f"tiers {earlier.name!r} and {tier.name!r} send the same "
                        f"model {masked(tier.model)!r} with the same params and "
                        "checks: the second would repeat the first's answer at "
                        "the same price and fail the same way. Remove one, or "
                        "give it other params, checks or another model",
                        ("tiers",),
                    )
        if self.precall and len(self.precall.thresholds) >= len(self.tiers):
            raise FieldsError(
                f"precall has {len(self.precall.thresholds)} threshold(s) for "
                f"{len(self.tiers)} tier(s); it needs fewer thresholds than there "
                "are tiers",
                ("precall.thresholds", "tiers"),
            )
        return self

    @model_validator(mode="after")
    def _every_tier_reachable(self) -> Self:
        """Warn of tiers that ``retry.max_attempts`` may leave no request for.

        Only a warning: tiers skipped before sending (pre-call estimate,
        budget, context window) use no attempt, so such a cascade can still
        reach its last tier.
        """
        attempts = self.retry.max_attempts
        if len(self.tiers) <= attempts or _WARNED.get(id(self)) is self:
            return self
        _WARNED[id(self)] = self
        unreachable = [tier.name for tier in self.tiers[attempts:]]
        given = "" if "max_attempts" in self.retry.model_fields_set else " (default)"
        logger.warning(
            "a cascade has %d tiers but retry.max_attempts is %d%s: when every "
            "tier before them is sent, tiers %s are never tried (max_attempts "
            "counts the requests sent). Raise Retry.max_attempts to at least %d, "
            "plus the retries to allow, unless tiers are meant to be skipped",
            len(self.tiers),
            attempts,
            given,
            unreachable,
            len(self.tiers),
        )
        return self
