"""``governor budget status|reset``: read or reset budgets in the Redis store.

The store is the Redis named by ``--redis-url``, else ``GOVERNOR_REDIS_URL``,
else the library's default ``redis://127.0.0.1:6379/0``. The in-memory ledger
lives inside one process, so there is nothing for a command line to read there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from governor.cli._fail import fail
from governor.cli._text import given, ljust, printable, width

if TYPE_CHECKING:
    from governor._errors import GovernorError
    from governor.stores import Balance
    from governor.stores._redis import RedisLedger

ENV_REDIS_URL = "GOVERNOR_REDIS_URL"
"""The Redis URL of the budget store when ``--redis-url`` is not given."""

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
"""The store when neither is set: ``RedisConfig``'s default, written out here
so that ``governor budget --help`` need not import the Redis client."""


def register(sub: Any, name: str, help_text: str) -> None:
    """Add ``budget`` and its actions to the command line."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=help_text
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    status = actions.add_parser(
        "status",
        help="every budget line: its key, period, limit, spent, reserved, next reset",
    )
    status.add_argument(
        "scope",
        metavar="SCOPE",
        nargs="?",
        type=given("a scope such as team or team:search"),
        help="show only these lines: a kind ('team', 'task': every line of "
        "that kind), a scope ('team:search': all its windows) or a line key "
        "as the LINE KEY column shows it; every line when left out",
    )
    _store_arguments(status)
    status.set_defaults(handler=_status)
    reset = actions.add_parser(
        "reset",
        help="zero the spend of a budget line (all its windows, or one); what "
        "calls in flight hold stays until they settle",
    )
    reset.add_argument(
        "scope",
        metavar="SCOPE",
        type=given("a line key such as team:search", required=True),
        help="a line key as the LINE KEY column of `status` shows it, e.g. "
        "'team:search#day:2026-12-04@UTC' (that window only), or the scope "
        "before its '#', e.g. 'team:search' (every window)",
    )
    _store_arguments(reset)
    reset.set_defaults(handler=_reset)


def _store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis-url",
        default=None,
        type=given("a redis://, rediss:// or unix:// URL"),
        help=f"redis://, rediss:// or unix:// URL of the store (default: "
        f"${ENV_REDIS_URL}, else {DEFAULT_REDIS_URL})",
    )
    parser.add_argument(
        "--prefix",
        default="governor:",
        type=given("a key prefix"),
        help="key prefix (default: governor:)",
    )
    parser.add_argument(
        "--hash-tag",
        default="budgets",
        type=given("a hash tag"),
        help="key hash tag (default: budgets)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document to stdout"
    )


def _store_url(args: argparse.Namespace) -> tuple[str, str]:
    """Return the store's URL and where it came from, for error messages."""
    if args.redis_url:
        return args.redis_url, "from --redis-url"
    from_env = os.environ.get(ENV_REDIS_URL)
    if from_env:
        return from_env, f"from ${ENV_REDIS_URL}"
    return DEFAULT_REDIS_URL, f"the default: no --redis-url, no {ENV_REDIS_URL}"


def _ledger(args: argparse.Namespace) -> RedisLedger:
    """The store the options name.

    Raises:
        ConfigError: the URL is not a Redis URL, or the prefix or hash tag
            holds a brace; the message names the option (or the variable
            the URL came from) and what to give instead.
    """
    from governor._errors import ConfigError
    from governor.stores._redis import RedisConfig, RedisLedger

    try:
        config = RedisConfig(url=_store_url(args)[0], attempts=2)
    except ConfigError as exc:
        if args.redis_url:
            raise ConfigError(
                f"--redis-url: {exc}; give the URL of the Redis your services use"
            ) from exc
        raise ConfigError(
            f"${ENV_REDIS_URL}: {exc}; correct or unset {ENV_REDIS_URL}, or pass "
            "--redis-url"
        ) from exc
    try:
        return RedisLedger(config, prefix=args.prefix, hash_tag=args.hash_tag)
    except ConfigError as exc:
        raise ConfigError(
            f"--prefix {args.prefix!r} and --hash-tag {args.hash_tag!r} must be "
            "free of '{' and '}' (the hash tag is written between braces in "
            "every key); give the prefix and hash tag your services give "
            "RedisLedger"
        ) from exc


