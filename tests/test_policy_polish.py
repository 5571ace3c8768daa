"""What a trial of the packs and policy names found, each fixed.

A model name with spaces around it is refused where a pack or a Tier takes
it, with the advice to strip it; names that differ only in Unicode
normalisation (NFC, NFD) are one team from the policy to the report; a bad
``ts`` in a spend record names the field; one pack merged over another
queues and caches as the top pack does; and a few messages read better.
"""

from __future__ import annotations

import json
import sqlite3
import unicodedata
from pathlib import Path

import pytest

from governor import BudgetExceeded, Governor, PolicyError
from governor.adapters.litellm import GovernedLiteLLM
from governor.cascade import Tier
from governor.cli import main
from governor.policies import Attribution, Budget, Policy, packs
from governor.spend import (
    JsonlSpendStore,
    SpendDataError,
    SpendRecord,
    SQLiteSpendStore,
    open_store,
)

NFC = "café"
NFD = unicodedata.normalize("NFD", NFC)
MESSAGES = [{"role": "user", "content": "hi"}]


def _record(**changes: object) -> dict[str, object]:
    data: dict[str, object] = {
        "v": 1,
        "ts": "2026-12-01T09:30:00.000000Z",
        "task_id": "t1",
        "call_id": "c1",
        "model": "gpt-4o-mini",
        "cost_usd": "0.001",
    }
    data.update(changes)
    return data


# --- model names with spaces around them -----------------------------------


@pytest.mark.parametrize("model", ["gpt-4o-mini ", " gpt-4o-mini", "gpt-4o-mini\n"])
def test_tier_refuses_a_model_with_spaces_around_it(model: str) -> None:
    with pytest.raises(PolicyError) as caught:
        Tier(name="cheap", model=model)
    message = str(caught.value)
    assert "must not start or end with spaces" in message
    assert "strip it first: 'gpt-4o-mini'" in message


def test_cost_saver_refuses_a_model_with_spaces_under_its_argument() -> None:
    with pytest.raises(PolicyError) as caught:
        packs.cost_saver(cheap_model="gpt-4o-mini ")
    message = str(caught.value)
    assert message.startswith(
        "packs.cost_saver(): cheap_model='gpt-4o-mini ' is not valid:"
    )
    assert "strip it first: 'gpt-4o-mini'" in message
    with pytest.raises(PolicyError, match="premium_model=' gpt-4o'"):
        packs.cost_saver(premium_model=" gpt-4o")


# --- NFC and NFD names are one -----------------------------------------------


def test_attribution_names_tags_and_budget_keys_are_kept_composed() -> None:
    assert NFC != NFD
    attribution = Attribution(team=NFD, user=NFD, tags={NFD: NFD})
    assert attribution.team == NFC
    assert attribution.user == NFC
    assert dict(attribution.tags) == {NFC: NFC}
    assert Budget(scope="team", key=NFD, max_usd="1").key == NFC
    assert Attribution.values_in({"team": NFD}) == {"team": NFC}


def test_two_tag_names_differing_only_in_form_are_refused() -> None:
    with pytest.raises(PolicyError, match="one name, written in two Unicode forms"):
        Attribution(tags={NFD: "a", NFC: "b"})


def test_a_budget_keyed_composed_holds_a_task_named_decomposed() -> None:
    policy = Policy(budgets=[Budget(scope="team", key=NFC, max_usd="0")])
    with Governor(policy) as gov:
        llm = GovernedLiteLLM(gov)
        for team in (NFC, NFD):
            with pytest.raises(BudgetExceeded) as caught, gov.task(team=team):
                llm.completion(
                    model="gpt-4o-mini", messages=MESSAGES, mock_response="ok"
                )
            assert caught.value.scope == f"team:{NFC}"


