"""A governed graph prices a chat model's call as the model it is sent to.

* ChatLiteLLM merges ``model_kwargs`` over its fields, so a ``model`` there
  is the one LiteLLM calls: it is reserved, refused and charged, though the
  invocation params name the field's model.
* A model the call names (``bind(model=...)``, ``invoke(..., model=...)``)
  is sent over both. ChatLiteLLM writes its configured model into the
  response metadata whatever was sent, which is not an answer by another
  model: no false warning, no charge at the configured model's price.
* A response that names another model than any the chat model is set to
  (a proxy answering with another) is still charged at the dearer one.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, TypedDict

import litellm
import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_litellm import ChatLiteLLM
from langgraph.graph import END, START, StateGraph

from governor import Budget, BudgetExceeded, Governor, Policy, govern
from governor.spend import SpendRecord, SQLiteSpendStore

MINI = "gpt-4o-mini"
FULL = "gpt-4o"
PROMPT, OUTPUT = 10, 20  # what LiteLLM's mock reports for a mock_response
ANSWERED_BY = "was answered by"


class Sent:
    """Stands in for ChatLiteLLM's client: real LiteLLM, each request kept."""

    def __init__(self) -> None:
        self.models: list[str] = []
        self.costs: list[float] = []

    def completion(self, **kwargs: Any) -> Any:
        self.models.append(kwargs["model"])
        return self._kept(litellm.completion(**kwargs))

    async def acompletion(self, **kwargs: Any) -> Any:
        self.models.append(kwargs["model"])
        return self._kept(await litellm.acompletion(**kwargs))

    def _kept(self, response: Any) -> Any:
        self.costs.append(response._hidden_params.get("response_cost"))
        return response


def chat(field: str, sent: Sent, kwargs_model: str | None = None) -> ChatLiteLLM:
    """An offline ChatLiteLLM that retries nothing, its requests kept, set to
    ``field``, with ``kwargs_model`` as its model_kwargs' model if given."""
    extra = {"model": kwargs_model} if kwargs_model else {}
    llm = ChatLiteLLM(
        model=field,
        max_tokens=50,
        max_retries=0,
        model_kwargs={"mock_response": "ok", "num_retries": 0, **extra},
    )
    llm.client = sent
    return llm


class State(TypedDict, total=False):
    answer: str


def graph(runnable: Runnable[Any, Any], **call: Any) -> Any:
    """A one-node graph whose node calls ``runnable`` (sync or async)."""

    def node(state: State) -> State:
        return {"answer": str(runnable.invoke("hi", **call).content)}

    async def anode(state: State) -> State:
        message = await runnable.ainvoke("hi", **call)
        return {"answer": str(message.content)}

    builder = StateGraph(State)
    builder.add_node("ask", node, afunc=anode)  # type: ignore[call-overload]
    builder.add_edge(START, "ask")
    builder.add_edge("ask", END)
    return builder.compile()


def run(compiled: Any, gov: Governor, mode: str) -> None:
    governed = govern(compiled, gov)
    if mode == "ainvoke":
        asyncio.run(governed.ainvoke({}))
    else:
        governed.invoke({})


def litellm_cost(model: str) -> Decimal:
    """The mocked usage at LiteLLM's own per-token prices for ``model``."""
    prices = litellm.model_cost[model]
    prompt = Decimal(str(prices["input_cost_per_token"]))
    output = Decimal(str(prices["output_cost_per_token"]))
    return PROMPT * prompt + OUTPUT * output


def the_record(store: SQLiteSpendStore) -> SpendRecord:
    (record,) = list(store.query())
    return record


def assert_charged(record: SpendRecord, model: str, sent: Sent) -> None:
    """Charged as ``model`` at LiteLLM's price, and sent to it, once."""
    assert sent.models == [model]
    assert (record.input_tokens, record.output_tokens) == (PROMPT, OUTPUT)
    assert record.cost_usd == litellm_cost(model)
    assert math.isclose(float(record.cost_usd), sent.costs[0], rel_tol=1e-9)
    assert not record.cost_estimated


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteSpendStore]:
    spend = SQLiteSpendStore(tmp_path / "spend.sqlite3")
    yield spend
    spend.close()


