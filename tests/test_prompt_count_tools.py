"""The exact prompt count counts every field the provider bills.

When a budget is tight the governor recounts a prompt with the model's
tokenizer. That count dropped ``tool_call_id`` and ``name``, which LiteLLM's
counter (and so the offline provider, and the provider's bill) counts: a
history of 30 tool calls and their results counted half its tokens, and a
call over budget was sent.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any, TypedDict

import litellm
import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    convert_to_openai_messages,
)
from langchain_core.outputs import ChatGeneration, ChatResult
from langgraph.graph import END, START, StateGraph
from pydantic import Field

from governor import Budget, BudgetExceeded, Governor, Policy, govern
from governor._calls import prompt_byte_bound
from governor.adapters._tokens import count_message_tokens, count_prompt_tokens
from governor.adapters.langgraph import _chat
from governor.adapters.litellm import GovernedLiteLLM
from governor.testing import OfflineAnswer, install_offline_provider, offline_model

MODEL = "gpt-4o-mini"
# gpt-4o-mini: $0.15 in and $0.60 out per million tokens.
INPUT_USD, OUTPUT_USD = Decimal("0.15") / 10**6, Decimal("0.60") / 10**6
MAX_TOKENS = 5


def _call_id(i: int) -> str:
    """An id shaped like OpenAI's (``call_`` and 24 letters and digits)."""
    return f"call_Zq{i:02d}XkV9pLmN3rTb7WcY4hJs"


def _tool_history(pairs: int = 30) -> list[dict[str, Any]]:
    """One question and ``pairs`` tool calls, each with its result."""
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Start the jobs and say when they are done."}
    ]
    for i in range(pairs):
        call = {
            "id": _call_id(i),
            "type": "function",
            "function": {"name": "check_job", "arguments": json.dumps({"job": i})},
        }
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        messages.append(
            {"role": "tool", "tool_call_id": _call_id(i), "content": f"job {i} running"}
        )
    return messages


def _langchain_history(pairs: int = 30) -> list[BaseMessage]:
    messages: list[BaseMessage] = [
        SystemMessage("You run jobs.", name="scheduler"),
        HumanMessage("Start the jobs and say when they are done.", name="alice"),
    ]
    for i in range(pairs):
        call = {"name": "check_job", "args": {"job": i}, "id": _call_id(i)}
        messages.append(AIMessage(content="", tool_calls=[call]))
        messages.append(ToolMessage(f"job {i} running", tool_call_id=_call_id(i)))
    return messages


OPENAI_PROMPTS = {
    "tool calls and results": _tool_history(),
    "named messages": [
        {"role": "system", "content": "Be brief.", "name": "rules"},
        {"role": "user", "content": "Hi there.", "name": "alice_smith"},
    ],
    "parallel calls and a legacy function call": [
        {"role": "user", "content": "weather in two cities?"},
        {
            "role": "assistant",
            "content": "Checking both.",
            "tool_calls": [
                {
                    "id": _call_id(1),
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": _call_id(2),
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": _call_id(1), "content": "sunny"},
        {"role": "tool", "tool_call_id": _call_id(2), "content": "snow"},
        {
            "role": "assistant",
            "content": None,
            "function_call": {"name": "summarize", "arguments": '{"style": "short"}'},
        },
        {"role": "function", "name": "summarize", "content": "Paris sunny, Oslo snow."},
    ],
    "text parts": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Part one, "},
                {"type": "text", "text": "part two."},
            ],
            "name": "bob",
        }
    ],
}


@pytest.mark.parametrize("name", sorted(OPENAI_PROMPTS))
def test_the_exact_count_of_openai_messages_is_litellms(name: str) -> None:
    """Every field LiteLLM counts (tool_call_id, name, tool and function
    calls, text parts) is counted, as LiteLLM counts the messages sent."""
    messages = OPENAI_PROMPTS[name]
    expected = litellm.token_counter(model=MODEL, messages=messages)
    assert count_message_tokens(MODEL, messages) == expected
    assert count_prompt_tokens(MODEL, messages) == expected


def test_the_exact_count_of_langchain_messages_is_that_of_their_openai_form() -> None:
    """AIMessage tool calls, ToolMessage call ids, named human and system
    messages: the handler's prompt counts as LangChain's OpenAI form does."""
    messages = _langchain_history(pairs=5)
    expected = litellm.token_counter(
        model=MODEL, messages=convert_to_openai_messages(messages)
    )
    assert count_message_tokens(MODEL, _chat([messages])) == expected


def test_the_byte_bound_is_an_upper_bound_for_tool_histories() -> None:
    """The cheap bound tried before the exact count is not below it."""
    for messages in [*OPENAI_PROMPTS.values(), _chat([_langchain_history()])]:
        bound = prompt_byte_bound(messages, None, model=MODEL)
        assert bound >= count_message_tokens(MODEL, messages)


def _cost(prompt_tokens: int) -> Decimal:
    return prompt_tokens * INPUT_USD + MAX_TOKENS * OUTPUT_USD


