"""A stopped task's LoopDetected, raised again on each later call, stays as it was."""

from __future__ import annotations

from typing import Any

import pytest

from governor import Cascade, Governor, Loops, Policy
from governor.adapters.litellm import GovernedLiteLLM
from governor.loops import LoopDetected
from governor.policies._cascade import Retry, Tier
from governor.testing import install_offline_provider

CASCADE = Cascade(
    tiers=[
        Tier(name="cheap", model="offline/gpt-4o-mini"),
        Tier(name="premium", model="offline/gpt-4o"),
    ],
    retry=Retry(max_retries_per_tier=0, backoff_initial_s=0, jitter_s=0),
)
MESSAGES = [{"role": "user", "content": "Name a primary colour."}]


@pytest.fixture(autouse=True)
def offline() -> None:
    install_offline_provider(lambda model, messages, tools: "red", speed=0)


def _stopped_errors(runs: int) -> list[LoopDetected]:
    """Cascade ``runs`` times in a task that one call stops."""
    gov = Governor(Policy(cascade=CASCADE, loops=Loops(max_model_calls=1)))
    llm = GovernedLiteLLM(gov)
    errors: list[LoopDetected] = []
    with gov.task():
        llm.cascade(MESSAGES, max_tokens=5)
        for _ in range(runs):
            with pytest.raises(LoopDetected) as caught:
                llm.cascade(MESSAGES, max_tokens=5)
            errors.append(caught.value)
    gov.close()
    return errors


def test_each_cascade_run_notes_only_its_own_attempts() -> None:
    errors = _stopped_errors(3)

    notes: list[Any] = [getattr(err, "__notes__", []) for err in errors]

    assert [len(n) for n in notes] == [1, 1, 1]
    assert notes[0][0].startswith("raised by cascade tier 'cheap'")


def test_an_earlier_error_is_left_as_the_caller_caught_it() -> None:
    errors = _stopped_errors(2)

    assert errors[0] is not errors[1]
    assert len(errors[0].__notes__) == 1
    assert errors[0].rule == errors[1].rule == "max_model_calls"
    assert str(errors[0]) == str(errors[1])
