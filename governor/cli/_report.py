"""``governor report``: recorded spend by team, org, feature, model and day."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from governor.cli._fail import fail, too_deep
from governor.cli._spend_source import (
    check_prefix_shown,
    not_a_spend_file,
    redis_down,
    shown_target,
    unreachable,
)
from governor.cli._text import (
    check_output,
    given,
    ljust,
    positive_count,
    printable,
    refuse_overwriting,
    rjust,
    width,
    write_atomically,
)

if TYPE_CHECKING:
    from governor.spend import Group, SpendSummary

_COMMAND = "governor report"

DEFAULT_BY = ("team", "feature", "model", "day", "task")
_RELATIVE = re.compile(r"^(\d+)([mhdw])$")
_SIGNED = re.compile(r"^-\d+[mhdw]$")
"""A span written with a minus sign (``-5d``): read as a value, refused with advice."""
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
_CSV_ONLY = ("refused", "errors")
"""Columns of the CSV (and JSON) but not of the table, which stays narrow."""


def register(sub: Any, name: str, help_text: str) -> None:
    """Add ``report`` to the command line."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=help_text
    )
    parser.add_argument(
        "--db",
        metavar="PATH",
        type=given("a spend store's path or URL"),
        help="SQLite file (read, never written), spend .jsonl or .ndjson "
        "(.gz too) or redis:// URL "
        "(default: $GOVERNOR_SPEND_DB, else ./.governor/spend.sqlite3)",
    )
    parser.add_argument(
        "--prefix",
        metavar="PREFIX",
        help="key prefix of a redis:// store: the RedisLedger prefix of the "
        "deployment that recorded it (default: governor:)",
    )
    parser.add_argument(
        "--since",
        metavar="WHEN",
        type=given("an ISO date/time or 30m/12h/7d/2w"),
        help="ISO date/time (UTC if no zone) or 30m/12h/7d/2w before now",
    )
    parser.add_argument(
        "--until",
        metavar="WHEN",
        type=given("an ISO date/time or 30m/12h/7d/2w"),
        help="same forms as --since",
    )
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
        "outcome, team, feature, environment, user, session, org or tag.NAME; "
        "an empty VALUE (team=) keeps the calls where KEY is unset; each KEY "
        "once (group by it with --by to see several values)",
    )
    parser.add_argument(
        "--top",
        type=positive_count,
        default=10,
        metavar="N",
        help="tasks to list, 1 or more (10)",
    )
    parser.add_argument(
        "--format", choices=("table", "json", "csv"), default="table", dest="fmt"
    )
    parser.add_argument(
        "--html",
        metavar="FILE",
        type=given("a file name"),
        help="also write an HTML report",
    )
    parser.add_argument(
        "--png",
        metavar="FILE",
        type=given("a file name"),
        help="also write the charts as PNG",
    )
    parser.set_defaults(handler=_run)
    _values_may_start_with_minus(parser)


def _values_may_start_with_minus(parser: argparse.ArgumentParser) -> None:
    """Let ``--since -5d`` reach :func:`parse_when`, which says to write ``5d``.

    argparse takes an argument that starts with ``-`` and is not a negative
    number for an option, and would say only "expected one argument". No
    option of ``report`` looks like ``-5d``, so such a word is read as a value.
    """
    matcher = getattr(parser, "_negative_number_matcher", None)
    if not isinstance(matcher, re.Pattern):  # a Python whose argparse differs
        return
    parser._negative_number_matcher = re.compile(f"{matcher.pattern}|{_SIGNED.pattern}")


def parse_when(text: str, *, now: datetime) -> datetime:
    """Read ``30m``/``12h``/``7d``/``2w`` before ``now``, or an ISO date/time."""
    if _SIGNED.match(text):
        why = f" (a span before now takes no minus sign: write {text[1:]})"
        raise _unreadable(text, why)
    relative = _RELATIVE.match(text)
    if relative:
        amount, unit = int(relative.group(1)), relative.group(2)
        try:
            return now - timedelta(seconds=amount * _UNIT_S[unit])
        except OverflowError as exc:
            why = f"; {text} before now is before the year 1"
            raise _unreadable(text, why) from exc
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise _unreadable(text) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _unreadable(text: str, why: str = "") -> Exception:
    from governor._errors import ConfigError

    return ConfigError(
        f"cannot read time {text!r}{why}; use an ISO date such as 2026-12-01, "
        "an ISO date-time, or 30m, 12h, 7d, 2w"
    )


