"""Local token counts, for calls whose provider reported no usage."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from governor._calls import message_fields, prompt_part_text
from governor._errors import ConfigError
from governor.pricing import Usage
from governor.pricing._usage import well_formed_usage

__all__ = [
    "NOT_SENT_ATTRIBUTE",
    "count_message_tokens",
    "count_prompt_tokens",
    "count_text_tokens",
    "countable_prompt",
    "interrupted_after_sending",
    "read_usage",
    "reasons_unseen",
    "settled_usage",
    "total_tokens_of",
    "well_formed_usage",
]

logger = logging.getLogger(__name__)

# Set to True on an exception by an adapter that saw the call fail before its
# request was handed to the network: nothing went out, nothing is billed.
NOT_SENT_ATTRIBUTE = "governor_request_not_sent"


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

    Every field is counted as ``litellm.token_counter`` counts the message
    as sent: the role, the text, ``name``, ``tool_call_id``, tool calls
    (OpenAI's or LangChain's shape) and any other text field. Content
    parts other than text (images, files) are not: use it for prompts that
    :func:`countable_prompt` accepts, or as an estimate after the fact.
    """
    plain = [_countable(m) for m in messages]
    counted = _litellm().token_counter(
        model=_tokenizer_model(model), messages=plain, tools=tools or None
    )
    return int(counted)


def count_prompt_tokens(
    model: str, messages: Sequence[Mapping[str, Any]], extra_prompt: object = None
) -> int:
    """Count a prompt with the other parts a provider bills as prompt.

    ``extra_prompt`` is a request's :attr:`CallRequest.extra_prompt`: a
    mapping that may hold ``tools``, ``functions`` and ``response_format``.
    """
    parts = extra_prompt if isinstance(extra_prompt, Mapping) else {}
    tools = list(parts.get("tools") or ())
    tools += [{"type": "function", "function": f} for f in parts.get("functions") or ()]
    counted = count_message_tokens(model, messages, tools=tools)
    schema = parts.get("response_format")
    if schema is not None:
        counted += count_text_tokens(model, prompt_part_text(schema))
    return counted


def countable_prompt(messages: Sequence[Mapping[str, Any]]) -> bool:
    """True when every message is text (or text parts) with tool calls at
    most: :func:`count_message_tokens` then counts all of it."""
    return all(_text_only(m.get("content")) for m in messages)


def _text_only(content: object) -> bool:
    if content is None or isinstance(content, str):
        return True
    if not isinstance(content, list):
        return False
    return all(
        isinstance(p, str)
        or (isinstance(p, Mapping) and p.get("type", "text") == "text")
        for p in content
    )


def _countable(message: Mapping[str, Any]) -> dict[str, Any]:
    """The message as LiteLLM's counter reads it: every field kept (it
    counts each text field, ``name`` and ``tool_call_id`` among them), the
    content's text parts only, tool calls in OpenAI's shape."""
    entry = {str(k): v for k, v in message_fields(message) if v is not None}
    entry["role"] = str(message.get("role") or "user")
    entry["content"] = _text_content(message.get("content"))
    entry.pop("tool_calls", None)
    entry.pop("function_call", None)
    calls = [_openai_call(c) for c in message.get("tool_calls") or ()]
    if calls:
        entry["tool_calls"] = calls
    legacy = message.get("function_call")
    if legacy:
        entry["function_call"] = _openai_call({"function": legacy})["function"]
    return entry


def _text_content(content: object) -> str | list[Any]:
    """A content's text: a string, or its text parts as LiteLLM reads them
    (a part without a type is text; image and file parts are left out)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return "" if content is None else str(content)
    parts: list[Any] = []
    for part in content:
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, Mapping) and part.get("type", "text") == "text":
            parts.append({"type": "text", "text": str(part.get("text") or "")})
    return parts


def _openai_call(call: Any) -> dict[str, Any]:
    """A tool call in OpenAI's shape, from OpenAI's, LangChain's or an object."""
    function = _field(call, "function")
    if function is not None:
        name, arguments = _field(function, "name"), _field(function, "arguments")
    else:  # LangChain: {"name", "args", "id"}
        name, arguments = _field(call, "name"), _field(call, "args")
    return {
        "id": str(_field(call, "id") or ""),
        "type": "function",
        "function": {
            "name": str(name or ""),
            "arguments": prompt_part_text(arguments if arguments is not None else ""),
        },
    }


