"""The LiteLLM adapter: streams, async, and governing code that calls LiteLLM."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import litellm
import pytest

from conftest import SpanCapture
from governor import Budget, BudgetExceeded, Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM, instrument
from governor.spend import SQLiteSpendStore
from governor.telemetry import attributes as attr

MESSAGES = [{"role": "user", "content": "Name three primary colours."}]
ANSWER = "Red, yellow and blue are the three primary colours."
IN_PRICE = Decimal("0.15e-6")
OUT_PRICE = Decimal("0.6e-6")


def price(prompt: int, completion: int) -> Decimal:
    return prompt * IN_PRICE + completion * OUT_PRICE


def count_prompt() -> int:
    return int(litellm.token_counter(model="gpt-4o-mini", messages=MESSAGES))


def count_answer() -> int:
    return int(litellm.token_counter(model="gpt-4o-mini", text=ANSWER))


def test_stream_is_settled_from_usage_in_its_last_chunk(capture: SpanCapture) -> None:
    """A stream asks for usage and is charged what its final chunk reports."""
    from governor.testing import StubBehaviour, StubServer

    gov = Governor(tracer_provider=capture.provider)
    llm = GovernedLiteLLM(gov)
    reported = StubBehaviour(answer=ANSWER, prompt_tokens=30, completion_tokens=12)
    with StubServer(default=reported) as stub, gov.task() as task:
        stream = llm.completion(
            model="openai/gpt-4o-mini",
            api_base=stub.base_url + "/v1",
            api_key="sk-stub",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=100,
        )
        chunks = list(stream)
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (30, 12)
    report = task.report()
    assert (report.input_tokens, report.output_tokens) == (30, 12)
    assert report.cost_usd == price(30, 12)
    (span,) = capture.calls()
    assert span.attributes[attr.CALL_COST_ESTIMATED] is False


def test_stream_without_usage_is_counted_and_marked_estimated(
    capture: SpanCapture,
) -> None:
    """A provider that sends no usage is charged a local count, flagged estimated."""

    def provider_without_usage(**kwargs: Any) -> Any:
        kwargs.pop("stream_options", None)
        return litellm.completion(**kwargs)

    gov = Governor(tracer_provider=capture.provider)
    llm = GovernedLiteLLM(gov, completion=provider_without_usage)
    with gov.task() as task:
        for _ in llm.completion(
            model="gpt-4o-mini",
            messages=MESSAGES,
            mock_response=ANSWER,
            stream=True,
            max_tokens=100,
        ):
            pass
    report = task.report()
    assert (report.input_tokens, report.output_tokens) == (
        count_prompt(),
        count_answer(),
    )
    (span,) = capture.calls()
    assert span.attributes[attr.CALL_COST_ESTIMATED] is True
    assert span.attributes[attr.GEN_AI_USAGE_COST_SOURCE] == "estimated"


def test_stream_dropped_early_is_charged_for_what_arrived(
    capture: SpanCapture,
) -> None:
    """Closing a stream after one chunk settles that chunk and frees the hold."""

    def provider_without_usage(**kwargs: Any) -> Any:
        kwargs.pop("stream_options", None)
        return litellm.completion(**kwargs)

    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))
    llm = GovernedLiteLLM(gov, completion=provider_without_usage)
    with gov.task() as task:
        stream = iter(
            llm.completion(
                model="gpt-4o-mini",
                messages=MESSAGES,
                mock_response=ANSWER,
                stream=True,
                max_tokens=100,
            )
        )
        first = next(stream)
        stream.close()  # type: ignore[attr-defined]
    text = first.choices[0].delta.content
    expected = int(litellm.token_counter(model="gpt-4o-mini", text=text))
    assert task.report().output_tokens == expected
    balance = gov.ledger.balance(f"task:{task.id}")
    assert balance is not None
    assert balance.reserved_nanos == 0


def test_a_stream_used_as_a_context_manager_is_settled_on_exit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """'with ... as stream:' settles a stream left after one chunk, in the task."""
    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))
    llm = GovernedLiteLLM(gov)
    request = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 100}
    with gov.task() as task:
        with llm.completion(**request, mock_response=ANSWER, stream=True) as stream:
            next(iter(stream))
        assert "not read to the end" not in caplog.text
        left_open = llm.completion(**request, mock_response=ANSWER, stream=True)
        next(iter(left_open))
    at_close = task.report().cost_usd
    balance = gov.ledger.balance(f"task:{task.id}")
    assert balance is not None
    assert (at_close > 0, balance.reserved_nanos > 0) == (True, True)
    assert caplog.text.count("not read to the end") == 1
    left_open.close()
    balance = gov.ledger.balance(f"task:{task.id}")
    assert balance is not None
    assert (task.report().cost_usd > at_close, balance.reserved_nanos) == (True, 0)


def test_async_stream_is_settled(capture: SpanCapture) -> None:
    """An async stream is settled from its final usage chunk."""
    from governor.testing import StubBehaviour, StubServer

    gov = Governor(tracer_provider=capture.provider)
    llm = GovernedLiteLLM(gov)
    reported = StubBehaviour(answer=ANSWER, prompt_tokens=30, completion_tokens=12)

    async def run(stub: StubServer) -> Any:
        async with gov.atask() as task:
            stream = await llm.acompletion(
                model="openai/gpt-4o-mini",
                api_base=stub.base_url + "/v1",
                api_key="sk-stub",
                messages=MESSAGES,
                stream=True,
                max_tokens=100,
            )
            chunks = [c async for c in stream]
        return task, chunks

    with StubServer(default=reported) as stub:
        task, chunks = asyncio.run(run(stub))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ANSWER
    assert task.report().cost_usd == price(30, 12)


def test_instrument_governs_existing_litellm_calls() -> None:
    """After instrument(), plain litellm.completion calls are reserved and settled."""
    original = litellm.completion
    gov = Governor(Policy(budgets=[Budget(max_usd="0.00002")]))
    with instrument(gov), gov.task() as task:
        litellm.completion(
            model="gpt-4o-mini", messages=MESSAGES, mock_response="x", max_tokens=20
        )
        with pytest.raises(BudgetExceeded):
            litellm.completion(
                model="gpt-4o-mini",
                messages=MESSAGES,
                mock_response="x",
                max_tokens=20,
            )
    assert task.report().calls == 1
    assert litellm.completion is original


def test_instrument_governs_router_calls() -> None:
    """LiteLLM's Router goes through the instrumented function and is charged."""
    router = litellm.Router(
        model_list=[
            {
                "model_name": "cheap",
                "litellm_params": {"model": "gpt-4o-mini", "mock_response": "hi"},
            }
        ],
        num_retries=0,
    )
    gov = Governor()
    with instrument(gov), gov.task() as task:
        router.completion(model="cheap", messages=MESSAGES, max_tokens=20)
    report = task.report()
    assert report.calls == 1
    assert report.cost_usd == price(10, 20)


