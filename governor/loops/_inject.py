"""Seeded splicing of synthetic loops into real runs, for the evaluation.

Three kinds, each spliced right after a real call chosen uniformly at random
among the calls where the kind fits, ``laps`` times in a row:

- ``repeat``: a copy of one real call (its output, tool call and result), as
  when an agent reruns a command in an environment that did not change;
- ``cycle``: copies of two consecutive real calls with different tool calls,
  alternating A, B, A, B ...;
- ``near_duplicate``: outputs that each change one word in fifty (at least
  one) of the output before, replaced by a word drawn from the run's own
  outputs; each keeps the tool call but gets a result no other call got,
  so only the output rule can see this loop.

The first copy is the first repeat: a loop is caught with a delay of d
repeats when the guard fires on the d-th copy (or the d-th lap of a cycle).
The random generator is seeded from the seed, the kind and the run id, so a
run's injection does not depend on which other runs are in the file.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from governor.loops._trajectory import Call, ToolResult, Trajectory

__all__ = ["KINDS", "Injection", "LoopKind", "inject"]

LoopKind = Literal["repeat", "cycle", "near_duplicate"]
KINDS: tuple[LoopKind, ...] = ("repeat", "cycle", "near_duplicate")

_WORD = re.compile(r"\w+")
_WORDS_PER_EDIT = 50
_MAX_VOCABULARY = 5000


@dataclass(frozen=True, slots=True)
class Injection:
    """Where a loop was spliced into a run.

    Attributes:
        kind: the kind of loop.
        start: index in the new run's calls of the first injected copy.
        period: calls per lap (2 for a cycle, else 1).
        laps: how many laps were injected.
    """

    kind: LoopKind
    start: int
    period: int
    laps: int

    @property
    def end(self) -> int:
        """Index just past the last injected call."""
        return self.start + self.period * self.laps

    def repeats_at(self, index: int) -> int:
        """The delay, in repeats, of a flag raised at call ``index``."""
        return (index - self.start) // self.period + 1


def _rng(seed: int, kind: str, run_id: str) -> random.Random:
    key = hashlib.blake2b(f"{seed}:{kind}:{run_id}".encode(), digest_size=8)
    return random.Random(int.from_bytes(key.digest(), "big"))


def inject(
    run: Trajectory, kind: LoopKind, *, seed: int, laps: int = 10
) -> tuple[Trajectory, Injection] | None:
    """Return a copy of ``run`` with a loop spliced in, or None if none fits."""
    rng = _rng(seed, kind, run.id)
    calls = run.calls
    if kind == "repeat":
        spots = [i for i, c in enumerate(calls) if _acts(c)]
        period = 1
    elif kind == "cycle":
        spots = [
            i
            for i in range(len(calls) - 1)
            if _acts(calls[i]) and _acts(calls[i + 1]) and _differ(calls, i)
        ]
        period = 2
    else:
        spots = [i for i, c in enumerate(calls) if _WORD.search(c.output)]
        period = 1
    if not spots:
        return None
    first = rng.choice(spots)
    start = first + period
    if kind == "near_duplicate":
        loop = _near_duplicates(calls, first, laps, rng)
    else:
        loop = list(calls[first:start]) * laps
    new_calls = (*calls[:start], *loop, *calls[start:])
    injection = Injection(kind=kind, start=start, period=period, laps=laps)
    return replace(run, calls=new_calls), injection


def _acts(call: Call) -> bool:
    return bool(call.tool_calls) and bool(call.tool_results)


def _differ(calls: Sequence[Call], i: int) -> bool:
    a, b = calls[i], calls[i + 1]
    return (a.tool_calls, a.tool_results) != (b.tool_calls, b.tool_results)


def _near_duplicates(
    calls: Sequence[Call], first: int, laps: int, rng: random.Random
) -> list[Call]:
    vocabulary = [w for c in calls for w in _WORD.findall(c.output)]
    vocabulary = vocabulary[:_MAX_VOCABULARY]
    text = calls[first].output
    copies = []
    for lap in range(1, laps + 1):
        text = _edit(text, vocabulary, rng)
        results = tuple(
            ToolResult(
                content=f"{r.content}\n(injected variant {lap})", call_id=r.call_id
            )
            for r in calls[first].tool_results
        )
        copies.append(replace(calls[first], output=text, tool_results=results))
    return copies


def _edit(text: str, vocabulary: Sequence[str], rng: random.Random) -> str:
    words = list(_WORD.finditer(text))
    count = max(1, len(words) // _WORDS_PER_EDIT)
    chosen = sorted(rng.sample(range(len(words)), min(count, len(words))))
    for index in reversed(chosen):
        match = words[index]
        word = _other_word(match.group(), vocabulary, rng)
        text = text[: match.start()] + word + text[match.end() :]
    return text


def _other_word(word: str, vocabulary: Sequence[str], rng: random.Random) -> str:
    for _ in range(8):
        candidate = rng.choice(vocabulary)
        if candidate != word:
            return candidate
    # A run whose outputs hold one word only still gets a changed word.
    return word + "x"
