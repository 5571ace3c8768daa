"""The frozen model base shared by every policy part, and the merge rule."""

from __future__ import annotations

import contextlib
import re
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, Final, NoReturn, Self
from urllib.parse import unquote_plus, urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from governor._errors import PolicyError

__all__ = [
    "FieldsError",
    "FrozenList",
    "FrozenMap",
    "PolicyModel",
    "mask_credentials",
    "mask_userinfo",
    "masked",
    "secret_name",
    "thawed",
]

_FROZEN_ADVICE = (
    "policies are frozen so that a running governor cannot be changed under "
    "it: build a new one, e.g. policy.model_copy(update={...}), and a new "
    "Governor"
)


class FrozenMap(dict[Any, Any]):
    """A dict that refuses changes: the mappings inside a policy.

    It reads, compares, pickles and serializes as a plain dict; every method
    that would change it raises :class:`governor.PolicyError`.
    """

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise PolicyError(f"this mapping belongs to a policy and {_FROZEN_ADVICE}")

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenMap, (dict(self),))

    def copy(self) -> dict[Any, Any]:
        """A plain, changeable dict with the same items."""
        return dict(self)


class FrozenList(list[Any]):
    """A list that refuses changes: the lists inside a policy's mappings.

    It reads, compares, pickles and serializes as a plain list (so it passes
    where a list is expected); every method that would change it raises
    :class:`governor.PolicyError`.
    """

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise PolicyError(f"this list belongs to a policy and {_FROZEN_ADVICE}")

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse
    append = extend = insert = remove = pop = clear = sort = reverse = _refuse

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(self))

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenList, (list(self),))

    def copy(self) -> list[Any]:
        """A plain, changeable list with the same items."""
        return list(self)


def _frozen(value: Any) -> Any:
    """``value`` with every container in it, at any depth, made frozen.

    A dict becomes a :class:`FrozenMap`, a list a :class:`FrozenList`, a set
    a ``frozenset`` and a ``bytearray`` ``bytes``: equal to what was given,
    hashable, and unchanged by later changes to the caller's objects. The
    items of a tuple are frozen too (the tuple itself is kept when none
    changes).
    """
    if isinstance(value, FrozenMap | FrozenList | frozenset | bytes):
        return value
    if isinstance(value, dict):
        return FrozenMap({key: _frozen(item) for key, item in value.items()})
    if isinstance(value, list):
        return FrozenList([_frozen(item) for item in value])
    if isinstance(value, set):
        return frozenset(value)  # set items are hashable, so already frozen
    if isinstance(value, bytearray):
        return bytes(value)
    if type(value) is tuple:
        items = tuple(_frozen(item) for item in value)
        changed = any(new is not old for new, old in zip(items, value, strict=True))
        return items if changed else value
    return value


def thawed(value: Any) -> Any:
    """A changeable deep copy of a policy's mapping or list, to send on.

    What a policy holds stays frozen; a request built from it gets plain
    dicts, lists and sets that the provider's client may change freely.
    """
    if isinstance(value, dict):
        return {key: thawed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [thawed(item) for item in value]
    if isinstance(value, tuple):
        return tuple(thawed(item) for item in value)
    if isinstance(value, frozenset):
        return set(value)
    return value


class FieldsError(ValueError):
    """A rule across fields was broken: raised by a model validator.

    The PolicyError names ``fields`` where a field error names its field, and
    shows the values in ``got`` (those that break the rule) instead of the
    whole input.
    """

    def __init__(
        self,
        message: str,
        fields: tuple[str, ...],
        got: Mapping[str, Any] | None = None,
    ) -> None:
        """Say what is wrong, which fields to change and what they held."""
        super().__init__(message)
        self.fields = fields
        self.got = dict(got or {})


_SECRET_KEY = re.compile(
    r"api[-_]?key|secret|passw(or)?d|passphrase|credential|authori[sz]ation"
    r"|subscription[-_]?key|cookie|^(token|auth|pwd)$"
    r"|(access|auth|refresh|session|bearer|id|private|signing|master|account)"
    r"[-_.]?(token|key)$",
    re.IGNORECASE,
)
"""Names that hold a secret wherever these letters appear in them
(``x-api-key``, ``client_secret``, ``aws_secret_access_key``,
``vertex_credentials``, ``Authorization``), or that end in a credential
written without a break (``accesstoken``)."""

_WORD_BREAK = re.compile(
    r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])"
)
"""Where a name splits into words: at ``-``, ``_``, ``.`` or a space, and at
a camelCase hump (``azureAdToken``, ``HFToken``)."""