class _Query(NamedTuple):
    """What the command line asks for, checked before any store is opened."""

    since: datetime | None
    until: datetime | None
    filters: dict[str, str | None]
    shown: tuple[str, ...]
    by: tuple[str, ...]


def _run(args: argparse.Namespace) -> int:
    """Exit 2 for a bad option, 1 for a store or file that cannot be used.

    With ``--format json`` an error is a JSON document on stdout too. The
    charts are written before the report is printed, so that a chart that
    cannot be written leaves one document on stdout, the error.
    """
    from governor._errors import ConfigError
    from governor.spend import SpendDataError

    try:
        query = _read_options(args)
    except ConfigError as exc:
        return fail(args, _COMMAND, exc, 2)
    try:
        summary, label, skipped = _summarize(args, query)
        _write_charts(summary, args, label)
        _print(summary, args.fmt, label, args.top)
        if skipped and args.fmt == "table":
            print(
                f"\nNote: skipped {skipped} line(s) repeating the call_id of an "
                "earlier line; the first record of each call is counted"
            )
    except (ConfigError, SpendDataError) as exc:
        return fail(args, _COMMAND, exc, 1)
    except _Unreachable as exc:
        return fail(args, _COMMAND, exc, 1, code="store_unavailable")
    return 0


class _Unreachable(Exception):
    """The Redis named as the spend store did not answer."""


def _read_options(args: argparse.Namespace) -> _Query:
    """Check the options that need no store: times, groupings, filters, files."""
    from governor.spend import default_spend_target
    from governor.spend._aggregate import check_grouping
    from governor.spend._open import is_redis_target
    from governor.spend._store import check_filters

    target = args.db or default_spend_target()
    check_prefix_shown(target, args.prefix)
    now = datetime.now(UTC)
    since = parse_when(args.since, now=now) if args.since else None
    until = parse_when(args.until, now=now) if args.until else None
    _check_range(args, since, until)
    shown = tuple(check_grouping(b) for b in args.by or DEFAULT_BY)
    by = shown
    if args.html or args.png:
        # Charts need the time buckets and the top tasks whatever was asked.
        by += tuple(b for b in ("hour", "day", "task") if b not in by)
    outputs = (("--html", args.html), ("--png", args.png))
    for option, path in outputs:
        check_output(option, path)
    store = None if is_redis_target(target) else target
    refuse_overwriting(outputs, [("--db" if args.db else "the spend store", store)])
    return _Query(since, until, check_filters(_filters(args.filter)), shown, by)


def _check_range(
    args: argparse.Namespace, since: datetime | None, until: datetime | None
) -> None:
    """Refuse a time range that holds no instant (since is inclusive, until not)."""
    from governor._errors import ConfigError

    if since is None or until is None or since < until:
        return
    raise ConfigError(
        f"--since {args.since} ({since:%Y-%m-%d %H:%M:%S %Z}) is not before "
        f"--until {args.until} ({until:%Y-%m-%d %H:%M:%S %Z}), so no call can "
        "match; the report covers since <= time < until: give the earlier "
        "time to --since"
    )


def _summarize(
    args: argparse.Namespace, query: _Query
) -> tuple[SpendSummary, str, int]:
    """The summary, the store's label, and how many duplicate lines were skipped."""
    from governor.spend import (
        SpendDataError,
        default_spend_target,
        open_store,
        summarize,
    )

    target = args.db or default_spend_target()
    _check_store_path(target)
    store = open_store(target, existing=True, prefix=args.prefix)
    if args.fmt == "table" and hasattr(store, "warn_duplicates"):
        # The table ends with a note saying so: one notice, not two.
        store.warn_duplicates = False
    try:
        records = store.query(query.since, query.until, query.filters)
        summary = summarize(records, query.by)
        skipped: int = getattr(store, "skipped_duplicates", 0)
        if not summary.total.calls:
            narrowed = bool(query.since or query.until or query.filters)
            note_if_nothing_stored(store, narrowed=narrowed)
    except RecursionError as exc:
        message = too_deep(shown_target(target), "a spend record")
        raise SpendDataError(message) from exc
    except Exception as exc:
        if redis_down(target, exc):
            given = bool(args.db)
            message = unreachable(target, exc, option="--db", given=given)
            raise _Unreachable(message) from exc
        raise
    finally:
        store.close()
    label = shown_target(target)
    if args.prefix is not None:
        label += f" (prefix {args.prefix})"
    return dataclasses.replace(summary, by=query.shown), label, skipped


