"""What a user trial of the ``governor`` command found, each fixed.

Bad input to ``budget`` is a clean error (JSON with ``--json``, exit 2);
every error of a command asked for JSON is a JSON document; a JSON file
that nests too deeply is a bad file (exit 2), not a crash; a ``.py``
policy imports a module beside it however the command runs; the budget
table shows the line key ``budget reset`` takes; ``GOVERNOR_DEBUG=0`` is off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

import governor
from governor.budgets import lines_for
from governor.cli import _pricing, main
from governor.policies import Budget
from governor.stores._redis import RedisLedger

URL_ADVICE = "use redis://[:password@]host:port/db, rediss://... or unix://..."
BAD_URLS = ["http://x", ":notaport", "/abc", "?foo=1", "garbage"]


def _too_deep(path: object, what: str) -> str:
    return (
        f"{path}: nests too deeply to be read: JSON arrays or objects inside one "
        f"another about {sys.getrecursionlimit()} levels deep or more; {what} "
        "nests a few levels, so check that this is the file you meant"
    )


@pytest.fixture
def deep(tmp_path: Path) -> Path:
    """A JSON file of 100,000 arrays inside one another."""
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    return path


@pytest.fixture
def deep_lines(tmp_path: Path) -> Path:
    """The same as one line of a .jsonl file."""
    path = tmp_path / "deep.jsonl"
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    return path


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOVERNOR_DEBUG", raising=False)


def _json_error(
    capsys: pytest.CaptureFixture[str],
) -> tuple[dict[str, object], str]:
    """The JSON document on stdout, and stderr."""
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


# 1. budget: a bad URL, prefix or hash tag


@pytest.mark.parametrize("url", BAD_URLS)
@pytest.mark.parametrize("action", [["status"], ["reset", "team:search"]])
def test_budget_json_with_a_bad_url_is_a_json_error(
    url: str, action: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """--json: a JSON error document on stdout, nothing on stderr, exit 2."""
    code = main(["budget", *action, "--json", "--redis-url", url])
    document, err = _json_error(capsys)
    message = (
        f"--redis-url: url {url!r} is not a Redis URL; {URL_ADVICE}; give the "
        "URL of the Redis your services use"
    )
    assert (code, err) == (2, "")
    assert document == {"error": {"code": "config_error", "message": message}}


def test_budget_text_with_a_bad_url_is_a_plain_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without --json: one line on stderr, no traceback hint."""
    code = main(["budget", "status", "--redis-url", "garbage"])
    captured = capsys.readouterr()
    assert (code, captured.out) == (2, "")
    assert captured.err == (
        f"governor budget: --redis-url: url 'garbage' is not a Redis URL; "
        f"{URL_ADVICE}; give the URL of the Redis your services use\n"
    )