_NOT_CREDENTIAL_TOKEN: Final = frozenset(
    {"max", "min", "num", "total"}  # counts: max_token
    | {"bos", "eos", "pad", "unk", "sep", "cls", "mask", "special"}  # tokenizer
    | {"image", "audio", "video", "vision", "boi", "eoi", "placeholder"}
    | {"start", "end", "stop"}
    | {"page", "next", "continuation"}  # paging through results: pageToken
)
"""Words before a last ``token`` that make it text or a page, not a
credential: a tokenizer's special tokens (``eos_token``, ``image_token``,
``video_token``), bounds (``max_token``) and paging (``pageToken``)."""

_NOT_CREDENTIAL_KEY: Final = frozenset(
    {"cache", "sort", "partition", "range", "row", "hash", "shard", "group"}
    | {"routing", "idempotency", "dedup", "dedupe", "lookup", "index"}
    | {"primary", "foreign", "object", "public"}
    # the field of a record or message a setting reads: input_key, label_key
    | {"input", "output", "text", "content", "prompt", "response", "message"}
    | {"question", "answer", "context", "label", "target", "model", "field"}
    | {"column", "image", "result"}
)
"""Words before a last ``key`` that make it a lookup key or a public one
(``prompt_cache_key``, ``sortKey``), or name the field of a record or
message that a setting reads (``input_key``, ``label_key``,
``response_key``), not a credential."""

# Values that describe data, not send it: JSON schemas of tools and answers,
# whose property names (``pageToken``) are not secrets.
_SCHEMAS: Final = frozenset(
    {"tools", "functions", "response_format", "tool_choice", "json_schema"}
)

MASK = "***"

_SCHEME = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*://")


def secret_name(name: str) -> bool:
    """Whether a parameter, header or option named ``name`` holds a secret.

    The name is read as words (split at ``-``, ``_``, ``.``, spaces and
    camelCase humps, case ignored). It holds a secret when:

    * it says so anywhere: ``secret``, ``password``, ``passwd``, ``pwd``,
      ``passphrase``, ``credential``, ``authorization``, ``cookie``,
      ``api_key`` (``client_secret``, ``aws_secret_access_key``,
      ``x-api-key``, ``Proxy-Authorization``);
    * its last word is ``token``, singular (``token``, ``api_token``,
      ``hf_token``, ``azure_ad_token``, ``access_token``, ``id_token``,
      ``X-Amz-Security-Token``, ``accessToken``), ``jwt`` or
      ``signature``; not when the word before it makes the token text or a
      page (``eos_token``, ``pad_token``, ``image_token``, ``video_token``,
      ``max_token``, ``page_token``).
      A plural ``tokens`` is a count (``max_tokens``,
      ``max_completion_tokens``), and a ``token`` before another word
      describes tokens (``token_budget``, ``token_type``): neither is masked;
    * its last word is ``key``, after another word (``api_key``,
      ``subscription_key``, ``Ocp-Apim-Subscription-Key``, ``private_key``,
      ``apiKey``); not a lookup or public key (``cache_key``,
      ``prompt_cache_key``, ``sortKey``, ``idempotency_key``,
      ``public_key``), nor the field of a record or message that a setting
      reads (``input_key``, ``label_key``, ``response_key``,
      ``model_key``). A ``key`` before another word (``key_prefix``,
      ``key_id``), a plural ``keys`` and words that merely hold the letters
      (``keywords``, ``monkey``) are not masked, nor is a bare ``key``: in
      a policy that is a budget's key, the team or user it limits. A URL's
      ``?key=`` is masked all the same (see :func:`masked`).
    """
    if _SECRET_KEY.search(name):
        return True
    words = [word.lower() for word in _WORD_BREAK.split(name) if word]
    if not words:
        return False
    last, before = words[-1], words[-2] if len(words) > 1 else ""
    if last == "token":
        return before not in _NOT_CREDENTIAL_TOKEN
    if last == "key":
        return bool(before) and before not in _NOT_CREDENTIAL_KEY
    return last in ("jwt", "signature")


