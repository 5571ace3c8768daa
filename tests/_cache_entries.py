"""A cache entry made up for store tests: the question and answer name its key."""

from __future__ import annotations

from governor.cache import CacheEntry


def entry(
    key: str, index: str | None = "ix", expires_at: float | None = None
) -> CacheEntry:
    """An entry for ``key``, a $0.0000025 gpt-4o-mini answer of 3 + 4 tokens."""
    return CacheEntry(
        key=key,
        index=index,
        query=f"question {key}",
        message={"role": "assistant", "content": f"answer {key}"},
        model="gpt-4o-mini",
        cost_nanos=2500,
        input_tokens=3,
        output_tokens=4,
        created_at=0.0,
        expires_at=expires_at,
    )
