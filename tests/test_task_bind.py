"""task.bind carries its task into whatever runs the bound function's work."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any

from governor import Governor, Task, current_task
from governor._task import _CURRENT


def seen(n: int) -> Iterator[Task | None]:
    for _ in range(n):
        yield current_task()


async def aseen(n: int) -> AsyncIterator[Task | None]:
    for _ in range(n):
        await asyncio.sleep(0)
        yield current_task()


class AsyncCallable:
    async def __call__(self) -> Task | None:
        await asyncio.sleep(0)
        return current_task()


class GeneratorCallable:
    def __call__(self, n: int) -> Iterator[Task | None]:
        return seen(n)


def test_a_bound_generator_runs_inside_the_task_in_another_thread() -> None:
    """Its body runs as it is consumed, in the worker: each step is bound."""
    gov = Governor()
    with gov.task() as task, ThreadPoolExecutor(1) as pool:
        bound = task.bind(seen)
        got = pool.submit(lambda: list(bound(3))).result()
    assert got == [task, task, task]
    assert inspect.isgeneratorfunction(bound)


def test_a_bound_generator_leaves_the_consumers_context_alone() -> None:
    """Between steps the consumer (a worker thread) is outside the task."""
    gov = Governor()

    def consume(steps: Iterator[Task | None]) -> list[tuple[Any, Any]]:
        return [(item, current_task()) for item in steps]

    with gov.task() as task, ThreadPoolExecutor(1) as pool:
        got = pool.submit(consume, task.bind(seen)(2)).result()
    assert got == [(task, None), (task, None)]


def test_send_throw_and_close_reach_a_bound_generator() -> None:
    gov = Governor()
    log: list[Any] = []

    def echo() -> Iterator[int]:
        try:
            while True:
                try:
                    log.append((yield len(log)))
                except ValueError:
                    log.append(("thrown", current_task() is not None))
        finally:
            log.append(("closed", current_task() is not None))

    with gov.task() as task:
        steps = task.bind(echo)()
        assert next(steps) == 0
        assert steps.send("a") == 1
        assert steps.throw(ValueError("x")) == 2
        steps.close()
    assert log == ["a", ("thrown", True), ("closed", True)]


def test_a_bound_async_generator_and_async_callable_run_inside_the_task() -> None:
    """Consumed by another asyncio task, which is outside the governed one."""
    gov = Governor()

    async def consume(agen: Any, call: Any) -> tuple[list[Any], Any, Any]:
        return [t async for t in agen(2)], await call(), current_task()

    async def outside() -> tuple[tuple[list[Any], Any, Any], Task]:
        async with gov.atask() as task:
            agen, call = task.bind(aseen), task.bind(AsyncCallable())
            token = _CURRENT.set(None)
            try:
                got = await consume(agen, call)
            finally:
                _CURRENT.reset(token)
        return got, task

    (items, called, after), task = asyncio.run(outside())
    assert items == [task, task]
    assert called is task
    assert after is None


def test_a_callable_object_returning_a_generator_is_bound_too() -> None:
    gov = Governor()
    with gov.task() as task, ThreadPoolExecutor(1) as pool:
        bound = task.bind(GeneratorCallable())
        got = pool.submit(lambda: list(bound(2))).result()
    assert got == [task, task]


def test_a_bound_generator_resumed_after_its_task_ended_runs_outside_it(
    caplog: Any,
) -> None:
    """As a bound function called late does: outside the task, warned once."""
    gov = Governor()
    with gov.task() as task:
        steps = task.bind(seen)(3)
        first = next(steps)
    rest = list(steps)
    assert (first, rest) == (task, [None, None])
    assert caplog.text.count("ran after the task ended") == 1


BOUND_HERE: ContextVar[str] = ContextVar("bound_here", default="unset")


def test_a_bound_function_runs_with_the_context_it_was_bound_in() -> None:
    """Each form sees the context variables as they were at bind time, as
    asyncio.to_thread passes them, and leaves the worker's as they were."""
    gov = Governor()

    def read() -> tuple[str, Task | None]:
        return BOUND_HERE.get(), current_task()

    async def aread() -> tuple[str, Task | None]:
        await asyncio.sleep(0)
        return read()

    def gen() -> Iterator[tuple[str, Task | None]]:
        yield read()

    async def agen() -> AsyncIterator[tuple[str, Task | None]]:
        yield await aread()

    async def drive(agen_fn: Any, call: Any) -> list[Any]:
        return [item async for item in agen_fn()] + [await call()]

    with gov.task() as task, ThreadPoolExecutor(1) as pool:
        token = BOUND_HERE.set("bound here")
        try:
            bound = [task.bind(f) for f in (read, aread, gen, agen)]
        finally:
            BOUND_HERE.reset(token)
        got = pool.submit(
            lambda: [
                bound[0](),
                *bound[2](),
                *asyncio.run(drive(bound[3], bound[1])),
                read(),
            ]
        ).result()
    inside = ("bound here", task)
    assert got == [inside, inside, inside, inside, ("unset", None)]
