"""A small subset of JSON Schema, enough to check a model's structured answer.

Supported keywords: ``type`` (a name or a list), ``enum``, ``const``,
``properties``, ``required``, ``additionalProperties`` (bool or schema),
``items`` (one schema), ``minItems``, ``maxItems``, ``minLength``,
``maxLength``, ``pattern``, ``minimum``, ``maximum``, ``exclusiveMinimum``,
``exclusiveMaximum`` (numbers), ``anyOf``, ``allOf``, ``oneOf``; annotations
(``title``, ``description``, ``$schema``, ``$id``, ``default``,
``examples``) are ignored. Anything else is refused up front by
:func:`check_supported`, so a schema never passes by being half-read.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from governor._errors import ConfigError

__all__ = ["check_supported", "schema_errors"]

_ANNOTATIONS = frozenset(
    {"title", "description", "$schema", "$id", "default", "examples", "$comment"}
)
_SUBSCHEMA_LISTS = ("anyOf", "allOf", "oneOf")
_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, float) and v.is_integer())
    ),
}


def check_supported(schema: Mapping[str, Any], path: str = "$") -> None:
    """Raise ConfigError if ``schema`` uses a keyword outside the subset."""
    known = set(_KEYWORDS) | _ANNOTATIONS
    unknown = sorted(set(schema) - known)
    if unknown:
        raise ConfigError(
            f"JSON schema keyword(s) {unknown} at {path} are not supported by the "
            f"cascade's json check; supported: {sorted(_KEYWORDS)}"
        )
    wanted = schema.get("type", ())
    types = [wanted] if isinstance(wanted, str) else list(wanted)
    if any(name not in _TYPES for name in types):
        raise ConfigError(
            f"JSON schema type {wanted!r} at {path} is not one of {sorted(_TYPES)}"
        )
    _check_values(schema, path)
    for key in ("items", "additionalProperties"):
        sub = schema.get(key)
        if isinstance(sub, Mapping):
            check_supported(sub, f"{path}.{key}")
    for name, sub in dict(schema.get("properties", {})).items():
        if not isinstance(sub, Mapping):
            _bad(f"{path}.properties.{name}", "a schema object", sub)
        check_supported(sub, f"{path}.properties.{name}")
    for key in _SUBSCHEMA_LISTS:
        for i, sub in enumerate(schema.get(key, ())):
            check_supported(sub, f"{path}.{key}[{i}]")


_NUMBER_KEYS = (
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
)


def _check_values(schema: Mapping[str, Any], path: str) -> None:
    """Refuse keyword values the check could not apply as JSON Schema means."""
    if "enum" in schema and not isinstance(schema["enum"], list):
        _bad(f"{path}.enum", "a list", schema["enum"])
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        _bad(f"{path}.required", "a list of property names", required)
    if "items" in schema and not isinstance(schema["items"], Mapping):
        _bad(
            f"{path}.items",
            "one schema object (the list form is not supported)",
            schema["items"],
        )
    for key in _NUMBER_KEYS:
        bound = schema.get(key)
        if key in schema and (
            isinstance(bound, bool) or not isinstance(bound, int | float)
        ):
            _bad(f"{path}.{key}", "a number", bound)
    if "pattern" in schema:
        try:
            re.compile(schema["pattern"])
        except (re.error, TypeError) as exc:
            _bad(
                f"{path}.pattern",
                f"a valid regular expression ({exc})",
                schema["pattern"],
            )


def _bad(where: str, wanted: str, got: Any) -> None:
    raise ConfigError(f"JSON schema {where} must be {wanted}, got {got!r}")


def schema_errors(value: Any, schema: Mapping[str, Any], path: str = "$") -> list[str]:
    """Return why ``value`` does not fit ``schema``; empty when it fits."""
    errors: list[str] = []
    for key, rule in _KEYWORDS.items():
        if key in schema:
            errors.extend(rule(value, schema, path))
    return errors


def _type(value: Any, schema: Mapping[str, Any], path: str) -> list[str]:
    wanted = schema["type"]
    names = [wanted] if isinstance(wanted, str) else list(wanted)
    if any(_TYPES[name](value) for name in names):
        return []
    return [f"{path}: expected {' or '.join(names)}, got {type(value).__name__}"]


def _enum(value: Any, schema: Mapping[str, Any], path: str) -> list[str]:
    if any(_same(value, option) for option in schema["enum"]):
        return []
    return [f"{path}: {value!r} is not one of {list(schema['enum'])!r}"]


def _const(value: Any, schema: Mapping[str, Any], path: str) -> list[str]:
    if _same(value, schema["const"]):
        return []
    return [f"{path}: must be {schema['const']!r}"]


def _same(a: Any, b: Any) -> bool:
    """JSON equality: ``true`` is not ``1`` and ``false`` is not ``0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _properties(value: Any, schema: Mapping[str, Any], path: str) -> list[str]:
    if not isinstance(value, dict):
        return []
    errors: list[str] = []
    for name, sub in schema["properties"].items():
        if name in value:
            errors.extend(schema_errors(value[name], sub, f"{path}.{name}"))
    return errors


