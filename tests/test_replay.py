"""`governor replay` and `governor compare` on recorded traffic."""

from __future__ import annotations

import dataclasses
import gzip
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from governor import Budget, Policy
from governor._replay import load_policy, replay
from governor.cli import main
from governor.spend import JsonlSpendStore, RedisSpendStore, SpendRecord

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
# gpt-4o: $2.50 / $10 per million; gpt-4o-mini: $0.15 / $0.60.
CALL_4O = Decimal(1000) * Decimal("2.5e-6") + Decimal(200) * Decimal("10e-6")
CALL_MINI = Decimal(1000) * Decimal("0.15e-6") + Decimal(200) * Decimal("0.6e-6")


def records(tasks: int, calls: int) -> list[SpendRecord]:
    out = []
    for t in range(tasks):
        for c in range(calls):
            out.append(
                SpendRecord(
                    ts=T0 + timedelta(seconds=t * 60 + c),
                    task_id=f"task-{t}",
                    call_id=f"call-{t}-{c}",
                    model="gpt-4o",
                    input_tokens=1000,
                    output_tokens=200,
                    cost_usd=CALL_4O,
                    team="search",
                    tags={"quality": "1" if t % 2 else "0"},
                )
            )
    return out


def test_replay_prices_recorded_usage_under_the_policy() -> None:
    """Each task costs its calls' recorded tokens at the rate card's prices."""
    run = replay(records(3, 2), Policy())
    assert [t.cost_usd for t in run.tasks.values()] == [CALL_4O * 2] * 3
    assert run.quality == pytest.approx(1 / 3)


def test_replay_stops_tasks_the_new_budget_would_stop() -> None:
    """A tighter per-task budget stops tasks at the call that would cross it."""
    policy = Policy(budgets=[Budget(max_usd=CALL_4O * Decimal("1.5"))])
    run = replay(records(2, 3), policy)
    assert [(t.calls, t.stop_reason) for t in run.tasks.values()] == [
        (1, "budget_exceeded"),
        (1, "budget_exceeded"),
    ]
    assert run.cost_usd == CALL_4O * 2


def test_model_swap_reprices_the_same_tokens() -> None:
    """Replaying with gpt-4o swapped for gpt-4o-mini prices the same tokens."""
    run = replay(records(2, 2), Policy(), model_map={"gpt-4o": "gpt-4o-mini"})
    assert run.cost_usd == CALL_MINI * 4


