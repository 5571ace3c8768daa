"""Rate cards: the price of each model, and the exact cost of a call.

Prices come from the policy's ``Pricing.overrides`` first, then prices a
LiteLLM call sets for itself (by default none below the map's), then
LiteLLM's price map (its bundled file, then ``litellm.model_cost`` at run
time for models that file lacks), then ``Pricing.default``. A model none of
them prices is refused with :class:`~governor._errors.PriceUnknown`; so is
a map entry with neither an input nor an output price (LiteLLM keeps such
entries for retired or placeholder ids, and its own cost functions then
report 0.0).
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Hashable, Iterator, Mapping
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

__all__ = [
    "CALL_PRICE_NAMES",
    "CallPrices",
    "Rate",
    "RateCard",
    "RateTier",
    "call_price_fields",
    "is_call_price",
]

logger = logging.getLogger(__name__)

_ZERO = Decimal(0)
# Map keys such as ``input_cost_per_token_above_200k_tokens``; suffixed
# variants (``_priority``, ``_batches``, ``_flex``) are other service tiers.
_TIER_KEY = re.compile(r"^input_cost_per_token_above_(\d+)(k?)_tokens$")


@dataclass(frozen=True, slots=True)
class RateTier:
    """Per-token prices that replace the base ones above a prompt size.

    A call whose prompt has more than ``above_input_tokens`` tokens is billed
    entirely at this tier, the way providers bill long-context calls. Audio
    prices of None bill audio tokens at the tier's input, output and cache
    read prices.
    """

    above_input_tokens: int
    input_per_token: Decimal
    output_per_token: Decimal
    cache_read_per_token: Decimal
    cache_write_per_token: Decimal
    reasoning_per_token: Decimal
    audio_input_per_token: Decimal | None = None
    audio_output_per_token: Decimal | None = None
    audio_cache_read_per_token: Decimal | None = None


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
        source: ``"price_map"``, ``"override"`` (a policy override, or prices
            set on the call) or ``"default"``.
        provider: LiteLLM's provider name from the map, e.g. ``"openai"``.
        audio_input_per_token: the price of an audio prompt token (the
            ``audio_input_tokens`` of a usage); None bills it at the input
            price.
        audio_output_per_token: the price of an audio output token; None bills
            it at the output price.
        audio_cache_read_per_token: the price of an audio token read from the
            prompt cache; None bills it at the cache read price.
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
    audio_input_per_token: Decimal | None = None
    audio_output_per_token: Decimal | None = None
    audio_cache_read_per_token: Decimal | None = None
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
        the dearest of the output, reasoning and audio output prices, over
        every tier the prompt could land in.

        Uncached audio prompt tokens are bounded by the prompt's size rather
        than their price: the engine counts an audio part by its base64
        bytes, some forty times or more the tokens a provider bills for it
        (25 to 32 a second), which covers the dearer audio price; text
        prompts to a model with audio prices then hold no more than before.
        """
        per_prompt, per_output = _ZERO, _ZERO
        for prices in self._tiers_up_to(prompt_tokens):
            per_prompt = max(
                per_prompt,
                prices.input_per_token,
                prices.cache_read_per_token,
                prices.cache_write_per_token,
                _audio_cache_read(prices),
            )
            per_output = max(
                per_output,
                prices.output_per_token,
                prices.reasoning_per_token,
                _audio_output(prices),
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
        cache_write, output (completion less reasoning), reasoning, duration,
        and for a call that used audio tokens audio_input, audio_output and
        audio_cache_read (then left out of input, output and cache_read).

        Args:
            usage: the call's usage, as :func:`usage_from_response` reads it.
            duration_s: the call's wall time; only per-second rates use it.

        Raises:
            PriceUnknown: the call used tokens but a price-map rate gives it a
                total of zero. Overrides and the default may price a model at
                zero on purpose (a free self-hosted model), and are trusted.
            ConfigError: the usage's parts exceed its wholes.
        """
        uncached, read, write, visible, reasoning, audio = _parts(usage)
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
        if audio is not None:
            audio_in, audio_out, audio_read = audio
            breakdown["audio_input"] = audio_in * _audio_input(prices)
            breakdown["audio_output"] = audio_out * _audio_output(prices)
            breakdown["audio_cache_read"] = audio_read * _audio_cache_read(prices)
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
        uncached, read, write, visible, reasoning, audio = _parts(usage)
        prices = units.tier_for(usage.prompt_tokens) if units.tiers else units.base
        total = (
            uncached * prices.input
            + read * prices.cache_read
            + write * prices.cache_write
            + visible * prices.output
            + reasoning * prices.reasoning
        )
        if audio is not None:
            audio_in, audio_out, audio_read = audio
            total += (
                audio_in * prices.audio_input
                + audio_out * prices.audio_output
                + audio_read * prices.audio_cache_read
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


def _parts(
    usage: Usage,
) -> tuple[int, int, int, int, int, tuple[int, int, int] | None]:
    """Uncached text input, text cache reads, cache writes, visible text
    output, reasoning, and the audio parts (input, output, cache reads), None
    for a call without audio.

    Raises:
        ConfigError: the usage's parts exceed its wholes.
    """
    read, write = usage.cache_read_tokens, usage.cache_write_tokens
    reasoning = usage.reasoning_tokens
    uncached = usage.prompt_tokens - read - write
    visible = usage.completion_tokens - reasoning
    audio = None
    audio_in, audio_out = usage.audio_input_tokens, usage.audio_output_tokens
    audio_read = usage.audio_cache_read_tokens
    if audio_in or audio_out or audio_read:
        uncached -= audio_in
        visible -= audio_out
        read -= audio_read
        audio = (audio_in, audio_out, audio_read)
        if min(audio) < 0:
            _refuse(usage)
    if min(uncached, visible, read, write, reasoning) < 0:
        _refuse(usage)
    return uncached, read, write, visible, reasoning, audio


def _audio_input(prices: _Prices) -> Decimal:
    """The price of an audio prompt token: its own, else the input price."""
    price = prices.audio_input_per_token
    return prices.input_per_token if price is None else price


def _audio_output(prices: _Prices) -> Decimal:
    """The price of an audio output token: its own, else the output price."""
    price = prices.audio_output_per_token
    return prices.output_per_token if price is None else price


def _audio_cache_read(prices: _Prices) -> Decimal:
    """The price of an audio token read from the cache: its own, else the
    cache read price."""
    price = prices.audio_cache_read_per_token
    return prices.cache_read_per_token if price is None else price


@dataclass(frozen=True, slots=True)
class _TierUnits:
    """One tier's per-token prices in whole units of its rate's price unit."""

    above_input_tokens: int
    input: int
    output: int
    cache_read: int
    cache_write: int
    reasoning: int
    audio_input: int
    audio_output: int
    audio_cache_read: int
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
    values = [v for p in prices for v in _price_values(p)]
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


def _price_values(prices: Rate | RateTier) -> list[Any]:
    """Every per-token price of a rate or tier, audio ones resolved."""
    values = [getattr(prices, name) for name in _PRICE_NAMES]
    audio = [_audio_input(prices), _audio_output(prices), _audio_cache_read(prices)]
    return [*values, *audio]


def _tier_units(prices: Rate | RateTier, scale: int) -> _TierUnits:
    input_, output, read, write, reasoning, audio_in, audio_out, audio_read = (
        _whole(value, scale) for value in _price_values(prices)
    )
    above = prices.above_input_tokens if isinstance(prices, RateTier) else -1
    return _TierUnits(
        above_input_tokens=above,
        input=input_,
        output=output,
        cache_read=read,
        cache_write=write,
        reasoning=reasoning,
        audio_input=audio_in,
        audio_output=audio_out,
        audio_cache_read=audio_read,
        # The worst case never prices a token below zero (see worst_case_usd).
        prompt_max=max(0, input_, read, write, audio_read),
        output_max=max(0, output, reasoning, audio_out),
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
    @property
    def audio_input_per_token(self) -> Decimal | None: ...
    @property
    def audio_output_per_token(self) -> Decimal | None: ...
    @property
    def audio_cache_read_per_token(self) -> Decimal | None: ...


def _refuse(usage: Usage) -> NoReturn:
    raise ConfigError(
        f"inconsistent usage {usage}: token counts must be >= 0, cache and "
        "audio input tokens part of prompt_tokens (audio cache reads part of "
        "cache_read_tokens), reasoning and audio output tokens part of "
        "completion_tokens; build it with usage_from_response()"
    )


def _seconds(value: float) -> Decimal:
    return as_decimal(value, field="duration_s")


class RateCard:
    """Prices models for one policy, and costs their calls exactly.

    Resolution, first match wins: ``Pricing.overrides`` under the exact name
    or with provider prefixes stripped (``offline/gpt-4o`` -> ``gpt-4o``);
    then prices a LiteLLM call sets for itself (see :func:`call_prices`),
    laid over the model's map entry, none taken below the map's price for
    the model unless ``Pricing.call_prices`` says so; then the price map
    under the exact name, the name in any letter case, then with prefixes
    stripped one at a time; then, for a model that map does not price,
    LiteLLM's map as it stands at run time (``litellm.model_cost``, where
    ``litellm.register_model`` adds models), by exact name or with prefixes
    stripped; then ``Pricing.default``. The first map entry found decides:
    an entry without token prices makes the model unknown rather than
    letting a shorter name price it.

    ``litellm.model_cost`` is read only when litellm is imported already and
    the card prices from LiteLLM's map (no ``price_map`` given); a
    registration changed later reprices the model from then on.

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
        self._call_prices = pricing.call_prices if pricing else "at_least_map"
        self._url = price_map_url
        self._map = price_map
        # Pinned prices stay pinned: LiteLLM's run-time map adds to its own only.
        self._reads_litellm = price_map is None
        self._folded: dict[str, str] | None = None
        self._rates: dict[str, Rate | _Unpriced] = {}
        # Rates from litellm.model_cost, with the entry that built each.
        self._runtime: dict[str, tuple[Mapping[str, Any], Rate | str]] = {}
        # Rates of calls that set their own prices, by model and prices.
        self._per_call: dict[Hashable, _CallRate] = {}
        # (model, field) pairs a call priced below the map, warned about once.
        self._warned: set[tuple[str, str]] = set()
        # The priced name each unpriced name is likely a typo of, or None.
        self._near: dict[str, str | None] = {}
        self._lock = threading.Lock()
        start_over_in_children(self)

    def _forget_parent(self) -> None:
        """In a forked child: a lock of its own (a fetch may hold the parent's)."""
        self._lock = threading.Lock()

    def rate(self, model: str, prices: Mapping[str, Any] | None = None) -> Rate:
        """Return the rate for ``model``.

        Args:
            model: the name the call is priced under.
            prices: prices one call sets for itself, as LiteLLM's fields
                (``input_cost_per_token`` and kin). They lie over the map's
                entry for ``model`` the way LiteLLM lays them over its cost
                map; a policy override still wins. ``Pricing.call_prices``
                says how far they count: by default no price is taken below
                the map's for ``model`` (a model no map prices is priced by
                them as given).

        Raises:
            PriceUnknown: nothing prices the model and the policy sets no
                default; the message says how to price it.
        """
        if prices:
            return self._call_rate(CallPrices(model, dict(prices)))
        found = self._rates.get(model)  # the usual case, inline
        if isinstance(found, Rate):
            return found
        return self._rate(model)

    def _rate(self, model: str) -> Rate:
        found = self._rates.get(model)
        if found is None:
            found = self._resolve(model)
            self._rates[model] = found
        if isinstance(found, Rate):
            return found
        return self._unmapped(model, found)

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

    def _resolve(self, model: str) -> Rate | _Unpriced:
        """The rate an override or the card's map gives, else what is known of
        the model for :meth:`_unmapped` (which LiteLLM may price later)."""
        for name in _names(model):
            price = self._overrides.get(name)
            if price is not None:
                info = self._lookup(model)
                return _rate_from_price(name, price, "override", info)
        info = self._lookup(model)
        reason = None
        if info is not None:
            built = _rate_from_entry(*info)
            if isinstance(built, Rate):
                return built
            reason = built
        default = None
        if self._default is not None:
            default = _rate_from_price(model, self._default, "default", info)
        return _Unpriced(reason, default)

    def _unmapped(self, model: str, unpriced: _Unpriced) -> Rate:
        """A model the card's map does not price: LiteLLM's run-time map, then
        the default, else refused."""
        runtime = self._runtime_rate(model)
        if isinstance(runtime, Rate):
            return runtime
        if unpriced.default is not None:
            return unpriced.default
        reason = runtime or unpriced.reason or self._not_found(model)
        raise PriceUnknown(model, reason)

    def _not_found(self, model: str) -> str:
        """Why a model found in no map is refused, naming the maps searched
        and the name it may be a typo of."""
        if not self._reads_litellm:
            why = "not in the rate card's price map, and no override prices it"
        else:
            searched = [f"as fetched from {self._url}"] if self._remote else []
            if _litellm_model_cost() is not None:
                searched.append("bundled or at run time in litellm.model_cost")
            where = f" ({', or '.join(searched)})" if searched else ""
            why = f"not in LiteLLM's price map{where}, and no override prices it"
        near = self._near_name(model)
        return why if near is None else f"{why}; did you mean {near!r}?"

    def _near_name(self, model: str) -> str | None:
        """A priced name ``model`` is likely a typo of, with its prefix kept
        (``offline/gpt-4o-mni``: ``offline/gpt-4o-mini``), or None."""
        import difflib

        head, slash, bare = model.rpartition("/")
        if bare not in self._near:  # a refusal may come on every call
            known = [name for name in self._entries() if "/" not in name]
            found = difflib.get_close_matches(bare, known, n=1, cutoff=0.9)
            if len(self._near) >= _NEAR_NAMES_KEPT:
                self._near.clear()
            self._near[bare] = found[0] if found and found[0] != bare else None
        near = self._near[bare]
        return None if near is None else f"{head}{slash}{near}"

    def _runtime_entry(self, model: str) -> tuple[str, Mapping[str, Any]] | None:
        """The entry ``litellm.model_cost`` holds for ``model`` now, if any."""
        models = _litellm_model_cost() if self._reads_litellm else None
        if models is None:
            return None
        for name in _names(model):
            entry = models.get(name)
            if isinstance(entry, Mapping):
                return name, entry
        return None

    def _runtime_rate(self, model: str) -> Rate | str | None:
        """The rate ``litellm.model_cost`` gives ``model`` (a reason when its
        entry prices no tokens), or None when it has no entry."""
        found = self._runtime_entry(model)
        if found is None:
            return None
        key, entry = found
        kept = self._runtime.get(model)
        if kept is not None and kept[0] is entry:
            return kept[1]
        built = _rate_from_entry(key, entry, where="litellm.model_cost")
        self._runtime[model] = (entry, built)
        return built

    def _call_rate(self, given: CallPrices) -> Rate:
        """The rate of a call that sets prices of its own (see :meth:`rate`)."""
        model = given.model
        problem = _bad_price(given.fields)
        if problem is not None:
            raise ConfigError(
                f"the call to {model!r} sets {problem}, which is not a price: "
                "give a finite number of dollars of 0 or more, or leave it out "
                "to use the price map"
            )
        if self._call_prices == "ignore":
            try:
                return self._rate(model)
            except PriceUnknown as exc:
                raise PriceUnknown(
                    model,
                    f"{exc.reason}; the prices the call sets are not read, as "
                    "Pricing(call_prices='ignore') says",
                ) from None
        kept = self._per_call.get(given.key)
        if kept is not None and (
            not kept.unmapped or self._runtime_found(model) is kept.runtime
        ):
            return kept.rate
        if any(name in self._overrides for name in _names(model)):
            return self._rate(model)  # the policy's override wins
        info = self._lookup(model)
        unmapped = info is None or not _prices_tokens(info[1])
        runtime = None
        if unmapped:
            found = self._runtime_entry(model)
            if found is not None:
                info, runtime = found, found[1]
        built = _rate_with_call_prices(model, info, given.fields)
        if isinstance(built, str):
            raise PriceUnknown(model, built)
        if not unmapped and self._call_prices == "at_least_map":
            built = self._at_least_map(model, built)
        if unmapped and _input_price_alone(given.fields):
            logger.warning(
                "the call to %r prices its input (input_cost_per_token) but "
                "not its output, and no price map prices %r: its output "
                "tokens are counted as free. Set output_cost_per_token too "
                "(an embedding model needs none)",
                model,
                model,
            )
        if len(self._per_call) >= _PER_CALL_MEMORY:
            self._per_call.clear()
        self._per_call[given.key] = _CallRate(built, unmapped, runtime)
        return built

    def _at_least_map(self, model: str, given: Rate) -> Rate:
        """``given`` (a call's rate) with no price below the map's rate for
        ``model``; a warning names the prices raised, once per model and
        price."""
        floor = self._rate(model)
        lower: dict[str, tuple[Decimal, Decimal]] = {}
        rate = _dearer_rate(given, floor, lower)
        news = [name for name in lower if (model, name) not in self._warned]
        if news:
            if len(self._warned) >= _WARNED_MEMORY:
                self._warned.clear()
            self._warned.update((model, name) for name in news)
            logger.warning(
                "the call to %r sets prices below the price map's for %r "
                "(%s), so it is charged the map's price there. Prices set on "
                "a call (its price keywords, its Router deployment's prices, "
                "its base_model) are taken only at or above the map's under "
                "Pricing(call_prices='at_least_map'); set "
                "Pricing(call_prices='honour') to charge them as given (a "
                "Router deployment's negotiated prices), or price the model "
                "with Pricing.overrides",
                model,
                floor.model,
                ", ".join(
                    f"{name}: the call's {_text(lower[name][0])}, the map's "
                    f"{_text(lower[name][1])}"
                    for name in news
                ),
            )
        return rate

    def _runtime_found(self, model: str) -> Mapping[str, Any] | None:
        found = self._runtime_entry(model)
        return None if found is None else found[1]

    def _lookup(self, model: str) -> tuple[str, Mapping[str, Any]] | None:
        entries = self._entries()
        folded = self._folded_keys(entries)
        for name in _names(model):
            key = name if name in entries else folded.get(name.lower())
            if key is not None:
                return key, _served(entries, entries[key])
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
            # A map the card loaded itself is shared and never changed; one
            # given as price_map= is its owner's, who may change it.
            shared = self._reads_litellm
            self._folded = _folded_names(entries) if shared else _fold(entries)
        return self._folded


