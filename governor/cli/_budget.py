"""``governor budget status|reset``: read or reset budgets in the Redis store.

The store is the Redis named by ``--redis-url`` or ``GOVERNOR_REDIS_URL``.
The in-memory ledger lives inside one process, so there is nothing for a
command line to read there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from governor.stores import Balance
    from governor.stores._redis import RedisLedger

ENV_REDIS_URL = "GOVERNOR_REDIS_URL"
"""The Redis URL of the budget store when ``--redis-url`` is not given."""


def register(sub: Any, name: str, help_text: str) -> None:
    """Add ``budget`` and its actions to the command line."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=help_text
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    status = actions.add_parser(
        "status",
        help="every budget line: limit, spent, reserved, period, next reset",
    )
    _store_arguments(status)
    status.set_defaults(handler=_status)
    reset = actions.add_parser(
        "reset", help="zero the spend of a budget line (all its windows)"
    )
    reset.add_argument(
        "scope",
        metavar="SCOPE",
        help="a line key from `status`, e.g. 'team:search' (every window) or "
        "'team:search#day:2026-12-04@UTC' (that window only)",
    )
    _store_arguments(reset)
    reset.set_defaults(handler=_reset)


def _store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis-url",
        default=os.environ.get(ENV_REDIS_URL),
        help=f"redis:// or rediss:// URL of the store (default: ${ENV_REDIS_URL})",
    )
    parser.add_argument(
        "--prefix", default="governor:", help="key prefix (default: governor:)"
    )
    parser.add_argument(
        "--hash-tag", default="budgets", help="key hash tag (default: budgets)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document to stdout"
    )


def _ledger(args: argparse.Namespace) -> RedisLedger | None:
    from governor.stores._redis import RedisConfig, RedisLedger

    if not args.redis_url:
        print(
            "governor budget: no budget store configured. Pass --redis-url "
            f"redis://host:6379/0 or set {ENV_REDIS_URL}; the in-memory store "
            "lives inside one process and cannot be read from here.",
            file=sys.stderr,
        )
        return None
    config = RedisConfig(url=args.redis_url, attempts=2)
    return RedisLedger(config, prefix=args.prefix, hash_tag=args.hash_tag)


def _status(args: argparse.Namespace) -> int:
    from governor._errors import GovernorError

    ledger = _ledger(args)
    if ledger is None:
        return 2
    try:
        keys = ledger.keys()
        rows = [describe(key, ledger.balance(key)) for key in keys]
    except GovernorError as exc:
        return _fail(args, exc)
    finally:
        ledger.close()
    if args.json:
        print(json.dumps({"prefix": args.prefix, "lines": rows}, indent=2))
    else:
        print(_table(rows))
    return 0


def _reset(args: argparse.Namespace) -> int:
    from governor._errors import GovernorError

    ledger = _ledger(args)
    if ledger is None:
        return 2
    try:
        listed = ledger.keys()
        keys = [key for key in listed if _matches(key, args.scope)]
        for key in keys:
            ledger.reset(key)
    except GovernorError as exc:
        return _fail(args, exc)
    finally:
        ledger.close()
    if args.json:
        print(json.dumps({"reset": keys}))
    elif keys:
        print("\n".join(f"reset {key}" for key in keys))
    else:
        print(f"governor budget: no line matches {args.scope!r}", file=sys.stderr)
    return 0 if keys else 1


def _matches(key: str, scope: str) -> bool:
    return key == scope or key.startswith(scope + "#")


def _fail(args: argparse.Namespace, exc: Exception) -> int:
    from governor._errors import GovernorError

    if args.json and isinstance(exc, GovernorError):
        print(json.dumps({"error": exc.to_dict()}))
    else:
        print(f"governor budget: {exc}", file=sys.stderr)
    return 1


def describe(key: str, balance: Balance | None) -> dict[str, Any]:
    """Return one line's figures as plain data (dollars as decimal strings)."""
    from governor._money import nanos_to_usd
    from governor.budgets import parse_line_key

    window = parse_line_key(key)
    row: dict[str, Any] = {
        "key": key,
        "scope": window.base,
        "period": window.period,
        "timezone": window.timezone,
        "window_s": window.window_s,
        "window_start": _iso(window.starts_at),
        "next_reset": _iso(window.resets_at),
    }
    if balance is None:  # expired between listing and reading
        return row

    def usd(nanos: int | None) -> str | None:
        return None if nanos is None else f"{nanos_to_usd(nanos):f}"

    row.update(
        limit_usd=usd(balance.limit_nanos),
        spent_usd=usd(balance.spent_nanos),
        reserved_usd=usd(balance.reserved_nanos),
        left_usd=usd(balance.left_nanos),
        limit_tokens=balance.limit_tokens,
        spent_tokens=balance.spent_tokens,
        reserved_tokens=balance.reserved_tokens,
        left_tokens=balance.left_tokens,
    )
    return row


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no budget lines in the store"
    header = ("SCOPE", "PERIOD", "LIMIT", "SPENT", "RESERVED", "NEXT RESET")
    body = [
        (
            row["scope"],
            _period(row),
            _amounts(row, "limit"),
            _amounts(row, "spent"),
            _amounts(row, "reserved"),
            row["next_reset"] or "-",
        )
        for row in rows
    ]
    widths = [max(len(r[i]) for r in (header, *body)) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(width) for cell, width in zip(r, widths, strict=True)
        ).rstrip()
        for r in (header, *body)
    )


def _period(row: dict[str, Any]) -> str:
    period = str(row["period"])
    if row["window_s"] is not None:
        return f"rolling {Decimal(str(row['window_s'])).normalize():f} s"
    if row["timezone"]:
        return f"{period} ({row['timezone']})"
    return period


def _amounts(row: dict[str, Any], what: str) -> str:
    usd, tokens = row.get(f"{what}_usd"), row.get(f"{what}_tokens")
    if what == "limit":
        parts = [
            f"${usd}" if usd is not None else "",
            f"{tokens} tok" if tokens is not None else "",
        ]
        return " / ".join(p for p in parts if p) or "-"
    return f"${usd} / {tokens} tok" if usd is not None else "-"