def note_if_nothing_stored(store: Any, *, narrowed: bool = False) -> None:
    """Say on stderr where nothing was found when a Redis store holds no record
    at all under its prefix (a wrong ``--prefix`` is the usual cause).

    ``governor report``, ``replay`` and ``compare`` call it when their read
    found no call. Other stores are left alone: their path is what was named.

    Args:
        store: the spend store that was read, still open.
        narrowed: the read had a time range or filters, so that an empty
            result is no sign of a wrong prefix when the store holds any
            record at all.
    """
    from governor.spend import RedisSpendStore

    if not isinstance(store, RedisSpendStore):
        return
    if narrowed and _holds_any(store):
        return
    print(
        f"note: {store.url} holds no spend records under this prefix (keys "
        f"{printable(store.hash_key)} and {printable(store.index_key)}); if "
        "your services record spend under another RedisLedger prefix, pass "
        "the same with --prefix",
        file=sys.stderr,
    )


def _holds_any(store: Any) -> bool:
    """Whether the store holds a record, whatever its time or attribution."""
    from governor.spend import SpendDataError

    try:
        return next(iter(store.query()), None) is not None
    except SpendDataError:
        return True  # a record is there, if one that cannot be read


def _check_store_path(target: str) -> None:
    """Refuse a store path that is missing or a folder; URLs pass unchecked."""
    from governor._errors import ConfigError

    if "://" in target:
        return
    if not Path(target).exists():
        raise ConfigError(
            f"no spend store at {target}; pass --db or set GOVERNOR_SPEND_DB "
            "to the store your governor records to. A governor records only "
            'when given one: Governor(policy, spend="spend.sqlite3")'
        )
    if Path(target).is_dir():
        raise ConfigError(
            f"{target} is a folder, not a spend store; point --db (or "
            "GOVERNOR_SPEND_DB) at the SQLite file the governor records to or "
            "at a spend .jsonl file (spend records, not a span trace)"
        )
    problem = not_a_spend_file(target, reading=True)
    if problem is not None:
        raise ConfigError(
            f"{problem}; point --db (or GOVERNOR_SPEND_DB) at the SQLite file "
            "the governor records to, or at a spend .jsonl file"
        )


def _filters(pairs: Sequence[str]) -> dict[str, str | None]:
    """``--filter KEY=VALUE`` pairs by key; one value per key.

    A store keeps a call when it matches every filter, and a call has one
    value of each key, so two values of one key could match no call: that is
    refused rather than keeping only the last.
    """
    from governor._errors import ConfigError
    from governor.policies._model import as_name

    out: dict[str, str | None] = {}
    first: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--filter takes KEY=VALUE, got {pair!r}")
        if key == "tag.":
            raise ConfigError(
                f"cannot filter spend by {key!r}: name the tag, as in "
                "--filter tag.customer=acme"
            )
        # Attribution values are never empty, so "team=" can only mean unset.
        # Names are kept composed (NFC), as a policy keeps them: "café" typed
        # with a combining accent finds the calls charged to "café".
        value = as_name(value)
        if key in out and out[key] != (value or None):
            raise ConfigError(
                f"--filter {first[key]} and --filter {pair}: one value per key, "
                f"since a call has one {key}; report one {key} at a time, or "
                f"group by it (--by {key}) to see each {key}'s spend"
            )
        first.setdefault(key, pair)
        out[key] = value or None
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
    blocks = [_headline(summary, label)]
    for by in summary.by:
        title = f"Top {top} tasks" if by == "task" else f"By {by}"
        rows = [
            [printable(g.label), *_cells(g, summary)] for g in _rows(summary, by, top)
        ]
        blocks.append(title + "\n" + _align([by, *_COLUMNS], rows))
    return "\n\n".join(blocks)