def mask_userinfo(url: str) -> str:
    """``url`` with its user info masked, read before any URL parsing.

    Everything between ``://`` and the last ``@`` is taken as user info, so
    a password holding an unencoded ``/``, ``#`` or ``?`` (which would end a
    parsed address early) is masked too; an ``@`` in a path or query is
    masked with what comes before it. The user name is kept when a ``:``
    tells it apart (``redis://app:***@host``), else all of it is masked
    (``https://***@host``). Text that is not a URL comes back unchanged.
    """
    start = _SCHEME.match(url)
    if start is None:
        return url
    if url[start.end() :].lower().startswith(("/", "unix")):  # a socket path
        return url
    info, at, rest = url[start.end() :].rpartition("@")
    if not at:
        return url
    user, colon, _ = info.partition(":")
    shown = f"{user}:{MASK}" if colon and not set(user) & set("/?#@[]") else MASK
    return f"{url[: start.end()]}{shown}@{rest}"


_QUERY_CREDENTIALS: Final = frozenset({"key", "code", "sig"})
"""Query option names that carry a credential in a URL, besides the secret
names of :func:`secret_name`: Google's ``?key=``, an Azure Functions
``?code=`` and an Azure SAS ``?sig=``."""

_QUERY_FIELD = re.compile(r"(?<=[?&#])([^=&#?]+)=([^&#]+)")
"""One ``name=value`` option of a URL's query or fragment."""

_URL_IN_TEXT = re.compile(
    r"\b[A-Za-z][A-Za-z0-9+.-]{0,31}://[^\s\"'<>]*[^\s\"'<>.,;:!?)\]}]"
)
"""A URL in running text: punctuation after it (``.,;:!?)]}``) ends the
sentence or closes a bracket and is not part of it (a dot inside a value,
as in a JWT ``a.b.c``, is)."""


def _masked_query(url: str) -> str:
    """``url`` with the value of each credential option in its query and
    fragment masked (``?api-key=***&api-version=2024-06-01``): those named
    as :func:`secret_name` says (percent-decoded) or in
    ``_QUERY_CREDENTIALS``. The scheme, host, path and other options are
    kept."""
    opened = min((i for i in (url.find("?"), url.find("#")) if i >= 0), default=-1)
    if opened < 0:
        return url

    def option(match: re.Match[str]) -> str:
        name = unquote_plus(match.group(1)).strip()
        if name.lower() in _QUERY_CREDENTIALS or secret_name(name):
            return f"{match.group(1)}={MASK}"
        return match.group()

    return url[:opened] + _QUERY_FIELD.sub(option, url[opened:])


def _masked_shapes(value: str) -> str:
    """``value`` with bearer tokens and provider key shapes (``sk-...``,
    ``AIza...``) masked, whatever field holds it."""
    for pattern in _SHAPED_CREDENTIALS:
        value = pattern.sub(lambda m: m.group(1) + MASK, value)
    return value


def _masked_text(value: str) -> str:
    """A string value with a URL's credentials masked: the password of its
    user info, where a URL parser finds one (an ``@`` in a path,
    ``.../llama@v2``, is not user info), and credential options in its query
    (``?key=``, ``?api-key=``, ``?access_token=``, ``?sig=``, ...)."""
    if not _SCHEME.match(value):
        return _masked_shapes(value)
    try:
        password = urlsplit(value.strip()).password
    except ValueError:
        password = None
    return _masked_query(mask_userinfo(value) if password else value)


