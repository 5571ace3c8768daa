"""Acceptance checks: small tests of an answer that compose.

A check is any callable ``check(answer, history) -> CheckResult`` with a
``name``; ``history`` holds the answers of cheaper tiers this run already
rejected. Checks do no I/O of their own; a judge check calls the judge the
caller supplied.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from pydantic import TypeAdapter, ValidationError

from governor._errors import ConfigError
from governor.cascade._schema import check_supported, schema_errors
from governor.cascade._types import Answer, CheckResult
from governor.cascade._types import shown as _shown
from governor.cascade._types import truth as _truth
from governor.policies._cascade import (
    AgreementCheck,
    AnyOfCheck,
    CallableCheck,
    CheckSpec,
    JsonCheck,
    JudgeCheck,
    LogprobCheck,
    MatchCheck,
    NonEmptyCheck,
    Normaliser,
    NotRefusalCheck,
    PythonCodeCheck,
)

__all__ = [
    "Agreement",
    "AllOf",
    "AnyOf",
    "Check",
    "Judge",
    "LogprobThreshold",
    "Matches",
    "NonEmpty",
    "NotRefusal",
    "PythonParses",
    "UserCheck",
    "ValidJson",
    "build_check",
    "normalise",
    "refuse_async",
    "resolve_callable",
]


class Check(Protocol):
    """What the runner calls to test an answer."""

    @property
    def name(self) -> str:
        """A short label for spans and reasons."""
        ...

    def __call__(self, answer: Answer, history: Sequence[Answer]) -> CheckResult:
        """Test ``answer``; ``history`` holds earlier tiers' answers."""
        ...


@dataclass(frozen=True, slots=True)
class NonEmpty:
    """Fail an answer whose stripped text is shorter than ``min_chars``."""

    min_chars: int = 1
    name: str = "non_empty"

    def __call__(self, answer: Answer, history: Sequence[Answer]) -> CheckResult:
        if answer.tool_calls:
            return CheckResult(self.name, True, _calls_tools(answer))
        size = len(answer.text.strip())
        if size >= self.min_chars:
            return CheckResult(self.name, True, f"{size} characters", float(size))
        return CheckResult(
            self.name, False, f"answer has {size} characters, needs {self.min_chars}"
        )


_APOS = "['\u2019]"
_REFUSALS = (
    rf"^\W*(i{_APOS}?m|i am)?\s*sorry\b.{{0,80}}\b(can{_APOS}?t|cannot|unable|"
    rf"not able|won{_APOS}?t)\b",
    rf"^\W*i\s+(can{_APOS}?t|cannot|won{_APOS}?t|will not|am unable to|"
    rf"{_APOS}?m unable to|am not able to|{_APOS}?m not able to)\s+"
    r"(help|assist|comply|provide|do that|fulfil|answer|create|write|generate|"
    r"share|support)",
    r"\bas an ai(\s+language model)?\b.{0,60}\b(can.?t|cannot|unable|do not|don.?t)\b",
)


@dataclass(frozen=True, slots=True)
class NotRefusal:
    """Fail an answer that opens like a refusal."""

    extra_patterns: tuple[str, ...] = ()
    name: str = "not_refusal"
    _compiled: tuple[re.Pattern[str], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        patterns = (*_REFUSALS, *self.extra_patterns)
        compiled = tuple(re.compile(p, re.IGNORECASE | re.DOTALL) for p in patterns)
        object.__setattr__(self, "_compiled", compiled)

    def __call__(self, answer: Answer, history: Sequence[Answer]) -> CheckResult:
        if answer.tool_calls:  # a model that calls a tool is acting on the request
            return CheckResult(self.name, True, _calls_tools(answer))
        head = answer.text.strip()[:200]
        for pattern in self._compiled:
            found = pattern.search(head)
            if found:
                return CheckResult(
                    self.name, False, f"reads as a refusal: {found.group(0)!r}"
                )
        return CheckResult(self.name, True, "no refusal phrase")


def _calls_tools(answer: Answer) -> str:
    names = ", ".join(call.name for call in answer.tool_calls)
    return f"calls {len(answer.tool_calls)} tool(s): {names}"


_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)


