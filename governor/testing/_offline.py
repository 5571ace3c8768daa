"""An offline LiteLLM provider that stands in for named real models.

``install_offline_provider()`` registers a LiteLLM custom provider named
``offline`` (chat completions, streamed or not, and embeddings). A call to
``litellm.completion(model="offline/gpt-4o-mini", ...)``
(or ``ChatLiteLLM(model="offline/gpt-4o-mini")``) then never leaves the
process, yet looks like a call to ``gpt-4o-mini``:

* ``response.model`` is ``gpt-4o-mini`` and ``usage`` is counted with that
  model's tokenizer (``litellm.token_counter``), so the rate card prices it
  as that model; a model LiteLLM counts with a tokenizer downloaded from the
  Hugging Face Hub is counted with tiktoken instead, since nothing offline
  may reach the network (LiteLLM's ``disable_hf_tokenizer_download`` is set
  while the provider is installed);
* it takes about as long as that model would (time to first token plus
  decoding time), scaled by ``speed``; a call whose ``timeout=`` is shorter
  than that raises ``litellm.Timeout`` when it runs out, as a provider's
  client would;
* it answers with, in order: the responder the caller installed, a recorded
  real answer of that model to that prompt (RouterBench rows shipped in
  ``governor/testing/data``), or a short deterministic stand-in answer.

One switch moves an example to a real provider: build model names with
:func:`offline_model` and set ``GOVERNOR_PROVIDER=live``; the same code then
sends ``gpt-4o-mini`` to whatever LiteLLM reaches with your keys.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from governor._errors import ConfigError
from governor.pricing import Usage
from governor.testing._recorded import recorded_answer

__all__ = [
    "ENV_OFFLINE_SPEED",
    "ENV_PROVIDER",
    "MODEL_PREFIX",
    "PROVIDER_NAME",
    "ErrorKind",
    "LatencyProfile",
    "OfflineAnswer",
    "OfflineCall",
    "OfflineProvider",
    "Responder",
    "install_offline_provider",
    "latency_profile",
    "offline_model",
    "stands_in_for",
    "uninstall_offline_provider",
]

logger = logging.getLogger(__name__)

PROVIDER_NAME = "offline"
"""The LiteLLM provider name the offline provider registers."""

MODEL_PREFIX = PROVIDER_NAME + "/"
"""Prefix that routes a model name to the offline provider."""

ENV_PROVIDER = "GOVERNOR_PROVIDER"
"""``offline`` (default when unset) or ``live``; read by :func:`offline_model`."""

ENV_OFFLINE_SPEED = "GOVERNOR_OFFLINE_SPEED"
"""Latency multiplier for offline answers: 1.0 (default) is realistic, 0 instant."""

ErrorKind = Literal["rate_limit", "server_error", "timeout", "context_window"]
_ERROR_KINDS: tuple[str, ...] = get_args(ErrorKind)


@dataclass(frozen=True, kw_only=True)
class OfflineAnswer:
    """What the offline model answers: text, tool calls, or an injected error.

    Attributes:
        text: the assistant's text.
        tool_calls: OpenAI-style tool calls. Each is either the full form
            ``{"id": ..., "type": "function", "function": {"name": ...,
            "arguments": "<json>"}}`` or the short form ``{"name": ...,
            "arguments": {...}}``; both are normalised to the full form, with a
            deterministic ``id`` when none is given.
        error: when set, the call raises the matching LiteLLM exception
            (``rate_limit`` -> ``litellm.RateLimitError``, ``server_error`` ->
            ``litellm.InternalServerError``, ``timeout`` -> ``litellm.Timeout``,
            ``context_window`` -> ``litellm.ContextWindowExceededError``)
            after the time to first token, and bills nothing.
    """

    text: str = ""
    tool_calls: Sequence[Mapping[str, Any]] = ()
    error: ErrorKind | None = None

    def __post_init__(self) -> None:
        if self.error is not None and self.error not in _ERROR_KINDS:
            raise ConfigError(
                f"OfflineAnswer.error={self.error!r} is not a known error kind; "
                f"accepted: {', '.join(_ERROR_KINDS)} or None"
            )
        normal = tuple(_normal_tool_call(c, i) for i, c in enumerate(self.tool_calls))
        object.__setattr__(self, "tool_calls", normal)


Responder = Callable[
    [str, list[dict[str, Any]], list[dict[str, Any]] | None],
    "str | OfflineAnswer | None",
]
"""``(model, messages, tools) -> answer``; ``None`` falls through to the
recorded or default answer. ``model`` is the real model name (no prefix)."""


@dataclass(frozen=True, kw_only=True)
class LatencyProfile:
    """How long a model takes: time to first token, then decoding speed."""

    ttft_s: float
    tokens_per_s: float

    def duration_s(self, completion_tokens: int) -> float:
        """Return the time a whole answer of ``completion_tokens`` takes."""
        return self.ttft_s + completion_tokens / self.tokens_per_s


@dataclass(frozen=True, kw_only=True)
class OfflineCall:
    """One call the offline provider answered, as the test sees it.

    ``model`` is the real model stood in for; ``answer`` is what was sent back
    (after truncation to ``max_tokens``); ``source`` is ``"responder"``,
    ``"recorded"`` or ``"default"``.
    """

    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    max_tokens: int | None
    stream: bool
    answer: OfflineAnswer
    usage: Usage
    finish_reason: str
    source: str
    simulated_s: float


# Rough public figures for hosted APIs, not measurements of this project; they
# only need to make small models visibly faster than large ones.
_FAST = LatencyProfile(ttft_s=0.25, tokens_per_s=150.0)
_STANDARD = LatencyProfile(ttft_s=0.5, tokens_per_s=70.0)
_SLOW = LatencyProfile(ttft_s=0.9, tokens_per_s=35.0)
_FAST_MARKERS = ("mini", "nano", "haiku", "flash", "instant", "3.5-turbo", "7b", "8b")
_SLOW_MARKERS = ("opus", "gpt-4-", "claude-v", "70b", "o1", "o3")


def latency_profile(model: str) -> LatencyProfile:
    """Return the latency the offline provider simulates for ``model``."""
    name = model.lower()
    if any(marker in name for marker in _FAST_MARKERS):
        return _FAST
    if any(marker in name for marker in _SLOW_MARKERS):
        return _SLOW
    return _STANDARD


def offline_model(name: str) -> str:
    """Return the model name to use under the current provider switch.

    With ``GOVERNOR_PROVIDER`` unset or ``offline`` this is ``"offline/" +
    name`` (answered in process, no keys); with ``GOVERNOR_PROVIDER=live`` it
    is ``name`` unchanged, sent to the real provider through LiteLLM.

    Raises:
        ConfigError: ``GOVERNOR_PROVIDER`` holds another value.
    """
    mode = os.environ.get(ENV_PROVIDER, "").strip().lower() or PROVIDER_NAME
    if mode == "live":
        return name
    if mode != PROVIDER_NAME:
        raise ConfigError(
            f"{ENV_PROVIDER}={mode!r} is not understood; accepted: 'offline' "
            "(the default) or 'live'"
        )
    return name if name.startswith(MODEL_PREFIX) else MODEL_PREFIX + name


def stands_in_for(model: str) -> str | None:
    """Return the real model an ``offline/...`` name stands in for, else None."""
    if model.startswith(MODEL_PREFIX):
        return model[len(MODEL_PREFIX) :]
    return None


@dataclass(frozen=True, kw_only=True)
class _Reply:
    call: OfflineCall
    profile: LatencyProfile
    speed: float

    @property
    def ttft_s(self) -> float:
        return self.profile.ttft_s * self.speed

    @property
    def decode_s(self) -> float:
        tokens = self.call.usage.completion_tokens
        return tokens / self.profile.tokens_per_s * self.speed


class OfflineProvider:
    """The offline provider's state: how it answers, and every call it saw.

    Use :func:`install_offline_provider` to get the installed instance. It is
    safe to call from several threads and event loops at once.
    """

    def __init__(self, responder: Responder | None = None, *, speed: float) -> None:
        self.responder = responder
        self.speed = speed
        self._calls: list[OfflineCall] = []
        self._lock = threading.Lock()
        self.litellm_handler = _make_litellm_handler(self)

    @property
    def calls(self) -> list[OfflineCall]:
        """A snapshot of the calls answered so far, oldest first."""
        with self._lock:
            return list(self._calls)

    def clear_calls(self) -> None:
        """Forget the calls recorded so far."""
        with self._lock:
            self._calls.clear()

    def _reply(
        self,
        model: str,
        messages: list[Any],
        params: Mapping[str, Any],
        *,
        stream: bool,
    ) -> _Reply:
        """Decide the answer to one call, count it and record it (no waiting)."""
        messages = [dict(m) for m in copy.deepcopy(messages)]
        tools = copy.deepcopy(params.get("tools"))
        max_tokens = params.get("max_tokens") or params.get("max_completion_tokens")
        answer, source = self._answer(model, messages, tools)
        _alias_price(model)
        answer, usage, finish = _count(model, messages, tools, answer, max_tokens)
        profile = latency_profile(model)
        call = OfflineCall(
            model=model,
            messages=messages,
            tools=tools,
            max_tokens=max_tokens,
            stream=stream,
            answer=answer,
            usage=usage,
            finish_reason=finish,
            source=source,
            simulated_s=profile.duration_s(usage.completion_tokens) * self.speed,
        )
        with self._lock:
            self._calls.append(call)
        logger.debug("offline %s answered from %s: %s", model, source, usage)
        return _Reply(call=call, profile=profile, speed=self.speed)

    def _embed(
        self, model: str, inputs: list[str | list[int]]
    ) -> tuple[list[list[float]], Usage]:
        """Embed ``inputs`` lexically, count them as ``model`` would, record it.

        An input given as token ids counts one token per id, as the real
        APIs count it.
        """
        from governor.cache import HashingEmbedder

        _alias_price(model)
        texts = [item if isinstance(item, str) else str(item) for item in inputs]
        vectors = HashingEmbedder(_EMBEDDING_DIM).embed(texts)
        usage = Usage(prompt_tokens=sum(_input_tokens(model, i) for i in inputs))
        call = OfflineCall(
            model=model,
            messages=[{"role": "user", "content": text} for text in texts],
            tools=None,
            max_tokens=None,
            stream=False,
            answer=OfflineAnswer(),
            usage=usage,
            finish_reason="stop",
            source="embedding",
            simulated_s=_EMBEDDING_S * self.speed,
        )
        with self._lock:
            self._calls.append(call)
        return vectors.tolist(), usage

    def _answer(
        self, model: str, messages: list[dict[str, Any]], tools: list[Any] | None
    ) -> tuple[OfflineAnswer, str]:
        if self.responder is not None:
            given = self.responder(model, messages, tools)
            if given is not None:
                answer = OfflineAnswer(text=given) if isinstance(given, str) else given
                return answer, "responder"
        prompt = _prompt_text(messages)
        recorded = recorded_answer(model, prompt)
        if recorded is not None:
            return OfflineAnswer(text=recorded), "recorded"
        return OfflineAnswer(text=_default_text(model, prompt)), "default"


# Offline embeddings: lexical vectors of this size, after about this long.
_EMBEDDING_DIM = 256
_EMBEDDING_S = 0.05


def _embedding_inputs(value: Any) -> list[str | list[int]]:
    """The inputs of an embedding call: texts, or lists of token ids (a flat
    list of ids is one input, as the OpenAI API reads it)."""
    if isinstance(value, str):
        return [value]
    items = list(value)
    if items and all(isinstance(item, int) for item in items):
        return [items]
    return [item if isinstance(item, str | list) else str(item) for item in items]


def _input_tokens(model: str, item: str | list[int]) -> int:
    import litellm

    if isinstance(item, list):
        return len(item)
    return int(litellm.token_counter(model=model, text=item))


def _fill_embedding(
    model_response: Any, model: str, vectors: list[list[float]], usage: Usage
) -> Any:
    from litellm.types.utils import Usage as LiteLLMUsage

    model_response.data = [
        {"object": "embedding", "index": index, "embedding": vector}
        for index, vector in enumerate(vectors)
    ]
    model_response.model = model
    model_response.usage = LiteLLMUsage(**_usage_block(usage))
    return model_response


def _alias_price(model: str) -> None:
    """Give ``offline/<model>`` the price of ``<model>`` in LiteLLM's map.

    LiteLLM prices a response by provider and model, so without this alias
    ``response_cost`` would be missing for offline answers.
    """
    import litellm

    alias = MODEL_PREFIX + model
    entry = litellm.model_cost.get(model)
    if entry is not None and alias not in litellm.model_cost:
        litellm.model_cost[alias] = {**entry, "litellm_provider": PROVIDER_NAME}


def _prompt_text(messages: Sequence[Mapping[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, Mapping)]
        return "".join(str(p) for p in parts)
    return ""


def _default_text(model: str, prompt: str) -> str:
    # sha256, not hash(): the answer must not change between processes.
    digest = hashlib.sha256(f"{model}\n{prompt}".encode()).hexdigest()[:8]
    snippet = " ".join(prompt.split()[:12]) or "(empty prompt)"
    return f"[offline {model} #{digest}] A stand-in answer to: {snippet}"


def _normal_tool_call(call: Mapping[str, Any], index: int) -> dict[str, Any]:
    function = call.get("function", call)
    arguments = function.get("arguments", {})
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, sort_keys=True)
    name = str(function["name"])
    call_id = call.get("id")
    if not call_id:
        seed = f"{index}\n{name}\n{arguments}".encode()
        call_id = "call_" + hashlib.sha256(seed).hexdigest()[:24]
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def _count(
    model: str,
    messages: list[dict[str, Any]],
    tools: list[Any] | None,
    answer: OfflineAnswer,
    max_tokens: int | None,
) -> tuple[OfflineAnswer, Usage, str]:
    """Count usage with the model's tokenizer and cut text at ``max_tokens``."""
    import litellm

    if answer.error is not None:
        return answer, Usage(), "error"
    prompt_tokens = litellm.token_counter(model=model, messages=messages, tools=tools)
    answer, completion_tokens, cut = _fit(model, answer, max_tokens)
    finish = "length" if cut else ("tool_calls" if answer.tool_calls else "stop")
    usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    return answer, usage, finish


