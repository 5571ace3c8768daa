"""Rate cards: model prices, usage normalisation and exact cost."""

from governor.pricing._ratecard import Rate, RateCard, RateTier
from governor.pricing._types import Cost, Usage
from governor.pricing._usage import usage_from_response, usage_from_stream_chunks

__all__ = [
    "Cost",
    "Rate",
    "RateCard",
    "RateTier",
    "Usage",
    "usage_from_response",
    "usage_from_stream_chunks",
]