def _required(value: Any, schema: Mapping[str, Any], path: str) -> list[str]:
    if not isinstance(value, dict):
        return []
    missing = [name for name in schema["required"] if name not in value]
    return [f"{path}: missing required {name!r}" for name in missing]


def _additional(value: Any, schema: Mapping[str, Any], path: str) -> list[str]:
    if not isinstance(value, dict):
        return []
    rule = schema["additionalProperties"]
    extra = [k for k in value if k not in schema.get("properties", {})]
    if rule is False:
        return [f"{path}: unexpected property {k!r}" for k in extra]
    if isinstance(rule, Mapping):
        return [e for k in extra for e in schema_errors(value[k], rule, f"{path}.{k}")]
    return []


def _items(value: Any, schema: Mapping[str, Any], path: str) -> list[str]:
    if not isinstance(value, list):
        return []
    sub = schema["items"]
    return [
        e for i, v in enumerate(value) for e in schema_errors(v, sub, f"{path}[{i}]")
    ]


def _bound(
    key: str, measure: Callable[[Any], float | None], ok: Callable[[float, Any], bool]
) -> Callable[[Any, Mapping[str, Any], str], list[str]]:
    def rule(value: Any, schema: Mapping[str, Any], path: str) -> list[str]:
        measured = measure(value)
        if measured is None or ok(measured, schema[key]):
            return []
        return [f"{path}: fails {key}={schema[key]!r} (got {measured!r})"]

    return rule


def _length(value: Any) -> float | None:
    return len(value) if isinstance(value, str) else None


def _count(value: Any) -> float | None:
    return len(value) if isinstance(value, list) else None


def _numeric(value: Any) -> float | None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if number else None


def _pattern(value: Any, schema: Mapping[str, Any], path: str) -> list[str]:
    if not isinstance(value, str) or re.search(schema["pattern"], value):
        return []
    return [f"{path}: does not match pattern {schema['pattern']!r}"]


def _any_of(value: Any, schema: Mapping[str, Any], path: str) -> list[str]:
    if any(not schema_errors(value, sub, path) for sub in schema["anyOf"]):
        return []
    return [f"{path}: matches none of anyOf"]


def _all_of(value: Any, schema: Mapping[str, Any], path: str) -> list[str]:
    subs: Sequence[Mapping[str, Any]] = schema["allOf"]
    return [e for sub in subs for e in schema_errors(value, sub, path)]


def _one_of(value: Any, schema: Mapping[str, Any], path: str) -> list[str]:
    fits = sum(1 for sub in schema["oneOf"] if not schema_errors(value, sub, path))
    return [] if fits == 1 else [f"{path}: matches {fits} of oneOf, not exactly 1"]


_KEYWORDS: dict[str, Callable[[Any, Mapping[str, Any], str], list[str]]] = {
    "type": _type,
    "enum": _enum,
    "const": _const,
    "properties": _properties,
    "required": _required,
    "additionalProperties": _additional,
    "items": _items,
    "minItems": _bound("minItems", _count, lambda m, b: m >= b),
    "maxItems": _bound("maxItems", _count, lambda m, b: m <= b),
    "minLength": _bound("minLength", _length, lambda m, b: m >= b),
    "maxLength": _bound("maxLength", _length, lambda m, b: m <= b),
    "pattern": _pattern,
    "minimum": _bound("minimum", _numeric, lambda m, b: m >= b),
    "maximum": _bound("maximum", _numeric, lambda m, b: m <= b),
    "exclusiveMinimum": _bound("exclusiveMinimum", _numeric, lambda m, b: m > b),
    "exclusiveMaximum": _bound("exclusiveMaximum", _numeric, lambda m, b: m < b),
    "anyOf": _any_of,
    "allOf": _all_of,
    "oneOf": _one_of,
}