def _fit(
    model: str, answer: OfflineAnswer, max_tokens: int | None
) -> tuple[OfflineAnswer, int, bool]:
    import litellm

    tokens = _completion_tokens(model, answer)
    if max_tokens is None or tokens <= max_tokens or not answer.text:
        return answer, tokens, False
    # Decoding a prefix and counting again can differ by a token or two, so
    # shorten until the count fits: the usage must never exceed max_tokens.
    ids = litellm.encode(model=model, text=answer.text)
    keep = max(max_tokens, 0)
    while True:
        text = litellm.decode(model=model, tokens=ids[:keep])
        cut = OfflineAnswer(text=text, tool_calls=answer.tool_calls)
        tokens = _completion_tokens(model, cut)
        if tokens <= max_tokens or keep <= 0:
            return cut, tokens, True
        keep -= 1


def _completion_tokens(model: str, answer: OfflineAnswer) -> int:
    import litellm

    calls = "".join(
        c["function"]["name"] + c["function"]["arguments"] for c in answer.tool_calls
    )
    text = answer.text + calls
    return int(litellm.token_counter(model=model, text=text)) if text else 0


def _raise_error(reply: _Reply) -> None:
    import litellm

    kind = reply.call.answer.error
    if kind is None:
        return
    model = reply.call.model
    message = f"offline provider: injected {kind} error for {model}"
    exc: Exception
    if kind == "rate_limit":
        exc = litellm.RateLimitError(message, llm_provider=PROVIDER_NAME, model=model)
    elif kind == "server_error":
        exc = litellm.InternalServerError(
            message, llm_provider=PROVIDER_NAME, model=model
        )
    elif kind == "timeout":
        exc = litellm.Timeout(message, model=model, llm_provider=PROVIDER_NAME)
    else:
        exc = litellm.ContextWindowExceededError(
            message, model=model, llm_provider=PROVIDER_NAME
        )
    raise exc