def _unfenced(text: str, languages: tuple[str, ...]) -> str | None:
    blocks = [body for lang, body in _FENCE.findall(text) if lang.lower() in languages]
    return "\n".join(blocks) if blocks else None


@dataclass(frozen=True, slots=True)
class ValidJson:
    """Fail an answer that is not JSON, or not JSON fitting ``schema``.

    An answer that calls tools is judged by its calls: each call's arguments
    must be JSON (fitting ``schema``, when given), whatever its text says.
    """

    schema: Mapping[str, Any] | None = None
    strip_code_fence: bool = True
    name: str = "json"

    def __post_init__(self) -> None:
        if self.schema is not None:
            check_supported(self.schema)

    def __call__(self, answer: Answer, history: Sequence[Answer]) -> CheckResult:
        if answer.tool_calls:
            return self._tool_calls(answer)
        text = answer.text.strip()
        if self.strip_code_fence:
            text = _unfenced(text, ("json", "")) or text
        failure = self._failure(text)
        if failure:
            return CheckResult(self.name, False, failure)
        return CheckResult(self.name, True, "valid JSON")

    def _tool_calls(self, answer: Answer) -> CheckResult:
        for call in answer.tool_calls:
            failure = self._failure(call.arguments)
            if failure:
                reason = f"tool call {call.name!r} arguments: {failure}"
                return CheckResult(self.name, False, reason)
        count = len(answer.tool_calls)
        return CheckResult(self.name, True, f"{count} tool call(s) with valid JSON")

    def _failure(self, text: str) -> str | None:
        """Why ``text`` is not acceptable JSON, or None when it is."""
        try:
            value = _json_loads(text)
        except ValueError as exc:
            return f"not valid JSON: {exc}"
        errors = schema_errors(value, self.schema) if self.schema else []
        if errors:
            more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
            return f"schema: {errors[0]}{more}"
        return None


_CHOICE_PATTERNS = (
    # A letter alone, or followed by ) . : ] as in "B)" or "(C)"; not "A cat".
    re.compile(r"^\W{0,3}([A-J])(?:[).:\]]|\s*$)"),
    re.compile(r"\b(?:answer|option|choice)\s*(?:is|:)?\s*\(?(?-i:([A-J]))\b", re.I),
)
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
_FINAL_NUMBER = re.compile(
    r"(?:####|answer is|answer:)\s*\$?(-?\d[\d,]*(?:\.\d+)?)", re.IGNORECASE
)


def _choice(text: str) -> str | None:
    for pattern in _CHOICE_PATTERNS:
        found = pattern.search(text.strip())
        if found:
            return found.group(1).upper()
    return None


def _number(text: str) -> str | None:
    final = _FINAL_NUMBER.findall(text)
    candidates = final or _NUMBER.findall(text)
    if not candidates:
        return None
    raw = candidates[-1].replace(",", "").replace("$", "")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        return None
    return format(value.normalize(), "f")


def _json_loads(text: str) -> Any:
    """Parse JSON as RFC 8259 defines it: Python's ``json.loads`` also takes
    ``NaN``, ``Infinity`` and ``-Infinity``, which no other parser does."""
    return json.loads(text, parse_constant=_no_constant)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value (RFC 8259 has no NaN or Infinity)")


def _json(text: str) -> str | None:
    try:
        value = _json_loads(_unfenced(text, ("json", "")) or text)
    except ValueError:
        return None
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _text(text: str) -> str | None:
    folded = " ".join(text.casefold().split()).rstrip(".!")
    return folded or None


_NORMALISERS: dict[str, Callable[[str], str | None]] = {
    "text": _text,
    "choice": _choice,
    "number": _number,
    "json": _json,
}


def normalise(text: str, how: Normaliser) -> str | None:
    """Return the comparable form of ``text``, or None when it has none.

    ``"choice"`` finds a multiple-choice letter, ``"number"`` the final
    number (after ``####`` or "answer is" when present), ``"json"`` a
    canonical JSON dump, ``"text"`` the case- and space-folded text.
    """
    return _NORMALISERS[how](text)


