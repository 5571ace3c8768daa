"""A malformed usage's total is not charged, and warnings name what was sent.

A provider that sends a negative count in its usage is not taken at its word
for the ``total_tokens`` beside it: the call is charged the usage's
well-formed counts and a local count of a side they lack. The warning about
output past the ceiling names ``max_tokens`` and ``n`` as sent, and does not
call a figure taken from a provider's total a local count.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

import litellm
import pytest

from conftest import SpanCapture
from governor import Budget, Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM
from governor.telemetry import attributes as attr
from governor.testing import StubBehaviour, StubServer

MODEL = "openai/gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "hi"}]
ANSWER = "hello world"
# gpt-4o-mini: input 0.15, output 0.6 per million tokens.
IN_PRICE, OUT_PRICE = Decimal("0.15e-6"), Decimal("0.6e-6")
STREAMS = pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])


def prompt_count() -> int:
    return int(litellm.token_counter(model=MODEL, messages=MESSAGES))


def answer_count(text: str = ANSWER) -> int:
    return int(litellm.token_counter(model=MODEL, text=text))


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[StubServer]:
    monkeypatch.setattr(litellm, "suppress_debug_info", True)
    with StubServer() as server:
        yield server


def call(gov: Governor, stub: StubServer, stream: bool, **extra: Any) -> str:
    """One governed call to the stub, read to its end; the answer's text."""
    response = GovernedLiteLLM(gov).completion(
        model=MODEL,
        messages=MESSAGES,
        api_base=stub.base_url + "/v1",
        api_key="sk-test",
        max_retries=0,
        stream=stream,
        **{"max_tokens": 100, **extra},
    )
    if not stream:
        return str(response.choices[0].message.content)
    return "".join(c.choices[0].delta.content or "" for c in response if c.choices)


MALFORMED: list[tuple[str, Mapping[str, Any], int | None, int | None]] = [
    # (case, usage sent, prompt tokens charged, completion tokens charged);
    # None means counted locally.
    (
        "negative prompt, huge total",
        {"prompt_tokens": -1, "completion_tokens": 5, "total_tokens": 10**9},
        None,
        5,
    ),
    (
        "negative cached tokens",
        {
            "prompt_tokens": 1000,
            "completion_tokens": 5,
            "total_tokens": 1005,
            "prompt_tokens_details": {"cached_tokens": -1},
        },
        1000,
        5,
    ),
    (
        "both sides negative, huge total",
        {"prompt_tokens": -5, "completion_tokens": -100, "total_tokens": 10**9},
        None,
        None,
    ),
]


@STREAMS
@pytest.mark.parametrize(("case", "usage", "prompt", "completion"), MALFORMED)
def test_a_malformed_usage_is_charged_its_well_formed_counts_not_its_total(
    stub: StubServer,
    capture: SpanCapture,
    stream: bool,
    case: str,
    usage: Mapping[str, Any],
    prompt: int | None,
    completion: int | None,
) -> None:
    """The well-formed sides as reported, a local count for the others, and
    no total: estimated, and far inside a $5 budget."""
    stub.set_behaviour("gpt-4o-mini", StubBehaviour(answer=ANSWER, usage=usage))
    gov = Governor(
        Policy(budgets=[Budget(max_usd="5")]), tracer_provider=capture.provider
    )
    with gov.task() as task:
        text = call(gov, stub, stream)
    want_in = prompt_count() if prompt is None else prompt
    want_out = answer_count() if completion is None else completion
    report = task.report()
    (span,) = capture.calls()
    assert text == ANSWER
    assert (report.input_tokens, report.output_tokens) == (want_in, want_out)
    assert report.cost_usd == want_in * IN_PRICE + want_out * OUT_PRICE
    assert span.attributes[attr.CALL_COST_ESTIMATED] is True


def test_the_exact_figures_of_the_trial(stub: StubServer) -> None:
    """The trial's call (prompt -1, total 10**9) costs 8 in and 5 out, not
    $600; its cached_tokens -1 twin costs the provider's 1000 and 5."""
    assert (prompt_count(), answer_count()) == (8, 2)
    figures = []
    for usage in (MALFORMED[0][1], MALFORMED[1][1]):
        stub.set_behaviour("gpt-4o-mini", StubBehaviour(answer=ANSWER, usage=usage))
        gov = Governor(Policy(budgets=[Budget(max_usd="5")]))
        with gov.task() as task:
            call(gov, stub, stream=False)
        report = task.report()
        figures.append((report.input_tokens, report.output_tokens, report.cost_usd))
    assert figures == [(8, 5, Decimal("0.0000042")), (1000, 5, Decimal("0.000153"))]


@STREAMS
def test_a_total_derived_output_is_not_called_a_local_count(
    stub: StubServer, caplog: pytest.LogCaptureFixture, stream: bool
) -> None:
    """A well-formed usage of only a total is charged it (a floor), and the
    ceiling warning does not say the figure was counted locally."""
    usage = {"total_tokens": 5000}
    stub.set_behaviour("gpt-4o-mini", StubBehaviour(answer=ANSWER, usage=usage))
    gov = Governor(Policy(budgets=[Budget(max_usd="5")]))
    with caplog.at_level(logging.WARNING, logger="governor"), gov.task() as task:
        call(gov, stub, stream, max_tokens=50)
    out = 5000 - prompt_count()
    report = task.report()
    assert (report.input_tokens, report.output_tokens) == (prompt_count(), out)
    assert report.cost_usd == prompt_count() * IN_PRICE + out * OUT_PRICE
    (warned,) = [r.message for r in caplog.records if "max_tokens=50" in r.message]
    assert f"is charged {out} output tokens, marked estimated" in warned
    assert "by a local count" not in warned
    assert "reported none" not in warned


@STREAMS
def test_the_ceiling_warning_names_max_tokens_and_n_as_sent(
    stub: StubServer, caplog: pytest.LogCaptureFixture, stream: bool
) -> None:
    """max_tokens=20 with n=3 is said as such, not as max_tokens=60."""
    long_answer = "lorem ipsum dolor sit amet " * 40
    behaviour = StubBehaviour(answer=long_answer, usage={})
    stub.set_behaviour("gpt-4o-mini", behaviour)
    gov = Governor(Policy(budgets=[Budget(max_usd="5")]))
    with caplog.at_level(logging.WARNING, logger="governor"), gov.task() as task:
        call(gov, stub, stream, max_tokens=20, n=3)
    counted = answer_count(long_answer)
    assert counted > 60
    assert task.report().output_tokens == counted
    (warned,) = [r.message for r in caplog.records if "output tokens" in r.message]
    assert "that was sent max_tokens=20 x n=3 is charged" in warned
    assert "max_tokens=60" not in warned


def test_a_single_choice_is_named_by_max_tokens_alone(
    stub: StubServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A provider reporting past max_tokens=50 is told of as max_tokens=50."""
    usage = {"prompt_tokens": 10, "completion_tokens": 500, "total_tokens": 510}
    stub.set_behaviour("gpt-4o-mini", StubBehaviour(answer=ANSWER, usage=usage))
    gov = Governor()
    with caplog.at_level(logging.WARNING, logger="governor"), gov.task():
        call(gov, stub, stream=False, max_tokens=50)
    (warned,) = [r.message for r in caplog.records if "output tokens" in r.message]
    assert "reported 500 output tokens" in warned
    assert "that was sent max_tokens=50; it is charged as reported" in warned
