"""Providers that answer without usable usage are still charged.

OpenAI-compatible servers and proxies often leave ``usage`` out, report
zeros, report only some fields or send nonsense. Each answer is real work the
provider may bill, so the governor counts what is missing locally (marked
estimated) instead of settling the call at zero.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

import litellm
import pytest

from conftest import SpanCapture
from governor import Budget, BudgetExceeded, Fanout, Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM
from governor.telemetry import attributes as attr
from governor.testing import StubBehaviour, StubServer

MODEL = "openai/gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Which planet is known as the red planet?"}]
ANSWER = "Mars is known as the red planet."
IN_PRICE, OUT_PRICE = Decimal("0.15e-6"), Decimal("0.6e-6")


def prompt_count() -> int:
    return int(litellm.token_counter(model=MODEL, messages=MESSAGES))


def answer_count() -> int:
    return int(litellm.token_counter(model=MODEL, text=ANSWER))


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[StubServer]:
    monkeypatch.setattr(litellm, "suppress_debug_info", True)
    with StubServer() as server:
        yield server


def request(stub: StubServer, **extra: Any) -> dict[str, Any]:
    """The test's request to the stub: 50 tokens at most, no SDK retries."""
    args: dict[str, Any] = {
        "model": MODEL,
        "messages": MESSAGES,
        "api_base": stub.base_url + "/v1",
        "api_key": "sk-test",
        "max_retries": 0,
        "max_tokens": 50,
    }
    return {**args, **extra}


def ask(llm: GovernedLiteLLM, stub: StubServer, **extra: Any) -> Any:
    return llm.completion(**request(stub, **extra))


def text_of(response: Any, stream: bool) -> str:
    if not stream:
        return str(response.choices[0].message.content)
    return "".join(c.choices[0].delta.content or "" for c in response if c.choices)


GAPS: list[tuple[str, Mapping[str, Any], int | None, int | None]] = [
    # (case, usage sent, prompt tokens expected, completion tokens expected);
    # None means counted locally.
    ("absent", {}, None, None),
    (
        "zeros",
        {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        None,
        None,
    ),
    ("prompt only", {"prompt_tokens": 40}, 40, None),
    ("negative", {"prompt_tokens": -5, "completion_tokens": -100}, None, None),
]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(("case", "usage", "prompt", "completion"), GAPS)
def test_missing_usage_is_counted_and_marked_estimated(
    stub: StubServer,
    capture: SpanCapture,
    stream: bool,
    case: str,
    usage: Mapping[str, Any],
    prompt: int | None,
    completion: int | None,
) -> None:
    """The answer arrives and the call costs the counted tokens, estimated."""
    stub.set_behaviour("gpt-4o-mini", StubBehaviour(answer=ANSWER, usage=usage))
    gov = Governor(
        Policy(budgets=[Budget(max_usd=1)]), tracer_provider=capture.provider
    )
    with gov.task() as task:
        response = ask(GovernedLiteLLM(gov), stub, stream=stream)
        text = text_of(response, stream)
    want_in = prompt_count() if prompt is None else prompt
    want_out = answer_count() if completion is None else completion
    report = task.report()
    (span,) = capture.calls()
    assert text == ANSWER
    assert (report.input_tokens, report.output_tokens) == (want_in, want_out)
    assert report.cost_usd == want_in * IN_PRICE + want_out * OUT_PRICE
    # With no usage chunk at all, LiteLLM's stream wrapper counts the tokens
    # itself and reports them as usage; the governor tells and marks it.
    assert span.attributes[attr.CALL_COST_ESTIMATED] is True


TOTALS: list[tuple[str, Mapping[str, Any], int | None, int | None]] = [
    # A total the local counts fall short of is not settled below: the gap
    # goes to the side the provider left out (to the output when both).
    ("total only", {"total_tokens": 157}, None, 157),
    ("completion and total", {"completion_tokens": 7, "total_tokens": 200}, 193, 7),
    ("prompt and total", {"prompt_tokens": 30, "total_tokens": 190}, 30, 160),
]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(("case", "usage", "prompt", "total_out"), TOTALS)
def test_a_reported_total_is_a_floor_for_the_counted_sides(
    stub: StubServer,
    stream: bool,
    case: str,
    usage: Mapping[str, Any],
    prompt: int | None,
    total_out: int | None,
) -> None:
    """Only a total (or a total and one side): the call costs the total."""
    stub.set_behaviour("gpt-4o-mini", StubBehaviour(answer=ANSWER, usage=usage))
    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))
    with gov.task() as task:
        text_of(ask(GovernedLiteLLM(gov), stub, stream=stream), stream)
    want_in = prompt_count() if prompt is None else prompt
    want_out = total_out - want_in if case == "total only" else total_out
    # the local counts alone would charge less
    assert want_in + want_out > prompt_count() + answer_count()
    report = task.report()
    assert (report.input_tokens, report.output_tokens) == (want_in, want_out)
    assert report.cost_usd == want_in * IN_PRICE + want_out * OUT_PRICE