# The lower-cased names of the price maps in use, shared by every card that
# reads the same map (a card per tenant would otherwise hold a copy each).
_FOLDED: dict[int, tuple[PriceMap, dict[str, str]]] = {}
_FOLDED_MEMORY = 4


def _fold(entries: PriceMap) -> dict[str, str]:
    folded: dict[str, str] = {}
    for key in entries:
        folded.setdefault(key.lower(), key)
    return folded


def _folded_names(entries: PriceMap) -> dict[str, str]:
    """Each name of ``entries`` under its lower-case form (the first wins)."""
    kept = _FOLDED.get(id(entries))
    if kept is not None and kept[0] is entries:
        return kept[1]
    folded = _fold(entries)
    if len(_FOLDED) >= _FOLDED_MEMORY:
        _FOLDED.pop(next(iter(list(_FOLDED)), 0), None)  # a copy: threads
    _FOLDED[id(entries)] = (entries, folded)  # the map kept: its id stays its
    return folded


@dataclass(frozen=True, slots=True)
class _CallRate:
    """A call-priced rate, and whether it lies over a ``litellm.model_cost``
    entry (``runtime``, None for none) because the card's map lacks the model:
    such a rate is rebuilt when that entry changes."""

    rate: Rate
    unmapped: bool
    runtime: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class _Unpriced:
    """A model neither an override nor the card's map prices: why (None when
    no map entry names it), and the default's rate, if the policy sets one."""

    reason: str | None
    default: Rate | None


