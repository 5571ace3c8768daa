"""The response cache: exact layer, then semantic layer behind the safety gate.

The cache fails open: when its store or embedder fails, the lookup is a miss
with reason ``store_error`` or ``embed_error``, a warning is logged, and the
model call goes ahead. An embedder failure rests nothing: the answer is still
stored for exact repeats. A governed embedding refused by the governor (a
budget) raises to the caller, as any refused call does. An entry that cannot
be served (corrupted, or written by another release) is a plain miss, logged
once, and the fresh answer replaces it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from governor._errors import ConfigError, GovernorError
from governor._money import as_decimal, usd_to_nanos
from governor._quiet import Quiet
from governor.cache._embed import (
    Embedder,
    EmbedderOutputError,
    PricedEmbedder,
    Vectors,
    checked_vectors,
    make_embedder,
)
from governor.cache._gate import gate_refusal
from governor.cache._request import (
    CacheKeys,
    KeyOptions,
    build_keys,
    normalize_query,
)
from governor.cache._store import CacheStore, MemoryCacheStore
from governor.cache._types import (
    CacheEntry,
    CacheHit,
    CacheMiss,
    entry_problem,
    message_problem,
    message_text,
)
from governor.policies import Cache

if TYPE_CHECKING:
    import redis

__all__ = ["ResponseCache", "Stored", "Verifier"]

logger = logging.getLogger(__name__)

# A store that is down fails every lookup: one WARNING with its traceback a
# minute per kind of failure, the rest at DEBUG and counted.
_QUIET = Quiet()


def _failed(kind: str, message: str, error: BaseException) -> None:
    """Log ``error``: a WARNING, or DEBUG if one was just given for ``kind``."""
    skipped = _QUIET.due(kind)
    if skipped is None:
        logger.debug(message, exc_info=error)
        return
    logger.warning(
        "%s (%d more like it since the last warning; for %.0f s more they "
        "are logged at DEBUG)",
        message,
        skipped,
        _QUIET.every_s,
        exc_info=error,
    )


class _Refused(Exception):
    """Carries a governor's refusal of the cache's own call past the
    fail-open handlers, to be raised to the caller as it was."""

    def __init__(self, error: GovernorError) -> None:
        super().__init__(str(error))
        self.error = error


def _embed_failed(error: Exception) -> None:
    """Log an embedder failure: a bad output as one line, others as
    :func:`_failed` does; either at most once a minute."""
    if not isinstance(error, EmbedderOutputError):
        _failed("embed", "cache embedding failed; calling the model", error)
        return
    skipped = _QUIET.due("embed_output")
    log = logger.debug if skipped is None else logger.warning
    log(
        "%s; the request misses and its answer serves exact repeats only "
        "(%d more like it since the last warning)",
        error,
        skipped or 0,
    )


# How long the cache leaves its store alone after a failure, in seconds.
_STORE_REST_S = 1.0

# Nearest entries fetched per semantic lookup: the best, and rivals to it.
_CANDIDATES = 4

# Keys of unservable entries already warned of, per cache (then forgotten).
_WARNED_KEYS = 1024

Verifier = Callable[[str, str, str], bool]
"""``(question, cached_question, cached_answer) -> True`` to allow a semantic hit."""


@dataclass(frozen=True, slots=True)
class Stored:
    """What :meth:`ResponseCache.store` did.

    Attributes:
        stored: True when the answer was stored.
        reason: why it was not, or None: ``"not_storable"``, ``"too_long"``,
            ``"store_error"``, ``"empty_answer"`` (no text, or only white
            space and invisible characters), or ``"unsupported_message"``
            (not a plain
            ``{"role": "assistant", "content": "<text>"}`` answer, e.g. one
            with tool calls).
        embedding_cost_usd: what embedding the question cost here (only when
            the lookup had not embedded it already); charge it.
    """

    stored: bool
    reason: str | None = None
    embedding_cost_usd: Decimal = Decimal(0)


class ResponseCache:
    """Answers requests from earlier answers, per a :class:`~governor.Cache` policy.

    Call :meth:`lookup` before a model call. On a :class:`CacheHit` serve its
    message at zero cost; on a :class:`CacheMiss` make the call, then pass the
    miss and the answer to :meth:`store`. Thread-safe; the ``a``-prefixed
    methods run the same work in a worker thread.
    """

    def __init__(
        self,
        policy: Cache,
        *,
        store: CacheStore | None = None,
        embedder: Embedder | None = None,
        verifier: Verifier | None = None,
        redis_client: redis.Redis | None = None,
        clock: Callable[[], float] = time.time,
        embedding_call: Callable[..., Any] | None = None,
    ) -> None:
        """Build a cache.

        Args:
            policy: the cache settings.
            store: where entries live; default from ``policy.store``.
            embedder: overrides ``policy.embedder``; built lazily otherwise,
                so a cache whose semantic layer is off never loads a model.
            verifier: confirms semantic hits; required when ``policy.verifier``
                names a model (the governor builds it on a model call).
            redis_client: the client for ``store="redis"`` (bytes responses).
            clock: seconds since the epoch, injectable for tests.
            embedding_call: replaces ``litellm.embedding`` for a
                ``"litellm:<model>"`` embedder; the governor passes its
                governed one, so paid embeddings are charged to the task.

        Raises:
            ConfigError: ``store="redis"`` without a client or store, or a
                verifier model named without a verifier callable.
        """
        self.policy = policy
        # After the store failed, it is left alone for a moment: a store that
        # hangs (not one that refuses) would hold every call for its timeout.
        self._down_until = 0.0
        if redis_client is not None and store is None and policy.store != "redis":
            logger.warning(
                "ResponseCache got a Redis client but its policy keeps entries "
                "in memory (Cache(store=%r)); the client is not used. Set "
                "Cache(store='redis') to share the cache through Redis",
                policy.store,
            )
        self._store = store or _default_store(policy, redis_client)
        self._embedder = embedder
        self._embedding_call = embedding_call
        self._verifier = _resolve_verifier(policy, verifier)
        self._clock = clock
        self._warned_keys: set[str] = set()
        self._dimensions: int | None = None  # of the embedder's first vector
        self._options = KeyOptions(
            partition_by=policy.partition_by,
            scope_by_model=policy.scope_by_model,
            scope_by_system_prompt=policy.scope_by_system_prompt,
            scope_by_tools=policy.scope_by_tools,
            scope_by_context=policy.scope_by_context,
            max_temperature=policy.max_temperature,
        )

    @property
    def store_backend(self) -> CacheStore:
        """The store entries live in."""
        return self._store

    @property
    def embedder(self) -> Embedder:
        """The embedder of the semantic layer (loaded on first use)."""
        if self._embedder is None:
            self._embedder = make_embedder(
                self.policy.embedder, embedding_call=self._embedding_call
            )
        return self._embedder

    @property
    def threshold(self) -> float:
        """The similarity a semantic hit needs."""
        configured = self.policy.similarity_threshold
        return configured if configured is not None else self.embedder.default_threshold

    def lookup(
        self,
        *,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        params: Mapping[str, Any] | None = None,
        partition: Mapping[str, str] | None = None,
    ) -> CacheHit | CacheMiss:
        """Find a cached answer for a request.

        Args:
            model: the model tier the request would go to.
            messages: the chat messages.
            params: every other request parameter (temperature, tools,
                response_format, ``cache={"no-cache": True}`` ...).
            partition: the task's attribution values, e.g.
                ``{"org": "acme", "team": "search"}``.

        Returns:
            A :class:`CacheHit` to serve, or a :class:`CacheMiss` to hand back
            to :meth:`store` after the model call.

        Raises:
            GovernorError: the governor refused the cache's embedding call
                (``embedder="litellm:<model>"`` through a governor), e.g.
                :class:`~governor.BudgetExceeded`; the cache carries on for
                other calls.
        """
        keys = self.keys(
            model=model, messages=messages, params=params, partition=partition
        )
        if keys.uncacheable is not None:
            return CacheMiss(keys.uncacheable, keys, storable=False)
        if not keys.read:
            return CacheMiss("opt_out", keys, storable=keys.write)
        if time.monotonic() < self._down_until:
            return CacheMiss("store_error", keys, storable=False)
        try:
            return self._lookup(keys)
        except _Refused as refused:  # the caller's refusal, not a cache fault
            raise refused.error from refused.error.__cause__
        except Exception as exc:  # the cache fails open: it never blocks a call
            self._store_failed()
            _failed("lookup", "cache lookup failed; calling the model", exc)
            return CacheMiss("store_error", keys, storable=False)

    def recheck(self, miss: CacheMiss) -> CacheHit | CacheMiss:
        """Look again for a request that missed a moment ago.

        For a call that then waited (for a fan-out slot, say) while another
        call stored the same answer. The miss's keys and embedding are
        reused, so nothing is embedded or charged again; a miss that could
        not be read (opt-out, uncacheable, a failed store) stays as it was.
        With a verifier set, only exact matches are served here.

        Returns:
            A :class:`CacheHit` to serve instead of calling the model, or
            ``miss`` itself.
        """
        keys = miss.keys
        if keys.uncacheable is not None or not keys.read or not miss.storable:
            return miss
        if miss.reason in ("store_error", "embed_error"):
            return miss
        if time.monotonic() < self._down_until:
            return miss
        try:
            found = self._relookup(miss)
        except Exception as exc:  # fails open, as lookup does
            self._store_failed()
            _failed("lookup", "cache lookup failed; calling the model", exc)
            return miss
        return found if found.hit else miss

    def keys(
        self,
        *,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        params: Mapping[str, Any] | None = None,
        partition: Mapping[str, str] | None = None,
    ) -> CacheKeys:
        """Return a request's keys and cacheability under this cache's policy."""
        return build_keys(
            model=model,
            messages=messages,
            params=params or {},
            partition=partition or {},
            options=self._options,
        )

    def store(
        self,
        miss: CacheMiss,
        *,
        message: Mapping[str, Any],
        model: str,
        cost_usd: Decimal,
        input_tokens: int = 0,
        output_tokens: int = 0,
    ) -> Stored:
        """Store the answer a model gave to a request that missed.

        Args:
            miss: the :class:`CacheMiss` that :meth:`lookup` returned.
            message: the assistant message, ``{"role": "assistant",
                "content": "<text>"}``; any other (tool calls, other
                fields) is not stored, nor is an empty or blank text.
            model: the model that answered.
            cost_usd: what the answer cost; reported as saved on later hits.
            input_tokens: prompt tokens of the call.
            output_tokens: completion tokens of the call.

        A governor's refusal of the question's embedding (a budget) is
        logged: the answer is stored for exact repeats, and the caller, who
        paid for it, gets it.
        """
        cost_usd = as_decimal(cost_usd, field="cost_usd")
        keys = miss.keys
        if not miss.storable or not keys.write:
            return Stored(False, "not_storable")
        if message_problem(dict(message)) is not None:
            return Stored(False, "unsupported_message")
        text = message_text(dict(message))
        if not _visible(text):  # a provider's glitch, not an answer to serve
            return Stored(False, "empty_answer")
        if len(text) > self.policy.max_answer_chars:
            return Stored(False, "too_long")
        if time.monotonic() < self._down_until:
            return Stored(False, "store_error")
        try:
            return self._store_entry(
                miss, dict(message), model, cost_usd, input_tokens, output_tokens
            )
        except Exception as exc:  # fail open: a lost entry only costs a later call
            self._store_failed()
            _failed("store", "cache store failed; the answer is not cached", exc)
            return Stored(False, "store_error")

    def _store_failed(self) -> None:
        """Leave the store alone for a moment: calls go on uncached meanwhile."""
        self._down_until = time.monotonic() + _STORE_REST_S

    async def alookup(
        self,
        *,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        params: Mapping[str, Any] | None = None,
        partition: Mapping[str, str] | None = None,
    ) -> CacheHit | CacheMiss:
        """Async form of :meth:`lookup` (the embedding runs in a thread)."""
        return await asyncio.to_thread(
            self.lookup,
            model=model,
            messages=messages,
            params=params,
            partition=partition,
        )

    async def arecheck(self, miss: CacheMiss) -> CacheHit | CacheMiss:
        """Async form of :meth:`recheck` (the store is read in a thread)."""
        return await asyncio.to_thread(self.recheck, miss)

    async def astore(
        self,
        miss: CacheMiss,
        *,
        message: Mapping[str, Any],
        model: str,
        cost_usd: Decimal,
        input_tokens: int = 0,
        output_tokens: int = 0,
    ) -> Stored:
        """Async form of :meth:`store` (the embedding runs in a thread)."""
        return await asyncio.to_thread(
            self.store,
            miss,
            message=message,
            model=model,
            cost_usd=cost_usd,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )

    async def aclear(self) -> None:
        """Async form of :meth:`clear`."""
        await asyncio.to_thread(self.clear)

    def clear(self) -> None:
        """Drop every entry of this cache's store."""
        self._store.clear()

    def _lookup(self, keys: CacheKeys) -> CacheHit | CacheMiss:
        now = self._clock()
        hit = self._exact(keys, now)
        if hit is not None:
            return hit
        if not self.policy.semantic or keys.query is None:
            return CacheMiss(keys.semantic_skip or "not_found", keys)
        if not self._embeddable(keys.query):
            return CacheMiss("too_long", keys)
        try:
            vector, cost = self._embed(keys.query)
        except EmbedderOutputError as exc:
            _embed_failed(exc)
            return CacheMiss("embed_error", keys)
        except GovernorError as exc:  # a governed embedding refused: not a fault
            raise _Refused(exc) from None
        except Exception as exc:
            _embed_failed(exc)
            return CacheMiss("embed_error", keys)
        return self._semantic(keys, vector, cost, now)

    def _relookup(self, miss: CacheMiss) -> CacheHit | CacheMiss:
        """:meth:`_lookup` on a miss's keys and vector, embedding nothing.

        With a verifier, only the exact layer is asked: a recheck runs while
        the call holds its fan-out slots, and the verifier's own model call
        would wait for one of them.
        """
        now = self._clock()
        hit = self._exact(miss.keys, now)
        if hit is not None:
            return hit
        if not self.policy.semantic or miss.vector is None or self._verifier:
            return miss
        return self._semantic(miss.keys, miss.vector, Decimal(0), now)

    def _exact(self, keys: CacheKeys, now: float) -> CacheHit | None:
        if not self.policy.exact:
            return None
        entry = self._store.get(keys.exact, now)
        if entry is None or not self._servable(entry):
            return None
        self._store.touch(entry.key, now)
        return CacheHit.from_entry(entry, layer="exact", similarity=1.0, now=now)

    def _servable(self, entry: CacheEntry) -> bool:
        """False, with a warning once per key, for an entry unfit to serve.

        The Redis store deletes such entries as it reads them; this catches
        them in any store. The miss is storable, so the fresh answer
        replaces the entry.
        """
        problem = entry_problem(entry)
        if problem is None:
            return True
        key = str(entry.key)
        if key not in self._warned_keys:
            if len(self._warned_keys) >= _WARNED_KEYS:
                self._warned_keys.clear()
            self._warned_keys.add(key)
            logger.warning(
                "cache entry %s cannot be served (%s); the request goes to the "
                "model and its answer replaces the entry",
                key,
                problem,
            )
        return False

    def _embeddable(self, query: str) -> bool:
        """Short enough to embed whole (see ``Cache.max_semantic_chars``)."""
        if len(query) > self.policy.max_semantic_chars:
            return False
        fits = getattr(self.embedder, "fits", None)
        return fits is None or bool(fits(query))

    def _semantic(
        self, keys: CacheKeys, vector: Vectors, cost: Decimal, now: float
    ) -> CacheHit | CacheMiss:
        assert keys.query is not None
        threshold, margin = self.threshold, self.policy.ambiguity_margin or 0.0
        matches, best = self._store.search(
            self._index(keys),
            vector,
            min_score=threshold - margin,
            limit=_CANDIDATES,
            now=now,
        )
        if best is not None:
            best = min(best, 1.0)  # float32 rounding can pass 1 by an ulp
        matches = [(entry, score) for entry, score in matches if self._servable(entry)]
        miss = CacheMiss(
            "not_found", keys, best, embedding_cost_usd=cost, vector=vector
        )
        if not matches or matches[0][1] < threshold:
            return miss
        entry, score = matches[0][0], min(matches[0][1], 1.0)
        if self.policy.ambiguity_margin is not None and _rivalled(matches, margin):
            return replace(miss, reason="ambiguous")
        refusal = self._refusal(keys.text or keys.query, entry)
        if refusal is not None:
            logger.debug("semantic match %.3f refused: %s", score, refusal)
            return replace(miss, reason=refusal)
        self._store.touch(entry.key, now)
        return CacheHit.from_entry(
            entry, layer="semantic", similarity=score, now=now, embedding_cost_usd=cost
        )

    def _refusal(self, query: str, entry: CacheEntry) -> str | None:
        if entry.query is None:
            return "gate:no_question"
        if self.policy.safety_gate:
            check = gate_refusal(entry.query, query)
            if check is not None:
                return f"gate:{check}"
        if self._verifier is not None:
            try:
                allowed = self._verifier(
                    query, entry.query, message_text(entry.message)
                )
            except GovernorError as exc:  # its call refused, e.g. by a budget
                logger.warning(
                    "cache verifier call refused (%s: %s); refusing the hit",
                    type(exc).__name__,
                    exc,
                )
                return "verifier"
            except Exception:  # a failing verifier refuses: never serve unverified
                logger.warning("cache verifier failed; refusing the hit", exc_info=True)
                return "verifier"
            if not allowed:
                return "verifier"
        return None

    def _store_entry(
        self,
        miss: CacheMiss,
        message: dict[str, Any],
        model: str,
        cost_usd: Decimal,
        input_tokens: int,
        output_tokens: int,
    ) -> Stored:
        keys = miss.keys
        now = self._clock()
        vector, cost, refused = self._store_vector(miss)
        indexed = vector is not None
        ttl = self.policy.ttl_s
        entry = CacheEntry(
            key=keys.exact,
            index=self._index(keys) if indexed else None,
            query=(keys.text or keys.query) if indexed else keys.query,
            message=message,
            model=model,
            cost_nanos=usd_to_nanos(cost_usd),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            created_at=now,
            expires_at=now + ttl if ttl is not None else None,
        )
        self._store.put(entry, vector, now)
        if refused is not None:
            # The answer is paid for and must reach the caller: the refused
            # embedding costs only the semantic layer this entry.
            logger.warning(
                "cache embedding refused (%s: %s); the answer is stored for "
                "exact repeats only",
                type(refused).__name__,
                refused,
            )
        return Stored(True, None, cost)

    def _store_vector(
        self, miss: CacheMiss
    ) -> tuple[Vectors | None, Decimal, GovernorError | None]:
        """The vector to index a stored answer by (None: exact layer only),
        what embedding it cost, and a governor's refusal of that embedding.

        An embedder that failed at the lookup is not asked again; one that
        fails now leaves the answer to the exact layer, as a refusal does.
        """
        query = miss.keys.query
        if not self.policy.semantic or query is None:
            return None, Decimal(0), None
        if miss.vector is not None:
            return miss.vector, Decimal(0), None
        if miss.reason == "embed_error" or not self._embeddable(query):
            return None, Decimal(0), None
        try:
            vector, cost = self._embed(query)
        except GovernorError as exc:
            if isinstance(exc, EmbedderOutputError):
                _embed_failed(exc)
                return None, Decimal(0), None
            return None, Decimal(0), exc
        except Exception as exc:
            _embed_failed(exc)
            return None, Decimal(0), None
        return vector, cost, None

    def _embed(self, text: str) -> tuple[Vectors, Decimal]:
        """One text's unit vector and its cost, checked before it enters the
        cache: a wrong shape or value raises :class:`EmbedderOutputError`."""
        embedder = self.embedder
        if isinstance(embedder, PricedEmbedder):
            vectors, cost = embedder.embed_priced([text])
        else:
            vectors, cost = embedder.embed([text]), Decimal(0)
        rows = checked_vectors(vectors, 1, embedder=embedder.name, allow_zero=True)
        dimensions = self._dimensions or rows.shape[1]
        if rows.shape[1] != dimensions:
            raise EmbedderOutputError(
                f"embedder {embedder.name!r} returned a vector of "
                f"{rows.shape[1]} numbers after vectors of {dimensions}: an "
                "embedder must give every text vectors of one length; fix it "
                "and give it a new name, or pick a built-in one"
            )
        self._dimensions = dimensions
        return np.ascontiguousarray(rows[0], dtype=np.float32), cost

    def _index(self, keys: CacheKeys) -> str:
        # Vectors of two embedders are never compared: the name is in the index.
        raw = f"{keys.scope}|{self.embedder.name}".encode()
        return hashlib.blake2b(raw, digest_size=12).hexdigest()