def test_instrument_governs_chat_litellm() -> None:
    """LangChain's ChatLiteLLM is governed through the instrumented function."""
    from langchain_litellm import ChatLiteLLM

    model = ChatLiteLLM(
        model="gpt-4o-mini", model_kwargs={"mock_response": "hi"}, max_tokens=20
    )
    gov = Governor()
    with instrument(gov), gov.task() as task:
        model.invoke("hello")
    assert task.report().calls == 1
    assert task.report().cost_usd == price(10, 20)


def test_second_instrumentation_is_refused() -> None:
    """Two governors cannot patch LiteLLM at once."""
    with instrument(Governor()), pytest.raises(RuntimeError, match="already"):
        instrument(Governor())


def test_positional_arguments_are_understood() -> None:
    """completion(model, messages) works as in LiteLLM."""
    gov = Governor()
    with gov.task() as task:
        GovernedLiteLLM(gov).completion(
            "gpt-4o-mini", MESSAGES, mock_response="x", max_tokens=20
        )
    assert task.report().calls == 1


def test_a_cancelled_call_is_charged_its_hold_and_a_refused_one_nothing() -> None:
    """The request went out before the cancel and may be billed in full; a
    provider error billed nothing."""
    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))

    async def slow(**kwargs: Any) -> Any:
        await asyncio.sleep(10)

    async def refused(**kwargs: Any) -> Any:
        raise litellm.RateLimitError("slow down", "openai", "gpt-4o-mini")

    async def run(completion: Any) -> Any:
        llm = GovernedLiteLLM(gov, acompletion=completion)
        async with gov.atask() as task:
            call = asyncio.ensure_future(
                llm.acompletion(model="gpt-4o-mini", messages=MESSAGES, max_tokens=50)
            )
            await asyncio.sleep(0.05)
            call.cancel()
            with pytest.raises((asyncio.CancelledError, litellm.RateLimitError)):
                await call
        return task.report()

    cancelled = asyncio.run(run(slow))
    failed = asyncio.run(run(refused))
    # The hold: the prompt's upper bound and the whole output ceiling.
    assert cancelled.input_tokens >= count_prompt()
    assert cancelled.output_tokens == 50
    assert cancelled.cost_usd == price(cancelled.input_tokens, 50)
    assert (failed.input_tokens, failed.cost_usd) == (0, Decimal(0))


