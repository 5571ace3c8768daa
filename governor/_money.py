"""Money arithmetic: Decimal US dollars at the edges, integer nano-dollars inside.

The ledger and every store count in integer nano-dollars (1e-9 USD) so that sums
are exact and atomic server-side scripts need no floating point. Per-token list
prices are fractions of a micro-dollar, so micro-dollars would round real calls.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal, getcontext, localcontext

NANOS_PER_USD = 10**9
_NANO = Decimal(1).scaleb(-9)


def usd_to_nanos(usd: Decimal) -> int:
    """Convert dollars to nano-dollars, rounding up so holds never undershoot."""
    return int((usd * NANOS_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def nanos_to_usd(nanos: int) -> Decimal:
    """Convert nano-dollars to an exact Decimal amount of dollars.

    Trailing zeros are dropped, but never into an exponent: 200 dollars is
    ``Decimal("200")``, not ``Decimal("2E+2")``.

    Exact for any count, however large: the arithmetic runs with as many
    digits as ``nanos`` has, where the default 28 would round a huge amount
    (and fail to write it without an exponent).
    """
    if not nanos:
        return Decimal(0)
    if -_EXACT_NANOS < nanos < _EXACT_NANOS:  # every amount a ledger holds
        return _dollars(nanos)
    with localcontext() as ctx:
        # log10(2) < 0.30103: enough digits for every digit of ``nanos``.
        ctx.prec = max(ctx.prec, abs(nanos).bit_length() * 30103 // 100_000 + 2)
        return _dollars(nanos)


# Counts the default context's 28 digits hold exactly, quantized included.
_EXACT_NANOS = 10**27


def _dollars(nanos: int) -> Decimal:
    return without_exponent((Decimal(nanos) * _NANO).normalize())


def without_exponent(amount: Decimal) -> Decimal:
    """``amount`` written without a positive exponent, for money a person reads.

    Python keeps ``Decimal("1e3")`` as ``Decimal("1E+3")``, which prints as
    ``1E+3``; this returns ``Decimal("1000")``. An amount with places
    (``Decimal("2.50")``) comes back as given. Only the notation changes: the
    result equals ``amount`` and hashes alike. An amount of more digits than
    the context holds (no policy takes one) is left as it is.
    """
    exponent = amount.as_tuple().exponent
    if not isinstance(exponent, int) or exponent <= 0:
        return amount  # already plain, or not a finite number
    if amount.adjusted() >= getcontext().prec:
        return amount
    return amount.quantize(Decimal(1))


def plain_text(amount: Decimal) -> str:
    """``amount`` as text without an exponent: ``5E-7`` is ``0.0000005``."""
    return format(amount, "f")


def as_decimal(value: object, *, field: str) -> Decimal:
    """Read a money value given as Decimal, int or str; floats go through str()."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool):
        raise TypeError(f"{field} must be a number of dollars, got {value!r}")
    if isinstance(value, int | str):
        return Decimal(value)
    if isinstance(value, float):
        # repr of a float is the shortest string that round-trips: 0.1 -> "0.1".
        return Decimal(repr(value))
    raise TypeError(f"{field} must be a number of dollars, got {value!r}")
