"""A Redis ledger: budgets that hold across processes and hosts, exactly.

Each ledger step (reserve, settle, release, renew) is one Lua script run with
``EVALSHA`` (``register_script``, reloaded on ``NOSCRIPT``), so the check and
the hold over every line of a call happen in one atomic step: no
read-modify-write race, no overshoot by the concurrency. Holds are leases with
a deadline taken from the server's clock (``TIME``); an expired hold is reaped
by the next script that runs, so a crashed worker's reservation comes back
after its lease. :meth:`RedisLedger.renew` extends a lease for long streams.

Key layout (``ns`` is ``prefix + "{" + hash_tag + "}:"``, e.g.
``governor:{budgets}:``)::

    ns + "l:" + line key   hash: limits, spent, reserved, ttl, rolling window
    ns + "r:" + line key   hash: a rolling line's spend per sub-bucket
    ns + "h:" + hold id    hash: the hold's lines, amounts, deadline, state
    ns + "holds"           sorted set: live hold ids by deadline
    ns + "lines"           set: line keys, for listing (reserves prune it)

Hash slots and Redis Cluster: every key carries the same hash tag, so every
script touches one slot, and a cluster proxy (or a managed endpoint) that
routes each command by its keys' slot can serve the ledger. The client is not
cluster-aware: it talks to the one endpoint of the URL and follows no
redirects, so a URL that names a plain Redis Cluster node gets ``MOVED``,
``ASK``, ``CROSSSLOT`` or ``CLUSTERDOWN`` for keys of other slots, and the
step raises :class:`governor.StoreUnavailable` saying so. Scripts also reach
keys of the same slot that they derive from declared ones (the lines of an
expired hold being reaped). The trade-off: one tag puts all budget state of
one ledger on one shard, so a single shard carries every reserve and settle
(tens of thousands of scripts a second on one core). To spread load, give each
tenant its own ledger with ``hash_tag=<org>``; then a call's lines must all
belong to that tenant, and no budget can span tenants.

Numbers: amounts are integer nano-dollars and tokens; Lua numbers are doubles,
exact below 2**53, so a line's limit and spend must stay under about 9 million
dollars (checked on the way in).

Failures: transient errors (connection refused or reset, timeouts, a replica
being promoted) are retried with tenacity a bounded number of times; then the
call raises :class:`governor.StoreUnavailable`. A server that refuses a step
(``OOM`` at maxmemory, ``MISCONF``, ``NOPERM``, ``BUSY``, Lua scripts, a
Redis Cluster node's redirects) or its credentials (``WRONGPASS``,
``NOAUTH``) raises it at once, naming the refusal and what to change; a
connection setting redis-py refuses only when it connects raises
:class:`governor.ConfigError`. Wrap the ledger in
:class:`~governor.stores.FailoverLedger` to choose fail-closed or fail-open.
A full connection pool is no outage: a step that finds every connection busy
for ``pool_timeout_s`` raises :class:`PoolExhausted` (not StoreUnavailable,
so the failover does not mark the store down), and a settle or release that
keeps finding it full is written by the background retries instead.
Retries are safe: a retried reserve finds its hold id and admits once, a
retried settle finds the id settled and charges once.

Cancellation: an asyncio step cancelled while its command is on the wire
raises :class:`asyncio.CancelledError` (even where redis-py on Python 3.11
swallows it), but the command may have run: after a cancelled ``areserve``,
release the hold id (shielded) to give its room back at once.
"""

from __future__ import annotations

import asyncio
import difflib
import functools
import inspect
import logging
import math
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import parse_qs, parse_qsl, unquote, urlsplit

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript, Script
from redis.retry import Retry
from tenacity import (
    AsyncRetrying,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from governor._errors import (
    ConfigError,
    GovernorError,
    SlotUnavailable,
    StoreUnavailable,
)
from governor._forks import start_over_in_children
from governor._quiet import Quiet
from governor.policies._base import mask_userinfo, secret_name
from governor.stores._base import Balance, Line, Refusal
from governor.stores._redis_checks import (
    LimitWatch,
    aread_memory_settings,
    eviction_warning,
    read_memory_settings,
)
from governor.stores._redis_options import (
    FILE_OPTIONS,
    misspelt_hint,
    option_problem,
    tls_problem,
)
from governor.stores._retry import Retrier

if TYPE_CHECKING:
    from governor.stores._semaphore import RedisSemaphore

__all__ = [
    "DEFAULT_REDIS_URL",
    "MAX_EXACT",
    "PoolExhausted",
    "RedisConfig",
    "RedisConnections",
    "RedisLedger",
    "redact_url",
]

T = TypeVar("T")

logger = logging.getLogger(__name__)

DEFAULT_REDIS_URL: Final = "redis://127.0.0.1:6379/0"
MAX_EXACT: Final = 2**53 - 1
"""The largest amount the ledger keeps exact (Lua numbers are doubles)."""

_SETTLED_WITHOUT_HOLD: Final = 2
"""The settle script's reply when it charged spend but found no live hold."""
_LATE_SETTLE_WARN_EVERY_S: Final = 60.0
"""At most one warning this often about settles that found their hold gone."""

_TRANSIENT: Final = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
)

_POOL_EMPTY: Final = "No connection available"
"""How redis-py's blocking pools (sync and asyncio) say none came free in time."""
_MUST_LAND: Final = frozenset({"settle", "release"})
"""Steps that must reach Redis in the end: their callers queue them on
StoreUnavailable, so a full pool raises that for them (see PoolBusy)."""
_POOL_WARN_EVERY_S: Final = 60.0
"""At most one warning this often about steps a full pool sent to the background."""


class PoolExhausted(SlotUnavailable):
    """No connection of the Redis pool came free within ``pool_timeout_s``.

    Redis itself answers: the process runs more Redis steps at once than
    ``RedisConfig.max_connections``. This is not an outage, so the failover
    does not mark the store down; the step was not sent, and a governed call
    that needed it is refused before it is sent. A
    :class:`~governor.SlotUnavailable` (and so a ``TimeoutError``): the slot
    that stayed busy is a pooled connection.

    Attributes:
        key: the pool's Redis URL, password hidden.
        limit: the pool's size (``max_connections``).
        timeout_s: how long the step waited (``pool_timeout_s``).
        step: the step that could not run, e.g. ``"reserve"``.
    """

    code = "store_pool_exhausted"

    def __init__(self, url: str, step: str, limit: int, timeout_s: float) -> None:
        self.key = url
        self.limit = limit
        self.timeout_s = timeout_s
        self.step = step
        GovernorError.__init__(self, _pool_message(url, step, limit, timeout_s))

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "step": self.step}


class PoolBusy(StoreUnavailable):
    """A settle or release that a full pool kept from Redis, for a while.

    Raised instead of :class:`PoolExhausted` for steps that must reach Redis
    in the end, so that callers which queue a step on StoreUnavailable (slot
    releases) queue it. :class:`RedisLedger` writes its own settles and
    releases in the background instead, so the failover never sees one.
    """


def _pool_message(url: str, step: str, limit: int, timeout_s: float) -> str:
    return (
        f"the Redis connection pool for {url} is exhausted: all {limit} "
        f"connection(s) stayed busy for {timeout_s} s, so {step} was not sent. "
        "Redis itself is not known to be down: this process runs more Redis "
        "steps at once than its pool holds. Raise RedisConfig.max_connections "
        "(one per call in flight, per process and per event loop) or "
        "RedisConfig.pool_timeout_s, or run fewer calls at once."
    )


def _pool_exhausted(exc: BaseException) -> bool:
    """Whether redis-py gave up waiting for a free connection of its pool."""
    return isinstance(exc, redis.exceptions.ConnectionError) and str(exc).startswith(
        _POOL_EMPTY
    )


def _retryable(exc: BaseException, what: str) -> bool:
    """A transient error worth another try of the step ``what``.

    A full pool was waited for already (``pool_timeout_s``): only a step
    that must land waits for it again. Credentials the server refused
    (``WRONGPASS``, ``NOAUTH``) stay refused, so they are not tried again.
    """
    if _pool_exhausted(exc):
        return what in _MUST_LAND
    if isinstance(exc, redis.exceptions.AuthenticationError):
        return False
    return isinstance(exc, _TRANSIENT)


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisConfig:
    """How to reach Redis, shared by the ledger and the semaphores.

    Attributes:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` for
            TLS, or ``unix://``.
        max_connections: size of the blocking connection pool (per process,
            and per event loop for asyncio callers); callers beyond it wait.
        pool_timeout_s: how long a caller waits for a free connection (0:
            not at all); then its step raises :class:`PoolExhausted`.
        socket_timeout_s: how long one command may take before it counts as
            failed (a slow Redis is treated like an unreachable one); above 0.
        connect_timeout_s: how long opening a connection may take; above 0.
        attempts: tries per step for transient errors (1 = no retry).
        retry_wait_s: wait before the first retry; doubles, with jitter.
        connection_kwargs: passed to redis-py's connections, e.g.
            ``{"ssl_ca_certs": "ca.pem"}`` for ``rediss://``.

    Every value is checked when the config is made (and the URL's port,
    database and option values with it, and the values of
    ``connection_kwargs``), so a bad one raises
    :class:`~governor.ConfigError` at once rather than at the first call. The
    files ``connection_kwargs`` names are looked at when a connection fails:
    one that is missing then raises ConfigError, not StoreUnavailable.
    """

    url: str = DEFAULT_REDIS_URL
    max_connections: int = 50
    pool_timeout_s: float = 5.0
    socket_timeout_s: float = 2.0
    connect_timeout_s: float = 2.0
    attempts: int = 3
    retry_wait_s: float = 0.05
    connection_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        """The config with the URL's password and secret options masked."""
        shown: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["url"] = redact_url(self.url) if isinstance(self.url, str) else self.url
        shown["connection_kwargs"] = {
            key: "***" if _secret(key) else value
            for key, value in dict(self.connection_kwargs).items()
        }
        body = ", ".join(f"{name}={value!r}" for name, value in shown.items())
        return f"RedisConfig({body})"

    def __post_init__(self) -> None:
        if not isinstance(self.url, str):
            raise ConfigError(
                f"RedisConfig.url must be a string such as {DEFAULT_REDIS_URL!r}, "
                f"got {type(self.url).__name__}"
            )
        scheme = urlsplit(self.url).scheme.lower()
        if scheme not in ("redis", "rediss", "unix"):
            # Not a Redis URL: its options are no redis-py options misspelt.
            raise ConfigError(
                f"url {redact_url(self.url)!r} is not a Redis URL; use "
                "redis://[:password@]host:port/db, rediss://... or unix://..."
            )
        _check_count("max_connections", self.max_connections, "50", 100_000)
        # Each retry waits up to a second: a hundred tries is minutes already.
        _check_count("attempts", self.attempts, "3", 100)
        for name, zero_ok, example in _SECONDS:
            _check_seconds(name, getattr(self, name), zero_ok, example)
        check_url_options(self.url)
        check_connection_kwargs(self.url, self.connection_kwargs)


