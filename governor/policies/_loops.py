"""Loop prevention settings: ceilings and repetition rules per task.

The defaults were chosen on 500 real agent runs (see ``docs/loops.md``): at
these values 1 of 371 successful runs is stopped (on a real loop) and every
loop spliced into the runs is caught, after a median of three repeats.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from governor._errors import PolicyError
from governor.policies._base import FieldsError, PolicyModel, masked

__all__ = ["LoopAction", "Loops"]

LoopAction = Literal["stop", "escalate", "record"]

_OFF = "; None turns the rule off"


class Loops(PolicyModel):
    """Ceilings and repetition rules that stop runaway agents per task.

    Repetition alone is not a loop: a rule counts a tool call as a repeat
    only when its tool, normalized arguments *and result* match, so a command
    rerun after something changed is new information, not a repeat.
    """

    max_model_calls: int | None = Field(
        default=None, gt=0, description="a positive number of model calls per task"
    )
    max_wall_s: float | None = Field(
        default=None,
        gt=0,
        le=30 * 86_400.0,
        description="seconds, up to 30 days, from the task's start",
    )
    max_steps: int | None = Field(
        default=None,
        gt=0,
        description=(
            "a positive number of graph node runs per task (not supersteps): "
            "each run of a node counts, every Send branch and parallel node "
            "apart, the nodes inside a subgraph too, and LangGraph's __start__ "
            "when a conditional edge leaves START; the run past it is stopped "
            "before its node runs"
        ),
    )
    max_repeats: int | None = Field(
        default=2,
        ge=1,
        description=(
            "a positive number: how many times in a row the same tool call "
            "(same arguments, same result) or the same node with the same state "
            "may come back before the guard acts" + _OFF
        ),
    )
    max_cycle_repeats: int | None = Field(
        default=1,
        ge=1,
        description=(
            "a positive number: how many times a cycle of 2 to max_cycle_period "
            "calls (A, B, A, B ...) with the same results may be repeated in "
            "full before the guard acts" + _OFF
        ),
    )
    max_cycle_period: int = Field(
        default=4,
        ge=2,
        le=16,
        description="the longest cycle, in calls or outputs, the cycle and "
        "near-duplicate rules look for (2-16)",
    )
    max_stale_steps: int | None = Field(
        default=5,
        ge=1,
        description=(
            "a positive number: how many observations in a row may each repeat "
            "one already seen within window_steps before the guard acts" + _OFF
        ),
    )
    max_same_result_repeats: int | None = Field(
        default=10,
        ge=1,
        description=(
            "a positive number: how many times in a row a tool may return the "
            "same result as the call before, whatever the arguments (a search "
            "that finds nothing for query after query), before the guard acts; "
            "higher than max_repeats, since trying a few arguments that all "
            "come back empty is normal" + _OFF
        ),
    )
    max_identical_calls: int | None = Field(
        default=10,
        ge=1,
        description=(
            "a positive number: how many times a model call may send the same "
            "prompt and get the same answer as that prompt's call before (any "
            "length, even 'Retrying now.'), counted for each prompt, while no "
            "new prompt or answer comes between, before the guard acts; higher "
            "than max_repeats, since a short answer to a repeated question is "
            "sometimes wanted" + _OFF
        ),
    )
    window_steps: int = Field(
        default=64,
        ge=2,
        le=4096,
        description=(
            "how many recent observations per kind (tool calls, nodes) the "
            "stale rule remembers (2-4096)"
        ),
    )
    max_near_duplicate_outputs: int | None = Field(
        default=2,
        ge=1,
        description=(
            "a positive number: how many model outputs in a row may each be a "
            "near-duplicate of the output 1 to max_cycle_period before (agents "
            "taking turns repeat every 2nd) before the guard acts" + _OFF
        ),
    )
    max_repeated_turns: int | None = Field(
        default=2,
        ge=1,
        description=(
            "a positive number: how many turns in a row at the end of a prompt "
            "(a turn is a model answer with the messages that follow it) may each "
            "repeat the turn 1 to max_cycle_period before, before the guard "
            "refuses the call: the model is being fed its own identical answers, "
            "however short" + _OFF
        ),
    )
    min_output_words: int = Field(
        default=8,
        ge=0,
        description=(
            "a whole number: outputs shorter than this many words are not "
            "compared by the near-duplicate rule, since short answers ('yes', "
            "'B', a label) repeat legitimately; a short answer fed back to the "
            "model again and again is max_repeated_turns' business"
        ),
    )
    near_duplicate_similarity: float = Field(
        default=0.75,
        gt=0,
        le=1,
        description=(
            "a number in (0, 1]: the word-shingle Jaccard similarity at or "
            "above which two consecutive outputs are near-duplicates"
        ),
    )
    near_duplicate_words_per_change: int | None = Field(
        default=50,
        ge=1,
        description=(
            "a positive number: two consecutive outputs are near-duplicates only "
            "if at most one word in this many (and at least one word) differs, "
            "position by position; more changed words are new content, such as "
            "a template filled in with other numbers or names. None leaves it "
            "to near_duplicate_similarity alone"
        ),
    )
    shingle_tokens: int = Field(
        default=1,
        ge=1,
        le=8,
        description=(
            "words per shingle for output similarity: 1 compares the sets of "
            "words, 2-8 compare word n-grams"
        ),
    )
    mask_volatile: bool = Field(
        default=True,
        description=(
            "True to ignore what changes on every attempt when comparing tool "
            "results (hex addresses, UUIDs, timestamps and epoch times, "
            "durations; and, between calls with the same arguments only, "
            "labelled request and trace ids, attempt counters and process "
            "ids; docs/loops.md lists them); False compares them verbatim"
        ),
    )
    exempt_tools: tuple[str, ...] = Field(
        default=(),
        description=(
            "tool names the repetition rules ignore, e.g. ('wait_for_job',) for "
            "tools that poll on purpose; each non-empty, as the tool is named"
        ),
    )
    action: LoopAction = Field(
        default="stop",
        description=(
            "'stop' (raise LoopDetected), 'escalate' (one stronger-model retry "
            "with a hint, then stop) or 'record' (flag only)"
        ),
    )
    escalate_to: str | None = Field(
        default=None,
        description=(
            "the model the retry after an escalation goes to, named as it is "
            "called, without spaces around it (action='escalate' only); None: "
            "the tier after the current model in the policy's cascade, else the "
            "same model"
        ),
    )

    @field_validator("exempt_tools")
    @classmethod
    def _tool_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not name.strip() or name != name.strip():
                raise ValueError(
                    f"exempt tool {name!r} can never match a tool or node name: "
                    "give each tool's (or graph node's) name exactly as it is "
                    "called, e.g. 'wait_for_job'"
                )
        return value

    @field_validator("escalate_to")
    @classmethod
    def _a_model(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.strip():
            raise ValueError(
                "the escalation model must not be blank; give the model the "
                "retry goes to, e.g. 'gpt-4o', or None for the cascade's next "
                "tier"
            )
        if value != value.strip():
            raise ValueError(
                f"the escalation model {masked(value)!r} must not start or end "
                f"with spaces (strip it first: {masked(value.strip())!r}): a "
                "call names the model exactly, so no price or provider would "
                "know it with them"
            )
        return value

    @model_validator(mode="after")
    def _escalate_to_escalates(self) -> Self:
        if self.escalate_to is not None and self.action != "escalate":
            raise FieldsError(
                f"escalate_to only applies with action='escalate' (action is "
                f"{self.action!r}, which never retries on another model); set "
                "action='escalate', or leave escalate_to out",
                ("escalate_to", "action"),
                {"escalate_to": self.escalate_to, "action": self.action},
            )
        return self

    def merged(self, override: Self) -> Self:
        """Lay ``override`` over these settings, field by field.

        As for every policy part, only the fields the override sets
        explicitly count. An override that sets an ``action`` other than
        ``'escalate'`` drops this part's ``escalate_to``, which only applies
        with ``action='escalate'``.

        Raises:
            PolicyError: ``override`` is not a Loops.
        """
        if not isinstance(override, Loops):
            raise PolicyError(f"cannot merge {type(override).__name__} into Loops")
        base = self
        acting = override.action if "action" in override.model_fields_set else None
        if self.escalate_to is not None and acting not in (None, "escalate"):
            base = self.model_copy(update={"escalate_to": None})
        return super(Loops, base).merged(override)