def _served(entries: PriceMap, entry: Mapping[str, Any]) -> Mapping[str, Any]:
    """An entry as LiteLLM serves it: a row whose ``alias_of`` names another
    row is that row."""
    owner = entry.get("alias_of")
    if isinstance(owner, str) and not _prices_tokens(entry):
        return entries.get(owner, entry)
    return entry


def _litellm_model_cost() -> Mapping[str, Any] | None:
    """``litellm.model_cost`` when litellm is imported, without importing it."""
    models = getattr(sys.modules.get("litellm"), "model_cost", None)
    return models if isinstance(models, Mapping) else None


# -- prices a call sets for itself ---------------------------------------

# Call-priced rates kept per card (distinct models and prices).
_PER_CALL_MEMORY = 256
# Models and prices warned about as set below the map, per card.
_WARNED_MEMORY = 1024
# How many unpriced names a card keeps the likely typo of.
_NEAR_NAMES_KEPT = 256

#: The price fields a call may set that the governor reads, as LiteLLM names
#: them (its ``CustomPricingLiteLLMParams``); long-context variants aside.
CALL_PRICE_NAMES = frozenset(
    {
        "input_cost_per_token",
        "output_cost_per_token",
        "cache_read_input_token_cost",
        "cache_creation_input_token_cost",
        "output_cost_per_reasoning_token",
        "input_cost_per_audio_token",
        "output_cost_per_audio_token",
        "cache_read_input_audio_token_cost",
        "tiered_pricing",
        "cost_per_second",
        "input_cost_per_second",
        "output_cost_per_second",
    }
)
_CALL_TIER_PREFIXES = tuple(
    f"{name}_above_"
    for name in (
        "input_cost_per_token",
        "output_cost_per_token",
        "cache_read_input_token_cost",
        "cache_creation_input_token_cost",
        "input_cost_per_audio_token",
    )
)
_FLAT_TOKEN_PRICES = ("input_cost_per_token", "output_cost_per_token")
# LiteLLM's per-second prices, in the order it takes the first one set.
_PER_SECOND_PRICES = (
    "cost_per_second",
    "input_cost_per_second",
    "output_cost_per_second",
)


