"""Ambient attribution: set team, feature, environment once, charged everywhere.

``with attribute(team="search", feature="answers"):`` (or the same as a
decorator) makes every task opened inside it carry those values, through
``await`` and asyncio tasks, LangGraph's Send branches and subgraphs (LangGraph
copies the context into its workers), and executors that copy the context.
A plain ``threading.Thread`` starts with an empty context: run its target with
``contextvars.copy_context().run``. The values also go into OpenTelemetry
baggage (``governor.team`` ...), so propagators carry them to other services.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from opentelemetry import baggage
from opentelemetry import context as otel_context

from governor.policies import Attribution

__all__ = ["attribute", "current_attribution"]

_AMBIENT: contextvars.ContextVar[Attribution | None] = contextvars.ContextVar(
    "governor_attribution", default=None
)

F = TypeVar("F", bound=Callable[..., Any])


def current_attribution() -> Attribution | None:
    """Return the attribution set by the enclosing :func:`attribute` blocks."""
    return _AMBIENT.get()


class attribute:
    """Charge everything inside to these scope values; nests and merges.

    Usable as ``with attribute(team="search"):`` and as a decorator
    ``@attribute(feature="answers")`` on sync or async functions. Inner values
    win over outer ones; ``tags`` merge key by key. A decorated function may
    run in many threads at once; one ``attribute`` object used in ``with``
    belongs to the thread that entered it.
    """

    def __init__(
        self,
        *,
        team: str | None = None,
        feature: str | None = None,
        environment: str | None = None,
        user: str | None = None,
        session: str | None = None,
        org: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        values = {
            "team": team,
            "feature": feature,
            "environment": environment,
            "user": user,
            "session": session,
            "org": org,
        }
        given = {k: v for k, v in values.items() if v is not None}
        self.attribution = Attribution(**given, tags=dict(tags or {}))
        self._open: list[Any] = []

    def __enter__(self) -> Attribution:
        scope = self._scoped()
        self._open.append(scope)
        return scope.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._open.pop().__exit__(*exc)

    def __call__(self, func: F) -> F:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with self._scoped():
                    return await func(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            with self._scoped():
                return func(*args, **kwargs)

        return run  # type: ignore[return-value]

    @contextmanager
    def _scoped(self) -> Iterator[Attribution]:
        outer = _AMBIENT.get()
        merged = outer.merged(self.attribution) if outer else self.attribution
        token = _AMBIENT.set(merged)
        ctx = otel_context.get_current()
        for key, value in _baggage_items(self.attribution):
            ctx = baggage.set_baggage(key, value, ctx)
        otel_token = otel_context.attach(ctx)
        try:
            yield merged
        finally:
            otel_context.detach(otel_token)
            _AMBIENT.reset(token)


def _baggage_items(attribution: Attribution) -> Iterator[tuple[str, str]]:
    for scope, value in attribution.scope_values().items():
        yield f"governor.{scope}", value
    for key, value in attribution.tags.items():
        yield f"governor.tag.{key}", value
