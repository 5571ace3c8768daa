"""What the spend commands say when the Redis spend store does not answer.

``governor report``, ``replay``, ``compare`` and ``demo`` share it, so that a
Redis that is down reads the same wherever it is named.
"""

from __future__ import annotations

__all__ = ["redis_down", "unreachable"]


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
    from governor.stores._redis import redact_url

    source = f"from {option}" if given else f"from {ENV_SPEND_DB}"
    cause = str(exc).rstrip(".")
    return (
        f"cannot reach the Redis spend store at {redact_url(target)} ({source}): "
        f"{cause}. Check the URL (host, port, database, password, TLS), start "
        f"Redis there, or pass {option} (or set {ENV_SPEND_DB}) to the store "
        "your services record spend to."
    )