def is_call_price(name: str) -> bool:
    """True for a LiteLLM price field the governor reads from a call's own
    prices: token, cache, reasoning, audio, long-context and per-second."""
    return name in CALL_PRICE_NAMES or (
        name.startswith(_CALL_TIER_PREFIXES) and name.endswith("_tokens")
    )


def call_price_fields(source: Mapping[str, Any]) -> dict[str, Any]:
    """The price fields ``source`` sets (see :func:`is_call_price`), None
    values left out."""
    return {k: v for k, v in source.items() if v is not None and is_call_price(k)}


@dataclass(frozen=True, slots=True)
class CallPrices:
    """Prices one call sets for itself, as LiteLLM's fields
    (``input_cost_per_token`` and kin), for the model it is priced under."""

    model: str
    fields: Mapping[str, Any]
    key: Hashable = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        items = tuple(sorted(self.fields.items()))
        try:
            key: Hashable = (self.model, items)
            hash(key)
        except TypeError:  # a value such as a tiered_pricing list
            key = (self.model, repr(items))
        object.__setattr__(self, "key", key)


def _input_price_alone(fields: Mapping[str, Any]) -> bool:
    """True when a call prices input tokens and nothing that prices output."""
    if "input_cost_per_token" not in fields or "tiered_pricing" in fields:
        return False
    return not any(
        name.startswith("output_") or name in _PER_SECOND_PRICES for name in fields
    )


