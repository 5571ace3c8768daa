"""Engine fixes found by user trials: late bound bodies, spend targets, the
held-output note and messages of the wrong kind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import litellm
import pytest

from governor import Budget, BudgetExceeded, ConfigError, Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM, instrument
from governor.spend import SpendRecord
from governor.testing import (
    install_offline_provider,
    offline_model,
    uninstall_offline_provider,
)

MODEL = offline_model("gpt-4o-mini")
MESSAGES = [{"role": "user", "content": "hi"}]
# Any call needs more than this: every call on the team's line is refused.
TINY = "0.000001"


@pytest.fixture(autouse=True)
def offline() -> Iterator[None]:
    install_offline_provider(speed=0)
    yield
    uninstall_offline_provider()


class ListStore:
    """A spend store that keeps its records in a list."""

    def __init__(self) -> None:
        self.records: list[SpendRecord] = []

    def record(self, rec: SpendRecord) -> None:
        self.record_many((rec,))

    def record_many(self, recs: Iterable[SpendRecord]) -> None:
        self.records.extend(recs)

    def query(self, *args: object, **kwargs: object) -> Iterator[SpendRecord]:
        return iter(self.records)


# -- 1. a bound body run after its task ended keeps the task's attribution -----


def _streamed(llm: GovernedLiteLLM) -> Iterator[str]:
    stream = llm.completion(model=MODEL, max_tokens=50, messages=MESSAGES, stream=True)
    for chunk in stream:
        yield chunk.choices[0].delta.content or ""


async def _astreamed(llm: GovernedLiteLLM) -> AsyncIterator[str]:
    stream = await llm.acompletion(
        model=MODEL, max_tokens=50, messages=MESSAGES, stream=True
    )
    async for chunk in stream:
        yield chunk.choices[0].delta.content or ""


def test_a_bound_generator_read_after_its_task_ended_is_held_to_the_team_budget(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A web handler returns the bound body; the server reads it later."""
    gov = Governor(Policy(budgets=[Budget(scope="team", max_usd=TINY)]))
    llm = GovernedLiteLLM(gov)

    def handler() -> Iterator[str]:
        with gov.task(team="web") as task:
            return task.bind(_streamed)(llm)

    with pytest.raises(BudgetExceeded) as refused:
        "".join(handler())
    assert refused.value.scope == "team:web"
    assert caplog.text.count("still count against the task's team") == 1


def test_a_bound_async_generator_read_after_its_task_ended_is_held_too() -> None:
    gov = Governor(Policy(budgets=[Budget(scope="team", max_usd=TINY)]))
    llm = GovernedLiteLLM(gov)

    async def handler() -> AsyncIterator[str]:
        with gov.task(team="web") as task:
            return task.bind(_astreamed)(llm)

    async def serve() -> str:
        return "".join([part async for part in await handler()])

    with pytest.raises(BudgetExceeded) as refused:
        asyncio.run(serve())
    assert refused.value.scope == "team:web"


def test_a_bound_async_function_awaited_after_its_task_ended_is_held_too() -> None:
    gov = Governor(Policy(budgets=[Budget(scope="user", max_usd=TINY)]))
    llm = GovernedLiteLLM(gov)

    async def ask() -> Any:
        return await llm.acompletion(model=MODEL, max_tokens=5, messages=MESSAGES)

    with gov.task(user="u7") as task:
        late = task.bind(ask)
    with pytest.raises(BudgetExceeded) as refused:
        asyncio.run(late())
    assert refused.value.scope == "user:u7"


def test_late_calls_are_recorded_with_every_scope_of_the_task() -> None:
    """Team, user, session, feature, environment, org and tags all carry over;
    the task's own totals do not count the late call."""
    store = ListStore()
    gov = Governor(Policy(budgets=[Budget(scope="team", max_usd="1")]), spend=store)
    llm = GovernedLiteLLM(gov)
    scopes = {
        "team": "web",
        "user": "u1",
        "session": "s1",
        "feature": "chat",
        "environment": "prod",
        "org": "acme",
    }
    with gov.task(**scopes, tags={"route": "/ask"}) as task:
        late = task.bind(_streamed)(llm)
    text = "".join(late)
    gov.close()
    (rec,) = store.records
    got = {name: getattr(rec, name) for name in scopes}
    assert (bool(text), got, rec.tags, task.report().calls) == (
        True,
        scopes,
        {"route": "/ask"},
        0,
    )
    assert rec.task_id != task.id


