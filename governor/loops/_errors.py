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
        spent_usd: what the task had spent when it was stopped.
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
        task_id: str | None = None,
        spent_usd: Decimal = Decimal(0),
        spent_tokens: int = 0,
    ) -> None:
        self.rule = rule
        self.evidence = tuple(evidence)
        self.steps = tuple(steps)
        self.setting = setting
        self.limit = limit
        message = (
            f"loop detected by rule {rule!r}: {detail}. The task was stopped "
            f"after spending ${decimal_text(spent_usd)} ({spent_tokens} tokens). "
            f"{_advice(rule, self.evidence)} "
            f"raise Loops.{setting} (now {limit}), or set Loops(action='record') "
            "to only flag loops."
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
        }


def _advice(rule: str, evidence: Sequence[str]) -> str:
    nodes = tuple(
        dict.fromkeys(item.split(_STATE)[0] for item in evidence if _STATE in item)
    )
    if rule == "same_call":
        return "If the same request is meant to be sent again and again,"
    if rule in {"repeat", "cycle", "stale"} and nodes:
        return (
            "If a node is meant to come back to the same state (it waits for "
            "something outside the graph), list it in Loops.exempt_tools, which "
            f"takes node names too (exempt_tools={nodes!r}), or"
        )
    if rule in {"repeat", "cycle", "stale"}:
        return (
            "If the repetition is legitimate (a tool that polls on purpose), list "
            "the tool in Loops.exempt_tools or"
        )
    if rule == "same_result":
        return (
            "If the tool answers every call alike on purpose (an acknowledgement "
            "such as 'saved'), list it in Loops.exempt_tools or"
        )
    if rule == "repeated_turns":
        return "If the conversation is meant to repeat itself,"
    if rule == "near_duplicate":
        return "If such outputs are legitimate, raise near_duplicate_similarity or"
    return "If the task needs more,"