def test_spend_records_tell_a_cancelled_call_from_a_failed_one(
    tmp_path: Path,
) -> None:
    """Cancelling is the caller's choice, not a provider error: its own outcome."""
    store = SQLiteSpendStore(tmp_path / "spend.sqlite3")
    gov = Governor(spend=store)

    async def slow(**kwargs: Any) -> Any:
        await asyncio.sleep(10)

    async def refused(**kwargs: Any) -> Any:
        raise litellm.RateLimitError("slow down", "openai", "gpt-4o-mini")

    async def run(completion: Any) -> None:
        llm = GovernedLiteLLM(gov, acompletion=completion)
        async with gov.atask(feature=completion.__name__):
            call = asyncio.ensure_future(
                llm.acompletion(model="gpt-4o-mini", messages=MESSAGES, max_tokens=9)
            )
            await asyncio.sleep(0.05)
            call.cancel()
            with pytest.raises((asyncio.CancelledError, litellm.RateLimitError)):
                await call

    with gov:
        asyncio.run(run(slow))
        asyncio.run(run(refused))

    outcomes = sorted((r.feature, r.outcome) for r in store.query())
    assert outcomes == [("refused", "error"), ("slow", "cancelled")]


def test_a_stream_cancelled_before_its_first_chunk_is_charged_its_hold() -> None:
    """The request went out; cancelling while waiting for chunks may still be
    billed in full, and nothing arrived to say how much: the hold is charged."""
    gov = Governor(Policy(budgets=[Budget(max_usd=1)]))

    async def slow_stream(**kwargs: Any) -> Any:
        async def chunks() -> Any:
            await asyncio.sleep(10)
            yield None

        return chunks()

    async def run() -> Any:
        llm = GovernedLiteLLM(gov, acompletion=slow_stream)
        async with gov.atask() as task:

            async def read() -> None:
                stream = await llm.acompletion(
                    model="gpt-4o-mini", messages=MESSAGES, max_tokens=50, stream=True
                )
                async for _ in stream:
                    pass

            job = asyncio.ensure_future(read())
            await asyncio.sleep(0.05)
            job.cancel()
            with pytest.raises(asyncio.CancelledError):
                await job
        return task.report()

    report = asyncio.run(run())
    assert report.input_tokens >= count_prompt()
    assert report.output_tokens == 50
    assert report.cost_usd == price(report.input_tokens, 50)


@pytest.mark.parametrize(
    ("key", "provider"),
    [
        ("openai/gpt-4o-mini", "openai"),
        ("gpt-4o-mini", "openai"),
        ("x/gpt-4o-mini", "x"),
    ],
)
def test_custom_llm_provider_is_part_of_the_priced_name(
    key: str, provider: str
) -> None:
    """An override keyed provider/model prices a call naming the provider apart."""
    from governor.policies import Price, Pricing

    pricing = Pricing(
        overrides={key: Price(input_usd_per_mtok="1", output_usd_per_mtok="2")}
    )
    gov = Governor(Policy(pricing=pricing))
    with gov.task() as task:
        GovernedLiteLLM(gov).completion(
            model="gpt-4o-mini",
            custom_llm_provider=provider,
            messages=MESSAGES,
            mock_response="x",
            max_tokens=20,
        )
    # litellm's mock reports 10 prompt and 20 completion tokens.
    assert task.report().cost_usd == Decimal("10e-6") + Decimal("40e-6")


LONG_ANSWER = " ".join(f"w{i}" for i in range(200))


def _stub_stream(stub: Any, llm: GovernedLiteLLM, *, use_async: bool) -> Any:
    kwargs: dict[str, Any] = {
        "model": "openai/gpt-4o-mini",
        "api_base": stub.base_url + "/v1",
        "api_key": "sk-stub",
        "messages": [{"role": "user", "content": "Write a long essay."}],
        "max_tokens": 400,
        "stream": True,
    }
    return llm.acompletion(**kwargs) if use_async else llm.completion(**kwargs)


@pytest.mark.parametrize("how", ["close", "with"])
def test_closing_a_stream_early_stops_the_provider(how: str) -> None:
    """close() (or leaving a with block) hangs up, so generation stops."""
    import time

    from governor.testing import StubBehaviour, StubServer

    slow = StubBehaviour(answer=LONG_ANSWER, chunk_delay_s=0.005)
    with StubServer(default=slow) as stub:
        gov = Governor(Policy(budgets=[Budget(max_usd=1)]))
        stream = _stub_stream(stub, GovernedLiteLLM(gov), use_async=False)
        if how == "with":
            with stream:
                next(stream)
        else:
            next(stream)
            stream.close()
        time.sleep(1.5)  # the whole answer takes 1 s to stream
        assert stub.streams_finished == 0


