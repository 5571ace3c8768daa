"""Feeds a task's loop guard from the call path and acts on its verdicts.

The guard itself (:mod:`governor.loops`) only judges. Here its observations
are gathered and its verdicts applied:

* ``stop``: the task is stopped; the next model call (or graph step) raises
  :class:`governor.loops.LoopDetected`, and so does every one after it, a
  call already waiting for a fan-out slot included. The output that
  revealed the loop has been paid for and is returned.
* ``escalate``: the first time, a hint is added to the next LiteLLM call's
  messages (a LangChain model's request cannot be changed from a callback, so
  there it is recorded only); after that the guard answers ``stop``.
* ``record``: a span event and a warning, nothing else.

The span event names the rule, the action and the steps; the evidence (the
repeated outputs or tool calls) goes into it as digests only, unless content
capture is turned on (see :mod:`governor.telemetry._content`).

In a graph, the outputs of one node's parallel branches in one step (Send
branches) are one observation: those of the branch that answers first, every
one of its calls in turn, so an agent loop inside one node is judged as it
would be outside a graph. Parallel visits of one node with one state are one
visit too, so Send branches that ask or answer alike are not mistaken for a
loop, and for the stale rule the visits of one node's branches in one step are
one observation, new if any branch's state is: a lap that sends many branches
again with their earlier inputs counts one stale step, however wide it is. A
step is one step of one graph run: a subgraph's steps count from 1 on each of
its runs, so its runs are told apart by their checkpoint namespace. The
same-call rule counts each prompt's repeats apart, so a fan-out polling loop,
whose branches finish in any order, is stopped like one node asking the same
questions in turn. Each call's prompt is judged on its own (its new tool
results, then its last turns), before the call is made.
"""

from __future__ import annotations

import contextvars
import copy
import hashlib
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from governor.loops import LoopDetected, LoopGuard, LoopVerdict
from governor.loops._guard import _excerpt
from governor.loops._normalize import digest, normalize_args, normalize_result
from governor.loops._rules import Hit
from governor.telemetry._content import capture_content, content_digest

if TYPE_CHECKING:
    from governor._task import Task
    from governor.policies import Loops
    from governor.telemetry import Telemetry
    from governor.telemetry._tracing import AttrValue

__all__ = [
    "LoopWatch",
    "attempt_answered",
    "loop_watch",
    "state_digest",
    "tool_call_output",
]

logger = logging.getLogger(__name__)

EVENT_LOOP = "governor.loop_detected"

_NS_SEP = "|"
"""Separates the graph levels of a branch (a LangGraph checkpoint namespace)."""

_KEY_SEP = "\x00"
"""Separates the parts of a call key (see :func:`_call_key`)."""

# Graph steps, branches and prompts remembered per task; past these the
# oldest are forgotten (a long task's early steps are no longer compared).
_KEPT = 1024

# The answers of the last cascade attempts (calls made while a cascade runs)
# in this thread or asyncio task, each with whether the output rules may
# judge it: not one served from the cache, nor one that ran side by side
# with another call of its task. A digest of the answer names each.
_ATTEMPTS: contextvars.ContextVar[tuple[tuple[bytes, bool], ...]] = (
    contextvars.ContextVar("governor_cascade_attempts", default=())
)
_ATTEMPTS_KEPT = 8
# Refused calls give their count back up to this many times the ceiling.
_GIVE_BACK = 10


