"""An exact vector index: a float32 matrix of unit rows, pruned by a bound.

Small indexes are searched by one matrix-vector product. Once an index holds
``PROJECT_AT`` rows, it also keeps each row's coordinates in a
``PROJECT_DIMS``-dimensional principal subspace and the norm of the rest. For
unit vectors ``x`` and ``q`` split that way, Cauchy-Schwarz gives
``x.q <= xp.qp + |x_rest| |q_rest|``, so rows whose bound is below the
threshold cannot match and are skipped; only the survivors get the full
product. The search stays exact; the subspace only decides how fast it is.
Sentence embeddings share a strong common direction, so a few dozen
dimensions hold most of each vector and the bound prunes almost every row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = ["PROJECT_AT", "PROJECT_DIMS", "VectorIndex", "top_matches"]

logger = logging.getLogger(__name__)

Vector = npt.NDArray[np.float32]
# Two unit vectors score at most 1; float32 rounding stays far below this.
# A higher score (or NaN) means a corrupt row or query, never a match.
MAX_SCORE = 1.0 + 1e-3
PROJECT_AT = 4096
PROJECT_DIMS = 48
_REFIT_GROWTH = 8
_FIT_SAMPLE = 8192
# One row: most indexes (one per conversation context) hold one entry.
_INITIAL_ROWS = 1
# Scoring a gathered row costs about this many rows of a contiguous product.
_GATHER_COST = 4


def top_matches(scores: Vector, min_score: float, limit: int) -> list[int]:
    """Return the positions in ``scores`` at or above ``min_score``, best first."""
    rows = np.flatnonzero(scores >= min_score)
    if rows.size > limit:
        rows = rows[np.argpartition(-scores[rows], limit - 1)[:limit]]
    return [int(r) for r in rows[np.argsort(-scores[rows], kind="stable")]]


@dataclass(slots=True)
class VectorIndex:
    """Unit rows under string keys; removed rows are zeroed and reused.

    Not thread-safe: the stores hold their lock around every call.
    """

    dim: int
    matrix: Vector = field(init=False)
    keys: list[str | None] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    free: list[int] = field(default_factory=list)
    basis: Vector | None = None
    low: Vector | None = None
    rest: Vector | None = None
    fitted_at: int = 0

    def __post_init__(self) -> None:
        self.matrix = np.zeros((_INITIAL_ROWS, self.dim), dtype=np.float32)

    def add(self, key: str, vector: Vector) -> int:
        """Store ``vector`` under ``key`` (replacing it) and return its row."""
        row = self.rows.get(key)
        if row is None:
            row = self.free.pop() if self.free else len(self.keys)
            if row == len(self.keys):
                self.keys.append(key)
                self._grow(row + 1)
            self.keys[row] = key
            self.rows[key] = row
        self.matrix[row] = vector
        self._project(row)
        refit_at = PROJECT_AT if self.basis is None else self.fitted_at * _REFIT_GROWTH
        if self.live() >= refit_at:
            self._fit()
        return row

    def remove(self, key: str) -> None:
        """Drop ``key``'s row; a zero row scores 0, below any threshold."""
        row = self.rows.pop(key, None)
        if row is None:
            return
        self.matrix[row] = 0.0
        if self.low is not None and self.rest is not None:
            self.low[row] = 0.0
            self.rest[row] = 0.0
        self.keys[row] = None
        self.free.append(row)

    def live(self) -> int:
        """Return how many rows hold a key."""
        return len(self.rows)

    def search(
        self, vector: Vector, min_score: float, limit: int
    ) -> tuple[list[tuple[str, float]], float | None]:
        """Return up to ``limit`` ``(key, score)`` at or above ``min_score``.

        The second value is the best score among the rows scored exactly
        (every row below ``PROJECT_AT``), or None when none was.
        """
        rows = self._candidates(vector, min_score)
        if rows is not None and rows.size * _GATHER_COST > len(self.keys):
            rows = None  # a loose bound: one full product is cheaper than a gather
        if rows is None:
            scores = self.matrix[: len(self.keys)] @ vector
            positions = np.arange(len(self.keys))
        else:
            scores = self.matrix[rows] @ vector
            positions = rows
        scores = _sane(scores)
        best = float(scores.max()) if scores.size and self.rows else None
        if best is not None and not np.isfinite(best):
            best = None
        found = []
        for at in top_matches(scores, min_score, limit):
            key = self.keys[int(positions[at])]
            if key is not None:
                found.append((key, float(scores[at])))
        return found, best

    def _candidates(
        self, vector: Vector, min_score: float
    ) -> npt.NDArray[np.intp] | None:
        if self.basis is None or self.low is None or self.rest is None:
            return None
        count = len(self.keys)
        low_q = vector @ self.basis
        rest_q = np.sqrt(max(0.0, 1.0 - float(low_q @ low_q)))
        bound = self.low[:count] @ low_q + self.rest[:count] * np.float32(rest_q)
        # A little slack keeps float32 rounding from dropping a true match.
        return np.flatnonzero(bound >= min_score - 1e-4)

    def _grow(self, rows: int) -> None:
        if rows <= self.matrix.shape[0]:
            return
        size = max(rows, self.matrix.shape[0] * 2)
        self.matrix = _resized(self.matrix, size)
        if self.low is not None and self.rest is not None:
            self.low = _resized(self.low, size)
            self.rest = _resized(self.rest, size)

    def _project(self, row: int) -> None:
        if self.basis is None or self.low is None or self.rest is None:
            return
        low = self.matrix[row] @ self.basis
        self.low[row] = low
        self.rest[row] = np.sqrt(max(0.0, 1.0 - float(low @ low)))

    def _fit(self) -> None:
        count = len(self.keys)
        live = list(self.rows.values())
        step = max(1, len(live) // _FIT_SAMPLE)
        sample = self.matrix[live[::step]]
        # Principal directions of the uncentred vectors: the common direction
        # of sentence embeddings comes first and carries most of each row.
        _, vectors = np.linalg.eigh(sample.T @ sample)
        dims = min(PROJECT_DIMS, self.dim)
        self.basis = np.ascontiguousarray(vectors[:, ::-1][:, :dims], dtype=np.float32)
        self.low = np.zeros((self.matrix.shape[0], dims), dtype=np.float32)
        self.low[:count] = self.matrix[:count] @ self.basis
        norms = np.einsum("ij,ij->i", self.low[:count], self.low[:count])
        self.rest = np.zeros(self.matrix.shape[0], dtype=np.float32)
        self.rest[:count] = np.sqrt(np.maximum(0.0, 1.0 - norms))
        for row in self.free:
            self.rest[row] = 0.0
        self.fitted_at = len(self.rows)


def _sane(scores: Vector) -> Vector:
    """``scores`` with each impossible one (above ``MAX_SCORE``, NaN) at -inf."""
    sane = scores <= MAX_SCORE
    if sane.all():
        return scores
    logger.warning(
        "cache vector index: %d rows scored above 1 or NaN against the query "
        "(a corrupt or non-unit vector); they are never matched",
        int((~sane).sum()),
    )
    return np.where(sane, scores, np.float32(-np.inf))


def _resized(array: npt.NDArray[np.float32], rows: int) -> npt.NDArray[np.float32]:
    grown = np.zeros((rows, *array.shape[1:]), dtype=np.float32)
    grown[: array.shape[0]] = array
    return grown
