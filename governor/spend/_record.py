"""One governed call's spend, as recorded, and its JSON form."""

from __future__ import annotations

import json
import math
import sys
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, get_args

from governor._errors import GovernorError, decimal_text
from governor.policies._model import ATTRIBUTION_FIELDS, as_name
from governor.pricing._types import USAGE_PARTS

__all__ = ["OUTCOMES", "Outcome", "SpendDataError", "SpendRecord", "load_json"]

Outcome = Literal["ok", "error", "refused", "cache_hit", "cancelled"]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)

MONEY_FIELDS = ("cost_usd", "saved_usd")
FLAG_FIELDS = ("cost_estimated", "cache_hit")
# The usage parts kept since schema 3 (cache reads have their own field since
# the first): records written before read them as 0.
USAGE_PART_FIELDS = tuple(p for p in USAGE_PARTS if p != "cache_read_tokens")
TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    *USAGE_PART_FIELDS,
)
REQUIRED_TEXT = ("task_id", "call_id", "model")
OPTIONAL_TEXT = ("provider", "stop_reason", *ATTRIBUTION_FIELDS)

# Version of the JSON form written by SpendRecord.to_json_dict; readers accept
# any record whose "v" they know and ignore keys they do not.
JSON_VERSION = 1


class SpendDataError(GovernorError, ValueError):
    """A stored spend record could not be read; the message names where."""

    code = "spend_data_invalid"


@dataclass(frozen=True, slots=True, kw_only=True)
class SpendRecord:
    """What one governed call cost, who it is charged to and how it ended.

    ``ts`` is when the call finished, a timezone-aware datetime normalised to
    UTC. ``cost_usd`` is the settled cost (zero for refusals and cache hits);
    ``saved_usd`` is what a cache hit or a downgrade saved against the price of
    the call as asked. Both are finite, non-negative Decimals (a float, NaN,
    an infinity or a negative amount is refused). ``cost_estimated`` and
    ``cache_hit`` are True or False (a string such as ``"false"`` is
    refused), ``latency_s`` a finite, non-negative number of seconds, kept
    as a float. ``input_tokens`` counts
    every prompt token, cached ones included; ``cache_read_tokens`` and
    ``cache_write_tokens`` are the parts of it read from and written to the
    provider's prompt cache. ``output_tokens`` counts every output token;
    ``reasoning_tokens`` is the part of it spent on hidden reasoning.
    ``audio_input_tokens``, ``audio_output_tokens`` and
    ``audio_cache_read_tokens`` are the audio parts of the prompt (not read
    from the cache), of the output and of the cache reads, as in
    :class:`governor.pricing.Usage`: with them a replay prices the call as it
    was billed. ``team`` to ``org`` and ``tags`` are the task's attribution;
    JSON written before ``org`` or the usage parts existed reads with them
    unset (0 for the token counts).
    """

    ts: datetime
    task_id: str
    call_id: str
    model: str
    provider: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0
    audio_cache_read_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    cost_estimated: bool = False
    cache_hit: bool = False
    saved_usd: Decimal = Decimal(0)
    outcome: Outcome = "ok"
    stop_reason: str | None = None
    latency_s: float = 0.0
    team: str | None = None
    feature: str | None = None
    environment: str | None = None
    user: str | None = None
    session: str | None = None
    org: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.ts.tzinfo is None or self.ts.utcoffset() is None:
            raise ValueError("SpendRecord.ts must be timezone-aware (UTC)")
        if self.ts.tzinfo is not UTC:
            try:
                object.__setattr__(self, "ts", self.ts.astimezone(UTC))
            except OverflowError:
                raise ValueError(
                    f"SpendRecord.ts {self.ts.isoformat()} is outside the "
                    "years a UTC time can hold (1 to 9999); fix the record's ts"
                ) from None
        for name in MONEY_FIELDS:
            amount = getattr(self, name)
            _check_money(name, amount)
            if amount.is_zero() and amount.is_signed():
                object.__setattr__(self, name, amount.copy_abs())
        _check_text(self)
        _check_tags(self.tags)
        _compose_names(self)
        _check_flags(self)
        _check_latency(self)
        if self.outcome not in OUTCOMES:
            raise ValueError(f"SpendRecord.outcome must be one of {OUTCOMES}")
        for name in TOKEN_FIELDS:
            count = getattr(self, name)
            if isinstance(count, bool) or not isinstance(count, int):
                raise TypeError(
                    f"SpendRecord.{name} must be a whole number, got the "
                    f"{type(count).__name__} {count!r}"
                )
            if count < 0:
                raise ValueError(
                    f"SpendRecord.{name} must be a non-negative token count, "
                    f"got {count}"
                )

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def to_json_dict(self) -> dict[str, Any]:
        """Return the record as JSON-safe values (the JSONL trace format).

        The usage parts (``USAGE_PART_FIELDS``) are written only when not 0.
        """
        out: dict[str, Any] = {"v": JSON_VERSION}
        for f in fields(self):
            out[f.name] = getattr(self, f.name)
        out["ts"] = self.ts.isoformat(timespec="microseconds").replace("+00:00", "Z")
        # Plain notation, never "1.5E-7": readers expect "0.00000015".
        out["cost_usd"] = decimal_text(self.cost_usd)
        out["saved_usd"] = decimal_text(self.saved_usd)
        out["tags"] = dict(self.tags)
        for name in USAGE_PART_FIELDS:
            if out[name] == 0:
                del out[name]  # most calls have none; a reader takes 0
        return out

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> SpendRecord:
        """Build a record from :meth:`to_json_dict` output; unknown keys are ignored.

        Raises:
            SpendDataError: a required key is missing or a value is malformed.
        """
        version = data.get("v", JSON_VERSION)
        if isinstance(version, bool) or version != JSON_VERSION:
            raise SpendDataError(
                f"unknown spend record version {version!r}; this release "
                f'reads version {JSON_VERSION} ("v": {JSON_VERSION}, a number)'
            )
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        try:
            values["ts"] = _json_ts(values["ts"])
            for name in MONEY_FIELDS:
                values[name] = _json_money(name, values.get(name, "0"))
            if isinstance(values.get("tags"), Mapping):
                values["tags"] = dict(values["tags"])
            for name in REQUIRED_TEXT:
                # Missing is refused as null is, naming the field.
                values.setdefault(name, None)
            return cls(**values)
        except KeyError as exc:
            hint = ""
            if "ts" not in data and ("span_id" in data or "trace_id" in data):
                hint = (
                    " (this looks like a span, from a traces file such as "
                    "GOVERNOR_TRACES_FILE; reports read spend stores: give the "
                    "governor one with Governor(policy, spend=PATH))"
                )
            raise SpendDataError(
                f"malformed spend record: missing {exc}{hint}"
            ) from exc
        except (TypeError, ValueError, InvalidOperation) as exc:
            raise SpendDataError(f"malformed spend record: {exc}") from exc


