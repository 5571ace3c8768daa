"""The policy model: what a governor enforces, declared as frozen data.

A :class:`Policy` is composed of parts, each with one job. Policies compose with
:meth:`Policy.merged` (organisation default, then team override, then agent
override); see ``docs/policy.md`` for the merge rule.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from decimal import ROUND_DOWN, Decimal
from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import (
    AfterValidator,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)

from governor._errors import PolicyError
from governor._money import plain_text, without_exponent
from governor.policies._base import FieldsError, PolicyModel
from governor.policies._cache import Cache
from governor.policies._cascade import Cascade
from governor.policies._loops import Loops

__all__ = [
    "SCOPES",
    "Attribution",
    "Budget",
    "Fanout",
    "Loops",
    "Period",
    "Policy",
    "Price",
    "PriceTier",
    "Pricing",
    "Scope",
]

Scope = Literal["task", "session", "user", "team", "feature", "environment", "org"]
Period = Literal["total", "hour", "day", "week", "month", "rolling"]
CallPricing = Literal["at_least_map", "honour", "ignore"]
SCOPES: tuple[Scope, ...] = (
    "task",
    "session",
    "user",
    "team",
    "feature",
    "environment",
    "org",
)

ATTRIBUTION_FIELDS = ("team", "feature", "environment", "user", "session", "org")
"""The scopes an Attribution names (every scope but ``task``)."""

_USD = (
    "a non-negative number of US dollars as Decimal, int, str, or a float with "
    "at most 9 decimal places, e.g. '0.50'"
)
_MAX_EXACT = 2**53 - 1
"""The largest whole number a shared ledger stores exactly (a double in Lua)."""
MAX_BUDGET_USD = Decimal(_MAX_EXACT) / 10**9
"""The largest ``max_usd``: about 9 million dollars, counted in nano-dollars."""
_DAY_S = 86_400.0
_DEFAULT_WARN_AT = (0.8, 0.95)
_NANO_USD = Decimal("1e-9")
MAX_PRICE_USD = MAX_BUDGET_USD
"""The largest price: per million tokens, or per second of a call.

A dearer price would charge more for a million tokens (or one second) than
any ledger can count, and the largest budget, which settles nothing: such a
price is a typo (a price per token given per million, an exponent too many).
"""
_Dollars = Annotated[
    Decimal,
    Field(ge=0, le=MAX_BUDGET_USD),
    AfterValidator(without_exponent),
    PlainSerializer(plain_text, return_type=str, when_used="json"),
]
"""A money field of a policy, a budget's or a price (both bounded by
``MAX_BUDGET_USD``, which is ``MAX_PRICE_USD``): ``"1e3"`` is kept as
``Decimal("1000")`` and written to JSON without an exponent, so reprs and
``governor policy show`` print amounts as they are read. The bounds are
checked first, so only amounts a ledger counts are written out."""
_PER_MTOK = (
    "US dollars per million tokens, from 0 to about 9 million "
    "(9007199.254740991), e.g. Decimal('2.50')"
)


class PriceTier(PolicyModel):
    """Prices that apply once a call's prompt exceeds ``above_input_tokens``."""

    above_input_tokens: int = Field(
        gt=0, le=_MAX_EXACT, description="a positive token count"
    )
    input_usd_per_mtok: _Dollars = Field(description=_PER_MTOK)
    output_usd_per_mtok: _Dollars = Field(description=_PER_MTOK)
    cache_read_usd_per_mtok: _Dollars | None = Field(
        default=None, description=_PER_MTOK
    )
    cache_write_usd_per_mtok: _Dollars | None = Field(
        default=None, description=_PER_MTOK
    )