def test_budget_names_the_variable_a_bad_url_came_from(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A URL from $GOVERNOR_REDIS_URL: the message says so."""
    monkeypatch.setenv("GOVERNOR_REDIS_URL", "garbage")
    code = main(["budget", "reset", "team:search", "--json"])
    document, _ = _json_error(capsys)
    message = (
        f"$GOVERNOR_REDIS_URL: url 'garbage' is not a Redis URL; {URL_ADVICE}; "
        "correct or unset GOVERNOR_REDIS_URL, or pass --redis-url"
    )
    assert (code, document) == (
        2,
        {"error": {"code": "config_error", "message": message}},
    )


@pytest.mark.parametrize(
    ("option", "prefix", "tag"),
    [("--prefix", "a{b:", "budgets"), ("--hash-tag", "governor:", "b}")],
)
def test_budget_with_a_brace_in_the_prefix_or_tag_is_a_json_error(
    option: str, prefix: str, tag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A brace in --prefix or --hash-tag: exit 2, a JSON error naming both."""
    value = prefix if option == "--prefix" else tag
    code = main(["budget", "status", "--json", option, value])
    document, err = _json_error(capsys)
    message = (
        f"--prefix {prefix!r} and --hash-tag {tag!r} must be free of '{{' and "
        "'}' (the hash tag is written between braces in every key); give the "
        "prefix and hash tag your services give RedisLedger"
    )
    assert (code, err) == (2, "")
    assert document == {"error": {"code": "config_error", "message": message}}


# 2. --json: every error is a JSON document


def test_pricing_json_with_a_bad_policy_file_is_a_json_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """pricing MODEL --json --policy bad.json: JSON on stdout, exit 2."""
    bad = tmp_path / "bad.json"
    bad.write_text("[1]")
    code = main(["pricing", "gpt-4o", "--json", "--policy", str(bad)])
    document, err = _json_error(capsys)
    message = (
        f"{bad}: not a policy: a policy file holds one JSON object such as "
        '{"budgets": [{"max_usd": "1"}]}, got a JSON list'
    )
    assert (code, err) == (2, "")
    assert document == {
        "requested": "gpt-4o",
        "error": {"code": "config_error", "message": message},
    }


def test_pricing_json_of_an_empty_model_is_a_json_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["pricing", " ", "--json"])
    document, _ = _json_error(capsys)
    message = "MODEL is ' '; give a model name as it is called, e.g. gpt-4o-mini"
    assert (code, document) == (
        2,
        {"requested": " ", "error": {"code": "config_error", "message": message}},
    )


