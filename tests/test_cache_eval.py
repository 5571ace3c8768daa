"""``governor eval cache``: loading pairs, both protocols, the command line."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from governor._errors import PolicyError
from governor.cache import HashingEmbedder
from governor.cache._evaluate import (
    EvalPair,
    evaluate,
    load_pairs,
    precompute,
    questions,
)
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


def eval_cache(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run ``governor eval cache`` with the hashing embedder: exit code, and
    the error's message (a JSON document on stdout, with --json) or stderr."""
    code = main(["eval", "cache", *args, "--embedder", "hashing", "--json"])
    out, err = capsys.readouterr()
    if code != 0 and out:
        return code, str(json.loads(out)["error"]["message"])
    return code, err


@pytest.mark.parametrize("text", ["", "\n\n", "[]"])
def test_a_file_without_pairs_is_an_error(
    text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No pairs exits 2 saying so, rather than reporting precision 1.0."""
    path = tmp_path / "pairs.jsonl"
    path.write_text(text)
    code, err = eval_cache(capsys, str(path))
    assert (code, f"{path} holds no pairs" in err) == (2, True)


GOOD = b'{"text_a": "a", "text_b": "b", "label": 1}'


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (b"not json", "2: not JSON (Expecting value at column 1); each line"),
        (b'{"text_a": "\xff"}', "2: not UTF-8 text (byte 0xff)"),
        (b"[1]", "2: not a JSON object; each line must be"),
        (b'{"text_a": "a", "label": 1}', "2: missing 'text_b'; each line"),
        (b'{"text_a": "a", "text_b": "b", "label": 2}', "2: label must be 0 or 1"),
        (b'{"text_a": "a", "text_b": [1], "label": 1}', "2: a text must be"),
    ],
)
def test_a_bad_line_is_named_by_file_and_line(
    line: bytes, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad JSON, bytes, rows or labels exit 2 naming file:line and the fix."""
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(GOOD + b"\n" + line + b"\n")
    code, err = eval_cache(capsys, str(path))
    assert (code, f"{path}:{says}" in err) == (2, True)


@pytest.mark.parametrize(
    ("rows", "says"),
    [
        ("[1]", "a JSON list whose items are not all objects"),
        ('[{"origin": "a"}]', "an item lacks the key 'similar'"),
        ('[{"origin": "a",\n "similar": }]', "2: not JSON (Expecting value"),
    ],
)
def test_a_bad_json_list_names_the_file(
    rows: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A JSON list that is not paraphrases or conversations names the file."""
    path = tmp_path / "pairs.json"
    path.write_text(rows)
    code, err = eval_cache(capsys, str(path))
    assert (code, f"{path}:" in err, says in err) == (2, True, True)


def test_a_folder_or_a_non_gzip_file_cannot_be_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both exit 2 with "cannot read pairs file PATH" and the accepted forms."""
    packed = tmp_path / "pairs.jsonl.gz"
    packed.write_bytes(GOOD)
    codes = []
    for path in (tmp_path, packed):
        code, err = eval_cache(capsys, str(path))
        codes.append((code, f"cannot read pairs file {path}: " in err))
        assert "origin/similar paraphrases" in err
    assert codes == [(2, True), (2, True)]


@pytest.mark.parametrize(
    ("option", "says"),
    [
        (["--skip", "-1"], "--skip: must be a whole number, 0 or more, got '-1'"),
        (["--limit", "0"], "--limit: must be a positive whole number (1 or more)"),
        (["--limit", "-3"], "--limit: must be a positive whole number (1 or more)"),
    ],
)
def test_skip_and_limit_must_be_whole_numbers(
    option: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A negative --skip or a --limit below 1 is refused by the parser (exit 2),
    with --json as a JSON document on stdout."""
    with pytest.raises(SystemExit) as exited:
        eval_cache(capsys, str(DATA / "qqp_sample.jsonl"), *option)
    error = json.loads(capsys.readouterr().out)["error"]
    assert (exited.value.code, says in error["message"]) == (2, True)


def test_a_skip_past_the_end_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    """--skip 40 of 40 pairs exits 2 naming the number of pairs."""
    code, err = eval_cache(capsys, str(DATA / "qqp_sample.jsonl"), "--skip", "40")
    assert (code, "--skip 40 leaves no pairs" in err, "holds 40" in err) == (
        2,
        True,
        True,
    )


def test_a_bad_sweep_names_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    """--sweep with a word exits 2 with the form it takes."""
    code, err = eval_cache(capsys, str(DATA / "qqp_sample.jsonl"), "--sweep", "a,b")
    assert (code, "--sweep takes comma-separated numbers" in err) == (2, True)


def test_a_folder_as_the_embedding_cache_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--embedding-cache FOLDER exits 2 before embedding anything."""
    args = [str(DATA / "qqp_sample.jsonl"), "--embedding-cache", str(tmp_path)]
    code, err = eval_cache(capsys, *args)
    assert (code, f"--embedding-cache {tmp_path} is a folder" in err) == (2, True)


def test_precision_without_a_hit_is_none() -> None:
    """No hit: nothing was served wrongly, and precision is undefined."""
    pairs = [pair("Who wrote Hamlet?", "How tall is Everest?", 0)]
    report = evaluate(
        pairs,
        mode="pairwise",
        policy=Cache(embedder="hashing"),
        embedder=HashingEmbedder(),
    )
    assert (report["hits"], report["false_hit_rate"], report["precision"]) == (
        0,
        0.0,
        None,
    )


class Recording(HashingEmbedder):
    """The hashing embedder, recording what it embeds."""

    def __init__(self, name: str = "hashing-1024") -> None:
        super().__init__()
        self.name = name
        self.texts: list[str] = []

    def embed(self, texts: Sequence[str]) -> Any:
        self.texts.extend(texts)
        return super().embed(texts)


def test_the_embedding_cache_does_not_grow_with_text_length(tmp_path: Path) -> None:
    """Vectors are kept by text digest: a 100,000-character text costs nothing.

    Texts were kept in a fixed-width array, padded to the longest: one long
    text made a file of gigabytes. A text the cache would not embed (too
    long) is not embedded at all.
    """
    path = tmp_path / "vectors.npz"
    texts = [f"question {i}" for i in range(50)] + ["lorem ipsum " * 10_000]
    embedder = Recording()
    found = precompute(embedder, texts, cache_file=path, max_chars=2000)
    assert (len(embedder.texts), path.stat().st_size < 50 * 1024 * 8) == (50, True)
    again = Recording()
    reused = precompute(again, texts, cache_file=path, max_chars=2000)
    assert (again.texts, reused.fits(texts[-1])) == ([], True)
    assert np.array_equal(reused.embed(texts[:3]), found.embed(texts[:3]))


def test_the_evaluation_skips_a_text_too_long_to_embed(tmp_path: Path) -> None:
    """A pair whose question is past max_semantic_chars misses as too_long."""
    pairs = [pair("x " * 1500, "x " * 1501, 1)]
    embedder = precompute(Recording(), questions(pairs), max_chars=2000)
    report = evaluate(
        pairs, mode="pairwise", policy=Cache(embedder="hashing"), embedder=embedder
    )
    assert report["misses"] == {"too_long": 1}


@pytest.mark.parametrize(
    "content",
    [b"garbage", b"\x93NUMPY\x01\x00garbage", "pickle", "npy", "other_keys"],
)
def test_an_unreadable_embedding_cache_names_the_file(
    content: bytes | str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A corrupt file, pickled data or foreign arrays exit 2 naming the file."""
    path = tmp_path / "vectors.npz"
    if content == "pickle":
        np.savez(path, name=np.array([{"a": 1}], dtype=object))
    elif content == "npy":
        with path.open("wb") as out:
            np.save(out, np.zeros(3))
    elif content == "other_keys":
        np.savez(path, weights=np.zeros(3))
    else:
        assert isinstance(content, bytes)
        path.write_bytes(content)
    args = [str(DATA / "qqp_sample.jsonl"), "--embedding-cache", str(path)]
    code, err = eval_cache(capsys, *args)
    assert (code, f"embedding cache {path} is not an .npz" in err) == (2, True)


def test_an_embedding_cache_of_another_embedder_is_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Vectors of another embedder are never reused; a warning says so."""
    path = tmp_path / "vectors.npz"
    precompute(Recording("other"), ["a question"], cache_file=path)
    embedder = Recording()
    precompute(embedder, ["a question"], cache_file=path)
    with np.load(path) as data:
        name = str(data["name"])
    assert (embedder.texts, name) == (["a question"], "hashing-1024")
    assert "holds embeddings of 'other', not 'hashing-1024'" in caplog.text


def test_an_embedding_cache_of_the_first_format_is_reused(tmp_path: Path) -> None:
    """A file that kept whole texts is read and rewritten keyed by digest."""
    path = tmp_path / "vectors.npz"
    vectors = HashingEmbedder().embed(["a question"])
    np.savez(path, name=np.array("hashing-1024"), texts=np.array(["a question"]),
             vectors=vectors)  # fmt: skip
    embedder = Recording()
    precompute(embedder, ["a question"], cache_file=path)
    with np.load(path) as data:
        assert (embedder.texts, "texts" in data.files) == ([], False)
