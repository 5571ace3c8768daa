"""The loop guard: each rule fires on a loop and stays silent on progress."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from governor._errors import GovernorHalt, PolicyError
from governor.loops import LoopDetected, LoopGuard, read_trajectories
from governor.policies._loops import Loops

SAMPLE = Path(__file__).parent / "data" / "trajectories_sample.jsonl"
PASSED = "<returncode>1</returncode> FAILED test_x - assert 1 == 2"


def _feed_tool(guard: LoopGuard, calls: list[tuple[str, str]], first_step: int = 1):
    """Feed (command, result) pairs as bash calls; return every verdict given."""
    verdicts = []
    for offset, (command, result) in enumerate(calls):
        verdict = guard.on_tool_call(
            "bash", {"command": command}, result, step=first_step + offset
        )
        if verdict is not None:
            verdicts.append(verdict)
    return verdicts


def test_identical_call_and_result_fires_repeat_after_max_repeats() -> None:
    """The third repeat of a call with the same result is a repeat loop."""
    guard = LoopGuard(Loops())
    verdicts = _feed_tool(guard, [("pytest -x", PASSED)] * 4)
    assert [(v.rule, v.steps, v.repeats) for v in verdicts] == [
        ("repeat", (1, 2, 3, 4), 3)
    ]
    assert "was made 4 times in a row, the same each time (3 repeats)" in (
        verdicts[0].message
    )


def test_rerun_after_a_change_is_not_a_loop() -> None:
    """Edit, test, edit, test with changing results never fires."""
    guard = LoopGuard(Loops())
    calls = []
    for attempt in range(12):
        calls.append((f"sed -i 's/a/b{attempt}/' x.py", "<returncode>0</returncode>"))
        calls.append(("pytest -x", f"FAILED test_x - assert {attempt} == 99"))
    assert _feed_tool(guard, calls) == []


def test_same_command_with_new_result_each_time_is_not_a_loop() -> None:
    """A command whose result keeps changing is progress, however often it runs."""
    guard = LoopGuard(Loops())
    calls = [("tail -n 1 build.log", f"step {n} of 40") for n in range(30)]
    assert _feed_tool(guard, calls) == []


def test_arguments_are_compared_after_normalization() -> None:
    """Key order and whitespace in arguments do not make calls different."""
    guard = LoopGuard(Loops(max_repeats=1))
    first = guard.on_tool_call("search", {"q": "a  b", "n": 3}, "r", step=1)
    second = guard.on_tool_call("search", '{"n": 3, "q": "a b"}', "r", step=2)
    third = guard.on_tool_call("search", {"n": 3, "q": " a b "}, "r", step=3)
    assert (first, second, third is not None) == (None, None, True)


def test_unknown_result_is_not_judged() -> None:
    """Calls reported without a result never count as repeats."""
    guard = LoopGuard(Loops())
    verdicts = [guard.on_tool_call("bash", "ls", None, step=s) for s in range(10)]
    assert verdicts == [None] * 10


def test_exempt_tool_is_not_judged() -> None:
    """A tool listed in exempt_tools may poll with the same result forever."""
    guard = LoopGuard(Loops(exempt_tools=("job_status",)))
    verdicts = [
        guard.on_tool_call("job_status", {"id": 7}, "pending", step=s)
        for s in range(10)
    ]
    assert verdicts == [None] * 10


def test_durations_and_addresses_are_masked_by_default() -> None:
    """Results that differ only in timing and addresses count as the same."""
    guard = LoopGuard(Loops(max_repeats=1))
    results = ["1 failed in 0.31s at 0x7f00aa10", "1 failed in 0.29s at 0x7f00bb20"]
    results.append("1 failed in 0.40s at 0x7f00cc30")
    verdicts = _feed_tool(guard, [("pytest", r) for r in results])
    assert [v.rule for v in verdicts] == ["repeat"]


def test_request_counters_and_long_ids_are_masked_by_default() -> None:
    """A retry whose error only counts up (request #7, #8) is still a repeat."""
    guard = LoopGuard(Loops(max_repeats=1))
    results = [f"error 503 (request #{n}, trace {1700000000 + n})" for n in (7, 8, 9)]
    verdicts = _feed_tool(guard, [("fetch", r) for r in results])
    assert [v.rule for v in verdicts] == ["repeat"]


def test_progress_numbers_are_not_masked() -> None:
    """Polling that reports progress learns something new each time."""
    guard = LoopGuard(Loops(max_repeats=1, max_stale_steps=None))
    results = [
        f"job running: {pct}% done, step {n}" for n, pct in enumerate((20, 45, 80))
    ]
    assert _feed_tool(guard, [("status", r) for r in results]) == []


def test_masking_can_be_turned_off() -> None:
    """With mask_volatile=False, a changed duration is a changed result."""
    guard = LoopGuard(Loops(max_repeats=1, mask_volatile=False))
    results = ["1 failed in 0.31s", "1 failed in 0.29s", "1 failed in 0.40s"]
    assert _feed_tool(guard, [("pytest", r) for r in results]) == []


def test_two_step_cycle_fires_on_second_repeated_lap() -> None:
    """A, B, A, B, A, B with the same results is a cycle after two laps."""
    guard = LoopGuard(Loops(max_repeats=None, max_stale_steps=None))
    lap = [("cat a.py", "print(1)"), ("python a.py", "1")]
    verdicts = _feed_tool(guard, lap * 3)
    assert [(v.rule, v.repeats, v.steps[-1]) for v in verdicts] == [("cycle", 2, 6)]


def test_cycle_evidence_lists_one_lap() -> None:
    """The cycle verdict names the calls of one lap, in order."""
    guard = LoopGuard(Loops(max_repeats=None, max_stale_steps=None))
    lap = [("cat a.py", "print(1)"), ("python a.py", "1")]
    (verdict,) = _feed_tool(guard, lap * 3)
    assert verdict.evidence == (
        'bash({"command":"cat a.py"}) -> print(1)',
        'bash({"command":"python a.py"}) -> 1',
    )


def test_cycle_with_changing_results_is_not_a_loop() -> None:
    """Alternating two commands whose results change is progress."""
    guard = LoopGuard(Loops())
    calls = []
    for n in range(10):
        calls += [("cat a.py", f"print({n})"), ("python a.py", str(n))]
    assert _feed_tool(guard, calls) == []


def test_stale_rule_fires_when_nothing_new_comes_in() -> None:
    """Six observations in a row, each seen before, trip max_stale_steps=5."""
    guard = LoopGuard(Loops())
    names = "ABCBACABC"
    verdicts = _feed_tool(guard, [(f"cmd {n}", f"out {n}") for n in names])
    assert [(v.rule, v.steps) for v in verdicts] == [("stale", (4, 5, 6, 7, 8, 9))]


def test_near_duplicate_outputs_fire_after_max_run() -> None:
    """Three outputs in a row that are each near-copies of the one before fire."""
    guard = LoopGuard(Loops())
    base = "I will open the settings file and look for the timeout value again now"
    texts = [base, base + " please", base + " ok", base + " then"]
    verdicts = [guard.on_model_output(t, step=s) for s, t in enumerate(texts, 1)]
    assert [v.rule if v else None for v in verdicts] == [
        None,
        None,
        None,
        "near_duplicate",
    ]
    message = verdicts[-1].message if verdicts[-1] else ""
    assert "(lowest similarity 0.87; near_duplicate_similarity is 0.75)" in message


def test_distinct_outputs_are_not_near_duplicates() -> None:
    """Outputs that say different things never fire the output rule."""
    guard = LoopGuard(Loops())
    texts = [
        "Let me list the repository to find the module.",
        "The parser lives in src/parse.py; I will read it.",
        "Found the bug: the loop skips the last token. Fixing it.",
        "Running the tests to check the fix.",
        "All tests pass, submitting.",
    ]
    verdicts = [guard.on_model_output(t, step=s) for s, t in enumerate(texts, 1)]
    assert verdicts == [None] * 5


def _outputs(guard: LoopGuard, texts: list[str]) -> list[str | None]:
    """Feed model outputs at steps 1, 2 ...; return each verdict's rule or None."""
    verdicts = [guard.on_model_output(t, step=s) for s, t in enumerate(texts, 1)]
    return [v.rule if v else None for v in verdicts]


def _page_summaries() -> list[str]:
    """Templated summaries of pages 1-6 that differ in content, not only in page."""
    counts = [12, 9, 11, 10, 7, 13]
    return [
        f"Summary of page {page}: {count} orders found. All of them shipped on "
        "time, no refunds were requested and no customer complaints were logged."
        for page, count in enumerate(counts, 1)
    ]


def test_templated_page_summaries_with_different_content_pass() -> None:
    """Summaries of six pages in one template, each with its own count, pass."""
    assert _outputs(LoopGuard(Loops()), _page_summaries()) == [None] * 6


def test_same_edit_applied_to_one_class_after_another_passes() -> None:
    """A real templated step (django-13449): one edit, a new class name each time."""
    names = ["LagLeadFunction", "LastValue", "NthValue", "FirstValue", "Ntile"]
    texts = [
        f"THOUGHT: Now `{name}`.\n\n```bash\nsed -i '/class {name}(Func):/,"
        "/window_compatible = True/ {\n    /window_compatible = True/ a\\n\\n"
        "    def as_sqlite(self, compiler, connection, **extra_context):\\n"
        "        return self.as_sql(compiler, connection, **extra_context)\n}' "
        "django/db/models/functions/window.py\n```"
        for name in names
    ]
    assert _outputs(LoopGuard(Loops()), texts) == [None] * 5


@pytest.mark.parametrize(
    "texts",
    [
        pytest.param(
            ["I will retry the request to the upstream service once more now."] * 4,
            id="same-text",
        ),
        pytest.param(
            [
                "Attempt 1: the upstream service returned 503, so I will retry.",
                "Attempt 2:  the upstream service returned 503; so I will retry!",
                "Attempt 3: the upstream service returned 503, so I will\nretry.",
                "Attempt 4 - the upstream service returned 503, so I will retry...",
            ],
            id="whitespace-punctuation-counter",
        ),
        pytest.param(
            [
                f"Summary of page {page}: 10 orders found, all of them shipped on time."
                for page in range(1, 5)
            ],
            id="only-the-page-number-changes",
        ),
    ],
)
def test_model_repeating_itself_is_stopped_on_the_third_near_copy(
    texts: list[str],
) -> None:
    """Same text, or only whitespace, punctuation or one counter changed, fires."""
    guard = LoopGuard(Loops())
    assert _outputs(guard, texts) == [None, None, None, "near_duplicate"]
    assert guard.verdicts[0].steps == (1, 2, 3, 4)


def test_long_output_may_change_one_word_in_fifty_and_stay_a_near_copy() -> None:
    """A 150-word output with 3 words swapped per step is still a near-copy."""
    base = [f"w{i}" for i in range(150)]
    texts = []
    for step in range(4):
        words = list(base)
        for slot in (10, 70, 130):
            words[slot] = f"swap{step}x{slot}"
        texts.append(" ".join(words))
    assert _outputs(LoopGuard(Loops()), texts) == [None, None, None, "near_duplicate"]


def test_long_output_changing_more_than_one_word_in_fifty_is_new() -> None:
    """Four changed words in a 150-word output are new content, not a near-copy."""
    base = [f"w{i}" for i in range(150)]
    texts = []
    for step in range(4):
        words = list(base)
        for slot in (10, 50, 90, 130):
            words[slot] = f"swap{step}x{slot}"
        texts.append(" ".join(words))
    assert _outputs(LoopGuard(Loops()), texts) == [None] * 4


def test_words_per_change_none_leaves_it_to_the_similarity() -> None:
    """near_duplicate_words_per_change=None judges by similarity alone."""
    guard = LoopGuard(Loops(near_duplicate_words_per_change=None))
    rules = _outputs(guard, _page_summaries())
    assert rules == [None, None, None, "near_duplicate", None, None]


def test_words_per_change_must_be_positive() -> None:
    """near_duplicate_words_per_change=0 is refused with the accepted forms."""
    with pytest.raises(
        PolicyError, match=r"near_duplicate_words_per_change.*one word in this many"
    ):
        Loops(near_duplicate_words_per_change=0)


DRAFT = "Draft: the quick brown fox jumps over the lazy dog near the river bank."
CRITIQUE = "Critique: the draft is too vague, add concrete detail about fox and dog."


def test_two_agents_taking_turns_without_progress_are_stopped() -> None:
    """Writer, critic, writer ...: each output repeats the one two back."""
    guard = LoopGuard(Loops())
    texts = [DRAFT, CRITIQUE] * 3
    assert _outputs(guard, texts) == [None, None, None, None, "near_duplicate", None]
    (verdict,) = guard.verdicts
    assert verdict.steps == (1, 2, 3, 4, 5)
    assert verdict.evidence == (CRITIQUE, DRAFT)
    assert "output 2 before" in verdict.message


def test_cycle_of_three_outputs_is_stopped() -> None:
    """Plan, act, review, plan ... with the same three texts is a loop."""
    plan = "Plan: read the config file, then change the timeout, then run tests."
    act = "Acting now: opening the configuration file to change the timeout value."
    review = "Review: the timeout value is still wrong and the tests keep failing."
    rules = _outputs(LoopGuard(Loops()), [plan, act, review] * 2)
    assert rules == [None] * 5 + ["near_duplicate"]


def test_a_cycle_of_outputs_must_come_back_in_full() -> None:
    """Run, edit, verify, run, edit: part of a lap again is not yet a cycle."""
    run = "THOUGHT: Now I will run the reproduction script again to check it."
    verify = "THOUGHT: Now I will verify the change in the axes module by reading it."
    edits = [
        f"THOUGHT: `cla()` is called during `__init__` in {where}, so the fix "
        f"belongs there; editing {where} at line {line} now."
        for where, line in (("Subplot", 33), ("Axes", 1250), ("Figure", 870))
    ]
    loops = Loops(max_near_duplicate_outputs=1)
    texts = [run, edits[0], verify, run, edits[0], edits[1], run, edits[2]]
    assert _outputs(LoopGuard(loops), texts) == [None] * 8
    texts = [run, edits[0], verify, run, edits[0], verify]
    assert _outputs(LoopGuard(loops), texts) == [None] * 5 + ["near_duplicate"]


def test_turn_taking_with_new_content_each_turn_passes() -> None:
    """A planner and an executor whose outputs carry new content are no loop."""
    texts = []
    for page, count in enumerate([12, 9, 11, 10, 7, 13], 1):
        texts.append(
            f"Plan: fetch page {page} of the orders report and count the late "
            f"orders, expecting about {count * 3} rows in total on that page."
        )
        texts.append(
            f"Result: page {page} has {count} late orders out of {count * 3 + page}"
            f" rows; the oldest is from week {page + 20} of this year."
        )
    assert _outputs(LoopGuard(Loops()), texts) == [None] * len(texts)


def test_cycles_longer_than_max_cycle_period_are_left_to_other_rules() -> None:
    """Outputs are compared with at most max_cycle_period outputs back."""
    editor = "Editor: please keep both versions until the author answers my note."
    texts = [DRAFT, CRITIQUE, editor] * 3
    assert _outputs(LoopGuard(Loops(max_cycle_period=2)), texts) == [None] * 9
    assert "near_duplicate" in _outputs(LoopGuard(Loops()), texts)


def test_turn_taking_in_record_mode_needs_a_fresh_run() -> None:
    """After a verdict every lag starts over, so one loop is not flagged twice."""
    guard = LoopGuard(Loops(action="record"))
    rules = _outputs(guard, [DRAFT, CRITIQUE] * 4)
    assert rules == [None] * 4 + ["near_duplicate", None, None, "near_duplicate"]


REFUSAL = "I'm sorry, but I can't assist with that request, I am afraid."


def test_a_short_output_between_near_copies_ends_their_run() -> None:
    """A run of near-copies is made of outputs in a row: a short answer
    between them (each a new label) is an output and ends it."""
    guard = LoopGuard(Loops())
    verdicts = []
    for step, label in enumerate(["billing", "shipping", "refund", "login"] * 2):
        verdicts.append(guard.on_model_output(REFUSAL, step=step))
        verdicts.append(guard.on_model_output(label, step=step, short=True))
    assert verdicts == [None] * 16


def test_a_short_output_the_cycle_repeats_keeps_its_run() -> None:
    """A writer repeating himself and a critic answering the same short
    'Needs more detail.' each time is stopped on the writer's 4th draft."""
    guard = LoopGuard(Loops())
    rules = []
    for step in range(1, 8):
        if step % 2:
            verdict = guard.on_model_output(REFUSAL, step=step)
        else:
            verdict = guard.on_model_output("Needs more detail.", step=step, short=True)
        rules.append(verdict and verdict.rule)
    assert rules == [None] * 6 + ["near_duplicate"]
    assert verdict is not None
    assert verdict.steps == (1, 2, 3, 4, 5, 6, 7)
    assert "the short outputs between them came back the same" in verdict.message


def test_outputs_without_words_are_skipped() -> None:
    """Empty outputs (tool calls only) are left to the tool rules."""
    guard = LoopGuard(Loops())
    assert [guard.on_model_output("", step=s) for s in range(6)] == [None] * 6


def test_node_with_same_state_repeating_fires() -> None:
    """The same node reached again and again with the same state is a loop."""
    guard = LoopGuard(Loops())
    verdicts = [guard.on_node("search", "state-1", step=s) for s in range(1, 5)]
    assert [v.rule if v else None for v in verdicts] == [None, None, None, "repeat"]


def test_node_with_changing_state_is_not_a_loop() -> None:
    """Visiting the same node with new state each time is progress."""
    guard = LoopGuard(Loops())
    verdicts = [guard.on_node("agent", f"state-{s}", step=s) for s in range(20)]
    assert verdicts == [None] * 20


def test_node_without_state_digest_is_not_judged() -> None:
    """A node visit with no state digest is counted for nothing."""
    guard = LoopGuard(Loops())
    assert [guard.on_node("agent", None, step=s) for s in range(10)] == [None] * 10


def test_model_call_ceiling_fires_once_when_passed() -> None:
    """max_model_calls=3 gives one verdict, at the fourth call."""
    guard = LoopGuard(Loops(max_model_calls=3))
    verdicts = [guard.check_ceilings(model_calls=n) for n in range(1, 7)]
    rules = [v.rule if v else None for v in verdicts]
    assert rules == [None, None, None, "max_model_calls", None, None]


def test_wall_time_ceiling_names_its_setting() -> None:
    """A task past max_wall_s gets a verdict pointing at max_wall_s."""
    guard = LoopGuard(Loops(max_wall_s=60))
    verdict = guard.check_ceilings(elapsed_s=61.5)
    assert verdict is not None
    assert (verdict.setting, verdict.limit) == ("max_wall_s", 60)


def test_escalate_happens_once_then_stops() -> None:
    """With action='escalate' the first verdict escalates and the next stops."""
    guard = LoopGuard(Loops(action="escalate"))
    verdicts = _feed_tool(guard, [("ls", "a")] * 7)
    assert [v.action for v in verdicts] == ["escalate", "stop"]


def test_record_mode_needs_a_fresh_streak_after_each_verdict() -> None:
    """In record mode a verdict resets the streak, so it does not recur each step."""
    guard = LoopGuard(Loops(action="record", max_stale_steps=None))
    verdicts = _feed_tool(guard, [("ls", "a")] * 10)
    assert [(v.action, v.steps[-1]) for v in verdicts] == [
        ("record", 4),
        ("record", 7),
        ("record", 10),
    ]


def test_verdicts_are_kept_on_the_guard() -> None:
    """The guard lists every verdict of its task."""
    guard = LoopGuard(Loops(action="record"))
    given = _feed_tool(guard, [("ls", "a")] * 4)
    assert guard.verdicts == tuple(given)


def test_hint_quotes_the_verdict() -> None:
    """The retry hint repeats what the guard saw."""
    guard = LoopGuard(Loops())
    (verdict,) = _feed_tool(guard, [("ls", "a")] * 4)
    assert verdict.message in verdict.hint


def test_loop_detected_is_a_recursion_error_and_a_halt() -> None:
    """LoopDetected is caught by RecursionError and GovernorHalt handlers."""
    assert issubclass(LoopDetected, RecursionError)
    assert issubclass(LoopDetected, GovernorHalt)


def test_error_carries_evidence_steps_and_spend() -> None:
    """The error built from a verdict carries rule, evidence, steps and spend."""
    guard = LoopGuard(Loops())
    (verdict,) = _feed_tool(guard, [("ls", "a")] * 4)
    error = verdict.to_error(task_id="t-1", spent_usd=Decimal("0.42"))
    assert error.to_dict() == {
        "code": "loop_detected",
        "message": str(error),
        "task_id": "t-1",
        "spent_usd": "0.42",
        "spent_tokens": 0,
        "rule": "repeat",
        "evidence": ['bash({"command":"ls"}) -> a'],
        "steps": [1, 2, 3, 4],
        "setting": "max_repeats",
        "limit": 2,
        "tools": ["bash"],
    }


def test_error_message_names_the_setting_to_change() -> None:
    """The message says which Loops field to raise and what was spent."""
    guard = LoopGuard(Loops())
    (verdict,) = _feed_tool(guard, [("ls", "a")] * 4)
    message = str(verdict.to_error(spent_usd=Decimal("1.5")))
    assert "Loops.max_repeats (now 2)" in message
    assert "$1.5" in message


def test_a_repeated_tool_call_is_offered_for_exempt_tools_first() -> None:
    """Raising the setting that fired alone lets the next rule stop the same
    calls, so the message names the tool for exempt_tools and the others."""
    guard = LoopGuard(Loops())
    (verdict,) = _feed_tool(guard, [("ls", "a")] * 4)
    message = str(verdict.to_error())
    assert verdict.tools == ("bash",)
    assert (
        "list the tool in Loops.exempt_tools (exempt_tools=('bash',)). Raising "
        "Loops.max_repeats (now 2) alone is not enough: max_stale_steps, "
        "max_repeated_turns and max_same_result_repeats also bound a repeated "
        "tool call. Or set Loops(action='record') to only flag loops."
    ) in message


def test_bad_setting_names_accepted_forms() -> None:
    """An invalid Loops value is a PolicyError that states the accepted forms."""
    with pytest.raises(PolicyError, match=r"near_duplicate_similarity.*\(0, 1\]"):
        Loops(near_duplicate_similarity=1.5)


def test_loops_settings_are_frozen() -> None:
    """A Loops policy part cannot be changed after it is built."""
    loops = Loops()
    with pytest.raises(ValueError, match="frozen"):
        loops.max_repeats = 5  # type: ignore[misc]


def test_real_resolved_run_is_not_flagged() -> None:
    """A real successful SWE-bench run from the sample passes the defaults."""
    run = next(r for r in read_trajectories(SAMPLE) if r.id == "django__django-11163")
    guard = LoopGuard(Loops())
    verdicts = []
    for step, call in enumerate(run.calls, 1):
        verdicts.append(guard.on_model_output(call.output, step=step))
        for tool_call in call.tool_calls:
            result = call.results_for(tool_call)
            verdicts.append(
                guard.on_tool_call(tool_call.name, tool_call.args, result, step=step)
            )
    assert [v for v in verdicts if v is not None] == []


def test_a_node_cycle_is_not_told_to_exempt_a_tool() -> None:
    """The advice for a state cycle names the nodes to exempt, not a tool."""
    from governor.loops import LoopDetected

    error = LoopDetected(
        rule="cycle",
        detail="a cycle of 2 came back",
        evidence=["agent [state 50fc35d4]", "tools [state 50fc35d4]"],
        setting="max_cycle_repeats",
        limit=1,
    )
    assert "list the tool" not in str(error)
    assert "If a node is meant to come back to the same state" in str(error)
    assert "exempt_tools=('agent', 'tools')" in str(error)