def test_calls_named_either_way_are_recorded_and_reported_as_one_team(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spend = tmp_path / "spend.jsonl"
    with Governor(Policy(), spend=str(spend)) as gov:
        llm = GovernedLiteLLM(gov)
        for team in (NFC, NFD):
            with gov.task(team=team):
                llm.completion(
                    model="gpt-4o-mini", messages=MESSAGES, mock_response="ok"
                )
        llm.completion(
            model="gpt-4o-mini",
            messages=MESSAGES,
            mock_response="ok",
            metadata={"team": NFD},
        )
    teams = [json.loads(line)["team"] for line in spend.read_text().splitlines()]
    assert teams == [NFC, NFC, NFC]
    args = ["report", "--db", str(spend), "--by", "team", "--format", "json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert [row["key"] for row in report["groups"]["team"]] == [NFC]


def test_a_decomposed_record_is_read_composed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [
        _record(call_id="c1", team=NFC, tags={"k": NFD}),
        _record(call_id="c2", team=NFD),
    ]
    spend = tmp_path / "old.jsonl"
    spend.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    records = list(JsonlSpendStore(spend).query())
    assert [r.team for r in records] == [NFC, NFC]
    assert dict(records[0].tags) == {"k": NFC}
    args = ["report", "--db", str(spend), "--format", "json", "--by", "team"]
    assert main([*args, "--filter", f"team={NFD}"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [row["key"] for row in report["groups"]["team"]] == [NFC]
    assert report["groups"]["team"][0]["calls"] == 2


def test_an_older_sqlite_store_filters_both_forms_as_one_team(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rows written decomposed before names were kept composed are matched
    by a filter on either form, as the report's grouping counts them."""
    db = tmp_path / "old.sqlite3"
    store = SQLiteSpendStore(db)
    for call_id in ("c1", "c2", "c3"):
        store.record(SpendRecord.from_json_dict(_record(call_id=call_id, team=NFC)))
    store.close()
    with sqlite3.connect(db) as conn:  # as an older release wrote them
        conn.execute("UPDATE spend SET team = ? WHERE call_id != 'c1'", (NFD,))
    for name in (NFC, NFD):
        args = ["report", "--db", str(db), "--format", "json", "--by", "team"]
        assert main([*args, "--filter", f"team={name}"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["groups"]["team"][0]["calls"] == 3


@pytest.mark.parametrize("suffix", ["jsonl", "sqlite3"])
def test_a_store_query_filter_takes_either_form(tmp_path: Path, suffix: str) -> None:
    """SpendStore.query(filters=...) from Python matches a decomposed value
    on a column and on a tag, as records are read composed."""
    path = tmp_path / f"spend.{suffix}"
    store = open_store(path)
    record = _record(call_id="c1", team=NFC, tags={"proj": NFC})
    store.record(SpendRecord.from_json_dict(record))
    store.close()
    reader = open_store(path)
    for key in ("team", "tag.proj"):
        for value in (NFC, NFD):
            assert len(list(reader.query(filters={key: value}))) == 1


def test_grouping_by_a_tag_named_either_way_finds_its_values() -> None:
    """--by tag.<name> typed decomposed groups by the composed tag."""
    from governor.spend._aggregate import check_grouping

    assert check_grouping(f"tag.{NFD}") == f"tag.{NFC}"
    assert check_grouping("team") == "team"


def test_budget_reset_and_unblock_take_either_form(tmp_path: Path) -> None:
    """A decomposed name names the composed line a budget charges."""
    from governor.cli._budget import _matches

    assert _matches(f"team:{NFC}#day:2026-12-05@UTC", f"team:{NFD}")
    gov = Governor()
    gov._blocked.add(f"team:{NFC}")
    gov.unblock(f"team:{NFD}")
    assert gov._blocked == set()


def test_an_error_pickled_before_the_refusal_fields_reads_them_as_none() -> None:
    """An older release's pickle has no holds_lapse_s or resets_at."""
    error = BudgetExceeded.__new__(BudgetExceeded)
    assert (error.holds_lapse_s, error.resets_at) == (None, None)


# --- ts ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "got"),
    [
        ("yesterday", "got 'yesterday'"),
        (1764581415, "got the JSON number 1764581415"),
        (None, "got null"),
        ("2026-12-01T09:30:15", "which has no offset"),
    ],
)
def test_a_bad_ts_names_the_field_and_the_format(ts: object, got: str) -> None:
    with pytest.raises(SpendDataError) as caught:
        SpendRecord.from_json_dict(_record(ts=ts))
    message = str(caught.value)
    assert "ts must be an ISO 8601 time with its UTC offset" in message
    assert got in message


def test_a_ts_with_an_offset_is_still_read() -> None:
    record = SpendRecord.from_json_dict(_record(ts="2026-12-01T10:30:00+01:00"))
    assert record.ts.isoformat() == "2026-12-01T09:30:00+00:00"


# --- packs over packs ----------------------------------------------------------


def test_a_pack_merged_over_another_brings_its_own_behaviour() -> None:
    batch = packs.customer_facing().merged(packs.batch())
    assert batch.fanout.on_cap == "wait"
    assert batch.fanout.wait_timeout_s == 600
    starter = packs.customer_facing().merged(packs.starter())
    assert starter.fanout.on_cap == "wait"
    production = packs.customer_facing().merged(packs.production())
    assert production.fanout.on_cap == "wait"
    saver = packs.customer_facing().merged(packs.cost_saver())
    assert saver.cache is not None
    assert saver.cache.semantic
    assert saver.cache.exact
    assert saver.cache.safety_gate
    assert batch.cache is not None
    # batch's cache settings win, but its partition never widens the base's
    assert (batch.cache.semantic, batch.cache.partition_by) == (
        True,
        ("org", "team", "user"),
    )
    back = packs.batch().merged(packs.customer_facing())
    assert back.fanout.on_cap == "refuse"


# --- messages ------------------------------------------------------------------


def test_an_unterminated_string_is_said_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spend = tmp_path / "cut.jsonl"
    # Ended by a newline: a line the writer finished, not one being written.
    spend.write_text('{"v": 1, "task_id": "t\n', encoding="utf-8")
    assert main(["report", "--db", str(spend)]) != 0
    err = capsys.readouterr().err
    assert "Unterminated string starting at column" in err
    assert "at at" not in err


@pytest.mark.parametrize("text", ["", "\n", "\ufeff  \n"])
def test_an_empty_policy_file_is_said_to_be_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    path = tmp_path / "policy.json"
    path.write_text(text, encoding="utf-8")
    assert main(["policy", "show", str(path)]) == 2
    err = capsys.readouterr().err
    assert "the file is empty (no JSON document)" in err
    assert "Expecting value" not in err