def answered_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if ANSWERED_BY in r.getMessage()]


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
@pytest.mark.parametrize(("field", "sent_to"), [(MINI, FULL), (FULL, MINI)])
def test_a_model_in_model_kwargs_is_the_one_charged(
    store: SQLiteSpendStore,
    caplog: pytest.LogCaptureFixture,
    mode: str,
    field: str,
    sent_to: str,
) -> None:
    """LiteLLM calls the model_kwargs model; the call is charged as that one."""
    sent = Sent()
    llm = chat(field, sent, sent_to)
    with caplog.at_level(logging.WARNING), Governor(spend=store) as gov:
        run(graph(llm), gov, mode)
    record = the_record(store)
    assert record.model == sent_to
    assert_charged(record, sent_to, sent)
    assert answered_warnings(caplog) == []


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
def test_a_budget_too_small_for_the_model_kwargs_model_refuses_before_sending(
    store: SQLiteSpendStore, mode: str
) -> None:
    """$0.0001 fits a gpt-4o-mini call but not the gpt-4o one that is sent."""
    sent = Sent()
    llm = chat(MINI, sent, FULL)
    policy = Policy(budgets=[Budget(max_usd="0.0001")])
    with Governor(policy, spend=store) as gov, pytest.raises(BudgetExceeded) as err:
        run(graph(llm), gov, mode)
    assert sent.models == []
    assert f"a call to '{FULL}'" in str(err.value)
    assert all(r.cost_usd == 0 for r in store.query())


def test_a_model_the_call_names_wins_over_model_kwargs(
    store: SQLiteSpendStore, caplog: pytest.LogCaptureFixture
) -> None:
    """``bind(model=...)`` is sent over model_kwargs, also when it names the
    model's own field, and is the one charged."""
    sent = Sent()
    llm = chat(FULL, sent, MINI).bind(model=FULL)
    with caplog.at_level(logging.WARNING), Governor(spend=store) as gov:
        run(graph(llm), gov, "invoke")
    assert_charged(the_record(store), FULL, sent)
    assert answered_warnings(caplog) == []


@pytest.mark.parametrize("how", ["bind", "invoke"])
@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
@pytest.mark.parametrize(("field", "sent_to"), [(FULL, MINI), (MINI, FULL)])
def test_a_model_the_call_names_is_charged_without_a_false_warning(
    store: SQLiteSpendStore,
    caplog: pytest.LogCaptureFixture,
    how: str,
    mode: str,
    field: str,
    sent_to: str,
) -> None:
    """ChatLiteLLM's response metadata names its field's model, not the one
    the call was sent to: the call is charged as the one sent, no warning."""
    sent = Sent()
    llm = chat(field, sent)
    if how == "bind":
        compiled = graph(llm.bind(model=sent_to))
    else:
        compiled = graph(llm, model=sent_to)
    with caplog.at_level(logging.WARNING), Governor(spend=store) as gov:
        run(compiled, gov, mode)
    record = the_record(store)
    assert record.model == sent_to
    assert_charged(record, sent_to, sent)
    assert answered_warnings(caplog) == []


def streaming_graph(runnable: Runnable[Any, Any]) -> Any:
    """A one-node graph whose node streams ``runnable`` (sync or async)."""

    def node(state: State) -> State:
        return {"answer": "".join(str(c.content) for c in runnable.stream("hi"))}

    async def anode(state: State) -> State:
        parts = [str(c.content) async for c in runnable.astream("hi")]
        return {"answer": "".join(parts)}

    builder = StateGraph(State)
    builder.add_node("ask", node, afunc=anode)  # type: ignore[call-overload]
    builder.add_edge(START, "ask")
    builder.add_edge("ask", END)
    return builder.compile()


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
@pytest.mark.parametrize(
    ("field", "kwargs_model", "bound", "sent_to"),
    [
        (MINI, FULL, None, FULL),
        (FULL, MINI, None, MINI),
        (FULL, None, MINI, MINI),
        (MINI, None, FULL, FULL),
    ],
)
def test_a_streamed_call_is_charged_as_the_model_it_is_sent_to(
    store: SQLiteSpendStore,
    caplog: pytest.LogCaptureFixture,
    mode: str,
    field: str,
    kwargs_model: str | None,
    bound: str | None,
    sent_to: str,
) -> None:
    """The same for ``stream`` and ``astream``, at the streamed usage."""
    sent = Sent()
    llm = chat(field, sent, kwargs_model)
    with caplog.at_level(logging.WARNING), Governor(spend=store) as gov:
        run(streaming_graph(llm.bind(model=bound) if bound else llm), gov, mode)
    record = the_record(store)
    assert sent.models == [sent_to]
    assert record.model == sent_to
    prices = litellm.model_cost[sent_to]
    assert record.cost_usd == (
        record.input_tokens * Decimal(str(prices["input_cost_per_token"]))
        + record.output_tokens * Decimal(str(prices["output_cost_per_token"]))
    )
    assert record.output_tokens > 0
    assert answered_warnings(caplog) == []


