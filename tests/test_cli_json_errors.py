"""Every command that takes ``--json`` reports its errors as one JSON
document on stdout, ``{"error": {"code": ..., "message": ...}}``, with the
exit status it has without ``--json`` (``demo``, ``eval``, ``policy show``
as ``report`` and the others already did); ``GOVERNOR_DEBUG=1`` adds the
traceback of a handled error on stderr; a ``.py`` policy's functions are
named after the file, as ``import`` names them.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import free_port
from governor.cache._embed import callable_name
from governor.cli import main
from governor.cli._policy import load_policy

DATA = Path(__file__).parent / "data"

_DUPLICATE = '{"budgets": [{"max_usd": "1"}], "budgets": []}'


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOVERNOR_DEBUG", raising=False)


@pytest.fixture
def duplicate(tmp_path: Path) -> Path:
    """A JSON policy that names ``budgets`` twice: refused, exit 2."""
    policy = tmp_path / "dup.json"
    policy.write_text(_DUPLICATE, encoding="utf-8")
    return policy


def _bad_inputs(tmp_path: Path, duplicate: Path) -> dict[str, list[str]]:
    """Command lines (without --json) that the command itself refuses, exit 2."""
    not_db = tmp_path / "notdb.sqlite3"
    not_db.write_text("hello\n", encoding="utf-8")
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = str(tmp_path / "missing.jsonl")
    return {
        "policy show": ["policy", "show", str(duplicate)],
        "demo": [
            "demo",
            "--count",
            "1",
            "--speed",
            "0",
            "--traces",
            str(tmp_path / "t.jsonl"),
            "--spend-db",
            str(not_db),
        ],
        "eval cascade": [
            "eval",
            "cascade",
            str(DATA / "routerbench_sample.csv.gz"),
            "--policy",
            str(duplicate),
        ],
        "eval loops": ["eval", "loops", str(empty)],
        "eval cache": ["eval", "cache", missing],
        "eval anomalies": ["eval", "anomalies", missing],
    }


_COMMANDS = [
    "policy show",
    "demo",
    "eval cascade",
    "eval loops",
    "eval cache",
    "eval anomalies",
]


@pytest.mark.parametrize("command", _COMMANDS)
def test_json_error_is_one_document_on_stdout(
    command: str,
    tmp_path: Path,
    duplicate: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = _bad_inputs(tmp_path, duplicate)[command]
    code = main([*argv, "--json"])
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert code == 2
    assert set(document) == {"error"}
    assert document["error"]["code"] == "config_error"
    assert document["error"]["message"]
    assert f"governor {command}:" not in captured.err


@pytest.mark.parametrize("command", _COMMANDS)
def test_without_json_the_error_stays_one_line_on_stderr(
    command: str,
    tmp_path: Path,
    duplicate: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = _bad_inputs(tmp_path, duplicate)[command]
    code = main(argv)
    captured = capsys.readouterr()
    shown = "governor policy" if command == "policy show" else f"governor {command}"
    assert (code, captured.out) == (2, "")
    assert captured.err.startswith(f"{shown}: ")


def test_the_message_is_the_same_with_and_without_json(
    duplicate: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["policy", "show", str(duplicate), "--json"]) == 2
    message = json.loads(capsys.readouterr().out)["error"]["message"]
    assert main(["policy", "show", str(duplicate)]) == 2
    assert capsys.readouterr().err == f"governor policy: {message}\n"
    assert "'budgets' appears twice" in message


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--speed", "fast", "--json"],
        ["eval", "loops", "runs.jsonl", "--seed", "abc", "--json"],
        ["eval", "--json"],
        ["policy", "packs", "--json"],
    ],
)
def test_usage_errors_are_json_as_for_report(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """As ``report --format json --top 0`` does: exit 2, a JSON document."""
    with pytest.raises(SystemExit) as ended:
        main(argv)
    document = json.loads(capsys.readouterr().out)
    assert ended.value.code == 2
    assert document["error"]["code"] == "config_error"


def test_demo_store_that_does_not_answer_is_store_unavailable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 1, code store_unavailable, as ``report`` gives for its store."""
    pytest.importorskip("redis")
    pytest.importorskip("langchain_litellm")
    url = f"redis://user:secret@127.0.0.1:{free_port()}/0"
    argv = ["demo", "--count", "1", "--speed", "0", "--json"]
    code = main([*argv, "--traces", str(tmp_path / "t.jsonl"), "--spend-db", url])
    error = json.loads(capsys.readouterr().out)["error"]
    assert (code, error["code"]) == (1, "store_unavailable")
    assert "cannot reach the Redis spend store" in error["message"]
    assert "secret" not in error["message"]


def test_debug_prints_a_handled_errors_traceback(
    duplicate: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """GOVERNOR_DEBUG=1: the traceback on stderr, the JSON error on stdout."""
    monkeypatch.setenv("GOVERNOR_DEBUG", "1")
    assert main(["policy", "show", str(duplicate), "--json"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["error"]["code"] == "config_error"
    assert captured.err.startswith("Traceback (most recent call last):")
    assert "ConfigError" in captured.err


def test_without_debug_no_traceback(
    duplicate: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["policy", "show", str(duplicate)]) == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.fixture
def cpol(tmp_path: Path) -> Iterator[Path]:
    """``cpol.py``, a policy whose cache embedder is a function of its own."""
    folder = tmp_path / "pol"
    folder.mkdir()
    policy = folder / "cpol.py"
    policy.write_text(
        "from governor.policies import Cache, Policy\n\n\n"
        "def my_embed(texts):\n"
        "    return [[1.0, 0.0] for _ in texts]\n\n\n"
        "POLICY = Policy(cache=Cache(embedder=my_embed))\n",
        encoding="utf-8",
    )
    yield policy
    sys.modules.pop("cpol", None)


def test_policy_show_names_a_policy_files_callable_after_the_file(
    cpol: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["policy", "show", str(cpol)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["cache"]["embedder"] == "<callable cpol.my_embed>"


def test_the_cache_index_name_is_the_one_an_importing_program_gets(
    cpol: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``callable:cpol.my_embed`` whether the command line reads the file or
    a program imports it (``from cpol import POLICY``)."""
    loaded = load_policy(str(cpol)).cache.embedder
    monkeypatch.syspath_prepend(str(cpol.parent))
    imported = importlib.import_module("cpol").POLICY.cache.embedder
    assert callable(loaded)
    assert callable(imported)
    assert callable_name(loaded) == callable_name(imported) == "callable:cpol.my_embed"


def test_debug_prints_the_traceback_of_a_reports_handled_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A missing store is an error ``report`` handles: traceback, then message."""
    monkeypatch.setenv("GOVERNOR_DEBUG", "1")
    assert main(["report", "--db", str(tmp_path / "nope.sqlite3")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert err.splitlines()[-1].startswith("governor report: no spend store at ")
