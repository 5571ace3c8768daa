"""``governor report``: recorded spend by team, org, feature, model and day."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from governor.cli._text import printable

if TYPE_CHECKING:
    from governor.spend import Group, SpendSummary

DEFAULT_BY = ("team", "feature", "model", "day", "task")
_RELATIVE = re.compile(r"^(\d+)([mhdw])$")
_UNIT_S = {"m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_COLUMNS = (
    "calls",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "share",
    "saved_usd",
    "cache_hits",
)


def register(sub: Any, name: str, help_text: str) -> None:
    """Add ``report`` to the command line."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=help_text
    )
    parser.add_argument(
        "--db",
        metavar="PATH",
        help="SQLite file, .jsonl trace or redis:// URL "
        "(default: $GOVERNOR_SPEND_DB, else ./.governor/spend.sqlite3)",
    )
    parser.add_argument(
        "--since",
        metavar="WHEN",
        help="ISO date/time (UTC if no zone) or 30m/12h/7d/2w before now",
    )
    parser.add_argument("--until", metavar="WHEN", help="same forms as --since")
    parser.add_argument(
        "--by",
        action="append",
        metavar="KEY",
        help="group by team, feature, model, day, hour, environment, provider, "
        "user, session, org, task or tag.NAME; repeat for several "
        f"(default: {', '.join(DEFAULT_BY)})",
    )
    parser.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep only calls with this task_id, call_id, model, provider, "
        "outcome, team, feature, environment, user, session, org or tag.NAME",
    )
    parser.add_argument("--top", type=int, default=10, help="tasks to list (10)")
    parser.add_argument(
        "--format", choices=("table", "json", "csv"), default="table", dest="fmt"
    )
    parser.add_argument("--html", metavar="FILE", help="also write an HTML report")
    parser.add_argument("--png", metavar="FILE", help="also write the charts as PNG")
    parser.set_defaults(handler=_run)


def parse_when(text: str, *, now: datetime) -> datetime:
    """Read ``30m``/``12h``/``7d``/``2w`` before ``now``, or an ISO date/time."""
    relative = _RELATIVE.match(text)
    if relative:
        amount, unit = int(relative.group(1)), relative.group(2)
        return now - timedelta(seconds=amount * _UNIT_S[unit])
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        from governor._errors import ConfigError

        raise ConfigError(
            f"cannot read time {text!r}; use an ISO date such as 2026-12-01, "
            "an ISO date-time, or 30m, 12h, 7d, 2w"
        ) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _run(args: argparse.Namespace) -> int:
    from governor._errors import ConfigError
    from governor.spend import SpendDataError

    try:
        summary, label = _summarize(args)
    except (ConfigError, SpendDataError) as exc:
        print(f"governor report: {exc}", file=sys.stderr)
        return 1
    _print(summary, args.fmt, label, args.top)
    _write_charts(summary, args, label)
    return 0


def _summarize(args: argparse.Namespace) -> tuple[SpendSummary, str]:
    from governor._errors import ConfigError
    from governor.spend import default_spend_target, open_store, summarize

    target = args.db or default_spend_target()
    if "://" not in target and not Path(target).exists():
        raise ConfigError(
            f"no spend store at {target}; pass --db or set GOVERNOR_SPEND_DB"
        )
    now = datetime.now(UTC)
    since = parse_when(args.since, now=now) if args.since else None
    until = parse_when(args.until, now=now) if args.until else None
    shown = tuple(args.by or DEFAULT_BY)
    by = shown
    if args.html or args.png:
        # Charts need the time buckets and the top tasks whatever was asked.
        by += tuple(b for b in ("hour", "day", "task") if b not in by)
    store = open_store(target, existing=True)
    try:
        summary = summarize(store.query(since, until, _filters(args.filter)), by)
    finally:
        store.close()
    return dataclasses.replace(summary, by=shown), target


def _filters(pairs: Sequence[str]) -> dict[str, str | None]:
    from governor._errors import ConfigError

    out: dict[str, str | None] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--filter takes KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def _rows(summary: SpendSummary, by: str, top: int) -> list[Group]:
    rows = summary.groups[by]
    return rows[:top] if by == "task" else rows


def _cells(group: Group, summary: SpendSummary) -> list[str]:
    totals = group.totals
    whole = summary.total.cost_usd
    share = f"{totals.cost_usd / whole * 100:.1f}%" if whole else "-"
    return [
        str(totals.calls),
        str(totals.input_tokens),
        str(totals.output_tokens),
        f"{totals.cost_usd:.6f}",
        share,
        f"{totals.saved_usd:.6f}",
        str(totals.cache_hits),
    ]


def render_table(summary: SpendSummary, label: str, top: int) -> str:
    """Plain-text tables, one per grouping, under a one-line summary."""
    total = summary.total
    span = (
        f"{summary.first_ts:%Y-%m-%d %H:%M} .. {summary.last_ts:%Y-%m-%d %H:%M} UTC"
        if summary.first_ts and summary.last_ts
        else "no calls"
    )
    blocks = [
        f"Spend in {label}: {span}, {total.calls} calls, "
        f"${total.cost_usd:.6f} (saved ${total.saved_usd:.6f})"
    ]
    for by in summary.by:
        if by == "hour":
            continue
        title = f"Top {top} tasks" if by == "task" else f"By {by}"
        rows = [
            [printable(g.key), *_cells(g, summary)] for g in _rows(summary, by, top)
        ]
        blocks.append(title + "\n" + _align([by, *_COLUMNS], rows))
    return "\n\n".join(blocks)


def _align(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def render_json(summary: SpendSummary, label: str, top: int) -> str:
    """One JSON document: totals, then each grouping's rows; money as strings."""
    document = {
        "store": label,
        "first_ts": summary.first_ts.isoformat() if summary.first_ts else None,
        "last_ts": summary.last_ts.isoformat() if summary.last_ts else None,
        "total": summary.total.to_json_dict(),
        "groups": {
            by: [
                {"key": g.key, **g.totals.to_json_dict()}
                for g in _rows(summary, by, top)
            ]
            for by in summary.by
        },
    }
    return json.dumps(document, indent=2)


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def render_csv(summary: SpendSummary, top: int) -> str:
    """One CSV table with a ``by`` column naming each row's grouping."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["by", "key", *_COLUMNS])
    for by in summary.by:
        for group in _rows(summary, by, top):
            writer.writerow([by, _inert(group.key), *_cells(group, summary)])
    return buffer.getvalue()


def _inert(text: str) -> str:
    """Keep a spreadsheet from running a cell: "=cmd()" is shown, not run.

    Attribution values come from callers; a team named ``=HYPERLINK(...)``
    would be a formula in Excel or Sheets. A leading quote makes it text.
    """
    return "'" + text if text[:1] in _FORMULA_STARTS else text


def _print(summary: SpendSummary, fmt: str, label: str, top: int) -> None:
    if fmt == "json":
        print(render_json(summary, label, top))
    elif fmt == "csv":
        sys.stdout.write(render_csv(summary, top))
    else:
        print(render_table(summary, label, top))


def _write_charts(summary: SpendSummary, args: argparse.Namespace, label: str) -> None:
    if not (args.html or args.png):
        return
    from governor.spend._charts import charts_for, render_html

    charts = charts_for(summary, top_n=args.top)
    if args.html:
        table = render_table(summary, label, args.top)
        page = render_html(f"llm-governor spend report ({label})", [table], charts)
        Path(args.html).write_text(page, encoding="utf-8")
    if args.png:
        from governor.spend._png import render_png

        Path(args.png).write_bytes(render_png(charts))
