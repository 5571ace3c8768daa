"""Budget scopes and periods: the ledger lines a call must fit, and their resets."""

from governor.budgets._periods import (
    ROLLING_BUCKETS,
    KeyWindow,
    Window,
    parse_line_key,
    window_at,
    window_for,
)
from governor.budgets._scopes import (
    DEFAULT_TASK_TTL_S,
    SESSION_TTL_S,
    LineSpec,
    RollingLine,
    lines_for,
)

__all__ = [
    "DEFAULT_TASK_TTL_S",
    "ROLLING_BUCKETS",
    "SESSION_TTL_S",
    "KeyWindow",
    "LineSpec",
    "RollingLine",
    "Window",
    "lines_for",
    "parse_line_key",
    "window_at",
    "window_for",
]