# RedisConfig's durations: name, whether 0 is allowed, and an example. A
# socket timeout of 0 would make each socket non-blocking: a read would fail
# whenever the reply is not there yet.
_SECONDS: Final = (
    ("pool_timeout_s", True, "5.0 (0: refuse at once when every connection is busy)"),
    ("socket_timeout_s", False, "2.0"),
    ("connect_timeout_s", False, "2.0"),
    ("retry_wait_s", True, "0.05 (0: retry at once)"),
)


def _check_count(name: str, value: object, example: str, at_most: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"RedisConfig.{name} must be a whole number of at least 1, such as "
            f"{example}; got {value!r}"
        )
    if value > at_most:
        raise ConfigError(
            f"RedisConfig.{name} is at most {at_most:,}, such as {example}; got "
            f"{value:,}"
        )


def _check_seconds(name: str, value: object, zero_ok: bool, example: str) -> None:
    if _usable(value, zero_ok):
        return
    least = "0 or more" if zero_ok else "above 0"
    raise ConfigError(
        f"RedisConfig.{name} must be a finite number of seconds {least}, such "
        f"as {example}; got {value!r}"
    )


def _usable(value: object, zero_ok: bool) -> bool:
    """A finite number above zero (or zero when ``zero_ok``); no bool."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and (value > 0 or (zero_ok and value == 0))


def check_url_options(url: str) -> None:
    """Refuse a Redis URL that redis-py would reject, or misread, only later.

    redis-py reads the URL when a pool is made and hands unknown query
    options to each new connection, so a typo (or ``?prefix=...``) would
    surface only at the first command, as a ``TypeError`` from deep inside
    the client; a port or an option value that does not parse, as a
    ``ValueError``; and a database that is not a number (``/abc``) would
    select database 0 without a word.

    Raises:
        ConfigError: an option that no redis-py connection or pool takes, a
            value it cannot use, a port that is not a number, or a database
            that is not a whole number.
    """
    _check_misplaced_at(url)
    _check_option_names(url)
    parts = urlsplit(url)
    if parts.scheme.lower() in ("redis", "rediss"):
        _check_port_and_db(url)
    _check_option_values(url)


def _check_misplaced_at(url: str) -> None:
    """Refuse a URL whose password (or user name) ends its address early.

    An unencoded ``/``, ``#`` or ``?`` in the password moves the rest of it,
    the ``@`` and the host into the path, fragment or query: redis-py would
    then read part of the password as a port, a database or an option.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() == "unix":  # the path is a socket file's name
        return
    if "@" in parts.netloc or "@" not in url.partition("://")[2]:
        return
    names = [name for name, _ in parse_qsl(parts.query, keep_blank_values=True)]
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        pass
    else:
        if "@" not in parts.path + parts.fragment + "".join(names):
            return  # an '@' in an option's value only
    raise ConfigError(
        f"url {_shown_url(url)!r} has a port that is not a number, or an '@' "
        "after its host: a password or user name holding '/', '#' or '?' must "
        "be percent-encoded (%2F, %23, %3F), e.g. with "
        "urllib.parse.quote(password, safe='')"
    )


def _check_option_names(url: str) -> None:
    given = {name for name, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True)}
    unknown = sorted(given - _url_options())
    if not unknown:
        return
    hint = misspelt_hint(unknown, _url_options())
    if "prefix" in unknown:
        hint += "; a key prefix is not part of the URL: pass prefix= (or --prefix)"
    raise ConfigError(
        f"url {_shown_url(url)!r} sets {', '.join(unknown)}, which redis-py does "
        f"not take as a connection option{hint}"
    )


def _check_port_and_db(url: str) -> None:
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        hint = ""
        if "@" in url:
            hint = " (a password holding '/', '#' or '?' must be percent-encoded)"
        raise ConfigError(
            f"url {_shown_url(url)!r} has a port that is not a number from 1 "
            f"to 65535; write it as redis://host:6379/0{hint}"
        ) from None
    db = unquote(parts.path).replace("/", "")
    if db and not _DB_INDEX.fullmatch(db):
        raise ConfigError(
            f"url {_shown_url(url)!r} names database {db!r}; the path must be a "
            "database index, a whole number from 0 (redis://host:6379/0), or "
            "left out for database 0"
        )
    queried = [v.strip() for v in parse_qs(parts.query).get("db", [])]
    if (
        db
        and queried
        and _DB_INDEX.fullmatch(queried[0])
        and int(queried[0]) != int(db)
    ):
        raise ConfigError(
            f"url {_shown_url(url)!r} names database {db} in its path and "
            f"{queried[0]!r} in ?db=; redis-py would use the second: give one"
        )


_DB_INDEX: Final = re.compile(r"[0-9]+")

# Query options whose values redis-py would accept but cannot use: the least
# value allowed (above zero when the flag is False, zero or more when True).
_URL_RANGES: Final = {
    "socket_timeout": False,
    "socket_connect_timeout": False,
    "timeout": True,
    "max_connections": False,
    "db": True,
}


def _check_option_values(url: str) -> None:
    options = _parsed_options(url)
    for name, written in parse_qs(urlsplit(url).query).items():
        wants = _option_wants(name, options[name])
        if wants is not None:
            raise ConfigError(
                f"url {_shown_url(url)!r} sets {name}={_shown(name, written[0])}, "
                f"which redis-py cannot use: give {wants}"
            )
    problem = tls_problem(urlsplit(url).scheme.lower(), options)
    if problem is not None:
        raise ConfigError(f"url {_shown_url(url)!r}: {problem}")


def _parsed_options(url: str) -> dict[str, object]:
    """The URL's options as redis-py reads them (the first of repeated ones).

    Raises:
        ConfigError: a value redis-py's parser for the option refuses.
    """
    from redis.connection import URL_QUERY_ARGUMENT_PARSERS

    options: dict[str, object] = {}
    for name, values in parse_qs(urlsplit(url).query).items():
        parser = URL_QUERY_ARGUMENT_PARSERS.get(name)
        options[name] = value = values[0]
        if not callable(parser):
            continue
        try:
            options[name] = parser(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"url {_shown_url(url)!r} sets {name}={_shown(name, value)}, "
                "which redis-py cannot use: give "
                f"{_URL_WANTS.get(name, 'a value of the right kind')}"
            ) from None
    return options


def _option_wants(name: str, value: object) -> str | None:
    """What to give for a URL option whose value cannot be used, else None."""
    if not _in_range(name, value):
        return _URL_WANTS.get(name, "a value of the right kind")
    return option_problem(name, value)


def _shown(name: str, value: object) -> str:
    """An option's value as a message may show it (a secret one masked)."""
    return "'***'" if _secret(name) else repr(value)


def check_connection_kwargs(url: str, kwargs: Mapping[str, Any]) -> None:
    """Refuse ``RedisConfig.connection_kwargs`` that no connection could use.

    The files they name are looked at when a connection fails (a config
    may be made before its certificates are in place), not here.

    Raises:
        ConfigError: an option no redis-py connection or pool takes, one the
            governor must set itself, or a value (a timeout, a protocol, a
            TLS setting or mix of TLS options) that redis-py would refuse,
            or misread, at the first command.
    """
    _check_kwarg_names(kwargs)
    for name, value in kwargs.items():
        wants = _kwarg_wants(name, value)
        if wants is not None:
            raise ConfigError(
                f"RedisConfig.connection_kwargs sets {name}={_shown(name, value)}, "
                f"which redis-py cannot use: give {wants}"
            )
    options = {**_parsed_options(url), **kwargs}
    problem = tls_problem(urlsplit(url).scheme.lower(), options)
    if problem is not None:
        raise ConfigError(
            f"url {_shown_url(url)!r} with RedisConfig.connection_kwargs: {problem}"
        )


# Connection arguments the governor cannot leave to the caller: replies are
# read as text, and the database is the URL's (redis-py lets the URL's win).
_GOVERNOR_OWNS: Final = {
    "decode_responses": "leave it out: the governor reads Redis replies as text",
    "db": "name the database in the URL instead (redis://host:6379/2)",
}


def _check_kwarg_names(kwargs: Mapping[str, Any]) -> None:
    odd = sorted(repr(name) for name in kwargs if not isinstance(name, str))
    unknown = sorted(
        name for name in kwargs if isinstance(name, str) and name not in _url_options()
    )
    if odd or unknown:
        raise ConfigError(
            f"RedisConfig.connection_kwargs sets {', '.join(odd + unknown)}, which "
            "redis-py does not take as a connection or pool option: check the "
            "spelling against redis-py's Connection and ConnectionPool arguments"
            f"{misspelt_hint(unknown, _url_options())}"
        )
    for name, fix in _GOVERNOR_OWNS.items():
        harmless = name == "decode_responses" and kwargs.get(name) is True
        if name in kwargs and not harmless:
            raise ConfigError(
                f"RedisConfig.connection_kwargs sets {name}={kwargs[name]!r}: {fix}"
            )


def _kwarg_wants(name: str, value: object) -> str | None:
    """What to give for a connection argument that cannot be used, else None.
    A timeout of None (wait for ever) is refused: a stalled Redis would hang
    every governed call instead of failing over."""
    if not _in_range(name, value):
        return _URL_WANTS.get(name, "a value of the right kind")
    return option_problem(name, value, files=False)


