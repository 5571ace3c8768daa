"""The error raised when the loop guard stops a task."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from governor._errors import GovernorHalt, decimal_text

__all__ = ["LoopDetected"]

_STATE = " [state "


class LoopDetected(GovernorHalt, RecursionError):
    """A task was stopped because it repeated itself without making progress.

    It is a :class:`RecursionError`, like LangGraph's own recursion-limit
    error, so code that already handles runaway graphs handles this too.

    Attributes:
        rule: the rule that fired: ``"repeat"``, ``"cycle"``, ``"stale"``,
            ``"same_result"``, ``"near_duplicate"``, ``"repeated_turns"``,
            ``"same_call"``, ``"max_model_calls"``, ``"max_steps"`` or ``"max_wall_s"``.
        evidence: short descriptions of the repeated items, oldest first.
        steps: the step numbers at which the repeated items were seen.
        setting: the :class:`governor.Loops` field that changes this rule.
        limit: that field's value when the rule fired.
        tools: the tools whose calls the loop repeats (empty when it repeats
            no tool call); the message offers them for ``Loops.exempt_tools``.
        spent_usd: what the task's settled calls had spent when it was
            stopped.
        calls_in_flight: the task's calls still running when it was stopped
            (parallel calls); their cost is not in ``spent_usd``, and the
            task's report counts it once they settle.
    """

    code = "loop_detected"

    def __init__(
        self,
        *,
        rule: str,
        detail: str,
        evidence: Sequence[str] = (),
        steps: Sequence[int] = (),
        setting: str,
        limit: float | None = None,
        tools: Sequence[str] = (),
        task_id: str | None = None,
        spent_usd: Decimal = Decimal(0),
        spent_tokens: int = 0,
        calls_in_flight: int = 0,
    ) -> None:
        self.rule = rule
        self.evidence = tuple(evidence)
        self.steps = tuple(steps)
        self.setting = setting
        self.limit = limit
        self.tools = tuple(tools)
        self.calls_in_flight = calls_in_flight
        message = (
            f"loop detected by rule {rule!r}: {detail}. "
            f"{_spent(spent_usd, spent_tokens, calls_in_flight)} "
            f"{_advice(self)} Or set Loops(action='record') to only flag loops."
        )
        super().__init__(
            message, task_id=task_id, spent_usd=spent_usd, spent_tokens=spent_tokens
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "rule": self.rule,
            "evidence": list(self.evidence),
            "steps": list(self.steps),
            "setting": self.setting,
            "limit": self.limit,
            "tools": list(self.tools),
        }


# Besides its own setting, what else bounds the same repetition: raising one
# alone lets the next stop it at the same call or a few calls later.
_TOOL_BOUNDS = {
    "repeat": ("max_stale_steps", "max_repeated_turns", "max_same_result_repeats"),
    "cycle": ("max_stale_steps", "max_repeated_turns", "max_same_result_repeats"),
    "stale": (
        "max_repeats",
        "max_cycle_repeats",
        "max_repeated_turns",
        "max_same_result_repeats",
    ),
    "repeated_turns": ("max_repeats", "max_stale_steps", "max_same_result_repeats"),
}
_NODE_BOUNDS = {
    "repeat": ("max_stale_steps",),
    "cycle": ("max_stale_steps",),
    "stale": ("max_repeats", "max_cycle_repeats"),
}


def _spent(spent_usd: Decimal, spent_tokens: int, calls_in_flight: int) -> str:
    """What the task had spent when it was stopped, and what was still running."""
    spent = f"${decimal_text(spent_usd)} ({spent_tokens} tokens)"
    if not calls_in_flight:
        return f"The task was stopped after spending {spent}."
    calls = "call was" if calls_in_flight == 1 else "calls were"
    return (
        f"The task was stopped with {spent} settled so far; {calls_in_flight} "
        f"of its {calls} still in flight, whose cost comes on top (the task's "
        "report counts it once they settle)."
    )


def _advice(error: LoopDetected) -> str:
    """What to change: the setting, and first what lets a wanted repeat be."""
    rule, evidence = error.rule, error.evidence
    raise_it = f"raise Loops.{error.setting} (now {error.limit})"
    raising = f"Raising Loops.{error.setting} (now {error.limit})"
    nodes = tuple(
        dict.fromkeys(item.split(_STATE)[0] for item in evidence if _STATE in item)
    )
    if rule in _NODE_BOUNDS and nodes:
        return (
            "If a node is meant to come back to the same state (it waits for "
            "something outside the graph), list it in Loops.exempt_tools, which "
            f"takes node names too (exempt_tools={nodes!r}). {raising} alone "
            f"is not enough: {_joined(_NODE_BOUNDS[rule])} also "
            f"{_bound(_NODE_BOUNDS[rule])} a repeated visit."
        )
    if rule in _TOOL_BOUNDS and (error.tools or rule != "repeated_turns"):
        named = f" (exempt_tools={error.tools!r})" if error.tools else ""
        bounds = _TOOL_BOUNDS[rule]
        if rule == "repeated_turns" and len(evidence) > 1:  # a cycle of turns
            bounds = ("max_cycle_repeats", *bounds[1:])
        return (
            "If the repetition is legitimate (a tool that polls on purpose), "
            f"list the tool in Loops.exempt_tools{named}. {raising} alone is "
            f"not enough: {_joined(bounds)} also {_bound(bounds)} a repeated "
            "tool call."
        )
    if rule == "same_call":
        return f"If the same request is meant to be sent again and again, {raise_it}."
    if rule == "same_result":
        named = f" (exempt_tools={error.tools!r})" if error.tools else ""
        return (
            "If the tool answers every call alike on purpose (an acknowledgement "
            f"such as 'saved'), list it in Loops.exempt_tools{named} or {raise_it}."
        )
    if rule == "repeated_turns":
        return f"If the conversation is meant to repeat itself, {raise_it}."
    if rule == "near_duplicate":
        return (
            "If such outputs are legitimate (different requests that each get "
            f"the same answer, one item after another), {raise_it} or set it to "
            "None; raising near_duplicate_similarity only helps outputs that "
            "are alike but not the same."
        )
    return f"If the task needs more, {raise_it}."


def _joined(names: tuple[str, ...]) -> str:
    if len(names) == 1:
        return names[0]
    return f"{', '.join(names[:-1])} and {names[-1]}"


def _bound(names: tuple[str, ...]) -> str:
    return "bounds" if len(names) == 1 else "bound"