def _status(args: argparse.Namespace) -> int:
    from governor._errors import ConfigError, GovernorError

    try:
        ledger = _ledger(args)
    except ConfigError as exc:
        return _fail(args, exc, status=2)
    try:
        listed = ledger.keys()
        keys = [key for key in listed if _shown(key, args.scope)]
        rows = [describe(key, ledger.balance(key)) for key in keys]
    except GovernorError as exc:
        return _fail(args, exc)
    finally:
        ledger.close()
    if args.json:
        print(json.dumps({"prefix": args.prefix, "lines": rows}, indent=2))
    elif rows:
        print(_table(rows))
    elif args.scope is not None:
        print(
            f"governor budget: no line matches {args.scope!r}; give a kind "
            "('team'), a scope ('team:search') or a line key as 'governor "
            "budget status' shows it",
            file=sys.stderr,
        )
    else:
        print(_no_lines(args))
    return 1 if args.scope is not None and not rows else 0


def _no_lines(args: argparse.Namespace) -> str:
    """Say where nothing was found: a wrong --prefix is the usual cause."""
    from governor.stores._redis import redact_url

    return (
        f"no budget lines under prefix {args.prefix!r} (hash tag "
        f"{args.hash_tag!r}) in {redact_url(_store_url(args)[0])}; "
        "if your services give RedisLedger another prefix or hash_tag, pass "
        "the same with --prefix and --hash-tag"
    )


def _reset(args: argparse.Namespace) -> int:
    from governor._errors import ConfigError, GovernorError

    try:
        ledger = _ledger(args)
    except ConfigError as exc:
        return _fail(args, exc, status=2)
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
        print("\n".join(f"reset {printable(key)}" for key in keys))
    else:
        print(
            f"governor budget: no line matches {args.scope!r}; give a line's key "
            "as the LINE KEY column of 'governor budget status' shows it, or "
            "the scope before its '#', e.g. 'team:search'",
            file=sys.stderr,
        )
    return 0 if keys else 1


def _shown(key: str, scope: str | None) -> bool:
    """Whether ``status`` shows line ``key``: every line when ``scope`` is
    None, a kind's lines for a kind (no ``:``), else as :func:`_matches`."""
    if scope is None:
        return True
    if ":" not in scope:
        from governor.policies._model import as_name

        return key.startswith(as_name(scope).strip().lower() + ":")
    return _matches(key, scope)


def _matches(key: str, scope: str) -> bool:
    """Whether line ``key`` is ``scope``'s, any of its windows; names are
    kept composed (NFC), so a decomposed ``scope`` matches them too."""
    from governor.policies._model import as_name

    kind, _, value = as_name(scope).partition(":")
    # A kind is one of a few lower-case words ('Team:search' means it); the
    # value is kept as given: a task id may begin or end with a space.
    scope = f"{kind.strip().lower()}:{value}"
    return key == scope or key.startswith(scope + "#")


def _fail(args: argparse.Namespace, exc: GovernorError, status: int = 1) -> int:
    """Report ``exc``: exit ``status``, 2 for a bad option, 1 for a store
    that does not answer."""
    from governor._errors import StoreUnavailable

    message = str(exc)
    if isinstance(exc, StoreUnavailable):
        message = _unreachable(args, exc)
    return fail(args, "governor budget", exc, status, message=message)


