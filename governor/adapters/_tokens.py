"""Local token counts, for calls whose provider reported no usage."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from governor._errors import ConfigError
from governor.pricing import Usage

__all__ = [
    "count_message_tokens",
    "count_text_tokens",
    "interrupted_after_sending",
    "read_usage",
    "settled_usage",
]

logger = logging.getLogger(__name__)


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


def read_usage(read: Callable[[], Usage | None], model: str) -> Usage | None:
    """The provider's usage, or None when it sent none or sent nonsense.

    A provider that answered with negative or non-numeric token counts still
    answered: the call is settled from a local count instead of failing.
    """
    try:
        return read()
    except ConfigError as exc:
        logger.warning(
            "the provider's usage for model %s is not usable (%s); the call is "
            "charged from a local token count, marked estimated",
            model,
            exc,
        )
        return None


def settled_usage(
    reported: Usage | None,
    *,
    model: str,
    messages: Sequence[Mapping[str, Any]],
    text: str | None,
) -> Usage:
    """The usage to settle a finished call at.

    The provider's own numbers, except where it left a side out or reported
    zero for it although there was a prompt (always) or an answer: OpenAI-
    compatible servers and proxies often send no usage, or zeros, and a call
    settled at zero would never touch its budget. A side counted locally
    makes the usage ``estimated``.
    """
    prompt = reported.prompt_tokens if reported is not None else 0
    completion = reported.completion_tokens if reported is not None else 0
    needs_prompt = prompt <= 0
    needs_completion = completion <= 0 and bool(text)
    if reported is not None and not needs_prompt and not needs_completion:
        return reported
    if needs_prompt:
        prompt = count_message_tokens(model, messages)
    if needs_completion:
        completion = count_text_tokens(model, text or "")
    parts = reported or Usage()
    cached = parts.cache_read_tokens + parts.cache_write_tokens <= prompt
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cache_read_tokens=parts.cache_read_tokens if cached else 0,
        cache_write_tokens=parts.cache_write_tokens if cached else 0,
        reasoning_tokens=min(parts.reasoning_tokens, completion),
        estimated=True,
    )
