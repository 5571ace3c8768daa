"""Describe a LiteLLM embedding call to the engine, and read back what it used.

An embedding call has a prompt and no answer: each input text is one
message, nothing is reserved for output, and the provider reports only
prompt tokens. Inputs given as token ids are counted exactly. A reported
count that is malformed (negative, not a whole number, past a billion
tokens) is not charged: the inputs are counted locally instead, as for an
answer without usage.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from governor._calls import EMBEDDINGS, CallRequest, CallResult
from governor._errors import ConfigError
from governor.adapters._tokens import count_text_tokens
from governor.pricing import Usage
from governor.pricing._usage import usage_count

__all__ = ["embedding_request", "embedding_result"]

logger = logging.getLogger(__name__)


def embedding_request(
    kwargs: Mapping[str, Any],
    *,
    parent_span: Any = None,
    attribution: Mapping[str, str] | None = None,
    provider: str | None = None,
    prices: Mapping[str, Any] | None = None,
) -> CallRequest:
    """The engine's view of one ``litellm.embedding`` call, priced as
    ``provider/model`` when ``provider`` is given."""
    model = str(kwargs["model"])
    texts, token_ids = _inputs(kwargs["input"])

    def count() -> int:
        return sum(count_text_tokens(model, text) for text in texts)

    return CallRequest(
        model=model,
        messages=[{"role": "user", "content": text} for text in texts],
        operation=EMBEDDINGS,
        count_prompt_tokens=count if texts else None,
        prompt_tokens=token_ids if not texts else None,
        parent_span=parent_span,
        attribution=attribution,
        provider=provider,
        prices=prices,
    )


def embedding_result(request: CallRequest, response: Any) -> CallResult:
    """What an embedding call used: the provider's prompt tokens, else counted."""
    tokens = _reported_tokens(getattr(response, "usage", None), request.model)
    estimated = tokens is None
    if tokens is None:
        counter = request.count_prompt_tokens
        tokens = request.prompt_tokens or (counter() if counter else 0)
    usage = Usage(prompt_tokens=tokens, estimated=estimated)
    return CallResult(usage=usage, response_model=_model(response))


def _inputs(value: Any) -> tuple[list[str], int]:
    """The input's texts, or (when it is token ids) their number."""
    if isinstance(value, str):
        return [value], 0
    if not isinstance(value, Sequence) or not value:
        raise ConfigError(
            f"embedding input must be a string or a non-empty list of strings "
            f"or token ids, got {type(value).__name__}"
        )
    if all(isinstance(item, str) for item in value):
        return list(value), 0
    if all(isinstance(item, int) and not isinstance(item, bool) for item in value):
        return [], len(value)
    if all(_token_list(item) for item in value):
        return [], sum(len(item) for item in value)
    raise ConfigError(
        "embedding input mixes kinds: give all strings, one list of token ids, "
        "or a list of token-id lists"
    )


def _token_list(item: Any) -> bool:
    return isinstance(item, list) and all(
        isinstance(token, int) and not isinstance(token, bool) for token in item
    )


def _reported_tokens(usage: Any, model: str) -> int | None:
    """The provider's prompt tokens (else its total), or None when it reported
    none, or a malformed count (warned of, and its total not trusted)."""
    if usage is None:
        return None
    try:
        for name in ("prompt_tokens", "total_tokens"):
            tokens = usage_count(_field(usage, name), name)
            if tokens > 0:
                return tokens
    except ConfigError as exc:
        logger.warning(
            "the provider's usage for model %s is malformed (%s); the embedding "
            "is charged a local token count of its inputs, not its "
            "total_tokens, marked estimated",
            model,
            exc,
        )
    return None


def _field(usage: Any, name: str) -> Any:
    if isinstance(usage, Mapping):
        return usage.get(name)
    return getattr(usage, name, None)


def _model(response: Any) -> str | None:
    model = getattr(response, "model", None)
    return model if isinstance(model, str) else None