def _prices_tokens(entry: Mapping[str, Any]) -> bool:
    base = _base_prices(entry)
    return bool(base.get("input_cost_per_token") or base.get("output_cost_per_token"))


def _rate_with_call_prices(
    model: str,
    found: tuple[str, Mapping[str, Any]] | None,
    fields: Mapping[str, Any],
) -> Rate | str:
    """The call's prices laid over the entry found for it, as LiteLLM lays a
    call's custom pricing over its cost-map row; a reason if none prices.

    A per-second price set without token prices replaces the row's token
    prices; a flat token price set on a row priced by a ``tiered_pricing``
    table is written into every range. Token prices the call sets count
    even at zero (a free model).
    """
    key, entry = found if found is not None else (model, {})
    merged = {**entry, **fields}
    flat = {k: fields[k] for k in _FLAT_TOKEN_PRICES if k in fields}
    if not flat and any(k in fields for k in _PER_SECOND_PRICES):
        for name in (*_FLAT_TOKEN_PRICES, "tiered_pricing"):
            merged.pop(name, None)
    table = merged.get("tiered_pricing")
    if flat and isinstance(table, list) and table:
        merged["tiered_pricing"] = [
            {**row, **flat} if isinstance(row, Mapping) else row for row in table
        ]
    built = _rate_from_entry(
        key, merged, source="override", where="the call's prices", free=bool(flat)
    )
    if isinstance(built, Rate):
        return built
    seconds = next(
        (p for k in _PER_SECOND_PRICES if (p := _opt_dec(merged.get(k))) is not None),
        None,
    )
    if seconds is None:
        return f"the call sets prices ({', '.join(sorted(fields))}) but none per token"
    return Rate(
        model=key,
        input_per_token=_ZERO,
        output_per_token=_ZERO,
        cache_read_per_token=_ZERO,
        cache_write_per_token=_ZERO,
        reasoning_per_token=_ZERO,
        usd_per_second=seconds,
        max_output_tokens=_opt_int(merged.get("max_output_tokens")),
        max_input_tokens=_opt_int(merged.get("max_input_tokens")),
        source="override",
        provider=_opt_str(merged.get("litellm_provider")),
    )