def _default_store(policy: Cache, client: redis.Redis | None) -> CacheStore:
    if policy.store == "memory":
        return MemoryCacheStore(
            max_entries=policy.max_entries, eviction=policy.eviction
        )
    if client is None:
        raise ConfigError(
            "Cache(store='redis') needs a Redis client: pass redis_client= or a "
            "RedisCacheStore as store="
        )
    from governor.cache._redis_store import RedisCacheStore

    # Caches with other bounds or eviction keep their entries apart: one
    # store's put would evict down to its own bound in a shared order.
    return RedisCacheStore.for_settings(
        client,
        prefix=policy.key_prefix,
        max_entries=policy.max_entries,
        eviction=policy.eviction,
    )


def _resolve_verifier(policy: Cache, verifier: Verifier | None) -> Verifier | None:
    if verifier is not None:
        return verifier
    if callable(policy.verifier):
        found: Verifier = policy.verifier
        return found
    if isinstance(policy.verifier, str):
        raise ConfigError(
            f"Cache(verifier={policy.verifier!r}) names a model: pass the "
            "verifier callable that asks it to ResponseCache(verifier=...)"
        )
    return None


def _rivalled(matches: list[tuple[CacheEntry, float]], margin: float) -> bool:
    """True when another question scores within ``margin`` of the best match.

    Two different cached questions that both sit close to the new one mean it
    lies between them; serving either answer is a guess. The same question
    stored twice (e.g. under two temperatures) is no rival.
    """
    best_entry, best_score = matches[0]
    same = _spelling_folded(best_entry.query or "")
    return any(
        score >= best_score - margin and _spelling_folded(entry.query or "") != same
        for entry, score in matches[1:]
    )


def _spelling_folded(question: str) -> str:
    """``question`` with case folded, and one closing ``?``, ``.`` or ``!``
    right after a word's letter (a space between allowed) dropped: two
    spellings of one question ("What is X?", "what is x") are no rivals.
    A mark after a digit or another mark stays: "10!" is a factorial,
    "cd .." a path, "a+?" a pattern."""
    return _CLOSING_MARK.sub("", normalize_query(question).casefold())


_CLOSING_MARK = re.compile(r"(?<=[^\W\d_])[ \t]*[?.!]$")


def _visible(text: str) -> bool:
    """Whether ``text`` shows anything: not only white space, control and
    format characters (a zero-width space, a byte-order mark). A character
    this Python's Unicode tables do not know yet (a newer emoji) shows."""
    return any(
        not char.isspace() and unicodedata.category(char) not in _INVISIBLE
        for char in text
    )


# Unicode categories that draw nothing: controls, format characters,
# separators.
_INVISIBLE: Final = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