def test_aclose_stops_the_provider() -> None:
    """aclose() on an async stream hangs up too."""
    from governor.testing import StubBehaviour, StubServer

    slow = StubBehaviour(answer=LONG_ANSWER, chunk_delay_s=0.005)

    async def main(stub: StubServer) -> None:
        gov = Governor()
        stream = await _stub_stream(stub, GovernedLiteLLM(gov), use_async=True)
        await anext(stream)
        await stream.aclose()
        await asyncio.sleep(1.5)

    with StubServer(default=slow) as stub:
        asyncio.run(main(stub))
        assert stub.streams_finished == 0


@pytest.mark.parametrize("use_async", [False, True])
def test_a_stream_past_its_reserved_output_is_cut_off(use_async: bool) -> None:
    """A provider ignoring max_tokens is hung up on soon after the ceiling.

    The stub streams its whole 1,000-word answer whatever max_tokens says;
    the call reserved 5 output tokens, so the governor closes the stream and
    the charge stays near the reservation instead of the whole answer's.
    """
    from governor.testing import StubBehaviour, StubServer

    runaway = " ".join(f"w{i}" for i in range(1000))
    slow = StubBehaviour(answer=runaway, chunk_delay_s=0.001)

    async def read(stream: Any) -> int:
        return len([chunk async for chunk in await stream])

    with StubServer(default=slow) as stub:
        gov = Governor()
        llm = GovernedLiteLLM(gov)
        with gov.task() as task:
            kwargs: dict[str, Any] = {
                "model": "openai/gpt-4o-mini",
                "api_base": stub.base_url + "/v1",
                "api_key": "sk-stub",
                "messages": [{"role": "user", "content": "Write a long essay."}],
                "max_tokens": 5,
                "stream": True,
            }
            if use_async:
                chunks = asyncio.run(read(llm.acompletion(**kwargs)))
            else:
                chunks = len(list(llm.completion(**kwargs)))
        finished = stub.streams_finished
    report = task.report()
    assert finished == 0
    assert chunks < 150
    assert 5 < report.output_tokens < 300