def masked(value: Any) -> Any:
    """``value`` with every secret-named mapping entry replaced by ``"***"``.

    Call parameters may carry provider keys (a tier's ``params={"api_key":
    ...}``, ``{"azure_ad_token": ...}``, a header such as ``{"x-api-key":
    ...}``) and URLs with credentials (``api_base="https://user:pass@host"``
    or ``"https://host/v1?key=..."``); reprs, error messages and ``governor
    policy show`` print them masked. Which names are secret is
    :func:`secret_name`'s rule (counts such as ``max_tokens`` stay
    readable); a URL keeps its scheme, host, path and other query options.
    Nested mappings, lists, tuples and sets are masked too, and so is a
    ``(name, value)`` pair in them whose name is secret (params given as a
    list of pairs, ``[("api_key", ...)]``). Bytes are read as Latin-1 text
    and masked as :func:`mask_credentials` masks a provider's error text
    (``b"api_key=***"``).
    """
    if isinstance(value, Mapping):
        return {
            k: MASK
            if isinstance(k, str) and secret_name(k)
            else (v if k in _SCHEMAS else masked(v))
            for k, v in value.items()
        }
    if isinstance(value, list):  # a FrozenList too
        return [_masked_item(v) for v in value]
    if type(value) in (tuple, set, frozenset):
        return type(value)(_masked_item(v) for v in value)
    if isinstance(value, str):
        return _masked_text(value)
    if isinstance(value, bytes | bytearray):
        text = value.decode("latin-1")
        shown = mask_credentials(text)
        return value if shown == text else type(value)(shown.encode("latin-1"))
    return value


def _masked_item(item: Any) -> Any:
    """An item of a list, tuple or set, masked: a ``(name, value)`` pair
    (a tuple or a list) whose name is secret keeps its name only."""
    if (
        isinstance(item, tuple | list)
        and len(item) == 2
        and isinstance(item[0], str)
        and secret_name(item[0])
    ):
        return (item[0], MASK) if isinstance(item, tuple) else [item[0], MASK]
    return masked(item)


_UNMASKED = r"""(?!\*\*\*(?:[\s"',;&)\]}]|\.(?:\s|$)|$))"""
"""Before a value: not the mask alone (masked already)."""

_NAMED_CREDENTIALS: Final = (
    # name: value, name=value, "name": "value" (a header, a JSON key, a query
    # option), with an auth scheme word before the value swallowed too; a
    # value never ends in a dot (its sentence ends) or a closing bracket
    # (its bracket closes), nor is it the mask alone (masked already; the
    # scheme word before it is then kept, not taken for the value)
    re.compile(
        r"(?<![A-Za-z0-9])((?:api[-_ ]?key(?:\s+provided)?"
        r"|(?:access|auth|refresh|session|secret)[-_]?(?:token|key)"
        r"|password|passwd|authori[sz]ation)"
        r"""["']?\s*[:=]\s*["']?)(?>(?:(?:bearer|basic|token)\s+)?)"""
        + _UNMASKED
        + r"""[^\s"',;&)]*[^\s"',;&).\]}]""",
        re.IGNORECASE,
    ),
    # a bare key=, token= or secret= (a query option, a form field)
    re.compile(
        r"(?<![A-Za-z0-9_.-])((?:key|token|secret)=)"
        + _UNMASKED
        + r"""[^\s"',;&)]*[^\s"',;&).\]}]""",
        re.IGNORECASE,
    ),
)
"""Values after a name that says they are secret."""

_SHAPED_CREDENTIALS: Final = (
    # a scheme word and a token-like value: long, or holding a digit
    re.compile(
        r"\b((?:bearer|basic)\s+)(?=[A-Za-z._~+/=-]*[0-9]|[A-Za-z0-9._~+/=-]{16})"
        r"[A-Za-z0-9._~+/=-]{8,}",
        re.IGNORECASE,
    ),
    # provider key shapes: OpenAI and Anthropic sk-..., Google AIza..., Groq
    # gsk_..., Hugging Face hf_..., xAI xai-...
    re.compile(
        r"()\b(?:sk-[A-Za-z0-9_-]{8,}|AIza[A-Za-z0-9_-]{20,}"
        r"|(?:gsk_|hf_|xai-)[A-Za-z0-9]{20,})"
    ),
)
"""Credentials known by their shape, whatever names them."""