def _field(obj: Any, key: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def count_text_tokens(model: str, text: str) -> int:
    """Count a text's tokens with the model's tokenizer (LiteLLM's)."""
    if not text:
        return 0
    return int(_litellm().token_counter(model=_tokenizer_model(model), text=text))


def interrupted_after_sending(error: BaseException) -> bool:
    """True when a call ended without an answer after its request went out.

    A cancelled or timed-out request has reached the provider, which may
    bill its prompt; an error answer (a refusal, a rate limit, a bad
    request) bills nothing. Without a sign of where it stopped, a cancelled
    call is taken to have sent its request; one that an adapter marked with
    :data:`NOT_SENT_ATTRIBUTE` (it stopped before sending) did not.
    """
    if getattr(error, NOT_SENT_ATTRIBUTE, False) is True:
        return False
    if isinstance(error, asyncio.CancelledError | KeyboardInterrupt | TimeoutError):
        return True
    return (
        "timeout" in type(error).__name__.lower()
        or getattr(error, "interrupted_after_sending", False) is True
    )


def reasons_unseen(model: str) -> bool:
    """True when LiteLLM's price map marks ``model`` as a reasoning model
    (``supports_reasoning``): its bill counts reasoning tokens that its
    answer does not show, so no local count of the answer finds them.

    The name is looked up as written, then with one more ``provider/``
    prefix removed at a time; a model the map does not know is taken not
    to reason.
    """
    models = getattr(_litellm(), "model_cost", None)
    if not isinstance(models, Mapping):
        return False
    name = _tokenizer_model(model)
    while True:
        entry = models.get(name)
        if isinstance(entry, Mapping):
            return entry.get("supports_reasoning") is True
        head, slash, rest = name.partition("/")
        if not slash or not rest or not head:
            return False
        name = rest


def read_usage(
    read: Callable[[], Usage | None],
    model: str,
    sent: Callable[[], object] | None = None,
) -> Usage | None:
    """The provider's usage, or None when it sent none or sent nonsense.

    A provider that answered with negative or non-numeric token counts still
    answered: the call is settled from a local count instead of failing.
    Given ``sent``, which gives the usage as the provider sent it (asked only
    when it is malformed), what is well formed in it is kept instead (see
    :func:`well_formed_usage`), marked estimated, so that only a side it
    lacks is counted locally.
    """
    try:
        return read()
    except ConfigError as exc:
        if sent is None:
            logger.warning(
                "the provider's usage for model %s is not usable (%s); the call "
                "is charged from a local token count, marked estimated",
                model,
                exc,
            )
            return None
        logger.warning(
            "the provider's usage for model %s is malformed (%s); the call is "
            "charged its well-formed counts and a local token count of a side "
            "they lack, not its total_tokens, marked estimated",
            model,
            exc,
        )
        return well_formed_usage(sent())


def total_tokens_of(usage: object) -> int:
    """A usage's ``total_tokens`` (a dict's or an object's), or 0 when it
    has none that is a whole non-negative number."""
    total = _field(usage, "total_tokens") if usage is not None else None
    if isinstance(total, float) and total.is_integer():
        total = int(total)
    if isinstance(total, bool) or not isinstance(total, int):
        return 0
    return max(total, 0)


def settled_usage(
    reported: Usage | None,
    *,
    model: str,
    messages: Sequence[Mapping[str, Any]],
    text: str | None,
    extra_prompt: object = None,
    reported_total: Callable[[], int] | None = None,
    hold: tuple[int, int] | None = None,
) -> Usage:
    """The usage to settle a finished call at.

    The provider's own numbers, except where it left a side out or reported
    zero for it although there was a prompt (always) or an answer: OpenAI-
    compatible servers and proxies often send no usage, or zeros, and a call
    settled at zero would never touch its budget. A side counted locally
    makes the usage ``estimated``. The prompt is counted with its tools and
    response format (``extra_prompt``), which the provider bills too.

    ``reported_total`` gives the provider's ``total_tokens`` (asked only
    when a side is missing): a usage that gives only a total is not settled
    below it. What the local counts leave of the
    total is charged to the side the provider left out (as output when it
    left out both: the dearer side). A ``reported`` usage marked estimated
    (what :func:`read_usage` kept of a malformed one) is not asked for its
    total: a provider that sent nonsense counts is not charged a total it
    sent with them.

    ``hold`` is the call's hold as (prompt tokens, output tokens). With it,
    what no local count can see is charged at its hold, the worst case
    reserved: a prompt with parts other than text (images, audio, files)
    at the prompt's, and the output of a reasoning model (see
    :func:`reasons_unseen`), whose hidden reasoning is billed as output, at
    the output's.
    """
    prompt = reported.prompt_tokens if reported is not None else 0
    completion = reported.completion_tokens if reported is not None else 0
    needs_prompt = prompt <= 0
    needs_completion = completion <= 0 and bool(text)
    if reported is not None and not needs_prompt and not needs_completion:
        return reported
    trusted = reported is None or not reported.estimated
    total = reported_total() if reported_total is not None and trusted else 0
    if needs_prompt:
        prompt = count_prompt_tokens(model, messages, extra_prompt)
        if hold is not None and not countable_prompt(messages):
            prompt = max(prompt, hold[0])  # parts the count leaves out
        if completion > 0:  # a reported side keeps its figure
            prompt = max(prompt, total - completion)
    if needs_completion:
        completion = count_text_tokens(model, text or "")
    unreported = reported is None or reported.completion_tokens <= 0
    if hold is not None and unreported and reasons_unseen(model):
        completion = max(completion, hold[1])  # hidden reasoning, uncounted
    completion = max(completion, total - prompt)
    parts = reported or Usage()
    cached = parts.cache_read_tokens + parts.cache_write_tokens <= prompt
    read = parts.cache_read_tokens if cached else 0
    write = parts.cache_write_tokens if cached else 0
    reasoning = min(parts.reasoning_tokens, completion)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cache_read_tokens=read,
        cache_write_tokens=write,
        reasoning_tokens=reasoning,
        estimated=True,
        # Reported audio stays audio (billed at its price) within the counts.
        audio_input_tokens=min(parts.audio_input_tokens, prompt - read - write),
        audio_output_tokens=min(parts.audio_output_tokens, completion - reasoning),
        audio_cache_read_tokens=min(parts.audio_cache_read_tokens, read),
    )
