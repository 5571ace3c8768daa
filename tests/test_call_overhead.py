"""The governor's own work per call: the cheap paths give the same answers.

Each test pins one saving on the path of a governed LiteLLM call (integer
pricing, no Cost or Decimal per call, usage read without a failed attribute
lookup, shared metric labels, no lease scan per reserve, ...) and checks
that the figures are the ones the long way gives.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from decimal import Decimal
from typing import Any

import litellm
import pytest

from governor import Budget, CallRequest, CallResult, ConfigError, Governor, Policy
from governor._calls import prompt_byte_bound
from governor._money import usd_to_nanos
from governor._task import Task, new_id
from governor.adapters import litellm as adapter
from governor.adapters.litellm import GovernedLiteLLM
from governor.policies import Price, PriceTier, Pricing
from governor.pricing import Rate, RateCard, Usage
from governor.pricing._ratecard import _units_of
from governor.stores import Line, MemoryLedger

MESSAGES = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "In one sentence, why is the sky blue?"},
]
REQUEST = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 64}


def _response() -> Any:
    return litellm.completion(**REQUEST, mock_response="Rayleigh scattering.")


def _usages(rng: random.Random, count: int) -> list[Usage]:
    usages = []
    for _ in range(count):
        prompt = rng.choice([0, 1, 7, 1_000, 128_000, 200_001, rng.randrange(10**7)])
        completion = rng.randrange(0, 70_000)
        read = rng.randrange(0, prompt + 1)
        write = rng.randrange(0, prompt - read + 1)
        usages.append(
            Usage(
                prompt_tokens=prompt,
                completion_tokens=completion,
                cache_read_tokens=read,
                cache_write_tokens=write,
                reasoning_tokens=rng.randrange(0, completion + 1),
            )
        )
    return usages


def _outcome(work: Any) -> object:
    """What ``work()`` returns, or the type of what it raises."""
    try:
        return work()
    except Exception as exc:
        return type(exc)


def _same_nanos(rate: Rate, usage: Usage) -> None:
    """The integer figures equal the Decimal ones rounded up to nanos."""
    prompt, output = usage.prompt_tokens, usage.completion_tokens
    assert _outcome(lambda: rate.cost_nanos(usage)) == _outcome(
        lambda: usd_to_nanos(rate.cost(usage).usd)
    ), (rate.model, usage)
    worst = _outcome(
        lambda: rate.worst_case_nanos(prompt_tokens=prompt, max_output_tokens=output)
    )
    assert worst == _outcome(
        lambda: usd_to_nanos(
            rate.worst_case_usd(prompt_tokens=prompt, max_output_tokens=output)
        )
    ), (rate.model, usage)


def test_integer_prices_match_decimal_prices_over_the_whole_price_map() -> None:
    """Every priced map entry (long-context tiers included) costs a call and
    its worst case to the same nano-dollar by either path."""
    card = RateCard()
    rng = random.Random(5)
    tiered = 0
    for key in card._entries():
        try:
            rate = card.rate(key)
        except Exception:  # unpriced entries are refused either way
            continue
        assert rate._units is not None
        tiered += bool(rate.tiers)
        for usage in _usages(rng, 3):
            _same_nanos(rate, usage)
    assert tiered > 0


def test_integer_prices_cover_overrides_finer_than_a_nano() -> None:
    """Override prices below a nano-dollar a token, with tiers, round up as
    the Decimal path does."""
    price = Price(
        input_usd_per_mtok=Decimal("0.0375"),
        output_usd_per_mtok=Decimal("0.00001"),
        cache_read_usd_per_mtok=Decimal("0.001"),
        tiers=[
            PriceTier(
                above_input_tokens=1_000,
                input_usd_per_mtok=Decimal("0.075"),
                output_usd_per_mtok=Decimal("3"),
            )
        ],
    )
    rate = RateCard(Pricing(overrides={"tiny": price})).rate("tiny")
    for usage in _usages(random.Random(9), 300):
        _same_nanos(rate, usage)
    assert rate.cost_nanos(Usage(prompt_tokens=1)) == 38  # 37.5 nanos, up
    assert rate.cost_nanos(Usage(completion_tokens=1)) == 1  # 0.01 nanos, up


def test_per_second_rates_and_bad_usage_keep_their_figures_and_errors() -> None:
    """A per-second price still adds the call's duration; usage whose parts
    exceed its wholes is still refused; a zero map price still unknown."""
    price = Price(
        input_usd_per_mtok=Decimal(1),
        output_usd_per_mtok=Decimal(2),
        usd_per_second=Decimal("0.0001"),
    )
    rate = RateCard(Pricing(overrides={"hosted": price})).rate("hosted")
    usage = Usage(prompt_tokens=10, completion_tokens=5)
    expected = usd_to_nanos(rate.cost(usage, duration_s=2.5).usd)
    assert rate.cost_nanos(usage, duration_s=2.5) == expected
    worst = rate.worst_case_usd(
        prompt_tokens=10, max_output_tokens=5, max_duration_s=30.0
    )
    assert rate.worst_case_nanos(
        prompt_tokens=10, max_output_tokens=5, max_duration_s=30.0
    ) == usd_to_nanos(worst)
    with pytest.raises(ConfigError):
        rate.cost_nanos(Usage(prompt_tokens=1, cache_read_tokens=2))
    free = dataclasses.replace(
        rate, input_per_token=Decimal(0), output_per_token=Decimal(0)
    )
    assert free._units is not None
    assert free.cost_nanos(usage) == 0


def test_a_replaced_rate_prices_at_its_new_prices() -> None:
    """The whole-number prices are the rate's own, also after replace()."""
    rate = RateCard().rate("gpt-4o-mini")
    dearer = dataclasses.replace(rate, input_per_token=rate.input_per_token * 2)
    usage = Usage(prompt_tokens=1_000)
    assert dearer.cost_nanos(usage) == 2 * rate.cost_nanos(usage)
    assert dearer == dataclasses.replace(dearer)  # the units do not compare
    assert "_units" not in repr(dearer)