# user:password@ right after the scheme (no / before the colon, so a path's
# @, as in Vertex's model@version, is not taken for one)
_USERINFO: Final = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]{0,31}://)[^\s/@:]*:[^\s@]*@")


_FIELD_HEAD = re.compile(
    r"""(?<![A-Za-z0-9_.-])(?P<q>["']?)"""
    r"(?P<name>[A-Za-z][A-Za-z0-9_.-]{0,63})(?<![_.-])(?P=q)"
    r"(?P<sep>[ \t]*[:=][ \t]*|[ \t]+)"
    r"(?P<scheme>(?:bearer|basic|token)[ \t]+)?",
    re.IGNORECASE,
)
"""The head of a ``name=value``, ``name: value``, ``'name': 'value'`` (a
Python dict), ``"name": "value"`` (JSON) or ``name value`` in running text:
the name (up to 64 characters), the separator and an auth scheme word."""

_FIELD_VALUE = re.compile(
    r""""(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'"""
    r"""|(?!\*\*\*(?:[\s"',;&)<>\]}]|\.(?:\s|$)|$))[^\s"',;&)<>]*[^\s"',;&)<>.\]}]"""
)
"""A field's value: a quoted one up to its closing quote, another up to a
space, quote, parenthesis or separator, not ending in a dot or a closing
bracket, and not masked already."""

_TOKEN_LIKE = re.compile(r"^(?=[^\s]*[0-9])(?=[^\s]*[A-Za-z])[^\s]{8,}$|^[^\s]{20,}$")
"""A value that looks like a credential, not a word of the message: eight
characters or more with a digit and a letter, or twenty or more."""

_NOT_A_SECRET: Final = frozenset({"", "true", "false", "null", "none"})
"""Values that say nothing secret: JSON's literals and an empty string."""


def _masked_named_value(head: re.Match[str], value: str) -> bool:
    """Whether the value after one :data:`_FIELD_HEAD` is masked.

    Its value is masked when its name is secret (:func:`secret_name`, or a
    bare ``token`` or ``key``), and

    * it is written ``name=value``, or as a JSON or dict entry (the name
      and the value quoted), or its name has several words (``hf_token:
      ...``);
    * or, for a one-word name before a ``:`` (``key: temperature``,
      ``secret: missing region``) and a name of several words before a space
      (``access_token expired``), the value looks like a credential
      (:data:`_TOKEN_LIKE`), not a word of the message.
    """
    bare = value.strip("\"'")
    if bare.lower() in _NOT_A_SECRET:
        return False
    name, sep = head["name"], head["sep"].strip()
    several = len([word for word in _WORD_BREAK.split(name) if word]) > 1
    quoted = value[:1] in ("'", '"')
    always = sep == "=" or (sep == ":" and ((bool(head["q"]) and quoted) or several))
    by_shape = sep == ":" or several
    return always or (by_shape and _TOKEN_LIKE.search(bare) is not None)


def _mask_named_values(text: str) -> str:
    """``text`` with the value of each secret-named field in it masked.

    A value is read only after a secret name, so that the text is read
    once, whatever runs of separators it holds.
    """
    shown: list[str] = []
    start = 0
    while (head := _FIELD_HEAD.search(text, start)) is not None:
        name = head["name"]
        secret = secret_name(name) or name.lower() in ("token", "key")
        value = _FIELD_VALUE.match(text, head.end()) if secret else None
        if value is None or not _masked_named_value(head, value.group()):
            shown.append(text[start : head.end("name")])
            start = head.end("name")  # its value may name the next field
            continue
        quote = value.group()[0] if value.group()[0] in "\"'" else ""
        shown.append(f"{text[start : head.end()]}{quote}{MASK}{quote}")
        start = value.end()
    shown.append(text[start:])
    return "".join(shown)


