"""The packs table in docs/policy.md names each pack's per-task caps."""

from __future__ import annotations

from pathlib import Path

import pytest

from governor.policies import packs

DOC = Path(__file__).resolve().parent.parent / "docs" / "policy.md"


def row(name: str) -> str:
    """The packs table's row for pack ``name``."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    (line,) = [line for line in lines if line.startswith(f"| `{name}(")]
    return line


@pytest.mark.parametrize("name", sorted(packs.PACKS))
def test_the_table_names_each_packs_call_and_inflight_caps(name: str) -> None:
    """Model calls per task and calls in flight per task, when the pack sets them."""
    policy = packs.PACKS[name]()
    text = row(name)
    if policy.loops.max_model_calls is not None:
        assert f"{policy.loops.max_model_calls} model calls" in text
    if policy.fanout.max_inflight_calls is not None:
        caps = policy.fanout.max_inflight_calls
        assert f"{caps} calls in flight" in text or f"inflight_calls={caps}" in text