@dataclass(frozen=True, slots=True)
class Agreement:
    """Pass when at least ``min_agreeing`` other samples give the same answer."""

    min_agreeing: int = 1
    normaliser: Normaliser = "text"
    include_history: bool = True
    name: str = "agreement"

    def __call__(self, answer: Answer, history: Sequence[Answer]) -> CheckResult:
        mine = normalise(answer.text, self.normaliser)
        if mine is None:
            return CheckResult(
                self.name, False, f"answer has no {self.normaliser} form", 0.0
            )
        others = list(answer.samples)
        if self.include_history:
            others += [earlier.text for earlier in history]
        forms = [normalise(text, self.normaliser) for text in others]
        agreeing = sum(1 for form in forms if form == mine)
        reason = f"{agreeing} of {len(forms)} other samples agree on {mine!r}"
        passed = agreeing >= self.min_agreeing
        if not passed:
            reason += f", needs {self.min_agreeing}"
        return CheckResult(self.name, passed, reason, float(agreeing))


ScoreFn = Callable[[Answer, Sequence[Answer]], float]


@dataclass(frozen=True, slots=True)
class Judge:
    """Pass when ``judge(answer, history)`` scores at least ``min_score``.

    The judge is the caller's: a model call, a small classifier, a
    verifier. When it calls a model, that call should be governed too.
    """

    judge: ScoreFn
    min_score: float
    name: str = "judge"

    def __post_init__(self) -> None:
        refuse_async(self.judge, f"judge check {self.name!r}", _SYNC_JUDGE)

    def __call__(self, answer: Answer, history: Sequence[Answer]) -> CheckResult:
        score = _score(
            self.name, _not_awaitable(self.name, self.judge(answer, history))
        )
        passed = score >= self.min_score
        word = "at least" if passed else "below"
        return CheckResult(
            self.name,
            passed,
            f"judge scored {score:g}, {word} {self.min_score:g}",
            score,
        )


@dataclass(frozen=True, slots=True)
class LogprobThreshold:
    """Pass when the answer's mean token log-probability is high enough."""

    min_mean_logprob: float
    if_missing: bool = True
    name: str = "logprob"

    def __call__(self, answer: Answer, history: Sequence[Answer]) -> CheckResult:
        values = answer.token_logprobs
        if not values:
            verdict = "passed" if self.if_missing else "failed"
            return CheckResult(self.name, self.if_missing, f"no logprobs; {verdict}")
        mean = sum(values) / len(values)
        passed = mean >= self.min_mean_logprob
        word = "at least" if passed else "below"
        return CheckResult(
            self.name,
            passed,
            f"mean logprob {mean:.3f} {word} {self.min_mean_logprob:g}",
            mean,
        )


@dataclass(frozen=True, slots=True)
class Matches:
    """Pass when ``pattern`` is found (or, with ``must_match=False``, is not)."""

    pattern: str
    must_match: bool = True
    name: str = "match"

    def __call__(self, answer: Answer, history: Sequence[Answer]) -> CheckResult:
        found = re.search(self.pattern, answer.text) is not None
        passed = found == self.must_match
        state = "found" if found else "not found"
        return CheckResult(self.name, passed, f"pattern {self.pattern!r} {state}")


_TAGGED_PYTHON = re.compile(r"\[PYTHON\](.*?)\[/PYTHON\]", re.DOTALL)


@dataclass(frozen=True, slots=True)
class PythonParses:
    """Pass when the answer's Python code parses (and defines a function).

    The code comes from fenced ``python``/``py``/untagged blocks, or
    ``[PYTHON]`` tags; without either, the whole text. It is parsed, never run.
    """

    require_function: bool = True
    name: str = "python"

    def __call__(self, answer: Answer, history: Sequence[Answer]) -> CheckResult:
        text = answer.text.replace("\r\n", "\n")
        tagged = _TAGGED_PYTHON.findall(text)
        source = _unfenced(text, ("python", "py", "python3", "")) or (
            "\n".join(tagged) if tagged else text
        )
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError, RecursionError) as exc:
            return CheckResult(self.name, False, f"code does not parse: {exc}")
        defines = any(
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            for node in ast.walk(tree)
        )
        if self.require_function and not defines:
            return CheckResult(self.name, False, "code defines no function")
        return CheckResult(self.name, True, "code parses")


