"""The public surface: what `governor` exports, and what importing it costs."""

from __future__ import annotations

import subprocess
import sys

import governor


def test_every_exported_name_is_importable() -> None:
    """Each name in governor.__all__ resolves to an object."""
    missing = [name for name in governor.__all__ if not hasattr(governor, name)]
    assert missing == []


def test_no_private_name_is_exported() -> None:
    """__all__ lists public names only."""
    assert [
        n for n in governor.__all__ if n.startswith("_") and n != "__version__"
    ] == []


def test_import_loads_neither_litellm_nor_langgraph() -> None:
    """`import governor` stays fast: the frameworks load with their adapters."""
    code = (
        "import sys, governor, governor.testing, governor.pricing; "
        "print(sorted(m for m in ('litellm', 'langgraph', 'langchain_core') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_errors_share_one_root_and_stable_codes() -> None:
    """Every governor error derives from GovernorError and has its own code."""
    errors = [
        governor.BudgetExceeded,
        governor.ConfigError,
        governor.GovernorHalt,
        governor.LoopDetected,
        governor.PolicyError,
        governor.PriceUnknown,
        governor.StoreUnavailable,
    ]
    assert all(issubclass(e, governor.GovernorError) for e in errors)
    codes = [e.code for e in errors]
    assert len(set(codes)) == len(codes)


def test_import_star_loads_neither_litellm_nor_langgraph() -> None:
    """`from governor import *` is as light as `import governor`."""
    code = (
        "import sys; from governor import *; "
        "print(sorted(m for m in ('litellm', 'langgraph', 'langchain_core') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_adapters_refuse_anything_but_a_governor_at_once() -> None:
    """A Policy or a dict where a Governor belongs: a TypeError that says what
    to pass, before any call (it failed at the first call, as an AttributeError)."""
    import pytest

    from governor.adapters.litellm import GovernedLiteLLM, instrument

    policy = governor.Policy()
    cases = [
        (lambda: GovernedLiteLLM(policy), "pass Governor\\(policy\\)"),  # type: ignore[arg-type]
        (lambda: GovernedLiteLLM(None), "GovernedLiteLLM\\(\\) takes a Governor"),  # type: ignore[arg-type]
        (lambda: instrument(policy), "instrument\\(\\) takes a Governor"),  # type: ignore[arg-type]
        (lambda: governor.govern(object(), {"budgets": []}), "govern\\(\\) takes"),  # type: ignore[arg-type]
    ]
    for build, message in cases:
        with pytest.raises(TypeError, match=message):
            build()


def test_pickling_a_governor_says_to_send_its_policy() -> None:
    """multiprocessing pickles what it sends: a Governor cannot go, its
    Policy can."""
    import pickle

    import pytest

    gov = governor.Governor(governor.Policy())
    with pytest.raises(TypeError, match="Send its Policy"):
        pickle.dumps(gov)
    assert pickle.loads(pickle.dumps(gov.policy)) == gov.policy