def test_a_stream_that_ends_at_its_ceiling_is_read_whole() -> None:
    """An answer exactly as long as max_tokens is never cut."""
    from governor.testing import StubBehaviour, StubServer

    size = int(litellm.token_counter(model="gpt-4o-mini", text=LONG_ANSWER))
    with StubServer(default=StubBehaviour(answer=LONG_ANSWER)) as stub:
        gov = Governor()
        stream = GovernedLiteLLM(gov).completion(
            model="openai/gpt-4o-mini",
            api_base=stub.base_url + "/v1",
            api_key="sk-stub",
            messages=[{"role": "user", "content": "Write a long essay."}],
            max_tokens=size,
            stream=True,
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        finished = stub.streams_finished
    assert (text, finished) == (LONG_ANSWER, 1)


HINDI = (
    "नमस्ते! आपका ऑर्डर कल सुबह दस बजे तक आपके पते पर पहुँच जाएगा। कृपया "
    "दरवाज़े पर किसी को रहने दें ताकि डिलीवरी के समय हस्ताक्षर लिया जा सके। "
    "अगर आप घर पर नहीं होंगे तो हमारा प्रतिनिधि आपको फ़ोन करेगा और एक नया "
    "समय तय करेगा। धन्यवाद!"
)


def test_a_stream_counted_by_a_stand_in_tokenizer_is_not_cut() -> None:
    """A deployment name's text is counted with a stand-in tokenizer that
    counts Hindi several times over; an answer within max_tokens by the
    model's own count must still arrive whole."""
    import tiktoken

    from governor.policies import Price, Pricing
    from governor.testing import StubBehaviour, StubServer

    own = len(tiktoken.get_encoding("o200k_base").encode(HINDI))
    price = Price(input_usd_per_mtok=2.5, output_usd_per_mtok=10)
    policy = Policy(pricing=Pricing(overrides={"gpt4o-prod": price}))
    answer = StubBehaviour(answer=HINDI, completion_tokens=own)
    with StubServer(default=answer) as stub:
        stream = GovernedLiteLLM(Governor(policy)).completion(
            model="openai/gpt4o-prod",
            api_base=stub.base_url + "/v1",
            api_key="sk-stub",
            messages=[{"role": "user", "content": "मेरा ऑर्डर कब आएगा?"}],
            max_tokens=own,
            stream=True,
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == HINDI


def _runaway_chunks(kind: str, count: int = 2000) -> Iterator[Any]:
    """A provider ignoring max_tokens: ``count`` deltas of one kind, no usage."""
    from types import SimpleNamespace as NS

    piece = "word " * 4
    for i in range(count):
        name = "lookup" if i == 0 else None
        function = NS(name=name, arguments=piece)
        delta = {
            "reasoning": NS(content=None, reasoning_content=piece),
            "function_call": NS(content=None, function_call=function),
            "tool_calls": NS(content=None, tool_calls=[NS(function=function)]),
        }[kind]
        yield NS(choices=[NS(delta=delta, finish_reason=None)], model="gpt-4o-mini")


@pytest.mark.parametrize("kind", ["reasoning", "function_call", "tool_calls"])
def test_a_runaway_stream_of_any_output_kind_is_cut_and_charged(kind: str) -> None:
    """Reasoning, legacy function-call and tool-call deltas are output too:
    they count toward the cut-off and toward the charge of a cut stream."""
    sent: list[int] = []

    def provider(**_: Any) -> Iterator[Any]:
        for number, chunk in enumerate(_runaway_chunks(kind), 1):
            sent.append(number)
            yield chunk

    gov = Governor()
    with gov.task() as task:
        stream = GovernedLiteLLM(gov, completion=provider).completion(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=50, stream=True
        )
        read = len(list(stream))
    assert read < 100
    assert len(sent) < 100
    assert 100 < task.report().output_tokens < 400


def test_rule_lines_within_max_tokens_are_not_cut() -> None:
    """A report drawn with 100-character rules of = and - is a few tokens a
    line: an answer within max_tokens must arrive whole."""
    import tiktoken

    from governor.testing import StubBehaviour, StubServer

    rule = "=" * 100
    sections = (
        f"{rule}\nSection {i}: all checks passed\n{'-' * 100}" for i in range(12)
    )
    report = "\n".join(sections) + "\n" + rule
    size = len(tiktoken.get_encoding("o200k_base").encode(report))
    with StubServer(
        default=StubBehaviour(answer=report, completion_tokens=size)
    ) as stub:
        stream = GovernedLiteLLM(Governor()).completion(
            model="openai/gpt-4o",
            api_base=stub.base_url + "/v1",
            api_key="sk-stub",
            messages=[{"role": "user", "content": "Print the report."}],
            max_tokens=size,
            stream=True,
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == report


def test_the_largest_output_ceiling_is_reserved() -> None:
    """max_tokens=10 beside max_completion_tokens=20000 reserves 20000."""
    from governor.testing import StubServer

    with StubServer() as stub:
        gov = Governor(Policy(budgets=[Budget(max_usd="0.001")]))
        with pytest.raises(BudgetExceeded):
            GovernedLiteLLM(gov).completion(
                model="openai/gpt-4o-mini",
                api_base=stub.base_url + "/v1",
                api_key="sk-stub",
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=10,
                max_completion_tokens=20_000,
            )
        assert stub.requests == []


def test_choices_asked_in_extra_body_are_reserved() -> None:
    """extra_body={'n': 8} is reserved as eight answers."""
    from governor.adapters.litellm import _request

    request = _request(
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 50,
            "extra_body": {"n": 8, "max_tokens": 400},
        }
    )
    assert (request.choices, request.max_output_tokens) == (8, 400)


def test_an_answer_without_usage_counts_every_choice_and_tool_call() -> None:
    """Tool-call arguments and every choice are output when usage is missing."""
    import json

    from governor.adapters.litellm import _request, _result

    arguments = json.dumps({"query": " ".join(["population"] * 120)})
    tool_call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "search", "arguments": arguments},
    }
    response = litellm.ModelResponse(
        choices=[
            {"index": 0, "message": {"role": "assistant", "tool_calls": [tool_call]}},
            {"index": 1, "message": {"role": "assistant", "content": "word " * 50}},
        ],
    )
    response.usage = None
    request = _request(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    )
    usage = _result(response, request).usage
    assert usage is not None
    assert usage.estimated is True
    assert usage.completion_tokens >= 170


