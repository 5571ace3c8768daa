"""The repetition rules, each O(window) or better per observation.

An *observation* is one tool call with its result, or one node visit with its
state digest, reduced to a digest. A channel keeps the recent digests of one
kind and runs three rules over them:

- repeat: the digest equals the one before, more than ``max_repeats`` times;
- cycle: for a period k in 2..max_cycle_period, each digest equals the one k
  back for more than ``max_cycle_repeats`` full laps;
- stale: more than ``max_stale_steps`` digests in a row each already occur in
  the window, so nothing new has been learnt. Observations made side by side
  (one group: the parallel branches of one graph step) count as one, which
  is new if any of them is.

Two more rules judge what is left when the arguments or the outputs change
in form but nothing comes of it:

- same result: a tool returns the result of the call before more than
  ``max_same_result_repeats`` times in a row, whatever the arguments (a search
  answering "no results" to query after query), or tools taking turns each
  keep returning their same result that often; a result that names a new
  item (see :class:`governor.loops.LoopGuard`) is not the same result;
- repeated turns: a prompt ends in turns (a model answer with the messages
  after it) that each equal the turn k before, more than
  ``max_repeated_turns`` of them, for a k in 1..max_cycle_period: the model is
  being fed its own identical answers, however short.

Model outputs are judged apart: an output is a near-copy of an earlier one
when their word shingles are similar enough *and* few of its words changed,
at most one in ``near_duplicate_words_per_change`` (at least one). The rule
fires when more than ``max_near_duplicate_outputs`` outputs in a row, and at
least k, are each a near-copy of the output k before, for a lag k in
1..max_cycle_period: lag 1 is a model repeating itself, a longer lag agents
taking turns in a cycle (writer, critic, writer, critic ...). A run is made
of outputs that follow one another: an output too short to judge ends it,
unless the cycle repeats that short output too. The second test keeps
templated outputs that carry new content (a page summary with its own
counts, one edit applied to a new name each time) apart from a model that
repeats itself, whose outputs differ in whitespace, punctuation or a counter
only.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from governor.loops._normalize import (
    changed_words,
    digest,
    normalize_args,
    normalize_result,
    normalize_text,
    shingles,
    words,
)
from governor.policies._loops import Loops

__all__ = ["Channel", "Hit", "OutputRun", "PromptTurns", "ResultRun", "Rule"]

Rule = Literal[
    "repeat",
    "cycle",
    "stale",
    "same_result",
    "near_duplicate",
    "repeated_turns",
    "same_call",
    "max_model_calls",
    "max_steps",
    "max_wall_s",
]


@dataclass(frozen=True, slots=True)
class Hit:
    """A rule that fired, before the guard turns it into a verdict."""

    rule: Rule
    setting: str
    limit: float
    repeats: int
    labels: tuple[str, ...]
    steps: tuple[int, ...]
    detail: str
    tools: tuple[str, ...] = ()  # the tools whose calls the loop repeats


class Channel:
    """The recent observations of one kind and the rules run over them."""

    def __init__(self, loops: Loops) -> None:
        self._loops = loops
        self._max_period = loops.max_cycle_period
        size = max(loops.window_steps, self._max_period + 1)
        self._digests: deque[bytes] = deque(maxlen=size)
        self._labels: deque[str] = deque(maxlen=size)
        self._steps: deque[int] = deque(maxlen=size)
        self._names: deque[str] = deque(maxlen=size)
        self._counts: dict[bytes, int] = {}
        # _runs[k] = how many observations in a row equalled the one k back.
        self._runs = [0] * (self._max_period + 1)
        # Stale observations in a row (a group counting once), and how many
        # observations that run covers.
        self._stale = 0
        self._stale_span = 0
        # The groups of the recent observations, oldest first.
        self._groups: dict[Hashable, None] = {}
        self._groups_kept = size

    def observe(
        self,
        key: bytes,
        label: str,
        step: int,
        *,
        tool: str = "",
        group: Hashable | None = None,
    ) -> Hit | None:
        """Add one observation and return the first rule it makes fire.

        ``tool``: the tool called, for a tool call; a hit names the tools.
        ``group``: observations made side by side share one (the parallel
        branches of one graph step): for the stale rule they are one
        observation, new if any of them is, so a wider fan-out does not
        make a lap look staler.
        """
        self._update_runs(key)
        self._update_stale(self._counts.get(key, 0) > 0, group)
        self._append(key, label, step)
        self._names.append(tool)
        hit = self._repeat() or self._cycle() or self._stale_hit()
        if hit is not None:
            self.reset_streaks()
        return hit

    def reset_streaks(self) -> None:
        """Forget the current streaks so the next hit needs a fresh one."""
        self._runs = [0] * (self._max_period + 1)
        self._stale = 0
        self._stale_span = 0

    def _update_stale(self, seen: bool, group: Hashable | None) -> None:
        """Count one observation for the stale rule (see :meth:`observe`).

        The first observation of a group counts as one observation would; a
        later one adds nothing to the run when it too was seen before, and
        ends the run when it is new.
        """
        if group is not None and group in self._groups:
            if not seen:
                self._stale = 0
        else:
            self._stale = self._stale + 1 if seen else 0
            if group is not None:
                self._groups[group] = None
                while len(self._groups) > self._groups_kept:
                    del self._groups[next(iter(self._groups))]
        self._stale_span = self._stale_span + 1 if self._stale else 0

    def _update_runs(self, key: bytes) -> None:
        n = len(self._digests)
        for k in range(1, self._max_period + 1):
            same = k <= n and self._digests[n - k] == key
            self._runs[k] = self._runs[k] + 1 if same else 0

    def _append(self, key: bytes, label: str, step: int) -> None:
        if len(self._digests) == self._digests.maxlen:
            old = self._digests[0]
            left = self._counts[old] - 1
            if left:
                self._counts[old] = left
            else:
                del self._counts[old]
        self._digests.append(key)
        self._labels.append(label)
        self._steps.append(step)
        self._counts[key] = self._counts.get(key, 0) + 1

    def _tail(self, n: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
        n = min(n, len(self._digests))
        labels = tuple(self._labels)[-n:]
        steps = tuple(self._steps)[-n:]
        return labels, steps

    def _tools(self, n: int) -> tuple[str, ...]:
        """The tools of the last ``n`` observations, each once, oldest first."""
        names = tuple(self._names)[-min(n, len(self._names)) :]
        return tuple(dict.fromkeys(name for name in names if name))

    def _repeat(self) -> Hit | None:
        limit = self._loops.max_repeats
        run = self._runs[1]
        if limit is None or run <= limit:
            return None
        labels, steps = self._tail(run + 1)
        return Hit(
            rule="repeat",
            setting="max_repeats",
            limit=limit,
            repeats=run,
            labels=labels[-1:],
            steps=steps,
            detail=(
                f"{labels[-1]} was made {run + 1} times in a row, the same "
                f"each time ({run} repeats)"
            ),
            tools=self._tools(1),
        )

    def _cycle(self) -> Hit | None:
        limit = self._loops.max_cycle_repeats
        if limit is None:
            return None
        for k in range(2, self._max_period + 1):
            laps = self._runs[k] // k
            if laps > limit and self._is_primitive(k):
                return self._cycle_hit(k, laps, limit)
        return None

    def _is_primitive(self, k: int) -> bool:
        # A lap made of one item repeated is the repeat rule's business.
        lap = [self._digests[-i] for i in range(1, k + 1)]
        return len(set(lap)) > 1

    def _cycle_hit(self, k: int, laps: int, limit: int) -> Hit:
        labels, steps = self._tail(self._runs[k] + k)
        lap = labels[-k:]
        return Hit(
            rule="cycle",
            setting="max_cycle_repeats",
            limit=limit,
            repeats=laps,
            labels=lap,
            steps=steps,
            detail=(
                f"a cycle of {k} ({' -> '.join(lap)}) came back the same {laps} times"
            ),
            tools=self._tools(k),
        )

    def _stale_hit(self) -> Hit | None:
        limit = self._loops.max_stale_steps
        run = self._stale
        if limit is None or run <= limit:
            return None
        labels, steps = self._tail(self._stale_span)
        unique = tuple(dict.fromkeys(labels))
        return Hit(
            rule="stale",
            setting="max_stale_steps",
            limit=limit,
            repeats=run,
            labels=unique,
            steps=steps,
            detail=(
                f"{run} observations in a row each repeated one of the last "
                f"{self._digests.maxlen}, so nothing new came in"
            ),
            tools=self._tools(self._stale_span),
        )


@dataclass(frozen=True, slots=True)
class _Output:
    """One judged model output: its words, their shingles and its excerpt.

    A short output (under ``min_output_words``) has no shingles: it is never
    a near-copy, only the same as another short output or not.
    """

    words: list[str]
    shingles: frozenset[int]
    excerpt: str
    short: bool = False


class OutputRun:
    """Model outputs that are near-duplicates of one a few outputs back.

    For each lag k of 1 to ``max_cycle_period`` it counts how many outputs in
    a row were each a near-copy of the output k before. Lag 1 is a model that
    repeats itself; a longer lag is agents or steps taking turns without
    progress (writer, critic, writer, critic ...), which comparing each
    output with the one just before cannot see.

    A short output is never a near-copy, and it ends the run at every lag
    (a run is made of outputs that follow one another) except where it is
    the same as the output k before: a critic that answers a writer who
    repeats himself with the same "Needs more detail." keeps the writer's
    run at lag 2 going, without adding to it.
    """

    def __init__(self, loops: Loops) -> None:
        self._loops = loops
        self._lags = loops.max_cycle_period
        self._recent: deque[_Output] = deque(maxlen=self._lags)
        self._steps: deque[int] = deque(maxlen=64)
        # _runs[k]: near-copies of the output k back in the current run;
        # _spans[k]: outputs the run covers (its same short outputs too);
        # _lowest[k]: the lowest similarity in that run.
        self._runs = [0] * (self._lags + 1)
        self._spans = [0] * (self._lags + 1)
        self._lowest = [1.0] * (self._lags + 1)

    def observe(
        self, text: str, excerpt: str, step: int, *, short: bool = False
    ) -> Hit | None:
        """Add one output and return a hit when a near-duplicate run is long.

        ``short``: an output too short to judge as a near-copy; see the
        class's description.
        """
        limit = self._loops.max_near_duplicate_outputs
        current_words = words(text)
        if limit is None or not current_words:
            return None
        if short:
            current = _Output(current_words, frozenset(), excerpt, short=True)
        else:
            found = shingles(current_words, self._loops.shingle_tokens)
            current = _Output(current_words, found, excerpt)
        self._update_runs(current)
        self._recent.append(current)
        self._steps.append(step)
        for lag in range(1, self._lags + 1):
            # A cycle of k outputs must come back in full at least once.
            if self._runs[lag] > limit and self._spans[lag] >= lag:
                return self._hit(lag, limit)
        return None

    def _update_runs(self, current: _Output) -> None:
        n = len(self._recent)
        for lag in range(1, self._lags + 1):
            before = self._recent[n - lag] if lag <= n else None
            if before is None:
                similarity = None
            elif current.short or before.short:
                same = current.short and before.short and current.words == before.words
                if same and self._runs[lag]:
                    self._spans[lag] += 1  # the cycle's short output again
                    continue
                similarity = None
            else:
                similarity = self._near(before, current)
            if similarity is None:
                self._runs[lag] = self._spans[lag] = 0
                self._lowest[lag] = 1.0
            else:
                self._runs[lag] += 1
                self._spans[lag] += 1
                self._lowest[lag] = min(self._lowest[lag], similarity)

    def _near(self, before: _Output, after: _Output) -> float | None:
        """The similarity of two outputs if the later is a near-copy, else None."""
        union = len(before.shingles | after.shingles)
        similarity = len(before.shingles & after.shingles) / union
        if similarity < self._loops.near_duplicate_similarity:
            return None
        return similarity if self._few_changed(before.words, after.words) else None

    def _few_changed(self, before: list[str], after: list[str]) -> bool:
        # New content, not noise: more changed words than one in words_per.
        words_per = self._loops.near_duplicate_words_per_change
        if words_per is None:
            return True
        allowed = max(1, max(len(before), len(after)) // words_per)
        return changed_words(before, after) <= allowed

    def _hit(self, lag: int, limit: int) -> Hit:
        run, span = self._runs[lag], self._spans[lag]
        steps = tuple(self._steps)[-(span + lag) :]
        if lag == 1:
            what = "the one before"
        else:
            what = f"the output {lag} before, a cycle of {lag} outputs"
        if span == run:
            found = f"{run} model outputs in a row were near-duplicates of {what}"
        else:
            found = (
                f"{run} model outputs were near-duplicates of {what}, and the "
                "short outputs between them came back the same"
            )
        hit = Hit(
            rule="near_duplicate",
            setting="max_near_duplicate_outputs",
            limit=limit,
            repeats=run,
            labels=tuple(o.excerpt for o in tuple(self._recent)[-lag:]),
            steps=steps,
            detail=(
                f"{found} (lowest similarity {self._lowest[lag]:.2f}; "
                f"near_duplicate_similarity is "
                f"{self._loops.near_duplicate_similarity:.2f})"
            ),
        )
        # The next hit needs a fresh run, whatever its lag.
        self._runs = [0] * (self._lags + 1)
        self._spans = [0] * (self._lags + 1)
        self._lowest = [1.0] * (self._lags + 1)
        return hit


@dataclass(frozen=True, slots=True)
class _Result:
    """One judged tool call for the same-result rule: no arguments, no text."""

    key: bytes  # the tool and its masked result
    label: str
    tool: str
    args: int  # a hash of the normalized arguments
    step: int
    turn: int | None


class ResultRun:
    """Tool calls that each got the same result as a call 1 to k before.

    The arguments do not matter: a search that answers "no results" to one
    query after another learns nothing, however the query changes. For a lag
    of 1 it counts the calls in a row that got the result of the call before
    from the same tool; any other result, or another tool's call, ends that
    run. For a lag k of 2 to ``max_cycle_period`` it counts the calls in a row
    that each got the result of the call k before: tools taking turns (a
    search answering "no results", a page read answering "404", again and
    again) with nothing new coming in. Such a cycle fires only once every
    tool call in it has come back the same more than
    ``max_same_result_repeats`` times, as one tool alone would have to.

    A call counts once with the call it repeats when one model answer made
    both side by side (one ``turn``): fourteen e-mails sent at once that each
    come back "sent" are fan-out. A result marked new (an item id the task
    has not seen, or one its arguments name) is progress and ends every run.
    """

    def __init__(self, loops: Loops) -> None:
        self._limit = loops.max_same_result_repeats
        self._period = loops.max_cycle_period
        self._recent: deque[_Result] = deque(
            maxlen=max(loops.window_steps, self._period + 1)
        )
        lags = range(self._period + 1)
        # For each lag k: calls in a row equal to the one k back, how often
        # each result in the run was repeated (fan-out counted once), and
        # the arguments the run saw.
        self._runs = [0] * (self._period + 1)
        self._counts: list[dict[bytes, int]] = [{} for _ in lags]
        self._args: list[set[int]] = [set() for _ in lags]

    def observe(
        self,
        key: bytes,
        args: str,
        label: str,
        step: int,
        turn: int | None = None,
        *,
        new: bool = False,
        tool: str = "",
    ) -> Hit | None:
        """Add one call, keyed by tool and result; return a hit on a long run."""
        if self._limit is None:
            return None
        current = _Result(key, label, tool, hash(args), step, turn)
        self._update_runs(current, new)
        self._recent.append(current)
        for lag in range(1, self._period + 1):
            hit = self._hit(lag, self._limit)
            if hit is not None:
                self._reset()
                return hit
        return None

    def _update_runs(self, current: _Result, new: bool) -> None:
        n = len(self._recent)
        for lag in range(1, self._period + 1):
            before = self._recent[n - lag] if lag <= n else None
            if new or before is None or before.key != current.key:
                self._runs[lag] = 0
                self._counts[lag].clear()
                self._args[lag].clear()
                continue
            if not self._runs[lag]:
                self._args[lag].add(before.args)
            self._runs[lag] += 1
            self._args[lag].add(current.args)
            if current.turn is None or current.turn != before.turn:
                counts = self._counts[lag]
                counts[current.key] = counts.get(current.key, 0) + 1

    def _hit(self, lag: int, limit: int) -> Hit | None:
        if self._runs[lag] < lag:  # the cycle must come back in full once
            return None
        lap = [self._recent[-i] for i in range(lag, 0, -1)]
        keys = {item.key for item in lap}
        if lag > 1 and len(keys) == 1:  # one result again: the lag-1 run's
            return None
        counts = self._counts[lag]
        repeats = min(counts.get(key, 0) for key in keys)
        if repeats <= limit:
            return None
        seen = min(self._runs[lag] + lag, len(self._recent))
        steps = tuple(self._recent[-i].step for i in range(seen, 0, -1))
        return Hit(
            rule="same_result",
            setting="max_same_result_repeats",
            limit=limit,
            repeats=repeats,
            labels=tuple(item.label for item in lap),
            steps=steps,
            detail=self._detail(lap, repeats, len(self._args[lag])),
            tools=tuple(dict.fromkeys(item.tool for item in lap if item.tool)),
        )

    @staticmethod
    def _detail(lap: list[_Result], repeats: int, arguments: int) -> str:
        if arguments == 1:
            args = "with the same arguments"
        else:
            args = f"for {arguments} different arguments"
        if len(lap) == 1:
            what = f"{lap[0].label} came back {repeats + 1} times in a row"
        else:
            cycle = " -> ".join(item.label for item in lap)
            what = (
                f"a cycle of {len(lap)} tool calls ({cycle}) came back the same "
                f"{repeats + 1} times in a row"
            )
        return f"{what}, {args}, so nothing new came in"

    def _reset(self) -> None:
        """Forget the runs so the next hit needs a fresh one."""
        self._recent.clear()
        self._runs = [0] * (self._period + 1)
        for lag in range(self._period + 1):
            self._counts[lag].clear()
            self._args[lag].clear()


class CallRun:
    """Model calls in a row that each sent the same prompt and got the same answer.

    However short the answer, the next identical call cannot learn anything
    new. Any other prompt or answer ends the run.
    """

    def __init__(self, loops: Loops) -> None:
        self._limit = loops.max_identical_calls
        self._last: bytes | None = None
        self._run = 0
        self._steps: list[int] = []

    def observe(self, key: bytes, label: str, step: int) -> Hit | None:
        """Add one call, keyed by prompt and answer; return a hit on a long run."""
        if self._limit is None:
            return None
        if key == self._last:
            self._run += 1
        else:
            self._last, self._run = key, 0
            self._steps.clear()
        self._steps.append(step)
        if self._run <= self._limit:
            return None
        hit = Hit(
            rule="same_call",
            setting="max_identical_calls",
            limit=self._limit,
            repeats=self._run,
            labels=(label,),
            steps=tuple(self._steps),
            detail=(
                f"the same prompt got the same answer ({label}) {self._run + 1} "
                "times in a row, so the next call cannot learn anything new"
            ),
        )
        self._last, self._run = None, 0
        self._steps.clear()
        return hit


# Message contents already normalized and hashed, kept for the next prompts.
_MEMO_ENTRIES = 512
_ASSISTANT = frozenset(("assistant", "ai"))
_TOOL_ROLES = frozenset(("tool", "function"))


class PromptTurns:
    """Prompts that end in the same turn, or cycle of turns, again and again.

    A turn is one model answer (an assistant message) with the messages that
    follow it up to the next answer: tool results, user feedback. When each of
    the last turns of a prompt equals the turn k before (k of 1 to
    ``max_cycle_period``), the model is being fed its own answers and nothing
    else: a node that loops to itself, or agents taking turns, with nothing
    new coming in. Short answers count, unlike for the near-duplicate rule:
    independent calls that answer alike (map branches, a classifier) never see
    each other's answers in their prompts.
    """

    def __init__(self, loops: Loops, exempt: frozenset[str]) -> None:
        self._loops = loops
        self._exempt = exempt
        self._memo: dict[tuple[str, bool], bytes] = {}
        # The cycle of the last hit, and the prompts since that showed it.
        self._fired: bytes | None = None
        self._quiet = 0

    def observe(self, messages: Sequence[Mapping[str, Any]], step: int) -> Hit | None:
        """Judge one prompt's last turns; return a hit when they repeat."""
        limit = self._loops.max_repeated_turns
        if limit is None:
            return None
        turns = _TurnsFromEnd(messages)
        # Keys are made as the comparisons need them, the answer's first and
        # the whole turn's only when the answers match: a prompt whose last
        # answer is new costs max_cycle_period + 1 answer keys.
        heads: dict[int, bytes | None] = {}
        fulls: dict[int, bytes | None] = {}

        def head(j: int) -> bytes | None:
            if j not in heads:
                bounds = turns.get(j)
                heads[j] = (
                    None if bounds is None else self._answer_key(messages[bounds[0]])
                )
            return heads[j]

        def full(j: int) -> bytes | None:
            if j not in fulls:
                bounds = turns.get(j)
                fulls[j] = None if bounds is None else self._turn_key(messages, *bounds)
            return fulls[j]

        def same(j: int, k: int) -> bool:
            answer = head(j)
            return (
                answer is not None and answer == head(j + k) and full(j) == full(j + k)
            )

        for k in range(1, self._loops.max_cycle_period + 1):
            # A cycle of k turns must come back in full at least once.
            needed = max(limit, k - 1) + 1
            run = 0
            while run < needed and same(run, k):
                run += 1
            if run == needed:
                lap = range(k - 1, -1, -1)  # oldest first
                return self._hit(
                    messages,
                    [turns.start(j) for j in lap],
                    [full(j) for j in lap],
                    run,
                    limit,
                    step,
                )
        return None

    def _hit(
        self,
        messages: Sequence[Mapping[str, Any]],
        starts: list[int],
        keys: list[bytes | None],
        run: int,
        limit: int,
        step: int,
    ) -> Hit | None:
        cycle = digest(*(key.hex() for key in keys if key is not None))
        # The same cycle still going on: flagged again after limit + 1 more
        # prompts that show it, as a fresh run would be.
        if cycle == self._fired and self._quiet < limit:
            self._quiet += 1
            return None
        self._fired, self._quiet = cycle, 0
        labels = tuple(_turn_label(messages[start]) for start in starts)
        calls = (call for start in starts for call in _tool_calls(messages[start]))
        tools = tuple(dict.fromkeys(name for name, _ in calls if name))
        k = len(starts)
        if k == 1:
            what = f"the same turn ({labels[0]})"
        else:
            what = f"a cycle of {k} turns ({' -> '.join(labels)})"
        return Hit(
            rule="repeated_turns",
            setting="max_repeated_turns",
            limit=limit,
            repeats=run,
            labels=labels,
            steps=(step,),
            detail=(
                f"the prompt ends with {what} repeated {run} times in a row, so the "
                "model is being fed its own answers and nothing new"
            ),
            tools=tools,
        )

    def _turn_key(
        self, messages: Sequence[Mapping[str, Any]], start: int, end: int
    ) -> bytes | None:
        """A digest of one turn, or None for a turn with an exempt tool call.

        Every message is compared with its whitespace collapsed; tool results
        also with volatile tokens masked, as the tool rules mask them. A user
        message is never masked: "Cancel order <id>" with a new id is a new
        ask, not the same turn again.
        """
        parts: list[str] = []
        for message in messages[start:end]:
            calls = _tool_calls(message)
            if any(name in self._exempt for name, _ in calls):
                return None
            role = str(message.get("role", ""))
            mask = self._loops.mask_volatile and role in _TOOL_ROLES
            parts.append(role)
            parts.append(self._content_key(message.get("content"), mask))
            parts.extend(f"{name}({args})" for name, args in calls)
        return digest(*parts)

    def _answer_key(self, message: Mapping[str, Any]) -> bytes | None:
        """A quick digest of a turn's answer text; the turn's key says the rest."""
        if self._exempt and any(n in self._exempt for n, _ in _tool_calls(message)):
            return None
        return digest(self._content_key(message.get("content"), False))

    def _content_key(self, content: Any, mask: bool) -> str:
        if not isinstance(content, str):
            return normalize_result(_content_text(content), mask_volatile=mask)
        key = self._memo.get((content, mask))
        if key is None:
            if len(self._memo) >= _MEMO_ENTRIES:
                self._memo.clear()
            normalized = normalize_result(content, mask_volatile=mask)
            key = self._memo[(content, mask)] = digest(normalized)
        return key.hex()