class LoopWatch:
    """One task's loop guard, serialized, with the verdicts acted on."""

    def __init__(self, task: Task, telemetry: Telemetry) -> None:
        self.task = task
        self.telemetry = telemetry
        self._guard: LoopGuard | None = None
        self._has_ceilings = _has_ceilings(task.policy.loops)
        self.stopped: LoopDetected | None = None
        self.hint: str | None = None
        self._lock = threading.Lock()
        self._steps = 0
        self._passed = 0  # calls this guard let through (admitted or not yet)
        self._given_back = 0  # of those, refused before sending (see not_sent)
        self._seen: dict[tuple[str, bytes, bytes], int] = {}
        # The last judged result's (step, branch, answer) and its turn label.
        self._last_turn: tuple[_Step, str | None, bytes, int] | None = None
        self._turns = 0
        # Per node: the step of its last visit, task.model_calls when it was
        # last visited in an earlier step, and at its last visit.
        self._node_calls: dict[str, tuple[_Step, int | None, int]] = {}
        # The branch whose outputs are judged, per node and step of a graph run.
        self._leads: dict[tuple[_Step, str], str | None] = {}
        self._seen_visits: dict[tuple[_Step, str, str | None], None] = {}
        self._step_results: dict[tuple[_Step, str, str, bytes], str] = {}
        # Calls of each branch answered so far, and the calls side by side
        # (the prompt and answer a branch's n-th call brought in one step).
        self._branch_calls: dict[str, int] = {}
        self._side_by_side: dict[tuple[_Step, int, str, bytes], None] = {}

    @property
    def guard(self) -> LoopGuard:
        """The task's guard, made when first needed (most calls need none)."""
        if self._guard is None:
            self._guard = _TaskGuard(self.task.policy.loops)
        return self._guard

    def before_call(
        self,
        messages: Sequence[Mapping[str, Any]],
        step: int,
        branch: str | None = None,
    ) -> str:
        """Judge the prompt's tool results and last turns, and the ceilings.

        ``branch`` names the graph branch making the call: a LangGraph
        checkpoint namespace, one per node run, whose levels ``|`` separates
        (the parent graph's runs first). Raises if the task is stopped, so
        the call is not made. Returns the call's key for :meth:`after_call`
        and :meth:`after_branch_call`: a digest of the prompt, and in a
        graph the branch and how many of its calls were answered before.
        """
        self.raise_if_stopped()
        with self._lock:
            flagged = False
            at = _step_of(step, branch)
            for name, args, result, answer in self._new_tool_results(messages):
                if not self._first_in_step(at, branch, name, args, result):
                    continue
                verdict = self.guard.on_tool_call(
                    name, args, result, step=step, turn=self._turn(at, branch, answer)
                )
                flagged = flagged or verdict is not None
                self._act(verdict)
            # A loop the tool results showed is not reported twice.
            if not flagged:
                self._act(self.guard.on_prompt(messages, step=step))
            if self._has_ceilings:
                # Calls past this check run side by side before any of them
                # is admitted (parallel branches): they count from here.
                calls = max(self.task.model_calls, self._passed) + 1
                self._act(
                    self.guard.check_ceilings(
                        model_calls=calls,
                        steps=self._steps,
                        elapsed_s=self.task.elapsed_s(),
                    )
                )
            if self.stopped is None:
                self._passed += 1
        self.raise_if_stopped()
        key = prompt_digest(messages)
        if branch is None:
            return key
        with self._lock:
            answered = self._branch_calls.get(branch, 0)
        return _call_key(key, branch, answered)

    def not_sent(self) -> None:
        """Give back the count of a call that passed :meth:`before_call` but
        was refused before it was sent (no fan-out slot, a budget): the
        ``max_model_calls`` ceiling counts calls sent and cache hits only.

        Only for ten times as many refusals as the ceiling allows calls:
        past that, a task that keeps retrying refused calls counts them
        again, so the ceiling still stops a retry loop that never gets a
        call through.
        """
        limit = self.task.policy.loops.max_model_calls
        with self._lock:
            if limit is not None and self._given_back >= _GIVE_BACK * limit:
                return
            self._given_back += 1
            self._passed = max(self._passed - 1, 0)

    def after_call(
        self,
        text: str | None,
        step: int,
        node: str | None,
        prompt_key: str | None = None,
        outputs: bool = True,
    ) -> None:
        """Judge one model output.

        With ``outputs`` False only the same-call rule sees it: a cascade
        attempt's answer, which its checks may yet reject (the run's final
        answer comes through :meth:`after_answer`).

        In a graph only the outputs of one branch per node and step are
        compared, every one of them (see the module's description). An
        answer that calls tools comes as :func:`tool_call_output` made it:
        only the same-call rule compares it, by its text and its calls. A
        call of a graph branch (a key from :meth:`before_call` naming one)
        is judged by that rule in :meth:`after_branch_call`, which the
        adapter calls for each, as no call of a fan-out may be left out.
        """
        if not text:
            return
        if not outputs:
            attempt_answered(text, judged=True)
        key, branch, _ = _split_key(prompt_key)
        called = _called_tools(text)
        loops = self.task.policy.loops
        short = len(text.split()) < loops.min_output_words
        with self._lock:
            if node is not None:
                lead = (_step_of(step, branch), node)
                if self._leads.setdefault(lead, branch) != branch:
                    return  # a parallel branch's: one observation per step
                _forget_oldest(self._leads)
            if key is not None and branch is None:  # a branch's: after_branch_call
                self._judge_call(key, text, step, called)
            if called is not None or not outputs:
                return
            # A short answer is no near-copy, but it may end a run of them.
            self._act(self.guard.on_model_output(text, step=step, short=short))

    def after_answer(self, text: str | None, step: int) -> None:
        """Judge the answer a cascade run returned by the output rules.

        Its attempts' answers were left to the same-call rule: a rejected
        one is never returned or fed back, and a run of them (the same
        refusal from the cheap tier, request after request) is no loop.
        As for a single call, the answer is not judged when its attempt was
        served from the cache (see :meth:`after_hit`) or ran side by side
        with another call of the task (parallel runs are fan-out): the
        attempt's own call, in this thread or asyncio task, said which.
        """
        if not text or not _judged_attempt(text):
            return
        short = len(text.split()) < self.task.policy.loops.min_output_words
        with self._lock:
            self._act(self.guard.on_model_output(text, step=step, short=short))

    def after_branch_call(
        self, text: str | None, step: int, prompt_key: str | None
    ) -> None:
        """Judge a graph branch's answered call by the same-call rule.

        Called for every answered call of a branch, including those that
        ran beside another call of the task (whose outputs the other rules
        leave out), after :meth:`after_call`. Parallel calls that asked the
        same and got the same answer count once: Send branches sampling one
        question in one step, or a node's ``asyncio.gather``, told apart
        from the calls a node makes in turn by how many of its branch's
        calls were answered when each started.
        """
        key, branch, answered = _split_key(prompt_key)
        if key is None or branch is None:
            return
        with self._lock:
            self._branch_calls[branch] = self._branch_calls.pop(branch, 0) + 1
            _forget_oldest(self._branch_calls)
            if not text:
                return
            moment = (_step_of(step, branch), answered, key, _content_digest(text))
            if moment in self._side_by_side:
                return
            self._side_by_side[moment] = None
            _forget_oldest(self._side_by_side)
            self._judge_call(key, text, step, _called_tools(text))

    def _judge_call(
        self,
        key: str,
        text: str,
        step: int,
        called: tuple[frozenset[str], str] | None,
    ) -> None:
        """The same-call rule on one call; a call to an exempt tool (a poll)
        may be asked for again. The caller holds the lock."""
        if called is None:
            self._act(self.guard.on_call(key, text, step=step))
            return
        tools, answer = called
        if tools.isdisjoint(self.task.policy.loops.exempt_tools):
            self._act(self.guard.on_call(key, answer, step=step))

    def after_hit(self, text: str | None, step: int, prompt_key: str | None) -> None:
        """Judge a call answered from the cache: the same call made again.

        Only the ``same_call`` rule sees it; the output rules compare a new
        answer with earlier ones, and a served answer is an earlier one.
        """
        key, _, _ = _split_key(prompt_key)
        if not text or key is None:
            return
        attempt_answered(text, judged=False)
        with self._lock:
            self._act(self.guard.on_call(key, text, step=step))

    def on_step(
        self, node: str, digest: str | None, step: int, branch: str | None = None
    ) -> None:
        """Judge a graph step: the node with its relevant state, and max_steps.

        ``branch`` is the step's own branch (see :meth:`before_call`), which
        tells the runs of a subgraph apart. A node visited again with no
        model call made since its last visit (a node that polls a job and
        loops back to itself) has cost nothing in between and is not judged;
        ``max_steps`` and ``max_wall_s`` still bound it, and so does
        LangGraph's recursion limit. The parallel runs of one node in one
        step (Send branches) are each judged against the node's visit in an
        earlier step, not against one another, whichever calls have ended.
        """
        self.raise_if_stopped()
        with self._lock:
            self._steps += 1
            calls = self.task.model_calls
            at = _step_of(step, branch)
            free = self._free_visit(node, at, calls)
            # Parallel runs of one node on one state in one step (Send
            # branches sampling the same question) are one visit, not a loop.
            # Its other runs (Send branches on other states) are one
            # observation for the stale rule: a lap that sends many branches
            # again is one stale step, however wide.
            visit = (at, node, digest)
            if not free and visit not in self._seen_visits:
                self._seen_visits[visit] = None
                _forget_oldest(self._seen_visits)
                verdict = self.guard.on_node(node, digest, step=step, group=(at, node))
                self._act(verdict)
            self._act(
                self.guard.check_ceilings(
                    model_calls=self.task.model_calls,
                    steps=self._steps,
                    elapsed_s=self.task.elapsed_s(),
                )
            )
        self.raise_if_stopped()

    def _free_visit(self, node: str, at: _Step, calls: int) -> bool:
        """Whether no model call was made since the node's visit in an
        earlier step; the caller holds the lock."""
        last = self._node_calls.get(node)
        if last is None:
            before = None
        elif last[0] == at:  # a parallel branch: as its step's first visit
            before = last[1]
        else:
            before = last[2]
        self._node_calls[node] = (at, before, calls)
        return before == calls

    def take_hint(self) -> str | None:
        """The escalation hint for the next call, once."""
        with self._lock:
            hint, self.hint = self.hint, None
            return hint

    def raise_if_stopped(self) -> None:
        """Raise the task's LoopDetected again if the guard stopped it.

        A copy of the same error each time, with no traceback and none of
        the notes added to an earlier one: re-raising one object would
        lengthen its traceback (and keep those frames alive), and pile up
        the notes a cascade adds, for every call a caller makes after
        catching it.
        """
        if self.stopped is not None:
            fresh = copy.copy(self.stopped)
            fresh.__dict__.pop("__notes__", None)
            raise fresh.with_traceback(None)

    def _act(self, verdict: LoopVerdict | None) -> None:
        if verdict is None:
            return
        self.telemetry.event(self.task.span, EVENT_LOOP, _event_attributes(verdict))
        logger.warning(
            "task %s: %s (%s)", self.task.id, verdict.message, verdict.action
        )
        if verdict.action == "stop" and self.stopped is None:
            self.task.stop_reason = self.task.stop_reason or LoopDetected.code
            self.stopped = verdict.to_error(
                task_id=self.task.id,
                spent_usd=self.task.cost_usd,
                spent_tokens=self.task.tokens,
                calls_in_flight=self.task.inflight,
            )
        elif verdict.action == "escalate":
            self.hint = verdict.hint

    def _first_in_step(
        self, step: _Step, branch: str | None, name: str, args: Any, result: str
    ) -> bool:
        """Whether no other branch of this step brought the same result.

        Send branches that sample one question each call the same tool and
        get the same answer side by side; that is one result, not a repeat.
        One branch bringing it again (an agent loop inside one node) is.
        """
        if branch is None:
            return True
        key = (
            step,
            name,
            json.dumps(args, sort_keys=True, default=str),
            _content_digest(result),
        )
        first = self._step_results.setdefault(key, branch)
        return first == branch

    def _turn(self, step: _Step, branch: str | None, answer: bytes) -> int:
        """A label for the model answer that asked for a tool result.

        Results of one answer share a label wherever the answer sits in the
        prompt, so a trimmed history, whose answers keep the same places,
        does not make calls one after another look side by side. Results
        that parallel branches of one graph step bring in turn share one
        too: those calls were made side by side.
        """
        last = self._last_turn
        if last is not None:
            last_step, last_branch, last_answer, label = last
            side_by_side = (
                branch is not None
                and last_branch is not None
                and branch != last_branch
                and step == last_step
            )
            if answer == last_answer or side_by_side:
                self._last_turn = (step, branch, answer, label)
                return label
        self._turns += 1
        self._last_turn = (step, branch, answer, self._turns)
        return self._turns

    def _new_tool_results(
        self, messages: Sequence[Mapping[str, Any]]
    ) -> list[tuple[str, Any, str, bytes]]:
        """The tool results of a prompt that no earlier prompt carried.

        Each comes with a digest of the model answer that called the tool
        (its text and calls, ids included), so calls made side by side in
        one answer can be told apart from calls made one after another.

        A result is known by its call id, its call (tool and arguments) and
        a digest of its content, not by its place in the prompt, so a prompt
        trimmed to its last messages does not make old results look new. A
        tool message without a call id answers the call of the same rank in
        the answer before it. Providers and fakes may reuse call ids, so a
        result that comes back with the same id, call and content is new
        when the prompt holds more copies of it than any prompt before.
        """
        if not any(m.get("role") == "tool" for m in messages):
            return []
        calls: dict[str, _Called] = {}
        pending: list[_Called] = []  # the calls of the last answer, in order
        copies: dict[tuple[str, bytes, bytes], int] = {}
        answers: dict[int, bytes] = {}
        found = []
        for message in messages:
            if message.get("role") != "tool":
                pending = self._answer_calls(message, calls)
                continue
            ident = message.get("tool_call_id")
            if ident:
                called = calls.get(str(ident))
            else:
                called = pending.pop(0) if pending else None
            content = _text(message.get("content"))
            # Count every copy, including those whose call was trimmed away.
            key = (str(ident or ""), _call_digest(called), _content_digest(content))
            if self._is_new(key, copies) and called is not None:
                name, args, answer = called
                if id(answer) not in answers:  # hashed only when needed
                    answers[id(answer)] = _answer_digest(answer)
                found.append((name, args, content, answers[id(answer)]))
        return found

    @staticmethod
    def _answer_calls(
        message: Mapping[str, Any], calls: dict[str, _Called]
    ) -> list[_Called]:
        """The tool calls a message asks for, in order; each known by its id."""
        asked = message.get("tool_calls") or ()
        if not asked:
            return []
        found = []
        for call in asked:
            ident, name, args = _tool_call(call)
            called = (name, args, message)
            found.append(called)
            if ident:
                calls[str(ident)] = called
        return found

    def _is_new(
        self,
        key: tuple[str, bytes, bytes],
        copies: dict[tuple[str, bytes, bytes], int],
    ) -> bool:
        """Count one copy of a result in a prompt; True if no prompt had as many."""
        copies[key] = copies.get(key, 0) + 1
        if copies[key] <= self._seen.get(key, 0):
            return False
        self._seen[key] = copies[key]
        return True


