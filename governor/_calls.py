"""The values that adapters hand the engine and get back for one model call."""

from __future__ import annotations

import contextlib
import contextvars
import json
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from governor._slots import Held
from governor.pricing import Usage
from governor.stores import Line

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from governor._task import Task
    from governor.policies import Budget
    from governor.pricing import Rate

__all__ = [
    "CHARGED_ATTRIBUTE",
    "EMBEDDINGS",
    "IMAGE_PART_TOKENS",
    "Admission",
    "CallRequest",
    "CallResult",
    "SpendMeter",
    "current_meter",
    "metering",
    "prompt_byte_bound",
    "prompt_part_text",
]

# Per-message overhead a chat template adds (role markers, separators); a
# generous constant keeps the byte bound an upper bound on template tokens too.
_MESSAGE_OVERHEAD_TOKENS = 8
_REQUEST_OVERHEAD_TOKENS = 16
# An image is billed by its size, not by the bytes of its URL: gpt-4o charges
# up to about 1,100 tokens for a high-detail image, Claude about 1,600 for the
# largest it takes. A data URL's base64 would overcount by orders of magnitude.
IMAGE_PART_TOKENS = 1_600
_IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})
# Message fields besides the content that the provider reads as prompt.
# Message fields the per-message overhead covers; every other one is counted.
_FRAMED_MESSAGE_KEYS = frozenset({"role", "content"})
_FILE_PARTS = frozenset({"file", "input_file", "document"})
# Models that bill one image as more tokens than IMAGE_PART_TOKENS: the most
# a high-detail image of 8 tiles (or 1,536 patches) costs, by name fragment.
_IMAGE_TOKENS_BY_FAMILY = (
    ("gpt-4o-mini", 2_833 + 8 * 5_667),
    ("gpt-4.1-nano", 3_780),
    ("gpt-4.1-mini", 2_490),
)
UNSIZED_PART_TOKENS = 128_000
"""A file passed by id or URL, whose size is unknown: the model's context
window bounds it, or this when the window is unknown."""

CHARGED_ATTRIBUTE = "governor_charged_usd"
"""Set on the exception of a governed call that raised: what it was charged."""

EMBEDDINGS = "embeddings"
"""The ``operation`` of an embedding call: no output tokens, no loop guard."""

TIME_CUT = "time_cut"
"""The admission's extras key an adapter sets when it cut a stream priced per
second at ``Policy.max_call_s``: it said so itself, so the engine does not
warn of the overrun again."""


@dataclass(frozen=True, slots=True)
class CallRequest:
    """One model call as an adapter describes it, before it is sent.

    Attributes:
        model: the model name as the caller wrote it.
        messages: the chat messages (mappings with ``role`` and ``content``).
        max_output_tokens: the request's own output ceiling, if it set one.
        can_set_max_tokens: True when the adapter will send the governor's
            ceiling if the request had none; otherwise the model's own maximum
            output is reserved.
        stream: whether the answer streams.
        operation: ``"chat"``, or ``"embeddings"`` for an embedding call (each
            input text is one message; nothing is reserved for output and the
            loop guard does not look at it).
        count_prompt_tokens: an exact counter, used only when the cheap upper
            bound does not fit the budget left.
        parent_span: the span to nest the call span under (a graph step).
        extra_prompt: other request parts that count as prompt (tools, schema).
        task: the task to charge; the current task when None.
        attribution: scope values for a call made outside any task, e.g. from
            LiteLLM's ``metadata``; the one-call task is charged to them.
        prompt_tokens: the prompt's token count when the caller knows it
            (replays); it replaces the byte bound.
        step: the graph step (LangGraph's ``langgraph_step``) making the call.
        choices: how many answers the request asks for (``n``); each may use
            the whole output ceiling.
        node: the graph node making the call.
        provider: the provider the caller named apart from the model (LiteLLM's
            ``custom_llm_provider``); the call is priced as ``provider/model``,
            so an override keyed that way applies.
        skippable: a cascade attempt: a budget refusal skips the tier and the
            task goes on, so it is counted but does not mark the task stopped.
        prices: prices the call sets for itself, as LiteLLM's fields
            (``input_cost_per_token`` and kin, or a Router deployment's);
            they lie over the rate card's entry for the model, and a policy
            override still wins (see :meth:`governor.pricing.RateCard.rate`).
    """

    model: str
    messages: Sequence[Mapping[str, Any]]
    max_output_tokens: int | None = None
    can_set_max_tokens: bool = True
    stream: bool = False
    operation: str = "chat"
    count_prompt_tokens: Callable[[], int] | None = None
    parent_span: Span | None = None
    extra_prompt: object = None
    task: Task | None = None
    attribution: Mapping[str, str] | None = None
    prompt_tokens: int | None = None
    step: int | None = None
    node: str | None = None
    branch: str | None = None
    """The graph branch (LangGraph task) the call runs in; Send branches of
    one step have different ones, calls one node makes in turn the same."""
    choices: int = 1
    provider: str | None = None
    skippable: bool = False
    prices: Mapping[str, Any] | None = None
    price_as: str | None = None
    """The model the call is priced as instead of ``model`` (an Azure
    deployment's ``base_model``); None prices ``model``."""

    @property
    def priced_model(self) -> str:
        """The name the call is priced under: the model (or the one it is
        priced as), with its provider."""
        return priced_name(self.price_as or self.model, self.provider)


