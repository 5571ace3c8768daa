"""A task block entered in one asyncio task and left in another (an exit
stack closed at the end of a streamed web response) ends cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging

import pytest
from opentelemetry import trace

from conftest import SpanCapture
from governor import Governor, current_task
from governor.adapters.litellm import GovernedLiteLLM

MESSAGES = [{"role": "user", "content": "Say hi."}]


def test_a_task_closed_in_another_asyncio_task_ends_and_is_reported(
    capture: SpanCapture, caplog: pytest.LogCaptureFixture
) -> None:
    gov = Governor(tracer_provider=capture.provider)
    llm = GovernedLiteLLM(gov)
    seen: dict[str, object] = {}

    async def handler() -> None:
        stack = contextlib.AsyncExitStack()
        task = await stack.enter_async_context(gov.atask(team="web"))
        seen["task"] = task

        async def body() -> None:  # runs in a copy of the handler's context
            await llm.acompletion(
                model="gpt-4o-mini", messages=MESSAGES, mock_response="hi"
            )
            seen["span"] = trace.get_current_span()
            await stack.aclose()
            seen["after"] = current_task()
            seen["span_after"] = trace.get_current_span()

        await asyncio.create_task(body())

    with caplog.at_level(logging.WARNING):
        asyncio.run(handler())
    task = seen["task"]
    assert task.report().calls == 1  # type: ignore[attr-defined]
    assert (seen["after"], seen["span_after"]) == (None, trace.INVALID_SPAN)
    assert seen["span"] is not trace.INVALID_SPAN
    [task_span] = capture.named("governor.task")
    assert task_span.attributes is not None
    assert task_span.attributes["governor.task.calls"] == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


def test_closing_elsewhere_leaves_the_closers_own_span_current(
    capture: SpanCapture,
) -> None:
    """The asyncio task that closes the block keeps its own current span."""
    gov = Governor(tracer_provider=capture.provider)
    tracer = capture.provider.get_tracer("test")
    seen: dict[str, object] = {}

    async def handler() -> None:
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(gov.atask(team="web"))

        async def closer() -> None:
            with tracer.start_as_current_span("closer") as own:
                await stack.aclose()
                seen["own"] = own
                seen["current"] = trace.get_current_span()

        await asyncio.get_running_loop().create_task(
            closer(), context=contextvars.Context()
        )

    asyncio.run(handler())
    assert seen["current"] is seen["own"]
