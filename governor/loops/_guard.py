"""The loop guard: a pure, per-task detector fed one observation at a time."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from governor.loops._errors import LoopDetected
from governor.loops._normalize import (
    digest,
    normalize_args,
    normalize_result,
    normalize_result_ids,
    normalize_text,
    tokens,
)
from governor.loops._rules import (
    CallRun,
    Channel,
    Hit,
    OutputRun,
    PromptTurns,
    ResultRun,
    Rule,
)
from governor.policies._loops import LoopAction, Loops

__all__ = ["LoopGuard", "LoopVerdict", "Rule"]

logger = logging.getLogger(__name__)

Source = Literal["tool", "node", "output", "prompt", "task"]

_EXCERPT_CHARS = 120
# Item ids remembered per task (UUIDs from tool results) and tools whose last
# result's ids are kept; past these the oldest are forgotten.
_SEEN_IDS = 4096
_TOOLS_KEPT = 256


@dataclass(frozen=True, slots=True)
class LoopVerdict:
    """What the loop guard found, and what the policy says to do about it.

    Attributes:
        rule: the rule that fired (see :data:`Rule`).
        action: ``"stop"``, ``"escalate"`` or ``"record"``; after one
            escalation in a task, later verdicts say ``"stop"``.
        source: what was being watched: ``"tool"``, ``"node"``,
            ``"output"``, ``"prompt"`` or ``"task"`` (ceilings).
        evidence: short descriptions of the repeated items, oldest first.
        steps: the caller's step numbers of the items in the loop.
        repeats: how many repeats (laps, for a cycle) were seen.
        setting: the :class:`governor.Loops` field that governs this rule.
        limit: that field's value.
        message: one sentence saying what happened.
        tools: the tools whose calls the loop repeats, each once; empty
            when it repeats no tool call.
    """

    rule: Rule
    action: LoopAction
    source: Source
    evidence: tuple[str, ...]
    steps: tuple[int, ...]
    repeats: int
    setting: str
    limit: float
    message: str
    tools: tuple[str, ...] = ()

    @property
    def hint(self) -> str:
        """A note to add to the prompt of a retry after an escalation."""
        return (
            "You appear to be stuck in a loop: "
            f"{self.message}. Repeating the same step will not change the outcome; "
            "try a different approach or stop and report what blocks you."
        )

    def to_error(
        self,
        *,
        task_id: str | None = None,
        spent_usd: Decimal = Decimal(0),
        spent_tokens: int = 0,
        calls_in_flight: int = 0,
    ) -> LoopDetected:
        """Build the :class:`LoopDetected` error that stops the task.

        ``calls_in_flight`` counts the task's calls still running (parallel
        calls), whose cost is not settled in ``spent_usd`` yet.
        """
        return LoopDetected(
            rule=self.rule,
            detail=self.message,
            evidence=self.evidence,
            steps=self.steps,
            setting=self.setting,
            limit=self.limit,
            tools=self.tools,
            task_id=task_id,
            spent_usd=spent_usd,
            spent_tokens=spent_tokens,
            calls_in_flight=calls_in_flight,
        )


class LoopGuard:
    """Watches one task and says when it loops; does no I/O and never raises.

    Feed it every prompt (before its call), model output, tool call (with its
    result) and node visit, each with the caller's step number, and ask it
    about ceilings before each model call or step. Each method returns
    ``None`` or a :class:`LoopVerdict`; acting on the verdict (raising,
    interrupting, logging) is the caller's job.

    Each tool call or node visit costs time linear in its own size plus
    ``Loops.max_cycle_period``, and each output its size times
    ``Loops.max_cycle_period`` (it is compared with that many earlier ones);
    memory is bounded by ``Loops.window_steps`` digests and
    ``Loops.max_cycle_period`` outputs.
    One guard serves one task and is not thread-safe: callers that feed it
    from parallel branches must serialize the calls.
    """

    def __init__(self, loops: Loops) -> None:
        self._loops = loops
        self._tools = Channel(loops)
        self._nodes = Channel(loops)
        self._calls = CallRun(loops)
        self._outputs = OutputRun(loops)
        self._exempt = frozenset(loops.exempt_tools)
        self._results = ResultRun(loops)
        self._seen_ids: dict[str, None] = {}
        self._last_ids: dict[str, frozenset[str]] = {}
        self._turns = PromptTurns(loops, self._exempt)
        self._escalated = False
        self._ceilings_hit: set[str] = set()
        # (model calls, steps) at the check where a ceiling escalated.
        self._escalated_at: tuple[float, float] | None = None
        self._verdicts: list[LoopVerdict] = []

    @property
    def loops(self) -> Loops:
        """The settings this guard applies."""
        return self._loops

    @property
    def verdicts(self) -> tuple[LoopVerdict, ...]:
        """Every verdict given so far in this task, oldest first."""
        return tuple(self._verdicts)

    def on_model_output(
        self, text: str, *, step: int, short: bool = False
    ) -> LoopVerdict | None:
        """Observe the text of one model output.

        Pass the message text only; report the tool calls it asks for through
        :meth:`on_tool_call` once they return. Outputs with no words (a
        message carrying only tool calls) are skipped. An output is compared
        with each of the last ``Loops.max_cycle_period`` outputs, so agents
        that repeat themselves in turn are caught as well as one that
        repeats the output just before.

        Pass ``short=True`` for an answer under ``Loops.min_output_words``,
        which repeats legitimately (a label): it is never a near-copy, and it
        ends the runs of near-copies, which are made of outputs that follow
        one another, unless it is the same as the output k before in a cycle
        of k (a critic answering a writer who repeats himself with the same
        "Needs more detail.").
        """
        hit = self._outputs.observe(text, _excerpt(text), step, short=short)
        return self._verdict(hit, "output")

    def on_call(self, prompt_key: str, text: str, *, step: int) -> LoopVerdict | None:
        """Observe one model call: a digest of its prompt and its answer.

        The same prompt answered the same way more than
        ``Loops.max_identical_calls`` times in a row is a loop whatever the
        answer's length: the model is asked the same thing and says the same
        thing, so nothing new can come of the next call. ``prompt_key`` is
        any stable digest of the prompt.
        """
        answer = normalize_result(text, mask_volatile=self._loops.mask_volatile)
        key = digest("call", prompt_key, answer)
        return self._verdict(self._calls.observe(key, _excerpt(answer), step), "output")

    def on_tool_call(
        self,
        name: str,
        args: Mapping[str, Any] | str,
        result: str | None,
        *,
        step: int,
        turn: int | None = None,
    ) -> LoopVerdict | None:
        """Observe one tool call with its result, once the result is known.

        A call whose result is ``None`` (unknown) or whose tool is listed in
        ``Loops.exempt_tools`` is not judged: repeating a call is no loop
        unless it also gets the same result. The same result coming back
        from one tool for other arguments is a loop too, but only after
        ``Loops.max_same_result_repeats`` calls in a row (and so is a cycle
        of tools that each keep answering the same); calls that one model
        answer made side by side (the same ``turn``, any label of the
        answer) count once there, being one fan-out. A result that differs
        from the tool's last one only in masked item ids is still new when
        an id is one the call's arguments name, or a UUID no earlier result
        of the task showed: work on another item, not the same result.
        """
        if result is None or name in self._exempt:
            return None
        norm_args = normalize_args(args)
        ids: frozenset[str] | None = None
        if self._loops.mask_volatile:
            # Request ids, pids and the like are masked for repeat, cycle and
            # stale, whose calls share their arguments, not for same_result.
            norm_result, any_args, ids = normalize_result_ids(result)
        else:
            norm_result = any_args = normalize_result(result, mask_volatile=False)
        key = digest("tool", name, norm_args, norm_result)
        label = f"{name}({_excerpt(norm_args)}) -> {_excerpt(norm_result)}"
        hit = self._tools.observe(key, label, step, tool=name)
        same = self._results.observe(
            digest("result", name, any_args),
            norm_args,
            f"{name}(...) -> {_excerpt(any_args)}",
            step,
            turn,
            new=ids is not None and self._new_item(name, norm_args, ids),
            tool=name,
        )
        return self._verdict(hit or same, "tool")

    def _new_item(self, name: str, norm_args: str, ids: frozenset[str]) -> bool:
        """Whether a result names an item its tool's last result did not, and
        that item is new: named by the call's arguments, or a UUID unseen."""
        before = self._last_ids.pop(name, frozenset())
        if len(self._last_ids) >= _TOOLS_KEPT:
            del self._last_ids[next(iter(self._last_ids))]
        self._last_ids[name] = ids
        changed = ids - before
        if not changed:
            return False
        unseen = any("-" in i and i not in self._seen_ids for i in changed)
        for item in ids:
            self._seen_ids.pop(item, None)
            self._seen_ids[item] = None
        while len(self._seen_ids) > _SEEN_IDS:
            del self._seen_ids[next(iter(self._seen_ids))]
        return unseen or not changed.isdisjoint(tokens(norm_args))

    def on_prompt(
        self, messages: Sequence[Mapping[str, Any]], *, step: int
    ) -> LoopVerdict | None:
        """Observe the messages of a model call about to start.

        Messages are dicts with ``role`` (``"assistant"`` marks a model
        answer), ``content`` and optionally ``tool_calls`` (OpenAI or
        LangChain shape). Only the prompt's last turns are read, a turn being
        a model answer with the messages after it: when more than
        ``Loops.max_repeated_turns`` of them in a row each equal the turn 1
        to ``Loops.max_cycle_period`` before, the model is being fed its own
        answers and nothing new, and the call should not be made. Answers of
        any length count; turns with a call to an exempt tool never match.
        """
        return self._verdict(self._turns.observe(messages, step), "prompt")

    def on_node(
        self,
        name: str,
        state_digest: str | None,
        *,
        step: int,
        group: Hashable | None = None,
    ) -> LoopVerdict | None:
        """Observe one node visit with a digest of the state it acts on.

        Without a state digest a visit is not judged: a node reached again
        is a loop only if it is reached with the same relevant state. Nor is
        a node listed in ``Loops.exempt_tools``, which holds node names too
        (a node that polls on purpose).

        ``group`` marks visits made side by side: give the parallel branches
        of one node in one graph step (``Send`` branches) one group, any
        hashable value no other step's visits share. The stale rule counts
        a group as one observation, new if any of its visits is, so a lap
        that re-sends many branches counts one stale step, as one branch
        would. The other rules see each visit.
        """
        if state_digest is None or name in self._exempt:
            return None
        key = digest("node", name, state_digest)
        label = f"{name} [state {state_digest[:16]}]"
        hit = self._nodes.observe(key, label, step, group=group)
        return self._verdict(hit, "node")

    def check_ceilings(
        self,
        model_calls: int = 0,
        steps: int = 0,
        elapsed_s: float = 0.0,
    ) -> LoopVerdict | None:
        """Check the task's totals, counting the call or step about to start.

        Each ceiling gives one verdict per task, the first time it is passed,
        except after an escalation: the escalated call (the next model call)
        may still go, but a check after it (a later model call, or a later
        step) that finds a ceiling still passed says ``"stop"``.
        """
        loops = self._loops
        ceilings: tuple[tuple[Rule, float, float | None], ...] = (
            ("max_model_calls", model_calls, loops.max_model_calls),
            ("max_steps", steps, loops.max_steps),
            ("max_wall_s", elapsed_s, loops.max_wall_s),
        )
        passed = [
            (rule, value, limit)
            for rule, value, limit in ceilings
            if limit is not None and value > limit
        ]
        fresh = [c for c in passed if c[0] not in self._ceilings_hit]
        if fresh:
            self._ceilings_hit.add(fresh[0][0])
            verdict = self._verdict(_ceiling_hit(*fresh[0]), "task")
            if verdict is not None and verdict.action == "escalate":
                # Every ceiling passed now waits for the escalated call.
                self._ceilings_hit.update(rule for rule, _, _ in passed)
                self._escalated_at = (model_calls, steps)
            return verdict
        at = self._escalated_at
        if passed and at is not None and (model_calls > at[0] + 1 or steps > at[1]):
            self._escalated_at = None  # stopped: one stop verdict is enough
            return self._verdict(_ceiling_hit(*passed[0]), "task")
        return None

    def _verdict(self, hit: Hit | None, source: Source) -> LoopVerdict | None:
        if hit is None:
            return None
        action = self._loops.action
        if action == "escalate":
            # One escalation per task: if the loop survives it, stop.
            action = "stop" if self._escalated else "escalate"
            self._escalated = True
        verdict = LoopVerdict(
            rule=hit.rule,
            action=action,
            source=source,
            evidence=hit.labels,
            steps=hit.steps,
            repeats=hit.repeats,
            setting=hit.setting,
            limit=hit.limit,
            message=hit.detail,
            tools=hit.tools,
        )
        self._verdicts.append(verdict)
        logger.debug("loop verdict %s (%s): %s", hit.rule, action, hit.detail)
        return verdict


def _ceiling_hit(rule: Rule, value: float, limit: float) -> Hit:
    """The finding of a ceiling passed: what was counted, and the ceiling."""
    if rule == "max_wall_s":
        detail = f"the task ran {value:.2f} s, over max_wall_s of {limit:g} s"
    else:
        what = rule.removeprefix("max_").replace("_", " ")
        detail = f"{what} reached {value:g}, over the ceiling of {limit:g}"
    return Hit(
        rule=rule,
        setting=rule,
        limit=limit,
        repeats=0,
        labels=(),
        steps=(),
        detail=detail,
    )


def _excerpt(text: str) -> str:
    # Slice before normalizing: results can be megabytes long.
    text = normalize_text(text[: 4 * _EXCERPT_CHARS])
    if len(text) <= _EXCERPT_CHARS:
        return text
    return text[: _EXCERPT_CHARS - 3] + "..."