class SpendMeter:
    """What the governed calls made while it was active cost, in nanodollars,
    and the tokens they settled (input plus output, as a task counts them).

    A call is metered when it is admitted in the meter's context and counted
    when it settles, wherever that happens (a stream read later, say).
    """

    def __init__(self) -> None:
        self.nanos = 0
        self.tokens = 0
        self._lock = threading.Lock()

    def add(self, nanos: int, tokens: int = 0) -> None:
        """Count one settled call's charge and tokens."""
        with self._lock:
            self.nanos += nanos
            self.tokens += tokens


_METER: contextvars.ContextVar[SpendMeter | None] = contextvars.ContextVar(
    "governor_spend_meter", default=None
)


def current_meter() -> SpendMeter | None:
    """The meter calls admitted here are counted on, if one is active."""
    return _METER.get()


@contextlib.contextmanager
def metering() -> Iterator[SpendMeter]:
    """Count the cost of every governed call admitted inside the block."""
    meter = SpendMeter()
    token = _METER.set(meter)
    try:
        yield meter
    finally:
        _METER.reset(token)


@dataclass(slots=True, weakref_slot=True, eq=False)
class Admission:
    """A call the governor admitted: what it holds and where to report back."""

    call_id: str
    task: Task
    owns_task: bool
    request: CallRequest
    rate: Rate
    max_output_tokens: int
    hold_nanos: int
    hold_tokens: int
    lines: tuple[Line, ...]
    budgets: tuple[Budget, ...]
    started_at: float
    span: Span | None = None
    held: Held = field(default_factory=lambda: Held([], 0.0))
    settled: bool = False
    served: Any = None
    """The cache hit that answered the call instead of the model, if one did."""
    stopped_before: bool = False
    """The task had been stopped already when the call was admitted (a
    fallback after a refusal): its stop is not this call's."""
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys of the budget lines the call is held on."""
        return tuple([line.key for line in self.lines])

    def hold(self) -> tuple[str, tuple[Line, ...], int, int, float]:
        """The arguments of ``Ledger.reserve`` for this call's current hold."""
        return (
            self.call_id,
            self.lines,
            self.hold_nanos,
            self.hold_tokens,
            self.task.policy.hold_ttl_s,
        )


@dataclass(frozen=True, slots=True)
class CallResult:
    """What came back from a call: usage when known, and any error.

    With ``usage`` None the call is settled at zero: the provider billed
    nothing that the adapter could see (a refused or failed request).
    ``output_text`` (the answer's text) feeds the loop guard.
    ``charge_hold`` settles the call at its whole hold, the worst case
    reserved: a request cut off after it was sent (cancelled, timed out)
    may be answered and billed in full with no usage ever seen.
    """

    usage: Usage | None = None
    response_model: str | None = None
    finish_reasons: tuple[str, ...] = ()
    error: BaseException | None = None
    output_text: str | None = None
    charge_hold: bool = False


