"""Feeds a task's loop guard from the call path and acts on its verdicts.

The guard itself (:mod:`governor.loops`) only judges. Here its observations
are gathered and its verdicts applied:

* ``stop``: the task is stopped; the next model call (or graph step) raises
  :class:`governor.loops.LoopDetected`, and so does every one after it. The
  output that revealed the loop has been paid for and is returned.
* ``escalate``: the first time, a hint is added to the next LiteLLM call's
  messages (a LangChain model's request cannot be changed from a callback, so
  there it is recorded only); after that the guard answers ``stop``.
* ``record``: a span event and a warning, nothing else.

The span event names the rule, the action and the steps; the evidence (the
repeated outputs or tool calls) goes into it as digests only, unless content
capture is turned on (see :mod:`governor.telemetry._content`).

Parallel calls of one graph step are one observation (the first), and so are
parallel visits of one node with one state, so Send branches that ask or
answer alike are not mistaken for a loop. Each call's prompt is judged on its
own (its new tool results, then its last turns), before the call is made.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from governor.loops import LoopDetected, LoopGuard, LoopVerdict
from governor.loops._normalize import normalize_args
from governor.telemetry._content import capture_content, content_digest

if TYPE_CHECKING:
    from governor._task import Task
    from governor.policies import Loops
    from governor.telemetry import Telemetry
    from governor.telemetry._tracing import AttrValue

__all__ = ["LoopWatch", "loop_watch", "state_digest", "tool_call_output"]

logger = logging.getLogger(__name__)

EVENT_LOOP = "governor.loop_detected"


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
        self._seen: dict[tuple[str, bytes, bytes], int] = {}
        # The last judged result's (step, branch, answer) and its turn label.
        self._last_turn: tuple[int, str | None, bytes, int] | None = None
        self._turns = 0
        # task.model_calls when each node was last visited.
        self._node_calls: dict[str, int] = {}
        self._seen_step_nodes: set[tuple[int, str]] = set()
        self._seen_visits: set[tuple[int, str, str | None]] = set()
        self._step_results: dict[tuple[int, str, str, bytes], str] = {}

    @property
    def guard(self) -> LoopGuard:
        """The task's guard, made when first needed (most calls need none)."""
        if self._guard is None:
            self._guard = LoopGuard(self.task.policy.loops)
        return self._guard

    def before_call(
        self,
        messages: Sequence[Mapping[str, Any]],
        step: int,
        branch: str | None = None,
    ) -> str:
        """Judge the prompt's tool results and last turns, and the ceilings.

        Raises if the task is stopped, so the call is not made. Returns a
        digest of the prompt, for :meth:`after_call`.
        """
        self.raise_if_stopped()
        with self._lock:
            flagged = False
            for name, args, result, answer in self._new_tool_results(messages):
                if not self._first_in_step(step, branch, name, args, result):
                    continue
                verdict = self.guard.on_tool_call(
                    name, args, result, step=step, turn=self._turn(step, branch, answer)
                )
                flagged = flagged or verdict is not None
                self._act(verdict)
            # A loop the tool results showed is not reported twice.
            if not flagged:
                self._act(self.guard.on_prompt(messages, step=step))
            if self._has_ceilings:
                self._act(
                    self.guard.check_ceilings(
                        model_calls=self.task.model_calls + 1,
                        steps=self._steps,
                        elapsed_s=self.task.elapsed_s(),
                    )
                )
        self.raise_if_stopped()
        return prompt_digest(messages)

    def after_call(
        self,
        text: str | None,
        step: int,
        node: str | None,
        prompt_key: str | None = None,
    ) -> None:
        """Judge one model output (the first of its step when in a graph).

        An answer that calls tools comes as :func:`tool_call_output` made it:
        only the same-call rule compares it, by its text and its calls.
        """
        if not text:
            return
        called = _called_tools(text)
        loops = self.task.policy.loops
        short = len(text.split()) < loops.min_output_words
        with self._lock:
            if node is not None:
                if (step, node) in self._seen_step_nodes:
                    return
                self._seen_step_nodes.add((step, node))
            if called is not None:
                tools, answer = called
                # A call to an exempt tool (a poll) may be asked for again.
                if prompt_key is not None and tools.isdisjoint(loops.exempt_tools):
                    self._act(self.guard.on_call(prompt_key, answer, step=step))
                return
            if prompt_key is not None:
                self._act(self.guard.on_call(prompt_key, text, step=step))
            # A short answer is no near-copy, but it may end a run of them.
            self._act(self.guard.on_model_output(text, step=step, short=short))

    def after_hit(self, text: str | None, step: int, prompt_key: str | None) -> None:
        """Judge a call answered from the cache: the same call made again.

        Only the ``same_call`` rule sees it; the output rules compare a new
        answer with earlier ones, and a served answer is an earlier one.
        """
        if not text or prompt_key is None:
            return
        with self._lock:
            self._act(self.guard.on_call(prompt_key, text, step=step))

    def on_step(self, node: str, digest: str | None, step: int) -> None:
        """Judge a graph step: the node with its relevant state, and max_steps.

        A node visited again with no model call made since its last visit
        (a node that polls a job and loops back to itself) has cost nothing
        in between and is not judged; ``max_steps`` and ``max_wall_s`` still
        bound it, and so does LangGraph's recursion limit.
        """
        self.raise_if_stopped()
        with self._lock:
            self._steps += 1
            calls = self.task.model_calls
            free = self._node_calls.get(node) == calls
            self._node_calls[node] = calls
            # Parallel runs of one node on one state in one step (Send
            # branches sampling the same question) are one visit, not a loop.
            if not free and (step, node, digest) not in self._seen_visits:
                self._seen_visits.add((step, node, digest))
                self._act(self.guard.on_node(node, digest, step=step))
            self._act(
                self.guard.check_ceilings(
                    model_calls=self.task.model_calls,
                    steps=self._steps,
                    elapsed_s=self.task.elapsed_s(),
                )
            )
        self.raise_if_stopped()

    def take_hint(self) -> str | None:
        """The escalation hint for the next call, once."""
        with self._lock:
            hint, self.hint = self.hint, None
            return hint

    def raise_if_stopped(self) -> None:
        """Raise the task's LoopDetected again if the guard stopped it.

        The same error each time, with a fresh traceback: re-raising one
        object would lengthen its traceback (and keep those frames alive)
        for every call a caller makes after catching it.
        """
        if self.stopped is not None:
            raise self.stopped.with_traceback(None)

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
            )
        elif verdict.action == "escalate":
            self.hint = verdict.hint

    def _first_in_step(
        self, step: int, branch: str | None, name: str, args: Any, result: str
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

    def _turn(self, step: int, branch: str | None, answer: bytes) -> int:
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