def test_a_tool_history_call_over_budget_is_refused_before_sending() -> None:
    """A call costing more than the budget is refused, not sent (LiteLLM)."""
    sent: list[int] = []

    def responder(model: str, messages: Any, tools: Any) -> OfflineAnswer:
        sent.append(1)
        return OfflineAnswer(text="ok")

    install_offline_provider(responder, speed=0)
    messages = _tool_history()
    billed = litellm.token_counter(model=MODEL, messages=messages)
    budget = _cost(billed) * Decimal("0.9")
    llm = GovernedLiteLLM(Governor(Policy(budgets=[Budget(max_usd=budget)])))
    with pytest.raises(BudgetExceeded, match="was not sent"):
        llm.completion(
            model=offline_model(MODEL), messages=messages, max_tokens=MAX_TOKENS
        )
    assert sent == []
    # With room for it, the same call is billed what was counted.
    llm = GovernedLiteLLM(Governor(Policy(budgets=[Budget(max_usd=budget * 2)])))
    answer = llm.completion(
        model=offline_model(MODEL), messages=messages, max_tokens=MAX_TOKENS
    )
    assert answer.usage.prompt_tokens == billed


class _SilentModel(BaseChatModel):
    """gpt-4o-mini with max_tokens 5 that reports no usage; counts its calls."""

    sent: list[int] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "silent"

    def _get_ls_params(self, stop: Any = None, **kwargs: Any) -> Any:
        return {"ls_provider": "openai", "ls_model_name": MODEL, "ls_max_tokens": 5}

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
    ) -> ChatResult:
        self.sent.append(1)
        return ChatResult(generations=[ChatGeneration(message=AIMessage("ok"))])


class _State(TypedDict):
    text: str


def _graph(model: BaseChatModel, messages: list[BaseMessage]) -> Any:
    def ask(state: _State) -> _State:
        return {"text": str(model.invoke(messages).content)}

    builder = StateGraph(_State)
    builder.add_node("ask", ask)
    builder.add_edge(START, "ask")
    builder.add_edge("ask", END)
    return builder.compile()


def test_a_langgraph_tool_history_call_over_budget_is_refused_before_sending() -> None:
    """The same through govern(): refused at 90% of its cost, and charged
    its exact count when it fits."""
    messages = _langchain_history()
    billed = litellm.token_counter(
        model=MODEL, messages=convert_to_openai_messages(messages)
    )
    model = _SilentModel()
    budget = _cost(billed) * Decimal("0.9")
    agent = govern(_graph(model, messages), Policy(budgets=[Budget(max_usd=budget)]))
    with pytest.raises(BudgetExceeded, match="was not sent"):
        agent.invoke({"text": ""})
    assert model.sent == []
    agent = govern(
        _graph(model, messages), Policy(budgets=[Budget(max_usd=budget * 2)])
    )
    agent.invoke({"text": ""})
    report = agent.last_report
    assert report is not None
    assert (model.sent, report.input_tokens) == ([1], billed)


def test_the_byte_bound_counts_tool_call_ids_of_calls_not_in_the_prompt() -> None:
    """Tool messages whose calls are not in the prompt still bill their ids:
    the cheap bound stays above the exact count."""
    from governor._calls import prompt_byte_bound
    from governor.adapters._tokens import count_message_tokens

    messages: list[dict[str, Any]] = [{"role": "user", "content": "status?"}]
    messages += [
        {"role": "tool", "tool_call_id": f"call_{i:02d}_" + "x" * 20, "content": "ok"}
        for i in range(30)
    ]
    exact = count_message_tokens("gpt-4o-mini", messages)
    assert prompt_byte_bound(messages, None, model="gpt-4o-mini") >= exact


def test_a_history_holding_litellms_own_message_objects_is_counted() -> None:
    """The usual way to continue a chat appends response.choices[0].message,
    a LiteLLM Message object, not a dict: it is read, not a crash."""
    from governor import Budget, Governor, Policy
    from governor._calls import prompt_byte_bound
    from governor.adapters._tokens import count_message_tokens
    from governor.adapters.litellm import GovernedLiteLLM

    llm = GovernedLiteLLM(Governor(Policy(budgets=[Budget(max_usd="1")])))
    history: list[Any] = [{"role": "user", "content": "Name a prime number."}]
    first = llm.completion(
        model="gpt-4o-mini", messages=history, max_tokens=5, mock_response="Seven."
    )
    history += [first.choices[0].message, {"role": "user", "content": "Another?"}]
    second = llm.completion(
        model="gpt-4o-mini", messages=history, max_tokens=5, mock_response="Eleven."
    )
    assert second.choices[0].message.content == "Eleven."
    exact = count_message_tokens("gpt-4o-mini", history)
    assert exact == litellm.token_counter(model="gpt-4o-mini", messages=history)
    assert prompt_byte_bound(history, None, model="gpt-4o-mini") >= exact
