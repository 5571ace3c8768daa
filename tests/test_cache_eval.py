"""``governor eval cache``: loading pairs, both protocols, the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from governor._errors import PolicyError
from governor.cache import HashingEmbedder
from governor.cache._evaluate import EvalPair, evaluate, load_pairs
from governor.cli import main
from governor.policies import Cache

DATA = Path(__file__).parent / "data"
KEYS = {
    "pairs",
    "mode",
    "threshold",
    "hit_rate",
    "false_hit_rate",
    "precision",
    "recall",
}


def pair(a: str, b: str, label: int) -> EvalPair:
    return EvalPair(
        ({"role": "user", "content": a},), ({"role": "user", "content": b},), label
    )


def test_jsonl_pairs_with_conversations_load() -> None:
    """Texts given as message lists keep their conversation."""
    pairs, mode = load_pairs(DATA / "contextual_sample.jsonl")
    labels = [p.label for p in pairs]
    assert (len(pairs), labels.count(1), mode, len(pairs[1].a)) == (
        32,
        16,
        "pairwise",
        3,
    )


def test_the_paraphrase_list_loads_as_positive_retrieval_pairs(tmp_path: Path) -> None:
    """A JSON list of origin/similar is read as label-1 pairs, retrieval mode."""
    path = tmp_path / "para.json"
    rows = [{"origin": "A cat sat.", "similar": "A cat was sitting."}] * 2
    path.write_text(json.dumps(rows))
    pairs, mode = load_pairs(path)
    assert ([p.label for p in pairs], mode) == ([1, 1], "retrieval")


def test_meancache_conversations_expand_to_four_pairs_each(tmp_path: Path) -> None:
    """Each conversation gives two positives and two contextual negatives."""
    row = {
        "u0": "What is a CPU?",
        "u0_duplicate": "Explain what a CPU is.",
        "system_q0": "A processor.",
        "u1": "How fast is it?",
        "u1_duplicate": "What speed does it run at?",
    }
    path = tmp_path / "conv.json"
    path.write_text(json.dumps([row, {**row, "u0": "What is RAM?"}]))
    pairs, _ = load_pairs(path)
    assert [p.label for p in pairs] == [1, 1, 0, 0, 1, 1, 0, 0]


def test_the_contextual_sample_gives_no_wrong_hit() -> None:
    """Identical follow-ups in different conversations never hit."""
    pairs, _ = load_pairs(DATA / "contextual_sample.jsonl")
    report = evaluate(
        pairs,
        mode="pairwise",
        policy=Cache(embedder="hashing"),
        embedder=HashingEmbedder(),
    )
    assert (report["wrong_hits"], report["false_hit_rate"]) == (0, 0.0)


def test_a_context_blind_cache_hits_the_other_conversation() -> None:
    """Without context scoping, each repeated follow-up is a wrong hit."""
    pairs, _ = load_pairs(DATA / "contextual_sample.jsonl")
    policy = Cache(embedder="hashing", scope_by_context=False)
    report = evaluate(pairs, mode="pairwise", policy=policy, embedder=HashingEmbedder())
    assert report["wrong_hits"] == 16


def test_retrieval_counts_a_hit_on_another_pair_as_wrong() -> None:
    """A hit on an entry that is not the pair's own question is a wrong hit."""
    pairs = [
        pair("What is the capital of France?", "what is the capital of france", 1),
        pair("Who wrote Hamlet?", "WHAT IS THE CAPITAL OF FRANCE", 1),
    ]
    report = evaluate(
        pairs,
        mode="retrieval",
        policy=Cache(embedder="hashing"),
        embedder=HashingEmbedder(),
    )
    assert (report["hits"], report["wrong_hits"], report["recall"]) == (2, 1, 0.5)


def test_retrieval_accepts_a_repeated_question() -> None:
    """A hit on another entry holding the same question (case folded) is right."""
    pairs = [
        pair("What is the capital of France?", "capital of france, what is it", 1),
        pair("what is the capital of france?", "What is the capital of France", 1),
    ]
    report = evaluate(
        pairs,
        mode="retrieval",
        policy=Cache(embedder="hashing"),
        embedder=HashingEmbedder(),
    )
    assert (report["hits"], report["wrong_hits"]) == (1, 0)


def test_pairwise_counts_a_hit_on_a_negative_pair_as_wrong() -> None:
    """In pairwise mode a hit on a label-0 pair is a wrong hit."""
    pairs = [pair("How do I sort a list?", "how do I sort a list", 0)]
    report = evaluate(
        pairs,
        mode="pairwise",
        policy=Cache(embedder="hashing"),
        embedder=HashingEmbedder(),
    )
    assert (report["hit_rate"], report["false_hit_rate"], report["precision"]) == (
        1.0,
        1.0,
        0.0,
    )


def test_the_command_prints_the_report_as_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--json prints one document with the keys the issue names."""
    code = main(
        [
            "eval",
            "cache",
            str(DATA / "qqp_sample.jsonl"),
            "--json",
            "--embedder",
            "hashing",
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert (code, set(report) >= KEYS, report["pairs"], report["mode"]) == (
        0,
        True,
        40,
        "pairwise",
    )


def test_the_command_sweeps_with_and_without_the_gate(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--sweep adds one row per threshold and gate setting."""
    args = ["eval", "cache", str(DATA / "qqp_sample.jsonl"), "--json"]
    args += ["--embedder", "hashing", "--sweep", "0.8,0.9", "--limit", "10"]
    main(args)
    report = json.loads(capsys.readouterr().out)
    rows = [(r["threshold"], r["gate"], r["pairs"]) for r in report["sweep"]]
    assert rows == [
        (0.8, True, 10),
        (0.9, True, 10),
        (0.8, False, 10),
        (0.9, False, 10),
    ]


def test_the_command_refuses_an_unknown_embedder(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An unknown embedder name exits 2 with the accepted forms."""
    code = main(["eval", "cache", str(DATA / "qqp_sample.jsonl"), "--embedder", "bert"])
    assert (code, "litellm:<model>" in capsys.readouterr().err) == (2, True)


def test_the_policy_rejects_an_unknown_partition_scope() -> None:
    """partition_by accepts attribution scopes only."""
    with pytest.raises(PolicyError, match="partition_by"):
        Cache(partition_by=("tenant_id",))


def test_the_policy_accepts_a_litellm_embedder() -> None:
    """'litellm:<model>' names any LiteLLM embedding model."""
    assert Cache(embedder="litellm:text-embedding-3-small").embedder == (
        "litellm:text-embedding-3-small"
    )
