"""Rate cards: model prices, usage normalisation and exact cost."""

from governor.pricing._types import Cost, Usage

__all__ = ["Cost", "Usage"]
