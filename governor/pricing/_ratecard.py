"""Rate cards: the price of each model, and the exact cost of a call.

Prices come from the policy's ``Pricing.overrides`` first, then LiteLLM's
price map, then ``Pricing.default``. A model none of them prices is refused
with :class:`~governor._errors.PriceUnknown`; so is a map entry with neither
an input nor an output price (LiteLLM keeps such entries for retired or
placeholder ids, and its own cost functions then report 0.0).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from governor._errors import ConfigError, PriceUnknown
from governor._forks import start_over_in_children
from governor._money import NANOS_PER_USD, as_decimal, usd_to_nanos
from governor.pricing._pricemap import (
    REMOTE_PRICE_MAP_URL,
    PriceMap,
    bundled_price_map,
    remote_price_map,
)
from governor.pricing._types import Cost, Usage

if TYPE_CHECKING:
    from governor.policies import Price, Pricing

__all__ = ["Rate", "RateCard", "RateTier"]

_ZERO = Decimal(0)
# Map keys such as ``input_cost_per_token_above_200k_tokens``; suffixed
# variants (``_priority``, ``_batches``, ``_flex``) are other service tiers.
_TIER_KEY = re.compile(r"^input_cost_per_token_above_(\d+)(k?)_tokens$")


@dataclass(frozen=True, slots=True)
class RateTier:
    """Per-token prices that replace the base ones above a prompt size.

    A call whose prompt has more than ``above_input_tokens`` tokens is billed
    entirely at this tier, the way providers bill long-context calls.
    """

    above_input_tokens: int
    input_per_token: Decimal
    output_per_token: Decimal
    cache_read_per_token: Decimal
    cache_write_per_token: Decimal
    reasoning_per_token: Decimal


@dataclass(frozen=True, slots=True)
class Rate:
    """The resolved price of one model, per token in US dollars.

    Cache prices fall back to the input price and the reasoning price to the
    output price when the source gives none, so every field is a usable price.

    Attributes:
        model: the key that priced it (a map key, an override key, or the
            requested name when the default price applied).
        usd_per_second: a price per second of call wall time, for self-hosted
            models; None when the model is priced by tokens only.
        tiers: long-context tiers in ascending ``above_input_tokens``.
        source: ``"price_map"``, ``"override"`` or ``"default"``.
        provider: LiteLLM's provider name from the map, e.g. ``"openai"``.
    """

    model: str
    input_per_token: Decimal
    output_per_token: Decimal
    cache_read_per_token: Decimal
    cache_write_per_token: Decimal
    reasoning_per_token: Decimal
    usd_per_second: Decimal | None = None
    tiers: tuple[RateTier, ...] = ()
    max_output_tokens: int | None = None
    max_input_tokens: int | None = None
    source: str = "price_map"
    provider: str | None = None
    _units: _Units | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Worked out once per rate: pricing a call is then integer arithmetic.
        object.__setattr__(self, "_units", _units_of(self))

    def tier_for(self, prompt_tokens: int) -> Rate | RateTier:
        """Return the prices that bill a call with this many prompt tokens."""
        chosen: Rate | RateTier = self
        for tier in self.tiers:
            if prompt_tokens <= tier.above_input_tokens:
                break
            chosen = tier
        return chosen

    def worst_case_usd(
        self, *, prompt_tokens: int, max_output_tokens: int, max_duration_s: float = 0.0
    ) -> Decimal:
        """Return the most a call within these bounds can cost.

        Prompt tokens are priced at the dearest of the input and cache prices
        (a cache write can cost more than plain input) and output tokens at
        the dearer of the output and reasoning prices, over every tier the
        prompt could land in.
        """
        per_prompt, per_output = _ZERO, _ZERO
        for prices in self._tiers_up_to(prompt_tokens):
            per_prompt = max(
                per_prompt,
                prices.input_per_token,
                prices.cache_read_per_token,
                prices.cache_write_per_token,
            )
            per_output = max(
                per_output, prices.output_per_token, prices.reasoning_per_token
            )
        usd = prompt_tokens * per_prompt + max_output_tokens * per_output
        if self.usd_per_second is not None and max_duration_s:
            usd += _seconds(max_duration_s) * self.usd_per_second
        return usd

    def worst_case_nanos(
        self, *, prompt_tokens: int, max_output_tokens: int, max_duration_s: float = 0.0
    ) -> int:
        """:meth:`worst_case_usd` in nano-dollars, rounded up (never under)."""
        units = self._units
        if units is None or (self.usd_per_second is not None and max_duration_s):
            return usd_to_nanos(
                self.worst_case_usd(
                    prompt_tokens=prompt_tokens,
                    max_output_tokens=max_output_tokens,
                    max_duration_s=max_duration_s,
                )
            )
        per_prompt, per_output = units.worst_prices(prompt_tokens)
        return units.nanos(prompt_tokens * per_prompt + max_output_tokens * per_output)

    def _tiers_up_to(self, prompt_tokens: int) -> Iterator[_Prices]:
        yield self
        for tier in self.tiers:
            if prompt_tokens <= tier.above_input_tokens:
                return
            yield tier

    def cost(self, usage: Usage, *, duration_s: float | None = None) -> Cost:
        """Return the exact cost of a call with this usage at this rate.

        ``Cost.source`` is the rate's source and ``Cost.estimated`` says
        whether the usage was counted locally; the two are kept apart so that
        an estimated call priced from the map still reads ``"price_map"``.
        ``Cost.breakdown`` holds the parts: input (uncached prompt), cache_read,
        cache_write, output (completion less reasoning), reasoning, duration.

        Args:
            usage: the call's usage, as :func:`usage_from_response` reads it.
            duration_s: the call's wall time; only per-second rates use it.

        Raises:
            PriceUnknown: the call used tokens but a price-map rate gives it a
                total of zero. Overrides and the default may price a model at
                zero on purpose (a free self-hosted model), and are trusted.
            ConfigError: the usage's parts exceed its wholes.
        """
        uncached, read, write, visible, reasoning = _parts(usage)
        prices = self.tier_for(usage.prompt_tokens) if self.tiers else self
        seconds = _ZERO
        if self.usd_per_second is not None and duration_s:
            seconds = _seconds(duration_s) * self.usd_per_second
        breakdown = {
            "input": uncached * prices.input_per_token,
            "cache_read": read * prices.cache_read_per_token,
            "cache_write": write * prices.cache_write_per_token,
            "output": visible * prices.output_per_token,
            "reasoning": reasoning * prices.reasoning_per_token,
            "duration": seconds,
        }
        usd = sum(breakdown.values(), _ZERO)
        if usd == 0 and usage.total_tokens and self.source == "price_map":
            self._zero_priced(usage)
        return Cost(
            usd=usd,
            model=self.model,
            source=self.source,
            estimated=usage.estimated,
            breakdown=breakdown,
        )

    def cost_nanos(self, usage: Usage, *, duration_s: float | None = None) -> int:
        """:meth:`cost` in nano-dollars, rounded up, without building a Cost.

        The same figure as ``usd_to_nanos(rate.cost(usage).usd)``, worked
        out on whole numbers; the same errors.
        """
        units = self._units
        if units is None or (self.usd_per_second is not None and duration_s):
            return usd_to_nanos(self.cost(usage, duration_s=duration_s).usd)
        uncached, read, write, visible, reasoning = _parts(usage)
        prices = units.tier_for(usage.prompt_tokens) if units.tiers else units.base
        total = (
            uncached * prices.input
            + read * prices.cache_read
            + write * prices.cache_write
            + visible * prices.output
            + reasoning * prices.reasoning
        )
        if total == 0 and usage.total_tokens and self.source == "price_map":
            self._zero_priced(usage)
        return units.nanos(total)

    def _zero_priced(self, usage: Usage) -> NoReturn:
        raise PriceUnknown(
            self.model,
            "its price-map prices come to zero for a call that used "
            f"{usage.total_tokens} tokens",
        )


def _parts(usage: Usage) -> tuple[int, int, int, int, int]:
    """Uncached input, cache reads, cache writes, visible output, reasoning.

    Raises:
        ConfigError: the usage's parts exceed its wholes.
    """
    read, write = usage.cache_read_tokens, usage.cache_write_tokens
    reasoning = usage.reasoning_tokens
    uncached = usage.prompt_tokens - read - write
    visible = usage.completion_tokens - reasoning
    if min(uncached, visible, read, write, reasoning) < 0:
        _refuse(usage)
    return uncached, read, write, visible, reasoning


@dataclass(frozen=True, slots=True)
class _TierUnits:
    """One tier's per-token prices in whole units of its rate's price unit."""

    above_input_tokens: int
    input: int
    output: int
    cache_read: int
    cache_write: int
    reasoning: int
    prompt_max: int
    output_max: int


@dataclass(frozen=True, slots=True)
class _Units:
    """A rate's prices as whole numbers of one unit (10**-scale dollars, the
    finest any of its prices needs), so a call is priced exactly without
    Decimal arithmetic."""

    base: _TierUnits
    tiers: tuple[_TierUnits, ...]
    # Units to nano-dollars: times ``multiplier``, or divided (rounding up)
    # by ``divisor``, whichever is not 1.
    multiplier: int
    divisor: int

    def tier_for(self, prompt_tokens: int) -> _TierUnits:
        """The prices billing a prompt this long (see :meth:`Rate.tier_for`)."""
        chosen = self.base
        for tier in self.tiers:
            if prompt_tokens <= tier.above_input_tokens:
                break
            chosen = tier
        return chosen

    def worst_prices(self, prompt_tokens: int) -> tuple[int, int]:
        """The dearest prompt and output prices over every tier a prompt this
        long could land in (see :meth:`Rate.worst_case_usd`)."""
        per_prompt, per_output = self.base.prompt_max, self.base.output_max
        for tier in self.tiers:
            if prompt_tokens <= tier.above_input_tokens:
                break
            per_prompt = max(per_prompt, tier.prompt_max)
            per_output = max(per_output, tier.output_max)
        return per_prompt, per_output

    def nanos(self, units: int) -> int:
        """``units`` of these prices' unit in nano-dollars, rounded up."""
        if self.divisor == 1:
            return units * self.multiplier
        return -(-units // self.divisor)


_NANO_DIGITS = len(str(NANOS_PER_USD)) - 1
_PRICE_NAMES = (
    "input_per_token",
    "output_per_token",
    "cache_read_per_token",
    "cache_write_per_token",
    "reasoning_per_token",
)


def _units_of(rate: Rate) -> _Units | None:
    """A rate's prices as whole units; None when one is not a finite number."""
    prices: list[Rate | RateTier] = [rate, *rate.tiers]
    values = [getattr(p, name) for p in prices for name in _PRICE_NAMES]
    if not all(isinstance(v, Decimal) and v.is_finite() for v in values):
        return None
    scale = max(0, *(-_exponent(v) for v in values))
    base, *tiers = [_tier_units(p, scale) for p in prices]
    shift = scale - _NANO_DIGITS
    return _Units(
        base,
        tuple(tiers),
        multiplier=_power_of_ten(-shift),
        divisor=_power_of_ten(shift),
    )


def _power_of_ten(exponent: int) -> int:
    """10**exponent for a positive exponent, else 1."""
    return int(10 ** max(exponent, 0))


def _exponent(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    return exponent if isinstance(exponent, int) else 0


def _tier_units(prices: Rate | RateTier, scale: int) -> _TierUnits:
    input_, output, read, write, reasoning = (
        _whole(getattr(prices, name), scale) for name in _PRICE_NAMES
    )
    above = prices.above_input_tokens if isinstance(prices, RateTier) else -1
    return _TierUnits(
        above_input_tokens=above,
        input=input_,
        output=output,
        cache_read=read,
        cache_write=write,
        reasoning=reasoning,
        # The worst case never prices a token below zero (see worst_case_usd).
        prompt_max=max(0, input_, read, write),
        output_max=max(0, output, reasoning),
    )


def _whole(value: Decimal, scale: int) -> int:
    """``value`` in units of 10**-scale, exactly (``scale`` covers its digits)."""
    sign, digits, _ = value.as_tuple()
    coefficient = int("".join(map(str, digits)))
    units = coefficient * _power_of_ten(_exponent(value) + scale)
    return -units if sign else units


class _Prices(Protocol):
    @property
    def input_per_token(self) -> Decimal: ...
    @property
    def output_per_token(self) -> Decimal: ...
    @property
    def cache_read_per_token(self) -> Decimal: ...
    @property
    def cache_write_per_token(self) -> Decimal: ...
    @property
    def reasoning_per_token(self) -> Decimal: ...


def _refuse(usage: Usage) -> NoReturn:
    raise ConfigError(
        f"inconsistent usage {usage}: token counts must be >= 0, cache tokens "
        "part of prompt_tokens and reasoning tokens part of completion_tokens; "
        "build it with usage_from_response()"
    )


def _seconds(value: float) -> Decimal:
    return as_decimal(value, field="duration_s")


class RateCard:
    """Prices models for one policy, and costs their calls exactly.

    Resolution, first match wins: ``Pricing.overrides`` under the exact name
    or with provider prefixes stripped (``offline/gpt-4o`` -> ``gpt-4o``); then
    the price map under the exact name, the name in any letter case, then with
    prefixes stripped one at a time; then ``Pricing.default``. The first map
    entry found decides: an entry without token prices makes the model
    unknown rather than letting a shorter name price it.

    Rates are resolved once per model name and kept, so :meth:`rate` is a
    dictionary lookup after the first call. Safe to share between threads.

    Args:
        pricing: the policy's Pricing; None means the price map alone.
        price_map: a map to use instead of LiteLLM's (tests, pinned prices).
        price_map_url: where ``Pricing(remote_price_map=True)`` fetches from.
    """

    def __init__(
        self,
        pricing: Pricing | None = None,
        *,
        price_map: PriceMap | None = None,
        price_map_url: str = REMOTE_PRICE_MAP_URL,
    ) -> None:
        self._overrides: Mapping[str, Price] = pricing.overrides if pricing else {}
        self._default: Price | None = pricing.default if pricing else None
        self._remote = bool(pricing and pricing.remote_price_map)
        self._url = price_map_url
        self._map = price_map
        self._folded: dict[str, str] | None = None
        self._rates: dict[str, Rate | str] = {}
        self._lock = threading.Lock()
        start_over_in_children(self)

    def _forget_parent(self) -> None:
        """In a forked child: a lock of its own (a fetch may hold the parent's)."""
        self._lock = threading.Lock()

    def rate(self, model: str) -> Rate:
        """Return the rate for ``model``.

        Raises:
            PriceUnknown: nothing prices the model and the policy sets no
                default; the message says how to price it.
        """
        found = self._rates.get(model)
        if found is None:
            found = self._resolve(model)
            self._rates[model] = found
        if isinstance(found, str):
            raise PriceUnknown(model, found)
        return found

    def worst_case_usd(
        self,
        model: str,
        *,
        prompt_tokens: int,
        max_output_tokens: int,
        max_duration_s: float = 0.0,
    ) -> Decimal:
        """Return the most a call to ``model`` within these bounds can cost.

        See :meth:`Rate.worst_case_usd`.
        """
        return self.rate(model).worst_case_usd(
            prompt_tokens=prompt_tokens,
            max_output_tokens=max_output_tokens,
            max_duration_s=max_duration_s,
        )

    def cost(
        self, model: str, usage: Usage, *, duration_s: float | None = None
    ) -> Cost:
        """Return the exact cost of a call to ``model``; see :meth:`Rate.cost`."""
        return self.rate(model).cost(usage, duration_s=duration_s)

    def _resolve(self, model: str) -> Rate | str:
        for name in _names(model):
            price = self._overrides.get(name)
            if price is not None:
                info = self._lookup(model)
                return _rate_from_price(name, price, "override", info)
        info = self._lookup(model)
        if info is not None:
            built = _rate_from_entry(*info)
            if isinstance(built, Rate):
                return built
            reason = built
        else:
            reason = "not in LiteLLM's price map, and no override prices it"
        if self._default is not None:
            return _rate_from_price(model, self._default, "default", info)
        return reason

    def _lookup(self, model: str) -> tuple[str, Mapping[str, Any]] | None:
        entries = self._entries()
        folded = self._folded_keys(entries)
        for name in _names(model):
            key = name if name in entries else folded.get(name.lower())
            if key is not None:
                return key, entries[key]
        return None

    def _entries(self) -> PriceMap:
        if self._map is None:
            with self._lock:
                if self._map is None:
                    self._map = (
                        remote_price_map(self._url)
                        if self._remote
                        else bundled_price_map()
                    )
        return self._map

    def _folded_keys(self, entries: PriceMap) -> dict[str, str]:
        if self._folded is None:
            folded: dict[str, str] = {}
            for key in entries:
                folded.setdefault(key.lower(), key)
            self._folded = folded
        return self._folded


def _names(model: str) -> Iterator[str]:
    """Yield ``model``, then it with one more ``provider/`` prefix removed."""
    name = model
    while True:
        yield name
        head, slash, rest = name.partition("/")
        if not slash or not rest or not head:
            return
        name = rest


def _rate_from_entry(key: str, entry: Mapping[str, Any]) -> Rate | str:
    """Build a Rate from a price-map entry, or say why the entry prices nothing."""
    base = _base_prices(entry)
    if not base.get("input_cost_per_token") and not base.get("output_cost_per_token"):
        return f"the price map lists it as {key!r} with no token prices"
    input_price = _dec(base.get("input_cost_per_token"))
    output_price = _dec(base.get("output_cost_per_token"))
    cache_read = _opt_dec(base.get("cache_read_input_token_cost"))
    cache_write = _opt_dec(base.get("cache_creation_input_token_cost"))
    reasoning = _opt_dec(base.get("output_cost_per_reasoning_token"))
    tiers = tuple(
        _tier(above, prices, cache_read, cache_write, reasoning)
        for above, prices in _map_tiers(entry)
    )
    return Rate(
        model=key,
        input_per_token=input_price,
        output_per_token=output_price,
        cache_read_per_token=input_price if cache_read is None else cache_read,
        cache_write_per_token=input_price if cache_write is None else cache_write,
        reasoning_per_token=output_price if reasoning is None else reasoning,
        tiers=tiers,
        max_output_tokens=_opt_int(entry.get("max_output_tokens")),
        max_input_tokens=_opt_int(entry.get("max_input_tokens")),
        source="price_map",
        provider=_opt_str(entry.get("litellm_provider")),
    )


def _base_prices(entry: Mapping[str, Any]) -> Mapping[str, Any]:
    # Entries priced only by a ``tiered_pricing`` table (Dashscope and kin)
    # take their base prices from the table's first range.
    if "input_cost_per_token" in entry:
        return entry
    table = _tier_table(entry)
    return table[0][1] if table else entry


def _map_tiers(entry: Mapping[str, Any]) -> list[tuple[int, Mapping[str, Any]]]:
    """Return ``(above_input_tokens, prices)`` for each tier, ascending."""
    if "input_cost_per_token" not in entry:
        return _tier_table(entry)[1:]
    tiers = []
    for key in entry:
        match = _TIER_KEY.match(key)
        if match is None:
            continue
        above = int(match.group(1)) * (1000 if match.group(2) else 1)
        suffix = key.removeprefix("input_cost_per_token")
        tiers.append((above, _suffixed(entry, suffix)))
    return sorted(tiers, key=lambda pair: pair[0])


def _suffixed(entry: Mapping[str, Any], suffix: str) -> dict[str, Any]:
    names = (
        "input_cost_per_token",
        "output_cost_per_token",
        "cache_read_input_token_cost",
        "cache_creation_input_token_cost",
    )
    return {name: entry[name + suffix] for name in names if name + suffix in entry}


def _tier_table(entry: Mapping[str, Any]) -> list[tuple[int, Mapping[str, Any]]]:
    table = entry.get("tiered_pricing")
    if not isinstance(table, list):
        return []
    rows = []
    for row in table:
        bounds = row.get("range") if isinstance(row, Mapping) else None
        start = _opt_dec(bounds[0]) if isinstance(bounds, list) and bounds else None
        if start is not None and "input_cost_per_token" in row:
            rows.append((int(start), row))
    return sorted(rows, key=lambda pair: pair[0])


def _tier(
    above: int,
    prices: Mapping[str, Any],
    cache_read: Decimal | None,
    cache_write: Decimal | None,
    reasoning: Decimal | None,
) -> RateTier:
    """Build a tier; prices it lacks come from the base's explicit ones, then input."""
    input_price = _dec(prices.get("input_cost_per_token"))
    output_price = _dec(prices.get("output_cost_per_token"))
    tier_read = _opt_dec(prices.get("cache_read_input_token_cost"))
    tier_write = _opt_dec(prices.get("cache_creation_input_token_cost"))
    tier_reasoning = _opt_dec(prices.get("output_cost_per_reasoning_token"))
    return RateTier(
        above_input_tokens=above,
        input_per_token=input_price,
        output_per_token=output_price,
        cache_read_per_token=_first(tier_read, cache_read, input_price),
        cache_write_per_token=_first(tier_write, cache_write, input_price),
        reasoning_per_token=_first(tier_reasoning, reasoning, output_price),
    )


def _rate_from_price(
    key: str,
    price: Price,
    source: str,
    info: tuple[str, Mapping[str, Any]] | None,
) -> Rate:
    """Build a Rate from an override or default Price (USD per million tokens)."""
    entry: Mapping[str, Any] = info[1] if info else {}
    input_price = _per_token(price.input_usd_per_mtok)
    output_price = _per_token(price.output_usd_per_mtok)
    cache_read = _opt_per_token(price.cache_read_usd_per_mtok)
    cache_write = _opt_per_token(price.cache_write_usd_per_mtok)
    reasoning = _opt_per_token(price.reasoning_usd_per_mtok)
    tiers = tuple(
        _tier(
            tier.above_input_tokens,
            {
                "input_cost_per_token": _per_token(tier.input_usd_per_mtok),
                "output_cost_per_token": _per_token(tier.output_usd_per_mtok),
                "cache_read_input_token_cost": _opt_per_token(
                    tier.cache_read_usd_per_mtok
                ),
                "cache_creation_input_token_cost": _opt_per_token(
                    tier.cache_write_usd_per_mtok
                ),
            },
            cache_read,
            cache_write,
            reasoning,
        )
        for tier in sorted(price.tiers, key=lambda t: t.above_input_tokens)
    )
    return Rate(
        model=key,
        input_per_token=input_price,
        output_per_token=output_price,
        cache_read_per_token=_first(cache_read, input_price),
        cache_write_per_token=_first(cache_write, input_price),
        reasoning_per_token=_first(reasoning, output_price),
        usd_per_second=price.usd_per_second,
        tiers=tiers,
        max_output_tokens=price.max_output_tokens
        or _opt_int(entry.get("max_output_tokens")),
        max_input_tokens=price.max_input_tokens
        or _opt_int(entry.get("max_input_tokens")),
        source=source,
        provider=_opt_str(entry.get("litellm_provider")),
    )


def _first(*prices: Decimal | None) -> Decimal:
    for price in prices:
        if price is not None:
            return price
    return _ZERO


def _per_token(usd_per_mtok: Decimal) -> Decimal:
    return usd_per_mtok.scaleb(-6)


def _opt_per_token(usd_per_mtok: Decimal | None) -> Decimal | None:
    return None if usd_per_mtok is None else usd_per_mtok.scaleb(-6)


def _dec(value: Any) -> Decimal:
    found = _opt_dec(value)
    return _ZERO if found is None else found


def _opt_dec(value: Any) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return as_decimal(value, field="price")
    except ArithmeticError:  # a map string that is not a number
        return None


def _opt_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, Decimal) and value > 0 and value == value.to_integral():
        return int(value)
    return None


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