_URL_WANTS: Final = {
    "socket_timeout": "a number of seconds above 0, such as 2",
    "socket_connect_timeout": "a number of seconds above 0, such as 2",
    "timeout": "a number of seconds, 0 or more, such as 5",
    "max_connections": "a whole number of at least 1, such as 50",
    "db": "a database index, a whole number from 0",
    "health_check_interval": "a whole number of seconds, such as 10",
    "socket_read_size": "a whole number of bytes",
    "protocol": "2 or 3",
}


def _in_range(name: str, value: object) -> bool:
    zero_ok = _URL_RANGES.get(name)
    return zero_ok is None or _usable(value, zero_ok)


@functools.cache
def _url_options() -> frozenset[str]:
    """Every option a Redis URL may set: redis-py's connection and pool ones."""
    from redis import connection

    names = set(connection.URL_QUERY_ARGUMENT_PARSERS)
    for kind in (
        connection.AbstractConnection,
        connection.Connection,
        connection.SSLConnection,
        connection.UnixDomainSocketConnection,
        connection.ConnectionPool,
        connection.BlockingConnectionPool,
    ):
        parameters = inspect.signature(kind.__init__).parameters.values()
        names.update(
            p.name
            for p in parameters
            if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD
        )
    return frozenset(names - {"self"})


def redact_url(url: str) -> str:
    """Return ``url`` with any password (in the address or its query, as
    ``?password=``) replaced by ``***``.

    Everything between ``://`` and the last ``@`` is masked before the URL
    is parsed, so a password holding an unencoded ``/``, ``#`` or ``?``
    never shows (over-masking an ``@`` in a query is the price). It never
    raises.
    """
    return _redacted(url, known=None)


def _shown_url(url: str) -> str:
    """``url`` as an error about it may show it: masked as by
    :func:`redact_url`, and the value of every query option redis-py does
    not take masked too. A misspelt option (``?pasword=``, ``?passwd=``)
    may hold a password, and no rule on its name can tell."""
    return _redacted(url, known=_url_options())


def _redacted(url: str, known: frozenset[str] | None) -> str:
    """``url`` with its password and secret options masked, and, unless
    ``known`` is None, the options not in ``known``."""
    url = mask_userinfo(url)
    try:
        parts = urlsplit(url)
    except ValueError:  # unclosed brackets: mask the options as written
        base, mark, query = url.partition("?")
        return base + mark + _redact_query(query, known)
    query = _redact_query(parts.query, known)
    if query == parts.query:
        return url
    tail = f"?{query}" if query else ""
    return f"{parts.scheme}://{parts.netloc}{parts.path}{tail}"


def _redact_query(query: str, known: frozenset[str] | None) -> str:
    return "&".join(_redact_option(option, known) for option in query.split("&"))


def _redact_option(option: str, known: frozenset[str] | None) -> str:
    name, sep, _ = option.partition("=")
    read = unquote(name.replace("+", " "))  # as redis-py reads it
    hidden = _secret(read) or (known is not None and read not in known)
    return f"{name}=***" if sep and hidden else option


def _secret(name: str) -> bool:
    """Whether a URL option or connection argument holds a secret: its name
    holds ``password``, ``secret`` or ``token``, or is secret by the rule of
    :func:`governor.policies._base.secret_name` (``passwd``, ``pwd``,
    ``credential_provider``, ``api_key``, ...), or is a misspelling of one
    of those words (``pasword``, ``pass``, ``passowrd``)."""
    lowered = name.lower()
    if any(word in lowered for word in _SECRET_WORDS):
        return True
    return secret_name(name) or bool(
        difflib.get_close_matches(lowered, _SECRET_WORDS, n=1, cutoff=0.75)
    )


_SECRET_WORDS: Final = ("password", "passwd", "secret", "token")


@dataclass(slots=True)
class _AsyncSide:
    """One event loop's async client and the scripts registered on it."""

    client: aredis.Redis
    scripts: dict[str, AsyncScript] = field(default_factory=dict)


