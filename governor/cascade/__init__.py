"""Model cascades: the cheapest tier whose answer passes, within budget.

The policy side (:class:`~governor.policies.Cascade` and its parts) is pure
data; this package runs it. :class:`CascadeRunner` is I/O-free: the caller
passes a ``call(tier, request) -> Answer`` function (sync or async) and
optional budget and context-window probes, and gets a
:class:`CascadeResult` with every attempt, or a :class:`CascadeExhausted`.
"""

from governor.cascade._checks import (
    Agreement,
    AllOf,
    AnyOf,
    Check,
    Judge,
    LogprobThreshold,
    Matches,
    NonEmpty,
    NotRefusal,
    PythonParses,
    UserCheck,
    ValidJson,
    build_check,
    normalise,
)
from governor.cascade._classify import RETRYABLE, classify_error, retry_after_s
from governor.cascade._complexity import (
    Estimator,
    from_labels,
    heuristic_complexity,
    start_tier,
)
from governor.cascade._cooldown import CooldownRegistry, cooldown_key
from governor.cascade._errors import CascadeBudgetExceeded, CascadeExhausted
from governor.cascade._runner import CascadeRunner, WaitStrategy, tenacity_wait
from governor.cascade._types import (
    Answer,
    Attempt,
    CascadeResult,
    CheckResult,
    ErrorKind,
    Outcome,
    ToolCall,
)
from governor.policies._cascade import (
    AgreementCheck,
    AnyOfCheck,
    CallableCheck,
    Cascade,
    CheckSpec,
    JsonCheck,
    JudgeCheck,
    LogprobCheck,
    MatchCheck,
    NonEmptyCheck,
    NotRefusalCheck,
    PreCall,
    PythonCodeCheck,
    Retry,
    Tier,
)

__all__ = [
    "RETRYABLE",
    "Agreement",
    "AgreementCheck",
    "AllOf",
    "Answer",
    "AnyOf",
    "AnyOfCheck",
    "Attempt",
    "CallableCheck",
    "Cascade",
    "CascadeBudgetExceeded",
    "CascadeExhausted",
    "CascadeResult",
    "CascadeRunner",
    "Check",
    "CheckResult",
    "CheckSpec",
    "CooldownRegistry",
    "ErrorKind",
    "Estimator",
    "JsonCheck",
    "Judge",
    "JudgeCheck",
    "LogprobCheck",
    "LogprobThreshold",
    "MatchCheck",
    "Matches",
    "NonEmpty",
    "NonEmptyCheck",
    "NotRefusal",
    "NotRefusalCheck",
    "Outcome",
    "PreCall",
    "PythonCodeCheck",
    "PythonParses",
    "Retry",
    "Tier",
    "ToolCall",
    "UserCheck",
    "ValidJson",
    "WaitStrategy",
    "build_check",
    "classify_error",
    "cooldown_key",
    "from_labels",
    "heuristic_complexity",
    "normalise",
    "retry_after_s",
    "start_tier",
    "tenacity_wait",
]
