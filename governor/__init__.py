"""llm-governor: budgets, caps and cost telemetry between agents and model calls.

The public API is what this module exports. LangGraph and LiteLLM load only
when an adapter is used: ``govern`` imports the LangGraph adapter on first use,
and ``governor.adapters.litellm`` holds the LiteLLM one.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# LiteLLM fetches its price map from the network when first imported unless
# told otherwise; the governor promises no network access at import or call
# time, and prices from the bundled map. Set the variable to "False" before
# importing governor to let LiteLLM fetch (or use Pricing(remote_price_map=True)).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from governor._attribution import attribute, current_attribution
from governor._calls import Admission, CallRequest, CallResult
from governor._engine import Governor
from governor._errors import (
    BudgetExceeded,
    ConfigError,
    GovernorClosed,
    GovernorError,
    GovernorHalt,
    OutputLimitExceeded,
    PolicyError,
    PriceUnknown,
    ScopeBlocked,
    SlotUnavailable,
    StoreUnavailable,
    UngovernedCall,
)
from governor._task import Task, TaskReport, current_task
from governor.loops import LoopDetected
from governor.policies import (
    Attribution,
    Budget,
    Cache,
    Cascade,
    Fanout,
    Loops,
    Policy,
    Price,
    PriceTier,
    Pricing,
)

if TYPE_CHECKING:
    from governor.adapters.langgraph import GovernedGraph

__all__ = [
    "Admission",
    "Attribution",
    "Budget",
    "BudgetExceeded",
    "Cache",
    "CallRequest",
    "CallResult",
    "Cascade",
    "ConfigError",
    "Fanout",
    "Governor",
    "GovernorClosed",
    "GovernorError",
    "GovernorHalt",
    "LoopDetected",
    "Loops",
    "OutputLimitExceeded",
    "Policy",
    "PolicyError",
    "Price",
    "PriceTier",
    "PriceUnknown",
    "Pricing",
    "ScopeBlocked",
    "SlotUnavailable",
    "StoreUnavailable",
    "Task",
    "TaskReport",
    "UngovernedCall",
    "__version__",
    "attribute",
    "current_attribution",
    "current_task",
    "govern",
]

__version__ = "0.1.0"


def govern(graph: Any, governor: Governor | Policy | None = None) -> GovernedGraph:
    """Wrap a compiled LangGraph graph so each invocation is a governed task.

    See :func:`governor.adapters.langgraph.govern`.
    """
    from governor.adapters.langgraph import govern as _govern

    if governor is not None and not isinstance(governor, Governor | Policy):
        raise TypeError(
            f"govern() takes a Governor or a Policy, got {type(governor).__name__}; "
            "pass Governor(Policy(...)) (or a Policy, for a governor of its own)"
        )
    return _govern(graph, governor)


def __getattr__(name: str) -> Any:
    # Loaded on first use, and left out of __all__, so that neither
    # "import governor" nor "from governor import *" imports LangGraph.
    if name == "GovernedGraph":
        from governor.adapters.langgraph import GovernedGraph

        return GovernedGraph
    raise AttributeError(f"module 'governor' has no attribute {name!r}")
