"""Named cascade policies for the offline evaluation, and their price tables.

A named policy is a *family*: a few candidate cascades that differ in a
threshold or a tier. ``governor eval cascade`` picks one candidate on the fit
part of the rows and reports it on the rest; a family of one needs no fit.
"""

from __future__ import annotations

import ast
import json
import operator
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from governor._errors import ConfigError, PolicyError, PriceUnknown
from governor.cascade._checks import resolve_callable
from governor.cascade._datasets import PerToken, Prices
from governor.cascade._prices import tier_prices
from governor.cascade._replay import RECORDED_JUDGE
from governor.cascade._types import Answer, CheckResult
from governor.policies import Policy, Pricing
from governor.policies._cascade import (
    AgreementCheck,
    AnyOfCheck,
    CallableCheck,
    Cascade,
    CheckSpec,
    JudgeCheck,
    MatchCheck,
    NonEmptyCheck,
    NotRefusalCheck,
    PreCall,
    PythonCodeCheck,
    Tier,
)

if TYPE_CHECKING:
    from governor.pricing import Rate

__all__ = [
    "ARENA_PRICE_KEYS",
    "BUILTIN_POLICIES",
    "GSM8K_PRICE_KEYS",
    "JUDGE_PRICE_KEY",
    "NamedPolicy",
    "arithmetic_check",
    "load_policy",
    "price_table",
]


@dataclass(frozen=True, slots=True)
class NamedPolicy:
    """A family of candidate cascades under one name.

    ``pricing`` prices the models of data sets that record no cost
    (RouteLLM, Arena-Bench): its overrides and default come before the list
    prices of LiteLLM's map, as in a live :class:`~governor.policies.Policy`.
    A tier's ``params`` prices (``input_cost_per_token`` and kin) price its
    model there too, as they price its live calls (see :func:`price_table`).
    """

    name: str
    description: str
    candidates: tuple[tuple[str, Cascade], ...]
    callables: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    pricing: Pricing | None = None


# -- a user check: recompute the arithmetic a GSM8K-style answer shows --------

_ANNOTATION = re.compile(r"<<([^<>=]+)=([^<>]+)>>")
_OPS: dict[type[ast.AST], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
}


def _evaluate(node: ast.AST) -> float:
    """Evaluate + - * / % over number literals only; anything else is refused."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return float(_OPS[type(node.op)](_evaluate(node.left), _evaluate(node.right)))
    raise ValueError("not plain arithmetic")


def arithmetic_check(answer: Answer, history: Sequence[Answer]) -> CheckResult:
    """Recompute every ``<<expression=result>>`` calculation in the answer.

    GSM8K-style solutions annotate each step; a step whose result is wrong
    marks an answer worth escalating. Expressions are parsed, never run.
    """
    steps = 0
    for expression, claimed in _ANNOTATION.findall(answer.text):
        text = expression.replace(",", "").replace("x", "*").strip()
        try:
            value = _evaluate(ast.parse(text, mode="eval").body)
            stated = float(claimed.replace(",", "").strip())
        except (SyntaxError, ValueError, ZeroDivisionError, OverflowError):
            continue  # not an arithmetic step we can recompute
        steps += 1
        if abs(value - stated) > 1e-6 * max(1.0, abs(stated)):
            reason = f"step {expression.strip()}={claimed.strip()} is wrong"
            return CheckResult("arithmetic", False, reason, float(steps))
    return CheckResult("arithmetic", True, f"{steps} steps recomputed", float(steps))


# -- price tables for data sets that record no cost --------------------------

GSM8K_PRICE_KEYS: Mapping[str, str] = {
    "gpt-4-1106-preview": "gpt-4-1106-preview",
    "mistralai/Mixtral-8x7B-Instruct-v0.1": (
        "together_ai/mistralai/Mixtral-8x7B-Instruct-v0.1"
    ),
}
"""RouteLLM data names -> LiteLLM price-map key, where the two differ.