class _TaskGuard(LoopGuard):
    """A governed task's guard, whose same-call rule counts each prompt apart.

    The same prompt answered the same way more than ``max_identical_calls``
    times is a loop when no call between those brought anything new: calls
    of other prompts that repeat their own earlier answers (a poll of three
    jobs, asked in turn or by parallel branches finishing in any order) do
    not end the run, while a prompt not asked before, or a known prompt
    answered otherwise, ends every run. One prompt asked again and again is
    counted as before: the 12th identical call in a row is the last.
    """

    def __init__(self, loops: Loops) -> None:
        super().__init__(loops)
        self._answers: dict[str, bytes] = {}  # each prompt's last answer
        self._repeats: dict[str, list[int]] = {}  # steps of each prompt's run

    def on_call(self, prompt_key: str, text: str, *, step: int) -> LoopVerdict | None:
        """Observe one model call: a digest of its prompt and its answer."""
        limit = self.loops.max_identical_calls
        if limit is None:
            return None
        answer = normalize_result(text, mask_volatile=self.loops.mask_volatile)
        said = digest("call", answer)
        if self._answers.pop(prompt_key, None) != said:
            self._repeats.clear()  # something new: every run starts again
        self._answers[prompt_key] = said  # the newest last
        _forget_oldest(self._answers)
        steps = self._repeats.setdefault(prompt_key, [])
        steps.append(step)
        if len(steps) <= limit + 1:
            return None
        alone = len(self._repeats) == 1
        self._repeats.clear()
        label = _excerpt(answer)
        if alone:
            between = "in a row"
        else:
            between = (
                "with only calls between them that repeated an earlier call "
                "(its prompt and its answer)"
            )
        hit = Hit(
            rule="same_call",
            setting="max_identical_calls",
            limit=limit,
            repeats=len(steps) - 1,
            labels=(label,),
            steps=tuple(steps),
            detail=(
                f"the same prompt got the same answer ({label}) {len(steps)} "
                f"times {between}, so the next call cannot learn anything new"
            ),
        )
        return self._verdict(hit, "output")