def test_a_non_finite_price_falls_back_to_decimal_arithmetic() -> None:
    """A price that is not a finite number gets no whole-number form: such
    a rate is priced (and fails) as the Decimal path prices it."""
    rate = RateCard().rate("gpt-4o-mini")
    odd = dataclasses.replace(rate, reasoning_per_token=Decimal("Infinity"))
    assert _units_of(odd) is None
    for usage in _usages(random.Random(2), 20):
        _same_nanos(odd, usage)


def test_a_governed_call_builds_no_cost_and_no_decimal_worst_case(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """begin_call and end_call price in whole numbers: a call builds neither
    a Cost nor a Decimal worst case, and is charged the same."""
    gov = Governor(Policy(budgets=[Budget(max_usd=10)]))
    request = CallRequest(model="gpt-4o-mini", messages=MESSAGES, max_output_tokens=64)
    usage = Usage(prompt_tokens=25, completion_tokens=9)
    rate = gov.rate_card.rate("gpt-4o-mini")
    expected = rate.cost(usage).usd

    def refuse(*_: Any, **__: Any) -> Any:
        raise AssertionError("priced in Decimal on the call path")

    monkeypatch.setattr(Rate, "cost", refuse)
    monkeypatch.setattr(Rate, "worst_case_usd", refuse)
    with gov.task() as task:
        cost = gov.end_call(gov.begin_call(request), CallResult(usage=usage))
    assert cost == expected == task.report().cost_usd


def test_reserve_looks_through_holds_only_once_one_can_have_lapsed() -> None:
    """Holds are scanned for lapsed leases when the earliest may have run out,
    not at every reserve; a renewal to a shorter lease is still honoured."""
    now = [0.0]
    ledger = MemoryLedger(clock=lambda: now[0])
    scans = []

    class Holds(dict[str, Any]):
        def items(self) -> Any:
            scans.append(now[0])
            return super().items()

    ledger._state.holds = Holds()
    line = [Line("team:a", 10_000, None)]
    for index in range(50):
        assert ledger.reserve(f"h{index}", line, 100, 0, 60.0) is None
    assert scans == []
    assert ledger.renew("h7", 5.0)
    now[0] = 6.0
    assert ledger.reserve("late", line, 100, 0, 60.0) is None
    assert scans == [6.0]
    balance = ledger.balance("team:a")
    assert balance is not None
    assert balance.reserved_nanos == 50 * 100
    now[0] = 61.0
    assert ledger.reserve("later", line, 100, 0, 60.0) is None
    balance = ledger.balance("team:a")
    assert balance is not None
    assert balance.reserved_nanos == 2 * 100


def test_a_task_makes_its_stream_table_on_first_use() -> None:
    """A task that streams nothing (any call outside a task) builds no weak
    table; one that does counts its unread streams as before."""
    gov = Governor()
    task = Task(gov.policy, gov.policy.attribution)
    assert task._open_streams is None
    assert task.unread_streams() == 0

    class Stream:
        pass

    stream = Stream()
    task.open_streams["c1"] = stream
    assert task.unread_streams() == 1
    assert task.open_streams is task.open_streams
    del stream
    assert task.unread_streams() == 0


def test_ids_are_the_hex_of_128_random_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The id is the same text as before: 32 hex digits of the PRNG's bits."""
    import governor._task as task_module

    monkeypatch.setattr(task_module, "_RNG", random.Random(3))
    expected = random.Random(3)
    for _ in range(100):
        assert new_id() == f"{expected.getrandbits(128):032x}"


def test_a_text_prompt_is_bounded_without_looking_up_image_sizes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Image sizes are looked up only for a prompt with parts; the bound is
    the same: bytes, per-message overhead, named fields."""
    import governor._calls as calls

    def no_lookup(model: str) -> int:
        raise AssertionError("image size looked up for a text prompt")

    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "héllo"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "t"}]},
        {"role": "user", "content": "plain", "name": "bob"},
    ]
    monkeypatch.setattr(calls, "image_part_tokens", no_lookup)
    tools = '[{"id": "t"}]'
    expected = 16 + 3 * 8 + len("héllo".encode()) + len(tools) + 5 + 3 + 2
    assert prompt_byte_bound(messages, "xy") == expected


def test_outside_a_loop_the_call_site_is_found_without_an_exception(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sync call asks for the running loop, not for a task that raises."""

    def no_task(loop: Any = None) -> Any:
        raise AssertionError("asyncio.current_task() asked outside a loop")

    with monkeypatch.context() as patched:
        patched.setattr(asyncio, "current_task", no_task)
        assert adapter._here()[1] == 0

    async def inside() -> tuple[int, int]:
        return adapter._here()

    here = asyncio.run(inside())
    assert here[1] != 0


def test_usage_is_read_without_a_failed_attribute_lookup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """LiteLLM keeps ``usage`` among a response's extra fields: it is read
    there, not through ``__getattr__``, and reads the same."""
    response = _response()
    misses: list[str] = []
    kind = type(response)
    original = kind.__getattr__

    def counted(self: Any, name: str) -> Any:
        misses.append(name)
        return original(self, name)

    monkeypatch.setattr(kind, "__getattr__", counted)
    request = adapter._request(dict(REQUEST))
    result = adapter._result(response, request)
    assert misses == []
    assert result.usage == Usage(
        prompt_tokens=response.usage.prompt_tokens,
        completion_tokens=response.usage.completion_tokens,
    )
    assert result.output_text == "Rayleigh scattering."
    assert result.finish_reasons == ("stop",)


def test_an_answer_with_usage_is_not_rejoined_for_counting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The answer's text is gathered only when the provider reported no output."""
    response = _response()

    def no_join(response: Any) -> str:
        raise AssertionError("output gathered although usage was reported")

    monkeypatch.setattr(adapter, "_all_output", no_join)
    result = adapter._result(response, adapter._request(dict(REQUEST)))
    assert result.usage is not None
    assert result.usage.completion_tokens > 0


def test_calls_outside_a_task_share_their_metric_labels() -> None:
    """Labels are made once per model and attribution, not per one-call task."""
    response = _response()
    gov = Governor(Policy(budgets=[Budget(max_usd=10)]))
    seen = []
    record = gov.telemetry.record_call

    def keep(labels: Any, **kwargs: Any) -> None:
        seen.append(labels)
        record(labels, **kwargs)

    gov.telemetry.record_call = keep  # type: ignore[method-assign]
    llm = GovernedLiteLLM(gov, completion=lambda **_: response)
    llm.completion(**REQUEST)
    llm.completion(**REQUEST)
    llm.completion(**REQUEST, metadata={"team": "search"})
    first, second, named = seen
    assert first is second
    assert named is not first
    assert named["governor.team"] == "search"


def test_no_call_span_is_started_while_nothing_traces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a tracer provider the call span is skipped before it is named."""
    gov = Governor()
    monkeypatch.setattr(gov.telemetry, "tracing", lambda: False)

    def no_span(*_: Any, **__: Any) -> None:
        raise AssertionError("a span started with no tracer")

    monkeypatch.setattr(gov.telemetry, "start_span", no_span)
    request = CallRequest(model="gpt-4o-mini", messages=MESSAGES)
    admission = gov.begin_call(request)
    assert admission.span is None
    gov.end_call(admission, CallResult(usage=Usage(prompt_tokens=3)))


def test_a_call_without_a_cache_makes_no_saver(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache saver is made only for a stream or a policy with a cache."""
    response = _response()

    def no_saver(*_: Any) -> None:
        raise AssertionError("a cache saver made with no cache")

    monkeypatch.setattr(adapter, "_Saver", no_saver)
    llm = GovernedLiteLLM(Governor(), completion=lambda **_: response)
    assert llm.completion(**REQUEST) is response
