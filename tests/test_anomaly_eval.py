"""The anomaly evaluation on a 20-minute slice of the Azure LLM trace."""

from __future__ import annotations

import gzip
import json
import re
from datetime import datetime, timedelta
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
    assert document["warnings"] == []


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


def _shifted(line: str, **delta: float) -> str:
    """A sample row with its time moved by ``timedelta(**delta)``."""
    stamp, rest = line.split(",", 1)
    moved = datetime.fromisoformat(stamp[:26]) + timedelta(**delta)
    return f"{moved:%Y-%m-%d %H:%M:%S.%f},{rest}"


@pytest.mark.parametrize(
    ("first", "later", "says"),
    [
        ("", "+05:00", "has a UTC offset, but line 2's '2023-11-16 18:15:46.6805900' "
         "has no UTC offset"),
        ("+00:00", "", "has no UTC offset, but line 2's "
         "'2023-11-16 18:15:46.6805900+00:00' has a UTC offset"),
    ],
    ids=["offset-among-naive", "naive-among-offsets"],
)  # fmt: skip
def test_times_with_and_without_an_offset_in_one_file_are_refused(
    tmp_path: Path, first: str, later: str, says: str
) -> None:
    """One row with a +05:00 offset in a file of UTC times (or the reverse)
    would sit hours from the rest: refused naming the file, line and both."""
    lines = _sample_lines()
    for n in range(1, len(lines)):
        stamp, rest = lines[n].split(",", 1)
        lines[n] = f"{stamp}{later if n == 11 else first},{rest}"
    path = _trace_file(tmp_path / "mixed.csv", lines)
    with pytest.raises(
        ConfigError, match=re.escape("mixed.csv:12: TIMESTAMP ")
    ) as caught:
        load_trace(path)
    assert says in str(caught.value)


def test_unix_seconds_among_iso_times_without_offset_are_refused(
    tmp_path: Path,
) -> None:
    """Unix seconds fix their zone; a naive ISO time beside them is refused."""
    head, first, second = _sample_lines()[:3]
    _, ctx, out = first.rstrip("\n").split(",")
    path = _trace_file(
        tmp_path / "u.csv", [head, f"1700158546.68,{ctx},{out}\n", second]
    )
    with pytest.raises(ConfigError, match=r"u\.csv:3: TIMESTAMP .* has no UTC offset, "
                       r"but line 2's '1700158546.68' is in Unix seconds"):  # fmt: skip
        load_trace(path)


@pytest.mark.parametrize("case", ["a-day-early", "offset-in-an-offset-file"])
def test_a_stray_row_far_from_the_rest_is_left_out_with_a_warning(
    tmp_path: Path, case: str
) -> None:
    """A row a day early (or with a wrong offset in a file of offsets) would
    stretch the span the spikes are placed over: it is left out, and the
    warning names its line and the span evaluated."""
    lines = _sample_lines()
    if case == "a-day-early":
        lines[1] = _shifted(lines[1], days=-1)
    else:  # every time +00:00 but the first, +05:00: five hours early
        offset = [ln.split(",", 1) for ln in lines[1:]]
        zones = ["+05:00"] + ["+00:00"] * (len(offset) - 1)
        lines[1:] = [
            f"{t}{z},{rest}" for (t, rest), z in zip(offset, zones, strict=True)
        ]
    path = _trace_file(tmp_path / "stray.csv", lines)
    trace = load_trace(path)
    expected = load_trace(SAMPLE).events["team:azure_trace_sample"][1:]
    assert trace.events == {"team:stray": expected}
    (warning,) = trace.warnings
    assert warning.startswith(
        f"{path}: left out a row far from the other 598: line 2 ("
    )
    assert "The evaluation covers 2023-11-16 18:15:55 UTC to" in warning


def test_the_stray_row_warning_reaches_stderr_and_the_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command prints the warning on stderr and lists it in the JSON."""
    lines = _sample_lines()
    lines[1] = _shifted(lines[1], days=-1)
    path = _trace_file(tmp_path / "stray.csv", lines)
    code = main(["eval", "anomalies", str(path), "--json", "--trials", "2",
                 "--defaults-only"])  # fmt: skip
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert code == 0
    assert document["trace"]["scopes"] == {"team:stray": 598}
    (warning,) = document["warnings"]
    assert f"governor eval anomalies: warning: {warning}" in captured.err


def test_a_trace_idle_for_most_of_its_span_is_warned_of(tmp_path: Path) -> None:
    """Two bursts of calls two hours apart: most spikes would land in the
    pause, so the trace is evaluated with a warning saying so."""
    lines = _sample_lines()
    later = [_shifted(line, hours=2) for line in lines[1:]]
    path = _trace_file(tmp_path / "idle.csv", lines + later)
    trace = load_trace(path)
    assert len(trace.events["team:idle"]) == 2 * 599  # nothing left out
    (warning,) = trace.warnings
    assert "scope team:idle has no calls for 71% of its 2.3 h" in warning
    assert "the longest 100 min, from 2023-11-16 18:35:45 UTC to" in warning


def test_a_trace_without_tokens_is_refused(tmp_path: Path) -> None:
    """Spikes sized from a zero token rate mean nothing: refused, not 5/5 found."""
    lines = [_sample_lines()[0]] + [
        line.split(",", 1)[0] + ",0,0\n" for line in _sample_lines()[1:]
    ]
    path = _trace_file(tmp_path / "zeros.csv", lines)
    with pytest.raises(ConfigError, match="every row of scope team:zeros has 0"):
        load_trace(path)


def test_a_negative_seed_is_accepted_as_the_other_evals_accept_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--seed -3 runs (numpy takes no negative seed) with its own injections."""
    args = ["eval", "anomalies", str(SAMPLE), "--json", "--trials", "3"]
    assert main([*args, "--defaults-only", "--seed", "-3"]) == 0
    assert json.loads(capsys.readouterr().out)["seed"] == -3
    trace = load_trace(SAMPLE)
    huge = [Spike("burst", duration_s=10, share=20, share_of_s=10, calls=20)]
    negative = evaluate(trace, FAST, trials=3, seed=-3, spikes=huge)
    positive = evaluate(trace, FAST, trials=3, seed=3, spikes=huge)
    assert negative.kinds[0].detected == 3
    assert negative.kinds[0].delays_s != positive.kinds[0].delays_s


def test_a_model_without_a_price_gets_command_line_advice(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An unpriced --model exits 2 saying to give one the price map knows,
    not how to build a Policy in Python."""
    code = main(["eval", "anomalies", str(SAMPLE), "--model", "acme/no-such-llm"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--model acme/no-such-llm: no price is known for it" in err
    assert "such as gpt-4o-mini" in err
    assert "Pricing(" not in err