# A graph run's step: the graph run (its branch's namespace less the branch's
# own part, "" for the top graph; None outside a graph) and the step number.
_Step = tuple[str | None, int]


def _step_of(step: int, branch: str | None) -> _Step:
    """The step of the graph run ``branch`` runs in (see :data:`_Step`)."""
    if branch is None:
        return None, step
    return branch.rpartition(_NS_SEP)[0], step


def _call_key(prompt: str, branch: str, answered: int) -> str:
    """A graph call's key: its prompt's digest, and its branch with the
    number of the branch's calls answered before it started."""
    return _KEY_SEP.join((prompt, str(answered), branch))


def _split_key(key: str | None) -> tuple[str | None, str | None, int]:
    """The prompt digest, branch and answered count of a call key."""
    if key is None or _KEY_SEP not in key:
        return key, None, 0
    prompt, answered, branch = key.split(_KEY_SEP, 2)
    return prompt, branch, int(answered)


def attempt_answered(text: str | None, *, judged: bool) -> None:
    """Note a cascade attempt's answer for :meth:`LoopWatch.after_answer`.

    ``judged`` is False for an answer served from the cache or made side by
    side with another call of the task; the newest note of an answer wins.
    """
    if not text:
        return
    said = _content_digest(text)
    kept = [note for note in _ATTEMPTS.get() if note[0] != said]
    kept.append((said, judged))
    _ATTEMPTS.set(tuple(kept[-_ATTEMPTS_KEPT:]))