def message_fields(message: Any) -> Iterable[tuple[str, Any]]:
    """A message's fields: a dict's items, or those of a message object
    (LiteLLM's ``Message``, appended to a history as the answer came)."""
    if isinstance(message, Mapping):
        return message.items()
    dump = getattr(message, "model_dump", None)
    if callable(dump):
        return dict(dump()).items()
    return vars(message).items() if hasattr(message, "__dict__") else ()


def prompt_byte_bound(
    messages: Sequence[Mapping[str, Any]],
    extra: object,
    *,
    model: str = "",
    window_tokens: int | None = None,
) -> int:
    """Return an upper bound on a prompt's tokens without a tokenizer.

    Byte-level BPE tokenizers (the tiktoken families, Claude's, Gemini's)
    emit at least one UTF-8 byte per token, so the byte length of the text
    bounds the token count; a fixed overhead covers the chat template. An
    image counts what ``model`` bills for the largest one; a file passed by
    id or URL counts the model's context window (``window_tokens``).
    """
    total = _REQUEST_OVERHEAD_TOKENS
    for message in messages:
        content = message.get("content")
        total += _MESSAGE_OVERHEAD_TOKENS
        if isinstance(content, list):
            sizes = _PartSizes(
                image=image_part_tokens(model),
                unsized=window_tokens or UNSIZED_PART_TOKENS,
            )
            total += _parts_tokens(content, sizes)
        else:
            total += _content_bytes(content)
        # Every other field is billed text too: tool_calls, name,
        # tool_call_id, function_call, ...
        for key, value in message_fields(message):
            if value and key not in _FRAMED_MESSAGE_KEYS:
                total += _content_bytes(value)
    if extra is not None:
        total += _content_bytes(extra)
    return total


def priced_name(model: str, provider: str | None) -> str:
    """The name a model is priced under: with its provider, named once."""
    if not provider or model.startswith(provider + "/"):
        return model
    return f"{provider}/{model}"


@dataclass(frozen=True, slots=True)
class _PartSizes:
    image: int
    unsized: int


def image_part_tokens(model: str) -> int:
    """The most tokens ``model`` bills for one image part."""
    name = model.lower()
    for family, tokens in _IMAGE_TOKENS_BY_FAMILY:
        if family in name:
            return tokens
    return IMAGE_PART_TOKENS


def _parts_tokens(content: list[Any], sizes: _PartSizes) -> int:
    """Upper bound for a content of parts: text by bytes, images by size."""
    total = 0
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind in _IMAGE_PARTS:
            total += sizes.image
        elif kind in _FILE_PARTS and not _inline_data(part):
            total += sizes.unsized
        elif kind == "text" and isinstance(part, Mapping):
            total += _content_bytes(part.get("text"))
        else:
            total += _content_bytes(part)
    return total


def _inline_data(part: Any) -> bool:
    """Whether a file part carries its bytes (base64), which bound it."""
    text = json.dumps(part, default=str)
    return "base64," in text or '"file_data"' in text or '"data"' in text


def _content_bytes(content: object) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        if content.isascii():  # one byte a character
            return len(content)
        return len(content.encode("utf-8", "surrogatepass"))
    return len(prompt_part_text(content).encode("utf-8", "surrogatepass"))


def prompt_part_text(part: object) -> str:
    """A request part (tools, a response format) as the text the provider
    reads: JSON, with a Pydantic model class given as its JSON schema."""
    if isinstance(part, str):
        return part
    schema = getattr(part, "model_json_schema", None)
    if isinstance(part, type) and callable(schema):
        part = schema()
    try:
        return json.dumps(part, default=_schema_or_text)
    except (TypeError, ValueError):
        return str(part)


def _schema_or_text(value: object) -> object:
    schema = getattr(value, "model_json_schema", None)
    if isinstance(value, type) and callable(schema):
        return schema()
    dump = getattr(value, "model_dump", None)
    return dump() if callable(dump) else str(value)
