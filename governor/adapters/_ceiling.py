"""How far a streamed answer may run past the output its call reserved.

A provider (or a proxy) that ignores ``max_tokens`` streams on and bills every
token: the budget the call was admitted under would overrun by the whole
answer. The adapters see every chunk, so they stop reading once the output is
surely past the ceiling. No tokenizer can say that for every model and
language (a deployment name or a non-OpenAI model is counted with a stand-in,
which may count Hindi text three times over), so the test is by characters:
16 per reserved token plus 256. A run of one character repeated (a rule of
dashes, padding spaces) is a few tokens for any length, so a run counts as
two characters. Tokens of other text average 2 to 5 characters in any
language: no answer within its ceiling gets there, while a runaway is cut at
a few times its reservation.

A model priced per second (``Price.usd_per_second``) is billed for time, and
its call held ``Policy.max_call_s`` of it: its stream is past the ceiling
once it has run longer than that, whatever its output.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable

from governor._calls import Admission

CHARS_PER_TOKEN = 16
SLACK_CHARS = 256

OUTPUT = "output"
"""The reason of a stream past its ceiling: more output than it reserved."""
TIME = "time"
"""The reason of a stream past its ceiling: a per-second price, and longer
than ``Policy.max_call_s``."""

_RUNS = re.compile(r"(.)\1{2,}", re.DOTALL)


class OutputCeiling:
    """Counts a stream's output and tells when it has passed its ceiling.

    Attributes:
        model: the model the call went to.
        reserved_tokens: the output tokens the call reserved, all choices.
        chars: the output characters counted so far (runs as two).
        max_call_s: the seconds a per-second call holds (``Policy.max_call_s``),
            or None for a call not priced by time.
        reason: why the ceiling was passed (:data:`OUTPUT` or :data:`TIME`),
            None until it is.
    """

    __slots__ = (
        "_deadline",
        "_limit_chars",
        "_started_at",
        "chars",
        "max_call_s",
        "model",
        "reason",
        "reserved_tokens",
    )

    def __init__(self, admission: Admission) -> None:
        request = admission.request
        self.model = request.model
        self.reserved_tokens = admission.max_output_tokens * max(1, request.choices)
        self.chars = 0
        self._limit_chars = CHARS_PER_TOKEN * self.reserved_tokens + SLACK_CHARS
        self.reason: str | None = None
        # Only a rate that bills time was held for time (see the engine's hold).
        self.max_call_s: float | None = None
        self._deadline: float | None = None
        self._started_at = admission.started_at
        if admission.rate.usd_per_second:
            self.max_call_s = admission.task.policy.max_call_s
            self._deadline = admission.started_at + self.max_call_s

    @property
    def elapsed_s(self) -> float:
        """Seconds since the call took its fan-out slots (``time.monotonic``):
        a wait for a slot, before the call was sent, is not counted."""
        return time.monotonic() - self._started_at

    def passed(self, parts: Iterable[str]) -> bool:
        """Add output text; True once the whole output is past the ceiling,
        or a call priced per second has run past ``Policy.max_call_s``."""
        for part in parts:
            self.chars += len(_RUNS.sub(r"\1\1", part))
        if self.chars > self._limit_chars:
            self.reason = OUTPUT
            return True
        if self._deadline is not None and time.monotonic() > self._deadline:
            self.reason = TIME
            return True
        return False