def _judged_attempt(text: str) -> bool:
    """Whether the output rules judge this cascade answer; an answer whose
    attempt left no note (made elsewhere) is judged."""
    said = _content_digest(text)
    for note, judged in _ATTEMPTS.get():
        if note == said:
            return judged
    return True


def _forget_oldest(kept: dict[Any, Any]) -> None:
    """Keep a dict to its newest :data:`_KEPT` entries."""
    while len(kept) > _KEPT:
        del kept[next(iter(kept))]


_CALLS_MARK = "\x00tool calls\x00"


def tool_call_output(text: str | None, calls: Sequence[Any]) -> str:
    """The output to give the loop guard for an answer that calls tools.

    Only the same-call rule reads it: the same prompt answered with the same
    text and the same calls (names and normalized arguments, not ids) again
    and again is a loop. The output rules judge text answers alone, since
    the same preamble before new calls is work. ``calls`` are tool calls in
    the OpenAI or LangChain shape, as mappings or SDK objects.
    """
    named = []
    for call in calls:
        _, name, args = _tool_call(call)
        if not isinstance(args, Mapping | str):
            args = str(args)
        named.append([name, normalize_args(args)])
    return _CALLS_MARK + json.dumps([text or "", named])


def _called_tools(text: str) -> tuple[frozenset[str], str] | None:
    """The tools a :func:`tool_call_output` names, and the answer as it reads
    (``text name(args) ...``); None for a text answer."""
    if not text.startswith(_CALLS_MARK):
        return None
    said, named = json.loads(text[len(_CALLS_MARK) :])
    calls = [f"{name}({args})" for name, args in named]
    return frozenset(str(name) for name, _ in named), " ".join([said, *calls]).strip()