def test_a_model_call_made_by_a_litellm_callback_is_governed() -> None:
    """An LLM judge in a success callback is a call of its own, charged."""
    import time

    from litellm.integrations.custom_logger import CustomLogger

    judged: list[str] = []

    class Judge(CustomLogger):  # type: ignore[misc]
        def log_success_event(
            self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
        ) -> None:
            if "judge" in str(kwargs.get("messages")):
                return
            litellm.completion(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "judge this"}],
                mock_response="fine",
                max_tokens=5,
            )
            judged.append("sync")

    # LiteLLM copies callbacks into its per-event lists on the first call:
    # all of them are put back, or the judge would run in later tests.
    lists = [name for name in dir(litellm) if name.endswith("callback")]
    lists += ["callbacks"]
    saved = {name: list(getattr(litellm, name)) for name in lists}
    litellm.callbacks = [Judge()]
    try:
        gov = Governor()
        with instrument(gov), gov.task() as task:
            litellm.completion(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "hi"}],
                mock_response="hello",
                max_tokens=5,
            )
            deadline = time.monotonic() + 10
            while not judged and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        for name, callbacks in saved.items():
            setattr(litellm, name, callbacks)
    assert judged == ["sync"]
    assert task.report().calls == 2


@pytest.mark.parametrize("use_async", [False, True])
def test_each_fallback_model_is_charged_at_its_own_price(use_async: bool) -> None:
    """completion(fallbacks=[...]): the model that answers sets the price."""
    from governor.testing import StubBehaviour, StubServer

    behaviours = {
        "gpt-4o-mini": StubBehaviour(status=500),
        "gpt-4o": StubBehaviour(answer="ok", prompt_tokens=100, completion_tokens=50),
    }
    with StubServer(behaviours) as stub:
        gov = Governor()
        kwargs: dict[str, Any] = {
            "model": "openai/gpt-4o-mini",
            "fallbacks": ["openai/gpt-4o"],
            "api_base": stub.base_url + "/v1",
            "api_key": "sk-stub",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 60,
        }
        llm = GovernedLiteLLM(gov)
        with gov.task() as task:
            if use_async:
                asyncio.run(llm.acompletion(**kwargs))
            else:
                llm.completion(**kwargs)
        models = [r.model for r in stub.requests]
    assert models == ["gpt-4o-mini", "gpt-4o"]
    assert task.report().cost_usd == 100 * Decimal("2.5e-6") + 50 * Decimal("10e-6")


AUDIO_MODEL = "openai/gpt-4o-audio-preview-2024-12-17"


def test_audio_tokens_are_charged_at_audio_prices() -> None:
    """Audio prompt and output tokens cost what LiteLLM says they cost."""
    from governor.testing import StubBehaviour, StubServer

    usage = {
        "prompt_tokens": 1000,
        "completion_tokens": 500,
        "total_tokens": 1500,
        "prompt_tokens_details": {"audio_tokens": 800, "text_tokens": 200},
        "completion_tokens_details": {"audio_tokens": 400, "text_tokens": 100},
    }
    with StubServer(default=StubBehaviour(usage=usage)) as stub:
        gov = Governor()
        with gov.task() as task:
            response = GovernedLiteLLM(gov).completion(
                model=AUDIO_MODEL,
                api_base=stub.base_url + "/v1",
                api_key="sk-stub",
                messages=MESSAGES,
                max_tokens=600,
            )
    # 200 * 2.5e-6 + 800 * 4e-5 + 100 * 1e-5 + 400 * 8e-5
    assert task.report().cost_usd == Decimal("0.0655")
    assert litellm.completion_cost(response) == pytest.approx(0.0655)


def test_the_hold_covers_output_at_the_audio_price() -> None:
    """Output is reserved at the dearer audio price, so a call whose answer
    could cost more than the budget left is refused before it is sent."""
    # 100 output tokens: 0.001 at the text price, 0.008 at the audio price.
    gov = Governor(Policy(budgets=[Budget(max_usd="0.005")]))
    with gov.task() as task, pytest.raises(BudgetExceeded):
        GovernedLiteLLM(gov).completion(
            model=AUDIO_MODEL, messages=MESSAGES, mock_response="x", max_tokens=100
        )
    assert task.report().refused == 1


def test_prices_set_on_the_call_price_it() -> None:
    """input_cost_per_token= / output_cost_per_token= win over the map, as in
    LiteLLM; the next call without them pays the map's price again."""
    gov = Governor()
    llm = GovernedLiteLLM(gov)
    with gov.task() as task:
        response = llm.completion(
            model="gpt-4o-mini",
            messages=MESSAGES,
            mock_response="x",
            max_tokens=20,
            input_cost_per_token=0.001,
            output_cost_per_token=0.002,
        )
    # litellm's mock reports 10 prompt and 20 completion tokens.
    assert task.report().cost_usd == Decimal("0.05")
    assert response._hidden_params["response_cost"] == pytest.approx(0.05)
    with gov.task() as task:
        llm.completion(
            model="gpt-4o-mini", messages=MESSAGES, mock_response="x", max_tokens=20
        )
    assert task.report().cost_usd == price(10, 20)


