"""Acceptance checks and the pre-call complexity estimate."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import pytest

from governor._errors import ConfigError
from governor.cascade import (
    Agreement,
    AllOf,
    Answer,
    AnyOf,
    CheckResult,
    Judge,
    LogprobThreshold,
    Matches,
    NonEmpty,
    NotRefusal,
    PythonParses,
    ToolCall,
    UserCheck,
    ValidJson,
    build_check,
    from_labels,
    heuristic_complexity,
    normalise,
    start_tier,
)
from governor.cascade._datasets import load_routerbench
from governor.cascade._replay import ReplayRow
from governor.policies._cascade import CallableCheck, JudgeCheck

SAMPLE = Path(__file__).parent / "data" / "routerbench_sample.csv.gz"
MIXTRAL = "mistralai/mixtral-8x7b-chat"
YI = "zero-one-ai/Yi-34B-Chat"


@pytest.fixture(scope="module")
def rows() -> dict[str, ReplayRow]:
    """The RouterBench sample, keyed by row key."""
    return {row.key: row for row in load_routerbench(SAMPLE)}


def _recorded(rows: dict[str, ReplayRow], key: str, model: str) -> Answer:
    return Answer(rows[key].outcomes[model].response, model)


def test_non_empty_fails_whitespace() -> None:
    """An answer of only whitespace fails the non-empty check."""
    result = NonEmpty()(Answer(" \n\t"), [])
    assert result == CheckResult("non_empty", False, "answer has 0 characters, needs 1")


def test_refusal_is_rejected() -> None:
    """A typical refusal opening fails the not-refusal check."""
    result = NotRefusal()(Answer("I'm sorry, but I can't help with that request."), [])
    assert result.passed is False
    assert "refusal" in result.reason


def test_apology_without_refusal_passes() -> None:
    """An apology that goes on to answer is not a refusal."""
    result = NotRefusal()(Answer("Sorry for the wait: the answer is 42."), [])
    assert result.passed is True


def test_extra_refusal_pattern_is_used() -> None:
    """A user pattern adds to the built-in refusal phrases."""
    check = NotRefusal(extra_patterns=(r"^nope\b",))
    assert check(Answer("Nope, not doing that."), []).passed is False


def test_fenced_json_passes() -> None:
    """JSON inside a ```json fence is valid JSON."""
    answer = Answer('Here you go:\n```json\n{"a": 1}\n```')
    assert ValidJson()(answer, []).passed is True


def test_invalid_json_fails_with_parser_reason() -> None:
    """Text that is not JSON fails and says where parsing stopped."""
    result = ValidJson()(Answer("{'a': 1}"), [])
    assert result.passed is False
    assert result.reason.startswith("not valid JSON: Expecting property name")


def test_schema_reports_missing_required_property() -> None:
    """An object missing a required property fails with its path."""
    schema = {"type": "object", "required": ["name"], "properties": {}}
    result = ValidJson(schema)(Answer('{"age": 3}'), [])
    assert result.reason == "schema: $: missing required 'name'"


def test_schema_checks_nested_types_and_extra_properties() -> None:
    """Nested type errors and forbidden extra properties are both reported."""
    schema = {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"type": "string"}}},
        "additionalProperties": False,
    }
    result = ValidJson(schema)(Answer('{"tags": ["a", 2], "x": 1}'), [])
    assert result.reason == "schema: $.tags[1]: expected string, got int (+1 more)"


def test_schema_accepts_a_fitting_value() -> None:
    """A value meeting enum, bounds and pattern passes the schema."""
    schema = {
        "type": "object",
        "properties": {
            "grade": {"type": "integer", "minimum": 1, "maximum": 10},
            "label": {"enum": ["good", "bad"]},
            "id": {"type": "string", "pattern": "^[a-z]+-[0-9]+$"},
        },
        "required": ["grade", "label", "id"],
    }
    answer = Answer('{"grade": 7, "label": "good", "id": "q-12"}')
    assert ValidJson(schema)(answer, []).passed is True


def test_unsupported_schema_keyword_is_refused_up_front() -> None:
    """A schema keyword outside the subset is refused when the check is built."""
    with pytest.raises(ConfigError, match=r"\['\$ref'\].*not supported"):
        ValidJson({"$ref": "#/definitions/x"})


def test_recorded_letters_agree_after_normalising(rows: dict[str, ReplayRow]) -> None:
    """Mixtral's recorded 'D\\n' and Yi's recorded 'D' agree as choices."""
    mixtral = _recorded(rows, "routerbench_sample:1417", MIXTRAL)
    yi = _recorded(rows, "routerbench_sample:1417", YI)
    result = Agreement(normaliser="choice")(yi, [mixtral])
    assert result == CheckResult(
        "agreement", True, "1 of 1 other samples agree on 'D'", 1.0
    )


def test_recorded_letters_disagree(rows: dict[str, ReplayRow]) -> None:
    """Recorded answers 'D' and 'C' on one ARC row do not agree."""
    mixtral = _recorded(rows, "routerbench_sample:507", MIXTRAL)
    yi = _recorded(rows, "routerbench_sample:507", YI)
    result = Agreement(normaliser="choice")(yi, [mixtral])
    assert (result.passed, result.score) == (False, 0.0)


def test_agreement_counts_the_answers_own_samples() -> None:
    """Extra choices of one call count as samples (a tier called with n > 1)."""
    answer = Answer("B", samples=("B", "(B)", "A"))
    result = Agreement(min_agreeing=2, normaliser="choice")(answer, [])
    assert (result.passed, result.score) == (True, 2.0)


def test_agreement_below_minimum_says_what_it_needs() -> None:
    """One agreeing sample of two required fails and says it needs two."""
    result = Agreement(min_agreeing=2, normaliser="choice")(
        Answer("A"), [Answer("A"), Answer("C")]
    )
    assert result.reason == "1 of 2 other samples agree on 'A', needs 2"


def test_number_normaliser_reads_final_answers() -> None:
    """'#### 1,200' and 'The answer is 1200.' are the same number."""
    assert normalise("so\n#### 1,200", "number") == "1200"
    assert normalise("The answer is 1200.", "number") == "1200"


def test_choice_normaliser_ignores_prose_starting_with_a() -> None:
    """A sentence that starts with the word 'A' is not choice A."""
    assert normalise("A function that sorts a list", "choice") is None


def test_judge_scores_below_threshold_fail() -> None:
    """A judge score under the minimum fails and keeps the score."""
    check = Judge(lambda answer, history: 6.5, min_score=7.0)
    result = check(Answer("text"), [])
    assert result == CheckResult("judge", False, "judge scored 6.5, below 7", 6.5)


def test_logprob_mean_below_threshold_fails() -> None:
    """A mean token logprob under the threshold fails."""
    answer = Answer("x", token_logprobs=(-0.1, -0.9))
    result = LogprobThreshold(min_mean_logprob=-0.3)(answer, [])
    assert (result.passed, result.score) == (False, -0.5)


def test_missing_logprobs_follow_the_setting() -> None:
    """Without logprobs the check passes by default and fails when told to."""
    answer = Answer("x")
    assert LogprobThreshold(-0.3)(answer, []).passed is True
    assert LogprobThreshold(-0.3, if_missing=False)(answer, []).passed is False


def test_forbidden_pattern_fails_when_found() -> None:
    """A pattern that must not match fails when it is found."""
    check = Matches(r"TBD", must_match=False)
    assert check(Answer("done, TBD tests"), []).passed is False


def test_recorded_code_answer_parses(rows: dict[str, ReplayRow]) -> None:
    """A recorded MBPP answer with [PYTHON] tags parses and defines a function."""
    answer = _recorded(
        rows, "routerbench_sample:21111", "meta/code-llama-instruct-34b-chat"
    )
    assert PythonParses()(answer, []) == CheckResult("python", True, "code parses")


def test_recorded_cpp_answer_fails_the_python_check(
    rows: dict[str, ReplayRow],
) -> None:
    """Yi's recorded C++ answer to an MBPP prompt does not parse as Python."""
    answer = _recorded(rows, "routerbench_sample:21050", YI)
    result = PythonParses()(answer, [])
    assert result.passed is False
    assert result.reason.startswith("code does not parse")


def test_letter_answer_defines_no_function() -> None:
    """A bare letter parses as Python but defines no function."""
    result = PythonParses()(Answer("B"), [])
    assert result.reason == "code defines no function"


def test_user_callable_returning_bool_is_wrapped() -> None:
    """A user check returning False becomes a failed result."""
    check = UserCheck(lambda answer, history: "42" in answer.text, name="has-42")
    assert check(Answer("41"), []) == CheckResult(
        "has-42", False, "user check returned False"
    )


def test_any_of_passes_on_the_second_check() -> None:
    """Any-of passes when a later inner check passes, naming it."""
    check = AnyOf((PythonParses(), Agreement(normaliser="choice")))
    result = check(Answer("C"), [Answer("C")])
    assert (result.passed, result.reason) == (
        True,
        "agreement: 1 of 1 other samples agree on 'C'",
    )


def test_all_of_stops_at_the_first_failure() -> None:
    """All-of does not run checks after the first failing one."""
    ran: list[str] = []

    def later(answer: Answer, history: object) -> bool:
        ran.append("later")
        return True

    results = AllOf((NonEmpty(), UserCheck(later))).results(Answer(""), [])
    assert ([r.check for r in results], ran) == (["non_empty"], [])


def test_callable_check_resolves_an_import_path() -> None:
    """A callable check given as 'module:attribute' is imported."""
    check = build_check(CallableCheck(ref="governor.cascade._builtin:arithmetic_check"))
    result = check(Answer("2 * 3 = <<2*3=7>>7"), [])
    assert result.reason == "step 2*3=7 is wrong"


def test_unknown_judge_name_is_a_config_error() -> None:
    """A judge name neither registered nor importable is refused."""
    with pytest.raises(ConfigError, match="neither registered"):
        build_check(JudgeCheck(judge="gpt-judge", min_score=5), {})


def test_heuristic_scores_a_coding_request_above_a_greeting() -> None:
    """Known estimates: a coding request 0.4235, a greeting 0.011."""
    code = "Write a python function to count inversions in an array."
    assert heuristic_complexity(code) == 0.4235
    assert heuristic_complexity("hi") == 0.011


def test_start_tier_counts_reached_thresholds() -> None:
    """A complexity reaching two of three thresholds starts at tier index 2."""
    assert start_tier(0.5, (0.2, 0.5, 0.8)) == 2


def test_label_classifier_becomes_an_estimator() -> None:
    """A small model's label maps to its complexity; unknown labels fail."""
    estimate = from_labels(lambda text: " Hard\n", {"easy": 0.1, "hard": 0.9})
    assert estimate("prove it") == 0.9
    with pytest.raises(ConfigError, match="returned label 'medium'"):
        from_labels(lambda text: "medium", {"easy": 0.1})("x")


@pytest.mark.parametrize(
    ("schema", "text"),
    [
        ({"enum": [1]}, "true"),
        ({"const": 0}, "false"),
        ({"enum": [[1]]}, "[true]"),
        ({"const": {"ok": 1}}, '{"ok": true}'),
    ],
)
def test_json_true_is_not_one(schema: dict[str, object], text: str) -> None:
    """JSON equality: true and 1 differ, though Python says True == 1."""
    assert ValidJson(schema)(Answer(text), []).passed is False


@pytest.mark.parametrize(
    ("schema", "where"),
    [
        ({"enum": "abc"}, "$.enum"),
        ({"required": "answer"}, "$.required"),
        ({"type": "array", "items": [{"type": "string"}]}, "$.items"),
        ({"minimum": "3"}, "$.minimum"),
        ({"pattern": "("}, "$.pattern"),
        ({"properties": {"a": True}}, "$.properties.a"),
    ],
)
def test_a_schema_the_check_cannot_apply_is_refused_when_built(
    schema: dict[str, object], where: str
) -> None:
    """Bad keyword values fail at policy build, not after a paid call."""
    with pytest.raises(ConfigError, match=f"JSON schema {re.escape(where)} must be"):
        ValidJson(schema)


def test_a_match_check_with_a_broken_pattern_is_refused_when_built() -> None:
    """MatchCheck(pattern="(") fails at policy build with the regex error."""
    from governor import PolicyError
    from governor.policies._cascade import MatchCheck

    with pytest.raises(PolicyError, match="not a valid regular expression"):
        MatchCheck(pattern="(")


def test_a_policy_json_check_with_an_unsupported_keyword_fails_when_built() -> None:
    """Declared in a policy, the same schema is refused before any call."""
    from governor import Cascade, PolicyError

    with pytest.raises(PolicyError, match=r"\['\$ref'\].*not supported"):
        Cascade(
            tiers=["gpt-4o"], checks=[{"kind": "json", "json_schema": {"$ref": "x"}}]
        )


TOOL_CALL = ToolCall("get_weather", '{"city": "Paris"}')


def test_an_answer_that_calls_tools_is_not_empty_nor_a_refusal() -> None:
    """A tool call with no text passes non_empty and not_refusal."""
    answer = Answer("", tool_calls=(TOOL_CALL,))
    results = [NonEmpty()(answer, []), NotRefusal()(answer, [])]
    assert [(r.passed, r.reason) for r in results] == [
        (True, "calls 1 tool(s): get_weather"),
        (True, "calls 1 tool(s): get_weather"),
    ]


def test_the_json_check_validates_tool_call_arguments() -> None:
    """With tool calls, the json check parses each call's arguments (and schema)."""
    schema = {"type": "object", "required": ["city"]}
    good = Answer("Let me look.", tool_calls=(TOOL_CALL,))
    broken = Answer("", tool_calls=(TOOL_CALL, ToolCall("search", "{'q': 1}")))
    missing = Answer("", tool_calls=(ToolCall("get_weather", "{}"),))
    assert ValidJson(schema)(good, []).passed is True
    assert ValidJson()(broken, []).reason.startswith(
        "tool call 'search' arguments: not valid JSON"
    )
    assert ValidJson(schema)(missing, []).reason.startswith(
        "tool call 'get_weather' arguments: schema:"
    )


@pytest.mark.parametrize(
    "value",
    ["False", (False, "wrong"), {"passed": False}, None, float("nan"), 0],
    ids=["str", "tuple", "dict", "none", "nan", "int"],
)
def test_a_user_check_returning_neither_bool_nor_result_is_refused(
    value: object,
) -> None:
    """Only True, False or a CheckResult count; anything else names the check."""
    check = UserCheck(lambda answer, history: value, name="callable:mine")
    kind = type(value).__name__
    with pytest.raises(ConfigError, match=rf"'callable:mine' returned {kind} .*True"):
        check(Answer("x"), [])


def test_numpy_bools_are_read_as_bools() -> None:
    """A check built on NumPy returns numpy.bool_: read as True or False."""
    import numpy as np

    for value, passed in ((np.float32(2.0) > 1.0, True), (np.bool_(False), False)):
        check = UserCheck(lambda answer, history, v=value: v, name="callable:np")
        assert check(Answer("x"), []).passed is passed


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), None, "8", True],
    ids=["nan", "inf", "none", "str", "bool"],
)
def test_a_judge_returning_no_finite_number_is_refused(value: object) -> None:
    """A judge's score must be a finite number; nothing is guessed."""

    def judge(answer: Answer, history: object) -> Any:
        return value

    check = Judge(judge, min_score=7.0, name="judge:j")
    with pytest.raises(ConfigError, match=r"'judge:j' returned .*finite number"):
        check(Answer("x"), [])


def test_build_check_takes_the_dict_form_a_policy_takes() -> None:
    """{"kind": ...} builds the same check as the declaration object."""
    from governor.cascade import NonEmptyCheck, build_check

    built = build_check({"kind": "non_empty", "min_chars": 3})
    assert built == build_check(NonEmptyCheck(min_chars=3))
    assert built(Answer("ab", "m"), []).passed is False


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        ({"kind": "nope"}, "'nope'"),
        ({"min_chars": 3}, "'kind'"),
        ({"kind": "non_empty", "min_chars": "x"}, "min_chars"),
    ],
)
def test_a_bad_check_dict_is_refused_naming_what_is_wrong(
    spec: dict[str, Any], names: str
) -> None:
    from governor.cascade import build_check

    with pytest.raises(ConfigError, match="invalid check declaration") as info:
        build_check(spec)
    assert names in str(info.value)
    assert "non_empty" in str(info.value)


@pytest.mark.parametrize(
    "text",
    ["NaN", '{"score": NaN}', "Infinity", "[1, -Infinity]", '{"a": {"b": [NaN]}}'],
)
def test_json_with_nan_or_infinity_is_not_json(text: str) -> None:
    """RFC 8259 has no NaN or Infinity, though Python's json.loads reads them."""
    result = ValidJson()(Answer(text), [])
    assert result.passed is False
    assert "RFC 8259 has no NaN or Infinity" in result.reason


def test_tool_call_arguments_with_nan_are_not_json() -> None:
    """A tool call whose arguments hold NaN fails the json check too."""
    answer = Answer("", tool_calls=(ToolCall("f", '{"x": NaN}'),))
    result = ValidJson()(answer, [])
    assert (result.passed, result.reason.startswith("tool call 'f' arguments")) == (
        False,
        True,
    )


def test_the_json_normaliser_gives_nan_no_json_form() -> None:
    """Agreement on JSON compares only real JSON: NaN has no json form."""
    assert normalise('{"a": NaN}', "json") is None
    assert normalise('{"a": 1}', "json") == '{"a":1}'


async def _async_check(answer: Answer, history: object) -> bool:
    return True


async def _async_judge(answer: Answer, history: object) -> float:
    return 9.0


class _AsyncCallable:
    async def __call__(self, answer: Answer, history: object) -> bool:
        return True


@pytest.mark.parametrize(
    "fn",
    [_async_check, _AsyncCallable(), functools.partial(_async_check)],
    ids=["async def", "async __call__", "partial"],
)
def test_an_async_callable_check_is_refused_when_built(fn: Any) -> None:
    """Checks run synchronously, in acascade too: an async one is refused early."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ConfigError) as caught:
            build_check(CallableCheck(ref="mine"), {"mine": fn})
    message = str(caught.value)
    assert "check 'callable:mine' refers to" in message
    assert "an async function" in message
    assert "called synchronously, in acascade() and CascadeRunner.arun too" in message
    assert "Give a plain def that returns True, False or a CheckResult" in message


def test_an_async_judge_is_refused_when_built() -> None:
    """A judge must return its score; an async one is refused with the reason."""
    with pytest.raises(ConfigError, match="judge check 'judge:mine' refers to"):
        build_check(JudgeCheck(judge="mine", min_score=7), {"mine": _async_judge})


def test_an_async_label_classifier_is_refused() -> None:
    """from_labels needs the label now, not a coroutine."""

    async def classify(text: str) -> str:
        return "easy"

    with pytest.raises(ConfigError, match="from_labels' classifier"):
        from_labels(classify, {"easy": 0.1})


def test_a_check_returning_a_coroutine_is_refused_without_a_warning() -> None:
    """A plain def returning a coroutine: refused, and the coroutine is closed."""
    import gc
    import warnings

    check = UserCheck(lambda answer, history: _async_check(answer, history), "wrap")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ConfigError, match="which would have to be awaited"):
            check(Answer("x"), [])
        gc.collect()
    assert [str(w.message) for w in seen] == []