def _check_text(record: SpendRecord) -> None:
    """Refuse a required name that is not a non-empty string, or an optional
    one that is neither a string nor None (a JSON number or array, say)."""
    for name in REQUIRED_TEXT:
        value = getattr(record, name)
        if not isinstance(value, str) or not value:
            raise TypeError(
                f"SpendRecord.{name} must be a non-empty string, got "
                f"{_kind(value)}{value!r}"
            )
    for name in OPTIONAL_TEXT:
        value = getattr(record, name)
        if value is not None and not isinstance(value, str):
            raise TypeError(
                f"SpendRecord.{name} must be a string or None (unset), got "
                f"{_kind(value)}{value!r}"
            )


def _compose_names(record: SpendRecord) -> None:
    """Keep attribution names and tags composed (NFC), as a Policy keeps them.

    A record written before names were composed, or by other code, may spell
    ``"café"`` with a combining accent; read composed, it is reported and
    replayed with the ``"café"`` the governor charges now.
    """
    for name in ATTRIBUTION_FIELDS:
        value = getattr(record, name)
        if value is not None:
            object.__setattr__(record, name, as_name(value))
    tags = record.tags
    if any(not unicodedata.is_normalized("NFC", t) for t in (*tags, *tags.values())):
        object.__setattr__(
            record,
            "tags",
            {as_name(k): as_name(v) for k, v in tags.items()},
        )


def _json_ts(value: object) -> datetime:
    """Read a record's ``ts``: ISO 8601 text with its UTC offset.

    A number (seconds since the epoch, in which unit?) or null is refused,
    naming the field, rather than read as text; so is text that is not an
    ISO 8601 time, or one without its offset.
    """
    wanted = (
        "an ISO 8601 time with its UTC offset, such as "
        '"2025-01-31T09:30:00.000000Z" or "2025-01-31T10:30:00+01:00"'
    )
    if value is None:
        raise SpendDataError(f"ts must be {wanted}, got null")
    if not isinstance(value, str):
        kind = _JSON_KINDS.get(type(value), type(value).__name__)
        raise SpendDataError(f"ts must be {wanted}, got the {kind} {value!r}")
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise SpendDataError(f"ts must be {wanted}, got {value!r}") from None
    if ts.utcoffset() is None:
        raise SpendDataError(
            f"ts must be {wanted}, got {value!r}, which has no offset and "
            "so names no one moment"
        )
    return ts


def _check_flags(record: SpendRecord) -> None:
    """Refuse a flag that is not True or False (a string "false" is true)."""
    for name in FLAG_FIELDS:
        value = getattr(record, name)
        if not isinstance(value, bool):
            raise TypeError(
                f"SpendRecord.{name} must be True or False (JSON true or false), "
                f"got {_type_of(value)}{value!r}"
            )


def _check_latency(record: SpendRecord) -> None:
    """Refuse a latency that is not a finite, non-negative number of seconds."""
    value = record.latency_s
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            "SpendRecord.latency_s must be a number of seconds, got "
            f"{_type_of(value)}{value!r}"
        )
    try:
        seconds = float(value)
    except OverflowError:  # a whole number too large for a float
        seconds = math.inf
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(
            "SpendRecord.latency_s must be a finite, non-negative number of "
            f"seconds, got {value!r}"
        )
    object.__setattr__(record, "latency_s", seconds)


