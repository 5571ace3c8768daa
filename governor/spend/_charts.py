"""Report charts as a tiny scene of boxes, rules and text, drawn as SVG or PNG.

One layout serves both outputs: the SVG writer and the PNG rasteriser
(:mod:`governor.spend._png`) draw the same items, so charts cannot drift apart.
Pixel geometry uses floats; money stays Decimal until it is scaled to pixels.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

from governor.spend._aggregate import Group, SpendSummary, Totals

__all__ = [
    "Box",
    "Chart",
    "Rule",
    "Text",
    "charts_for",
    "format_usd",
    "render_html",
    "render_svg",
]

WIDTH = 760
BAR = "#3b6ea5"
INK = "#222222"
GRID = "#cccccc"
_LABEL_CHARS = 26


@dataclass(frozen=True, slots=True)
class Box:
    """A filled rectangle."""

    x: float
    y: float
    w: float
    h: float
    fill: str = BAR


@dataclass(frozen=True, slots=True)
class Rule:
    """A one-pixel horizontal or vertical line."""

    x1: float
    y1: float
    x2: float
    y2: float
    stroke: str = GRID


@dataclass(frozen=True, slots=True)
class Text:
    """A line of text; ``y`` is its baseline, ``size`` its height in pixels."""

    x: float
    y: float
    text: str
    size: int = 12
    anchor: Literal["start", "middle", "end"] = "start"
    fill: str = INK


Item = Box | Rule | Text


@dataclass(frozen=True, slots=True)
class Chart:
    """A titled drawing of ``width`` by ``height`` pixels."""

    title: str
    width: int
    height: int
    items: tuple[Item, ...]


def format_usd(value: Decimal) -> str:
    """Dollars for people: cents above one dollar, more digits below."""
    if abs(value) >= 1:
        return f"${value:,.2f}"
    if abs(value) >= Decimal("0.01"):
        return f"${value:.4f}"
    return f"${value:.6f}"


def _short(label: str) -> str:
    return label if len(label) <= _LABEL_CHARS else label[: _LABEL_CHARS - 1] + "~"


def bars_horizontal(title: str, rows: Sequence[Group]) -> Chart:
    """One bar per group, longest cost first, labelled with key and dollars."""
    row_h, top, left, right = 22, 40, 200, 110
    peak = max((g.totals.cost_usd for g in rows), default=Decimal(0))
    span = WIDTH - left - right
    items: list[Item] = [Text(10, 24, title, size=16)]
    for i, group in enumerate(rows):
        y = top + i * row_h
        cost = group.totals.cost_usd
        length = float(cost / peak) * span if peak > 0 else 0.0
        items.append(Text(left - 8, y + 14, _short(group.label), anchor="end"))
        items.append(Box(left, y + 3, max(length, 1.0), row_h - 6))
        items.append(Text(left + length + 6, y + 14, format_usd(cost)))
    return Chart(title, WIDTH, top + len(rows) * row_h + 12, tuple(items))


def bars_over_time(title: str, rows: Sequence[Group]) -> Chart:
    """Vertical bars in time order with the peak and the first and last bucket."""
    top, bottom, left, right, height = 44, 40, 90, 20, 280
    base_y = height - bottom
    peak = max((g.totals.cost_usd for g in rows), default=Decimal(0))
    slot = (WIDTH - left - right) / max(len(rows), 1)
    items: list[Item] = [
        Text(10, 24, title, size=16),
        Rule(left, top, WIDTH - right, top),
        Rule(left, base_y, WIDTH - right, base_y, stroke=INK),
        Text(left - 6, top + 4, format_usd(peak), anchor="end"),
        Text(left - 6, base_y + 4, "$0", anchor="end"),
    ]
    for i, group in enumerate(rows):
        cost = group.totals.cost_usd
        h = float(cost / peak) * (base_y - top) if peak > 0 else 0.0
        x = left + i * slot + slot * 0.1
        items.append(Box(x, base_y - h, max(slot * 0.8, 1.0), h))
    if rows:
        items.append(Text(left, base_y + 18, rows[0].key))
        items.append(Text(WIDTH - right, base_y + 18, rows[-1].key, anchor="end"))
    return Chart(title, WIDTH, height, tuple(items))


def _filled(rows: Sequence[Group], by: str) -> list[Group]:
    """Time buckets from first to last with empty ones as zero-cost groups.

    Records far apart (years of days, a stray timestamp) would make more
    empty buckets than a chart can show: past ``_MOST_BUCKETS`` the chart
    keeps only the buckets that have spend.
    """
    if not rows:
        return []
    step = timedelta(hours=1) if by == "hour" else timedelta(days=1)
    present = {g.key: g for g in rows}
    current, last = _bucket_start(rows[0].key), _bucket_start(rows[-1].key)
    if (last - current) // step >= _MOST_BUCKETS:
        return list(rows)
    out: list[Group] = []
    while current <= last:
        key = _bucket_key(current, by)
        out.append(present.get(key, Group(key, Totals())))
        if current == last:
            break  # a step past the last bucket may be past year 9999
        current += step
    return out


_MOST_BUCKETS = 20_000
"""The most time buckets a chart fills in (about 55 years of days)."""


def _bucket_start(key: str) -> datetime:
    """The time a day (``YYYY-MM-DD``) or hour (``...THH:00Z``) key starts."""
    return datetime.fromisoformat(key.removesuffix("Z"))


def _bucket_key(start: datetime, by: str) -> str:
    day = start.date().isoformat()
    return f"{day}T{start.hour:02d}:00Z" if by == "hour" else day


def charts_for(summary: SpendSummary, *, top_n: int = 10) -> list[Chart]:
    """The report's charts: spend over time, each grouping asked for, top tasks.

    Spend over time is hourly when the data spans at most three days, else
    daily; it needs the ``hour`` and ``day`` groupings in ``summary``.
    """
    charts: list[Chart] = []
    span = (
        summary.last_ts - summary.first_ts
        if summary.first_ts and summary.last_ts
        else timedelta(0)
    )
    bucket = "hour" if span <= timedelta(days=3) else "day"
    if bucket in summary.groups:
        rows = _filled(summary.groups[bucket], bucket)
        charts.append(bars_over_time(f"Spend per {bucket} (USD)", rows))
    for by in summary.by:
        if by in ("day", "hour", "task"):
            continue
        charts.append(bars_horizontal(f"Spend by {by}", summary.groups[by][:top_n]))
    if "task" in summary.groups:
        tasks = summary.groups["task"][:top_n]
        charts.append(bars_horizontal(f"Top {len(tasks)} tasks by spend", tasks))
    return charts


def render_svg(chart: Chart) -> str:
    """One chart as a standalone ``<svg>`` element."""
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{chart.width}" '
        f'height="{chart.height}" viewBox="0 0 {chart.width} {chart.height}" '
        f'role="img" aria-label="{html.escape(chart.title)}" '
        'font-family="sans-serif">',
        f'<rect width="{chart.width}" height="{chart.height}" fill="#ffffff"/>',
    ]
    for item in chart.items:
        parts.append(_svg_item(item))
    parts.append("</svg>")
    return "\n".join(parts)


def _svg_item(item: Item) -> str:
    if isinstance(item, Box):
        return (
            f'<rect x="{item.x:.1f}" y="{item.y:.1f}" width="{item.w:.1f}" '
            f'height="{item.h:.1f}" fill="{item.fill}"/>'
        )
    if isinstance(item, Rule):
        return (
            f'<line x1="{item.x1:.1f}" y1="{item.y1:.1f}" x2="{item.x2:.1f}" '
            f'y2="{item.y2:.1f}" stroke="{item.stroke}"/>'
        )
    return (
        f'<text x="{item.x:.1f}" y="{item.y:.1f}" font-size="{item.size}" '
        f'text-anchor="{item.anchor}" fill="{item.fill}">'
        f"{html.escape(item.text)}</text>"
    )


def render_html(title: str, tables: Sequence[str], charts: Sequence[Chart]) -> str:
    """A self-contained HTML page: charts as inline SVG, then the text tables."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    body.extend(f"<figure>{render_svg(chart)}</figure>" for chart in charts)
    body.extend(f"<pre>{html.escape(table)}</pre>" for table in tables)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em;color:#222}"
        "figure{margin:1em 0}pre{font-size:13px}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
