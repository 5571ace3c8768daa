"""What a new user reads is true: the docs' samples, the money error text and
the demo's lines (a new-user trial of the docs)."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from governor import Budget, LoopDetected, PolicyError
from governor.cli import main
from governor.spend import open_store

_ROOT = Path(__file__).resolve().parents[1]


def _blocks(page: str) -> list[str]:
    """The Python code blocks of a page of the repository."""
    text = (_ROOT / page).read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, re.S)


def _block_after(page: str, heading: str) -> str:
    """The first Python code block under ``heading`` on ``page``."""
    text = (_ROOT / page).read_text(encoding="utf-8")
    rest = text[text.index(heading) :]
    found = re.search(r"```python\n(.*?)```", rest, re.S)
    assert found is not None, f"no code block under {heading!r} in {page}"
    return found.group(1)


def test_the_loop_guard_sample_stops_at_a_stop_that_a_later_event_follows() -> None:
    """The sample acts on each verdict: a "stop" from on_tool_call is not lost
    to the None that on_node returns for a state that changes every step."""
    block = _block_after("docs/loops.md", "## Feeding the guard (for adapters)")
    setup, _, feed = block.partition("\nact(")
    assert feed, "the sample feeds the guard through act(...)"
    feed = "act(" + feed
    names: dict[str, Any] = {"task_id": "t", "spent": Decimal("0.01"), "tokens": 9}
    exec(setup, names)
    with pytest.raises(LoopDetected):
        for step in range(1, 10):
            names.update(
                step=step,
                n_calls=step - 1,
                t=float(step),
                messages=[{"role": "user", "content": f"try {step}"}],
                ai_message_text=f"attempt number {step}",
                tool_message_text="FAILED tests/test_parser.py",
                state_digest=f"state-{step}",
            )
            exec(feed, names)
    assert names["step"] < 9


def test_the_reports_blocks_that_build_a_governor_run_as_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attribution block and the spend= block define what they use."""
    monkeypatch.chdir(tmp_path)
    blocks = _blocks("docs/reports.md")
    for block in (b for b in blocks if "Governor(" in b):
        names: dict[str, Any] = {}
        exec(block, names)
        names["gov"].close()
    assert (tmp_path / "spend.sqlite3").is_file()


def test_the_tracing_shutdown_block_names_the_providers_made_above() -> None:
    """The shutdown block's providers are the names the first block gives."""
    first, *rest = _blocks("docs/tracing/README.md")
    shutdown = next(b for b in rest if ".shutdown(" in b)
    for name in re.findall(r"^(\w+)\.shutdown\(", shutdown, re.M):
        assert re.search(rf"^{name} = ", first, re.M), name


def test_money_errors_say_that_a_float_of_nine_places_is_accepted() -> None:
    """0.05 is read by its shortest digits; 0.1 + 0.2 has digits past 9 places."""
    assert Budget(max_usd=0.05).max_usd == Decimal("0.05")
    with pytest.raises(PolicyError) as refused:
        Budget(max_usd=0.1 + 0.2)
    message = str(refused.value)
    assert "a float with at most 9 decimal places" in message
    assert "as Decimal, int or str," not in message


def test_a_demo_row_with_cache_hits_tells_calls_sent_from_answers_cached() -> None:
    """ "4 calls, 4 cache hits, $x" read as 4 calls in all; name each part."""
    from governor.cli._demo import _calls_text

    report = SimpleNamespace(
        calls=4,
        cache_hits=4,
        cost_usd=Decimal("0.0006575"),
        saved_usd=Decimal("0.0006575"),
    )
    assert _calls_text(report) == (
        "4 calls sent ($0.0006575), 4 answered from the cache (saved $0.0006575)"
    )
    plain = SimpleNamespace(calls=1, cache_hits=0, cost_usd=Decimal("0.000012"))
    assert _calls_text(plain) == "1 call, $0.000012"


def test_a_second_demo_says_it_appended_and_what_the_store_holds(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The first run's footer is as before; the second names the calls in all."""
    monkeypatch.chdir(tmp_path)
    spend = tmp_path / "spend.sqlite3"
    argv = ["demo", "--speed", "0", "--count", "1", "--traces", "t.jsonl"]
    argv += ["--spend-db", str(spend)]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "appended" not in first
    assert "(one JSON span per line)." in first
    assert main(argv) == 0
    second = capsys.readouterr().out
    store = open_store(str(spend), existing=True)
    try:
        held = sum(1 for _ in store.query())
    finally:
        store.close()
    assert (
        f"appended to earlier runs: it now holds {held} spend records in all, "
        "calls sent, cache hits and refusals)"
    ) in second
    assert "appended to earlier runs' spans" in second


def test_the_readme_says_what_printing_a_task_report_shows() -> None:
    """The comment on print(agent.last_report) names the report's own fields."""
    text = (_ROOT / "README.md").read_text(encoding="utf-8")
    line = next(x for x in text.splitlines() if "print(agent.last_report)" in x)
    assert "TaskReport(" in line
    assert "budget left" not in line
    assert "input_tokens" in line or "input_tokens" in text[text.index(line) :][:300]


def test_the_quickstart_defines_the_words_it_uses() -> None:
    """A glossary at the end of the quickstart names each word it leaves open."""
    text = (_ROOT / "docs/quickstart.md").read_text(encoding="utf-8")
    glossary = text[text.index("## Words used here") :]
    for word in (
        "budget line",
        "hold",
        "settle",
        "lease",
        "hold_ttl_s",
        "window",
        "nano-dollar",
        "fan-out slot",
        "Send branch",
    ):
        assert word in glossary, word
