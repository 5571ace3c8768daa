"""``governor eval cache``: contextual negatives, input forms, output, cache file."""

from __future__ import annotations

import gzip
import io
import json
import logging
import tarfile
from pathlib import Path
from typing import Any

import pytest

from governor._errors import ConfigError
from governor.cache import HashingEmbedder
from governor.cache import _evaluate as ev
from governor.cache._evaluate import EvalPair, evaluate, load_pairs
from governor.cli import main
from governor.policies import Cache

DATA = Path(__file__).parent / "data"
TOPICS = ["a CPU", "RAM", "a GPU", "an SSD"]


def conversation(topic: str, **changes: str) -> dict[str, str]:
    """A MeanCache-style conversation about ``topic``."""
    return {
        "u0": f"What is {topic}?",
        "u0_duplicate": f"Explain what {topic} is.",
        "system_q0": f"{topic} is a computer part.",
        "u1": "How fast is it?",
        "u1_duplicate": "What speed does it run at?",
        "system_q1": "Quite fast.",
        **changes,
    }


def write_json(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


def eval_cache(
    capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, dict[str, Any], str]:
    """Run ``governor eval cache --json`` with the hashing embedder: exit code,
    report, and stderr (or an error's message, a JSON document on stdout)."""
    code = main(["eval", "cache", *args, "--embedder", "hashing", "--json"])
    out, err = capsys.readouterr()
    if code != 0 and out:
        return code, {}, str(json.loads(out)["error"]["message"])
    return code, json.loads(out) if code == 0 else {}, err


def first_question(messages: tuple[dict[str, Any], ...]) -> str:
    return str(messages[0]["content"])


def read(path: Path) -> list[EvalPair]:
    return load_pairs(path)[0]


# Issue 1: a label-0 pair must ask after another conversation's first turn.


def test_one_conversation_gives_no_negative_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With no other conversation, no label-0 pair is made, and it is counted.

    The other conversation was the next one, wrapping: itself, so the
    label-0 request was the stored one and the exact layer served it.
    """
    path = write_json(tmp_path / "one.json", [conversation("a CPU")])
    code, report, err = eval_cache(capsys, str(path))
    assert (code, report["pairs"], report["positives"]) == (0, 2, 2)
    assert (report["wrong_hits"], report["conversations_without_negatives"]) == (0, 1)
    assert "1 conversation(s) gave no label-0 pair" in err


def test_repeats_that_differ_in_an_unused_field_are_one_conversation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Conversations repeated with another system_q1 give no wrong hit.

    Whole rows were compared: each repeat stayed, the next conversation was
    the same one, and every label-0 request was served by the exact layer.
    """
    rows = []
    for topic in TOPICS:
        rows += [conversation(topic), conversation(topic, system_q1="Very fast.")]
    path = write_json(tmp_path / "repeats.json", rows)
    code, report, _ = eval_cache(capsys, str(path))
    assert (code, report["pairs"], report["wrong_hits"]) == (0, 16, 0)


def test_negatives_skip_conversations_with_the_same_first_question(
    tmp_path: Path,
) -> None:
    """Several follow-ups per first question: the negative asks elsewhere."""
    rows = [
        conversation(topic, u1=f"{ask} it?", u1_duplicate=f"{ask} that?")
        for topic in TOPICS[:2]
        for ask in ("How fast is", "How old is", "Who makes")
    ]
    pairs = read(write_json(tmp_path / "follow-ups.json", rows))
    negatives = [p for p in pairs if p.label == 0]
    assert len(negatives) == 12
    assert all(first_question(p.a) != first_question(p.b) for p in negatives)
    report = evaluate(
        pairs,
        mode="pairwise",
        policy=Cache(embedder="hashing"),
        embedder=HashingEmbedder(),
    )
    assert report["wrong_hits"] == 0
    assert len(pairs) == 2 + 6 + 12  # each first question's pair once


def test_a_paraphrased_first_question_is_not_another_context(tmp_path: Path) -> None:
    """The next conversation opening with this one's paraphrase is skipped."""
    cpu = conversation("a CPU")
    same = conversation("RAM", u0="explain what a CPU is")
    pairs = read(write_json(tmp_path / "p.json", [cpu, same]))
    negatives = [p for p in pairs if p.label == 0]
    assert [first_question(p.b) for p in negatives] == ["What is a CPU?"] * 2
    assert len(pairs) == 6


def test_expand_conversations_warns_of_conversations_without_negatives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The library function logs how many conversations gave no label-0 pair."""
    with caplog.at_level(logging.WARNING, logger="governor.cache._evaluate"):
        pairs = ev.expand_conversations([conversation("a CPU")] * 2)
    assert [p.label for p in pairs] == [1, 1]
    assert "1 conversation(s) gave no label-0 pair" in caplog.text


def test_a_conversation_field_that_is_not_a_string_is_named(tmp_path: Path) -> None:
    path = write_json(tmp_path / "c.json", [conversation("a CPU", u1=["x"])])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"item 1: u1 must be a string"):
        read(path)


def test_the_shared_sample_keeps_its_pairs() -> None:
    """The fix leaves files with distinct first turns as they were."""
    assert len(read(DATA / "contextual_sample.jsonl")) == 32


# Issue 2: an --embedding-cache that cannot be written is refused up front.


def test_an_embedding_cache_in_a_missing_folder_is_refused_before_embedding(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The run embedded everything, then failed writing the file."""
    embedded: list[str] = []
    real = HashingEmbedder.embed

    def recording(self: HashingEmbedder, texts: Any) -> Any:
        embedded.extend(texts)
        return real(self, texts)

    monkeypatch.setattr(HashingEmbedder, "embed", recording)
    target = tmp_path / "missing" / "vectors.npz"
    args = [str(DATA / "qqp_sample.jsonl"), "--embedding-cache", str(target)]
    code, _, err = eval_cache(capsys, *args)
    assert (code, embedded) == (2, [])
    assert f"--embedding-cache {target}: no such folder {target.parent}" in err


def test_a_failed_write_of_the_embedding_cache_keeps_the_report(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A write that fails after embedding (a full disk) warns and reports."""

    def full(*_: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ev, "_write_vectors", full)
    target = tmp_path / "vectors.npz"
    args = [str(DATA / "qqp_sample.jsonl"), "--embedding-cache", str(target)]
    code, report, _ = eval_cache(capsys, *args)
    assert (code, report["pairs"]) == (0, 40)
    assert f"cannot write the embedding cache {target}" in caplog.text


# Issue 3: the forms the data comes in.

QQP_ROWS = [
    {
        "text_a": "How do I learn Python?",
        "text_b": "How can I learn Python?",
        "label": 1,
    },
    {"text_a": "Who wrote Hamlet?", "text_b": "How tall is Everest?", "label": 0},
]


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def labels(path: Path) -> tuple[list[int], str]:
    pairs, mode = load_pairs(path)
    return [p.label for p in pairs], mode


def test_a_gzip_file_without_the_gz_suffix_is_read(tmp_path: Path) -> None:
    """The gzip magic bytes are read, as the other eval commands read them."""
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(gzip.compress(jsonl(QQP_ROWS)))
    assert labels(path) == ([1, 0], "pairwise")


def test_a_json_list_of_labelled_pairs_is_read(tmp_path: Path) -> None:
    """GPTCache's similiar_qqp_full.json: one JSON list of text_a/text_b/label."""
    path = write_json(tmp_path / "similiar_qqp_full.json", QQP_ROWS)
    assert labels(path) == ([1, 0], "pairwise")


def test_a_bad_item_of_a_json_list_is_named(tmp_path: Path) -> None:
    path = write_json(tmp_path / "p.json", [QQP_ROWS[0], {"text_a": "a", "label": 1}])
    with pytest.raises(ConfigError, match=r"item 2: missing 'text_b'"):
        read(path)


def tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_gptcache_s_tar_gz_of_one_json_list_is_read(tmp_path: Path) -> None:
    """GPTCache ships its QQP pairs as a tar.gz named .json.gz."""
    path = tmp_path / "similiar_qqp_full.json.gz"
    data = json.dumps(QQP_ROWS).encode()
    path.write_bytes(tar_gz({"similiar_qqp_full.json": data}))
    assert labels(path) == ([1, 0], "pairwise")


def test_a_tar_of_one_gzipped_jsonl_is_read(tmp_path: Path) -> None:
    path = tmp_path / "pairs.tar"
    path.write_bytes(
        gzip.decompress(tar_gz({"p.jsonl.gz": gzip.compress(jsonl(QQP_ROWS))}))
    )
    assert labels(path) == ([1, 0], "pairwise")


def test_a_tar_of_several_files_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pairs.tar.gz"
    path.write_bytes(tar_gz({"a.jsonl": jsonl(QQP_ROWS), "b.jsonl": b""}))
    with pytest.raises(ConfigError, match="a tar archive of 2 files"):
        read(path)


QQP_NAMES = [
    {"question1": "How do I learn Python?", "question2": "Learn Python how?",
     "is_duplicate": 1},
    {"id": 7, "question1": "Who wrote Hamlet?", "question2": "How tall is Everest?",
     "is_duplicate": "0"},
]  # fmt: skip


def test_qqp_column_names_are_read_as_text_a_text_b_label(tmp_path: Path) -> None:
    """question1/question2/is_duplicate, in JSONL and in a JSON list."""
    lines = tmp_path / "qqp.jsonl"
    lines.write_bytes(jsonl(QQP_NAMES))
    assert (read(lines)[0].b[-1]["content"], labels(lines)) == (
        "Learn Python how?",
        ([1, 0], "pairwise"),
    )
    assert labels(write_json(tmp_path / "qqp.json", QQP_NAMES)) == ([1, 0], "pairwise")


@pytest.mark.parametrize(
    "text",
    [
        # Kaggle's train.csv: quoted, a question over two lines.
        '"id","qid1","qid2","question1","question2","is_duplicate"\n'
        '"0","1","2","How do I learn Python?","How can I\nlearn Python?","1"\n'
        '"1","3","4","Who wrote Hamlet?","How tall is Everest?","0"\n',
        # GLUE's QQP train.tsv.
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
        "0\t1\t2\tHow do I learn Python?\tHow can I learn Python?\t1\n"
        "1\t3\t4\tWho wrote Hamlet?\tHow tall is Everest?\t0\n",
    ],
)
def test_qqp_as_csv_or_tsv_is_read(text: str, tmp_path: Path) -> None:
    path = tmp_path / "quora.csv"
    path.write_text(text, encoding="utf-8")
    assert labels(path) == ([1, 0], "pairwise")


def test_a_bad_label_in_a_csv_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "quora.csv"
    path.write_text("question1,question2,is_duplicate\na,b,1\nc,d,yes\n")
    with pytest.raises(ConfigError, match=r"quora.csv:3: label must be 0 or 1"):
        read(path)


@pytest.mark.parametrize(
    ("rows", "says"),
    [
        (
            [{"Main Query": "What is a CPU?", "Main Query Response": "A chip.",
              "Follow-Up Query": "How fast?", "Follow Up Query Response": "Fast."}],
            "MeanCache's Main Query/Follow-Up Query files hold no paraphrase",
        ),
        (["Can you expand on that?"], "a JSON list of strings (such as MeanCache"),
        ([{"prompt": "a"}], "rows of unknown keys ('prompt')"),
    ],
)  # fmt: skip
def test_other_meancache_files_are_refused_with_the_accepted_forms(
    rows: list[Any], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the command cannot score exits 2 listing what it can."""
    path = write_json(tmp_path / "contextual_queries.json", rows)
    code, _, err = eval_cache(capsys, str(path))
    assert (code, says in err) == (2, True)
    assert "question1/question2/is_duplicate" in err
    assert "MeanCache conversations (u0, u0_duplicate" in err


# Input that was misread or taken silently: each exits 2 naming file:line.


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("foo,bar,baz\n1,2,3\n", "its columns: 'foo', 'bar', 'baz'"),
        ("foo\tbar\n1\t2\n", "its columns: 'foo', 'bar'"),
        ("\nQ1;Q2;dup\na;b;1\n", "its columns: 'Q1', 'Q2', 'dup', separated by ';'"),
        (
            "question1;question2;is_duplicate\na;b;1\n",
            "are separated by ';': only commas or tabs separate the columns; "
            "save the file comma- or tab-separated",
        ),
        ("question1,question2\na,b\n", "the CSV/TSV header lacks label or is_dup"),
    ],
    ids=["comma", "tab", "semicolon", "semicolon qqp", "no label column"],
)
def test_a_csv_whose_header_lacks_the_pair_columns_says_so(
    text: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not 'not JSON': the header read, what it lacks, the columns wanted."""
    path = tmp_path / "pairs.csv"
    path.write_text(text, encoding="utf-8")
    code, _, err = eval_cache(capsys, str(path))
    line = 2 if text.startswith("\n") else 1
    assert (code, f"{path}:{line}: " in err, says in err) == (2, True, True)
    assert "question1, question2 and is_duplicate (QQP's names) or text_a" in err
    assert "not JSON (" not in err


@pytest.mark.parametrize(
    ("text", "twice"),
    [
        ("question1,question2,is_duplicate,is_duplicate\nsame,same,1,0\n", "is_dup"),
        ("id,Question1,question2,is_duplicate,question1\n1,a,a,1,b\n", "question1"),
    ],
)
def test_a_header_naming_a_pair_column_twice_is_refused(
    text: str, twice: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two label (or question) columns: which is meant is unclear, so the
    file is refused rather than read from the last of them."""
    path = tmp_path / "pairs.csv"
    path.write_text(text, encoding="utf-8")
    code, _, err = eval_cache(capsys, str(path))
    assert (code, f"{path}:1: " in err, "more than once" in err) == (2, True, True)
    assert f"'{twice}" in err


USER = {"role": "user", "content": "What is a CPU?"}
ANSWER = {"role": "assistant", "content": "A chip."}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ([{"content": "What is a CPU?"}], "text_a's message 1 of 1 has no 'role'"),
        ([ANSWER, {"role": "user"}], "text_a's message 2 of 2 ('user') has no 'con"),
        ([{"role": 3, "content": "x"}], "text_a's message 1 of 1 has a bad role 3"),
        (
            [{"role": "user", "content": 7}],
            "text_a's message 1 of 1 ('user') has content 7; a message's content",
        ),
        (
            [USER, ANSWER],
            "text_a's last message is from 'assistant', but the last message "
            "must be the user's question",
        ),
    ],
    ids=["no role", "no content", "bad role", "bad content", "assistant last"],
)
def test_a_text_of_bad_chat_messages_is_refused(
    text: list[dict[str, Any]],
    says: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Not a positive pair that misses: the message and what is wrong."""
    path = tmp_path / "pairs.jsonl"
    rows = [QQP_ROWS[0], {"text_a": text, "text_b": "What is a CPU?", "label": 1}]
    path.write_bytes(jsonl(rows))
    code, _, err = eval_cache(capsys, str(path))
    assert (code, f"{path}:2: {says}" in err) == (2, True)


def test_a_conversation_with_a_tool_call_is_still_read(tmp_path: Path) -> None:
    """An assistant tool call may carry no content; parts are content too."""
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}
    calling = {"role": "assistant", "content": None, "tool_calls": [call]}
    parts = {"role": "user", "content": [{"type": "text", "text": "And RAM?"}]}
    text = [USER, calling, {"role": "tool", "tool_call_id": "c1", "content": "ok"}]
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(jsonl([{"text_a": [*text, USER], "text_b": [parts], "label": 0}]))
    assert [len(pair.a) for pair in read(path)] == [4]


BOTH = {
    "text_a": "What is a CPU?",
    "text_b": "Define a CPU.",
    "label": 1,
    "question1": "What is a CPU?",
    "question2": "Define a CPU.",
    "is_duplicate": "1",
}


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"question1": "What is a GPU?"}, "text_a and question1 differ ('What is a "
         "CPU?' against 'What is a GPU?')"),
        ({"question2": [USER]}, "text_b and question2 differ ('Define a CPU.' against"
         " 'What is a CPU?')"),
        ({"is_duplicate": 0}, "label and is_duplicate differ (1 against 0)"),
    ],
)  # fmt: skip
def test_a_row_with_both_names_that_disagree_is_refused(
    changes: dict[str, Any],
    says: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(jsonl([BOTH, {**BOTH, **changes}]))
    code, _, err = eval_cache(capsys, str(path))
    assert (code, f"{path}:2: {says}" in err, "keep one set of names" in err) == (
        2,
        True,
        True,
    )


def test_a_row_with_both_names_that_agree_is_read(tmp_path: Path) -> None:
    """The same values (a label as 1 and "1", a text as a string and as one
    user message) or a blank cell under one name are read as one column."""
    same = {**BOTH, "question1": [{"role": "user", "content": "What is a CPU?"}]}
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(jsonl([BOTH, same]))
    table = tmp_path / "pairs.csv"
    table.write_text(
        "text_a,text_b,label,question1,question2,is_duplicate\n"
        "What is a CPU?,Define a CPU.,1,,,\n"
        ",,,Who wrote Hamlet?,How tall is Everest?,0\n",
        encoding="utf-8",
    )
    assert (labels(path), labels(table)) == (([1, 1], "pairwise"), ([1, 0], "pairwise"))
    assert read(table)[1].a[-1]["content"] == "Who wrote Hamlet?"


# Issue 4: the text output counts hits and wrong hits.


def test_the_text_output_prints_hit_and_wrong_hit_counts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pairs = str(DATA / "contextual_sample.jsonl")
    args = ["eval", "cache", pairs, "--embedder", "hashing", "--context-blind"]
    main([*args, "--json"])
    report = json.loads(capsys.readouterr().out)
    main([*args, "--sweep", "0.9"])
    lines = capsys.readouterr().out.splitlines()
    table = dict(line.split(None, 1) for line in lines if "threshold " not in line)
    assert (table["hits"], table["wrong_hits"]) == (
        str(report["hits"]),
        str(report["wrong_hits"]),
    )
    assert report["wrong_hits"] > 0
    assert any(" hits " in line and " wrong_hits " in line for line in lines)