def _event_attributes(verdict: LoopVerdict) -> dict[str, AttrValue]:
    """The loop event's attributes: no output or tool text unless opted in.

    The evidence quotes model outputs and tool calls, which the GenAI
    semantic conventions keep out of telemetry by default: each item is
    shown by a short digest, so two events can be compared. With
    ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`` the text
    comes too, as ``evidence``.
    """
    attributes: dict[str, AttrValue] = {
        "rule": verdict.rule,
        "action": verdict.action,
        "steps": ",".join(str(step) for step in verdict.steps),
        "evidence_count": len(verdict.evidence),
        "evidence_digests": tuple(content_digest(e) for e in verdict.evidence),
    }
    if capture_content():
        attributes["evidence"] = "; ".join(verdict.evidence)
    return attributes


def _has_ceilings(loops: Loops) -> bool:
    return (
        loops.max_model_calls is not None
        or loops.max_steps is not None
        or loops.max_wall_s is not None
    )


def nothing_to_judge(loops: Loops, messages: Sequence[Mapping[str, Any]]) -> bool:
    """True when a new task's first call gives its guard nothing to judge.

    A fresh watch's ``before_call`` judges the prompt's tool results, its
    repeated assistant turns (two answers at least) and the ceilings; with
    none of them it does nothing, so a one-call task need not make a watch.
    """
    if _has_ceilings(loops):
        return False
    answers = 0
    for message in messages:
        role = message.get("role")
        if role == "tool":
            return False
        if role == "assistant" and loops.max_repeated_turns is not None:
            answers += 1
            if answers >= 2:
                return False
    return True


