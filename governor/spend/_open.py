"""Where spend is recorded by default, and opening a store from a path or URL."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from governor._errors import ConfigError
from governor._files import SQLITE_HEADER
from governor._textlines import is_gzip
from governor.spend._jsonl import JsonlSpendStore, jsonl_kind
from governor.spend._redis import RedisSpendStore
from governor.spend._sqlite import SQLiteSpendStore

__all__ = [
    "DEFAULT_SPEND_PATH",
    "ENV_SPEND_DB",
    "check_prefix",
    "default_spend_target",
    "is_redis_target",
    "open_store",
]

ENV_SPEND_DB = "GOVERNOR_SPEND_DB"
"""Environment variable naming the spend store: a SQLite file, a ``.jsonl``
(or ``.ndjson``) trace file or a ``redis://`` URL. Read when a store is
opened without a target."""

DEFAULT_SPEND_PATH = Path(".governor") / "spend.sqlite3"
"""Used when ``GOVERNOR_SPEND_DB`` is unset, relative to the working directory."""

AnySpendStore = SQLiteSpendStore | JsonlSpendStore | RedisSpendStore

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_SQLITE_ADVICE = (
    "give a new file name, the SQLite file the governor records to, a .jsonl "
    "path or a redis:// URL"
)
_DEFAULT_REDIS_PREFIX = "governor:"


def default_spend_target() -> str:
    """Return ``$GOVERNOR_SPEND_DB``, else ``./.governor/spend.sqlite3``."""
    return os.environ.get(ENV_SPEND_DB) or str(DEFAULT_SPEND_PATH)


def is_redis_target(target: str) -> bool:
    """Whether ``target`` names a Redis spend store (a Redis URL)."""
    return target.startswith(_REDIS_SCHEMES)


def open_store(
    target: str | Path | None = None,
    *,
    existing: bool = False,
    prefix: str | None = None,
) -> AnySpendStore:
    """Open the spend store named by ``target`` (default: :func:`default_spend_target`).

    ``redis://``, ``rediss://`` and ``unix://`` URLs open a
    :class:`RedisSpendStore`, a path ending in ``.jsonl`` or ``.ndjson`` (in
    any case: ``.JSONL`` too) a :class:`JsonlSpendStore`, any other path a
    :class:`SQLiteSpendStore` (created with its folders when missing). An
    existing file that starts with the SQLite header is SQLite whatever its
    name (earlier releases made SQLite stores at ``.ndjson`` paths). With
    ``existing``, a path ending in ``.jsonl.gz`` or ``.ndjson.gz`` or a file
    that starts with the gzip magic bytes opens as gzip-compressed spend
    JSONL, for reading.

    Args:
        target: the store's path or URL.
        existing: for readers: open a SQLite file read-only, never writing
            it (nor upgrading an older one), and refuse one that is not
            already a spend store, rather than adding a table to someone's
            database.
        prefix: the key prefix of a Redis store (default ``governor:``); only
            for Redis URLs.

    Raises:
        ConfigError: ``prefix`` is given for a store that is not Redis, or
            holds a brace; or a ``.jsonl.gz`` path is opened for writing.
        ConfigError: the SQLite path cannot be a spend store: an existing
            file that is not a SQLite database (left untouched), a file
            SQLite cannot open or create there, or one made by a newer
            llm-governor (a newer schema version).
        SpendDataError: ``existing`` is set and the SQLite file is missing,
            not a SQLite database or holds no spend table.
    """
    text = str(target) if target is not None else default_spend_target()
    check_prefix(text, prefix)
    if is_redis_target(text):
        chosen = _DEFAULT_REDIS_PREFIX if prefix is None else prefix
        return RedisSpendStore.from_url(text, prefix=chosen)
    scheme, sep, _ = text.partition("://")
    if sep and scheme.isalnum():
        raise ConfigError(
            f"spend store {text!r}: the governor opens redis://, rediss:// and "
            "unix:// URLs, a .jsonl path or a SQLite path, not "
            f"{scheme}:// (write records elsewhere with your own SpendStore)"
        )
    if Path(text).is_dir():
        raise ConfigError(
            f"spend store {text!r} is a folder: name a file in it, e.g. "
            f"{Path(text) / 'spend.sqlite3'}"
        )
    kind = jsonl_kind(text)
    if kind == "plain":
        return JsonlSpendStore(text)
    if kind == "gzip" or (existing and is_gzip(Path(text))):
        return _compressed(text, existing)
    if existing:
        return _sqlite_reader(text)
    _check_sqlite_file(text)
    return _sqlite_store(text)


def _check_sqlite_file(text: str) -> None:
    """Refuse an existing file that is not a SQLite database, untouched.

    SQLite would say only "file is not a database" or "unable to open
    database file", naming no path. A missing or empty file is a new
    database.
    """
    path = Path(text)
    if not path.exists():
        return
    if not path.is_file():
        problem = "is not a regular file (a device, a pipe or a socket)"
    else:
        try:
            with path.open("rb") as handle:
                head = handle.read(len(SQLITE_HEADER))
        except OSError as exc:
            problem = f"cannot be read ({exc.strerror or exc})"
        else:
            if not head or head.startswith(SQLITE_HEADER):
                return
            problem = (
                "is not a SQLite database (it does not start with the SQLite "
                "header), so it cannot be a SQLite spend store; it was left as "
                "it is"
            )
    raise ConfigError(f"spend store {text} {problem}: {_SQLITE_ADVICE}")


def _sqlite_store(text: str) -> SQLiteSpendStore:
    """The SQLite store at ``text``; a file SQLite cannot open is named."""
    try:
        return SQLiteSpendStore(text)
    except (sqlite3.Error, OSError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError(
            f"spend store {text} cannot be used as a SQLite spend store "
            f"({reason}): check that its folder exists and is writable, or "
            f"{_SQLITE_ADVICE}"
        ) from exc


def _sqlite_reader(text: str) -> SQLiteSpendStore:
    """The SQLite store at ``text``, opened read-only; SQLite's errors named."""
    try:
        return SQLiteSpendStore(text, read_only=True)
    except (sqlite3.Error, OSError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError(
            f"cannot read the spend store {text} ({reason}): check that the "
            "file can be read, or point at the SQLite file the governor "
            "records to, a .jsonl path or a redis:// URL"
        ) from exc


def _compressed(text: str, existing: bool) -> JsonlSpendStore:
    """A gzip-compressed spend JSONL, which only readers may open."""
    if not existing:
        raise ConfigError(
            f"spend store {text!r} is gzip-compressed JSONL, which the governor "
            "reads but cannot append to; record to a .jsonl path and compress "
            "it afterwards"
        )
    return JsonlSpendStore(text)


def check_prefix(target: str, prefix: str | None) -> None:
    """Refuse a key prefix for a store that is not Redis, or one with braces.

    Braces would move the ``{spend}`` Redis Cluster hash tag that keeps both
    keys of a store in one slot.

    Raises:
        ConfigError: what was wrong and what to give instead.
    """
    if prefix is None:
        return
    if not is_redis_target(target):
        raise ConfigError(
            f"a key prefix applies only to a Redis spend store, and {target!r} "
            "is not one: drop the prefix, or name the redis:// URL that holds "
            "the records"
        )
    if "{" in prefix or "}" in prefix:
        raise ConfigError(
            f"Redis spend prefix {prefix!r} must be free of '{{' and '}}': the "
            "store adds the {spend} hash tag itself; give the prefix alone, "
            "e.g. 'deployA:' for keys deployA:{spend}:h and deployA:{spend}:z"
        )