def test_a_late_step_does_not_join_the_consumers_own_task() -> None:
    """Read inside another task, the late body is still charged as the bound
    task's team, not the reader's."""
    gov = Governor(Policy(budgets=[Budget(scope="team", max_usd=TINY)]))
    llm = GovernedLiteLLM(gov)
    with gov.task(team="web") as task:
        late = task.bind(_streamed)(llm)
    with gov.task(team="reader"), pytest.raises(BudgetExceeded) as refused:
        "".join(late)
    assert refused.value.scope == "team:web"


def test_a_sub_task_s_late_body_read_in_its_parent_is_held_by_the_parent() -> None:
    """A sub-task's bound body read after the sub-task ended, inside the
    still-open parent, is charged to the parent: its budget and report."""
    gov = Governor(Policy(budgets=[Budget(max_tokens=100)]))
    llm = GovernedLiteLLM(gov)

    def calls(n: int) -> Iterator[Any]:
        for _ in range(n):
            yield llm.completion(model=MODEL, max_tokens=20, messages=MESSAGES)

    made = 0
    with gov.task(team="t") as parent:
        with gov.task() as sub:
            late = sub.bind(calls)(10)
        with pytest.raises(BudgetExceeded) as refused:
            for _ in late:
                made += 1
    assert refused.value.scope == f"task:{parent.id}"
    assert parent.report().calls == made
    assert 0 < made < 10


def test_a_sub_task_s_late_coroutine_awaited_in_its_parent_is_held_too() -> None:
    gov = Governor(Policy(budgets=[Budget(max_tokens=100)]))
    llm = GovernedLiteLLM(gov)

    async def ask() -> Any:
        return await llm.acompletion(model=MODEL, max_tokens=20, messages=MESSAGES)

    async def run() -> int:
        made = 0
        async with gov.atask() as parent:
            with gov.task() as sub:
                late = sub.bind(ask)
            with pytest.raises(BudgetExceeded):
                for _ in range(10):
                    await late()
                    made += 1
            assert parent.report().calls == made
        return made

    assert 0 < asyncio.run(run()) < 10


# -- 2. a spend target it cannot use is refused at construction ----------------


@pytest.mark.parametrize("spend", [5, object(), ["a"], b"spend.sqlite3"])
def test_a_spend_target_of_the_wrong_kind_is_a_type_error(spend: Any) -> None:
    with pytest.raises(TypeError, match="a Redis URL") as refused:
        Governor(Policy(), spend=spend)
    assert f"got {type(spend).__name__} " in str(refused.value)


class _PathLike:
    """A path-like object that is not a pathlib.Path (pytest's tmpdir is one)."""

    def __init__(self, path: str) -> None:
        self._path = path

    def __fspath__(self) -> str:
        return self._path


def test_a_path_like_spend_target_is_taken_as_its_path(tmp_path: Path) -> None:
    target = tmp_path / "spend.jsonl"
    with Governor(Policy(), spend=_PathLike(str(target))) as gov, gov.task():
        GovernedLiteLLM(gov).completion(model=MODEL, max_tokens=5, messages=MESSAGES)
    assert len(target.read_text(encoding="utf-8").splitlines()) == 1


def test_a_spend_store_object_is_still_accepted() -> None:
    store = ListStore()
    with Governor(Policy(), spend=store) as gov:
        GovernedLiteLLM(gov).completion(model=MODEL, max_tokens=5, messages=MESSAGES)
    assert len(store.records) == 1