class RedisConnections:
    """Blocking connection pools (sync, and one per event loop) with retries.

    redis-py's own retries are off; :meth:`call` and :meth:`acall` retry
    transient errors with tenacity and then raise
    :class:`~governor.StoreUnavailable`. Thread-safe; asyncio clients are
    bound to the loop that made them, so each loop gets its own pool. A
    child forked from the process makes pools of its own on first use.
    """

    def __init__(self, config: RedisConfig) -> None:
        self.config = redis_config(config, "RedisConnections")
        self._lock = threading.Lock()
        self._sync: redis.Redis | None = None
        self._raw: redis.Redis | None = None
        self._sync_scripts: dict[str, Script] = {}
        self._async: dict[asyncio.AbstractEventLoop, _AsyncSide] = {}
        self.retries = Retrier("redis-retries")
        """Writes to retry once Redis answers (slot releases), in a thread."""
        # The clients as the parent process made them, kept after a fork so
        # that their connections are never closed (nor used) in the child.
        self._parent_clients: list[redis.Redis | aredis.Redis] = []
        start_over_in_children(self)

    def _forget_parent(self) -> None:
        """In a forked child: a lock and pools of its own.

        A lock a parent thread held at the fork would stay held for good, and
        the parent's connections must not carry the child's commands: redis-py
        notices the fork in its sync pools, but not in its asyncio ones.
        """
        old = [self._sync, self._raw, *(s.client for s in self._async.values())]
        self._parent_clients.extend(client for client in old if client is not None)
        self._lock = threading.Lock()
        self._sync = None
        self._raw = None
        self._sync_scripts = {}
        self._async = {}

    def client(self) -> redis.Redis:
        """Return the process's sync client (made on first use)."""
        if self._sync is None:
            with self._lock:
                if self._sync is None:
                    self._sync = redis.Redis(connection_pool=self._sync_pool())
        return self._sync

    def bytes_client(self) -> redis.Redis:
        """Return a sync client whose replies are bytes (the response cache's).

        Same server, credentials and timeouts as :meth:`client`, its own pool.
        """
        if self._raw is None:
            with self._lock:
                if self._raw is None:
                    pool = self._sync_pool(decode_responses=False)
                    self._raw = redis.Redis(connection_pool=pool)
        return self._raw

    def aclient(self) -> aredis.Redis:
        """Return the running event loop's async client (made on first use)."""
        return self._async_side().client

    def script(self, lua: str) -> Script:
        """Return ``lua`` registered on the sync client."""
        found = self._sync_scripts.get(lua)
        if found is None:
            found = self._sync_scripts[lua] = self.client().register_script(lua)
        return found

    def ascript(self, lua: str) -> AsyncScript:
        """Return ``lua`` registered on the running loop's async client."""
        side = self._async_side()
        found = side.scripts.get(lua)
        if found is None:
            found = side.scripts[lua] = side.client.register_script(lua)
        return found

    def _async_side(self) -> _AsyncSide:
        loop = asyncio.get_running_loop()
        side = self._async.get(loop)
        if side is not None:
            return side
        with self._lock:
            # Pools of finished loops cannot be used again: forget them.
            for old in [old for old in self._async if old.is_closed()]:
                del self._async[old]
            side = self._async.get(loop)
            if side is None:
                client = aredis.Redis(connection_pool=self._async_pool())
                side = self._async[loop] = _AsyncSide(client)
        return side

    def call(self, op: Callable[[], T], what: str) -> T:
        """Run ``op``, retrying transient errors; raise StoreUnavailable at last.

        A server that refuses the step (out of memory, read-only, cannot
        persist, no permission) raises StoreUnavailable at once, naming the
        refusal and what to change.
        """
        with self._refusals(what):
            return self._call(op, what)

    async def acall(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        """Async form of :meth:`call`.

        A cancellation that arrives while the command runs is raised as
        :class:`asyncio.CancelledError` even if redis-py swallowed it (on
        Python 3.11 its ``asyncio.wait_for`` can); the command may have run.
        """
        with self._refusals(what):
            return await self._acall(op, what)

    @contextmanager
    def _refusals(self, what: str) -> Iterator[None]:
        """Turn a server's refusal of a step into StoreUnavailable."""
        try:
            yield
        except redis.exceptions.ResponseError as exc:
            if refusal_advice(exc) is None:
                raise
            raise self.unavailable(what, exc) from exc
        except redis.exceptions.RedisError as exc:
            error = self.misconfigured(what, exc)
            if error is None:
                raise
            raise error from exc

    def _call(self, op: Callable[[], T], what: str) -> T:
        try:
            return op()
        except _TRANSIENT as exc:
            if not self._retry_after(exc, what):
                raise self._failed(what, exc) from exc
        time.sleep(self.config.retry_wait_s)
        try:
            for attempt in Retrying(**self._retry_args(what)):
                with attempt:
                    return op()
        except _TRANSIENT as exc:
            raise self._failed(what, exc) from exc
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def _acall(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        before = _cancel_requests()
        try:
            return _unless_cancelled(await op(), before)
        except _TRANSIENT as exc:
            if not self._retry_after(exc, what):
                raise self._failed(what, exc) from exc
        await asyncio.sleep(self.config.retry_wait_s)
        try:
            async for attempt in AsyncRetrying(**self._retry_args(what)):
                with attempt:
                    return _unless_cancelled(await op(), before)
        except _TRANSIENT as exc:
            raise self._failed(what, exc) from exc
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    def _retry_after(self, exc: BaseException, what: str) -> bool:
        return self.config.attempts > 1 and self._worth_retry(exc, what)

    def _worth_retry(self, exc: BaseException, what: str) -> bool:
        """A transient error, not a setting no connection can use."""
        return _retryable(exc, what) and self.misconfigured(what, exc) is None

    def _failed(self, what: str, exc: BaseException) -> GovernorError:
        """The error for a step that failed for good: a full pool, a setting
        no connection can use, or an outage."""
        if _pool_exhausted(exc):
            return self.pool_exhausted(what)
        return self.misconfigured(what, exc) or self.unavailable(what, exc)

    def misconfigured(self, what: str, exc: BaseException) -> ConfigError | None:
        """The error for a connection setting redis-py refused, or None.

        redis-py raises a bare ``RedisError`` for a TLS setting it cannot
        use and a ``ConnectionError`` for a protocol other than 2 or 3; a
        TLS file of ``connection_kwargs`` that is missing fails as a
        connection error too, so the files are looked at when one fails.
        Trying again cannot help: none of these is an outage.
        """
        if not isinstance(exc, redis.exceptions.RedisError) or _pool_exhausted(exc):
            return None
        text = str(exc)
        bare = type(exc) is redis.exceptions.RedisError
        if not bare and not isinstance(exc, redis.exceptions.ConnectionError):
            return None
        advice = self._file_problem()
        if advice is None and text.startswith(_PROTOCOL_REFUSED):
            advice = "Give protocol=2 or protocol=3, or leave protocol out"
        elif advice is None and bare:
            advice = _OPTIONS_ADVICE
        if advice is None:
            return None
        return ConfigError(
            f"the Redis store at {redact_url(self.config.url)} cannot be used as "
            f"configured: {what} failed with {_reason(exc)} (not retried). {advice}"
        )

    def _file_problem(self) -> str | None:
        """What is wrong with a TLS file the URL or connection_kwargs name."""
        cfg = self.config
        if not cfg.connection_kwargs and "ssl_" not in cfg.url:
            return None
        options = {**_parsed_options(cfg.url), **cfg.connection_kwargs}
        for name in sorted(FILE_OPTIONS & options.keys()):
            wants = option_problem(name, options[name])
            if wants is not None:
                return f"{name}={options[name]!r} cannot be used: give {wants}"
        return None

    def pool_exhausted(self, what: str) -> GovernorError:
        """The error for a step that found every pooled connection busy.

        :class:`PoolExhausted` (not a StoreUnavailable, so the failover does
        not count Redis as down), or :class:`PoolBusy` for settles and
        releases, which their callers must queue rather than drop.
        """
        cfg = self.config
        url = redact_url(cfg.url)
        if what not in _MUST_LAND:
            return PoolExhausted(url, what, cfg.max_connections, cfg.pool_timeout_s)
        error = PoolBusy(
            _pool_message(url, what, cfg.max_connections, cfg.pool_timeout_s)
        )
        error.cause = (
            f"{what} failed: connection pool exhausted (all {cfg.max_connections} "
            f"connection(s) busy for {cfg.pool_timeout_s} s)"
        )
        error.advice = (
            "Raise RedisConfig.max_connections or pool_timeout_s, or run fewer "
            "calls at once"
        )
        return error

    def unavailable(self, what: str, exc: BaseException) -> StoreUnavailable:
        """Build the error raised when Redis cannot be reached or refuses."""
        url = redact_url(self.config.url)
        reason = _reason(exc)
        advice = refusal_advice(exc)
        if str(exc).startswith(_DB_OUT_OF_RANGE):
            advice = (
                f"The URL selects database {_url_db(self.config.url)}, which this "
                "server does not have: use an index below its 'databases' "
                "setting (0 to 15 by default)"
            )
        credentials = credentials_advice(exc, self.config.url)
        cluster = cluster_advice(exc, self.config.url)
        if credentials is not None:
            what_happened = f"refused the credentials given for {what} (not retried)"
            advice = credentials
        elif cluster is not None:
            what_happened = self._cluster_refused(what, exc)
            advice = cluster
        elif advice is None or isinstance(exc, redis.exceptions.ReadOnlyError):
            what_happened = (
                f"did not answer {what} after {self.config.attempts} attempt(s)"
            )
        else:
            what_happened = f"refused {what}"
        advice = advice or reach_advice(self.config.url, exc)
        error = StoreUnavailable(
            f"the Redis store at {url} {what_happened}: {reason}. {advice}, or "
            "set Policy(failure_mode='open') to admit calls under a local "
            "shadow budget while it is down."
        )
        # What went wrong without the advice, for logs where it does not fit.
        refused = "credentials refused: " if credentials is not None else ""
        error.cause = f"{what} failed: {refused}{reason}"
        error.advice = advice
        return error

    def _cluster_refused(self, what: str, exc: BaseException) -> str:
        """How a Redis Cluster node turned ``what`` away: at once, or after
        the retries its transient replies (``CLUSTERDOWN``, ``TRYAGAIN``) get."""
        if isinstance(exc, _TRANSIENT) and self.config.attempts > 1:
            return f"refused {what} in all {self.config.attempts} attempts"
        return f"refused {what}"

    def close(self) -> None:
        """Close the sync pool's connections (async pools close with aclose)."""
        with self._lock:
            client, self._sync = self._sync, None
            self._sync_scripts = {}
        if client is not None:
            client.close()
            client.connection_pool.disconnect()

    async def aclose(self) -> None:
        """Close the running loop's async pool."""
        loop = asyncio.get_running_loop()
        with self._lock:
            side = self._async.pop(loop, None)
        if side is not None:
            await side.client.aclose()
            await side.client.connection_pool.disconnect()

    def _retry_args(self, what: str) -> dict[str, Any]:
        return {
            "stop": stop_after_attempt(self.config.attempts - 1),
            # Exponential from retry_wait_s, plus jitter so workers do not
            # retry in lockstep.
            "wait": wait_exponential(multiplier=self.config.retry_wait_s, max=1.0)
            + wait_random(0, self.config.retry_wait_s),
            "retry": retry_if_exception(
                functools.partial(self._worth_retry, what=what)
            ),
            "reraise": True,
        }

    def _pool_args(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "max_connections": cfg.max_connections,
            "timeout": cfg.pool_timeout_s,
            "socket_timeout": cfg.socket_timeout_s,
            "socket_connect_timeout": cfg.connect_timeout_s,
            "decode_responses": True,
            **cfg.connection_kwargs,
        }

    def _sync_pool(self, **overrides: Any) -> redis.BlockingConnectionPool:
        return redis.BlockingConnectionPool.from_url(
            self.config.url,
            retry=Retry(NoBackoff(), 0),
            **{**self._pool_args(), **overrides},
        )

    def _async_pool(self) -> aredis.BlockingConnectionPool:
        return aredis.BlockingConnectionPool.from_url(
            self.config.url, retry=AsyncRetry(NoBackoff(), 0), **self._pool_args()
        )


class RedisLedger:
    """A :class:`~governor.stores.Ledger` and ``AsyncLedger`` kept in Redis.

    Same meaning as :class:`~governor.stores.MemoryLedger`, step for step,
    across every process and host that shares the Redis and the prefix. Also
    keeps rolling windows: a line with a ``window_s`` attribute (see
    :class:`governor.budgets.RollingLine`) counts only recent spend.

    Thread-safe and usable from any number of event loops at once.

    Example:
        >>> ledger = RedisLedger("redis://:secret@127.0.0.1:6379/0")
        >>> ledger.reserve("call-1", [Line("team:search", limit_nanos=10**9)],
        ...                nanos=2_000_000, tokens=900, ttl_s=600)
    """

    def __init__(
        self,
        config: RedisConfig | str = DEFAULT_REDIS_URL,
        *,
        prefix: str = "governor:",
        hash_tag: str = "budgets",
        settled_memory_s: float = 86400.0,
        connections: RedisConnections | None = None,
    ) -> None:
        """Make a ledger; nothing connects until the first step.

        Args:
            config: a :class:`RedisConfig` or just a URL (not a redis-py
                client: the ledger makes and pools its own connections).
            prefix: put before every key, so deployments and tests can share a
                server; must not contain braces.
            hash_tag: the Redis Cluster hash tag shared by all keys of this
                ledger (see the module docs for the trade-off).
            settled_memory_s: how long a settled (or released unknown) hold
                id is remembered, so a retried settle within this time counts
                once and a late reserve of a released id holds nothing.
            connections: pools to share with other stores (semaphores).

        Raises:
            ConfigError: ``config`` is neither a URL nor a RedisConfig (a
                redis-py client, say), or the prefix or hash tag holds braces.
        """
        config = redis_config(config, "RedisLedger")
        if any(c in prefix + hash_tag for c in "{}") or not hash_tag:
            raise ConfigError(
                f"prefix {prefix!r} and hash_tag {hash_tag!r} must be free of "
                "'{' and '}', and hash_tag must not be empty"
            )
        self.prefix = prefix
        self.hash_tag = hash_tag
        self.ns = f"{prefix}{{{hash_tag}}}:"
        self._conn = connections or RedisConnections(config)
        self._settled_ms = _ms(settled_memory_s)
        self._late_settles = Quiet(_LATE_SETTLE_WARN_EVERY_S)
        self._pool_waits = Quiet(_POOL_WARN_EVERY_S)
        self._limits = LimitWatch(prefix)
        self._memory_checked = False
        start_over_in_children(self)

    def _forget_parent(self) -> None:
        """In a forked child: a writer id of its own on the lines it sets."""
        self._limits.start_over()

    @property
    def connections(self) -> RedisConnections:
        """The pools this ledger uses (to share with semaphores)."""
        return self._conn

    # -- sync ------------------------------------------------------------

    def reserve(
        self,
        hold_id: str,
        lines: Sequence[Line],
        nanos: int,
        tokens: int,
        ttl_s: float,
    ) -> Refusal | None:
        """Hold the amounts on every line, or refuse on all of them."""
        keys, args = self._reserve_args(hold_id, lines, nanos, tokens, ttl_s)
        script = self._conn.script(_RESERVE_LUA)
        reply = self._conn.call(lambda: script(keys, args), "reserve")
        if not self._memory_checked:
            self._check_memory()
        return self._reserved(reply, lines)

    def settle(
        self, hold_id: str, keys: Sequence[str], nanos: int, tokens: int
    ) -> None:
        """Charge the actual spend and drop the hold; a repeat is a no-op."""
        rkeys, args = self._settle_args(hold_id, keys, nanos, tokens)
        script = self._conn.script(_SETTLE_LUA)
        try:
            reply = self._conn.call(lambda: script(rkeys, args), "settle")
        except PoolBusy as exc:
            again = functools.partial(self.settle, hold_id, keys, nanos, tokens)
            self._write_later(f"settle:{hold_id}", again, exc)
            return
        self._check_settle(reply, hold_id, keys)

    def release(self, hold_id: str) -> None:
        """Drop the hold without spend; a late reserve of the id holds nothing."""
        script = self._conn.script(_RELEASE_LUA)
        keys, args = self._hold_args(hold_id)
        args.append(self._settled_ms)
        try:
            self._conn.call(lambda: script(keys, args), "release")
        except PoolBusy as exc:
            again = functools.partial(self.release, hold_id)
            self._write_later(f"release:{hold_id}", again, exc)

    def renew(self, hold_id: str, ttl_s: float) -> bool:
        """Make a live hold expire ``ttl_s`` from now; False if it is gone."""
        script = self._conn.script(_RENEW_LUA)
        keys, args = self._hold_args(hold_id)
        reply = self._conn.call(lambda: script(keys, [*args, _ms(ttl_s)]), "renew")
        return bool(reply)

    def balance(self, key: str) -> Balance | None:
        """Return the line's balance, or None if never seen (or expired)."""
        script = self._conn.script(_BALANCE_LUA)
        rkeys = [self.ns + "holds", self._line(key)]
        reply = self._conn.call(lambda: script(rkeys, [self.ns, key]), "balance")
        return _balance(key, reply)

    def keys(self) -> list[str]:
        """Return every line key whose counters still live, sorted.

        The index is read a batch at a time, so a large one (a line per
        task) never blocks the server for long; keys of expired lines leave
        it on the way.
        """
        client = self._conn.client()
        script = self._conn.script(_LIST_LUA)
        index = self.ns + "lines"
        live: set[str] = set()
        cursor: Any = 0
        while True:
            cursor, batch = self._conn.call(
                functools.partial(client.sscan, index, cursor, count=_LIST_BATCH),
                "keys",
            )
            if batch:
                found = self._conn.call(
                    functools.partial(script, [index], [self.ns, *batch]), "keys"
                )
                live.update(str(k) for k in found)
            if int(cursor) == 0:
                return sorted(live)

    def reset(self, key: str) -> None:
        """Forget a line's spend (holds on it stay until settled or expired)."""
        script = self._conn.script(_RESET_LUA)
        self._conn.call(lambda: script([self._line(key)], [self.ns, key]), "reset")

    def ping(self) -> bool:
        """Return True when Redis answers (after retries), else raise."""
        client = self._conn.client()
        return bool(self._conn.call(client.ping, "ping"))

    def semaphore(self, key: str, limit: int, lease_s: float) -> RedisSemaphore:
        """Return a concurrency cap on ``key`` sharing this ledger's pools."""
        from governor.stores._semaphore import RedisSemaphore

        return RedisSemaphore(
            key, limit, lease_s, prefix=self.prefix, connections=self._conn
        )

    def close(self) -> None:
        """Close the sync connection pool."""
        self._conn.close()

    # -- async -----------------------------------------------------------

    async def areserve(
        self,
        hold_id: str,
        lines: Sequence[Line],
        nanos: int,
        tokens: int,
        ttl_s: float,
    ) -> Refusal | None:
        """Async form of :meth:`reserve`."""
        keys, args = self._reserve_args(hold_id, lines, nanos, tokens, ttl_s)
        script = self._conn.ascript(_RESERVE_LUA)
        reply = await self._conn.acall(lambda: script(keys, args), "reserve")
        if not self._memory_checked:
            await self._acheck_memory()
        return self._reserved(reply, lines)

    async def asettle(
        self, hold_id: str, keys: Sequence[str], nanos: int, tokens: int
    ) -> None:
        """Async form of :meth:`settle`."""
        rkeys, args = self._settle_args(hold_id, keys, nanos, tokens)
        script = self._conn.ascript(_SETTLE_LUA)
        try:
            reply = await self._conn.acall(lambda: script(rkeys, args), "settle")
        except PoolBusy as exc:
            again = functools.partial(self.settle, hold_id, keys, nanos, tokens)
            self._write_later(f"settle:{hold_id}", again, exc)
            return
        self._check_settle(reply, hold_id, keys)

    async def arelease(self, hold_id: str) -> None:
        """Async form of :meth:`release`."""
        script = self._conn.ascript(_RELEASE_LUA)
        keys, args = self._hold_args(hold_id)
        args.append(self._settled_ms)
        try:
            await self._conn.acall(lambda: script(keys, args), "release")
        except PoolBusy as exc:
            again = functools.partial(self.release, hold_id)
            self._write_later(f"release:{hold_id}", again, exc)

    async def arenew(self, hold_id: str, ttl_s: float) -> bool:
        """Async form of :meth:`renew`."""
        script = self._conn.ascript(_RENEW_LUA)
        keys, args = self._hold_args(hold_id)
        reply = await self._conn.acall(
            lambda: script(keys, [*args, _ms(ttl_s)]), "renew"
        )
        return bool(reply)

    async def abalance(self, key: str) -> Balance | None:
        """Async form of :meth:`balance`."""
        script = self._conn.ascript(_BALANCE_LUA)
        rkeys = [self.ns + "holds", self._line(key)]
        reply = await self._conn.acall(lambda: script(rkeys, [self.ns, key]), "balance")
        return _balance(key, reply)

    async def akeys(self) -> list[str]:
        """Async form of :meth:`keys`."""
        client = self._conn.aclient()
        script = self._conn.ascript(_LIST_LUA)
        index = self.ns + "lines"
        live: set[str] = set()
        cursor: Any = 0
        while True:
            cursor, batch = await self._conn.acall(
                functools.partial(client.sscan, index, cursor, count=_LIST_BATCH),
                "keys",
            )
            if batch:
                found = await self._conn.acall(
                    functools.partial(script, [index], [self.ns, *batch]), "keys"
                )
                live.update(str(k) for k in found)
            if int(cursor) == 0:
                return sorted(live)

    async def areset(self, key: str) -> None:
        """Async form of :meth:`reset`."""
        script = self._conn.ascript(_RESET_LUA)
        await self._conn.acall(
            lambda: script([self._line(key)], [self.ns, key]), "reset"
        )

    async def aclose(self) -> None:
        """Close the running event loop's connection pool."""
        await self._conn.aclose()

    # -- a full pool -----------------------------------------------------

    def _write_later(self, key: str, write: Callable[[], None], exc: PoolBusy) -> None:
        """Write a settle or release that a full pool kept from Redis later.

        Redis answers, so this is no outage for the failover to act on: the
        background retries (``connections.retries``, which
        ``Governor.close`` waits for) write it with the sync pool once a
        connection is free. It is idempotent per hold id, and until it lands
        the hold keeps its room, so no budget is overspent meanwhile.
        """
        self._conn.retries.add(f"{self.ns}{key}", write)
        if self._pool_waits.due("pool") is None:
            return
        logger.warning(
            "%s The %s is written in the background once a connection is free "
            "(at most one such warning a minute).",
            exc,
            key.split(":", 1)[0],
        )

    # -- the server's eviction policy -------------------------------------

    def _check_memory(self) -> None:
        """Warn, once per process, if the server may evict budget keys.

        Run after the first reserve that reached Redis: one ``INFO memory``
        round trip. Settings that cannot be read (ACLs) say nothing; a
        connection error leaves the check to the next reserve.
        """
        self._memory_checked = True
        try:
            settings = read_memory_settings(self._conn.client())
        except redis.exceptions.RedisError:
            self._memory_checked = False
            return
        self._warn_eviction(settings)

    async def _acheck_memory(self) -> None:
        """Async form of :meth:`_check_memory`."""
        self._memory_checked = True
        try:
            settings = await aread_memory_settings(self._conn.aclient())
        except redis.exceptions.RedisError:
            self._memory_checked = False
            return
        self._warn_eviction(settings)

    def _warn_eviction(self, settings: tuple[int, str] | None) -> None:
        message = eviction_warning(redact_url(self._conn.config.url), settings)
        if message is not None:
            logger.warning("%s", message)

    # -- replies (no I/O) ------------------------------------------------

    def _reserved(self, reply: Sequence[Any], lines: Sequence[Line]) -> Refusal | None:
        """The reserve's refusal, if any; warns of limits other workers set."""
        held = int(reply[0]) == 1
        others = reply[1:2] if held else reply[10:11]
        if others and others[0]:
            self._limits.check(others[0], lines)
        return None if held else _refusal(reply, lines)

    def _check_settle(self, reply: Any, hold_id: str, keys: Sequence[str]) -> None:
        """Warn, at most once a minute, of settles that found no live hold.

        Their spend is charged (the money was spent), but the room their
        hold kept may have gone to other calls meanwhile, so the lines can
        end above their limits.
        """
        if int(reply) != _SETTLED_WITHOUT_HOLD or not keys:
            return  # a call no budget line limits has nothing to end above
        skipped = self._late_settles.due("settle")
        if skipped is None:
            return
        logger.warning(
            "budget store: the settle of call %s found no live hold on %s: "
            "its spend was charged, but the room its hold kept may have gone "
            "to other calls meanwhile, so these lines may end above their "
            "limits (%d such settle(s) since the last warning). The hold "
            "lapsed before the call ended (its worker did not renew it for "
            "hold_ttl_s: frozen, or cut off from Redis), its reserve never "
            "reached Redis (a fail-open outage), or Redis evicted the hold "
            "(maxmemory with a maxmemory-policy other than noeviction).",
            hold_id,
            ", ".join(keys),
            skipped + 1,
        )

    # -- arguments (no I/O) ----------------------------------------------

    def _line(self, key: str) -> str:
        return f"{self.ns}l:{key}"

    def _hold_args(self, hold_id: str) -> tuple[list[str], list[Any]]:
        return [self.ns + "holds", f"{self.ns}h:{hold_id}"], [self.ns, hold_id]

    def _reserve_args(
        self,
        hold_id: str,
        lines: Sequence[Line],
        nanos: int,
        tokens: int,
        ttl_s: float,
    ) -> tuple[list[str], list[Any]]:
        _check_amounts(nanos, tokens, "reserve")
        keys = [self.ns + "holds", self.ns + "lines", f"{self.ns}h:{hold_id}"]
        writer = self._limits.writer
        args: list[Any] = [self.ns, hold_id, nanos, tokens, _ms(ttl_s), writer]
        for line in lines:
            _check_limits(line)
            window_s: float | None = getattr(line, "window_s", None)
            keys.append(self._line(line.key))
            args += [
                line.key,
                _opt(line.limit_nanos),
                _opt(line.limit_tokens),
                _opt(None if line.ttl_s is None else _ms(line.ttl_s)),
                _opt(None if window_s is None else _ms(window_s)),
            ]
        return keys, args

    def _settle_args(
        self, hold_id: str, keys: Sequence[str], nanos: int, tokens: int
    ) -> tuple[list[str], list[Any]]:
        _check_amounts(nanos, tokens, "settle")
        rkeys = [self.ns + "holds", self.ns + "lines", f"{self.ns}h:{hold_id}"]
        rkeys += [self._line(key) for key in keys]
        args: list[Any] = [self.ns, hold_id, nanos, tokens, self._settled_ms]
        return rkeys, [*args, *keys]


_REACH_ADVICE: Final = "Check that Redis is running and reachable (URL, password, TLS)"


def reach_advice(url: str, exc: BaseException) -> str:
    """The advice for an outage; a TLS URL timing out while it connects is
    most often TLS spoken to a server that does not speak it."""
    tls = urlsplit(url).scheme.lower() == "rediss"
    if tls and isinstance(exc, redis.exceptions.TimeoutError):
        return (
            "A rediss:// URL speaks TLS, and a server that does not (a plain "
            "Redis port) leaves the handshake hanging until this timeout: use "
            "redis:// for such a server; else check that Redis is running and "
            "reachable"
        )
    return _REACH_ADVICE


_PROTOCOL_REFUSED: Final = "protocol must be"
"""How redis-py refuses a protocol other than 2 or 3, at connect."""
_OPTIONS_ADVICE: Final = (
    "Check the TLS options of the URL and of RedisConfig.connection_kwargs "
    "(see redis-py's SSLConnection for the values each takes)"
)
# Server replies that refuse a step for as long as the server stays as it is:
# retrying at once does not help, the server must be changed.
_REFUSALS: Final = {
    "OOM": (
        "Redis is at its maxmemory limit and refuses writes: raise maxmemory "
        "or free memory on the server that holds the budgets (keep "
        "maxmemory-policy noeviction, so that no budget line is evicted)"
    ),
    "MISCONF": (
        "Redis refuses writes because it cannot save its snapshot: fix the "
        "disk or permissions of its data directory (see the Redis log)"
    ),
    "NOPERM": (
        "The Redis user may not run what the budget scripts need: grant the "
        "ACL rules listed in docs/budgets-redis.md (Managed Redis)"
    ),
    "SCRIPTING": (
        "This Redis refuses Lua scripts, which every budget step runs: EVAL "
        "and EVALSHA are renamed or disabled on it (rename-command), or its "
        "ACL user lacks +@scripting. Allow them (drop those rename-command "
        "lines; grant +@scripting, or +evalsha +eval +script|load, see "
        "docs/budgets-redis.md, Managed Redis), or point the URL at a Redis "
        "that runs scripts"
    ),
    "READONLY": (
        "The URL points at a read-only replica: point it at the primary (a "
        "replica being promoted answers again within seconds)"
    ),
    "BUSY": (
        "Redis is busy running another client's slow script: find it with "
        "SLOWLOG GET and stop it with SCRIPT KILL"
    ),
    "DB": (
        "The URL selects a database this server does not have: use an index "
        "below its 'databases' setting (0 to 15 by default)"
    ),
}
_SCRIPT_NOPERM: Final = "can't run this command"
_NO_SCRIPTING: Final = re.compile(
    r"unknown command '(eval|evalsha|script)'"
    r"|no permissions to run the '(eval|evalsha|script\|load)' command",
    re.IGNORECASE,
)
"""A server that refuses the scripting commands: renamed, disabled, or an ACL."""
_DB_OUT_OF_RANGE: Final = "DB index is out of range"
"""The reply to SELECT of a database the server does not have (at connect)."""


def refusal_advice(exc: BaseException) -> str | None:
    """What to change when the server refused a step, or None if it did not."""
    if not isinstance(exc, redis.exceptions.ResponseError):
        return None
    cluster = cluster_advice(exc)
    if cluster is not None:
        return cluster
    text = str(exc)
    code = getattr(exc, "status_code", None) or text.split(" ", 1)[0]
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        code = "OOM"
    elif _NO_SCRIPTING.search(text):
        code = "SCRIPTING"
    elif isinstance(exc, redis.exceptions.NoPermissionError):
        code = "NOPERM"
    elif isinstance(exc, redis.exceptions.ReadOnlyError):
        code = "READONLY"
    elif _SCRIPT_NOPERM in text:
        code = "NOPERM"
    elif text.startswith(_DB_OUT_OF_RANGE):
        code = "DB"
    return _REFUSALS.get(str(code).upper())


_CLUSTER_CODES: Final = frozenset(
    {"MOVED", "ASK", "CROSSSLOT", "CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN"}
)
"""Replies only a Redis Cluster node sends: redirects to the node that holds a
key's slot, keys of several slots in one command, a slot no node serves."""
_CLUSTER_SCRIPT: Final = re.compile(
    r"non local key in a cluster node|do not hash to the same slot", re.IGNORECASE
)
"""How a cluster node refuses a script that reaches keys of other slots."""


def cluster_advice(exc: BaseException, url: str = "") -> str | None:
    """What to change when a Redis Cluster node turned a step away, or None.

    The client speaks to the one endpoint of the URL and follows no cluster
    redirects, so a plain cluster node serves the keys of its own slots only.
    ``url`` (the store's) names the node in the advice.
    """
    if not isinstance(exc, redis.exceptions.ResponseError):
        return None
    text = str(exc)
    code = str(getattr(exc, "status_code", None) or text.split(" ", 1)[0]).upper()
    if code not in _CLUSTER_CODES and not _CLUSTER_SCRIPT.search(text):
        return None
    node = _node(url) if url else "This Redis"
    return (
        f"{node} is a Redis Cluster node, which serves only the keys of its "
        "own hash slots: the governor's ledger runs multi-key Lua scripts and "
        "needs one Redis endpoint that holds all its keys, and its client "
        "does not follow cluster redirects. Point the URL at a standalone "
        "Redis or primary, or at a cluster proxy that routes by hash tag "
        "(see docs/budgets-redis.md, Redis Cluster)"
    )


def _node(url: str) -> str:
    """The server a Redis URL names, without its credentials: host:port, or
    the socket's path."""
    parts = urlsplit(url)
    if parts.scheme.lower() == "unix":
        return unquote(parts.path) or "The Redis socket"
    host = parts.hostname or "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{parts.port or 6379}"


def redis_config(config: object, owner: str) -> RedisConfig:
    """``config`` as a RedisConfig: a URL is wrapped, anything else refused.

    Raises:
        ConfigError: ``config`` is neither (a redis-py client, say); the
            message shows the forms ``owner`` takes.
    """
    if isinstance(config, RedisConfig):
        return config
    if isinstance(config, str):
        return RedisConfig(url=config)
    given = f"{type(config).__module__}.{type(config).__qualname__}"
    if isinstance(config, (redis.Redis, aredis.Redis)):
        given = f"a redis-py client ({given}): it makes and pools its own connections"
    raise ConfigError(
        f"{owner} takes a Redis URL string or a RedisConfig, got {given}. Give "
        "the URL of the server instead, e.g. "
        f"{owner}('redis://:PASSWORD@127.0.0.1:6379/0'), or a RedisConfig for "
        "pool settings, e.g. "
        f"{owner}(RedisConfig(url='redis://...', max_connections=50))"
    )


_CHECK_CREDENTIALS: Final = (
    "the URL (RedisConfig.url, or the URL given to RedisLedger) or "
    "RedisConfig.connection_kwargs"
)


def credentials_advice(
    exc: BaseException, url: str = "", where: str = _CHECK_CREDENTIALS
) -> str | None:
    """What to change when the server refused the credentials, or None.

    ``NOAUTH`` (no password given to a server that needs one), ``WRONGPASS``
    (a wrong user name or password, or a disabled user) and a password given
    to a server that has none stay refused however often they are sent.
    ``url`` (the store's) shapes the example of a URL with a password;
    ``where`` names the setting that holds the credentials.
    """
    if not isinstance(exc, redis.exceptions.AuthenticationError):
        return None
    code = str(getattr(exc, "status_code", None) or "").upper()
    text = str(exc)
    if code == "NOAUTH" or text.startswith("NOAUTH"):
        return (
            "Redis requires a password and none was given: put it in "
            f"{where}, as {_with_password(url, ':PASSWORD')} (or "
            f"{_with_password(url, 'USER:PASSWORD')} for an ACL user)"
        )
    if "without any password configured" in text or "no password is set" in text:
        return (
            "A password was given but this Redis has none set for its default "
            f"user: remove it from {where}, or check that the URL "
            "points at the intended server"
        )
    return (
        "Check the user name and password in "
        f"{where} against the server's requirepass or ACL user "
        "(and that the user is enabled)"
    )


def _with_password(url: str, credentials: str) -> str:
    """An example URL of ``url``'s kind that gives ``credentials``."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "unix":
        path = unquote(parts.path) or "/path/to/redis.sock"
        return f"unix://{credentials}@{path}"
    scheme = "rediss" if scheme == "rediss" else "redis"
    return f"{scheme}://{credentials}@host:port/db"


def _url_db(url: str) -> str:
    """The database a Redis URL selects, as written (``?db=`` before the path)."""
    parts = urlsplit(url)
    for name, value in parse_qsl(parts.query):
        if name == "db":
            return value
    return unquote(parts.path).replace("/", "") or "0"


def _reason(exc: BaseException) -> str:
    """The server's or socket's words, with the reply code redis-py strips."""
    # An unknown command's reply lists its arguments: keys, not the reason.
    text = str(exc).split(", with args beginning with", 1)[0].rstrip(". ")
    code = getattr(exc, "status_code", None)
    if code and code != "ERR" and not text.startswith(str(code)):
        text = f"{code} {text}"
    return text


def _cancel_requests() -> int:
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0


def _unless_cancelled(result: T, before: int) -> T:
    """Raise a cancellation requested while the command ran.

    Only a new one: cleanup that runs after a cancellation was delivered (a
    cut-off call settling its hold) still has ``cancelling()`` above zero,
    and must finish its work instead of raising again.
    """
    if _cancel_requests() > before:
        raise asyncio.CancelledError
    return result


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _opt(value: int | None) -> int | str:
    return "" if value is None else value


def _check_amounts(nanos: int, tokens: int, step: str) -> None:
    """Refuse amounts a Lua number cannot hold exactly, saying what to lower."""
    if 0 <= nanos <= MAX_EXACT and 0 <= tokens <= MAX_EXACT:
        return
    if nanos < 0 or tokens < 0:
        raise ConfigError(
            f"{step} amounts must be whole numbers of 0 or more, got "
            f"nanos={nanos} tokens={tokens}"
        )
    amount = f"${_usd(nanos)} and {tokens:,} tokens"
    if step == "reserve":
        needs = f"this call would need to hold up to {amount} (its max_tokens "
        needs += "at the model's prices, plus its prompt)"
    else:
        needs = f"this call's spend to {step} is {amount}"
    raise ConfigError(
        f"{needs}, more than a Redis ledger can hold in one amount: at most "
        f"${_usd(MAX_EXACT)} ({MAX_EXACT:,} nano-dollars) and {MAX_EXACT:,} "
        "tokens. Lower the call's max_tokens, or the model's prices (a Price "
        "is in US dollars per million tokens) if they are set too high."
    )


def _usd(nanos: int) -> str:
    """Nano-dollars as dollars to the cent, with thousands separators."""
    return f"{Decimal(nanos) / 10**9:,.2f}"


def _check_limits(line: Line) -> None:
    units = (
        (line.limit_nanos, "nano-dollars, about 9 million dollars"),
        (line.limit_tokens, "tokens"),
    )
    for limit, unit in units:
        if limit is not None and not 0 <= limit <= MAX_EXACT:
            raise ConfigError(
                f"line {line.key!r}: limits must lie from 0 to {MAX_EXACT} "
                f"{unit}, got {limit}"
            )


def _int_or_none(value: Any) -> int | None:
    return None if value in ("", None) else int(value)


def _refusal(reply: Sequence[Any], lines: Sequence[Line]) -> Refusal | None:
    if int(reply[0]) == 1:
        return None
    _, index, unit, ln, lt, sn, st, rn, rt, lapse_ms = reply[:10]
    key = lines[int(index) - 1].key
    balance = Balance(
        key, _int_or_none(ln), _int_or_none(lt), int(sn), int(st), int(rn), int(rt)
    )
    lapse = _int_or_none(lapse_ms)
    return Refusal(
        "usd" if unit == "usd" else "tokens",
        balance,
        holds_lapse_s=None if lapse is None else lapse / 1000,
    )


def _balance(key: str, reply: Sequence[Any] | None) -> Balance | None:
    if not reply:
        return None
    ln, lt, sn, st, rn, rt = reply
    return Balance(
        key, _int_or_none(ln), _int_or_none(lt), int(sn), int(st), int(rn), int(rt)
    )


# Helpers shared by the scripts. A line hash holds:
#   ln, lt   limits (absent = unlimited)   sn, st   spent
#   rn, rt   reserved by live holds        ttl      ms the line lives after a change
#   wm       rolling window in ms (absent = not rolling)
#   g        when the line was made (server ms; absent on lines of old versions)
#   hd       the latest deadline of any hold taken on it (ms; absent likewise)
#   lw       the writer (a ledger in one process) that last changed ln or lt
# A line lives at least until hd: it never expires under a live hold.
# A rolling line keeps its spend per sub-bucket in the hash ns..'r:'..key,
# fields 'n<idx>' and 't<idx>'. A hold hash holds k (JSON list of line keys),
# n, t, at (when it was taken, ms), dl (deadline ms), s ('held' or
# 'settled') and, when it has rolling lines, w (JSON object: line key ->
# {ttl, wm}), so that a settle can make such a line again as it was. Holds
# of old versions lack at and w. The set ns..'lines' indexes line keys for
# listing; a reserve that adds a key drops a few keys of expired lines. Every
# redis.call costs server time on the hot path, so each line is read once
# (HMGET) and written only where needed.
_LUA_LIB: Final = """
local BUCKETS = 60
local REAP_MAX = 1000
local PRUNE = 2

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- HINCRBY by a Lua number; zero is skipped (a negated zero prints as "-0",
-- which HINCRBY rejects, and adding zero is a wasted call).
local function incr(key, field, by)
  if by ~= 0 then redis.call('HINCRBY', key, field, by) end
end

-- A hold's fields, read once: k, n, t, s, at, w.
local function hold_of(hkey)
  return redis.call('HMGET', hkey, 'k', 'n', 't', 's', 'at', 'w')
end

-- Take a live hold's amounts (h, from hold_of) off its lines. A line made
-- after the hold was taken (the old one expired or was evicted) never held
-- them, and no line goes below zero.
local function drop_hold(ns, h)
  if h[4] ~= 'held' then return false end
  local n, t, at = tonumber(h[2]), tonumber(h[3]), tonumber(h[5])
  for _, key in ipairs(cjson.decode(h[1])) do
    local lk = ns .. 'l:' .. key
    local cur = redis.call('HMGET', lk, 'rn', 'rt', 'g')
    local made = tonumber(cur[3])
    if cur[1] and not (at and made and made > at) then
      local rn = math.max(0, tonumber(cur[1]) - n)
      local rt = math.max(0, tonumber(cur[2] or 0) - t)
      redis.call('HSET', lk, 'rn', rn, 'rt', rt)
    end
  end
  return true
end

local function reap(ns, holds, now)
  local expired = redis.call('ZRANGEBYSCORE', holds, '-inf', now, 'LIMIT', 0, REAP_MAX)
  for _, id in ipairs(expired) do
    local hkey = ns .. 'h:' .. id
    drop_hold(ns, hold_of(hkey))
    redis.call('DEL', hkey)
    redis.call('ZREM', holds, id)
  end
end

-- Drop from the line index a few keys whose lines have expired, so that it
-- does not grow for ever with lines used once (a line per task).
local function prune(ns, index)
  for _, key in ipairs(redis.call('SRANDMEMBER', index, PRUNE)) do
    if redis.call('EXISTS', ns .. 'l:' .. key) == 0 then
      redis.call('SREM', index, key)
    end
  end
end

local function width_ms(wm)
  return math.max(1, math.ceil(wm / BUCKETS))
end

-- Drop the rolling sub-buckets whose whole span is older than the window;
-- return the spend dropped, in nanos and tokens.
local function roll(rk, lk, wm, now)
  local width = width_ms(wm)
  local cutoff = now - wm
  local fields = redis.call('HGETALL', rk)
  local dn, dt = 0, 0
  for i = 1, #fields, 2 do
    local f = fields[i]
    if (tonumber(string.sub(f, 2)) + 1) * width <= cutoff then
      if string.sub(f, 1, 1) == 'n' then
        dn = dn + tonumber(fields[i + 1])
      else
        dt = dt + tonumber(fields[i + 1])
      end
      redis.call('HDEL', rk, f)
    end
  end
  incr(lk, 'sn', -dn)
  incr(lk, 'st', -dt)
  return dn, dt
end

-- Put all of a line's spend in the current sub-bucket: a line made without
-- its window (by a settle that did not know it) then rolls like any other.
-- Its spend counts from now, so none is forgotten early.
local function adopt(rk, wm, now, sn, st)
  redis.call('DEL', rk)
  local idx = math.floor(now / width_ms(wm))
  incr(rk, 'n' .. idx, sn)
  incr(rk, 't' .. idx, st)
end

-- How long a line must live from now: its own ttl, and until the latest
-- hold taken on it (hd) has lapsed.
local function life(ttl, hd, now)
  return math.max(tonumber(ttl), (tonumber(hd) or 0) - now)
end

local function expire(lk, rk, ttl, wm)
  redis.call('PEXPIRE', lk, ttl)
  if wm then redis.call('PEXPIRE', rk, ttl) end
end
"""

# KEYS: holds, index, hold, line hashes...
# ARGV: ns, hold_id, nanos, tokens, ttl_ms, writer, then per line: key, ln, lt,
# ttl, wm ('' for absent). Returns {1, others} when held ({1} when already held
# under this id), else {0, line_index, unit, ln, lt, sn, st, rn, rt, lapse_ms,
# others} for a line lacking room (one short by its spend alone first),
# lapse_ms being when its latest hold lapses ('' if unknown). others lists,
# flat, {line_index, ln, lt} of each line whose stored limits differed from
# the ones sent and had been written by another writer (field lw): workers
# that disagree on a limit.
_RESERVE_LUA: Final = (
    _LUA_LIB
    + """
local ns, id, writer = ARGV[1], ARGV[2], ARGV[6]
local nanos, tokens = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
reap(ns, KEYS[1], now)
if redis.call('EXISTS', KEYS[3]) == 1 then return {1} end

local SETTINGS = {'ln', 'lt', 'ttl', 'wm'}
local count = #KEYS - 3
local names, state, windows, added, others = {}, {}, nil, false, {}
for i = 1, count do
  local a = 6 + (i - 1) * 5
  local key, lk = ARGV[a + 1], KEYS[3 + i]
  local cur = redis.call('HMGET', lk, 'ln', 'lt', 'ttl', 'wm', 'sn', 'st', 'rn', 'rt',
    'g', 'hd', 'lw')
  local wm, ttl = ARGV[a + 5], ARGV[a + 4]
  local rk = ns .. 'r:' .. key
  local set, del, limits = {}, {}, false
  for j = 1, 4 do
    local want = ARGV[a + 1 + j]
    if want == '' then
      if cur[j] then
        del[#del + 1] = SETTINGS[j]
        limits = limits or j <= 2
      end
    elseif cur[j] ~= want then
      set[#set + 1] = SETTINGS[j]
      set[#set + 1] = want
      limits = limits or j <= 2
    end
  end
  if limits then
    if cur[11] and cur[11] ~= writer then
      others[#others + 1] = i
      others[#others + 1] = cur[1] or ''
      others[#others + 1] = cur[2] or ''
    end
    set[#set + 1] = 'lw'
    set[#set + 1] = writer
  end
  if not cur[5] then
    for _, f in ipairs({'sn', 'st', 'rn', 'rt', 'g'}) do
      set[#set + 1] = f
      set[#set + 1] = f == 'g' and now or 0
    end
    -- Sub-buckets that outlived an earlier line of this key are not its spend.
    if wm ~= '' then redis.call('DEL', rk) end
  end
  -- Every time, not only for a new line: an index that lost the key (evicted
  -- under a maxmemory-policy other than noeviction) gets it back.
  added = redis.call('SADD', KEYS[2], key) == 1 or added
  if #set > 0 then redis.call('HSET', lk, unpack(set)) end
  if #del > 0 then redis.call('HDEL', lk, unpack(del)) end

  local sn, st = tonumber(cur[5] or 0), tonumber(cur[6] or 0)
  if wm ~= '' then
    if cur[5] and not cur[4] then adopt(rk, tonumber(wm), now, sn, st) end
    local dn, dt = roll(rk, lk, tonumber(wm), now)
    sn, st = sn - dn, st - dt
  end
  if ttl == '' and cur[3] then
    redis.call('PERSIST', lk)
    redis.call('PERSIST', rk)
  end
  names[i] = key
  if wm ~= '' then
    windows = windows or {}
    windows[key] = {ttl, wm}
  end
  local rn, rt = math.max(0, tonumber(cur[7] or 0)), math.max(0, tonumber(cur[8] or 0))
  state[i] = {sn, st, rn, rt, tonumber(cur[10] or 0)}
end

-- A refusal names a line (and unit) that lacks room by its spend alone when
-- one does, else the first that lacks room for what calls in flight hold:
-- only then would every line fit once those calls settle.
local refused
for i = 1, count do
  local a = 6 + (i - 1) * 5
  local ln, lt = ARGV[a + 2], ARGV[a + 3]
  local sn, st, rn, rt, hd = unpack(state[i])
  local unit, lasting
  if ln ~= '' and sn + rn + nanos > tonumber(ln) then
    unit, lasting = 'usd', sn + nanos > tonumber(ln)
  end
  if not lasting and lt ~= '' and st + rt + tokens > tonumber(lt) then
    if not unit or st + tokens > tonumber(lt) then
      unit, lasting = 'tokens', st + tokens > tonumber(lt)
    end
  end
  if unit and (lasting or not refused) then
    local lapse = ''
    if hd > now then lapse = hd - now end
    refused = {0, i, unit, ln, lt, sn, st, rn, rt, lapse, others}
    if lasting then break end
  end
end

local deadline = now + tonumber(ARGV[5])
local held = {}
for i = 1, count do
  local a = 6 + (i - 1) * 5
  local lk, ttl = KEYS[3 + i], ARGV[a + 4]
  local hd = state[i][5]
  if not refused then
    -- Running sums, so that a key named twice holds twice.
    local r = held[lk] or {state[i][3], state[i][4]}
    r[1], r[2] = r[1] + nanos, r[2] + tokens
    held[lk] = r
    hd = math.max(hd, deadline)
    redis.call('HSET', lk, 'rn', r[1], 'rt', r[2], 'hd', hd)
  end
  if ttl ~= '' then
    expire(lk, ns .. 'r:' .. ARGV[a + 1], life(ttl, hd, now), ARGV[a + 5] ~= '')
  end
end
if added then prune(ns, KEYS[2]) end
if refused then return refused end

local hold = {'k', cjson.encode(names), 'n', ARGV[3], 't', ARGV[4], 'at', now,
  'dl', deadline, 's', 'held'}
if windows then
  hold[#hold + 1] = 'w'
  hold[#hold + 1] = cjson.encode(windows)
end
redis.call('HSET', KEYS[3], unpack(hold))
redis.call('ZADD', KEYS[1], deadline, id)
return {1, others}
"""
)

# KEYS: holds, index, hold, line hashes...
# ARGV: ns, hold_id, nanos, tokens, settled_memory_ms, line keys...
# Returns 1 when charged, 0 when this hold id was settled before, 2 when
# charged with no hold to drop (it had expired, or was never taken here).
_SETTLE_LUA: Final = (
    _LUA_LIB
    + """
local ORPHAN_TTL_MS = 86400000
local ns, id = ARGV[1], ARGV[2]
local h = hold_of(KEYS[3])
local state = h[4]
if state == 'settled' then return 0 end
if drop_hold(ns, h) then redis.call('ZREM', KEYS[1], id) end

local now = now_ms()
local nanos, tokens = tonumber(ARGV[3]), tonumber(ARGV[4])
local made  -- the rolling windows the hold carried, read once when needed
for i = 1, #KEYS - 3 do
  local key, lk = ARGV[5 + i], KEYS[3 + i]
  local cur = redis.call('HMGET', lk, 'sn', 'ttl', 'wm', 'hd', 'rn', 'rt')
  local rk = ns .. 'r:' .. key
  if not cur[1] then
    -- The line is gone (evicted, a restart, or lapsed with its hold): make
    -- it again with a lease, so that no key lives for ever. A rolling line
    -- gets the window its hold carried, so its spend rolls off; without one
    -- (the hold is gone too) the next reserve restores the window and
    -- buckets the spend. The next reserve restores the limits and lease.
    made = made or (h[6] and cjson.decode(h[6]) or {})
    local c = made[key]
    local ttl = c and tonumber(c[1]) or ORPHAN_TTL_MS
    redis.call('HSET', lk, 'sn', nanos, 'st', tokens, 'rn', 0, 'rt', 0,
      'ttl', ttl, 'g', now)
    if c then
      redis.call('HSET', lk, 'wm', c[2])
      redis.call('DEL', rk)
    end
    redis.call('SADD', KEYS[2], key)
    cur[2], cur[3] = ttl, c and c[2]
  else
    incr(lk, 'sn', nanos)
    incr(lk, 'st', tokens)
  end
  if cur[3] then
    local wm = tonumber(cur[3])
    roll(rk, lk, wm, now)
    local idx = math.floor(now / width_ms(wm))
    incr(rk, 'n' .. idx, nanos)
    incr(rk, 't' .. idx, tokens)
  end
  -- With no live hold left on the line (none reserves anything), the
  -- latest hold deadline no longer keeps it: a rolling line lives its own
  -- lease, window_s x 61/60, not hold_ttl_s.
  local hd = cur[4]
  if tonumber(cur[5] or 0) <= 0 and tonumber(cur[6] or 0) <= 0 then hd = nil end
  if cur[2] then expire(lk, rk, life(cur[2], hd, now), cur[3]) end
end

redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[3], 's', 'settled')
redis.call('PEXPIRE', KEYS[3], ARGV[5])
if not state then return 2 end
return 1
"""
)

# KEYS: holds, hold.  ARGV: ns, hold_id, memory_ms.
# Returns 1 when a live hold was dropped. An unknown id is remembered as
# released for memory_ms: a reserve still on its way (one that timed out or
# was cancelled on the client) then finds it and holds nothing.
_RELEASE_LUA: Final = (
    _LUA_LIB
    + """
local h = hold_of(KEYS[2])
if not drop_hold(ARGV[1], h) then
  if redis.call('EXISTS', KEYS[2]) == 0 then
    redis.call('HSET', KEYS[2], 's', 'released')
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
  end
  return 0
end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[2])
-- A line left with no live hold lives its own lease again, as after a
-- settle, not until the deadline of the hold just released.
local now = now_ms()
for _, key in ipairs(cjson.decode(h[1])) do
  local lk = ARGV[1] .. 'l:' .. key
  local cur = redis.call('HMGET', lk, 'ttl', 'wm', 'rn', 'rt')
  if cur[1] and tonumber(cur[3] or 0) <= 0 and tonumber(cur[4] or 0) <= 0 then
    expire(lk, ARGV[1] .. 'r:' .. key, life(cur[1], nil, now), cur[2])
  end
end
return 1
"""
)

# KEYS: holds, hold.  ARGV: ns, hold_id, ttl_ms.
# Returns 1 when the hold was live and now lives ttl_ms from now, else 0.
# The hold's lines then live at least as long as the hold.
_RENEW_LUA: Final = (
    _LUA_LIB
    + """
local ns = ARGV[1]
local now = now_ms()
reap(ns, KEYS[1], now)
local h = redis.call('HMGET', KEYS[2], 's', 'k')
if h[1] ~= 'held' then return 0 end
local deadline = now + tonumber(ARGV[3])
redis.call('HSET', KEYS[2], 'dl', deadline)
redis.call('ZADD', KEYS[1], deadline, ARGV[2])
for _, key in ipairs(cjson.decode(h[2])) do
  local lk = ns .. 'l:' .. key
  local cur = redis.call('HMGET', lk, 'sn', 'ttl', 'wm', 'hd')
  if cur[1] and (tonumber(cur[4]) or 0) < deadline then
    redis.call('HSET', lk, 'hd', deadline)
    if cur[2] then
      expire(lk, ns .. 'r:' .. key, life(cur[2], deadline, now), cur[3])
    end
  end
end
return 1
"""
)

# KEYS: holds, line.  ARGV: ns, key.
# Returns false for an unknown line, else {ln, lt, sn, st, rn, rt}.
_BALANCE_LUA: Final = (
    _LUA_LIB
    + """
local now = now_ms()
reap(ARGV[1], KEYS[1], now)
if redis.call('EXISTS', KEYS[2]) == 0 then return false end
local wm = redis.call('HGET', KEYS[2], 'wm')
if wm then roll(ARGV[1] .. 'r:' .. ARGV[2], KEYS[2], tonumber(wm), now) end
local c = redis.call('HMGET', KEYS[2], 'ln', 'lt', 'sn', 'st', 'rn', 'rt')
return {c[1] or '', c[2] or '', c[3] or '0', c[4] or '0', c[5] or '0', c[6] or '0'}
"""
)

_LIST_BATCH: Final = 500
"""Index entries read per round trip when listing lines."""

# KEYS: index.  ARGV: ns, key...  Returns the given line keys whose counters
# still live; keys of expired lines leave the index.
_LIST_LUA: Final = (
    _LUA_LIB
    + """
local live = {}
for i = 2, #ARGV do
  local key = ARGV[i]
  if redis.call('EXISTS', ARGV[1] .. 'l:' .. key) == 1 then
    live[#live + 1] = key
  else
    redis.call('SREM', KEYS[1], key)
  end
end
return live
"""
)

# KEYS: line.  ARGV: ns, key.  Zeroes a line's spend; returns 1 if it existed.
_RESET_LUA: Final = (
    _LUA_LIB
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'sn', 0, 'st', 0)
redis.call('DEL', ARGV[1] .. 'r:' .. ARGV[2])
return 1
"""
)