def test_full_usage_is_taken_as_reported(stub: StubServer) -> None:
    """A provider's complete usage is used as is, not counted."""
    usage = {"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37}
    stub.set_behaviour("gpt-4o-mini", StubBehaviour(answer=ANSWER, usage=usage))
    gov = Governor()
    with gov.task() as task:
        ask(GovernedLiteLLM(gov), stub)
    assert task.report().cost_usd == 30 * IN_PRICE + 7 * OUT_PRICE


def test_a_budget_stops_a_server_that_never_reports_usage(stub: StubServer) -> None:
    """Without usage the calls still spend: a small budget refuses the third."""
    stub.set_behaviour("gpt-4o-mini", StubBehaviour(answer=ANSWER, usage={}))
    one_call = prompt_count() * IN_PRICE + answer_count() * OUT_PRICE
    # room for the settled cost of two calls plus one 50-token hold, not more
    limit = 2 * one_call + prompt_count() * IN_PRICE + 50 * OUT_PRICE - Decimal("1e-9")
    gov = Governor(Policy(budgets=[Budget(max_usd=limit)]))
    llm = GovernedLiteLLM(gov)
    sent = 0
    with gov.task() as task, pytest.raises(BudgetExceeded):
        for _ in range(10):
            ask(llm, stub)
            sent += 1
    assert sent == 2
    assert task.report().cost_usd == 2 * one_call


def test_malformed_usage_leaks_neither_the_hold_nor_the_slot(stub: StubServer) -> None:
    """Negative counts: the answer is returned, settled, and the next call runs."""
    bad = {"prompt_tokens": -5, "completion_tokens": -100, "total_tokens": -105}
    stub.set_behaviour("gpt-4o-mini", StubBehaviour(answer=ANSWER, usage=bad))
    policy = Policy(
        budgets=[Budget(max_usd=1)],
        fanout=Fanout(max_inflight_calls=1, wait_timeout_s=1),
    )
    gov = Governor(policy)
    llm = GovernedLiteLLM(gov)
    with gov.task() as task:
        first = ask(llm, stub)
        second = ask(llm, stub)
        balance = gov.ledger.balance(f"task:{task.id}")
    assert (first.choices[0].message.content, second.choices[0].message.content) == (
        ANSWER,
        ANSWER,
    )
    assert balance is not None
    assert balance.reserved_nanos == 0
    assert task.report().calls == 2


def test_async_missing_usage_is_counted(stub: StubServer) -> None:
    """acompletion counts a usage-less answer the same way."""
    stub.set_behaviour("gpt-4o-mini", StubBehaviour(answer=ANSWER, usage={}))
    gov = Governor()

    async def main() -> Any:
        with gov.task() as task:
            await GovernedLiteLLM(gov).acompletion(**request(stub))
        return task.report()

    report = asyncio.run(main())
    assert (report.input_tokens, report.output_tokens) == (
        prompt_count(),
        answer_count(),
    )


def test_output_over_the_sent_ceiling_is_charged_and_logged_once(
    stub: StubServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A provider billing past max_tokens is charged as billed, with a warning."""
    usage = {"prompt_tokens": 10, "completion_tokens": 5000, "total_tokens": 5010}
    stub.set_behaviour("gpt-4o-mini", StubBehaviour(answer=ANSWER, usage=usage))
    gov = Governor()
    with caplog.at_level(logging.WARNING, logger="governor"), gov.task() as task:
        ask(GovernedLiteLLM(gov), stub)
        ask(GovernedLiteLLM(gov), stub)
    warned = [r for r in caplog.records if "reported 5000 output tokens" in r.message]
    assert task.report().cost_usd == 2 * (10 * IN_PRICE + 5000 * OUT_PRICE)
    assert len(warned) == 1


@pytest.mark.parametrize(("given", "sent"), [(None, 1), (1, 2)])
def test_sdk_retries_are_off_unless_asked_for(
    stub: StubServer, given: int | None, sent: int
) -> None:
    """A timed-out call is sent once, not three times behind the governor."""
    stub.set_behaviour("gpt-4o-mini", StubBehaviour(answer=ANSWER, delay_s=1.5))
    args = request(stub, timeout=0.3)
    if given is None:
        del args["max_retries"]
    else:
        args["max_retries"] = given
    gov = Governor()
    with gov.task(), pytest.raises(litellm.Timeout):
        GovernedLiteLLM(gov).completion(**args)
    assert len(stub.requests) == sent


def test_absurd_usage_on_redis_is_malformed_not_lost(
    stub: StubServer, redis_url: str, redis_prefix: str
) -> None:
    """10^15 prompt tokens: the answer comes back, the hold is settled, and
    the prompt is counted locally (no call reads a billion tokens; it was
    charged some $9 million, the most a ledger counts)."""
    from governor.stores import RedisLedger

    usage = {"prompt_tokens": 10**15, "completion_tokens": 5, "total_tokens": 10**15}
    stub.set_behaviour("gpt-4o-mini", StubBehaviour(answer=ANSWER, usage=usage))
    ledger = RedisLedger(redis_url, prefix=redis_prefix)
    gov = Governor(Policy(budgets=[Budget(scope="team", max_usd="1")]), ledger=ledger)
    with gov.task(team="t") as task:
        response = ask(GovernedLiteLLM(gov), stub)
    balance = ledger.balance("team:t")
    report = task.report()
    assert response.choices[0].message.content == ANSWER
    assert balance is not None
    assert balance.reserved_nanos == 0
    assert Decimal(balance.spent_nanos) / 10**9 == report.cost_usd
    assert report.output_tokens == 5
    assert 0 < report.input_tokens < 100


# pydantic warns about the string LiteLLM was handed; in use it is a warning.
@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")
def test_usage_litellm_cannot_read_charges_the_hold(stub: StubServer) -> None:
    """usage {"prompt_tokens": "ten"} makes LiteLLM raise on an HTTP 200: the
    provider answered, so the call is charged its hold, not nothing."""
    bad = {"prompt_tokens": "ten", "completion_tokens": 5, "total_tokens": 15}
    stub.set_behaviour("gpt-4o-mini", StubBehaviour(answer=ANSWER, usage=bad))
    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))
    with gov.task() as task, pytest.raises(litellm.InternalServerError):
        ask(GovernedLiteLLM(gov), stub)
    assert task.report().cost_usd > 50 * OUT_PRICE