def _score(check: str, value: object) -> float:
    """A judge's score: a finite real number, never guessed from another type."""
    score = finite_real(value)
    if score is not None:
        return score
    raise ConfigError(
        f"judge check {check!r} returned {_shown(value)}; a judge must return a "
        "finite number on the scale of its min_score, e.g. 8.0"
    )


def finite_real(value: object) -> float | None:
    """``value`` as a float when it is a finite real number, else None.

    A bool is not a number here, and neither is a string; a number too large
    for a float (``10**400``) or a signalling NaN is not finite.
    """
    if not isinstance(value, numbers.Real | Decimal) or _truth(value) is not None:
        return None
    if isinstance(value, Decimal) and not value.is_finite():
        return None
    try:
        score = float(value)
    except (OverflowError, ValueError, TypeError):
        return None
    return score if math.isfinite(score) else None


UserFn = Callable[[Answer, Sequence[Answer]], "CheckResult | bool"]


@dataclass(frozen=True, slots=True)
class UserCheck:
    """Wrap any callable returning a CheckResult or a bool.

    Anything else (a string, a tuple, None, a number) is refused with a
    ConfigError rather than read as true or false.
    """

    fn: UserFn
    name: str = "callable"

    def __post_init__(self) -> None:
        refuse_async(self.fn, f"check {self.name!r}", _SYNC_CHECK)

    def __call__(self, answer: Answer, history: Sequence[Answer]) -> CheckResult:
        result = _not_awaitable(self.name, self.fn(answer, history))
        if isinstance(result, CheckResult):
            return result
        passed = _truth(result)
        if passed is not None:
            return CheckResult(self.name, passed, f"user check returned {passed}")
        raise ConfigError(
            f"check {self.name!r} returned {_shown(result)}; a check must return "
            "True, False or a CheckResult(check, passed, reason)"
        )


_SYNC_CHECK = "returns True, False or a CheckResult"
_SYNC_JUDGE = "returns its score"
_SYNC_WHY = (
    "checks, judges and estimators are called synchronously, in acascade() "
    "and CascadeRunner.arun too"
)


def _is_async(fn: object) -> bool:
    """Whether calling ``fn`` makes a coroutine or an async generator."""
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        return True  # functools.partial of one too
    if inspect.isroutine(fn) or inspect.isclass(fn):
        return False
    call = type(fn).__call__ if callable(fn) else None  # an async __call__
    return inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call)


def refuse_async(fn: object, what: str, instead: str) -> None:
    """Refuse an async callable where the cascade calls a function synchronously.

    Args:
        fn: the callable a policy refers to.
        what: how the error names it, e.g. ``"check 'callable:mine'"``.
        instead: what the synchronous function should do, e.g.
            ``"returns its score"``.

    Raises:
        ConfigError: ``fn`` is an ``async def`` function (or an async
            generator function), or an object whose ``__call__`` is one.
    """
    if _is_async(fn):
        name = getattr(fn, "__name__", None) or type(fn).__name__
        raise ConfigError(
            f"{what} refers to {name!r}, an async function: {_SYNC_WHY}, so "
            f"its coroutine would never be awaited. Give a plain def that "
            f"{instead}; to call a model from it, use a blocking client such "
            "as GovernedLiteLLM.completion"
        )


def _not_awaitable(name: str, value: object) -> object:
    """A check's or judge's result, unless it is something to await.

    A plain def may still return a coroutine (a wrapper around an async
    function): it is closed, so Python does not warn that it was never
    awaited, and refused with what to do.
    """
    if not inspect.isawaitable(value) and not inspect.isasyncgen(value):
        return value
    if inspect.iscoroutine(value):
        value.close()
    raise ConfigError(
        f"{name!r} returned {_shown(value)}, which would have to be awaited: "
        f"{_SYNC_WHY}. Make it a synchronous function"
    )


@dataclass(frozen=True, slots=True)
class AllOf:
    """Pass when every inner check passes; stop at the first failure."""

    checks: tuple[Check, ...]
    name: str = "all_of"

    def results(self, answer: Answer, history: Sequence[Answer]) -> list[CheckResult]:
        """Run the checks in order, up to and including the first failure."""
        done: list[CheckResult] = []
        for check in self.checks:
            done.append(check(answer, history))
            if not done[-1].passed:
                break
        return done

    def __call__(self, answer: Answer, history: Sequence[Answer]) -> CheckResult:
        done = self.results(answer, history)
        failed = [r for r in done if not r.passed]
        if failed:
            return CheckResult(
                self.name, False, f"{failed[0].check}: {failed[0].reason}"
            )
        return CheckResult(self.name, True, f"{len(done)} checks passed")


