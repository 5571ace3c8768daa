"""Local token counts, for calls whose provider reported no usage."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["count_message_tokens", "count_text_tokens", "interrupted_after_sending"]


def _litellm() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    return litellm


def _tokenizer_model(model: str) -> str:
    return model.removeprefix("offline/")


def count_message_tokens(
    model: str, messages: Sequence[Mapping[str, Any]], *, tools: Any = None
) -> int:
    """Count a chat prompt's tokens with the model's tokenizer (LiteLLM's).

    Only the text is counted: use it for plain-text prompts, or as an
    estimate after the fact.
    """
    plain = [
        {"role": str(m.get("role", "user")), "content": _text(m.get("content"))}
        for m in messages
    ]
    counted = _litellm().token_counter(
        model=_tokenizer_model(model), messages=plain, tools=tools or None
    )
    return int(counted)


def count_text_tokens(model: str, text: str) -> int:
    """Count a text's tokens with the model's tokenizer (LiteLLM's)."""
    if not text:
        return 0
    return int(_litellm().token_counter(model=_tokenizer_model(model), text=text))


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            p.get("text", "") if isinstance(p, Mapping) else str(p) for p in content
        ]
        return "".join(parts)
    return "" if content is None else str(content)


def interrupted_after_sending(error: BaseException) -> bool:
    """True when a call ended without an answer after its request went out.

    A cancelled or timed-out request has reached the provider, which may
    bill its prompt; an error answer (a refusal, a rate limit, a bad
    request) bills nothing.
    """
    if isinstance(error, asyncio.CancelledError | KeyboardInterrupt | TimeoutError):
        return True
    return (
        "timeout" in type(error).__name__.lower()
        or getattr(error, "interrupted_after_sending", False) is True
    )