# A rate's prices, with the LiteLLM field that sets each.
_PRICE_PARTS = (
    ("input_per_token", "input_cost_per_token"),
    ("output_per_token", "output_cost_per_token"),
    ("cache_read_per_token", "cache_read_input_token_cost"),
    ("cache_write_per_token", "cache_creation_input_token_cost"),
    ("reasoning_per_token", "output_cost_per_reasoning_token"),
)
# Audio prices, with the price that bills audio when a rate sets none.
_AUDIO_PARTS = (
    ("audio_input_per_token", "input_cost_per_audio_token", "input_per_token"),
    ("audio_output_per_token", "output_cost_per_audio_token", "output_per_token"),
    (
        "audio_cache_read_per_token",
        "cache_read_input_audio_token_cost",
        "cache_read_per_token",
    ),
)


def _dearer_rate(
    given: Rate, floor: Rate, lower: dict[str, tuple[Decimal, Decimal]]
) -> Rate:
    """``given`` with each price raised to ``floor``'s where it is lower, for
    every prompt size (the tiers of both); ``lower`` gains each price raised,
    by LiteLLM's name, as (given's, floor's). ``floor`` itself when nothing of
    ``given`` is dearer."""
    dearer = [False]
    base = _dearer_prices(given, floor, lower, dearer, "")
    per_second = given.usd_per_second
    if floor.usd_per_second is not None and (
        per_second is None or per_second < floor.usd_per_second
    ):
        if per_second is not None:
            lower.setdefault("cost_per_second", (per_second, floor.usd_per_second))
        per_second = floor.usd_per_second
    elif per_second is not None and per_second > (floor.usd_per_second or _ZERO):
        dearer[0] = True
    tiers = []
    for above in sorted({t.above_input_tokens for t in (*given.tiers, *floor.tiers)}):
        prices = _dearer_prices(
            given.tier_for(above + 1),
            floor.tier_for(above + 1),
            lower,
            dearer,
            f" above {above} prompt tokens",
        )
        tiers.append(RateTier(above_input_tokens=above, **prices))
    if not dearer[0]:
        return floor
    return Rate(
        model=given.model,
        usd_per_second=per_second,
        tiers=tuple(tiers),
        max_output_tokens=given.max_output_tokens,
        max_input_tokens=given.max_input_tokens,
        source=given.source,
        provider=given.provider,
        **base,
    )