def _headline(summary: SpendSummary, label: str) -> str:
    """``Spend in STORE: FIRST .. LAST UTC, N calls, $COST (saved $SAVED)``."""
    total = summary.total
    if not (total.calls and summary.first_ts and summary.last_ts):
        return f"Spend in {label}: no calls"
    calls = "1 call" if total.calls == 1 else f"{total.calls} calls"
    return (
        f"Spend in {label}: {_minute(summary.first_ts)} .. "
        f"{_minute(summary.last_ts)} UTC, {calls}, "
        f"${total.cost_usd:.6f} (saved ${total.saved_usd:.6f})"
    )


def _align(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(width(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [ljust(row[0], widths[0])]
        cells += [rjust(cell, w) for cell, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def render_json(summary: SpendSummary, label: str, top: int) -> str:
    """One JSON document: totals, then each grouping's rows; money as strings.

    The row of calls with the grouped field unset has the key null.
    """
    document = {
        "store": label,
        "first_ts": summary.first_ts.isoformat() if summary.first_ts else None,
        "last_ts": summary.last_ts.isoformat() if summary.last_ts else None,
        "total": summary.total.to_json_dict(),
        "groups": {
            by: [
                {"key": None if g.unset else g.key, **g.totals.to_json_dict()}
                for g in _rows(summary, by, top)
            ]
            for by in summary.by
        },
    }
    return json.dumps(document, indent=2)


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")
"""First characters that get a leading quote in CSV keys (see :func:`_inert`)."""
_CSV_SPECIAL = frozenset(',"\r\n')


def render_csv(summary: SpendSummary, top: int) -> str:
    """One CSV table with a ``by`` column naming each row's grouping.

    The row of calls with the grouped field unset has an empty key (no set
    value is empty: :func:`governor.spend.summarize` counts a blank one as unset).
    Lines end in ``\n``; a field holding a comma, a quote, ``\r`` or ``\n`` is
    quoted, so any CSV reader gets it back whole.
    """
    lines = [_csv_line(["by", "key", *_COLUMNS, *_CSV_ONLY])]
    for by in summary.by:
        for group in _rows(summary, by, top):
            key = "" if group.unset else _inert(group.key)
            counts = [str(group.totals.refused), str(group.totals.errors)]
            lines.append(_csv_line([by, key, *_cells(group, summary), *counts]))
    return "".join(lines)


def _csv_line(fields: Sequence[str]) -> str:
    """One RFC 4180 record ending in ``\n``.

    ``csv.writer`` with ``lineterminator="\n"`` leaves a bare ``\r`` unquoted,
    which breaks the line for readers, so quoting is decided here.
    """
    return ",".join(_csv_field(text) for text in fields) + "\n"


def _csv_field(text: str) -> str:
    if _CSV_SPECIAL.isdisjoint(text):
        return text
    return '"' + text.replace('"', '""') + '"'


def _inert(text: str) -> str:
    """Keep a spreadsheet from running a cell: "=cmd()" is shown, not run.

    Attribution values come from callers; a team named ``=HYPERLINK(...)``
    would be a formula in Excel or Sheets. A leading quote makes it text.
    A value that already starts with a quote gets one too, so that no two
    values print alike: ``-7`` is ``'-7`` and ``'-7`` is ``''-7``.
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
        _write("--html", Path(args.html), page.encode("utf-8"))
    if args.png:
        from governor.spend._png import render_png

        _write("--png", Path(args.png), render_png(charts))


def _write(option: str, path: Path, data: bytes) -> None:
    """Write an output file whole, or raise ConfigError saying why it could not
    be (an earlier file there is then left as it was)."""
    from governor._errors import ConfigError

    try:
        write_atomically(path, data)
    except OSError as exc:
        raise ConfigError(
            f"cannot write {option} {path}: {exc.strerror or exc}; give a path "
            "in a folder that exists and that you can write to"
        ) from exc


def _minute(ts: datetime) -> str:
    """``YYYY-MM-DD HH:MM``, with four-digit years (strftime drops zeros)."""
    return ts.isoformat(" ", "minutes")[:16]