def test_compare_cli_prints_the_cost_per_task_difference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`governor compare --model` reports both runs and the change per task."""
    trace = tmp_path / "trace.jsonl"
    JsonlSpendStore(trace).record_many(records(4, 2))
    code = main(
        ["compare", "--db", str(trace), "--model", "gpt-4o=gpt-4o-mini", "--json"]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert Decimal(out["a"]["cost_per_task_usd"]) == CALL_4O * 2
    assert Decimal(out["b"]["cost_per_task_usd"]) == CALL_MINI * 2
    expected = float((CALL_MINI - CALL_4O) / CALL_4O * 100)
    assert out["cost_per_task_change_pct"] == pytest.approx(expected)


def test_replay_cli_reads_a_python_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`governor replay --policy file.py` loads POLICY from the file."""
    trace = tmp_path / "trace.jsonl"
    JsonlSpendStore(trace).record_many(records(2, 3))
    policy_file = tmp_path / "tight.py"
    policy_file.write_text(
        "from governor import Budget, Policy\n"
        "POLICY = Policy(name='tight', budgets=[Budget(max_usd='0.005')])\n"
    )
    code = main(["replay", "--db", str(trace), "--policy", str(policy_file), "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["label"], out["stopped"]) == ("tight", 2)


def test_replay_labels_an_unnamed_policy_by_its_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A policy file without a name is reported by its path, not as 'default'."""
    trace = tmp_path / "trace.jsonl"
    JsonlSpendStore(trace).record_many(records(1, 1))
    policy_file = tmp_path / "plain.py"
    policy_file.write_text("from governor import Policy\nPOLICY = Policy()\n")
    assert main(["replay", "--db", str(trace), "--policy", str(policy_file)]) == 0
    assert f"1 tasks replayed under '{policy_file}'" in capsys.readouterr().out


def test_bad_policy_file_is_a_clear_error(tmp_path: Path) -> None:
    """A policy path that does not exist says what is accepted."""
    from governor import ConfigError

    with pytest.raises(ConfigError, match=r"'pack:NAME' or an existing \.json"):
        load_policy(str(tmp_path / "missing.json"))


def test_missing_store_exits_with_a_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Replaying a store that does not exist exits 2 and says what to do."""
    code = main(["replay", "--db", str(tmp_path / "nope.sqlite3")])
    assert code == 2
    assert "governor demo" in capsys.readouterr().err


def test_compare_refuses_a_swap_that_matches_no_recorded_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A misspelt OLD is an error naming it and the models that were called.

    Ignoring it would report the same cost under both runs, +0.0%.
    """
    trace = tmp_path / "trace.jsonl"
    JsonlSpendStore(trace).record_many(records(2, 2))
    code = main(["compare", "--db", str(trace), "--model", "gpt4o=gpt-4o-mini"])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert "no recorded call uses the model 'gpt4o'" in err
    assert "the records use 'gpt-4o' (4 calls)" in err


def test_compare_refuses_one_model_swapped_for_two(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`compare --model A=B --model A=C` exits 2 naming both, as replay does:
    keeping the last would compare a run the command line did not ask for."""
    trace = tmp_path / "trace.jsonl"
    JsonlSpendStore(trace).record_many(records(2, 2))
    swaps = ["--model", "gpt-4o=gpt-4o-mini", "--model", "gpt-4o=gpt-4.1"]
    code = main(["compare", "--db", str(trace), *swaps])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert "--model gpt-4o=gpt-4o-mini and --model gpt-4o=gpt-4.1" in err


def test_replay_refuses_a_swap_that_matches_no_recorded_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`governor replay --model` checks its swaps the same way."""
    trace = tmp_path / "trace.jsonl"
    JsonlSpendStore(trace).record_many(records(1, 1))
    code = main(["replay", "--db", str(trace), "--model", "claude=gpt-4o-mini"])
    assert code == 2
    assert "'claude'" in capsys.readouterr().err


def test_an_unmatched_swap_lists_at_most_ten_recorded_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Many recorded models: the ten most called are listed, then a count."""
    trace = tmp_path / "trace.jsonl"
    calls = records(12, 2)
    for index, record in enumerate(calls):
        calls[index] = dataclasses.replace(record, model=f"model-{index // 2:02d}")
    calls.append(dataclasses.replace(calls[-1], call_id="extra"))
    JsonlSpendStore(trace).record_many(calls)
    code = main(["compare", "--db", str(trace), "--model", "nope=gpt-4o"])
    err = capsys.readouterr().err
    assert code == 2
    assert "the records use 'model-11' (3 calls), 'model-00' (2 calls)" in err
    assert err.count("'model-") == 10
    assert err.rstrip().endswith("and 2 more")


def test_replay_charges_org_budgets_of_recorded_orgs() -> None:
    """An org budget applies to replayed calls recorded under that org."""
    recorded = [dataclasses.replace(r, org="acme") for r in records(2, 2)]
    budget = Budget(scope="org", key="acme", max_usd=CALL_4O * Decimal("2.5"))
    run = replay(recorded, Policy(budgets=[budget]))
    assert [t.calls for t in run.tasks.values()] == [2, 0]
    assert run.cost_usd == CALL_4O * 2


def test_an_unknown_task_is_refused_with_where_to_look(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped --task exits 2 instead of replaying nothing successfully."""
    trace = tmp_path / "trace.jsonl"
    JsonlSpendStore(trace).record_many(records(1, 1))
    assert main(["replay", "--db", str(trace), "--task", "task-9"]) == 2
    assert "no recorded call of task(s) task-9" in capsys.readouterr().err


def test_a_policy_file_that_exits_is_an_error(tmp_path: Path) -> None:
    """sys.exit() in a policy file is reported, not taken as the CLI's exit."""
    from governor import ConfigError

    policy_file = tmp_path / "exits.py"
    policy_file.write_text("import sys\nsys.exit(0)\n")
    with pytest.raises(ConfigError, match="importing it failed: SystemExit"):
        load_policy(str(policy_file))


def test_an_upper_case_json_suffix_is_read_as_json(tmp_path: Path) -> None:
    """POLICY.JSON is a JSON policy, not Python."""
    policy_file = tmp_path / "POLICY.JSON"
    policy_file.write_text('{"name": "upper"}')
    assert load_policy(str(policy_file)).name == "upper"


@pytest.mark.parametrize(("text", "kind"), [("[1, 2]", "list"), ('"x"', "str")])
def test_a_json_policy_that_is_not_an_object_says_what_a_policy_is(
    tmp_path: Path, text: str, kind: str
) -> None:
    """A JSON list or string is refused with the form a policy file takes."""
    from governor import ConfigError

    policy_file = tmp_path / "policy.json"
    policy_file.write_text(text)
    with pytest.raises(ConfigError, match=f"one JSON object .* got a JSON {kind}$"):
        load_policy(str(policy_file))


def test_replay_and_compare_read_the_redis_store_under_prefix(
    redis_url: str, redis_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--prefix picks one deployment's records out of a shared Redis."""
    for name, tasks in (("a", 2), ("b", 3)):
        prefix = f"{redis_prefix}{name}:"
        with RedisSpendStore.from_url(redis_url, prefix=prefix) as store:
            store.record_many(records(tasks, 1))
    source = ["--db", redis_url, "--prefix", f"{redis_prefix}a:"]
    assert main(["replay", *source, "--json"]) == 0
    replayed = json.loads(capsys.readouterr().out)
    swap = ["--model", "gpt-4o=gpt-4o-mini", "--json"]
    assert main(["compare", *source, *swap]) == 0
    compared = json.loads(capsys.readouterr().out)
    assert (replayed["tasks"], compared["a"]["tasks"]) == (2, 2)


def test_replay_refuses_a_prefix_for_a_store_that_is_not_redis(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--prefix with a JSONL trace exits 2 and says what to do."""
    trace = tmp_path / "trace.jsonl"
    JsonlSpendStore(trace).record_many(records(1, 1))
    for command in (["replay"], ["compare", "--model", "gpt-4o=gpt-4o-mini"]):
        code = main([*command, "--db", str(trace), "--prefix", "deployA:"])
        err = capsys.readouterr().err
        assert code == 2
        assert "a key prefix applies only to a Redis spend store" in err


def test_a_stopped_task_does_not_keep_its_recorded_quality() -> None:
    """A task the policy stopped never reached the answer that earned its
    recorded quality: it scores 0, and the good ones cut off are counted."""
    policy = Policy(budgets=[Budget(max_usd=CALL_4O * Decimal("1.5"))])
    run = replay(records(2, 3), policy)
    assert [t.recorded_quality for t in run.tasks.values()] == [0.0, 1.0]
    assert (run.stopped, run.stopped_recorded_good, run.quality) == (2, 1, 0.0)
    assert replay(records(2, 3), Policy()).quality == 0.5


def test_replay_and_compare_say_how_many_good_tasks_were_cut_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Text and JSON give the quality with stopped tasks at 0, and their count."""
    trace = tmp_path / "trace.jsonl"
    JsonlSpendStore(trace).record_many(records(2, 3))
    policy_file = tmp_path / "tight.json"
    policy_file.write_text(json.dumps({"budgets": [{"max_usd": "0.006"}]}))
    source = ["--db", str(trace)]
    assert main(["replay", *source, "--policy", str(policy_file), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["stopped_recorded_good"], out["quality"]) == (1, 0.0)
    assert main(["replay", *source, "--policy", str(policy_file)]) == 0
    assert (
        "2 stopped by the policy (1 of them recorded as good, counted at "
        "quality 0); quality 0.000"
    ) in capsys.readouterr().out
    assert main(["compare", *source, "--b", str(policy_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[-1] for line in lines[1:3]] == ["0.500", "0.000"]
    assert (
        "B stopped 1 task(s) recorded as good; a stopped task counts at " in (lines[3])
    )


def test_replay_text_shows_whole_task_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ids that share a long start stay apart; a very long one keeps both ends."""
    ids = ["django__django-11099", "django__django-11133", "x" * 60 + "-end-7"]
    calls = [
        dataclasses.replace(r, task_id=task_id)
        for r, task_id in zip(records(3, 1), ids, strict=True)
    ]
    trace = tmp_path / "trace.jsonl"
    JsonlSpendStore(trace).record_many(calls)
    assert main(["replay", "--db", str(trace)]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split()[0] for row in rows[:2]] == ids[:2]
    shown = rows[2].split()[0]
    assert (len(shown), shown[:3], shown[-6:]) == (48, "xxx", "-end-7")
    assert "\u2026" in shown
    assert len({row.index(" call") for row in rows}) == 1


def test_replay_names_the_line_of_a_null_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record with "model": null stops the replay at its file and line."""
    trace = tmp_path / "trace.jsonl"
    JsonlSpendStore(trace).record_many(records(1, 1))
    with trace.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({**records(2, 1)[1].to_json_dict(), "model": None}))
    assert main(["replay", "--db", str(trace)]) == 1
    err = capsys.readouterr().err
    assert f"{trace}:2: malformed spend record: SpendRecord.model must be" in err


def test_replay_reads_a_gzip_compressed_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--db trace.jsonl.gz replays, rather than failing as a bad SQLite file."""
    plain = tmp_path / "trace.jsonl"
    JsonlSpendStore(plain).record_many(records(3, 2))
    packed = tmp_path / "trace.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert main(["replay", "--db", str(packed), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tasks"] == 3


def test_replay_names_the_line_of_a_record_without_a_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record with no "model" key is named as a null one is (docs/reports.md),
    not as a missing keyword argument of SpendRecord.__init__."""
    trace = tmp_path / "trace.jsonl"
    JsonlSpendStore(trace).record_many(records(1, 1))
    row = records(2, 1)[1].to_json_dict()
    del row["model"]
    with trace.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row))
    assert main(["replay", "--db", str(trace)]) == 1
    err = capsys.readouterr().err
    assert (
        f"{trace}:2: malformed spend record: SpendRecord.model must be a non-empty "
        "string, got None"
    ) in err
    assert "__init__" not in err


@pytest.mark.parametrize(
    ("command", "option"), [("replay", "--policy"), ("compare", "--a and --b")]
)
def test_an_unpriced_recorded_model_exits_2_with_the_policy_file_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, option: str
) -> None:
    """A model no price prices is unusable input (exit 2), and the advice is the
    policy file's "pricing", not Python; following it makes the replay run."""
    trace = tmp_path / "trace.jsonl"
    unpriced = [dataclasses.replace(r, model="acme/in-house") for r in records(2, 1)]
    JsonlSpendStore(trace).record_many(unpriced)
    extra = ["--b", "default"] if command == "compare" else []
    assert main([command, "--db", str(trace), *extra]) == 2
    err = capsys.readouterr().err
    assert f"governor {command}: no price is known for model 'acme/in-house'" in err
    assert f"given with {option}" in err
    assert "Policy(pricing=" not in err
    snippet = err[err.index('{"pricing"') : err.index(" (US dollars")]
    policy = tmp_path / "priced.json"
    policy.write_text(snippet, encoding="utf-8")
    assert main(["replay", "--db", str(trace), "--policy", str(policy)]) == 0


def test_replay_reads_old_records_with_names_todays_rules_refuse() -> None:
    """Records written before tags were checked (an empty tag, a padded
    value) replay with those tags unset, as reports count them."""
    old = [
        dataclasses.replace(r, tags={"quality": "1", "k": "", " pad": "v", "t": "#1"})
        for r in records(1, 2)
    ]
    run = replay(old, Policy(budgets=[Budget(scope="team", max_usd=1)]))
    assert [t.cost_usd for t in run.tasks.values()] == [CALL_4O * 2]
    assert run.quality == 1.0


def test_replay_json_writes_money_in_plain_notation() -> None:
    """A tiny cost is "0.00000015", never "1.5E-7"."""
    tiny = [
        dataclasses.replace(r, model="gpt-4o-mini", input_tokens=1, output_tokens=0)
        for r in records(1, 1)
    ]
    summary = replay(tiny, Policy()).as_dict()
    assert (summary["cost_usd"], summary["cost_per_task_usd"]) == (
        "0.00000015",
        "0.00000015",
    )


@pytest.mark.parametrize(
    ("source", "called_as"),
    [
        (
            "from governor.policies import packs\nPOLICY = packs.production\n",
            "POLICY = packs.production(...)",
        ),
        (
            "from governor import Policy\ndef make():\n    return Policy()\n"
            "POLICY = make\n",
            "POLICY = make(...)",
        ),
    ],
)
def test_a_policy_file_naming_a_function_is_told_to_call_it(
    tmp_path: Path, source: str, called_as: str
) -> None:
    """POLICY = packs.production (the call forgotten) says how to call it."""
    from governor import ConfigError

    policy_file = tmp_path / "uncalled.py"
    policy_file.write_text(source)
    with pytest.raises(ConfigError, match="is a function") as refused:
        load_policy(str(policy_file))
    assert f"call it: {called_as}" in str(refused.value)


def test_compare_names_each_run_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The legend reads "A: default", not "A = A: default"."""
    trace = tmp_path / "trace.jsonl"
    JsonlSpendStore(trace).record_many(records(2, 2))
    assert main(["compare", "--db", str(trace), "--b", "pack:starter"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "A: default" in lines
    assert "B: pack:starter" in lines