@pytest.mark.parametrize("command", ["replay", "compare"])
def test_replay_and_compare_json_of_a_missing_store_is_a_json_error(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing store: exit 2, as documented, in JSON."""
    missing = tmp_path / "none.sqlite3"
    code = main([command, "--db", str(missing), "--json"])
    document, err = _json_error(capsys)
    message = (
        f"no spend store at {missing}; run `governor demo` or point --db at a "
        "store or spend JSONL file"
    )
    assert (code, err) == (2, "")
    assert document == {"error": {"code": "config_error", "message": message}}


def test_replay_json_of_a_malformed_record_is_a_json_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A malformed spend record: exit 1 as for report, no traceback hint."""
    store = tmp_path / "bad.jsonl"
    store.write_text('{"x": 1}\n')
    code = main(["replay", "--db", str(store), "--json"])
    document, err = _json_error(capsys)
    message = f"{store}:1: malformed spend record: missing 'ts'"
    assert (code, err) == (1, "")
    assert document == {"error": {"code": "spend_data_invalid", "message": message}}


def test_compare_json_without_b_is_a_json_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "spend.jsonl"
    store.write_text("")
    code = main(["compare", "--db", str(store), "--json"])
    document, _ = _json_error(capsys)
    message = "give --b POLICY or --model OLD=NEW"
    assert (code, document) == (
        2,
        {"error": {"code": "config_error", "message": message}},
    )


def test_report_format_json_errors_are_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad option exits 2, a missing store 1; both as JSON documents."""
    store = tmp_path / "none.sqlite3"
    code = main(["report", "--db", str(store), "--since", "xx", "--format", "json"])
    document, _ = _json_error(capsys)
    assert (code, document["error"]) == (
        2,
        {
            "code": "config_error",
            "message": "cannot read time 'xx'; use an ISO date such as "
            "2026-12-01, an ISO date-time, or 30m, 12h, 7d, 2w",
        },
    )
    code = main(["report", "--db", str(store), "--format=json"])
    document, err = _json_error(capsys)
    message = (
        f"no spend store at {store}; pass --db or set GOVERNOR_SPEND_DB to the "
        "store your governor records to. A governor records only when given "
        'one: Governor(policy, spend="spend.sqlite3")'
    )
    assert (code, err) == (1, "")
    assert document == {"error": {"code": "config_error", "message": message}}


def test_a_usage_error_under_json_is_a_json_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An option the parser refuses: JSON on stdout, exit 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--top", "0", "--format", "json"])
    document, err = _json_error(capsys)
    message = (
        "argument --top: must be a positive whole number (1 or more), got '0'; "
        "see governor report --help"
    )
    assert (exit_info.value.code, err) == (2, "")
    assert document == {"error": {"code": "config_error", "message": message}}


def test_an_unexpected_error_under_json_is_a_json_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An error the command does not handle: exit 1, in JSON when asked."""
    _broken_pricing(monkeypatch)
    code = main(["pricing", "gpt-4o", "--json"])
    document, _ = _json_error(capsys)
    message = "RuntimeError: boom (set GOVERNOR_DEBUG=1 for the traceback)"
    assert (code, document) == (
        1,
        {"error": {"code": "unexpected_error", "message": message}},
    )


# 3. a JSON file that nests too deeply


def test_policy_show_of_a_too_deep_file_exits_2(
    deep: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["policy", "show", str(deep)])
    captured = capsys.readouterr()
    assert (code, captured.out) == (2, "")
    assert captured.err == f"governor policy: {_too_deep(deep, 'a policy')}\n"


def test_pricing_json_with_a_too_deep_policy_exits_2(
    deep: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["pricing", "gpt-4o", "--json", "--policy", str(deep)])
    document, _ = _json_error(capsys)
    error = {"code": "config_error", "message": _too_deep(deep, "a policy")}
    assert (code, document) == (2, {"requested": "gpt-4o", "error": error})


@pytest.mark.parametrize(
    ("argv", "what"),
    [
        (["eval", "cache", "{deep}"], "a file of pairs"),
        (["eval", "loops", "{deep}"], "a run"),
        (["eval", "cascade", "none.jsonl", "--policy", "{deep}"], "a cascade policy"),
    ],
)
def test_eval_inputs_that_nest_too_deeply_exit_2(
    argv: list[str], what: str, deep: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """eval, as the other commands, gives a JSON error document with --json."""
    code = main([arg.format(deep=deep) for arg in argv] + ["--json"])
    captured = capsys.readouterr()
    error = {"code": "config_error", "message": _too_deep(deep, what)}
    assert (code, captured.err) == (2, "")
    assert json.loads(captured.out) == {"error": error}


@pytest.mark.parametrize(
    "argv",
    [
        ["report", "--format", "json"],
        ["replay", "--json"],
        ["compare", "--b", "default", "--json"],
    ],
)
def test_spend_records_that_nest_too_deeply_exit_1(
    argv: list[str], deep_lines: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As a malformed record does: the store cannot be used."""
    code = main([*argv, "--db", str(deep_lines)])
    document, _ = _json_error(capsys)
    message = _too_deep(deep_lines, "a spend record")
    assert (code, document) == (
        1,
        {"error": {"code": "spend_data_invalid", "message": message}},
    )


# 4. a .py policy imports a module beside it


@pytest.fixture
def policy_with_helper(tmp_path: Path) -> Iterator[Path]:
    """policies/withhelper.py importing a module beside it (a unique name,
    so that no earlier import of it can help)."""
    helper = f"helper_settings_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / f"{helper}.py").write_text('MAX_USD = "2.5"\n')
    policy = folder / "withhelper.py"
    policy.write_text(
        f"from {helper} import MAX_USD\n"
        "from governor.policies import Budget, Policy\n"
        "POLICY = Policy(budgets=[Budget(max_usd=MAX_USD)])\n"
    )
    yield policy
    sys.modules.pop(helper, None)


def test_a_py_policy_imports_a_module_beside_it(
    policy_with_helper: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """In process, from another folder; sys.path is as it was afterwards."""
    monkeypatch.chdir(tmp_path)
    before = list(sys.path)
    code = main(["policy", "show", str(policy_with_helper)])
    shown = json.loads(capsys.readouterr().out)
    assert (code, shown["budgets"][0]["max_usd"]) == (0, "2.5")
    assert sys.path == before


def test_two_py_policies_import_their_own_same_named_module(tmp_path: Path) -> None:
    """compare --a pa/policy.py --b pb/policy.py: each imports its own
    settings module, and neither stays in sys.modules afterwards."""
    from governor.cli._policy import load_policy

    name = f"settings_{uuid.uuid4().hex[:8]}"
    for folder, usd in (("pa", "0.01"), ("pb", "5")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / f"{name}.py").write_text(f'TASK_USD = "{usd}"\n')
        (tmp_path / folder / "policy.py").write_text(
            f"from {name} import TASK_USD\n"
            "from governor.policies import Budget, Policy\n"
            "POLICY = Policy(budgets=[Budget(max_usd=TASK_USD)])\n"
        )
    limits = [
        str(load_policy(str(tmp_path / folder / "policy.py")).budgets[0].max_usd)
        for folder in ("pa", "pb", "pa")
    ]
    assert limits == ["0.01", "5", "0.01"]
    assert name not in sys.modules


def test_a_py_policy_loads_the_same_under_governor_and_python_m(
    policy_with_helper: Path, tmp_path: Path
) -> None:
    """The console script (its folder on sys.path) and `python -m governor`
    (the working folder on sys.path), run from a folder without the helper."""
    script = tmp_path / "bin" / "governor"
    script.parent.mkdir()
    script.write_text("import sys\nfrom governor.cli import main\nsys.exit(main())\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    source = str(Path(governor.__file__).resolve().parents[1])
    outputs = []
    for runner in ([str(script)], ["-m", "governor"]):
        done = subprocess.run(
            [sys.executable, *runner, "policy", "show", str(policy_with_helper)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=elsewhere,
            env={**os.environ, "PYTHONPATH": source},
        )
        assert (done.returncode, done.stderr) == (0, "")
        outputs.append(json.loads(done.stdout)["budgets"][0]["max_usd"])
    assert outputs == ["2.5", "2.5"]


# 5. the budget table shows what `budget reset` takes


def test_status_table_shows_the_line_key_reset_takes(
    redis_ledger: RedisLedger,
    redis_url: str,
    redis_prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The first column is the key, window included; reset takes it as shown."""
    budget = Budget(scope="team", max_usd="10", period="day", timezone="UTC")
    now = datetime(2026, 12, 4, 15, tzinfo=UTC)
    (line,) = [s.line() for s in lines_for([budget], {"team": "search"}, "t1", now)]
    redis_ledger.reserve("h1", [line], 2_000_000, 300, 600)
    redis_ledger.settle("h1", [line.key], 1_250_000, 200)
    store = ["--redis-url", redis_url, "--prefix", redis_prefix]
    assert main(["budget", "status", *store]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["LINE", "KEY", "PERIOD"]
    key = row.split()[0]
    assert key == "team:search#day:2026-12-04@UTC"
    assert main(["budget", "reset", key, *store]) == 0
    assert capsys.readouterr().out == f"reset {key}\n"
    balance = redis_ledger.balance(key)
    assert balance is not None
    assert balance.spent_nanos == 0


def test_reset_help_points_at_the_line_key_column(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["budget", "reset", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert (
        "a line key as the LINE KEY column of `status` shows it, e.g. "
        "'team:search#day:2026-12-04@UTC' (that window only), or the scope "
        "before its '#', e.g. 'team:search' (every window)"
    ) in help_text


# 6. GOVERNOR_DEBUG=0 is off


def _broken_pricing(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(_pricing, "describe", broken)


@pytest.mark.parametrize("value", ["0", "false", "FALSE", "no", "off", "", " 0 "])
def test_governor_debug_off_values_keep_tracebacks_off(
    value: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _broken_pricing(monkeypatch)
    monkeypatch.setenv("GOVERNOR_DEBUG", value)
    assert main(["pricing", "gpt-4o"]) == 1
    assert capsys.readouterr().err == (
        "governor pricing: RuntimeError: boom (set GOVERNOR_DEBUG=1 for the "
        "traceback)\n"
    )


@pytest.mark.parametrize("value", ["1", "true", "yes", "on"])
def test_governor_debug_on_values_show_the_traceback(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _broken_pricing(monkeypatch)
    monkeypatch.setenv("GOVERNOR_DEBUG", value)
    with pytest.raises(RuntimeError, match=r"^boom$"):
        main(["pricing", "gpt-4o"])
