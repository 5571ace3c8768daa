"""A Router fallback the budget refuses is raised as the governor's refusal.

Real LiteLLM Router calls against ``governor.testing.StubServer`` on
127.0.0.1: the first model group's model answers 500, its fallback group's
model answers. When the governor refuses the fallback (its worst case does
not fit the budget), LiteLLM's Router raises the first group's provider
error; inside ``raise_refusals()`` the refusal is raised instead, chained
from that error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import litellm
import pytest
from _list_spend_store import ListSpendStore

from governor import Budget, BudgetExceeded, Governor, Policy
from governor.adapters.litellm import instrument, raise_refusals
from governor.testing import StubBehaviour, StubServer

MESSAGES = [{"role": "user", "content": "Which planet is known as the red planet?"}]
FAILING, FALLBACK = "gpt-4o-mini", "gpt-4o"
# Room for the failing gpt-4o-mini call's worst case, not for gpt-4o's.
TIGHT_USD = "0.0001"
ANSWER = StubBehaviour(answer="Mars.", prompt_tokens=10, completion_tokens=2)
# The answer's cost at gpt-4o's list prices ($2.50/M in, $10/M out).
ANSWER_USD = Decimal(10) * Decimal("2.5e-6") + Decimal(2) * Decimal("10e-6")


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[StubServer]:
    monkeypatch.setattr(litellm, "suppress_debug_info", True)
    with StubServer(default=ANSWER) as stub:
        stub.set_behaviour(FAILING, StubBehaviour(status=500))
        yield stub


def _router(
    server: StubServer,
    groups: tuple[tuple[str, str], ...] = (("gpt-a", FAILING), ("gpt-b", FALLBACK)),
    fallbacks: tuple[str, ...] = ("gpt-b",),
) -> Any:
    """A Router of ``groups`` (name, model) on the stub server; the first
    group falls back to ``fallbacks`` in order."""

    def deployment(group: str, model: str) -> dict[str, Any]:
        params = {
            "model": f"openai/{model}",
            "api_base": server.base_url + "/v1",
            "api_key": "sk-test",
        }
        return {"model_name": group, "litellm_params": params}

    return litellm.Router(
        model_list=[deployment(group, model) for group, model in groups],
        fallbacks=[{groups[0][0]: list(fallbacks)}],
        num_retries=0,
    )


def _governor(max_usd: str) -> tuple[Governor, ListSpendStore]:
    records = ListSpendStore()
    return Governor(Policy(budgets=[Budget(max_usd=max_usd)]), spend=records), records


def _ask(router: Any, how: str) -> Any:
    request = {"model": "gpt-a", "messages": MESSAGES, "max_tokens": 20}
    if how == "sync":
        return router.completion(**request)
    return asyncio.run(router.acompletion(**request))


def _sent(server: StubServer) -> list[str]:
    return [request.body["model"] for request in server.requests]


@pytest.mark.parametrize("how", ["sync", "async"])
def test_a_refused_fallback_is_raised_as_the_refusal(
    server: StubServer, how: str
) -> None:
    gov, records = _governor(TIGHT_USD)
    router = _router(server)
    with instrument(gov), gov.task() as task:
        with pytest.raises(BudgetExceeded) as caught, raise_refusals():
            _ask(router, how)
        report = task.report()
    gov.close()
    provider_error = caught.value.__cause__
    assert isinstance(provider_error, litellm.InternalServerError)
    assert caught.value.__context__ is provider_error
    assert "would be exceeded by a call to 'openai/gpt-4o'" in str(caught.value)
    assert _sent(server) == [FAILING]  # nothing went to the fallback
    assert [(r.model, r.outcome, r.cost_usd) for r in records.records] == [
        (f"openai/{FAILING}", "error", Decimal(0)),
        (f"openai/{FALLBACK}", "refused", Decimal(0)),
    ]
    assert report.stop_reason == "budget_exceeded"
    assert report.cost_usd == 0


@pytest.mark.parametrize("how", ["sync", "async"])
def test_outside_the_block_the_router_raises_its_provider_error(
    server: StubServer, how: str
) -> None:
    gov, _ = _governor(TIGHT_USD)
    router = _router(server)
    with instrument(gov), gov.task() as task:
        with pytest.raises(litellm.InternalServerError) as caught:
            _ask(router, how)
        assert not isinstance(caught.value, BudgetExceeded)
        assert task.report().stop_reason == "budget_exceeded"  # the workaround
    gov.close()
    assert _sent(server) == [FAILING]


@pytest.mark.parametrize("how", ["sync", "async"])
def test_a_fallback_that_answers_is_returned(server: StubServer, how: str) -> None:
    gov, records = _governor("1")
    router = _router(server)
    with instrument(gov), gov.task() as task:
        with raise_refusals():
            response = _ask(router, how)
        report = task.report()
    gov.close()
    assert response.choices[0].message.content == "Mars."
    assert _sent(server) == [FAILING, FALLBACK]
    assert [(r.model, r.outcome) for r in records.records] == [
        (f"openai/{FAILING}", "error"),
        (f"openai/{FALLBACK}", "ok"),
    ]
    assert report.cost_usd == ANSWER_USD
    assert report.stop_reason is None


@pytest.mark.parametrize("how", ["sync", "async"])
def test_a_provider_error_with_no_refusal_is_raised_unchanged(
    server: StubServer, how: str
) -> None:
    server.set_behaviour(FALLBACK, StubBehaviour(status=500))
    gov, records = _governor("1")
    router = _router(server)
    with instrument(gov), gov.task() as task:
        with pytest.raises(litellm.InternalServerError) as caught, raise_refusals():
            _ask(router, how)
        report = task.report()
    gov.close()
    assert not isinstance(caught.value, BudgetExceeded)
    assert _sent(server) == [FAILING, FALLBACK]
    assert [r.outcome for r in records.records] == ["error", "error"]
    assert report.stop_reason is None


def test_a_refusal_in_another_block_is_not_raised(server: StubServer) -> None:
    gov, _ = _governor(TIGHT_USD)
    router = _router(server)
    with instrument(gov), gov.task():
        with pytest.raises(BudgetExceeded), raise_refusals():
            _ask(router, "sync")
        server.set_behaviour(FAILING, StubBehaviour(status=503))
        with pytest.raises(litellm.ServiceUnavailableError), raise_refusals():
            litellm.completion(
                model=f"openai/{FAILING}",
                messages=MESSAGES,
                max_tokens=20,
                api_base=server.base_url + "/v1",
                api_key="sk-test",
            )
    gov.close()


async def _refused_and_failed(router: Any, server: StubServer) -> list[str]:
    """One task's Router call refused, another's plain call failing, at once."""

    async def routed() -> str:
        try:
            with raise_refusals():
                await router.acompletion(
                    model="gpt-a", messages=MESSAGES, max_tokens=20
                )
        except Exception as exc:
            return type(exc).__name__
        return "answered"

    async def plain() -> str:
        try:
            with raise_refusals():
                await litellm.acompletion(
                    model=f"openai/{FAILING}",
                    messages=MESSAGES,
                    max_tokens=20,
                    api_base=server.base_url + "/v1",
                    api_key="sk-test",
                )
        except Exception as exc:
            return type(exc).__name__
        return "answered"

    return list(await asyncio.gather(routed(), plain(), routed(), plain()))


def test_concurrent_blocks_keep_their_own_refusals(server: StubServer) -> None:
    gov, _ = _governor(TIGHT_USD)
    router = _router(server)
    with instrument(gov), gov.task():
        names = asyncio.run(_refused_and_failed(router, server))
    gov.close()
    assert names == ["BudgetExceeded", "InternalServerError"] * 2


def test_a_refusal_the_block_caught_is_not_raised_for_a_later_error() -> None:
    """Code inside the block that catches a refusal and moves on gets its
    own later errors as themselves, in this task and in the tasks it runs."""
    gov = Governor(Policy(budgets=[Budget(max_usd=TIGHT_USD)]))
    llm = litellm_client(gov)

    def refused() -> None:
        with contextlib.suppress(BudgetExceeded):  # handled: answered otherwise
            llm.completion(
                model="gpt-4o", messages=MESSAGES, max_tokens=1000, mock_response="x"
            )

    with pytest.raises(KeyError), gov.task(), raise_refusals():
        refused()
        {}["missing"]

    async def in_tasks() -> None:
        async def fails() -> None:
            await asyncio.sleep(0.01)
            raise ValueError("unrelated")

        async def handles() -> None:
            refused()

        with raise_refusals():
            await asyncio.gather(handles(), fails())

    with pytest.raises(ValueError, match="unrelated"), gov.task():
        asyncio.run(in_tasks())
    gov.close()


def litellm_client(gov: Governor) -> Any:
    from governor.adapters.litellm import GovernedLiteLLM

    return GovernedLiteLLM(gov)


def test_a_refusal_the_routers_error_does_not_quote_is_raised_too(
    server: StubServer,
) -> None:
    """A refused fallback before another that fails: the Router quotes the
    last failure only, and a task id it redacts changes the quote."""
    other = "gpt-4.1-nano"
    server.set_behaviour(other, StubBehaviour(status=500))
    gov, _ = _governor(TIGHT_USD)
    groups = (("gpt-a", FAILING), ("gpt-b", FALLBACK), ("gpt-c", other))
    chained = _router(server, groups, fallbacks=("gpt-b", "gpt-c"))
    task_id = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc"  # redacted by LiteLLM
    with (
        instrument(gov),
        gov.task(task_id=task_id),
        pytest.raises(BudgetExceeded) as caught,
        raise_refusals(),
    ):
        _ask(chained, "sync")
    gov.close()
    assert isinstance(caught.value.__cause__, litellm.InternalServerError)
    assert _sent(server) == [FAILING, other]


def test_an_error_raised_from_none_after_a_caught_refusal_is_its_own() -> None:
    class Fallback(Exception):
        pass

    gov = Governor(Policy(budgets=[Budget(max_usd=TIGHT_USD)]))
    llm = litellm_client(gov)
    with pytest.raises(Fallback), gov.task(), raise_refusals():
        try:
            llm.completion(
                model="gpt-4o", messages=MESSAGES, max_tokens=1000, mock_response="x"
            )
        except BudgetExceeded:
            raise Fallback("answered from a template") from None
    gov.close()


def test_an_error_of_the_refusals_handler_is_its_own() -> None:
    """A bug in the handler of a caught refusal is raised as itself; an
    error raised ``from`` the refusal stands for it."""

    class AppError(Exception):
        pass

    gov = Governor(Policy(budgets=[Budget(max_usd=TIGHT_USD)]))
    llm = litellm_client(gov)
    config: dict[str, str] = {}

    def ask() -> None:
        llm.completion(
            model="gpt-4o", messages=MESSAGES, max_tokens=1000, mock_response="x"
        )

    missing = pytest.raises(KeyError, match="fallback_model")
    with missing, gov.task(), raise_refusals():
        try:
            ask()
        except BudgetExceeded:
            config["fallback_model"]

    with pytest.raises(BudgetExceeded) as caught, gov.task(), raise_refusals():
        try:
            ask()
        except BudgetExceeded as exc:
            raise AppError("no budget left") from exc
    gov.close()
    assert isinstance(caught.value.__cause__, AppError)
