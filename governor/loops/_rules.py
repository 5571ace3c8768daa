"""The repetition rules, each O(window) or better per observation.

An *observation* is one tool call with its result, or one node visit with its
state digest, reduced to a digest. A channel keeps the recent digests of one
kind and runs three rules over them:

- repeat: the digest equals the one before, more than ``max_repeats`` times;
- cycle: for a period k in 2..max_cycle_period, each digest equals the one k
  back for more than ``max_cycle_repeats`` full laps;
- stale: more than ``max_stale_steps`` digests in a row each already occur in
  the window, so nothing new has been learnt.

Model outputs are judged apart: an output is a near-copy of an earlier one
when their word shingles are similar enough *and* few of its words changed,
at most one in ``near_duplicate_words_per_change`` (at least one). The rule
fires when more than ``max_near_duplicate_outputs`` outputs in a row, and at
least k, are each a near-copy of the output k before, for a lag k in
1..max_cycle_period: lag 1 is a model repeating itself, a longer lag agents
taking turns in a cycle (writer, critic, writer, critic ...). The second
test keeps templated outputs that carry new content (a page summary with its
own counts, one edit applied to a new name each time) apart from a model that
repeats itself, whose outputs differ in whitespace, punctuation or a counter
only.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

from governor.loops._normalize import changed_words, shingles, words
from governor.policies._loops import Loops

__all__ = ["Channel", "Hit", "OutputRun", "Rule"]

Rule = Literal[
    "repeat",
    "cycle",
    "stale",
    "near_duplicate",
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


class Channel:
    """The recent observations of one kind and the rules run over them."""

    def __init__(self, loops: Loops) -> None:
        self._loops = loops
        self._max_period = loops.max_cycle_period
        size = max(loops.window_steps, self._max_period + 1)
        self._digests: deque[bytes] = deque(maxlen=size)
        self._labels: deque[str] = deque(maxlen=size)
        self._steps: deque[int] = deque(maxlen=size)
        self._counts: dict[bytes, int] = {}
        # _runs[k] = how many observations in a row equalled the one k back.
        self._runs = [0] * (self._max_period + 1)
        self._stale = 0

    def observe(self, key: bytes, label: str, step: int) -> Hit | None:
        """Add one observation and return the first rule it makes fire."""
        self._update_runs(key)
        self._stale = self._stale + 1 if self._counts.get(key) else 0
        self._append(key, label, step)
        hit = self._repeat() or self._cycle() or self._stale_hit()
        if hit is not None:
            self.reset_streaks()
        return hit

    def reset_streaks(self) -> None:
        """Forget the current streaks so the next hit needs a fresh one."""
        self._runs = [0] * (self._max_period + 1)
        self._stale = 0

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
            detail=f"{labels[-1]} came back the same {run} times in a row",
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
        )

    def _stale_hit(self) -> Hit | None:
        limit = self._loops.max_stale_steps
        run = self._stale
        if limit is None or run <= limit:
            return None
        labels, steps = self._tail(run)
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
        )


@dataclass(frozen=True, slots=True)
class _Output:
    """One judged model output: its words, their shingles and its excerpt."""

    words: list[str]
    shingles: frozenset[int]
    excerpt: str


class OutputRun:
    """Model outputs that are near-duplicates of one a few outputs back.

    For each lag k of 1 to ``max_cycle_period`` it counts how many outputs in
    a row were each a near-copy of the output k before. Lag 1 is a model that
    repeats itself; a longer lag is agents or steps taking turns without
    progress (writer, critic, writer, critic ...), which comparing each
    output with the one just before cannot see.
    """

    def __init__(self, loops: Loops) -> None:
        self._loops = loops
        self._lags = loops.max_cycle_period
        self._recent: deque[_Output] = deque(maxlen=self._lags)
        self._steps: deque[int] = deque(maxlen=64)
        # _runs[k]: outputs in a row that were near-copies of the one k back;
        # _lowest[k]: the lowest similarity in that run.
        self._runs = [0] * (self._lags + 1)
        self._lowest = [1.0] * (self._lags + 1)

    def observe(self, text: str, excerpt: str, step: int) -> Hit | None:
        """Add one output and return a hit when a near-duplicate run is long."""
        limit = self._loops.max_near_duplicate_outputs
        current_words = words(text)
        if limit is None or not current_words:
            return None
        current = _Output(
            words=current_words,
            shingles=shingles(current_words, self._loops.shingle_tokens),
            excerpt=excerpt,
        )
        self._update_runs(current)
        self._recent.append(current)
        self._steps.append(step)
        for lag in range(1, self._lags + 1):
            # A cycle of k outputs must come back in full at least once.
            if self._runs[lag] > max(limit, lag - 1):
                return self._hit(lag, limit)
        return None

    def _update_runs(self, current: _Output) -> None:
        n = len(self._recent)
        for lag in range(1, self._lags + 1):
            similarity = None
            if lag <= n:
                similarity = self._near(self._recent[n - lag], current)
            if similarity is None:
                self._runs[lag] = 0
                self._lowest[lag] = 1.0
            else:
                self._runs[lag] += 1
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
        run = self._runs[lag]
        steps = tuple(self._steps)[-(run + lag) :]
        if lag == 1:
            what = "the one before"
        else:
            what = f"the output {lag} before, a cycle of {lag} outputs"
        hit = Hit(
            rule="near_duplicate",
            setting="max_near_duplicate_outputs",
            limit=limit,
            repeats=run,
            labels=tuple(o.excerpt for o in tuple(self._recent)[-lag:]),
            steps=steps,
            detail=(
                f"{run} model outputs in a row were near-duplicates of {what} "
                f"(similarity {self._lowest[lag]:.2f} or more)"
            ),
        )
        # The next hit needs a fresh run, whatever its lag.
        self._runs = [0] * (self._lags + 1)
        self._lowest = [1.0] * (self._lags + 1)
        return hit