class Price(PolicyModel):
    """A model's price, for negotiated rates, self-hosted models and defaults.

    Unset cache prices fall back to the input price and an unset reasoning price
    to the output price. ``usd_per_second`` prices self-hosted models by the
    wall time of the call, alone or on top of the token prices.
    """

    input_usd_per_mtok: _Dollars = Field(default=Decimal(0), description=_PER_MTOK)
    output_usd_per_mtok: _Dollars = Field(default=Decimal(0), description=_PER_MTOK)
    cache_read_usd_per_mtok: _Dollars | None = Field(
        default=None, description=_PER_MTOK
    )
    cache_write_usd_per_mtok: _Dollars | None = Field(
        default=None, description=_PER_MTOK
    )
    reasoning_usd_per_mtok: _Dollars | None = Field(default=None, description=_PER_MTOK)
    usd_per_second: _Dollars | None = Field(
        default=None,
        description="US dollars per second of call wall time, from 0 to about "
        "9 million (9007199.254740991)",
    )
    tiers: tuple[PriceTier, ...] = Field(
        default=(), description="PriceTier entries, one per context-length threshold"
    )
    max_output_tokens: int | None = Field(
        default=None,
        gt=0,
        le=_MAX_EXACT,
        description="the model's output-token ceiling",
    )
    max_input_tokens: int | None = Field(
        default=None,
        gt=0,
        le=_MAX_EXACT,
        description="the model's context window in tokens",
    )

    @model_validator(mode="before")
    @classmethod
    def _both_token_prices(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or set(data) - set(cls.model_fields):
            return data  # unknown keywords: the forbid rule names them
        base = ("input_usd_per_mtok", "output_usd_per_mtok")
        others = (
            "cache_read_usd_per_mtok",
            "cache_write_usd_per_mtok",
            "reasoning_usd_per_mtok",
        )
        given = [k for k in (*base, *others) if data.get(k) is not None]
        missing = [k for k in base if k not in data]
        if given and missing:
            raise FieldsError(
                f"Price sets {', '.join(given)} but not {' or '.join(missing)}; "
                "set both input_usd_per_mtok and output_usd_per_mtok (0 makes "
                "those tokens free on purpose), or Price() for a free model",
                tuple(missing),
                {name: data[name] for name in given},
            )
        return data

    @field_validator("tiers")
    @classmethod
    def _one_tier_per_threshold(
        cls, value: tuple[PriceTier, ...]
    ) -> tuple[PriceTier, ...]:
        seen: set[int] = set()
        for tier in value:
            if tier.above_input_tokens in seen:
                raise ValueError(
                    f"two tiers start above {tier.above_input_tokens} input "
                    "tokens; which one bills would depend on their order: keep "
                    "one PriceTier per above_input_tokens"
                )
            seen.add(tier.above_input_tokens)
        return value


class Pricing(PolicyModel):
    """Where prices come from: LiteLLM's bundled map, then these overrides."""

    overrides: Mapping[str, Price] = Field(
        default_factory=dict,
        description="a mapping of model name to Price; it wins over the price map",
    )
    default: Price | None = Field(
        default=None,
        description="a Price for models with no known price; None refuses them",
    )
    remote_price_map: bool = Field(
        default=False,
        description="True to fetch LiteLLM's current price map once (network)",
    )
    call_prices: CallPricing = Field(
        default="at_least_map",
        description=(
            "how prices a LiteLLM call sets (its price keywords, a Router "
            "deployment's prices, a base_model) are taken: 'at_least_map' "
            "charges each at least the price map's price for the model called, "
            "'honour' charges them as given (negotiated prices below list), "
            "'ignore' prices from the map alone"
        ),
    )

    @field_validator("overrides")
    @classmethod
    def _model_names(cls, value: Mapping[str, Price]) -> Mapping[str, Price]:
        for model in value:
            if not model.strip() or model != model.strip():
                raise ValueError(
                    f"override key {model!r} can never match a model a call "
                    "names: key each Price by the model name as it is called, "
                    "e.g. {'gpt-4o-mini': Price(...)}, without spaces around it"
                )
        return value

    @field_validator("remote_price_map", mode="before")
    @classmethod
    def _a_real_flag(cls, value: Any) -> Any:
        # Text such as "yes" or "false" would be read as a flag; "yes" turns on
        # network fetching, so only True and False are taken.
        if not isinstance(value, bool):
            raise ValueError(
                "remote_price_map takes True or False only, not text or a "
                "number read as a flag: True fetches LiteLLM's price map over "
                "the network, so it must be a real True"
            )
        return value


class Budget(PolicyModel):
    """A hard limit on spend, in dollars, tokens or both, for one scope.

    ``scope="task"`` limits each task (one graph invocation or governed call);
    the attribution scopes (``team``, ``feature``, ...) limit the spend of every
    task that carries that attribute, summed. With ``key`` set the budget
    applies only to that value, e.g. ``Budget(scope="team", key="search", ...)``.
    """

    scope: Scope = Field(default="task", description=f"one of {', '.join(SCOPES)}")
    key: str | None = Field(
        default=None,
        description="the scope value this budget is for; None means every value",
    )
    max_usd: _Dollars | None = Field(default=None, description=_USD)
    max_tokens: int | None = Field(
        default=None,
        ge=0,
        le=_MAX_EXACT,
        description="a non-negative whole number of tokens",
    )
    period: Period = Field(
        default="total",
        description=(
            "'total' (never resets), 'hour', 'day', 'week', 'month' (calendar "
            "windows in `timezone`) or 'rolling' (the last `window_s` seconds)"
        ),
    )
    window_s: float | None = Field(
        default=None,
        ge=1,
        le=366 * _DAY_S,
        description="seconds, up to a year, for period='rolling' only",
    )
    timezone: str = Field(
        default="UTC",
        description="an IANA time zone name, e.g. 'Europe/Paris', for the "
        "calendar periods (hour, day, week, month)",
    )
    warn_at: tuple[float, ...] = Field(
        default=_DEFAULT_WARN_AT,
        description="fractions of each limit, USD and tokens (0 < f < 1), that "
        "log a warning once each time the line's use crosses them; shared "
        "(non-task) budgets only",
    )

    @field_validator("max_usd")
    @classmethod
    def _whole_nanos(cls, value: Decimal | None) -> Decimal | None:
        if value is None:
            return None
        if value and value < _NANO_USD:
            raise ValueError(
                f"max_usd {value} is less than a nano-dollar, the smallest amount "
                "a ledger counts; use 0 to refuse every paid call"
            )
        if value != value.quantize(_NANO_USD, rounding=ROUND_DOWN):
            raise ValueError(
                f"max_usd {value} has digits past the ninth decimal place; a "
                "ledger counts whole nano-dollars, so round it to 9 places"
            )
        return value.copy_abs() if value.is_zero() else value

    @field_validator("key")
    @classmethod
    def _matchable_key(cls, value: str | None) -> str | None:
        # Attribution values are names (see name_problem): a key no name
        # can equal would limit nothing, and the budget never apply.
        if value is None:
            return None
        problem = name_problem(value)
        if problem is not None:
            raise ValueError(
                f"key {value!r} can never match an attribution value, which "
                f"{problem}: give the name exactly as tasks carry it"
                f"{_suggested_name(value)}, or None for every value"
            )
        return as_name(value)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if value.lower() in ("localtime", "local"):
            raise ValueError(
                f"time zone {value!r} depends on each host's clock settings, so "
                "workers could count one budget in different windows: name the "
                "zone, e.g. 'Europe/Paris'"
            )
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(_unknown_zone(value)) from exc
        return value

    @field_validator("warn_at")
    @classmethod
    def _fractions(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < f < 1 for f in value):
            raise ValueError("warn_at fractions must lie strictly between 0 and 1")
        return tuple(sorted(set(value)))

    @model_validator(mode="after")
    def _has_a_limit(self) -> Self:
        if self.max_usd is None and self.max_tokens is None:
            raise FieldsError(
                "a Budget needs max_usd, max_tokens or both",
                ("max_usd", "max_tokens"),
            )
        if (self.period == "rolling") != (self.window_s is not None):
            raise FieldsError(
                "period='rolling' needs window_s, and only it takes one",
                ("period", "window_s"),
                {"period": self.period, "window_s": self.window_s},
            )
        scope = {"scope": self.scope}
        if self.scope == "task" and self.period != "total":
            raise FieldsError(
                "a task budget lasts the task; use period='total', or another "
                "scope (e.g. scope='team') for a budget that resets",
                ("period",),
                {**scope, "period": self.period},
            )
        if self.scope == "task" and self.key is not None:
            raise FieldsError(
                "a task budget applies to every task; drop key",
                ("key",),
                {**scope, "key": self.key},
            )
        return self._settings_that_apply()

    def _settings_that_apply(self) -> Self:
        """Refuse a warn_at or timezone that this budget would never use."""
        if self.scope == "task" and self.warn_at not in ((), _DEFAULT_WARN_AT):
            raise FieldsError(
                "warn_at applies to shared budgets (scope 'team', 'user', ...): "
                "a task budget never warns, whatever its fractions; drop "
                "warn_at, or set it on a budget of another scope",
                ("warn_at",),
                {"scope": self.scope, "warn_at": self.warn_at},
            )
        if self.period in ("total", "rolling") and self.timezone != "UTC":
            raise FieldsError(
                "timezone applies to the calendar periods (hour, day, week, "
                f"month) only: a {self.period!r} budget never reads it; drop "
                "timezone, or use a calendar period such as period='day'",
                ("timezone",),
                {"period": self.period, "timezone": self.timezone},
            )
        return self


class Attribution(PolicyModel):
    """Who and what a task's spend is charged to."""

    team: str | None = Field(default=None, description="a team name")
    feature: str | None = Field(default=None, description="a product feature name")
    environment: str | None = Field(
        default=None, description="e.g. 'prod', 'staging', 'dev'"
    )
    user: str | None = Field(default=None, description="an end-user id")
    session: str | None = Field(default=None, description="a session or thread id")
    org: str | None = Field(default=None, description="an organisation name")
    tags: Mapping[str, str] = Field(
        default_factory=dict,
        description="free-form string tags: names and values non-empty, "
        "without control or invisible characters or spaces around them",
    )

    @field_validator(*ATTRIBUTION_FIELDS)
    @classmethod
    def _usable_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        problem = name_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return as_name(value)

    @field_validator("tags")
    @classmethod
    def _usable_tags(cls, tags: Mapping[str, str]) -> Mapping[str, str]:
        for name, value in tags.items():
            problem = tag_problem(name)
            if problem is not None:
                raise ValueError(f"tag name {name!r}: a tag name {problem}")
            problem = tag_problem(value)
            if problem is not None:
                raise ValueError(
                    f"tag {name!r} is {value!r}: a tag value {problem}; "
                    "change the value, or leave the tag out"
                )
        composed: dict[str, str] = {}
        for name, value in tags.items():
            if as_name(name) in composed:
                raise ValueError(
                    f"tag names {name!a} and {as_name(name)!a} are "
                    "one name, written in two Unicode forms (a letter and a "
                    "combining accent, or one accented letter): give the tag once"
                )
            composed[as_name(name)] = as_name(value)
        return composed

    def scope_values(self) -> dict[str, str]:
        """Return the set scopes as ``{scope: value}``."""
        return {f: v for f in ATTRIBUTION_FIELDS if (v := getattr(self, f)) is not None}

    @staticmethod
    def values_in(metadata: Mapping[str, Any]) -> dict[str, str]:
        """The attribution fields a metadata mapping sets (LangGraph, LiteLLM).

        A key that is absent or None sets nothing; text is taken as it is
        (composed, see :func:`as_name`) and a whole number is read as text,
        so ``42`` charges ``"42"``.

        Raises:
            PolicyError: a key holds an empty or blank value (read as unset,
                ``{"team": ""}`` would charge no team and skip the team's
                budgets without a word; ``Attribution(team="")`` refuses it
                too), or a value that is neither text nor a whole number (a
                list, a dict, a bool, a float), which would open a budget
                line of its own under its printed form.
        """
        found: dict[str, str] = {}
        for field in ATTRIBUTION_FIELDS:
            value = metadata.get(field)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise PolicyError(
                    f"metadata[{field!r}] is {value!r}, a {type(value).__name__}: "
                    f"give the {field} as text (or a whole-number id), or leave "
                    f"the key out (or None) for no {field}"
                )
            text = str(value)
            problem = name_problem(text)
            if problem is not None:
                fix = (
                    f"set it to a non-empty {field} name"
                    if not text.strip()
                    else f"a {field} name {problem}"
                )
                raise PolicyError(
                    f"metadata[{field!r}] is {text!r}: {fix}, or leave the key "
                    f"out (or None) for no {field}"
                )
            found[field] = as_name(text)
        return found


def as_name(value: str) -> str:
    """``value`` in Unicode's composed form (NFC), as names are kept.

    ``"café"`` typed with a combining accent (NFD, as some keyboards, macOS
    file names and copied text give it) looks like, and is, the same team as
    ``"café"`` with a precomposed ``é``: every name is kept composed so that
    both are charged to one budget line and reported as one.
    """
    return unicodedata.normalize("NFC", value)


def tag_problem(text: str) -> str | None:
    """Why ``text`` cannot be a tag's name or value; None when it can.

    The rules of :func:`name_problem` except ``#``, which is refused there
    because it separates a budget line's key from its window: no budget line
    is keyed on a tag, so ``{"ticket": "#123"}`` is kept.
    """
    return name_problem(text.replace("#", "_"))


def _suggested_name(value: str) -> str:
    """`` (e.g. 'name')``: ``value`` made a usable name, or "" when none is left."""
    kept = value
    while (hidden := hidden_character(kept)) is not None:
        kept = kept.replace(hidden, "")
    name = kept.replace("#", "").strip()
    return f" (e.g. {name!r})" if name else ""


def _unknown_zone(value: str) -> str:
    """Say a time zone is unknown, naming the zone meant when only case differs."""
    folded = value.casefold()
    matches = sorted(z for z in available_timezones() if z.casefold() == folded)
    if matches:
        return (
            f"unknown time zone {value!r}: zone names are case-sensitive; "
            f"did you mean {matches[0]!r}?"
        )
    return (
        f"unknown time zone {value!r}: give an IANA zone name such as 'UTC' or "
        "'Europe/Paris'"
    )


def name_problem(value: str) -> str | None:
    """Why ``value`` cannot name a team, user, ...; None when it can.

    A blank name would charge nobody; one with spaces around it, a control
    character or an invisible one (a byte-order mark, a zero-width space, a
    soft hyphen) would be a different tenant from the name it looks like, so
    a budget keyed on that name would skip it; ``#`` separates a budget
    line's key from its period window.
    """
    if not value.strip():
        return "must be a non-empty name"
    if value != value.strip():
        return "must not start or end with spaces (strip it first)"
    if "#" in value:
        return "must be a name without '#'"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        return "must not hold control characters such as newlines"
    hidden = hidden_character(value)
    if hidden is not None:
        return (
            f"must not hold invisible characters (here {_code_point(hidden)}): "
            "it would look like the name without it, yet count as a different "
            "one; remove it"
        )
    return None


_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
"""Controls, format characters (byte-order mark, zero-width space, soft
hyphen, bidi marks), lone surrogates, line and paragraph separators."""
_BLANK_LETTERS = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u2800\u3164\uffa0")
"""Characters that print as nothing although Unicode does not class them as
format characters: the combining grapheme joiner, the Hangul fillers, the
Khmer inherent vowels and the blank Braille pattern."""
_JOINERS = frozenset("\u200c\u200d")
"""Zero-width (non-)joiners: part of emoji sequences (👩‍💻) and of the
spelling of Persian, Indic and other scripts, between two such characters."""
_SHOWN_FORMATS = frozenset("\u0600\u0601\u0602\u0603\u0604\u0605\u06dd\u070f\u08e2")
"""Format characters that print a sign (the Arabic number signs and kin)."""
_BLACK_FLAG = "\U0001f3f4"
_TAGS = range(0xE0020, 0xE0080)
"""Tag characters: after a black flag, they spell a subdivision's flag."""


def hidden_character(value: str) -> str | None:
    """The first character of ``value`` that prints as nothing (or as a line
    break) on its own, so that the name would look like one without it;
    None when there is none.

    Joiners inside an emoji sequence or a word of a script that spells with
    them, tag characters of a flag and the Arabic number signs are part of
    what the name shows, and are kept.
    """
    for index, ch in enumerate(value):
        if ch in _BLANK_LETTERS:
            return ch
        if unicodedata.category(ch) not in _INVISIBLE_CATEGORIES:
            continue
        if ch in _SHOWN_FORMATS or _joins(value, index) or _tags_a_flag(value, index):
            continue
        return ch
    return None


def _joins(value: str, index: int) -> bool:
    """A joiner between two characters of an emoji or of a script other than
    ASCII; next to an ASCII letter, a space or an edge it only hides."""
    if value[index] not in _JOINERS or index == 0 or index == len(value) - 1:
        return False
    before, after = value[index - 1], value[index + 1]
    return not (before.isascii() or after.isascii() or before.isspace())


def _tags_a_flag(value: str, index: int) -> bool:
    """A tag character in a flag sequence (a black flag, then tags)."""
    if ord(value[index]) not in _TAGS:
        return False
    start = index
    while start > 0 and ord(value[start - 1]) in _TAGS:
        start -= 1
    return start > 0 and value[start - 1] == _BLACK_FLAG


def _code_point(ch: str) -> str:
    """``U+200B ZERO WIDTH SPACE``: a character named so that it can be found."""
    name = unicodedata.name(ch, "")
    return f"U+{ord(ch):04X}" + (f" {name}" if name else "")


class Fanout(PolicyModel):
    """Caps on parallelism: graph branches and model calls in flight.

    Past a cap a call (or branch) waits for a slot up to ``wait_timeout_s`` when
    ``on_cap="wait"``, or is refused at once with ``on_cap="refuse"``; either
    way a refusal raises :class:`governor.stores.SlotUnavailable`, so no work
    is dropped silently.
    """

    max_branches: int | None = Field(
        default=None,
        gt=0,
        description="a positive number of graph node runs in flight per task "
        "(the width of a Send fan-out)",
    )
    max_inflight_calls: int | None = Field(
        default=None,
        gt=0,
        description="a positive number of model calls in flight per task, its "
        "sub-tasks' calls included",
    )
    scope_caps: Mapping[Scope, int] = Field(
        default_factory=dict,
        description="a mapping of scope (any but 'task') to the model calls in "
        "flight allowed for each value of it, e.g. {'team': 20}; held across "
        "processes when the ledger is Redis",
    )
    on_cap: Literal["wait", "refuse"] = Field(
        default="wait", description="'wait' (queue, with wait_timeout_s) or 'refuse'"
    )
    wait_timeout_s: float = Field(
        default=60.0,
        gt=0,
        le=_DAY_S,
        description="seconds, up to a day, a call may wait for a free slot",
    )

    @field_validator("scope_caps")
    @classmethod
    def _positive_caps(cls, value: Mapping[Scope, int]) -> Mapping[Scope, int]:
        bad = {k: v for k, v in value.items() if v < 1}
        if bad:
            raise ValueError(
                "each scope cap must be at least 1 (leave a scope out for no cap)"
            )
        return value

    @model_validator(mode="after")
    def _no_task_cap(self) -> Self:
        # A scope cap is keyed on a task's attribution value (its team, its
        # session); a task has none, so a 'task' cap would never be taken.
        if "task" in self.scope_caps:
            raise FieldsError(
                "a scope cap is shared by the tasks that carry one value of an "
                "attribution scope (a team, a session, ...); 'task' is not such "
                "a scope, so a 'task' cap would never apply. To cap the calls "
                "one task (with its sub-tasks) has in flight in this process, "
                "set max_inflight_calls instead, e.g. Fanout(max_inflight_calls="
                f"{self.scope_caps['task']})",
                ("scope_caps",),
                {"scope_caps": self.scope_caps},
            )
        return self


class Policy(PolicyModel):
    """Everything one governor enforces.

    Example:
        >>> Policy(
        ...     budgets=[Budget(max_usd="0.05")],
        ...     attribution=Attribution(team="search"),
        ... )
    """

    name: str = Field(
        default="default",
        description="a label for reports and spans: non-empty, without control "
        "or invisible characters",
    )
    budgets: tuple[Budget, ...] = Field(
        default=(),
        description="a list of Budget, at most one per (scope, key, period)",
    )
    pricing: Pricing = Field(default_factory=Pricing, description="a Pricing")
    attribution: Attribution = Field(
        default_factory=Attribution, description="an Attribution"
    )
    loops: Loops = Field(default_factory=Loops, description="a Loops")
    fanout: Fanout = Field(default_factory=Fanout, description="a Fanout")
    cascade: Cascade | None = Field(
        default=None, description="a Cascade of model tiers, or None for no cascade"
    )
    cache: Cache | None = Field(
        default=None, description="a Cache, or None to serve nothing from cache"
    )
    failure_mode: Literal["closed", "open"] = Field(
        default="closed",
        description=(
            "'closed' refuses calls when the budget store is down; 'open' admits "
            "them under a local shadow budget"
        ),
    )
    default_max_output_tokens: int = Field(
        default=4096,
        gt=0,
        le=_MAX_EXACT,
        description="max_tokens sent (and reserved for) when a request sets none",
    )
    max_call_s: float = Field(
        default=120.0,
        gt=0,
        le=_DAY_S,
        description="seconds, up to a day, a call is assumed to run at most; "
        "models priced "
        "per second (Price.usd_per_second) reserve this much time",
    )
    hold_ttl_s: float = Field(
        default=900.0,
        ge=1,
        le=7 * _DAY_S,
        description="seconds, from 1 up to a week, a reservation or fan-out slot "
        "lives without renewal; open calls renew theirs every third of it, so "
        "a shorter lease would lapse between renewals (one store round trip "
        "can take longer) and free the room of calls still running",
    )

    @field_validator("name")
    @classmethod
    def _printable_name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(
                "a policy name labels its spans and reports: give a non-empty "
                "name, e.g. 'search-agent'"
            )
        hidden = hidden_character(value)
        if hidden is not None:
            raise ValueError(
                "a policy name must not hold control or invisible characters "
                f"(here {_code_point(hidden)}): it labels spans and report "
                "lines, which such a character would break or disguise; "
                "remove it"
            )
        return value

    @field_validator("budgets", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        if isinstance(value, Budget):
            return (value,)
        return tuple(value) if isinstance(value, list) else value

    @model_validator(mode="after")
    def _one_budget_per_scope(self) -> Self:
        seen: set[tuple[Any, ...]] = set()
        for budget in self.budgets:
            ident = _budget_ident(budget)
            if ident in seen:
                raise FieldsError(
                    f"two budgets for scope {budget.scope!r} key {budget.key!r} "
                    f"period {budget.period!r}; put max_usd and max_tokens on "
                    "one Budget (budgets of other periods, e.g. a day and a "
                    "month, may sit side by side)",
                    ("budgets",),
                )
            seen.add(ident)
        return self

    def merged(self, override: Policy) -> Policy:
        """Lay ``override`` over this policy and return the result.

        Budgets merge by ``(scope, key, period)`` (and ``window_s`` for
        rolling ones): an override's budget is merged field by field into the
        base's budget of the same scope, key and period. The limits it sets
        (``max_usd``, ``max_tokens``) replace the base's, and a limit it
        leaves unset (or sets to None) keeps the base's, so a merge never
        drops a limit; the other fields it set explicitly (``warn_at``,
        ``timezone``) replace the base's, and those it left out are the
        base's. The base's other budgets are kept, the override's new ones
        added. Every other part merges field by field, and only fields the
        override set count (a cache's ``partition_by`` keeps the scopes of
        both, see :meth:`Cache.merged`).

        To lift a limit, build the policy anew rather than merge, e.g.
        ``policy.model_copy(update={"budgets": [...]})``.
        """
        if not isinstance(override, Policy):
            raise PolicyError(f"cannot merge {type(override).__name__} into Policy")
        result = super().merged(override)
        if "budgets" not in override.model_fields_set:
            return result
        by_ident = {_budget_ident(b): b for b in self.budgets}
        for budget in override.budgets:
            ident = _budget_ident(budget)
            base = by_ident.get(ident)
            by_ident[ident] = budget if base is None else _merged_budget(base, budget)
        return result.model_copy(update={"budgets": tuple(by_ident.values())})


def _budget_ident(budget: Budget) -> tuple[Any, ...]:
    """What makes two budgets the same: they would share one ledger line."""
    return (budget.scope, budget.key, budget.period, budget.window_s)


_LIMITS = ("max_usd", "max_tokens")
"""A budget's limits: one left unset (None) limits nothing."""


def with_limits_from(budget: Budget, base: Budget) -> Budget:
    """``budget`` with each limit it leaves unset taken from ``base``: how a
    keyed budget lays over its scope's budget, limit by limit."""
    inherited = {
        name: getattr(base, name)
        for name in _LIMITS
        if getattr(budget, name) is None and getattr(base, name) is not None
    }
    return budget.model_copy(update=inherited) if inherited else budget


def _merged_budget(base: Budget, override: Budget) -> Budget:
    """``override`` laid over ``base`` (a budget of the same ident) field by
    field: the fields the override set explicitly win, save a limit it sets
    to None, which keeps the base's (a merge never drops a limit)."""
    kept = {
        name: getattr(override, name)
        for name in override.model_fields_set
        if not (name in _LIMITS and getattr(override, name) is None)
    }
    return base.model_copy(update=kept) if kept else base
