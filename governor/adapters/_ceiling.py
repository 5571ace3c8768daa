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
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from governor._calls import Admission

CHARS_PER_TOKEN = 16
SLACK_CHARS = 256

_RUNS = re.compile(r"(.)\1{2,}", re.DOTALL)


class OutputCeiling:
    """Counts a stream's output and tells when it has passed its ceiling."""

    __slots__ = ("_limit_chars", "chars", "model", "reserved_tokens")

    def __init__(self, admission: Admission) -> None:
        request = admission.request
        self.model = request.model
        self.reserved_tokens = admission.max_output_tokens * max(1, request.choices)
        self.chars = 0
        self._limit_chars = CHARS_PER_TOKEN * self.reserved_tokens + SLACK_CHARS

    def passed(self, parts: Iterable[str]) -> bool:
        """Add output text; True once the whole output is past the ceiling."""
        for part in parts:
            self.chars += len(_RUNS.sub(r"\1\1", part))
        return self.chars > self._limit_chars