def loop_watch(task: Task, telemetry: Telemetry) -> LoopWatch:
    """The task's watch, made on first use."""
    watch = task.extras.get("loop_watch")
    if watch is None:
        watch = task.extras.setdefault("loop_watch", LoopWatch(task, telemetry))
    return watch  # type: ignore[no-any-return]


def prompt_digest(messages: Sequence[Mapping[str, Any]]) -> str:
    """A digest of what a prompt says: roles, texts and tool calls, no ids."""
    h = hashlib.blake2b(digest_size=16)
    for message in messages:
        content = message.get("content")
        if isinstance(content, str) and not message.get("tool_calls"):
            part = f"{message.get('role')}\x1f{content}\x1e"  # the usual case
        else:
            part = json.dumps(_gist(message), default=str) + "\x1e"
        h.update(part.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def state_digest(inputs: Any) -> str | None:
    """A digest of a node's input state, leaving out the growing message list.

    A state with other fields also counts its newest message: a ReAct graph
    with a fixed ``question`` beside ``messages`` brings new tool results
    each lap, and its state is new each lap although the fields are not.
    """
    if not isinstance(inputs, Mapping):
        return None
    relevant = {k: v for k, v in inputs.items() if k != "messages"}
    if not relevant:
        return None
    messages = inputs.get("messages")
    is_list = isinstance(messages, Sequence) and not isinstance(messages, str | bytes)
    if is_list and messages:
        relevant["messages"] = _gist(messages[-1])
    text = json.dumps(relevant, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _gist(message: Any) -> Any:
    """What a message says, without the ids that differ on every run."""
    if isinstance(message, Mapping):
        role, content = message.get("role"), message.get("content")
        calls = message.get("tool_calls") or []
    else:
        role = getattr(message, "type", type(message).__name__)
        content = getattr(message, "content", str(message))
        calls = getattr(message, "tool_calls", None) or []
    named = [_tool_call(call)[1:] for call in calls]
    return [role, _text(content), json.dumps(named, sort_keys=True, default=str)]


# A tool call with the answer that made it: name, arguments, answer message.
_Called = tuple[str, Any, Mapping[str, Any]]


def _answer_digest(message: Mapping[str, Any]) -> bytes:
    """A digest of a model answer: its text and its calls, ids included."""
    calls = [_tool_call(call) for call in message.get("tool_calls") or ()]
    text = json.dumps([_text(message.get("content")), calls], default=str)
    return _content_digest(text)


def _call_digest(called: _Called | None) -> bytes:
    if called is None:
        return b""
    return _content_digest(json.dumps(called[:2], sort_keys=True, default=str))


def _tool_call(call: Any) -> tuple[str | None, str, Any]:
    if not isinstance(call, Mapping):  # a provider SDK's tool call object
        function = getattr(call, "function", None)
        if function is None:
            return None, "", None
        name = str(getattr(function, "name", "") or "")
        return getattr(call, "id", None), name, getattr(function, "arguments", None)
    function = call.get("function")
    if isinstance(function, Mapping):  # OpenAI shape
        return call.get("id"), str(function.get("name", "")), function.get("arguments")
    return call.get("id"), str(call.get("name", "")), call.get("args")  # LangChain


def _content_digest(content: str) -> bytes:
    data = content.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=16).digest()


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return json.dumps(content, default=str)
