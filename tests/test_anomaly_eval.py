"""The anomaly evaluation on a 20-minute slice of the Azure LLM trace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from governor.anomaly import Anomalies
from governor.anomaly._eval import Spike, evaluate, load_trace
from governor.cli import main

SAMPLE = Path(__file__).parent / "data" / "azure_trace_sample.csv"
FAST = Anomalies(interval_s=10, window_intervals=10, min_history_intervals=5)


def test_trace_is_priced_at_the_list_price() -> None:
    """Rows become (microseconds, tokens, nano-dollars) at gpt-4o-mini prices."""
    trace = load_trace(SAMPLE)
    events = trace.events["team:sample"]
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
        "deviation_baseline=mean",
        "burst_peak_factor=2.5",
    ]
    assert document["variants"][1]["burst_peak_factor"] == 2.5
    assert document["defaults"]["k"] == 2.0
    assert document["trace"]["scopes"] == {"team:sample": 599}


def test_cli_table_is_markdown(capsys: pytest.CaptureFixture[str]) -> None:
    """The text output is a markdown table with the defaults row first."""
    main(["eval", "anomalies", str(SAMPLE), "--trials", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Trace: team:sample (599 calls); priced as gpt-4o-mini")
    assert lines[5].startswith("| **defaults** | 2 | 30 | 5 |")
    # 12 sweep rows, less the two that repeat the defaults, then 2 variants.
    assert len(lines) == 6 + 10 + 2
    assert lines[-1].startswith("| burst_peak_factor=2.5 | 2 | 30 | 5 |")


def test_cli_reports_a_missing_path(capsys: pytest.CaptureFixture[str]) -> None:
    """A path with no CSV files exits 1 with a message."""
    code = main(["eval", "anomalies", str(SAMPLE.parent / "nothing-here")])
    assert code == 1
    assert "governor eval anomalies:" in capsys.readouterr().err