def _type_of(value: object) -> str:
    """``the str `` before a value's repr (strings too), nothing for None."""
    return "" if value is None else f"the {type(value).__name__} "


def _check_tags(tags: object) -> None:
    """Refuse tags that are not a mapping of names to strings (JSON null, an
    array, a number, or a nested object or number as a value)."""
    if not isinstance(tags, Mapping):
        raise TypeError(
            "SpendRecord.tags must map tag names to strings, such as "
            f"{{'customer': 'acme'}}, or be empty {{}}; got {_kind(tags)}{tags!r}"
        )
    for name, value in tags.items():
        if not isinstance(name, str):
            raise TypeError(
                f"SpendRecord.tags names must be strings, got {_kind(name)}{name!r}"
            )
        if not isinstance(value, str):
            raise TypeError(
                f"SpendRecord.tags[{name!r}] must be a string (tag values are "
                f"text), got {_kind(value)}{value!r}"
            )


def _kind(value: object) -> str:
    """``the int `` before a value's repr, or nothing for None and strings."""
    if value is None or isinstance(value, str):
        return ""
    return f"the {type(value).__name__} "


_MOST_USD = Decimal(10) ** 12
"""No single call costs a trillion dollars: more means a corrupt record."""

_JSON_KINDS: dict[type, str] = {
    int: "JSON number",
    float: "float",
    bool: "JSON boolean",
    type(None): "JSON null",
    list: "JSON array",
    dict: "JSON object",
}


def _check_money(name: str, value: object) -> None:
    """Refuse a money field that is not a finite, non-negative Decimal."""
    if not isinstance(value, Decimal):
        hint = ""
        if isinstance(value, float | int) and not isinstance(value, bool):
            hint = f"; pass Decimal({str(value)!r}) for an exact amount"
        raise TypeError(
            f"SpendRecord.{name} must be a Decimal, got the "
            f"{type(value).__name__} {value!r}{hint}"
        )
    if not value.is_finite():
        raise ValueError(f"SpendRecord.{name} must be a finite amount, got {value}")
    if value < 0:
        raise ValueError(f"SpendRecord.{name} must not be negative, got {value}")
    if value > _MOST_USD:
        raise ValueError(
            f"SpendRecord.{name} of {value:.3e} dollars for one call cannot be "
            "right; the record is corrupt"
        )


def _json_money(name: str, value: object) -> Decimal:
    """Read a JSON money value: a decimal string, or a whole number (exact).

    A JSON number with a fraction or an exponent arrives as a float, already
    rounded; it is refused rather than guessed at.
    """
    if isinstance(value, str):
        try:
            return Decimal(value)
        except InvalidOperation:
            raise SpendDataError(
                f'{name} must be a decimal string such as "0.00036", got {value!r}'
            ) from None
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    kind = _JSON_KINDS.get(type(value), type(value).__name__)
    raise SpendDataError(
        f'{name} must be a decimal string such as "0.00036", got the {kind} '
        f"{value!r}; write money as a string so that it stays exact"
    )


def load_json(text: str | bytes) -> Any:
    """``json.loads`` for one stored record, naming a number too long to read.

    Python refuses to read a whole number of more than
    ``sys.get_int_max_str_digits()`` digits; its message names no field and
    suggests raising the limit. Such a record is corrupt, so it is refused
    with the field it was in.

    Raises:
        json.JSONDecodeError: the text is not JSON.
        SpendDataError: a number is too long to read (the message names it).
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except ValueError as exc:
        found = _overlong_number(text)
        if found is None:
            raise
        where, digits = found
        raise SpendDataError(
            f"malformed spend record: {where} is a number {digits} digits "
            "long; no count or amount is that large, so the record is corrupt"
        ) from exc


class _Overlong(str):
    """The digits of a number too long for ``int``, kept to find its field."""


def _overlong_number(text: str | bytes) -> tuple[str, int] | None:
    """The field holding the first number too long to read, and its digits."""
    most = sys.get_int_max_str_digits()

    def read_int(digits: str) -> int | _Overlong:
        if most and len(digits.lstrip("-")) > most:
            return _Overlong(digits)
        return int(digits)

    try:
        data = json.loads(text, parse_int=read_int)
    except ValueError:
        return None
    return _find_overlong(data, "")


def _find_overlong(value: object, where: str) -> tuple[str, int] | None:
    if isinstance(value, _Overlong):
        return where or "the record", len(value.lstrip("-"))
    items: list[tuple[str, object]] = []
    if isinstance(value, dict):
        items = [(f"{where}.{k}" if where else str(k), v) for k, v in value.items()]
    elif isinstance(value, list):
        items = [(f"{where}[{i}]", v) for i, v in enumerate(value)]
    for path, item in items:
        found = _find_overlong(item, path)
        if found is not None:
            return found
    return None
