"""Regressions: the program's SIGINT handler, SQLite stores named .ndjson, and
LiteLLM's own answer to whether a Responses call is bridged to chat."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langgraph.graph import END, START, StateGraph
from pydantic import Field

from governor import Governor, govern
from governor._errors import ConfigError
from governor._files import SQLITE_HEADER
from governor.adapters.litellm import _bridged_to_chat
from governor.spend import SQLiteSpendStore, open_store
from governor.spend._jsonl import JsonlSpendStore, jsonl_kind
from governor.testing import install_offline_provider, offline_model

STEPS = 4


class CountingModel(BaseChatModel):
    """A gpt-4o stand-in that answers at once and counts its calls."""

    sent: list[str] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "counting"

    def _get_ls_params(self, stop: Any = None, **kwargs: Any) -> Any:
        return {"ls_provider": "openai", "ls_model_name": "gpt-4o", "ls_max_tokens": 5}

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any
    ) -> ChatResult:
        self.sent.append(str(messages[-1].content))
        return ChatResult(generations=[ChatGeneration(message=AIMessage("ok"))])


class State(TypedDict):
    n: int


def _graph(model: CountingModel, press_at: int | None = None) -> Any:
    """A loop of STEPS model calls; Ctrl-C is pressed before step ``press_at``."""

    def step(state: State) -> dict[str, int]:
        if state["n"] == press_at:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # the handler runs on the main thread meanwhile
        model.invoke(f"step {state['n']}")
        return {"n": state["n"] + 1}

    builder = StateGraph(State)
    builder.add_node("step", step)
    builder.add_edge(START, "step")
    builder.add_conditional_edges("step", lambda s: END if s["n"] >= STEPS else "step")
    return builder.compile()


@pytest.fixture
def mine() -> Iterator[list[int]]:
    """The program's own SIGINT handler, which only notes the signal."""
    seen: list[int] = []

    def on_interrupt(signum: int, frame: Any) -> None:
        seen.append(signum)

    before = signal.signal(signal.SIGINT, on_interrupt)
    yield seen
    signal.signal(signal.SIGINT, before)


def test_a_graceful_handler_lets_the_interrupted_run_finish(mine: list[int]) -> None:
    model = CountingModel(sent=[])
    agent = govern(_graph(model, press_at=2), Governor())

    assert agent.invoke({"n": 0}) == {"n": STEPS}

    assert mine == [signal.SIGINT]
    assert len(model.sent) == STEPS


def test_two_streams_closed_in_the_order_opened_give_the_handler_back(
    mine: list[int],
) -> None:
    handler = signal.getsignal(signal.SIGINT)
    agent = govern(_graph(CountingModel(sent=[])), Governor())
    first, second = agent.stream({"n": 0}), agent.stream({"n": 0})
    for _ in zip(first, second, strict=False):
        pass
    first.close()
    second.close()

    assert signal.getsignal(signal.SIGINT) is handler
    _press_ctrl_c()
    assert mine == [signal.SIGINT]


def test_a_stream_finished_on_a_worker_thread_keeps_the_handler(
    mine: list[int],
) -> None:
    handler = signal.getsignal(signal.SIGINT)
    agent = govern(_graph(CountingModel(sent=[])), Governor())
    stream = agent.stream({"n": 0})
    next(stream)
    worker = threading.Thread(target=lambda: list(stream))
    worker.start()
    worker.join()

    _press_ctrl_c()
    assert mine == [signal.SIGINT]
    agent.invoke({"n": STEPS - 1})  # the next run on the main thread
    assert signal.getsignal(signal.SIGINT) is handler
    _press_ctrl_c()
    assert mine == [signal.SIGINT, signal.SIGINT]


def _press_ctrl_c() -> None:
    """Send SIGINT; the program's handler, which does not raise, must get it."""
    try:
        signal.raise_signal(signal.SIGINT)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt was raised instead of the program's handler")


def _sqlite_store_at(path: Path) -> None:
    """A SQLite spend store at ``path``, as earlier releases made at any name."""
    SQLiteSpendStore(path).close()
    assert path.read_bytes().startswith(SQLITE_HEADER)


@pytest.mark.parametrize("name", ["legacy.ndjson", "legacy.JSONL"])
def test_a_sqlite_store_named_as_jsonl_opens_as_sqlite(
    tmp_path: Path, name: str
) -> None:
    path = tmp_path / name
    _sqlite_store_at(path)

    assert jsonl_kind(path) is None
    assert isinstance(open_store(path), SQLiteSpendStore)
    assert isinstance(open_store(path, existing=True), SQLiteSpendStore)