@dataclass(frozen=True, slots=True)
class AnyOf:
    """Pass when at least one inner check passes."""

    checks: tuple[Check, ...]
    name: str = "any_of"

    def __call__(self, answer: Answer, history: Sequence[Answer]) -> CheckResult:
        reasons = []
        for check in self.checks:
            result = check(answer, history)
            if result.passed:
                return CheckResult(
                    self.name, True, f"{check.name}: {result.reason}", result.score
                )
            reasons.append(f"{check.name}: {result.reason}")
        return CheckResult(self.name, False, "none passed (" + "; ".join(reasons) + ")")


def resolve_callable(ref: str, callables: Mapping[str, Callable[..., Any]]) -> Any:
    """Find ``ref`` among ``callables``, else import ``package.module:attribute``."""
    if ref in callables:
        return callables[ref]
    module_name, _, attribute = ref.partition(":")
    if not attribute:
        raise ConfigError(
            f"callable {ref!r} is neither registered (callables={{name: fn}}, "
            f"known: {sorted(callables)}) nor an import path 'package.module:attr'"
        )
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import callable {ref!r}: {exc}") from exc


def build_check(
    spec: CheckSpec, callables: Mapping[str, Callable[..., Any]] | None = None
) -> Check:
    """Turn one check declaration from a policy into a runnable check.

    ``spec`` is a declaration object (``NonEmptyCheck()``, ...) or its dict
    form, as a policy takes it: ``{"kind": "non_empty", "min_chars": 20}``.
    """
    known = callables or {}
    if isinstance(spec, Mapping):
        spec = _declared(spec)
    match spec:
        case NonEmptyCheck():
            return NonEmpty(spec.min_chars)
        case NotRefusalCheck():
            return NotRefusal(spec.extra_patterns)
        case JsonCheck():
            return ValidJson(spec.json_schema, spec.strip_code_fence)
        case AgreementCheck():
            return Agreement(spec.min_agreeing, spec.normalise, spec.include_history)
        case JudgeCheck():
            fn = resolve_callable(spec.judge, known)
            return Judge(fn, spec.min_score, name=f"judge:{spec.judge}")
        case LogprobCheck():
            return LogprobThreshold(spec.min_mean_logprob, spec.if_missing == "pass")
        case MatchCheck():
            return Matches(spec.pattern, spec.must_match)
        case PythonCodeCheck():
            return PythonParses(spec.require_function)
        case CallableCheck():
            fn = resolve_callable(spec.ref, known)
            return UserCheck(fn, name=f"callable:{spec.ref}")
        case AnyOfCheck():
            return AnyOf(tuple(build_check(s, known) for s in spec.checks))
    raise ConfigError(
        f"unknown check declaration {spec!r}: give a check declaration such as "
        'NonEmptyCheck() or its dict form, {"kind": "non_empty"}'
    )


def _declared(spec: Mapping[str, Any]) -> CheckSpec:
    """A check's dict form read as its declaration; a clear error if it is not one."""
    try:
        declared: CheckSpec = _CHECK_SPEC.validate_python(dict(spec))
    except ValidationError as exc:
        kinds = sorted(_CHECK_KINDS)
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'kind'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(
            f"invalid check declaration {dict(spec)!r}: {problems}. The 'kind' is "
            f"one of {kinds}; see docs/cascade.md for each kind's settings"
        ) from None
    return declared


_CHECK_SPEC: TypeAdapter[CheckSpec] = TypeAdapter(CheckSpec)
_CHECK_KINDS = frozenset(
    model.model_fields["kind"].default
    for model in (
        NonEmptyCheck,
        NotRefusalCheck,
        JsonCheck,
        AgreementCheck,
        JudgeCheck,
        LogprobCheck,
        MatchCheck,
        PythonCodeCheck,
        CallableCheck,
        AnyOfCheck,
    )
)
