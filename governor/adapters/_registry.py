"""Which adapters are live, answered without importing any framework."""

from __future__ import annotations

import sys


def litellm_instrumented() -> bool:
    """True while ``governor.adapters.litellm.instrument`` is in force."""
    module = sys.modules.get("governor.adapters.litellm")
    if module is None:
        return False
    return module.active_instrumentation() is not None
