"""Loop prevention: a pure, per-task guard against agents that repeat themselves.

Feed a :class:`LoopGuard` each model output, tool call and node visit; it
returns a :class:`LoopVerdict` when a rule of :class:`governor.Loops` fires.
The trajectory format and its converter support ``governor eval loops``.
"""

from governor.loops._errors import LoopDetected
from governor.loops._files import read_trajectories
from governor.loops._guard import LoopGuard, LoopVerdict, Rule
from governor.loops._mini import from_mini_swe_agent
from governor.loops._trajectory import (
    Call,
    ToolCall,
    ToolResult,
    Trajectory,
    write_trajectories,
)

__all__ = [
    "Call",
    "LoopDetected",
    "LoopGuard",
    "LoopVerdict",
    "Rule",
    "ToolCall",
    "ToolResult",
    "Trajectory",
    "from_mini_swe_agent",
    "read_trajectories",
    "write_trajectories",
]