def _dearer_prices(
    given: _Prices,
    floor: _Prices,
    lower: dict[str, tuple[Decimal, Decimal]],
    dearer: list[bool],
    where: str,
) -> dict[str, Any]:
    """The dearer of two sets of per-token prices, price by price (see
    :func:`_dearer_rate`); ``dearer[0]`` is set when ``given`` has one dearer."""
    prices: dict[str, Any] = {}
    parts = [(attr, name, attr) for attr, name in _PRICE_PARTS]
    for attr, name, fallback in (*parts, *_AUDIO_PARTS):
        mine, theirs = getattr(given, attr), getattr(floor, attr)
        if mine is None and theirs is None:
            prices[attr] = None  # audio billed at the (dearer) text price
            continue
        mine = getattr(given, fallback) if mine is None else mine
        theirs = getattr(floor, fallback) if theirs is None else theirs
        if mine < theirs:
            lower.setdefault(name + where, (mine, theirs))
        dearer[0] = dearer[0] or mine > theirs
        prices[attr] = max(mine, theirs)
    return prices


def _text(price: Decimal) -> str:
    """A price as fixed-point text (``0.0000025``, not ``2.5E-6``)."""
    return format(price.normalize(), "f")


def _names(model: str) -> Iterator[str]:
    """Yield ``model``, then it with one more ``provider/`` prefix removed."""
    name = model
    while True:
        yield name
        head, slash, rest = name.partition("/")
        if not slash or not rest or not head:
            return
        name = rest