Any other name is looked up in the price map as it is written."""

ARENA_PRICE_KEYS: Mapping[str, str] = {
    "gpt-4-1106-preview": "gpt-4-1106-preview",
    "gpt-4-0314": "gpt-4",
    "gpt-3.5-turbo-1106": "gpt-3.5-turbo-1106",
    "gpt-3.5-turbo": "gpt-3.5-turbo",
    "claude-2.1": "anthropic.claude-v2:1",
    "claude-1": "anthropic.claude-v1",
    "claude-instant-1": "anthropic.claude-instant-v1",
    "mistralai/Mixtral-8x7B-Instruct-v0.1": (
        "together_ai/mistralai/Mixtral-8x7B-Instruct-v0.1"
    ),
    "mistralai/Mistral-7B-Instruct-v0.1": (
        "anyscale/mistralai/Mistral-7B-Instruct-v0.1"
    ),
    "Llama-2-70b-chat": "replicate/meta/llama-2-70b-chat",
    "openchat_3.5": "fireworks_ai/accounts/fireworks/models/openchat-3p5-0106-7b",
}
"""Arena-Bench-v1 data names -> LiteLLM price-map key, where the two differ.

Any other name is looked up in the price map as it is written.
Starling-LM-7B-alpha, vicuna-33b-v1.3, llama-13b and palm-2-chat-bison-001
have no price-map entry: a policy using them must price them itself."""

JUDGE_PRICE_KEY = "gpt-4"
"""Arena-Bench-v1 was graded by GPT-4; its judge calls are priced as gpt-4."""

_RATE_CARD_SOURCE = "governor.pricing.RateCard (LiteLLM's bundled price map)"


def price_table(
    layout: str, pricing: Pricing | None = None, tiers: Iterable[Tier] = ()
) -> Prices:
    """Return list prices for a cost-less layout, from governor's rate card.

    A model is priced as a live :class:`~governor.policies.Policy` prices a
    tier's calls, first match wins: by an override in ``pricing`` under its
    data name, then under the price-map key its data name stands for
    (:data:`GSM8K_PRICE_KEYS`, :data:`ARENA_PRICE_KEYS`), then by the prices
    its tier's ``params`` set (``input_cost_per_token`` and kin) laid over
    the price map's entry for that key, as ``pricing.call_prices`` takes
    them (by default none below the map's price), then by the price map,
    then by ``pricing.default``. A price of zero from an override or the
    default is a free tier, and so is one from ``params`` for a model the
    price map lacks; a price-map entry of zero prices nothing, as in live
    use (LiteLLM keeps
    such entries for self-hosted and retired ids): price such a model in
    the policy, ``Price()`` for a free one.

    Args:
        layout: ``"arena"``, or ``"routellm-gsm8k"`` for RouteLLM files.
        pricing: the policy's pricing; None for the price map alone.
        tiers: the policy's tiers, whose ``params`` may price their model.
            The data records one answer per model, so every tier of a model
            must set the same prices (or none).

    Raises:
        ConfigError: the judge has no price, two tiers of one model set
            different prices, or a tier's ``params`` set a price that is
            not one.
    """
    keys = ARENA_PRICE_KEYS if layout == "arena" else GSM8K_PRICE_KEYS
    lookup = _rate_lookup(keys, pricing, _params_prices(tiers))
    judge = _rate_lookup(keys, pricing)(JUDGE_PRICE_KEY) if layout == "arena" else None
    if isinstance(judge, str):
        raise ConfigError(
            f"Arena-Bench's judge {JUDGE_PRICE_KEY!r} has no price ({judge}); "
            f"price it in the policy's pricing overrides"
        )
    return Prices({}, judge, _RATE_CARD_SOURCE, lookup)


def _params_prices(tiers: Iterable[Tier]) -> dict[str, Mapping[str, Any]]:
    """The prices tiers' ``params`` set, by model; one price per model.

    Raises:
        ConfigError: two tiers of one model set different prices (or one
            sets prices and the other none).
    """
    found: dict[str, tuple[str, Mapping[str, Any] | None]] = {}
    for tier in tiers:
        prices = tier_prices(tier)
        seen = found.setdefault(tier.model, (tier.name, prices))
        if _as_numbers(seen[1]) != _as_numbers(prices):
            raise ConfigError(
                f"tiers {seen[0]!r} and {tier.name!r} both use {tier.model!r} "
                f"but their params price it differently ({_shown(seen[1])} and "
                f"{_shown(prices)}); a replay charges each model of the data "
                "one price: give every tier of a model the same "
                "input_cost_per_token and output_cost_per_token, or none"
            )
    return {model: prices for model, (_, prices) in found.items() if prices}


def _as_numbers(prices: Mapping[str, Any] | None) -> dict[str, Any]:
    """``prices`` compared by value: ``0.001``, ``"0.001"`` and ``1e-3`` are
    one price (a value that is no number stays as given, refused later)."""
    numbers: dict[str, Any] = {}
    for name, value in (prices or {}).items():
        try:
            numbers[name] = Decimal(str(value).strip())
        except ArithmeticError:
            numbers[name] = value
    return numbers


def _shown(prices: Mapping[str, Any] | None) -> str:
    return "none" if not prices else ", ".join(f"{k}={v}" for k, v in prices.items())


def _rate_lookup(
    keys: Mapping[str, str],
    pricing: Pricing | None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> Callable[[str], PerToken | str]:
    """Price a data set's model name; see :func:`price_table` for the order."""
    from governor.pricing import RateCard

    card = RateCard(pricing)
    own = (
        RateCard(Pricing(overrides=pricing.overrides), price_map={})
        if pricing
        else None
    )
    given = params or {}

    def rate(model: str) -> Rate:
        key = keys.get(model, model)
        if own is not None and key != model:
            try:
                return own.rate(model)  # the policy's price for the data name
            except PriceUnknown:
                pass
        try:
            return card.rate(key, given.get(model))
        except ConfigError as exc:
            raise ConfigError(f"the tier of {model!r}: {exc}") from exc

    def lookup(model: str) -> PerToken | str:
        try:
            found = rate(model)
        except PriceUnknown as exc:
            return exc.reason or "no price is known"
        return found.input_per_token, found.output_per_token

    return lookup


# -- the named families -------------------------------------------------------

_MIXTRAL = "mistralai/mixtral-8x7b-chat"
_YI = "zero-one-ai/Yi-34B-Chat"
_MISTRAL = "mistralai/mistral-7b-chat"
_LLAMA70 = "meta/llama-2-70b-chat"
_GPT35 = "gpt-3.5-turbo-1106"
_GPT4 = "gpt-4-1106-preview"
_BASIC: tuple[CheckSpec, ...] = (NonEmptyCheck(), NotRefusalCheck())


def _tier(model: str, checks: Sequence[CheckSpec] | None = None) -> Tier:
    name = model.rsplit("/", 1)[-1]
    return Tier(name=name, model=model, checks=None if checks is None else checks)


def _routerbench(
    cheap: Sequence[str], agree: int, code_at: float | None, vote: bool
) -> Cascade:
    """Cheap tiers vote by agreement; coding prompts may start at GPT-3.5."""
    agreement = AgreementCheck(normalise="choice", min_agreeing=agree)
    tiers = [_tier(model) for model in cheap]
    precall = None
    if code_at is not None:
        # GPT-3.5 accepts code that parses; with vote, also a letter that
        # earlier tiers agree on.
        code: CheckSpec = (
            AnyOfCheck(checks=(PythonCodeCheck(), agreement))
            if vote
            else PythonCodeCheck()
        )
        tiers.append(_tier(_GPT35, (*_BASIC, code)))
        # Equal thresholds: a coding prompt skips every cheap tier at once.
        precall = PreCall(thresholds=(code_at,) * len(cheap))
    tiers.append(_tier(_GPT4))
    return Cascade(tiers=tiers, checks=(*_BASIC, agreement), precall=precall)


_CHAINS: Mapping[str, tuple[str, ...]] = {
    "mixtral>yi": (_MIXTRAL, _YI),
    "mistral>mixtral>yi": (_MISTRAL, _MIXTRAL, _YI),
    "mixtral>yi>llama-70b": (_MIXTRAL, _YI, _LLAMA70),
}
# (label, pre-call threshold for coding prompts, GPT-3.5 also votes)
_CODE_ROUTES: tuple[tuple[str, float | None, bool], ...] = (
    ("none", None, False),
    ("gpt-3.5@0.3", 0.3, False),
    ("gpt-3.5@0.4", 0.4, False),
    ("gpt-3.5@0.5", 0.5, False),
    ("gpt-3.5+vote@0.4", 0.4, True),
)


def _routerbench_family() -> tuple[tuple[str, Cascade], ...]:
    out: list[tuple[str, Cascade]] = []
    for chain_name, chain in _CHAINS.items():
        for agree in range(1, len(chain)):
            for route, code_at, vote in _CODE_ROUTES:
                label = f"{chain_name}>gpt-4 agree={agree} code={route}"
                out.append((label, _routerbench(chain, agree, code_at, vote)))
    return tuple(out)


def _gsm8k_family() -> tuple[tuple[str, Cascade], ...]:
    final = MatchCheck(pattern=r"####\s*-?\$?\d")
    arithmetic = CallableCheck(ref="arithmetic")
    variants: dict[str, tuple[CheckSpec, ...]] = {
        "basic": _BASIC,
        "final-answer": (*_BASIC, final),
        "final-answer+arithmetic": (*_BASIC, final, arithmetic),
    }
    tiers = (_tier("mistralai/Mixtral-8x7B-Instruct-v0.1"), _tier(_GPT4))
    return tuple(
        (f"mixtral>gpt-4 checks={name}", Cascade(tiers=tiers, checks=checks))
        for name, checks in variants.items()
    )


def _arena_family(judge: bool) -> tuple[tuple[str, Cascade], ...]:
    tiers = (
        _tier("mistralai/Mixtral-8x7B-Instruct-v0.1"),
        _tier(_GPT35),
        _tier(_GPT4),
    )
    if not judge:
        return (("mixtral>gpt-3.5>gpt-4 checks=basic", Cascade(tiers=tiers)),)
    return tuple(
        (
            f"mixtral>gpt-3.5>gpt-4 judge>={score:g}",
            Cascade(
                tiers=tiers,
                checks=(*_BASIC, JudgeCheck(judge=RECORDED_JUDGE, min_score=score)),
            ),
        )
        for score in (6.0, 7.0, 8.0, 9.0)
    )


BUILTIN_POLICIES: Mapping[str, Callable[[], NamedPolicy]] = {
    "routerbench-3tier": lambda: NamedPolicy(
        "routerbench-3tier",
        "Mixtral, then Yi-34B accepted when it agrees with Mixtral's letter, "
        "then GPT-4 (one candidate: nothing to fit)",
        (
            (
                "mixtral>yi>gpt-4 agree=1 code=none",
                _routerbench((_MIXTRAL, _YI), 1, None, vote=False),
            ),
        ),
    ),
    "routerbench-cascade": lambda: NamedPolicy(
        "routerbench-cascade",
        "cheap tiers that must agree on a letter, GPT-3.5 for coding prompts "
        "picked by the pre-call estimate, then GPT-4; 25 candidates to fit",
        _routerbench_family(),
    ),
    "gsm8k-2tier": lambda: NamedPolicy(
        "gsm8k-2tier",
        "Mixtral checked on its text (final answer, recomputed arithmetic), then GPT-4",
        _gsm8k_family(),
        {"arithmetic": arithmetic_check},
    ),
    "arena-3tier": lambda: NamedPolicy(
        "arena-3tier",
        "Mixtral, GPT-3.5, GPT-4 with text checks only (non-empty, no refusal)",
        _arena_family(judge=False),
    ),
    "arena-3tier-judge": lambda: NamedPolicy(
        "arena-3tier-judge",
        "Mixtral, GPT-3.5, GPT-4 accepted on the recorded GPT-4 grade (an "
        "oracle-like upper bound; the judge's calls are charged)",
        _arena_family(judge=True),
    ),
}


def load_policy(spec: str) -> NamedPolicy:
    """Find a policy by built-in name, JSON file, or ``package.module:attr``.

    A JSON file holds a Cascade object (plus an optional ``"name"``), or
    ``{"name": ..., "cascade": {...}}``,
    or ``{"name": ..., "candidates": {label: {...}, ...}}``; each may add a
    ``"pricing"`` object (a Pricing) for data sets without costs. A Python
    attribute is a Cascade, a NamedPolicy, a Policy with a cascade (its
    pricing applies), or a mapping of label to Cascade.
    An existing file is read as JSON whatever its suffix; a spec that names
    a file (a ``.json`` suffix or a path separator) that does not exist is
    refused as "no such policy file".
    """
    if spec in BUILTIN_POLICIES:
        return BUILTIN_POLICIES[spec]()
    path = Path(spec)
    if path.is_file():
        return _from_json(path)
    if path.suffix == ".json" or os.sep in spec or path.exists():
        what = "a folder, not a policy file" if path.is_dir() else "no such policy file"
        raise ConfigError(f"{spec}: {what}; give a JSON policy file or a built-in name")
    if ":" in spec:
        return _from_object(spec, resolve_callable(spec, {}))
    raise ConfigError(
        f"unknown policy {spec!r}: give one of {sorted(BUILTIN_POLICIES)}, a .json "
        "file, or a Python attribute 'package.module:name'"
    )


def _from_json(path: Path) -> NamedPolicy:
    # A key given twice is refused, as in a Policy file: json.loads keeps the
    # last, so a second "tiers" would silently replace the first.
    from governor._replay import _Pairs, _unique_keys, json_number

    try:
        pairs = json.loads(
            path.read_text(encoding="utf-8"),
            object_pairs_hook=_Pairs,
            parse_float=json_number,
        )
    except ValueError as exc:
        raise ConfigError(f"{path}: not JSON: {exc}") from exc
    try:
        data = _unique_keys(pairs, "")
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    name = str(data.get("name", path.stem))
    pricing = _pricing(path, data.get("pricing"))
    about = f"from {path.name}"
    if "candidates" in data:
        found = {
            k: _cascade(path, v, f"candidate {k!r}: ")
            for k, v in _candidates(path, data).items()
        }
        return NamedPolicy(name, about, tuple(found.items()), pricing=pricing)
    body = data.get("cascade")
    if body is None and "tiers" in data:
        body = {k: v for k, v in data.items() if k not in ("name", "pricing")}
    if not isinstance(body, dict):
        raise ConfigError(f"{path}: needs 'tiers', 'cascade' or 'candidates'")
    return NamedPolicy(name, about, ((name, _cascade(path, body)),), pricing=pricing)


def _cascade(path: Path, body: Mapping[str, Any], where: str = "") -> Cascade:
    """A policy file's Cascade; an error names the file.

    Each tier is checked first, alone: a bad tier inside the Cascade is also
    reported as a list too short (pydantic counts the tiers that passed),
    which says nothing about the tier itself.
    """
    tiers = body.get("tiers")
    for index, tier in enumerate(tiers if isinstance(tiers, list) else []):
        try:
            Tier(**tier) if isinstance(tier, dict) else Tier.model_validate(tier)
        except PolicyError as exc:
            raise ConfigError(f"{path}: {where}tiers[{index}]: {exc}") from exc
    try:
        return Cascade(**body)
    except PolicyError as exc:
        raise ConfigError(f"{path}: {where}{exc}") from exc


def _pricing(path: Path, value: Any) -> Pricing | None:
    """A policy file's ``"pricing"``, read as a Pricing (overrides, default)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(
            f"{path}: 'pricing' is a {type(value).__name__}; expected a Pricing "
            'object, e.g. {"overrides": {"my-model": {"input_usd_per_mtok": 0.5, '
            '"output_usd_per_mtok": 1.5}}}'
        )
    return Pricing(**value)


def _candidates(path: Path, data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The policy file's candidates: a JSON object of label to Cascade object."""
    candidates = data["candidates"]
    if not isinstance(candidates, dict):
        raise ConfigError(
            f"{path}: 'candidates' is a {type(candidates).__name__}; expected an "
            'object of label to Cascade object, e.g. {"cheap-first": {"tiers": '
            "[...]}}"
        )
    for label, body in candidates.items():
        if not isinstance(body, dict):
            raise ConfigError(
                f"{path}: candidate {label!r} is a {type(body).__name__}; expected "
                'a Cascade object such as {"tiers": ["model-a", "model-b"]}'
            )
    return candidates


def _from_object(spec: str, value: object) -> NamedPolicy:
    if isinstance(value, NamedPolicy):
        return value
    if isinstance(value, Cascade):
        return NamedPolicy(spec, f"from {spec}", ((spec, value),))
    if isinstance(value, Policy) and value.cascade is not None:
        cascade = ((value.name, value.cascade),)
        return NamedPolicy(spec, f"from {spec}", cascade, pricing=value.pricing)
    if isinstance(value, Mapping) and all(
        isinstance(v, Cascade) for v in value.values()
    ):
        return NamedPolicy(spec, f"from {spec}", tuple(value.items()))
    raise ConfigError(
        f"{spec} is a {type(value).__name__}; expected a Cascade, a NamedPolicy, "
        "a Policy with a cascade or a mapping of label to Cascade"
    )
