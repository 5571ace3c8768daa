"""Spend records in Redis, for fleets that share one history."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from governor.spend._record import SpendDataError, SpendRecord, load_json
from governor.spend._store import (
    Filters,
    check_bounds,
    check_filters,
    matches,
)
from governor.spend._time import to_us

if TYPE_CHECKING:
    import redis

__all__ = ["RedisSpendStore"]

_PAGE = 500
_CONNECT_TIMEOUT_S = 5.0
_COMMAND_TIMEOUT_S = 10.0


class RedisSpendStore:
    """Spend records in two Redis keys under a prefix.

    ``<prefix>{spend}:h`` maps each call id to its record's JSON (the JSONL
    trace form); ``<prefix>{spend}:z`` orders the call ids by time in
    microseconds. Both keys share the ``{spend}`` hash tag so that a write is
    one MULTI transaction on Redis Cluster too. A ``call_id`` recorded twice
    keeps the first. A query pages through the time index, so records written
    while it runs may or may not appear.

    Thread-safe as redis-py's client is. A write of records already stored
    changes nothing, so a batch whose reply was lost may be sent again.

    Args:
        client: a ``redis.Redis`` client (``decode_responses`` either way).
        prefix: prepended to both keys, e.g. ``"governor:"``.

    Attributes:
        url: where the client connects, its password shown as ``***``.
    """

    def __init__(self, client: redis.Redis, *, prefix: str = "governor:") -> None:
        self._client = client
        self.hash_key = f"{prefix}{{spend}}:h"
        self.index_key = f"{prefix}{{spend}}:z"
        self.url = _client_url(client)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "governor:") -> RedisSpendStore:
        """Connect to the Redis server at ``url`` (``redis://host:port/db``).

        Opening a connection may take 5 s and one command 10 s before it
        counts as failed, unless the URL sets ``socket_connect_timeout`` or
        ``socket_timeout``: a Redis that hangs never blocks the spend writer
        (or a report) for good.
        """
        import redis as redis_lib

        from governor.stores._redis import check_url_options, redact_url

        check_url_options(url)
        client = redis_lib.Redis.from_url(
            url,
            socket_connect_timeout=_CONNECT_TIMEOUT_S,
            socket_timeout=_COMMAND_TIMEOUT_S,
        )
        store = cls(client, prefix=prefix)
        store.url = redact_url(url)
        return store

    def record(self, rec: SpendRecord) -> None:
        """Store one record."""
        self.record_many((rec,))

    def record_many(self, recs: Iterable[SpendRecord]) -> None:
        """Store several records in one MULTI/EXEC transaction."""
        pipe = self._client.pipeline(transaction=True)
        queued = False
        for rec in recs:
            body = json.dumps(rec.to_json_dict(), separators=(",", ":"))
            pipe.hsetnx(self.hash_key, rec.call_id, body)
            pipe.zadd(self.index_key, {rec.call_id: to_us(rec.ts)}, nx=True)
            queued = True
        if queued:
            pipe.execute()

    def query(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        filters: Filters | None = None,
    ) -> Iterator[SpendRecord]:
        """Yield matching records in time order; see :class:`SpendStore`.

        Raises:
            SpendDataError: a stored record is not valid (the message names it).
        """
        check_bounds(since, until)
        wanted = check_filters(filters)
        low: Any = "-inf" if since is None else to_us(since)
        high: Any = "+inf" if until is None else f"({to_us(until)}"
        return self._pages(low, high, wanted)

    def _pages(
        self, low: Any, high: Any, wanted: dict[str, str | None]
    ) -> Iterator[SpendRecord]:
        offset = 0
        while True:
            ids: list[bytes] = cast(
                "list[bytes]",
                self._client.zrangebyscore(
                    self.index_key, low, high, start=offset, num=_PAGE
                ),
            )
            if not ids:
                return
            offset += len(ids)
            bodies = self._client.hmget(self.hash_key, ids)
            for call_id, body in zip(ids, bodies, strict=True):
                if body is None:
                    continue
                rec = self._parse(call_id, body)
                if matches(rec, wanted):
                    yield rec

    def _parse(self, call_id: bytes | str, body: bytes | str) -> SpendRecord:
        try:
            return SpendRecord.from_json_dict(load_json(body))
        except ValueError as exc:
            name = call_id.decode() if isinstance(call_id, bytes) else call_id
            raise SpendDataError(
                f"{self.url} {self.hash_key} field {name!r}: {exc}"
            ) from exc

    def clear(self) -> None:
        """Delete both keys (every record under this prefix)."""
        self._client.delete(self.hash_key, self.index_key)

    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()

    def __enter__(self) -> RedisSpendStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WriteFailure(NamedTuple):
    """Why a spend write to Redis failed, as the spend writer logs it.

    Attributes:
        refused: what the server refused (``"refused the credentials"``),
            or None for an outage, which retrying may get past.
        advice: what to change, or None when there is nothing to suggest.
    """

    refused: str | None
    advice: str | None


def write_failure(exc: BaseException, url: str) -> WriteFailure:
    """Tell a refusal of a spend write from an outage, with what to change.

    Credentials the server refused, an ACL user lacking a command and the
    other refusals the budget ledger knows (maxmemory, a read-only replica,
    ...) stay refused however often the write is retried; the advice reuses
    the ledger's, pointed at the spend store's URL. Anything else is an
    outage, with advice only where there is a likely cause: a ``rediss://``
    URL timing out against a server that does not speak TLS.
    """
    import redis as redis_lib

    from governor.stores._redis import (
        credentials_advice,
        reach_advice,
        refusal_advice,
    )

    credentials = credentials_advice(exc, url, where=_SPEND_URL)
    if credentials is not None:
        return WriteFailure("refused the credentials", credentials)
    if isinstance(exc, redis_lib.exceptions.NoPermissionError):
        return WriteFailure(
            "refused a command to the ACL user",
            "Grant the user the spend store's ACL rules listed in "
            "docs/budgets-redis.md (Managed Redis), or name another user in "
            f"{_SPEND_URL}",
        )
    refused = refusal_advice(exc)
    if refused is not None:
        return WriteFailure("refused the write", refused)
    tls = url.lower().startswith("rediss:")
    if tls and isinstance(exc, redis_lib.exceptions.TimeoutError):
        return WriteFailure(None, reach_advice(url, exc))
    return WriteFailure(None, None)


_SPEND_URL = "the spend store's URL (Governor(spend=...))"


def _client_url(client: Any) -> str:
    """Describe where a redis-py client connects, never showing its password."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if not isinstance(kwargs, dict):
        return f"Redis ({type(client).__name__})"
    user = kwargs.get("username") or ""
    auth = f"{user}:***@" if kwargs.get("password") else f"{user}@" if user else ""
    db = kwargs.get("db", 0)
    if kwargs.get("path"):
        return f"unix://{auth}{kwargs['path']}?db={db}"
    ssl = "SSL" in getattr(getattr(pool, "connection_class", None), "__name__", "")
    host = kwargs.get("host", "localhost")
    port = kwargs.get("port", 6379)
    return f"{'rediss' if ssl else 'redis'}://{auth}{host}:{port}/{db}"