@pytest.mark.parametrize(
    "bad",
    [
        {"output_cost_per_token": -1e-7},
        {"input_cost_per_token": float("nan")},
        {"output_cost_per_token": float("inf")},
        {"input_cost_per_token": float("-inf")},
        {"output_cost_per_token": "lots"},
    ],
)
def test_a_call_price_that_is_no_price_is_refused_before_sending(
    bad: dict[str, Any],
) -> None:
    """A negative, infinite or NaN price set on the call is refused with a
    ConfigError naming it, before the call is sent, leaving nothing held."""
    from conftest import CountingLiteLLM
    from governor import ConfigError

    counter = CountingLiteLLM()
    gov = Governor(Policy(budgets=[Budget(scope="team", max_usd="1")]))
    llm = GovernedLiteLLM(gov, completion=counter.completion)
    name = next(iter(bad))
    with gov.task(team="t"), pytest.raises(ConfigError, match=f"sets {name}="):
        llm.completion(model="gpt-4o-mini", messages=MESSAGES, mock_response="x", **bad)
    balance = gov.ledger.balance("team:t")
    reserved = None if balance is None else balance.reserved_nanos
    assert (counter.sent, reserved) == (0, None)


def test_a_model_registered_with_a_negative_price_is_refused() -> None:
    """litellm.register_model with a negative price does not lower the charge:
    the model is refused as unpriced, naming the field."""
    from governor import PriceUnknown

    name = "openai/governor-test-negative-price"
    litellm.register_model(
        {
            name: {
                "input_cost_per_token": -1e-6,
                "output_cost_per_token": 2e-6,
                "litellm_provider": "openai",
                "mode": "chat",
            }
        }
    )
    try:
        gov = Governor()
        with gov.task(), pytest.raises(PriceUnknown, match="input_cost_per_token="):
            GovernedLiteLLM(gov).completion(
                model=name, messages=MESSAGES, mock_response="x", max_tokens=20
            )
    finally:
        litellm.model_cost.pop(name, None)


