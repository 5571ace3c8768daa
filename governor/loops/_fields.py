"""Checked readers for the values of a trajectory line.

Each reader takes a raw JSON value and the place it sits in the line (such as
``calls[3].cost_usd``) and raises :class:`ConfigError` saying what is wrong
with it and what is accepted; ``read_trajectories`` adds the file and line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from governor._errors import ConfigError
from governor._money import as_decimal

__all__ = [
    "ERROR",
    "RESOLVED",
    "UNLABELLED",
    "UNRESOLVED",
    "cost_of",
    "count_of",
    "items_of",
    "kind_of",
    "mapping_of",
    "outcome_of",
    "required",
    "time_of",
]

RESOLVED = "resolved"
UNRESOLVED = "unresolved"
ERROR = "error"
UNLABELLED = "unknown"

# Outcome words, compared in lower case; "unknown" is a run without a label.
_OUTCOMES = {
    "resolved": RESOLVED,
    "true": RESOLVED,
    "yes": RESOLVED,
    "1": RESOLVED,
    "unresolved": UNRESOLVED,
    "false": UNRESOLVED,
    "no": UNRESOLVED,
    "0": UNRESOLVED,
    "error": ERROR,
    "unknown": UNLABELLED,
}
_JSON_KINDS = {
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    list: "list",
    dict: "object",
    type(None): "null",
}
# More than six fractional digits (100-ns clocks): the rest is dropped.
_EXTRA_DIGITS = re.compile(r"(\.\d{6})\d+")


def kind_of(value: object) -> str:
    """The JSON name of a value's type, e.g. ``"list"`` or ``"number"``."""
    return _JSON_KINDS.get(type(value), type(value).__name__)


def outcome_of(value: object, *, where: str) -> str:
    """Read a run's outcome as ``resolved``, ``unresolved``, ``error`` or ``unknown``.

    Booleans, 1 / 0 and the words true / false, resolved / unresolved,
    yes / no, error and unknown (any case) are accepted; null or a missing
    value is ``unknown``: the run has no label.
    """
    if value is None:
        return UNLABELLED
    if isinstance(value, bool):
        return RESOLVED if value else UNRESOLVED
    word = _OUTCOMES.get(str(value).strip().lower())
    if isinstance(value, int | str) and word is not None:
        return word
    raise ConfigError(
        f"{where} is {value!r}, not an outcome; write true / false, "
        "resolved / unresolved, yes / no or 1 / 0 (any case), or leave it out "
        "for a run without a label"
    )


def count_of(value: object, *, where: str) -> int | None:
    """Read a token count: a whole number of at least 0; null stays null (unknown)."""
    if value is None:
        return None
    count = _whole(value)
    if count is None or count < 0:
        raise ConfigError(
            f"{where} is {value!r}; a token count is a whole number of at "
            "least 0, such as 1662"
        )
    return count


def _whole(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdecimal():
        return int(value)
    return None


# No single call costs a trillion dollars: more means a corrupt record (as
# ``governor report`` refuses a spend record's cost).
_MOST_USD = Decimal(10) ** 12


def cost_of(value: object, *, where: str) -> Decimal | None:
    """Read a cost in dollars: a finite number of at least 0, at most 10**12.

    Null or ``""`` is None: the record does not say what the call cost, which
    is not the same as a call that cost nothing. More than a trillion
    dollars for one call is refused as a corrupt record.
    """
    if value is None or value == "":
        return None
    try:
        amount = as_decimal(value, field=where)
    except (TypeError, ArithmeticError):  # decimal.InvalidOperation: not a number
        amount = Decimal("NaN")
    if not amount.is_finite() or amount < 0:
        raise ConfigError(
            f"{where} is {value!r}; a cost is a finite number of dollars of at "
            'least 0, such as "0.004596"'
        )
    if amount > _MOST_USD:
        raise ConfigError(
            f"{where} of {amount:.3e} dollars for one call cannot be right; the "
            'record is corrupt: a cost is dollars per call, such as "0.004596"'
        )
    return amount


# Unix seconds past this (the year 5138) are no call's time: a unit slip.
_LAST_S = 1e11


def time_of(value: object, *, where: str) -> float | None:
    """Read a call's time as Unix seconds; an ISO 8601 time is converted.

    An ISO time without an offset is read as UTC. Null stays null.
    """
    if value is None:
        return None
    seconds = _seconds(value)
    if seconds is None or not math.isfinite(seconds) or not 0 <= seconds < _LAST_S:
        raise ConfigError(
            f"{where} is {value!r}; give Unix seconds (a number such as "
            '1763510516) or an ISO 8601 time such as "2025-11-19T00:01:56Z"'
        )
    return seconds


def _seconds(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if not isinstance(value, str):
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(_EXTRA_DIGITS.sub(r"\1", value.strip()))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def mapping_of(value: object, *, where: str) -> Mapping[str, Any]:
    """Check that a value is a JSON object."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} is a JSON {kind_of(value)}, not an object")
    return value


def items_of(value: object, *, where: str) -> list[Any]:
    """Check that a value is a JSON list; null or missing is an empty list."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{where} is a JSON {kind_of(value)}, not a list")
    return value


def required(row: Mapping[str, Any], key: str, *, where: str) -> Any:
    """The value of ``key``; ConfigError when it is missing or null."""
    value = row.get(key)
    if value is None:
        raise ConfigError(f"{where} has no {key!r}")
    return value
