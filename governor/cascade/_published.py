"""Published cost-quality figures of other cascades and routers, for comparison.

Both are normalised like ``governor eval cascade``: cost over the premium
model's cost, quality over the premium model's quality.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["FRUGALGPT_POINTS", "ROUTELLM_POINTS"]

ROUTELLM_POINTS: Mapping[str, tuple[float, float]] = {
    "MT Bench": (0.15, 0.95),
    "MMLU": (0.55, 0.95),
    "GSM8K": (0.65, 0.95),
}
"""RouteLLM (Ong et al., 2024, arXiv:2406.18665; project README and LMSYS
blog, July 2024) reports its routers cutting cost against GPT-4 alone by more
than 85% on MT Bench, 45% on MMLU and 35% on GSM8K while keeping 95% of
GPT-4's quality. Its cost is the share of calls sent to GPT-4 (the router
picks GPT-4 or Mixtral), so each x value is an upper bound on cost."""

FRUGALGPT_POINTS: Mapping[str, tuple[tuple[float, float], ...]] = {
    "AGNEWS": ((0.013, 0.991), (0.056, 0.993), (0.099, 1.001), (0.146, 1.001)),
    "HEADLINES": ((0.003, 0.996), (0.058, 1.016), (0.115, 1.021), (0.300, 1.021)),
    "SCIQ": ((0.014, 0.971), (0.049, 0.989), (0.116, 1.011), (0.193, 1.013)),
    "OVERRULING": ((0.151, 1.045), (0.266, 1.047)),
}
"""FrugalGPT (Chen, Zaharia and Zou, 2023, arXiv:2305.05176), 2024 model
refresh, test split: the cascade's mean cost and accuracy at its budget
points over those of gpt-4-turbo alone, computed from the result tables in
github.com/stanford-futuredata/FrugalGPT (``summary/*_full_2024.csv``).
COQA is left out: there every cheaper model beats gpt-4-turbo (ratios up to
1.38)."""