_MASKED_CHARS: Final = 20_000
"""The most of a provider's error text that is masked and kept: the patterns
are linear, but some backtrack over a long run of one kind of character."""

_PAST_CUT: Final = 4_096
"""How far past the cut the text is masked: a credential longer than this
that the cut splits shows no more than the cut leaves of it."""


def mask_credentials(text: str) -> str:
    """``text`` (a provider's error message) with credential-like tokens masked.

    ``Bearer ...`` and ``Basic ...`` tokens, provider key shapes (``sk-...``),
    a URL's user info and the credential options of a URL's query (named by
    the rule :func:`masked` applies, ``?sig=...``, ``?hf_token=...``) become
    ``***``, and so does the value of a field whose name is secret by
    :func:`secret_name`'s rule (or is ``token`` or ``key``) written
    ``name=value``, ``name: value``, ``'name': 'value'``, ``"name":
    "value"`` or ``name value`` (``azure_ad_token=***``, ``hf_token: ***``,
    ``{"access_token": "***"}``, ``access_token ***``). A one-word name
    before ``:`` and any name before a space mask only a value that looks
    like a credential, so ``key: temperature`` and ``access_token expired``
    keep their words. The rest of the text is kept, punctuation after a URL
    included. A text longer than 20,000 characters is cut there (an error
    page, not a message), with a note of its whole length.
    """
    if len(text) > _MASKED_CHARS:
        # Masked a little past the cut, so that a credential the cut splits
        # is masked whole, then cut.
        shown = _masked_whole(text[: _MASKED_CHARS + _PAST_CUT])[:_MASKED_CHARS]
        return f"{shown} [... cut: {len(text)} characters in all]"
    return _masked_whole(text)


def _masked_whole(text: str) -> str:
    text = _URL_IN_TEXT.sub(lambda m: _masked_query(m.group()), text)
    for pattern in (*_NAMED_CREDENTIALS, *_SHAPED_CREDENTIALS):
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    text = _mask_named_values(text)
    return _USERINFO.sub(lambda m: m.group(1) + MASK + "@", text)


_VALUE_ERROR = "Value error, "
"""How pydantic starts the message of a ValueError raised by a validator."""


def _describe(error: Mapping[str, Any], model: type[BaseModel]) -> str:
    inner = (error.get("ctx") or {}).get("error")
    where = ".".join(str(part) for part in error["loc"])
    if isinstance(inner, PolicyError):  # a nested part already said it all
        return f"{where}: {inner}" if where else str(inner)
    if isinstance(inner, FieldsError):
        names = ", ".join(f"{where}.{name}" if where else name for name in inner.fields)
        got = ", ".join(
            f"{name}={value!r}" for name, value in masked(inner.got).items()
        )
        return f"{names}: {inner}" + (f" (got {got})." if got else ".")
    message = str(error["msg"]).removeprefix(_VALUE_ERROR)
    if not where:  # a rule of the whole part: the input would only repeat it
        return f"{message}."
    if error.get("type") == "extra_forbidden" and len(error["loc"]) == 1:
        names = ", ".join(model.model_fields)
        return f"{where}: not a field of {model.__name__}, which takes {names}."
    field = model.model_fields.get(str(error["loc"][0]))
    accepted = f" Accepted: {field.description}" if field and field.description else ""
    got = masked(error.get("input"))
    if isinstance(got, str):  # text where a setting was wanted: "api_key=..."
        got = mask_credentials(got)
    return f"{where}: {message} (got {got!r}).{accepted}"