def _fill(model_response: Any, reply: _Reply) -> Any:
    from litellm.types.utils import Choices, Message
    from litellm.types.utils import Usage as LiteLLMUsage

    call = reply.call
    message = Message(
        role="assistant",
        content=call.answer.text or None,
        tool_calls=list(call.answer.tool_calls) or None,
    )
    model_response.choices = [
        Choices(index=0, message=message, finish_reason=call.finish_reason)
    ]
    model_response.model = call.model
    model_response.usage = LiteLLMUsage(**_usage_block(call.usage))
    return model_response


def _usage_block(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def _chunks(call: OfflineCall) -> list[dict[str, Any]]:
    """Split an answer into LiteLLM generic stream chunks, usage on the last.

    LiteLLM passes the last chunk's usage on only when the caller asked for
    ``stream_options={"include_usage": True}``, as a real provider would.
    """
    pieces = re.findall(r"\s*\S+\s*", call.answer.text) or (
        [call.answer.text] if call.answer.text else []
    )
    chunks = [_chunk(text=piece) for piece in pieces]
    for index, tool_call in enumerate(call.answer.tool_calls):
        chunks.append(_chunk(tool_use={**tool_call, "index": index}))
    final = _chunk(is_finished=True, finish_reason=call.finish_reason)
    final["usage"] = _usage_block(call.usage)
    return [*chunks, final]


def _chunk(
    *,
    text: str = "",
    tool_use: dict[str, Any] | None = None,
    is_finished: bool = False,
    finish_reason: str = "",
) -> dict[str, Any]:
    return {
        "text": text,
        "tool_use": tool_use,
        "is_finished": is_finished,
        "finish_reason": finish_reason,
        "usage": None,
        "index": 0,
    }


def _stream_plan(reply: _Reply) -> list[tuple[float, dict[str, Any]]]:
    """Pair each chunk with the wait before it: TTFT first, then even gaps."""
    chunks = _chunks(reply.call)
    gap_s = reply.decode_s / max(len(chunks) - 1, 1)
    return [(reply.ttft_s if i == 0 else gap_s, c) for i, c in enumerate(chunks)]


def _fail_before_stream(reply: _Reply, timeout: object = None) -> None:
    # A provider refuses a stream before its first chunk; raised inside the
    # iterator instead, LiteLLM would wrap it in MidStreamFallbackError.
    wait_s, late = _within(reply.ttft_s, timeout)
    if reply.call.answer.error is None and not late:
        return
    if wait_s > 0:
        time.sleep(wait_s)
    _raise_timeout(reply, late)
    _raise_error(reply)


def _within(wait_s: float, timeout: object) -> tuple[float, bool]:
    """How long to wait for an answer due in ``wait_s`` under the call's
    ``timeout`` (seconds, or an httpx.Timeout's read timeout), and whether
    the timeout cuts it off first."""
    limit = getattr(timeout, "read", timeout)
    if isinstance(limit, bool) or not isinstance(limit, int | float) or limit <= 0:
        return wait_s, False
    return (float(limit), True) if wait_s > limit else (wait_s, False)


def _raise_timeout(reply: _Reply, late: bool) -> None:
    """Raise ``litellm.Timeout`` as a provider's client would, when ``late``."""
    if not late:
        return
    import litellm

    model = reply.call.model
    raise litellm.Timeout(
        f"offline provider: {model} did not answer within the call's timeout",
        model=model,
        llm_provider=PROVIDER_NAME,
    )


def _sync_stream(reply: _Reply) -> Iterator[dict[str, Any]]:
    for wait_s, chunk in _stream_plan(reply):
        if wait_s > 0:
            time.sleep(wait_s)
        yield chunk


async def _async_stream(reply: _Reply) -> AsyncIterator[dict[str, Any]]:
    for wait_s, chunk in _stream_plan(reply):
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        yield chunk


def _make_litellm_handler(provider: OfflineProvider) -> Any:
    """Build the ``litellm.CustomLLM`` that drives ``provider``.

    LiteLLM is imported here, not at module import, because it takes seconds.
    LiteLLM calls its handlers with keyword arguments only, so each method
    names the few it needs and ignores the rest.
    """
    from litellm import CustomLLM

    class _OfflineLLM(CustomLLM):  # type: ignore[misc]  # litellm is untyped (mypy skips it)
        def completion(
            self,
            *,
            model: str,
            messages: list[Any],
            model_response: Any,
            optional_params: dict[str, Any],
            **_: Any,
        ) -> Any:
            reply = provider._reply(model, messages, optional_params, stream=False)
            wait_s, late = _within(reply.ttft_s + reply.decode_s, _.get("timeout"))
            if wait_s > 0:
                time.sleep(wait_s)
            _raise_timeout(reply, late)
            _raise_error(reply)
            return _fill(model_response, reply)

        async def acompletion(
            self,
            *,
            model: str,
            messages: list[Any],
            model_response: Any,
            optional_params: dict[str, Any],
            **_: Any,
        ) -> Any:
            reply = provider._reply(model, messages, optional_params, stream=False)
            wait_s, late = _within(reply.ttft_s + reply.decode_s, _.get("timeout"))
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            _raise_timeout(reply, late)
            _raise_error(reply)
            return _fill(model_response, reply)

        def streaming(
            self,
            *,
            model: str,
            messages: list[Any],
            optional_params: dict[str, Any],
            **_: Any,
        ) -> Iterator[dict[str, Any]]:
            reply = provider._reply(model, messages, optional_params, stream=True)
            _fail_before_stream(reply, _.get("timeout"))
            return _sync_stream(reply)

        def astreaming(
            self,
            *,
            model: str,
            messages: list[Any],
            optional_params: dict[str, Any],
            **_: Any,
        ) -> AsyncIterator[dict[str, Any]]:
            reply = provider._reply(model, messages, optional_params, stream=True)
            # LiteLLM runs this on an executor thread (acompletion wraps the
            # sync dispatch), so a blocking wait here does not stall the loop.
            _fail_before_stream(reply, _.get("timeout"))
            return _async_stream(reply)

        def embedding(
            self, *, model: str, input: Any, model_response: Any, **_: Any
        ) -> Any:
            vectors, usage = provider._embed(model, _embedding_inputs(input))
            time.sleep(_EMBEDDING_S * provider.speed)
            return _fill_embedding(model_response, model, vectors, usage)

        async def aembedding(
            self, *, model: str, input: Any, model_response: Any, **_: Any
        ) -> Any:
            vectors, usage = provider._embed(model, _embedding_inputs(input))
            await asyncio.sleep(_EMBEDDING_S * provider.speed)
            return _fill_embedding(model_response, model, vectors, usage)

    return _OfflineLLM()


_install_lock = threading.Lock()
_installed: OfflineProvider | None = None


def install_offline_provider(
    responder: Responder | None = None, *, speed: float | None = None
) -> OfflineProvider:
    """Register the ``offline`` LiteLLM provider and return its state.

    Idempotent: every call returns the same :class:`OfflineProvider`, set to
    the ``responder`` and ``speed`` of the latest call, and keeps exactly one
    ``offline`` entry in ``litellm.custom_provider_map``.

    Args:
        responder: answers calls before recorded and default answers are
            consulted; ``None`` to use only those.
        speed: latency multiplier (1.0 realistic, 0 instant). ``None`` reads
            ``GOVERNOR_OFFLINE_SPEED`` (default 1.0).

    Raises:
        ConfigError: ``speed`` or ``GOVERNOR_OFFLINE_SPEED`` is not a number >= 0.
    """
    global _installed
    value = _speed_from_env() if speed is None else _check_speed(speed, "speed")
    with _install_lock:
        if _installed is None:
            _installed = OfflineProvider(responder, speed=value)
        _installed.responder = responder
        _installed.speed = value
        _register(_installed.litellm_handler)
        _stop_tokenizer_downloads()
        return _installed


def uninstall_offline_provider() -> None:
    """Remove the ``offline`` entry from ``litellm.custom_provider_map`` and
    give LiteLLM back its tokenizer downloads setting."""
    import litellm

    global _downloads_before
    with _install_lock:
        litellm.custom_provider_map = [
            e for e in litellm.custom_provider_map if e["provider"] != PROVIDER_NAME
        ]
        if _downloads_before is not None:
            litellm.disable_hf_tokenizer_download = _downloads_before[0]
            _downloads_before = None


# LiteLLM's tokenizer downloads setting as it was before the provider was
# installed; None while the provider has not changed it.
_downloads_before: tuple[Any] | None = None


def _stop_tokenizer_downloads() -> None:
    """Keep token counts offline while the provider is installed.

    LiteLLM counts some models (Llama, Cohere and others) with a tokenizer it
    downloads from the Hugging Face Hub; on a machine without a network it
    retries for about 20 seconds before it counts with tiktoken. Offline
    models count with tiktoken at once, as LiteLLM would after that wait.
    """
    import litellm

    global _downloads_before
    if not hasattr(litellm, "disable_hf_tokenizer_download"):
        return
    if _downloads_before is None:
        _downloads_before = (litellm.disable_hf_tokenizer_download,)
    litellm.disable_hf_tokenizer_download = True


def _register(handler: Any) -> None:
    import litellm
    from litellm.utils import custom_llm_setup

    entries = [e for e in litellm.custom_provider_map if e["provider"] != PROVIDER_NAME]
    entries.append({"provider": PROVIDER_NAME, "custom_handler": handler})
    litellm.custom_provider_map = entries
    # LiteLLM adds custom providers to its provider list lazily, on the next
    # completion; doing it now lets token_counter and pricing see them at once.
    custom_llm_setup()


def _speed_from_env() -> float:
    raw = os.environ.get(ENV_OFFLINE_SPEED, "").strip()
    if not raw:
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    return _check_speed(value, f"{ENV_OFFLINE_SPEED}={raw!r}")


def _check_speed(value: float, label: str) -> float:
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(
            f"{label} is not a valid offline speed; accepted: a finite number >= 0 "
            "(1.0 realistic latency, 0 instant)"
        )
    return float(value)