class _TurnsFromEnd:
    """A prompt's turns counted from its end (0 is the last), found lazily."""

    def __init__(self, messages: Sequence[Mapping[str, Any]]) -> None:
        self._messages = messages
        self._bounds: list[tuple[int, int]] = []
        self._next = len(messages) - 1
        self._end = len(messages)

    def get(self, j: int) -> tuple[int, int] | None:
        """The (start, end) indexes of turn j from the end, if there is one."""
        while len(self._bounds) <= j and self._next >= 0:
            index = self._next
            self._next -= 1
            if self._messages[index].get("role") in _ASSISTANT:
                self._bounds.append((index, self._end))
                self._end = index
        return self._bounds[j] if j < len(self._bounds) else None

    def start(self, j: int) -> int:
        """The index of turn j's answer; the turn must have been found."""
        return self._bounds[j][0]


def _tool_calls(message: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (name, normalized arguments) of the tool calls a message asks for."""
    found = []
    for call in message.get("tool_calls") or ():
        if not isinstance(call, Mapping):
            continue
        function = call.get("function")
        if isinstance(function, Mapping):  # OpenAI shape
            name, args = function.get("name"), function.get("arguments")
        else:  # LangChain shape
            name, args = call.get("name"), call.get("args")
        if not isinstance(args, Mapping | str):
            args = str(args)
        found.append((str(name or ""), normalize_args(args)))
    return found


def _content_text(content: Any) -> str:
    """The text of a message content: a string, or a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            str(part["text"])
            if isinstance(part, Mapping) and "text" in part
            else json.dumps(part, sort_keys=True, default=str)
            for part in content
        ]
        return "\n".join(texts)
    return str(content)


def _turn_label(message: Mapping[str, Any]) -> str:
    text = normalize_text(_content_text(message.get("content"))[:400])
    if not text:
        calls = _tool_calls(message)
        text = ", ".join(f"{name}({args})" for name, args in calls) or "(empty)"
    return text if len(text) <= 60 else text[:57] + "..."