def _rate_from_entry(
    key: str,
    entry: Mapping[str, Any],
    *,
    source: str = "price_map",
    where: str = "the price map",
    free: bool = False,
) -> Rate | str:
    """Build a Rate from a price-map entry, or say why the entry prices nothing.

    ``where`` names the map in that reason; ``free`` takes token prices of
    zero as given (a call's own prices) rather than as none.
    """
    problem = _bad_price(entry)
    if problem is not None:
        return f"{where} gives {key!r} {problem}, which is not a price"
    base = _base_prices(entry)
    if not free and not _prices_tokens(entry):
        return f"{where} lists it as {key!r} with no token prices"
    input_price = _dec(base.get("input_cost_per_token"))
    output_price = _dec(base.get("output_cost_per_token"))
    cache_read = _opt_dec(base.get("cache_read_input_token_cost"))
    cache_write = _opt_dec(base.get("cache_creation_input_token_cost"))
    reasoning = _opt_dec(base.get("output_cost_per_reasoning_token"))
    audio = _Audio(
        _opt_dec(base.get("input_cost_per_audio_token")),
        _opt_dec(base.get("output_cost_per_audio_token")),
        _opt_dec(base.get("cache_read_input_audio_token_cost")),
    )
    tiers = tuple(
        _tier(above, prices, cache_read, cache_write, reasoning, audio)
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
        source=source,
        provider=_opt_str(entry.get("litellm_provider")),
        audio_input_per_token=audio.input_per_token,
        audio_output_per_token=audio.output_per_token,
        audio_cache_read_per_token=audio.cache_read_per_token,
    )


def _bad_price(entry: Mapping[str, Any]) -> str | None:
    """The first price field of ``entry`` (or of its ``tiered_pricing``
    rows) that is not a number, or is negative, infinite or NaN, as
    ``name=value``; else None."""
    rows = entry.get("tiered_pricing")
    tables = rows if isinstance(rows, list) else ()
    for source in (entry, *(r for r in tables if isinstance(r, Mapping))):
        for name, value in source.items():
            if not is_call_price(name):
                continue
            if value is None or isinstance(value, list | Mapping):
                continue  # a tiered_pricing table: its rows are read here
            price = _opt_dec(value)
            if price is None or not price.is_finite() or price < 0:
                return f"{name}={value!r}"  # not a number, or no price
    return None


@dataclass(frozen=True, slots=True)
class _Audio:
    """A map entry's own audio token prices (None where it sets none)."""

    input_per_token: Decimal | None = None
    output_per_token: Decimal | None = None
    cache_read_per_token: Decimal | None = None


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
        "input_cost_per_audio_token",
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
    audio: _Audio | None = None,
) -> RateTier:
    """Build a tier; prices it lacks come from the base's explicit ones, then input.

    Audio output and audio cache reads have no long-context prices in
    LiteLLM's map: a tier keeps the base's, or bills them at its own output
    and cache read prices.
    """
    input_price = _dec(prices.get("input_cost_per_token"))
    output_price = _dec(prices.get("output_cost_per_token"))
    tier_read = _opt_dec(prices.get("cache_read_input_token_cost"))
    tier_write = _opt_dec(prices.get("cache_creation_input_token_cost"))
    tier_reasoning = _opt_dec(prices.get("output_cost_per_reasoning_token"))
    tier_audio = _opt_dec(prices.get("input_cost_per_audio_token"))
    audio = audio or _Audio()
    return RateTier(
        above_input_tokens=above,
        input_per_token=input_price,
        output_per_token=output_price,
        cache_read_per_token=_first(tier_read, cache_read, input_price),
        cache_write_per_token=_first(tier_write, cache_write, input_price),
        reasoning_per_token=_first(tier_reasoning, reasoning, output_price),
        audio_input_per_token=_either(tier_audio, audio.input_per_token),
        audio_output_per_token=audio.output_per_token,
        audio_cache_read_per_token=audio.cache_read_per_token,
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


def _either(price: Decimal | None, fallback: Decimal | None) -> Decimal | None:
    return fallback if price is None else price


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
