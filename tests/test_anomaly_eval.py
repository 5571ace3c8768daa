"""The anomaly evaluation on a 20-minute slice of the Azure LLM trace."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from governor._errors import ConfigError
from governor.anomaly import Anomalies
from governor.anomaly._eval import Spike, evaluate, load_trace
from governor.cli import main

SAMPLE = Path(__file__).parent / "data" / "azure_trace_sample.csv"
FAST = Anomalies(interval_s=10, window_intervals=10, min_history_intervals=5)


def test_trace_is_priced_at_the_list_price() -> None:
    """Rows become (microseconds, tokens, nano-dollars) at gpt-4o-mini prices."""
    trace = load_trace(SAMPLE)
    events = trace.events["team:azure_trace_sample"]
    # First row: 374 prompt and 44 output tokens at $0.15 / $0.60 per million.
    assert (len(events), events[0][1:]) == (599, (418, 374 * 150 + 44 * 600))
    assert (trace.input_nanos_per_token, trace.output_nanos_per_token) == (150, 600)


def test_same_seed_gives_the_same_result() -> None:
    """Injections are seeded, so a rerun reproduces every number."""
    trace = load_trace(SAMPLE)
    first = evaluate(trace, FAST, trials=3, seed=7).to_json_dict()
    assert evaluate(trace, FAST, trials=3, seed=7).to_json_dict() == first


def test_a_huge_burst_is_always_found_within_its_window() -> None:
    """Twenty intervals' worth of tokens in 10 s is caught by the burst rule."""
    huge = Spike("burst", duration_s=10, share=20, share_of_s=10, calls=20)
    result = evaluate(load_trace(SAMPLE), FAST, trials=5, seed=1, spikes=[huge])
    (kind,) = result.kinds
    assert (kind.trials, kind.detected) == (5, 5)
    assert max(kind.delays_s) <= 10


def test_blunt_settings_raise_no_false_alerts() -> None:
    """With k = 50 and a 1000x burst factor the clean trace raises nothing."""
    blunt = FAST.model_copy(update={"k": 50.0, "burst_factor": 1000.0})
    result = evaluate(load_trace(SAMPLE), blunt, trials=1, seed=0)
    assert (result.false_alerts, result.false_alert_intervals) == (0, 0)