class PolicyModel(BaseModel):
    """Frozen, keyword-only, strict about unknown fields.

    Construction errors are raised as :class:`governor.PolicyError`, whose
    message names each bad field, the value given and the accepted forms.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False
    )

    def __init__(self, *args: Any, **data: Any) -> None:
        if args:
            names = list(type(self).model_fields)
            fields = ", ".join(f"{name}=..." for name in names[:4])
            fields += ", ..." if len(names) > 4 else ""
            raise TypeError(
                f"{type(self).__name__} takes keyword arguments only, e.g. "
                f"{type(self).__name__}({fields}); got {len(args)} positional "
                f"value(s): {', '.join(map(repr, args))}"
            )
        with _policy_errors(type(self)):
            super().__init__(**data)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_counts(cls, data: Any) -> Any:
        # Python's True is the int 1, so a count field would take True as 1
        # (and False as 0): refused, as a typo or a flag given by mistake.
        if not isinstance(data, Mapping):
            return data
        for name, value in data.items():
            field = cls.model_fields.get(name) if isinstance(name, str) else None
            if field is not None and _bool_for_count(field.annotation, value):
                raise FieldsError(
                    "takes a number, not True or False", (name,), {name: value}
                )
        return data

    @model_validator(mode="after")
    def _freeze_mappings(self) -> Self:
        for name, value in self.__dict__.items():
            if isinstance(value, dict | list | set | bytearray | tuple):
                frozen = _frozen(value)
                if frozen is not value:
                    object.__setattr__(self, name, frozen)
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        raise PolicyError(f"cannot set {type(self).__name__}.{name}: {_FROZEN_ADVICE}")

    def __delattr__(self, name: str) -> None:
        raise PolicyError(
            f"cannot delete {type(self).__name__}.{name}: {_FROZEN_ADVICE}"
        )

    def model_copy(
        self, *, update: Mapping[str, Any] | None = None, deep: bool = False
    ) -> Self:
        """Return a copy; the fields in ``update`` are validated like new ones.

        Raises:
            PolicyError: an updated field is not valid.
        """
        if not update:
            return super().model_copy(deep=deep)
        return type(self)(**{**self._explicit(), **update})

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Self:
        """Build from a mapping (or a model); errors raise PolicyError."""
        with _policy_errors(cls):
            return super().model_validate(obj, **kwargs)

    @classmethod
    def model_validate_json(cls, json_data: Any, **kwargs: Any) -> Self:
        """Build from a JSON document; errors raise PolicyError."""
        with _policy_errors(cls):
            return super().model_validate_json(json_data, **kwargs)

    def merged(self, override: Self) -> Self:
        """Return a copy with the fields the override set explicitly laid over.

        Nested policy parts merge by the same rule; mappings merge key by key;
        every other field the override set replaces this one's.
        """
        if not isinstance(override, type(self)):
            raise PolicyError(
                f"cannot merge {type(override).__name__} into {type(self).__name__}"
            )
        updates = {
            name: _merge_value(getattr(self, name), getattr(override, name))
            for name in override.model_fields_set
        }
        return type(self)(**{**self._explicit(), **updates})

    def _explicit(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.model_fields_set}


def _bool_for_count(annotation: Any, value: Any) -> bool:
    """Whether ``value`` puts a bool where ``annotation`` wants a number.

    Looks into ``int | None`` and into the values of a mapping of ints (a
    Fanout's ``scope_caps``).
    """
    if annotation is int or annotation is float:  # seconds and fractions too
        return isinstance(value, bool)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_bool_for_count(arg, value) for arg in args)
    if isinstance(origin, type) and issubclass(origin, Mapping) and len(args) == 2:
        return isinstance(value, Mapping) and any(
            _bool_for_count(args[1], item) for item in value.values()
        )
    return False


@contextlib.contextmanager
def _policy_errors(model: type[BaseModel]) -> Iterator[None]:
    """Raise pydantic's validation errors as one PolicyError naming each field."""
    try:
        yield
    except ValidationError as exc:
        lines = [_describe(err, model) for err in exc.errors()]
        raise PolicyError(f"invalid {model.__name__}: " + "; ".join(lines)) from exc


def _merge_value(base: Any, override: Any) -> Any:
    if isinstance(base, PolicyModel) and isinstance(override, type(base)):
        return base.merged(override)
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        return {**base, **override}
    return override