def test_an_existing_file_that_is_not_sqlite_is_named_and_left_alone(
    tmp_path: Path,
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    with pytest.raises(ConfigError) as refused:
        Governor(Policy(), spend=str(notes))
    message = str(refused.value)
    assert f"spend store {notes} is not a SQLite database" in message
    assert "give a new file name" in message
    assert notes.read_text() == "my notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_sqlite_path_sqlite_cannot_open_is_named() -> None:
    target = "/proc/x.sqlite3"
    if not Path("/proc").is_dir():
        pytest.skip("no /proc here")
    with pytest.raises(ConfigError) as refused:
        Governor(Policy(), spend=target)
    assert str(refused.value).startswith(
        f"spend store {target} cannot be used as a SQLite spend store ("
    )


# -- 3. the refusal note gives the output actually held ------------------------


def test_the_note_gives_the_models_maximum_output_when_it_capped_the_hold() -> None:
    policy = Policy(default_max_output_tokens=10**9, budgets=[Budget(max_tokens=1000)])
    llm = GovernedLiteLLM(Governor(policy))
    with pytest.raises(BudgetExceeded) as refused:
        llm.completion(model=MODEL, messages=MESSAGES)
    message = str(refused.value)
    assert (
        "The call set no max_tokens, so it held 16384 tokens of output, the "
        "model's maximum output (lower than Policy.default_max_output_tokens): "
        "pass a smaller max_tokens on the call, set "
        "Policy.default_max_output_tokens below 16384, raise the budget's "
        "limit, or pick a cheaper model."
    ) in message
    assert str(10**9) not in message


def test_the_note_gives_the_default_held_for_each_choice() -> None:
    policy = Policy(default_max_output_tokens=2000, budgets=[Budget(max_tokens=1000)])
    llm = GovernedLiteLLM(Governor(policy))
    with pytest.raises(BudgetExceeded) as refused:
        llm.completion(model=MODEL, messages=MESSAGES, n=2)
    assert (
        "so it held Policy.default_max_output_tokens (2000) of output for each "
        "of its 2 choices: pass a smaller max_tokens"
    ) in str(refused.value)


# -- 4. messages and input of the wrong kind are a TypeError -------------------

NOT_A_LIST = r"completion\(\) messages= must be a list of message dicts .*, got str"


@pytest.mark.parametrize("stream", [False, True])
def test_messages_given_as_a_string_are_a_type_error(stream: bool) -> None:
    llm = GovernedLiteLLM(Governor(Policy()))
    with pytest.raises(TypeError, match=NOT_A_LIST):
        llm.completion(model=MODEL, messages="hi", stream=stream)
    with pytest.raises(TypeError, match=r"messages\[0\] is str"):
        llm.completion(model=MODEL, messages=["hi"], stream=stream)


def test_messages_given_as_a_string_are_a_type_error_in_acompletion() -> None:
    llm = GovernedLiteLLM(Governor(Policy()))
    with pytest.raises(TypeError, match="a" + NOT_A_LIST):
        asyncio.run(llm.acompletion(model=MODEL, messages="hi"))


def test_messages_given_as_a_string_are_a_type_error_when_instrumented() -> None:
    with instrument(Governor(Policy())), pytest.raises(TypeError, match=NOT_A_LIST):
        litellm.completion(MODEL, "hi")


def test_an_embedding_input_of_the_wrong_kind_is_a_type_error() -> None:
    llm = GovernedLiteLLM(Governor(Policy()))
    with pytest.raises(TypeError, match=r"input= must be a string .*, got int"):
        llm.embedding(model=offline_model("text-embedding-3-small"), input=5)


def test_litellm_message_objects_are_still_accepted() -> None:
    llm = GovernedLiteLLM(Governor(Policy()))
    message = litellm.Message(role="user", content="hi")
    response = llm.completion(model=MODEL, max_tokens=5, messages=[message])
    assert response.choices[0].message.role == "assistant"


def test_openai_sdk_messages_are_taken_as_their_dicts() -> None:
    """A pydantic message with a role (the OpenAI SDK's reply message, sent
    back in the history) is read as LiteLLM reads it: as its dict."""
    from openai.types.chat import ChatCompletionMessage

    gov = Governor(Policy())
    earlier = ChatCompletionMessage(role="assistant", content="Paris.")
    history = [*MESSAGES, earlier, {"role": "user", "content": "And Spain?"}]
    with gov.task() as task:
        response = GovernedLiteLLM(gov).completion(
            model=MODEL, max_tokens=5, messages=history
        )
    assert response.choices[0].message.role == "assistant"
    assert task.report().calls == 1


def test_langchain_messages_are_refused_with_the_conversion_to_use() -> None:
    from langchain_core.messages import HumanMessage

    llm = GovernedLiteLLM(Governor(Policy()))
    with pytest.raises(TypeError, match="convert_to_openai_messages"):
        llm.completion(model=MODEL, messages=[HumanMessage("hi")])