def test_cli_json_has_defaults_and_both_sweeps(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``governor eval anomalies --json`` prints the defaults and 9 + 3 sweeps."""
    code = main(["eval", "anomalies", str(SAMPLE), "--json", "--trials", "2"])
    document = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (len(document["sweep"]), len(document["burst_sweep"])) == (9, 3)
    assert [v["label"] for v in document["variants"]] == [
        "count_noise=False",
        "deviation_baseline=mean",
        "burst_peak_factor=2.5",
    ]
    assert document["variants"][0]["count_noise"] is False
    assert document["variants"][2]["burst_peak_factor"] == 2.5
    assert (document["defaults"]["k"], document["defaults"]["count_noise"]) == (
        4.0,
        True,
    )
    assert document["trace"]["scopes"] == {"team:azure_trace_sample": 599}


def test_cli_table_is_markdown(capsys: pytest.CaptureFixture[str]) -> None:
    """The text output is a markdown table with the defaults row first."""
    main(["eval", "anomalies", str(SAMPLE), "--trials", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(
        "Trace: team:azure_trace_sample (599 calls); priced as gpt-4o-mini"
    )
    assert lines[5].startswith("| **defaults** | 4 | 30 | 5 |")
    # 12 sweep rows, less the two that repeat the defaults, then 3 variants.
    assert len(lines) == 6 + 10 + 3
    assert lines[-1].startswith("| burst_peak_factor=2.5 | 4 | 30 | 5 |")


def test_cli_reports_a_missing_path(capsys: pytest.CaptureFixture[str]) -> None:
    """A path with no CSV files exits 2 with a message, as the other evals do."""
    code = main(["eval", "anomalies", str(SAMPLE.parent / "nothing-here")])
    assert code == 2
    assert "governor eval anomalies:" in capsys.readouterr().err


def _sample_lines() -> list[str]:
    return SAMPLE.read_text(encoding="utf-8").splitlines(keepends=True)


def _trace_file(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines), encoding="utf-8")
    return path


def test_files_ending_alike_keep_their_own_scopes(tmp_path: Path) -> None:
    """2024 names (``*_code_1week``, ``*_conv_1week``) are two scopes, not one."""
    lines = _sample_lines()
    _trace_file(tmp_path / "AzureLLMInferenceTrace_code_1week.csv", lines)
    _trace_file(tmp_path / "AzureLLMInferenceTrace_conv_1week.csv", lines[:300])
    trace = load_trace(tmp_path)
    assert {s: len(e) for s, e in trace.events.items()} == {
        "team:code_1week": 599,
        "team:conv_1week": 299,
    }


def test_2023_file_names_keep_their_scopes(tmp_path: Path) -> None:
    """The published trace's files are still ``team:code`` and ``team:conv``."""
    for service in ("code", "conv"):
        _trace_file(tmp_path / f"AzureLLMInferenceTrace_{service}.csv", _sample_lines())
    assert sorted(load_trace(tmp_path).events) == ["team:code", "team:conv"]


def test_two_files_with_one_scope_are_refused(tmp_path: Path) -> None:
    """A second file of the same scope names both files instead of replacing one."""
    _trace_file(tmp_path / "AzureLLMInferenceTrace_code.csv", _sample_lines())
    packed = tmp_path / "code.csv.gz"
    packed.write_bytes(gzip.compress("".join(_sample_lines()).encode()))
    with pytest.raises(ConfigError, match="both give scope team:code") as caught:
        load_trace(tmp_path)
    assert "AzureLLMInferenceTrace_code.csv" in str(caught.value)
    assert "code.csv.gz" in str(caught.value)


def test_gzipped_trace_files_are_read(tmp_path: Path) -> None:
    """A folder of ``.csv.gz`` and a gzipped file without ``.gz`` both read."""
    data = gzip.compress(SAMPLE.read_bytes())
    (tmp_path / "gz").mkdir()
    (tmp_path / "gz" / "AzureLLMInferenceTrace_code.csv.gz").write_bytes(data)
    unnamed = tmp_path / "code.csv"
    unnamed.write_bytes(data)
    expected = load_trace(SAMPLE).events["team:azure_trace_sample"]
    assert load_trace(tmp_path / "gz").events == {"team:code": expected}
    assert load_trace(unnamed).events == {"team:code": expected}


def test_bom_lower_case_and_reordered_header_are_read(tmp_path: Path) -> None:
    """Column names match in any case and order, after a byte-order mark."""
    rows = [line.rstrip("\n").split(",") for line in _sample_lines()[1:]]
    lines = ["\ufeffgeneratedtokens,Timestamp , CONTEXTTOKENS\n"] + [
        f"{out},{ts},{ctx}\n" for ts, ctx, out in rows
    ]
    path = _trace_file(tmp_path / "sample.csv", lines)
    expected = load_trace(SAMPLE).events["team:azure_trace_sample"]
    assert load_trace(path).events == {"team:sample": expected}


def test_unix_seconds_and_offsets_give_the_same_events(tmp_path: Path) -> None:
    """A TIMESTAMP in Unix seconds or with a +00:00 offset is the same time."""
    head, first = _sample_lines()[:2]
    _, ctx, out = first.rstrip("\n").split(",")
    for stamp in ("1700158546.68059", "2023-11-16T18:15:46.6805900+00:00"):
        path = _trace_file(tmp_path / "one.csv", [head, f"{stamp},{ctx},{out}\n"])
        assert load_trace(path).events["team:one"][0][0] == 1_700_158_546_680_590


@pytest.mark.parametrize(
    ("row", "says"),
    [
        ("2023-11-16 18:15:50,abc,44", "ContextTokens 'abc' is not a token count"),
        ("2023-11-16 18:15:50,374,-44", "GeneratedTokens '-44' is not a token count"),
        ("not a time,374,44", "TIMESTAMP 'not a time' is not a time"),
        ("1700158546680,374,44", "TIMESTAMP '1700158546680' is not a time"),
        ("2023-11-16 18:15:50,374", "the row has 2 field(s)"),
    ],
)
def test_a_bad_row_names_file_and_line(tmp_path: Path, row: str, says: str) -> None:
    """Bad values are ConfigErrors with ``path:line``, not bare ValueErrors."""
    lines = _sample_lines()
    lines[3] = row + "\n"
    path = _trace_file(tmp_path / "bad.csv", lines)
    with pytest.raises(ConfigError, match=re.escape(f"bad.csv:4: {says}")):
        load_trace(path)


def test_a_missing_column_is_named(tmp_path: Path) -> None:
    """A header without a needed column names the column and the header."""
    lines = ["TIMESTAMP,ContextTokens\n", "2023-11-16 18:15:50,374\n"]
    path = _trace_file(tmp_path / "two.csv", lines)
    with pytest.raises(ConfigError, match=r"two\.csv:1: no GeneratedTokens column"):
        load_trace(path)


def test_a_short_trace_names_file_and_the_length_needed(tmp_path: Path) -> None:
    """The evaluation says which trace is too short and how long it must be."""
    path = _trace_file(tmp_path / "short.csv", _sample_lines()[:40])
    with pytest.raises(ConfigError) as caught:
        evaluate(load_trace(path), FAST, trials=1, seed=0)
    message = str(caught.value)
    assert message.startswith(f"{path}: scope team:short spans ")
    assert "the evaluation needs more than" in message