def test_a_refused_unknown_model_prints_nothing_on_stdout(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The governor's provider look-ups keep LiteLLM's banner off stdout (a
    program printing JSON there), and leave suppress_debug_info as found."""
    from governor import PriceUnknown

    before = litellm.suppress_debug_info
    gov = Governor()
    with gov.task(), pytest.raises(PriceUnknown, match="did you mean 'gpt-4o-mini'"):
        GovernedLiteLLM(gov).completion(
            model="gpt-4o-mni", messages=MESSAGES, mock_response="x", max_tokens=20
        )
    gov.close()
    assert capfd.readouterr().out == ""
    assert litellm.suppress_debug_info is before


@pytest.mark.parametrize("where", ["litellm_params", "model_info"])
def test_router_deployment_prices_price_its_calls(where: str) -> None:
    """A Router deployment priced in its litellm_params or model_info is
    charged at those prices, a model no map knows included."""
    prices = {"input_cost_per_token": 0.001, "output_cost_per_token": 0.002}
    params: dict[str, Any] = {
        "model": "openai/governor-unmapped",
        "mock_response": "hi",
    }
    deployment: dict[str, Any] = {"model_name": "priced", "litellm_params": params}
    if where == "litellm_params":
        params.update(prices)
    else:
        deployment["model_info"] = dict(prices)
    router = litellm.Router(model_list=[deployment], num_retries=0)
    gov = Governor()
    with instrument(gov), gov.task() as task:
        response = router.completion(model="priced", messages=MESSAGES, max_tokens=20)
    assert task.report().cost_usd == Decimal("0.05")
    assert response._hidden_params["response_cost"] == pytest.approx(0.05)


def test_a_model_registered_with_litellm_is_priced() -> None:
    """litellm.register_model prices a model the bundled map lacks."""
    name = "openai/governor-test-registered-model"
    litellm.register_model(
        {
            name: {
                "input_cost_per_token": 1e-6,
                "output_cost_per_token": 2e-6,
                "litellm_provider": "openai",
                "mode": "chat",
            }
        }
    )
    try:
        gov = Governor()
        with gov.task() as task:
            response = GovernedLiteLLM(gov).completion(
                model=name, messages=MESSAGES, mock_response="x", max_tokens=20
            )
    finally:
        litellm.model_cost.pop(name, None)
    assert task.report().cost_usd == Decimal("10e-6") + Decimal("40e-6")
    assert response._hidden_params["response_cost"] == pytest.approx(50e-6)


@pytest.mark.parametrize("key", ["openai/gpt-4o-mini", "gpt-4o-mini"])
def test_an_override_keyed_with_the_provider_prices_the_bare_name(key: str) -> None:
    """LiteLLM sends gpt-4o-mini to openai: openai/gpt-4o-mini's override applies."""
    from governor.policies import Price, Pricing

    pricing = Pricing(
        overrides={key: Price(input_usd_per_mtok="1", output_usd_per_mtok="2")}
    )
    gov = Governor(Policy(pricing=pricing))
    with gov.task() as task:
        GovernedLiteLLM(gov).completion(
            model="gpt-4o-mini", messages=MESSAGES, mock_response="x", max_tokens=20
        )
    assert task.report().cost_usd == Decimal("10e-6") + Decimal("40e-6")


@pytest.mark.parametrize("use_async", [False, True])
def test_the_router_does_not_retry_a_refusal(use_async: bool) -> None:
    """A budget refusal is raised at once, not retried after backoff; the
    Router's fallback is a governed call of its own, which may fit."""
    import time

    deployments = [
        {
            "model_name": "primary",
            "litellm_params": {"model": "gpt-4o", "mock_response": "hi"},
        },
        {
            "model_name": "backup",
            "litellm_params": {"model": "gpt-4o-mini", "mock_response": "hi"},
        },
    ]
    # gpt-4o at max_tokens=100 needs about 0.001; gpt-4o-mini fits.
    gov = Governor(Policy(budgets=[Budget(max_usd="0.0005")]))
    retrying = litellm.Router(model_list=deployments, num_retries=3)
    falling_back = litellm.Router(
        model_list=deployments, num_retries=3, fallbacks=[{"primary": ["backup"]}]
    )

    def call(router: Any) -> Any:
        kwargs = {"model": "primary", "messages": MESSAGES, "max_tokens": 100}
        if use_async:
            return asyncio.run(router.acompletion(**kwargs))
        return router.completion(**kwargs)

    started = time.monotonic()
    with instrument(gov):
        with gov.task() as task, pytest.raises(BudgetExceeded) as caught:
            call(retrying)
        assert caught.value.num_retries == 0  # type: ignore[attr-defined]
        assert task.report().refused == 1
        with gov.task() as task:
            answer = call(falling_back)
        assert answer.model == "gpt-4o-mini"
        assert (task.report().refused, task.report().calls) == (1, 1)
    assert time.monotonic() - started < 3  # three retries back off for ~9 s


@pytest.mark.parametrize("value", [["a"], {"x": 1}, True, 1.5])
def test_a_metadata_scope_that_is_not_a_name_is_refused(value: Any) -> None:
    """metadata={'team': ['a']} opened a budget line named "['a']": refused,
    before the call is sent; a whole-number id is still taken as text."""
    from conftest import CountingLiteLLM
    from governor import PolicyError

    counter = CountingLiteLLM()
    gov = Governor(Policy(budgets=[Budget(scope="team", max_usd="1")]))
    llm = GovernedLiteLLM(gov, completion=counter.completion)
    with pytest.raises(PolicyError, match="metadata\\['team'\\]"):
        llm.completion(
            model="gpt-4o-mini",
            messages=MESSAGES,
            mock_response="x",
            metadata={"team": value},
        )
    llm.completion(
        model="gpt-4o-mini", messages=MESSAGES, mock_response="x", metadata={"team": 7}
    )
    assert (counter.sent, gov.ledger.keys()[-1:]) == (1, ["team:7"])


def test_metadata_that_is_not_a_mapping_is_refused() -> None:
    """metadata='team=a' would name no team (and LiteLLM fails on it)."""
    from governor import PolicyError

    with pytest.raises(PolicyError, match="metadata must be a dict"):
        GovernedLiteLLM(Governor()).completion(
            model="gpt-4o-mini", messages=MESSAGES, mock_response="x", metadata="team=a"
        )


def test_instrumenting_twice_names_the_governor_and_the_way_out() -> None:
    """instrument() while this governor's instrumentation is active says
    'this governor', not 'another', and how to find the active one."""
    gov = Governor()
    with instrument(gov), pytest.raises(RuntimeError, match="by this governor"):
        instrument(gov).__enter__()
    other = Governor()
    with instrument(gov), pytest.raises(RuntimeError, match="active_instrumentation"):
        instrument(other).__enter__()