def test_the_jsonl_writer_refuses_to_append_to_a_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "legacy.ndjson"
    _sqlite_store_at(path)
    size = path.stat().st_size
    record = _one_record(tmp_path)

    with pytest.raises(ConfigError, match=r"legacy\.ndjson is a SQLite database"):
        JsonlSpendStore(path).record(record)
    assert path.stat().st_size == size


def _one_record(tmp_path: Path) -> Any:
    """A spend record, written by a governed offline call to a JSONL file."""
    import litellm

    from governor.adapters.litellm import instrument

    install_offline_provider(speed=0)
    source = tmp_path / "one.jsonl"
    gov = Governor(spend=str(source))
    with instrument(gov), gov.task(team="t"):
        litellm.completion(
            model=offline_model("gpt-4o-mini"),
            max_tokens=5,
            messages=[{"role": "user", "content": "hi"}],
        )
    gov.close()
    return next(iter(JsonlSpendStore(source).query()))


@pytest.mark.parametrize(
    ("model", "bridged"),
    [
        ("openai/chat_completions/gpt-4o", True),
        ("bedrock_mantle/openai.gpt-oss-120b", False),
        ("anthropic/claude-3-5-sonnet-20241022", True),
        ("openai/gpt-4o", False),
    ],
)
def test_bridging_is_litellms_own_decision(model: str, bridged: bool) -> None:
    assert _bridged_to_chat((), {"model": model}) is bridged


def test_an_offline_responses_call_is_bridged() -> None:
    install_offline_provider(speed=0)
    assert _bridged_to_chat((), {"model": offline_model("gpt-4o-mini")}) is True


def test_a_program_handler_that_chains_to_the_governors_is_called_once() -> None:
    """A graceful-shutdown handler saves the governor's handler and calls it;
    a later scope then captures it: Ctrl-C must not loop between the two."""
    from governor.adapters._interrupt import InterruptScope

    before = signal.getsignal(signal.SIGINT)
    # Python's own handler, whatever this run inherited: a shell starting a
    # command in the background makes it ignore SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    calls: list[int] = []
    first = InterruptScope(lambda task: None)
    first.open()
    saved = signal.getsignal(signal.SIGINT)

    def graceful(signum: int, frame: Any) -> Any:
        calls.append(signum)
        assert callable(saved)
        return saved(signum, frame)

    signal.signal(signal.SIGINT, graceful)
    second = InterruptScope(lambda task: None)
    second.open()
    try:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    finally:
        second.close()
        first.close()
        signal.signal(signal.SIGINT, before)
    assert calls == [signal.SIGINT]


def test_is_sqlite_file_does_not_open_a_named_pipe(tmp_path: Path) -> None:
    """Opening a FIFO for reading waits for a writer: it is not a file."""
    from governor.spend._jsonl import is_sqlite_file

    fifo = tmp_path / "spend.jsonl"
    os.mkfifo(fifo)
    answers: list[bool] = []
    looker = threading.Thread(target=lambda: answers.append(is_sqlite_file(fifo)))
    looker.daemon = True  # a blocked open must not hold the test run
    looker.start()
    looker.join(5)
    assert answers == [False]


def test_trailing_empty_cells_are_read_in_eval_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trailing delimiter on each row adds an empty cell, not data."""
    from governor.cli import main

    pairs = tmp_path / "pairs.csv"
    rows = [f"What is {n}?,What is {n} exactly?,1," for n in range(20)]
    pairs.write_text("question1,question2,is_duplicate\n" + "\n".join(rows) + "\n")
    trace = tmp_path / "trace.csv"
    lines = [
        f"2023-11-16 {18 + n // 3600}:{n // 60 % 60:02d}:{n % 60:02d},1200,80,"
        for n in range(0, 3600, 3)
    ]
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(lines))

    code = main(["eval", "cache", str(pairs), "--embedder", "hashing", "--json"])
    assert code == 0
    assert '"pairs": 20' in capsys.readouterr().out
    code = main(["eval", "anomalies", str(trace), "--defaults-only", "--trials", "1"])
    assert code == 0


def test_a_second_ctrl_c_during_the_programs_handler_reaches_it_again() -> None:
    """A press-twice-to-quit handler: the second press arrives while the first
    is handled, and goes to the program's handler as without the governor."""
    from governor.adapters._interrupt import InterruptScope

    before = signal.getsignal(signal.SIGINT)
    presses: list[int] = []

    def press_twice(signum: int, frame: Any) -> None:
        presses.append(len(presses) + 1)
        if len(presses) == 1:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)

    signal.signal(signal.SIGINT, press_twice)
    scope = InterruptScope(lambda task: None)
    scope.open()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
    finally:
        scope.close()
        restored = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, before)
    assert presses == [1, 2]
    assert restored is press_twice