def _unreachable(args: argparse.Namespace, exc: Exception) -> str:
    """Advice for a command line, not the library's (which names a Policy)."""
    from governor.stores._redis import redact_url, refusal_advice

    url, source = _store_url(args)
    reply = exc.__cause__
    if reply is not None and refusal_advice(reply) is not None:
        return _refused(args, exc, reply)
    cause = str(exc.__cause__ or exc).rstrip(".")
    return (
        f"cannot reach the Redis budget store at {redact_url(url)} ({source}): "
        f"{cause}. Check the URL (host, port, database, password, TLS), start "
        f"Redis there, or pass --redis-url (or set {ENV_REDIS_URL}) to the store "
        "your services use. The in-memory store lives inside one process and "
        "cannot be read from here."
    )


def _refused(args: argparse.Namespace, exc: Exception, reply: BaseException) -> str:
    """A store that answers but refuses the command (a Redis Cluster node, a
    read-only replica, a full or misconfigured server): the server's reply and
    what to change, without the library's advice on failure modes."""
    from governor.stores._redis import cluster_advice, redact_url, refusal_advice

    url, source = _store_url(args)
    cause = getattr(exc, "cause", None) or str(reply)
    advice = cluster_advice(reply, url) or refusal_advice(reply)
    return (
        f"the Redis budget store at {redact_url(url)} ({source}) refused the "
        f"command: {cause.rstrip('.')}. {advice}; or pass --redis-url (or set "
        f"{ENV_REDIS_URL}) to the store your services use."
    )


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
        left_usd=usd(_at_least_0(balance.left_nanos)),
        limit_tokens=balance.limit_tokens,
        spent_tokens=balance.spent_tokens,
        reserved_tokens=balance.reserved_tokens,
        left_tokens=_at_least_0(balance.left_tokens),
    )
    # Only a line spent past its limit (a provider that ignored max_tokens).
    over_nanos = _over(balance.spent_nanos, balance.limit_nanos)
    if over_nanos:
        row["over_usd"] = usd(over_nanos)
    over_tokens = _over(balance.spent_tokens, balance.limit_tokens)
    if over_tokens:
        row["over_tokens"] = over_tokens
    return row


def _at_least_0(left: int | None) -> int | None:
    """Room left, never below 0 (spend past the limit is ``over_*``)."""
    return None if left is None else max(left, 0)


def _over(spent: int, limit: int | None) -> int:
    """How far spend went past a limit; 0 when within it or unlimited."""
    return 0 if limit is None else max(spent - limit, 0)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _table(rows: list[dict[str, Any]]) -> str:
    """One row per line, led by its key as ``budget reset`` takes it."""
    header = ("LINE KEY", "PERIOD", "LIMIT", "SPENT", "RESERVED", "NEXT RESET")
    body = [
        tuple(
            printable(cell)
            for cell in (
                row["key"],
                _period(row),
                _amounts(row, "limit"),
                _amounts(row, "spent") + _overrun(row),
                _amounts(row, "reserved"),
                row["next_reset"] or "-",
            )
        )
        for row in rows
    ]
    widths = [max(width(r[i]) for r in (header, *body)) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            ljust(cell, columns) for cell, columns in zip(r, widths, strict=True)
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


def _overrun(row: dict[str, Any]) -> str:
    """How far a line's spend went past its limit, for the SPENT column."""
    usd, tokens = row.get("over_usd"), row.get("over_tokens")
    parts = [f"${usd}" if usd else "", f"{tokens} tok" if tokens else ""]
    over = " / ".join(p for p in parts if p)
    return f" (over by {over})" if over else ""


def _amounts(row: dict[str, Any], what: str) -> str:
    usd, tokens = row.get(f"{what}_usd"), row.get(f"{what}_tokens")
    if what == "limit":
        parts = [
            f"${usd}" if usd is not None else "",
            f"{tokens} tok" if tokens is not None else "",
        ]
        return " / ".join(p for p in parts if p) or "-"
    return f"${usd} / {tokens} tok" if usd is not None else "-"
