"""What the spend commands say about a spend store they cannot use.

``governor report``, ``replay``, ``compare`` and ``demo`` share it, so that a
Redis that is down, or a file that is no spend store, reads the same wherever
it is named.
"""

from __future__ import annotations

from pathlib import Path

from governor._files import SQLITE_HEADER

__all__ = [
    "SQLITE_HEADER",
    "check_prefix_shown",
    "not_a_spend_file",
    "redis_down",
    "shown_target",
    "unreachable",
]

_GZIP_MAGIC = b"\x1f\x8b"


def not_a_spend_file(target: str, *, reading: bool) -> str | None:
    """Why the existing local file ``target`` cannot be a spend store, or None.

    A store path not named ``.jsonl`` or ``.ndjson`` (``.gz`` after them, any
    case) is opened as SQLite, so its file must be one: a JSON file, a
    device (``/dev/null``) or a text file such as ``/proc/version`` is said
    to be what it is before SQLite reports
    "file is not a database" or "unable to open database file". An empty
    file is a new SQLite database to a writer but no spend store to a
    reader. URLs, missing paths and folders are left to the caller; so is a
    JSONL file (its reader names a bad line) and, for a reader, a gzip
    file (read as compressed spend JSONL).

    Args:
        target: the store's path or URL.
        reading: the command reads the store (``report``) rather than
            recording to it (``demo``).
    """
    from governor.spend._jsonl import jsonl_kind

    if "://" in target:
        return None
    path = Path(target)
    if not path.exists() or path.is_dir():
        return None
    if not path.is_file():
        return f"{target} is not a regular file (a device, a pipe or a socket)"
    try:
        with path.open("rb") as handle:
            head = handle.read(len(SQLITE_HEADER))
    except OSError as exc:
        return f"cannot read {target}: {exc.strerror or exc}"
    if jsonl_kind(target) is not None or head.startswith(SQLITE_HEADER):
        return None
    if head.startswith(_GZIP_MAGIC):
        if reading:
            return None
        return (
            f"{target} is gzip-compressed, which the governor reads as spend "
            "JSONL but cannot record to"
        )
    if not head:
        return f"{target} is an empty file, not a spend store" if reading else None
    return (
        f"{target} is not a SQLite database (it does not start with the SQLite "
        "header), so it cannot be a SQLite spend store"
    )


def shown_target(target: str) -> str:
    """The store's path or URL as output may show it: a URL's password masked.

    Every line, JSON field or page title naming the store shows this, never
    the ``--db`` (or ``GOVERNOR_SPEND_DB``) value as given.
    """
    if "://" not in target:
        return target
    from governor.stores._redis import redact_url

    return redact_url(target)


def check_prefix_shown(target: str, prefix: str | None) -> None:
    """Refuse a ``--prefix`` the store cannot take, its URL's password masked.

    Raises:
        ConfigError: as :func:`governor.spend._open.check_prefix` does.
    """
    from governor._errors import ConfigError
    from governor.spend._open import check_prefix

    try:
        check_prefix(target, prefix)
    except ConfigError as exc:
        shown = shown_target(target)
        if shown == target:
            raise
        raise ConfigError(str(exc).replace(target, shown)) from None


def redis_down(target: str, exc: BaseException) -> bool:
    """Whether ``exc`` says the Redis at ``target`` could not be reached."""
    from governor.spend._open import is_redis_target

    if not is_redis_target(target):
        return False
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return isinstance(exc, RedisConnectionError | RedisTimeoutError)


def unreachable(target: str, exc: BaseException, *, option: str, given: bool) -> str:
    """What was wrong and what to do, with any password in the URL hidden.

    Args:
        target: the store's URL.
        exc: the error the Redis client raised.
        option: the command's option naming the store (``--db``).
        given: whether ``option`` was given (else the URL came from
            ``GOVERNOR_SPEND_DB``).
    """
    from governor.spend import ENV_SPEND_DB

    source = f"from {option}" if given else f"from {ENV_SPEND_DB}"
    cause = str(exc).rstrip(".")
    return (
        f"cannot reach the Redis spend store at {shown_target(target)} ({source}): "
        f"{cause}. Check the URL (host, port, database, password, TLS), start "
        f"Redis there, or pass {option} (or set {ENV_SPEND_DB}) to the store "
        "your services record spend to."
    )