def test_without_the_call_kwargs_a_model_other_than_the_field_is_the_calls() -> None:
    """Where the call's keyword arguments are not found, the invocation
    params' model is the call's when it is not the model's field."""
    from governor.adapters.langgraph import _Caller, _model_name

    llm = chat(MINI, Sent(), FULL)
    caller = _Caller(llm, None)
    assert _model_name({"model": MINI}, {}, caller) == FULL
    assert _model_name({"model": None}, {"ls_model_name": MINI}, caller) == FULL
    assert _model_name({"model": "o3"}, {}, caller) == "o3"
    named = _Caller(llm, {"model": MINI})  # bind(model=<the field>)
    assert _model_name({"model": MINI}, {}, named) == MINI


class ProxiedModel(BaseChatModel):
    """A chat model set to gpt-4o-mini whose proxy answers with gpt-4o."""

    model_name: str = MINI

    @property
    def _llm_type(self) -> str:
        return "proxied"

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
    ) -> ChatResult:
        usage = {
            "input_tokens": PROMPT,
            "output_tokens": OUTPUT,
            "total_tokens": PROMPT + OUTPUT,
        }
        message = AIMessage(
            content="ok",
            usage_metadata=usage,  # type: ignore[arg-type]
            response_metadata={"model_name": FULL},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


def test_an_answer_by_another_model_is_still_charged_at_the_dearer(
    store: SQLiteSpendStore, caplog: pytest.LogCaptureFixture
) -> None:
    """The response names a model the chat model is not set to: a proxy
    answered with it, so the call is charged at its price and it is said."""
    with caplog.at_level(logging.WARNING), Governor(spend=store) as gov:
        run(graph(ProxiedModel()), gov, "invoke")
    record = the_record(store)
    assert record.model == MINI
    assert record.cost_usd == litellm_cost(FULL)
    (warning,) = answered_warnings(caplog)
    assert f"a call to {MINI} was answered by {FULL}" in warning


class ProxiedAsConfigured(ProxiedModel):
    """A chat model set to gpt-4o whose proxy answers with gpt-4o whatever it
    is asked for, and says so, as ChatOpenAI passes on the server's model."""

    model_name: str = FULL

    def _get_invocation_params(self, stop: Any = None, **kwargs: Any) -> dict[str, Any]:
        return {
            "model": self.model_name,
            **super()._get_invocation_params(stop=stop),
            **kwargs,
        }


@pytest.mark.parametrize("how", ["bind", "invoke"])
def test_a_proxy_answering_with_the_configured_model_is_charged_at_it(
    store: SQLiteSpendStore, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """Only ChatLiteLLM stamps its own model on every answer: another chat
    model naming its configured model answered a call sent to gpt-4o-mini,
    which is charged at gpt-4o's price, with the warning."""
    model = ProxiedAsConfigured()
    runnable: Any = model.bind(model=MINI) if how == "bind" else model
    call = {} if how == "bind" else {"model": MINI}
    with caplog.at_level(logging.WARNING), Governor(spend=store) as gov:
        run(graph(runnable, **call), gov, "invoke")
    record = the_record(store)
    assert (record.model, record.cost_usd) == (MINI, litellm_cost(FULL))
    (warning,) = answered_warnings(caplog)
    assert f"a call to {MINI} was answered by {FULL}" in warning


def async_graph(runnable: Runnable[Any, Any]) -> Any:
    """A one-node graph whose node is an ``async def`` (no sync twin)."""

    async def node(state: State) -> State:
        message = await runnable.ainvoke("hi")
        return {"answer": str(message.content)}

    builder = StateGraph(State)
    builder.add_node("ask", node)
    builder.add_edge(START, "ask")
    builder.add_edge("ask", END)
    return builder.compile()


@pytest.mark.parametrize("how", ["model_kwargs", "bind"])
@pytest.mark.parametrize(("field", "sent_to"), [(FULL, MINI), (MINI, FULL)])
def test_an_async_node_charges_the_model_sent_without_a_false_warning(
    store: SQLiteSpendStore,
    caplog: pytest.LogCaptureFixture,
    how: str,
    field: str,
    sent_to: str,
) -> None:
    """In an ``async def`` node the call's end is not under the model's frame:
    what the model stamps on its answers is read when the call starts."""
    sent = Sent()
    llm: Any = chat(field, sent, sent_to if how == "model_kwargs" else None)
    if how == "bind":
        llm = llm.bind(model=sent_to)
    with caplog.at_level(logging.WARNING), Governor(spend=store) as gov:
        run(async_graph(llm), gov, "ainvoke")
    assert_charged(the_record(store), sent_to, sent)
    assert answered_warnings(caplog) == []
