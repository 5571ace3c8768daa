"""Where a trace's calls are: stray rows far from the rest, and idle stretches.

The evaluation places its spikes at uniform random times between a scope's
first and last call and sizes them from its mean token rate over that span.
One row far from the others (a date typed wrong, a local time among UTC
ones) stretches the span with time that has no calls: most spikes land
there and the figures stop describing the trace. Such rows at either end
are left out, and a trace idle for most of its span is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

__all__ = [
    "IDLE_GAP_S",
    "IDLE_SHARE",
    "Idle",
    "Stamps",
    "idle_stretches",
    "kept_span",
    "shown_duration",
    "shown_time",
]

_S = 1_000_000

#: A pause of more than this many seconds is idle time (ten intervals of the
#: detector's default 60 s, its default history); shorter pauses are the
#: ordinary gaps of a bursty service.
IDLE_GAP_S = 600

# Rows at either end are stray when they are at most this share of the rows
# and a pause of at least _STRAY_GAP_S, and at least _STRAY_SPAN_SHARE of the
# other rows' span, parts them from the rest.
_STRAY_ROWS_SHARE = 0.01
_STRAY_GAP_S = IDLE_GAP_S
_STRAY_SPAN_SHARE = 0.1

# A trace idle for more than this share of its span is reported.
IDLE_SHARE = 0.5

Stamps = npt.NDArray[np.int64]


def kept_span(stamps: Stamps) -> tuple[int, int]:
    """The slice ``[low, high)`` of sorted ``stamps`` that leaves stray rows out.

    A stray group is a few rows at either end (together at most 1 % of the
    rows, one at least) set apart from the rest by a pause of at least ten
    minutes that is also at least a tenth of the rest's span. Groups are
    peeled off one at a time, each end's widest pause first, so rows moved
    a day back and others moved five hours back both go.
    """
    count = len(stamps)
    most = max(1, int(count * _STRAY_ROWS_SHARE))
    low, high = 0, count
    while high - low > 2:
        allowed = most - (low + count - high)
        if allowed <= 0:
            break
        head = np.diff(stamps[low : low + allowed + 1])
        cut = int(np.argmax(head))
        if _apart(int(head[cut]), stamps[low + cut + 1 : high]):
            low += cut + 1
            continue
        tail = np.diff(stamps[high - allowed - 1 : high])
        cut = int(np.argmax(tail[::-1]))  # the pause nearest the end, on a tie
        end = high - cut - 1
        if _apart(int(tail[len(tail) - 1 - cut]), stamps[low:end]):
            high = end
            continue
        break
    return low, high


def _apart(gap_us: int, rest: Stamps) -> bool:
    """Whether a pause of ``gap_us`` sets a group apart from the ``rest``."""
    span_us = int(rest[-1] - rest[0]) if len(rest) else 0
    return gap_us >= max(_STRAY_GAP_S * _S, _STRAY_SPAN_SHARE * span_us)


@dataclass(frozen=True, slots=True)
class Idle:
    """A trace's pauses longer than :data:`IDLE_GAP_S`, as a share of its span.

    ``longest`` is the widest pause as (start, end) in epoch microseconds.
    """

    share: float
    span_us: int
    longest: tuple[int, int]


def idle_stretches(stamps: Stamps) -> Idle | None:
    """The pauses of sorted ``stamps`` over :data:`IDLE_GAP_S`; None for none."""
    if len(stamps) < 2:
        return None
    gaps = np.diff(stamps)
    idle = gaps > IDLE_GAP_S * _S
    if not idle.any():
        return None
    widest = int(np.argmax(gaps))
    span_us = int(stamps[-1] - stamps[0])
    share = float(gaps[idle].sum()) / span_us
    return Idle(share, span_us, (int(stamps[widest]), int(stamps[widest + 1])))


def shown_duration(seconds: float) -> str:
    """A duration for a message: ``45 s``, ``12 min``, ``5.0 h``, ``2.5 days``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86_400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} days"


def shown_time(epoch_us: int) -> str:
    """A UTC time for a message, to the second: ``2023-11-16 18:17:03 UTC``."""
    moment = datetime.fromtimestamp(epoch_us // _S, UTC)
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"
